"""A trial's MLflow run, as the objective drives it: started with the trial's settings and tags, fed its
epochs, closed with its outcome, and linked to the trial by its run id.

The run itself (buffered metrics, batched calls on the tracker's background writer) is the tracking
layer's :class:`~adamtune.tracking.trial_run.TrialRun`, made by :meth:`Tracker.start_trial
<adamtune.tracking.tracker.Tracker.start_trial>`; this module decides what goes into it. The run id is
stored on the trial (``RUN_ID_ATTR``) as soon as the tracker has created the run (the stale-trial check
closes a dead worker's run by it), else with the trial's last write, else, for a run made after the trial
ended (a short trial, or a store that was down), by :func:`link_run_late`. The run also names its trial in
its tags, so a link that is lost only costs a search by tags.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from adamtune.storage.attr_keys import RUN_ID_ATTR
from adamtune.storage.optuna_adapter import backend_of, storage_of, trial_id_of
from adamtune.storage.rdb import StudyStorage
from adamtune.training.trainer import describe_failure

if TYPE_CHECKING:
    import optuna

    from adamtune.core.config import StudySpec
    from adamtune.core.curves import Curves
    from adamtune.core.space import AdamParams
    from adamtune.storage.reporting import TrialWriter
    from adamtune.tracking.tracker import Tracker
    from adamtune.tracking.trial_run import TrialRun

log = logging.getLogger(__name__)


def start_run(
    tracker: Tracker | None,
    spec: StudySpec,
    trial: optuna.Trial,
    params: AdamParams,
    seed: int,
    is_baseline: bool,
    *,
    device: str,
    host: str,
    worker: str,
) -> TrialRun | None:
    """Queue the creation of ``trial``'s run (None: no tracker) with its settings and its tags (state ``running``)."""
    if tracker is None:
        return None
    logged = {k: v for k, v in params.as_dict().items() if k in _logged_param_names(spec)}
    return tracker.start_trial(
        run_name="baseline" if is_baseline else f"trial-{trial.number}",
        params={**logged, "seed": seed, "epochs": spec.epochs, "batch_size": spec.batch_size},
        tags={
            "adamtune.study": spec.study_name,
            "adamtune.task": spec.task,
            "adamtune.trial_number": trial.number,
            "adamtune.baseline": str(is_baseline).lower(),
            "adamtune.device": device,
            "adamtune.host": host,
            "adamtune.worker": worker,
            "adamtune.state": "running",
        },
    )


def log_epoch(run: TrialRun | None, writer: TrialWriter, epoch: int, metrics: Mapping[str, float]) -> None:
    """Log an epoch's metrics to the trial's run (step = epoch), and its run id to the trial once it is known."""
    if run is not None:
        run.log_epoch(epoch, metrics)
        _note_run_id(writer, run)


def finish_run(
    run: TrialRun | None,
    state: str,
    curves: Curves | None,
    trial: optuna.Trial,
    writer: TrialWriter,
    *,
    value: float | None = None,
    error: BaseException | None = None,
    error_text: str | None = None,
    extra_tags: Mapping[str, object] | None = None,
) -> None:
    """Close the trial's MLflow run as ``state``; its run id, when already known, goes with the trial's
    last write (not waited for: a short trial often ends before the run is made, see ``trial_run.py``)."""
    if run is None:
        return
    _note_run_id(writer, run, flush=False)
    if not run.noted:  # the run is made after the trial ends: its id is stored then
        link_run_late(run, trial)
    last = curves.last if curves is not None else None
    final = last.as_dict() if last is not None else {}
    tags: dict[str, object] = {"adamtune.trial_number": trial.number, **(extra_tags or {})}
    if curves is not None:
        tags["adamtune.stopped_epoch"] = curves.diverged_epoch or (last.epoch if last is not None else 0)
        if curves.diverged:
            tags["adamtune.diverged_epoch"] = curves.diverged_epoch
        if curves.seconds:
            final["seconds"] = curves.seconds
    if error is not None:
        tags["adamtune.error"] = f"{describe_failure(error)[0]}: {error}"[:500]
        if error_text and isinstance(error, Exception):
            tags["adamtune.traceback"] = error_text
    run.finish(state, final, tags, study=getattr(trial, "study", None), trial_number=trial.number, value=value)


def _note_run_id(writer: TrialWriter, run: TrialRun, *, flush: bool = True) -> None:
    """Store the MLflow run id on the trial the first time it is known (the tracking writer creates runs).

    During training it is written at once (``flush``): the stale-trial check closes a dead worker's run
    by this id."""
    run_id = run.take_new_run_id()
    if run_id is not None:
        writer.set_attrs({RUN_ID_ATTR: run_id})
        if flush:
            writer.flush()


def link_run_late(run: TrialRun, trial: optuna.Trial) -> None:
    """Store ``run``'s id on ``trial`` once the tracker has created it, even after the trial was told (a short
    trial often ends before its run is made); best effort: the run also names its trial in its tags."""
    backend = backend_of(storage_of(trial.study)) if hasattr(trial, "study") else None
    if not isinstance(backend, StudyStorage):
        return

    def link(run_id: str) -> None:
        try:
            backend.link_trial(trial_id_of(trial), RUN_ID_ATTR, run_id)
        except Exception as exc:  # the database is away: the link is lost, the run keeps its tags
            log.debug("trial %d: could not store its MLflow run id: %s", trial.number, exc)

    run.when_created(link)


def _logged_param_names(spec: StudySpec) -> set[str]:
    return {"lr", "beta1", "beta2", "epsilon", "decay", *spec.space.extra_dimensions()}
