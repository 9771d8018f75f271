"""One trial: ``trial -> AdamParams -> a trial context -> the task trains -> report/prune -> value``.

Every kind of task runs through the same loop: the objective builds a
:class:`~adamtune.training.context.TrialContext` for the trial, and ``runner.run_in_context`` trains the task
against it (the user's ``fit`` for a loop task, the built-in trainer otherwise). Each epoch the context
calls back here: the epoch's metrics go to MLflow (step = epoch), the objective metric to Optuna
(``trial.report``), and the pruner may stop the trial.

What each outcome becomes (see ``study.py`` for the bookkeeping):

* complete: the value is the objective metric (e.g. ``val_loss``, ``val_accuracy``, ``val_mae``) of the
  last reported epoch.
* pruned: ``optuna.TrialPruned`` propagates; Optuna records the trial as PRUNED.
* diverged: a non-finite or exploded metric (see ``context.py``; for built-in tasks the rule of
  ``train.py``), or a run that ended no better than the untrained model (its last objective is not
  better than the untrained model's: with a far too large learning rate a network often settles at
  chance level without blowing up; such a trial is no result to rank). The second rule needs the
  untrained metrics: always there for built-in tasks, for a loop task when it calls
  ``trial.report_initial``. The trial returns the *untrained* model's objective (training that blew up is worth no
  more than no training; the exact rule for a loop task is in ``context.py``), so the sampler learns the
  region is bad; the state ``diverged`` and the epoch are recorded on the trial and in MLflow.
* failed: any other exception (including one raised by a user's ``fit``, or a ``fit`` that reported
  nothing), or an interruption (KeyboardInterrupt/SIGTERM), propagates after the MLflow run is closed
  as failed; Optuna records the trial as FAIL. The traceback is recorded once, on the trial (user
  attribute ``adamtune.error``) and in the MLflow run (tag ``adamtune.traceback``); the worker logs it
  once and goes on with the next trial.

The baseline trial (enqueued first in a new study) trains with exactly Adam's defaults and is never
pruned, so every result can be compared with a full-length baseline curve.

Retries and checkpoints: a retry (``study.requeue_trial``) belongs to the *lineage* of the trial it
retries (``failed_trial``, the original number). It trains with the lineage's seed (the one recorded on
the original trial, else derived from the original number), and resumes from the lineage's latest
checkpoint (``checkpoint.py``): the restored epochs are re-reported to Optuna (so the pruner sees the
whole curve) and logged to the retry's new MLflow run, which is tagged ``adamtune.resumed_from_epoch``
and ``adamtune.resumed_from_run`` (the earlier run's id): the retry's run holds the whole curve, the
earlier, failed run links nowhere and keeps its part. The lineage's checkpoints are removed when the
trial ends in any way other than an interruption (which is re-queued and resumes).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from adamtune.core.config import StudySpec
from adamtune.core.errors import TaskError
from adamtune.core.metrics import bare_name
from adamtune.core.space import AdamParams, baseline_for, suggest
from adamtune.storage.rdb import StudyStorage
from adamtune.storage.reporting import TrialWriter
from adamtune.storage.study import (
    BASELINE_ATTR,
    CURVES_ATTR,
    DEVICE_ATTR,
    DIVERGED_EPOCH_ATTR,
    HOST_ATTR,
    PARAMS_ATTR,
    RUN_ID_ATTR,
    SEED_ATTR,
    STATE_ATTR,
    WORKER_ATTR,
    with_db_retry,
)
from adamtune.tasks.loop import LoopTask
from adamtune.training.checkpoint import (
    BEST_ATTR,
    CHECKPOINT_ATTR,
    RESUMED_ATTR,
    TrialCheckpoints,
    lineage_numbers,
    lineage_of,
)
from adamtune.training.context import TrialContext
from adamtune.training.trainer import InlineTrainer, Trainer, describe_failure

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from adamtune.core.curves import Curves
    from adamtune.tracking.tracker import Tracker
    from adamtune.tracking.trial_run import TrialRun

#: Trial attribute holding the traceback of a trial that failed with an exception.
ERROR_ATTR = "adamtune.error"
#: How much of a traceback is kept (the end of it, where the error is): MLflow tags hold 8000 characters.
TRACEBACK_CHARS = 5000


def trial_seed(base_seed: int | None, trial_number: int) -> int:
    """The training seed of a trial: derived from ``--seed`` when given, else from fresh entropy."""
    if base_seed is None:
        import secrets

        return secrets.randbelow(2**31)
    return (base_seed * 1_000_003 + trial_number) % 2**31


@dataclass
class StartedTrial:
    """A trial between :meth:`Objective.begin` and :meth:`Objective.conclude`: its context, MLflow run,
    study writer (``reporting.TrialWriter``), checkpoints (None: off) and the MLflow tags of a resumed
    trial (``resumed()``, empty until it resumed)."""

    trial: optuna.Trial
    context: TrialContext
    run: TrialRun | None
    writer: TrialWriter
    started: float
    checkpoints: TrialCheckpoints | None = None
    resumed: Callable[[], dict[str, object]] = dict


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; holds what stays the same across a worker's trials.

    ``task`` is a built-in ``Task`` (``data``: its ``TaskData`` on ``device``) or a ``LoopTask``
    (``data``: its ``LoopData``), trained in this process; or, with ``trainer`` (a trainer process, see
    ``trainer.py``), the task's ``TaskInfo`` and no data. ``checkpoint_root`` holds one directory per
    study and trial (default: ``<tmp>/adamtune-checkpoints``), created only when a trial asks for
    ``trial.checkpoint_dir``. ``checkpoint_store`` is an opened ``(artifact store, id prefix)``
    (``checkpoint.open_store``) of ``checkpoint_location``; None: no checkpoints. ``checkpoint_every``:
    see ``context.py`` (None: automatic, 0: never).
    """

    spec: StudySpec
    task: Any
    data: Any
    device: str
    tracker: Tracker | None = None
    base_seed: int | None = None
    worker: str = "worker-0"
    checkpoint_root: Path | None = None
    checkpoint_store: tuple[Any, str] | None = None
    checkpoint_every: int | None = None
    keep_best_checkpoint: bool = False
    checkpoint_location: str | None = None
    trainer: Trainer | None = None

    def training(self) -> Trainer:
        """Where this objective's runs train: ``trainer``, else this process (made once)."""
        if self.trainer is None:
            self.trainer = InlineTrainer(self.task, self.data, self.device)
        return self.trainer

    def __call__(self, trial: optuna.Trial) -> float:
        started = self.begin(trial, flush=False)
        try:  # the settings reach the study while the trainer starts (a trainer process trains meanwhile)
            self.training().run(started.context, meanwhile=started.writer.flush)
        except Exception as exc:
            if started.context.state == "running":  # the task's own error, not adamtune stopping it
                self.fail(started, exc)
                if not _is_requeued_error(exc) and started.checkpoints is not None:
                    started.checkpoints.remove_all()
                raise
        except BaseException as exc:  # an interruption: the worker re-queues the trial, which resumes
            self.fail(started, exc)
            raise
        return self.conclude(started)

    def begin(self, trial: optuna.Trial, *, flush: bool = True) -> StartedTrial:
        """Sample the trial's settings, record them on the trial, open its MLflow run and build its context.

        :meth:`__call__` is ``begin`` → train against ``context`` → :meth:`conclude` (or :meth:`fail`);
        the batched worker (``batch_worker.py``) calls the three steps itself for K trials at once. A retry
        (see ``study.requeue_trial``) trains with its lineage's seed and, through its checkpoints, resumes.
        The settings and attributes are written to the study here, or with ``flush=False`` by the caller
        (``started.writer.flush()``), e.g. once the trainer has them.
        """
        spec = self.spec
        assert spec.epochs is not None and spec.batch_size is not None and spec.objective is not None
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        # Written in one transaction below with the settings (see reporting.py); the rest is written in
        # batches where the pruner decides and when the trial ends.
        writer = TrialWriter(trial, spec.epochs)
        writer.defer_params()
        with warnings.catch_warnings():
            # The baseline is enqueued at Adam's defaults, which may lie outside a study's range (lr in
            # [1, 10]): Optuna warns about that fixed value; the baseline trains with the defaults anyway.
            warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
            params = suggest(trial, spec.space)
        if is_baseline:
            params = baseline_for(spec.space)
        system_attrs = _system_attrs(trial)
        lineage = lineage_of(trial.number, system_attrs)
        earlier = self._earlier_trials(trial, system_attrs)
        seed = next(
            (int(t.user_attrs[SEED_ATTR]) for t in earlier if isinstance(t.user_attrs.get(SEED_ATTR), int)),
            trial_seed(self.base_seed, lineage),
        )
        host = socket.gethostname()
        writer.set_attrs(
            {
                SEED_ATTR: seed,
                PARAMS_ATTR: params.as_dict(),
                DEVICE_ATTR: self.device,
                HOST_ATTR: host,
                WORKER_ATTR: self.worker,
            }
        )
        if flush:
            writer.flush()
        run = self._start_run(trial, params, seed, is_baseline, host)
        objective = spec.objective

        def on_epoch(epoch: int, metrics: Mapping[str, float], diverged: bool) -> bool:
            if run is not None:
                run.log_epoch(epoch, metrics)
                _note_run_id(writer, run)
            value = metrics.get(objective, float("nan"))
            if diverged:  # its point is kept (when finite) so Optuna's curve shows where it blew up
                if math.isfinite(value):
                    writer.report(value, epoch)
                return False
            writer.report(value, epoch)
            return not is_baseline and writer.should_prune(epoch)

        def on_resume(epoch: int, history: list[tuple[int, dict[str, float]]]) -> None:
            for number, metrics in history:  # the pruner and the MLflow run see the whole curve
                if run is not None:
                    run.log_epoch(number, metrics)
                value = metrics.get(objective)
                if value is not None and value == value:
                    writer.report(value, number)
            writer.set_attrs({RESUMED_ATTR: epoch})

        checkpoints = self._checkpoints(trial, lineage, earlier, params, seed, writer)
        context = TrialContext(
            params=params,
            n_epochs=spec.epochs,
            batch_size=spec.batch_size,
            seed=seed,
            device=self.device,
            objective=bare_name(objective),
            direction=spec.direction or "minimize",
            split="val",
            number=trial.number,
            checkpoint_dir=self._checkpoint_dir(trial.number),
            data=self.data.value if isinstance(self.task, LoopTask) else self.data,
            on_epoch=on_epoch,
            checkpoints=checkpoints,
            checkpoint_every=self.checkpoint_every,
            on_resume=on_resume,
        )
        context.prune_epochs = frozenset() if is_baseline else writer.decision_epochs()
        resumed = self._resume_tags(context, earlier)
        return StartedTrial(trial, context, run, writer, time.perf_counter(), checkpoints, resumed)

    def fail(self, started: StartedTrial, exc: BaseException) -> None:
        """Record ``started`` as failed with ``exc`` (traceback on the trial, MLflow run closed as failed)."""
        self._fail(started.run, started.context, started.trial, started.writer, exc, started.started, started.resumed())

    def conclude(self, started: StartedTrial) -> float:
        """Score a trial whose training ended (complete, pruned or diverged) and close its MLflow run.

        A trial whose last objective is no better than the untrained model's is labelled diverged (it
        learned nothing: never a result to rank). Its checkpoints are removed (kept as the study's best
        first, when asked).

        Raises:
            optuna.TrialPruned: the trial was pruned. TaskError: a loop task reported nothing.
        """
        trial, context, run, checkpoints, resumed, writer = (
            started.trial,
            started.context,
            started.run,
            started.checkpoints,
            started.resumed,
            started.writer,
        )
        if checkpoints is not None:
            checkpoints.remove_all()
        if context.state == "running" and context.no_better_than_untrained():
            context.state, context.diverged_epoch = "diverged", context.history[-1][0]
        curves = context.curves()
        curves.seconds = time.perf_counter() - started.started
        writer.set_attrs({CURVES_ATTR: curves.history()})
        if context.state == "pruned":
            writer.set_attrs({STATE_ATTR: "pruned"})
            self._finish(run, "pruned", curves, trial, writer, extra_tags=resumed())
            writer.flush_at_end()
            raise optuna.TrialPruned(f"pruned at epoch {context.history[-1][0]}")
        if context.state == "diverged":
            value, _ = context.result()
            writer.set_attrs({STATE_ATTR: "diverged", DIVERGED_EPOCH_ATTR: context.diverged_epoch})
            self._finish(run, "diverged", curves, trial, writer, value=value, extra_tags=resumed())
            writer.flush_at_end()
            return value
        try:
            value, _ = context.result()
        except RuntimeError as exc:
            error = TaskError(f"task {self.spec.task!r}: {exc}")
            self.fail(started, error)
            raise error from None
        writer.set_attrs({STATE_ATTR: "complete"})
        if self.keep_best_checkpoint and checkpoints is not None:
            self._keep_if_best(trial, context, checkpoints, value, writer)
        self._finish(run, "complete", curves, trial, writer, value=value, extra_tags=resumed())
        writer.flush_at_end()
        return value

    def _keep_if_best(
        self,
        trial: optuna.Trial,
        context: TrialContext,
        checkpoints: TrialCheckpoints,
        value: float,
        writer: TrialWriter,
    ) -> None:
        """Save this complete trial's final state as the study's best checkpoint if no complete trial beats it."""
        others = with_db_retry(lambda: trial.study.get_trials(deepcopy=False), "reading the study's trials")
        scores = [
            t.value
            for t in others
            if t.number != trial.number and t.value is not None and t.user_attrs.get(STATE_ATTR) == "complete"
        ]
        better = (min if self.spec.direction != "maximize" else max)([value, *scores]) == value
        if not better:
            return
        try:
            pointer = self.training().save_best(context, checkpoints, context.history[-1][0])
        except Exception as exc:  # the store is away: the result stands, the checkpoint is not kept
            log.warning("trial %d: could not keep its checkpoint as the best (%s)", trial.number, exc)
            return
        if pointer is not None:
            writer.set_attrs({BEST_ATTR: pointer})

    def _earlier_trials(self, trial: optuna.Trial, system_attrs: Mapping[str, Any]) -> list[optuna.trial.FrozenTrial]:
        """The lineage's earlier trials (oldest first); none for a trial that is no retry."""
        numbers = lineage_numbers(trial.number, system_attrs)
        if not numbers:
            return []
        wanted = set(numbers)
        found = [t for t in trial.study.get_trials(deepcopy=False) if t.number in wanted]
        return sorted(found, key=lambda t: t.number)

    def _checkpoints(
        self,
        trial: optuna.Trial,
        lineage: int,
        earlier: list[optuna.trial.FrozenTrial],
        params: AdamParams,
        seed: int,
        writer: TrialWriter,
    ) -> TrialCheckpoints | None:
        if self.checkpoint_store is None or (self.checkpoint_every == 0 and not self.keep_best_checkpoint):
            return None
        store, prefix = self.checkpoint_store
        fingerprint = {
            "task": self.spec.task,
            "params": params.as_dict(),
            "seed": seed,
            "epochs": self.spec.epochs,
            "batch_size": self.spec.batch_size,
        }

        def set_pointer(pointer: dict[str, Any]) -> None:  # durable at once, with the curve so far
            writer.set_attrs({CHECKPOINT_ATTR: pointer})
            with_db_retry(writer.flush, f"recording trial {trial.number}'s checkpoint")

        return TrialCheckpoints(
            store=store,
            prefix=prefix,
            study_name=self.spec.study_name,
            lineage=lineage,
            fingerprint=json_safe(fingerprint),
            set_pointer=set_pointer,
            pointers=[t.user_attrs[CHECKPOINT_ATTR] for t in earlier if CHECKPOINT_ATTR in t.user_attrs],
            location=self.checkpoint_location,
        )

    @staticmethod
    def _resume_tags(context: TrialContext, earlier: list[optuna.trial.FrozenTrial]) -> Any:
        """A function giving the MLflow tags of a resumed trial (empty until it resumed)."""

        def tags() -> dict[str, object]:
            if context.resumed_from_epoch is None:
                return {}
            found: dict[str, object] = {RESUMED_ATTR: context.resumed_from_epoch}
            runs = [t.user_attrs[RUN_ID_ATTR] for t in earlier if RUN_ID_ATTR in t.user_attrs]
            if runs:
                found["adamtune.resumed_from_run"] = runs[-1]
            return found

        return tags

    def _checkpoint_dir(self, number: int) -> Path:
        root = self.checkpoint_root or Path(tempfile.gettempdir()) / "adamtune-checkpoints"
        return root / re.sub(r"[^A-Za-z0-9._-]", "_", self.spec.study_name) / f"trial-{number}"

    def _fail(
        self,
        run: TrialRun | None,
        context: TrialContext,
        trial: optuna.Trial,
        writer: TrialWriter,
        exc: BaseException,
        started: float,
        extra_tags: Mapping[str, object] | None = None,
    ) -> None:
        """Record a failed trial: its traceback on the trial, its MLflow run closed as failed."""
        kind, text = describe_failure(exc)
        text = (text or f"{kind}: {exc}")[-TRACEBACK_CHARS:]
        if isinstance(exc, Exception):  # an interruption is not the task's error
            writer.set_attrs({ERROR_ATTR: text})
        curves = context.curves()
        curves.seconds = time.perf_counter() - started
        self._finish(run, "failed", curves, trial, writer, error=exc, error_text=text, extra_tags=extra_tags)
        with contextlib.suppress(Exception):  # the storage is down: the worker reports the failure anyway
            writer.flush()

    def _start_run(
        self, trial: optuna.Trial, params: AdamParams, seed: int, is_baseline: bool, host: str
    ) -> TrialRun | None:
        if self.tracker is None:
            return None
        logged = {k: v for k, v in params.as_dict().items() if k in _logged_param_names(self.spec)}
        return self.tracker.start_trial(
            run_name="baseline" if is_baseline else f"trial-{trial.number}",
            params={**logged, "seed": seed, "epochs": self.spec.epochs, "batch_size": self.spec.batch_size},
            tags={
                "adamtune.study": self.spec.study_name,
                "adamtune.task": self.spec.task,
                "adamtune.trial_number": trial.number,
                "adamtune.baseline": str(is_baseline).lower(),
                "adamtune.device": self.device,
                "adamtune.host": host,
                "adamtune.worker": self.worker,
                "adamtune.state": "running",
            },
        )

    def _finish(
        self,
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
        last write (not waited for: a short trial often ends before the run is made, see ``tracking_trial.py``)."""
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
    backend = getattr(getattr(getattr(trial, "study", None), "_storage", None), "_backend", None)
    if not isinstance(backend, StudyStorage):
        return

    def link(run_id: str) -> None:
        try:
            backend.link_trial(trial._trial_id, RUN_ID_ATTR, run_id)
        except Exception as exc:  # the database is away: the link is lost, the run keeps its tags
            log.debug("trial %d: could not store its MLflow run id: %s", trial.number, exc)

    run.when_created(link)


def _system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """The trial's Optuna system attributes (``failed_trial``/``retry_history`` of a retry); {} for a FixedTrial."""
    study = getattr(trial, "study", None)
    if study is None:
        return {}
    cached = getattr(trial, "_cached_frozen_trial", None)  # read when the trial was asked for: no query
    if cached is not None:
        return dict(cached.system_attrs)
    return with_db_retry(
        lambda: study._storage.get_trial_system_attrs(trial._trial_id), f"reading trial {trial.number}"
    )


def _is_requeued_error(exc: BaseException) -> bool:
    """The worker re-queues a trial that failed because the study database went away: keep its checkpoint."""
    from adamtune.storage.study import is_transient_db_error

    return is_transient_db_error(exc)


def json_safe(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so fingerprints compare equal."""
    import json

    return json.loads(json.dumps(value))


def _logged_param_names(spec: StudySpec) -> set[str]:
    return {"lr", "beta1", "beta2", "epsilon", "decay", *spec.space.extra_dimensions()}
