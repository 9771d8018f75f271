"""Closing the MLflow runs that dead workers left RUNNING: runs of stale trials, and orphaned runs.

Part of the MLflow boundary. Contract: each function only *queues* its calls on the tracker's writer
(except :func:`runs_of_trial`, which reads synchronously), so it never blocks a worker on the store.
Callers: a worker that failed another worker's trial as stale (``worker.py``, ``confirm/stage.py``),
``adamtune cleanup`` (``cleanup.py``), and :meth:`Tracker.end_search <adamtune.tracking.Tracker.end_search>`
for orphans. Runs are found by their tags (``adamtune.study``, ``adamtune.trial_number``, see
``tracking/tracker.py``), so a run whose id never reached its trial is still closed.

Heavy imports (mlflow) happen inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adamtune.tracking.client import RunTag
from adamtune.tracking.trial_run import RUN_STATUS

if TYPE_CHECKING:
    import optuna

    from adamtune.tracking.tracker import Tracker


def end_stale_trial(
    tracker: Tracker, trial_number: int, run_id: str | None = None, *, study: optuna.Study | None = None
) -> None:
    """Queue the end of the run of a trial whose worker died (failed as stale by another worker).

    The run (``run_id``, or else every RUNNING run of the trial found by its ``adamtune.trial_number``
    tag) is closed FAILED with tags ``adamtune.state=failed`` and ``adamtune.stale=true``; with
    ``study``, the parent run's counts are updated too.
    """

    def end(client: Any, _: str | None) -> None:
        experiment_id = tracker.experiment_id  # read here: a deferred tracker knows it once the store is open
        tags = [RunTag("adamtune.state", "failed"), RunTag("adamtune.stale", "true")]
        ids = [run_id] if run_id else [r.info.run_id for r in runs_of_trial(tracker, trial_number, client=client)]
        for found in ids:
            run = client.get_run(found)
            if run.info.experiment_id != experiment_id or run.info.status != "RUNNING":
                continue
            client.log_batch(found, tags=tags)
            client.set_terminated(found, status="FAILED")

    tracker.submit(f"close the run of stale trial {trial_number}", end)
    if study is not None:
        tracker.record_trial(study, trial_number, "failed", None)


def close_orphan_runs(tracker: Tracker, study: optuna.Study) -> None:
    """Queue closing the RUNNING runs of trials that the study already holds as finished.

    A worker killed after telling a trial but before its writer sent the run's end leaves that run
    RUNNING with nobody to close it (the stale-trial check only sees RUNNING *trials*). Each such run
    of this study (tag ``adamtune.study``) is closed with the status of its trial's final state and
    tagged ``adamtune.orphan=true``; runs of trials still RUNNING are left alone.
    """
    from adamtune.storage.outcomes import trial_state

    finished = {t.number: trial_state(t) for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    study_name = tracker.study_name

    def close(client: Any, _: str | None) -> None:
        experiment_id = tracker.experiment_id
        query = f"attributes.status = 'RUNNING' and tags.`adamtune.study` = '{study_name}'"
        for run in client.search_runs([experiment_id], filter_string=query):
            number = run.data.tags.get("adamtune.trial_number", "")
            if not number.isdigit() or int(number) not in finished:
                continue
            state = finished[int(number)]
            tags = [RunTag("adamtune.state", state), RunTag("adamtune.orphan", "true")]
            client.log_batch(run.info.run_id, tags=tags)
            client.set_terminated(run.info.run_id, status=RUN_STATUS.get(state, "FAILED"))

    tracker.submit("close the runs of finished trials", close)


def runs_of_trial(tracker: Tracker, trial_number: int, *, client: Any = None) -> list[Any]:
    """The MLflow runs of trial ``trial_number`` in the tracker's study experiment, found by tag (synchronous)."""
    client = client or tracker.client
    found = client.search_runs(
        [tracker.experiment_id], filter_string=f"tags.`adamtune.trial_number` = '{int(trial_number)}'"
    )
    return list(found)
