"""``adamtune cleanup``: end what dead workers left behind in a study, now rather than at the next trial.

Workers already do this on their own before every trial (``worker.py``); this command is for a study
nobody is running any more, or one left by old adamtune versions or other Optuna tools:

* every RUNNING trial that is stale — its heartbeat older than the grace period, or no heartbeat at all
  and a start older than the grace period (see ``study.StudyStorage``) — is failed and re-queued with the
  same settings (a baseline stays the baseline; at most ``stale_trials.MAX_RETRIES`` retries);
* RUNNING trials whose heartbeat is fresh are left alone (a live worker is training them);
* with tracking on, the MLflow runs of the trials failed here are closed FAILED, and RUNNING runs of
  trials that are already finished (a worker killed between telling its trial and closing its run) are
  closed with their trial's state.

It takes the study's admission lock, so it never races a worker creating a trial.
"""

from __future__ import annotations

from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from adamtune.storage.admission import admission_lock
from adamtune.storage.attr_keys import RUN_ID_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.db_errors import with_db_retry
from adamtune.storage.stale_trials import RetryStaleTrial
from adamtune.storage.study import load_study


@dataclass(frozen=True)
class CleanupResult:
    """Trial numbers: failed as stale here, queued again, and still running with a fresh heartbeat."""

    study: str
    failed: list[int]
    requeued: int
    still_running: list[int]

    def describe(self) -> str:
        if not self.failed:
            text = f"study {self.study!r}: no stale trial"
        else:
            numbers = ", ".join(map(str, self.failed))
            text = f"study {self.study!r}: failed {len(self.failed)} stale trial(s) ({numbers})"
            text += f"; {self.requeued} queued again"
        if self.still_running:
            running = ", ".join(map(str, self.still_running))
            text += f"; still running with a live heartbeat: {running}"
        return text


def cleanup_study(
    storage_url: str, study_name: str, *, tracking: bool = True, tracking_uri: str | None = None
) -> CleanupResult:
    """Fail and re-queue the stale trials of ``study_name`` and close their MLflow runs (see module doc).

    Raises:
        StorageError: the database cannot be opened or has no such study.
        TrackingError: tracking is on and the MLflow store cannot be used (nothing was changed then).
    """
    storage = open_storage(storage_url, create=False)
    study = load_study(study_name, storage)
    tracker = None
    if tracking:
        from adamtune.tracking.tracker import Tracker

        tracker = Tracker(study_name, tracking_uri)
    waiting_before = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def sweep() -> None:
        with admission_lock(storage, study_name):
            optuna.storages.fail_stale_trials(study)

    with_db_retry(sweep, "failing stale trials")
    callback = storage.get_heartbeat_stale_trial_callback()
    failed = callback.drain() if isinstance(callback, RetryStaleTrial) else []
    trials = study.get_trials(deepcopy=False)
    requeued = sum(t.state == TrialState.WAITING for t in trials) - waiting_before
    running = [t.number for t in trials if t.state == TrialState.RUNNING]
    if tracker is not None:
        from adamtune.tracking.stale import close_orphan_runs, end_stale_trial

        try:
            for trial in failed:
                end_stale_trial(tracker, trial.number, trial.user_attrs.get(RUN_ID_ATTR), study=study)
            close_orphan_runs(tracker, study)
        finally:
            tracker.close()
    return CleanupResult(study_name, sorted(t.number for t in failed), max(requeued, 0), running)
