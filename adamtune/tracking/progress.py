"""The parent run's progress metrics, coalesced: the trials noted as they end and not yet logged.

Part of the MLflow boundary. Logging the parent run's metrics (``parent_run.log_progress``) after every
trial would cost a tracking call per trial, many for short trials. The :class:`~adamtune.tracking.tracker.Tracker`
notes each trial's end here instead; one queued call, at most every ``PROGRESS_SECONDS`` (and at the end of a
search or tracker), takes every trial noted since and logs their metrics, each at its own step.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

#: The parent run's progress metrics are sent at most this often (seconds), and at the end.
PROGRESS_SECONDS = 10.0


class ProgressBuffer:
    """The ``(study, trial number, state, value)`` of the trials that ended and are not yet logged (thread-safe)."""

    def __init__(self) -> None:
        self._noted: list[tuple[Any, int, str, float | None]] = []
        self._lock = threading.Lock()
        self._sent = -math.inf

    def note(self, study: Any, number: int, state: str, value: float | None) -> bool:
        """Note trial ``number`` ending as ``state`` with ``value``; True when ``PROGRESS_SECONDS`` have passed
        since the progress was last sent (time to send it)."""
        with self._lock:
            self._noted.append((study, number, state, value))
            return time.monotonic() - self._sent >= PROGRESS_SECONDS

    def start_sending(self) -> bool:
        """Count the progress as sent now, unless no trial was noted since it was last taken (then False)."""
        with self._lock:
            if not self._noted:
                return False
            self._sent = time.monotonic()
            return True

    def take(self) -> list[tuple[Any, int, str, float | None]]:
        """The trials noted and not yet taken (the queued call that sends the progress logs them)."""
        with self._lock:
            noted, self._noted = self._noted, []
            return noted
