"""One trial: ``trial -> AdamParams -> a trial context -> the task trains -> report/prune -> value``.

Every kind of task runs through the same loop: the objective builds a
:class:`~adamtune.context.TrialContext` for the trial, and ``runner.run_in_context`` trains the task
against it (the user's ``fit`` for a loop task, the built-in trainer otherwise). Each epoch the context
calls back here: the epoch's metrics go to MLflow (step = epoch), the objective metric to Optuna
(``trial.report``), and the pruner may stop the trial.

What each outcome becomes (see ``study.py`` for the bookkeeping):

* complete: the value is the objective metric (e.g. ``val_loss``, ``val_accuracy``, ``val_mae``) of the
  last reported epoch.
* pruned: ``optuna.TrialPruned`` propagates; Optuna records the trial as PRUNED.
* diverged: a non-finite or exploded metric (see ``context.py``; for built-in tasks the rule of
  ``train.py``). The trial returns the *untrained* model's objective (training that blew up is worth no
  more than no training; the exact rule for a loop task is in ``context.py``), so the sampler learns the
  region is bad; the state ``diverged`` and the epoch are recorded on the trial and in MLflow.
* failed: any other exception (including one raised by a user's ``fit``, or a ``fit`` that reported
  nothing), or an interruption (KeyboardInterrupt/SIGTERM), propagates after the MLflow run is closed
  as failed; Optuna records the trial as FAIL. The traceback is recorded once, on the trial (user
  attribute ``adamtune.error``) and in the MLflow run (tag ``adamtune.traceback``); the worker logs it
  once and goes on with the next trial.

The baseline trial (enqueued first in a new study) trains with exactly Adam's defaults and is never
pruned, so every result can be compared with a full-length baseline curve.
"""

from __future__ import annotations

import contextlib
import re
import socket
import tempfile
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from adamtune.config import StudySpec
from adamtune.context import TrialContext
from adamtune.errors import TaskError
from adamtune.metrics import bare_name
from adamtune.runner import run_in_context
from adamtune.space import AdamParams, baseline_for, suggest
from adamtune.study import (
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
)
from adamtune.tasks.loop import LoopTask

if TYPE_CHECKING:
    from adamtune.tracking import Tracker, TrialRun
    from adamtune.train import Curves

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
    """A trial between :meth:`Objective.begin` and :meth:`Objective.conclude`: its context and MLflow run."""

    trial: optuna.Trial
    context: TrialContext
    run: TrialRun | None
    started: float


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; holds what stays the same across a worker's trials.

    ``task`` is a built-in ``Task`` (``data``: its ``TaskData`` on ``device``) or a ``LoopTask``
    (``data``: its ``LoopData``). ``checkpoint_root`` holds one directory per study and trial (default:
    ``<tmp>/adamtune-checkpoints``), created only when a trial asks for ``trial.checkpoint_dir``.
    """

    spec: StudySpec
    task: Any
    data: Any
    device: str
    tracker: Tracker | None = None
    base_seed: int | None = None
    worker: str = "worker-0"
    checkpoint_root: Path | None = None

    def __call__(self, trial: optuna.Trial) -> float:
        started = self.begin(trial)
        try:
            run_in_context(self.task, self.data, started.context)
        except Exception as exc:
            if started.context.state == "running":  # the task's own error, not adamtune stopping it
                self.fail(started, exc)
                raise
        except BaseException as exc:  # an interruption: the worker re-queues the trial
            self.fail(started, exc)
            raise
        return self.conclude(started)

    def begin(self, trial: optuna.Trial) -> StartedTrial:
        """Sample the trial's settings, record them on the trial, open its MLflow run and build its context.

        :meth:`__call__` is ``begin`` → train against ``context`` → :meth:`conclude` (or :meth:`fail`);
        the batched worker (``batch_worker.py``) calls the three steps itself for K trials at once.
        """
        spec = self.spec
        assert spec.epochs is not None and spec.batch_size is not None and spec.objective is not None
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        params = suggest(trial, spec.space)
        if is_baseline:
            params = baseline_for(spec.space)
        seed = trial_seed(self.base_seed, trial.number)
        host = socket.gethostname()
        for key, value in {
            SEED_ATTR: seed,
            PARAMS_ATTR: params.as_dict(),
            DEVICE_ATTR: self.device,
            HOST_ATTR: host,
            WORKER_ATTR: self.worker,
        }.items():
            trial.set_user_attr(key, value)
        run = self._start_run(trial, params, seed, is_baseline, host)
        objective = spec.objective

        def on_epoch(epoch: int, metrics: Mapping[str, float], diverged: bool) -> bool:
            if run is not None:
                run.log_epoch(epoch, metrics)
                _note_run_id(trial, run)
            if diverged:
                return False
            trial.report(metrics[objective], epoch)
            return not is_baseline and trial.should_prune()

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
        )
        return StartedTrial(trial, context, run, time.perf_counter())

    def fail(self, started: StartedTrial, exc: BaseException) -> None:
        """Record ``started`` as failed with ``exc`` (traceback on the trial, MLflow run closed as failed)."""
        self._fail(started.run, started.context, started.trial, exc, started.started)

    def conclude(self, started: StartedTrial) -> float:
        """Score a trial whose training ended (complete, pruned or diverged) and close its MLflow run.

        Raises:
            optuna.TrialPruned: the trial was pruned. TaskError: a loop task reported nothing.
        """
        trial, context, run = started.trial, started.context, started.run
        curves = context.curves()
        curves.seconds = time.perf_counter() - started.started
        if context.state == "pruned":
            trial.set_user_attr(STATE_ATTR, "pruned")
            trial.set_user_attr(CURVES_ATTR, curves.history())
            self._finish(run, "pruned", curves, trial)
            raise optuna.TrialPruned(f"pruned at epoch {context.history[-1][0]}")
        trial.set_user_attr(CURVES_ATTR, curves.history())
        if context.state == "diverged":
            value, _ = context.result()
            trial.set_user_attr(STATE_ATTR, "diverged")
            trial.set_user_attr(DIVERGED_EPOCH_ATTR, context.diverged_epoch)
            self._finish(run, "diverged", curves, trial, value=value)
            return value
        try:
            value, _ = context.result()
        except RuntimeError as exc:
            error = TaskError(f"task {self.spec.task!r}: {exc}")
            self.fail(started, error)
            raise error from None
        trial.set_user_attr(STATE_ATTR, "complete")
        self._finish(run, "complete", curves, trial, value=value)
        return value

    def _checkpoint_dir(self, number: int) -> Path:
        root = self.checkpoint_root or Path(tempfile.gettempdir()) / "adamtune-checkpoints"
        return root / re.sub(r"[^A-Za-z0-9._-]", "_", self.spec.study_name) / f"trial-{number}"

    def _fail(
        self, run: TrialRun | None, context: TrialContext, trial: optuna.Trial, exc: BaseException, started: float
    ) -> None:
        """Record a failed trial: its traceback on the trial, its MLflow run closed as failed."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-TRACEBACK_CHARS:]
        if isinstance(exc, Exception):  # an interruption is not the task's error
            with contextlib.suppress(Exception):  # the storage is down: the worker reports the failure anyway
                trial.set_user_attr(ERROR_ATTR, text)
        curves = context.curves()
        curves.seconds = time.perf_counter() - started
        self._finish(run, "failed", curves, trial, error=exc, error_text=text)

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
        *,
        value: float | None = None,
        error: BaseException | None = None,
        error_text: str | None = None,
    ) -> None:
        """Close the trial's MLflow run as ``state`` (while the trial still runs, so its run id can be stored)."""
        if run is None:
            return
        run.wait_for_run_id()
        _note_run_id(trial, run)
        last = curves.last if curves is not None else None
        final = last.as_dict() if last is not None else {}
        tags: dict[str, object] = {"adamtune.trial_number": trial.number}
        if curves is not None:
            tags["adamtune.stopped_epoch"] = curves.diverged_epoch or (last.epoch if last is not None else 0)
            if curves.diverged:
                tags["adamtune.diverged_epoch"] = curves.diverged_epoch
            if curves.seconds:
                final["seconds"] = curves.seconds
        if error is not None:
            tags["adamtune.error"] = f"{type(error).__name__}: {error}"[:500]
            if error_text and isinstance(error, Exception):
                tags["adamtune.traceback"] = error_text
        run.finish(state, final, tags, study=getattr(trial, "study", None), trial_number=trial.number, value=value)


def _note_run_id(trial: optuna.Trial, run: TrialRun) -> None:
    """Store the MLflow run id on the trial the first time it is known (the writer creates runs)."""
    run_id = run.take_new_run_id()
    if run_id is not None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)


def _logged_param_names(spec: StudySpec) -> set[str]:
    return {"lr", "beta1", "beta2", "epsilon", "decay", *spec.space.extra_dimensions()}
