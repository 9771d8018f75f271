"""The study's parent run in MLflow: finding or creating it, its progress metrics, its end.

Part of the MLflow boundary (the layout is in ``tracking/tracker.py``'s docstring). The functions here run on
the tracking writer's thread (called from the :class:`~adamtune.tracking.tracker.Tracker`'s queued calls),
except :func:`queue_artifacts` (the caller's thread), :class:`PlotDrawing` (its own thread) and
:func:`search_tracking`, the context a search runs in. Heavy imports (mlflow) happen inside them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adamtune.tracking.client import NICENESS, Metric, Param, RunTag
from adamtune.tracking.trial_run import BATCH_LIMIT, RunMaker
from adamtune.tracking.writer import _first_line, _now_ms, _Op, is_retryable

if TYPE_CHECKING:
    import optuna

    from adamtune.core.config import StudySpec
    from adamtune.tracking.tracker import Tracker

log = logging.getLogger(__name__)

#: The Optuna study user attribute holding the id of the study's MLflow parent run.
PARENT_RUN_ATTR = "mlflow.parent_run_id"
#: MLflow's tag that nests a run under another in the UI.
PARENT_TAG = "mlflow.parentRunId"
#: Outcomes counted on the parent run (``trials_<state>``).
COUNTED_STATES = ("complete", "pruned", "diverged", "failed")


class StudyArtifacts(Protocol):
    """What the study's parent run uploads at the end of a search, made by the layer that owns the reports.

    The tracking layer uploads; it does not draw or decide. ``adamtune.report.artifacts.ReportArtifacts``
    is the implementation a search sets on its tracker (:attr:`Tracker.artifacts
    <adamtune.tracking.tracker.Tracker.artifacts>`).
    """

    def draw_plots(self, study: optuna.Study, out: Path) -> None:
        """Draw the study's plots into ``out/plots`` (errors are raised; the caller reports them once)."""

    def recommendation(self, study: optuna.Study) -> dict[str, Any]:
        """The study's summary as ``summary --json`` prints it (``recommendation.json``)."""


def param_text(value: Any) -> str:
    """A param as MLflow shows it: floats to 6 significant digits."""
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return str(value)


@dataclass(frozen=True)
class StudyProgress:
    """The parent run's per-trial numbers, computed from the study at one trial."""

    best: float | None
    counts: dict[str, int]


def study_progress(
    trials: list[optuna.trial.FrozenTrial], number: int, state: str, value: float | None, direction: str
) -> StudyProgress:
    """Best complete value and counts by outcome among trials numbered up to ``number``.

    Trial ``number`` itself counts as ``state``/``value`` (its end may not be stored yet); running and
    waiting trials are not counted.
    """
    from adamtune.storage.outcomes import trial_state

    outcomes: list[tuple[str, float | None]] = [
        (trial_state(t), t.value) for t in trials if t.number < number and trial_state(t) in COUNTED_STATES
    ]
    outcomes.append((state, value))
    values = [v for s, v in outcomes if s == "complete" and v is not None and math.isfinite(v)]
    best = (min(values) if direction == "minimize" else max(values)) if values else None
    counts = {s: sum(1 for o, _ in outcomes if o == s) for s in COUNTED_STATES}
    return StudyProgress(best, counts)


def open_parent_run(
    tracker: Tracker,
    study: optuna.Study,
    spec: StudySpec,
    storage_url: str | None,
    reopen: bool,
    maker: RunMaker | None = None,
) -> str:
    """Find the study's parent run in the tracker's store, or create it (see ``Tracker.attach``); its id.

    A caller that tries again after a failure passes the same ``maker`` each time, so that a parent the
    store made on a try whose answer was lost is reused, not made twice (``trial_run.py``).
    """
    run_id = _existing_parent(tracker, study)
    created = run_id is None
    if run_id is None:
        run_id = _create_parent(tracker, study, spec, storage_url, maker or RunMaker())
        study.set_user_attr(PARENT_RUN_ATTR, run_id)
    if created or reopen:
        tracker.client.log_batch(run_id, tags=settings_tags(spec))
    if reopen and not created:
        tracker.client.update_run(run_id, status="RUNNING")
    return run_id


def _existing_parent(tracker: Tracker, study: optuna.Study) -> str | None:
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        return None
    try:
        run = tracker.client.get_run(run_id)
    except Exception as exc:
        if is_retryable(exc):
            raise
        return None  # refused: not in this store
    if run.info.lifecycle_stage == "deleted" or run.info.experiment_id != tracker.experiment_id:
        return None
    return str(run_id)


def _create_parent(
    tracker: Tracker, study: optuna.Study, spec: StudySpec, storage_url: str | None, maker: RunMaker
) -> str:
    tags = {"adamtune.study": study.study_name, "adamtune.role": "study", "adamtune.host": tracker.host}
    if storage_url:
        from adamtune.storage.backends import redact_url

        tags["adamtune.storage"] = redact_url(storage_url)
    run = maker.create(tracker.client, tracker.experiment_id, tags, run_name=study.study_name)
    params = {
        "task": spec.task,
        "objective": spec.objective,
        "direction": spec.direction,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
        **{f"space.{name}": dim.describe() for name, dim in spec.space.dimensions.items()},
    }
    tracker.client.log_batch(run.info.run_id, params=[Param(k, param_text(v)) for k, v in params.items()])
    return str(run.info.run_id)


def settings_tags(spec: StudySpec) -> list[Any]:
    values = {"adamtune.n_trials": spec.n_trials, "adamtune.sampler": spec.sampler, "adamtune.pruner": spec.pruner}
    return [RunTag(k, str(v)) for k, v in values.items()]


def log_progress(
    client: Any,
    parent: str | None,
    noted: list[tuple[optuna.Study, int, str, float | None]],
    direction: str,
    objective: str,
) -> None:
    """Log the parent run's metrics for each ``(study, trial number, state, value)`` noted, each at its step.

    Reads the study once; an Optuna storage error there skips these updates only (it is not MLflow's).
    """
    if not noted:
        return  # an earlier call took them
    try:
        trials = noted[0][0].get_trials(deepcopy=False)
    except Exception as exc:
        log.debug("cannot read the study for the parent run: %s", exc)
        return
    stamp = _now_ms()
    metrics = []
    for _study, number, state, value in noted:
        progress = study_progress(trials, number, state, value, direction)
        metrics.extend(Metric(f"trials_{s}", float(n), stamp, number) for s, n in progress.counts.items())
        if progress.best is not None:
            metrics.append(Metric(f"best_{objective}", progress.best, stamp, number))
        if state == "complete" and value is not None and math.isfinite(value):
            metrics.append(Metric(f"trial_{objective}", float(value), stamp, number))
    for start in range(0, len(metrics), BATCH_LIMIT):
        client.log_batch(parent, metrics=metrics[start : start + BATCH_LIMIT])


class PlotDrawing:
    """The study's plots, drawn on a background thread into a temporary directory.

    Started when a search reaches its trial target (:meth:`Tracker.begin_artifacts
    <adamtune.tracking.Tracker.begin_artifacts>`): the plots show the search's trials only, which no
    longer change, so they are drawn while the confirmation stage trains (on another core when the
    training runs in a trainer process) instead of after it. :meth:`wait` returns the directory, with
    any error already reported; :meth:`discard` drops it (an interrupted search uploads nothing).
    """

    def __init__(self, tracker: Tracker, study: optuna.Study) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="adamtune-artifacts-"))
        self._tracker, self._study = tracker, study
        self.finished = _finished(study)  # what the plots show; another search may raise the target later
        self._lock = threading.Lock()
        self._drawn = self._discarded = False  # whichever comes second removes the directory
        self._thread = threading.Thread(target=self._draw, name="adamtune-plots", daemon=True)
        self._thread.start()

    def _draw(self) -> None:
        yield_cpu()
        draw_or_report(self._tracker, self._study, self.out)
        with self._lock:
            self._drawn = True
            remove = self._discarded
        if remove:
            shutil.rmtree(self.out, ignore_errors=True)

    def wait(self) -> Path:
        self._thread.join()
        return self.out

    def discard(self) -> None:
        with self._lock:
            self._discarded = True
            remove = self._drawn
        if remove:
            shutil.rmtree(self.out, ignore_errors=True)


def yield_cpu() -> None:
    """Lower the calling thread's scheduling priority by ``NICENESS``, so that drawing gives way to the
    training and the trial loop when the cores are busy. Linux only,
    where a thread has its own nice value; elsewhere it does nothing (it would lower the whole process)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + NICENESS)


def _finished(study: optuna.Study) -> int:
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def draw_or_report(tracker: Tracker, study: optuna.Study, out: Path) -> None:
    """The study's plots in ``out`` (``tracker.artifacts.draw_plots``); an error is reported once (what was
    drawn still goes out)."""
    if tracker.artifacts is None:
        return
    try:
        tracker.artifacts.draw_plots(study, out)
    except Exception as exc:
        tracker.notify(f"MLflow: could not make the study's plots: {_first_line(exc)[:200]}")


def queue_artifacts(tracker: Tracker, study: optuna.Study, drawing: PlotDrawing | None = None) -> None:
    """Write ``recommendation.json`` with the plots (``drawing``'s, else drawn now) and queue their upload.

    A drawing made before more trials finished (another search raised the target) is dropped and the
    plots drawn again. A plot the study cannot support yet is skipped (listed in ``plots/skipped.txt``);
    an error while drawing is reported once and what exists still goes out. The directory is removed
    once uploaded or dropped.
    """

    if drawing is not None and _finished(study) != drawing.finished:  # more trials ran since: draw again
        drawing.discard()
        drawing = None
    if drawing is not None:
        out = drawing.wait()
    else:
        out = Path(tempfile.mkdtemp(prefix="adamtune-artifacts-"))
        draw_or_report(tracker, study, out)
    try:
        if tracker.artifacts is None:
            raise RuntimeError("no recommendation to write")
        summary = tracker.artifacts.recommendation(study)
        (out / "recommendation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    except Exception as exc:
        tracker.notify(f"MLflow: could not make the study's recommendation: {_first_line(exc)[:200]}")

    def upload(client: Any, parent: str | None) -> None:
        client.log_artifacts(parent, str(out))
        shutil.rmtree(out, ignore_errors=True)

    op = _Op("upload the study's plots", upload, tracker.parent, on_drop=lambda: shutil.rmtree(out, ignore_errors=True))
    tracker.writer.submit(op)


@contextlib.contextmanager
def search_tracking(tracker: Tracker | None, study: optuna.Study) -> Iterator[None]:
    """Around a search's trials: on the way out, end the parent run and flush the tracker.

    Normal end: artifacts and status FINISHED. Ctrl-C/SIGTERM: status KILLED, no plots (the user wants
    out). Any other exception: status FAILED with artifacts. The tracker is closed in every case.
    """
    if tracker is None:
        yield
        return
    try:
        yield
    except KeyboardInterrupt:
        tracker.end_search(study, status="KILLED", artifacts=False)
        tracker.close(timeout=min(10.0, tracker.close_timeout))
        raise
    except BaseException:
        tracker.end_search(study, status="FAILED")
        tracker.close()
        raise
    tracker.end_search(study)
    tracker.close()
