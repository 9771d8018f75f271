"""One trial: ``trial -> AdamParams -> a trial context -> the task trains -> report/prune -> value``.

Every kind of task runs through the same loop: the objective builds a
:class:`~adamtune.training.context.TrialContext` for the trial, and ``runner.run_in_context`` trains the task
against it (the user's ``fit`` for a loop task, the built-in trainer otherwise). Each epoch the context
calls back here: the epoch's metrics go to MLflow (step = epoch), the objective metric to Optuna
(``trial.report``), and the pruner may stop the trial.

What each outcome becomes (see ``outcomes.py`` for the bookkeeping):

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
  once and goes on with the next trial. A ``fit`` that broke its contract (reported nothing, or not the
  objective) fails with a one-line :class:`~adamtune.core.errors.ContractError` naming the task, which stops
  the worker (``failures.py``).

The baseline trial (enqueued first in a new study) trains with exactly Adam's defaults and is never
pruned, so every result can be compared with a full-length baseline curve.

Retries and checkpoints: a retry trains with its lineage's seed and resumes from the lineage's latest
checkpoint (``lineage.py``). The trial's MLflow run is started, fed and closed by ``mlflow_run.py``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from adamtune.core.config import StudySpec
from adamtune.core.errors import ContractError
from adamtune.core.metrics import bare_name
from adamtune.core.space import AdamParams
from adamtune.storage.attr_keys import (
    BASELINE_ATTR,
    CURVES_ATTR,
    DEVICE_ATTR,
    DIVERGED_EPOCH_ATTR,
    HOST_ATTR,
    PARAMS_ATTR,
    SEARCHED_ATTR,
    SEED_ATTR,
    STATE_ATTR,
    WORKER_ATTR,
)
from adamtune.storage.db_errors import with_db_retry
from adamtune.storage.reporting import TrialWriter
from adamtune.tasks.loop import LoopTask
from adamtune.training.checkpoint import BEST_ATTR, RESUMED_ATTR, TrialCheckpoints, lineage_of
from adamtune.training.context import TrialContext
from adamtune.training.trainer import InlineTrainer, Trainer, describe_failure
from adamtune.trials.budget_check import TrialBudget, trial_settings
from adamtune.trials.lineage import (
    earlier_trials,
    is_requeued_error,
    lineage_checkpoints,
    lineage_seed,
    resume_tags,
    system_attrs,
)
from adamtune.trials.mlflow_run import finish_run, log_epoch, start_run

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from adamtune.tracking.tracker import Tracker
    from adamtune.tracking.trial_run import TrialRun

#: Trial attribute holding the traceback of a trial that failed with an exception.
ERROR_ATTR = "adamtune.error"
#: How much of a traceback is kept (the end of it, where the error is): MLflow tags hold 8000 characters.
TRACEBACK_CHARS = 5000


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
    #: The study's budget found by the latest admission (``budget_check.py``): the auto space's size, the
    #: end of the trial phase; set by the worker before each trial.
    budget: TrialBudget = field(default_factory=TrialBudget)

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
                error = self._contract_error(exc) if isinstance(exc, ContractError) else exc
                self.fail(started, error)
                if not is_requeued_error(exc) and started.checkpoints is not None:
                    started.checkpoints.remove_all()
                if error is not exc:
                    raise error from None
                raise
        except BaseException as exc:  # an interruption: the worker re-queues the trial, which resumes
            self.fail(started, exc)
            raise
        return self.conclude(started)

    def begin(self, trial: optuna.Trial, *, flush: bool = True) -> StartedTrial:
        """Sample the trial's settings, record them on the trial, open its MLflow run and build its context.

        :meth:`__call__` is ``begin`` → train against ``context`` → :meth:`conclude` (or :meth:`fail`);
        the batched worker (``batch_worker.py``) calls the three steps itself for K trials at once. A retry
        (see ``stale_trials.requeue_trial``) trains with its lineage's seed and, through its checkpoints, resumes.
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
        params, searched = trial_settings(trial, spec.space, self.budget)
        attrs = system_attrs(trial)
        lineage = lineage_of(trial.number, attrs)
        earlier = earlier_trials(trial, attrs)
        seed = lineage_seed(self.base_seed, lineage, earlier)
        host = socket.gethostname()
        writer.set_attrs(
            {
                SEED_ATTR: seed,
                PARAMS_ATTR: params.as_dict(),
                SEARCHED_ATTR: searched,
                DEVICE_ATTR: self.device,
                HOST_ATTR: host,
                WORKER_ATTR: self.worker,
            }
        )
        if flush:
            writer.flush()
        run = start_run(
            self.tracker, spec, trial, params, seed, is_baseline, device=self.device, host=host, worker=self.worker
        )
        objective = spec.objective

        def on_epoch(epoch: int, metrics: Mapping[str, float], diverged: bool) -> bool:
            log_epoch(run, writer, epoch, metrics)
            value = metrics.get(objective, float("nan"))
            if diverged:  # its point is kept (when finite) so Optuna's curve shows where it blew up
                if math.isfinite(value):
                    writer.report(value, epoch)
                return False
            writer.report(value, epoch)
            # at a time budget's end of the trial phase, running trials stop (pruned) for the confirmation
            return not is_baseline and (writer.should_prune(epoch) or self.budget.time_is_up())

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
        # with a time budget every epoch asks: the trial phase's end may come at any of them
        timed = self.budget.phase_end is not None
        context.prune_epochs = frozenset() if is_baseline else None if timed else writer.decision_epochs()
        resumed = resume_tags(context, earlier)
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
            optuna.TrialPruned: the trial was pruned. ContractError: a loop task reported nothing.
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
            finish_run(run, "pruned", curves, trial, writer, extra_tags=resumed())
            writer.flush_at_end()
            raise optuna.TrialPruned(f"pruned at epoch {context.history[-1][0]}")
        if context.state == "diverged":
            value, _ = context.result()
            writer.set_attrs({STATE_ATTR: "diverged", DIVERGED_EPOCH_ATTR: context.diverged_epoch})
            finish_run(run, "diverged", curves, trial, writer, value=value, extra_tags=resumed())
            writer.flush_at_end()
            return value
        try:
            value, _ = context.result()
        except RuntimeError as exc:  # fit reported nothing
            error = self._contract_error(exc)
            self.fail(started, error)
            raise error from None
        writer.set_attrs({STATE_ATTR: "complete"})
        if self.keep_best_checkpoint and checkpoints is not None:
            self._keep_if_best(trial, context, checkpoints, value, writer)
        finish_run(run, "complete", curves, trial, writer, value=value, extra_tags=resumed())
        writer.flush_at_end()
        return value

    def _contract_error(self, exc: Exception) -> ContractError:
        """``exc`` (the task broke its contract: see ``context.py``) as one line naming the task."""
        return ContractError(f"task {self.spec.task!r}: {exc}")

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

    def _checkpoints(
        self,
        trial: optuna.Trial,
        lineage: int,
        earlier: list[optuna.trial.FrozenTrial],
        params: AdamParams,
        seed: int,
        writer: TrialWriter,
    ) -> TrialCheckpoints | None:
        """The checkpoints of ``trial``'s lineage (:func:`~adamtune.trials.lineage.lineage_checkpoints`); None: off."""
        if self.checkpoint_store is None or (self.checkpoint_every == 0 and not self.keep_best_checkpoint):
            return None
        store, prefix = self.checkpoint_store
        return lineage_checkpoints(
            trial,
            lineage,
            earlier,
            store=store,
            prefix=prefix,
            location=self.checkpoint_location,
            spec=self.spec,
            params=params,
            seed=seed,
            writer=writer,
        )

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
        finish_run(run, "failed", curves, trial, writer, error=exc, error_text=text, extra_tags=extra_tags)
        with contextlib.suppress(Exception):  # the storage is down: the worker reports the failure anyway
            writer.flush()
