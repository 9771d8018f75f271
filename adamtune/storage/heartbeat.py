"""Heartbeats: one thread per worker process records every running trial's heartbeat, surviving DB errors.

A trial whose heartbeat is older than the grace period is failed and re-queued by the next worker (see
``stale_trials.py``); this thread keeps beating through database outages so live trials are never caught.
:class:`StaleCheck` is how often a worker looks for such trials.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import optuna

from adamtune.storage.db_errors import db_error_text
from adamtune.storage.optuna_adapter import storage_of

log = logging.getLogger(__name__)


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds, surviving DB errors.

    Optuna's own heartbeat thread ends at the first database error, after which live trials would be
    failed as stale; this one logs a warning and keeps trying until the ``with`` block ends. All trials
    of a process (a worker's batch of K, the confirmation runs) share one daemon thread,
    :class:`_HeartbeatThread`, started with the first and idle between trials: no thread per trial.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval

    def __enter__(self) -> Heartbeat:
        _HeartbeatThread.shared().add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _HeartbeatThread.shared().remove(self)


class _HeartbeatThread:
    """The process's one heartbeat thread: beats each registered trial when its interval has passed."""

    _instance: _HeartbeatThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._due: dict[Heartbeat, float] = {}
        self._failing: set[int] = set()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._beat, name="adamtune-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> _HeartbeatThread:
        with cls._instance_lock:
            # A forked child inherits the object but not the thread: it starts its own.
            if cls._instance is None or not cls._instance._thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def add(self, beat: Heartbeat) -> None:
        with self._changed:
            self._due[beat] = time.monotonic() + beat.interval
            self._changed.notify()

    def remove(self, beat: Heartbeat) -> None:
        """Stop beating ``beat``; returns after any beat of it in flight has been recorded."""
        with self._changed:
            self._due.pop(beat, None)

    def _beat(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                due = [beat for beat, at in self._due.items() if at <= now]
                for beat in due:  # under the lock: a trial that ended is never beaten after remove()
                    self._due[beat] = now + beat.interval
                    self._record(beat)
                wake = min(self._due.values(), default=now + 3600) - time.monotonic()
                self._changed.wait(timeout=max(0.0, wake))

    def _record(self, beat: Heartbeat) -> None:
        try:
            beat.storage.record_heartbeat(beat.trial_id)
            self._failing.discard(beat.trial_id)
        except Exception as exc:
            if beat.trial_id not in self._failing:
                log.warning("could not record the heartbeat of the running trial (%s); retrying", db_error_text(exc))
            self._failing.add(beat.trial_id)


class StaleCheck:
    """A worker's look for stale trials (``optuna.storages.fail_stale_trials``), at most once per heartbeat interval.

    The look is a database round trip or two at every trial boundary, yet a trial can only be stale once its
    heartbeat is a grace period old (30 s by default, always longer than the interval): looking once per
    interval (10 s by default) finds a dead worker's trial at most one interval later than looking at every
    boundary would, in the waiting loop too (which comes back here every pause). The first call always looks
    (a worker that joins a study to finish it fails the dead trials at once), and so does a call after a
    ``clock`` jump backwards. ``fail_stale_trials`` runs the storage's stale-trial callback
    (``stale_trials.RetryStaleTrial``) as before.
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._last: float | None = None

    def run(self, study: optuna.Study) -> bool:
        """Fail ``study``'s stale trials if a heartbeat interval has passed since the last look; True if it looked.

        A storage without heartbeats is looked at every time (``fail_stale_trials`` does nothing then).

        Raises:
            Whatever the storage raises; the look then counts as not done (the next call looks again).
        """
        interval = storage_of(study).get_heartbeat_interval()
        now = self._clock()
        if interval and self._last is not None and 0 <= now - self._last < interval:
            return False
        optuna.storages.fail_stale_trials(study)
        self._last = now
        return True
