"""The pauses of a worker waiting on the study: how long to sleep between two looks while other workers'
last trials (or confirmation runs) are in flight.

The first pause, ``WAIT_FIRST_POLL_SECONDS``, is kept for ``WAIT_FAST_SECONDS`` of waiting (a worker waiting
for the last short trial of another exits within a quarter second of it), then grows by half while nothing
changes, up to the longest (``WAIT_POLL_SECONDS`` by default), so that many idle workers of long trials load
the database little. Used by the worker loop (``worker.py``) and the confirmation stage (``confirm/stage.py``).
"""

from __future__ import annotations

import time

#: Pauses between two looks at the study while waiting for other workers' last trials: the first, how long
#: it is kept, and the longest (see the module docstring).
WAIT_FIRST_POLL_SECONDS = 0.25
WAIT_FAST_SECONDS = 10.0
WAIT_POLL_SECONDS = 5.0


class WaitPauses:
    """The pauses of one wait: ``WAIT_FIRST_POLL_SECONDS`` for ``WAIT_FAST_SECONDS``, then growing to ``longest``."""

    def __init__(self, longest: float) -> None:
        self.longest = longest
        self.reset()

    def reset(self) -> None:
        """Something changed (or the wait ended): start again from the short pauses."""
        self._since = time.monotonic()
        self._pause = WAIT_FIRST_POLL_SECONDS

    def next(self) -> float:
        """The next pause, in seconds."""
        if time.monotonic() - self._since >= WAIT_FAST_SECONDS:
            self._pause = min(self.longest, self._pause * 1.5)
        return self._pause
