"""Where a worker's trials train: in its own process, or in a trainer process beside it.

A worker (``worker.py``) runs the trial loop -- admission, sampling, pruning decisions, the study's and
MLflow's bookkeeping -- and hands each training run to a *trainer*, which holds the task, its data on the
device and the training code. Two trainers answer the same calls:

* :class:`InlineTrainer`: the training runs in the worker's process (its thread calls the task).
* :class:`~adamtune.training.trainer_client.ProcessTrainer`: a *trainer process* (``trainer_server.py``) holds the
  task and the data and trains; the worker's process keeps the study. The trial loop's Python then runs
  on another core than the training's, instead of taking turns with it for the interpreter's lock (a
  small model's loop is Python-bound: this was most of the bookkeeping's cost), and the worker's
  process never imports torch: its start-up overlaps the trainer's.

Which one a search uses: :func:`trainer_kind`. The calls (``run``, ``train_once``, ``save_best``) and
what they raise are the same for both, so the objective, the confirmation stage and their tests do not
know which trainer they have.

Errors raised by training code in a trainer process reach this side as :class:`TrainingError`, with the
original type name and traceback; :func:`describe_failure` gives both for any exception, so a failed
trial's log line and its recorded traceback read the same either way. Tracebacks start at the first frame
outside adamtune (:func:`format_traceback`): the user's ``fit``, not the plumbing that called it.

This module imports neither torch, optuna nor mlflow.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from adamtune.core.errors import AdamtuneError

if TYPE_CHECKING:
    from adamtune.core.folds import Fold
    from adamtune.core.space import AdamParams
    from adamtune.training.context import TrialContext
    from adamtune.training.runner import RunOutcome

#: ``inline`` or ``process``: overrides :func:`trainer_kind` (diagnostics, same-minute benchmarks).
TRAINER_ENV = "ADAMTUNE_TRAINER"


def trainer_kind(workers: int, batch_trials: int = 1) -> str:
    """``process`` or ``inline``: where a search's one worker trains.

    A trainer process pays when the machine has a core to spare for the trial loop beside the training:
    a search with one worker on two or more cores. Several local workers already keep every core
    busy with training, and a batched worker (``batch_trials`` > 1) trains in its own process.
    ``TRAINER_ENV`` chooses for a one-worker search that does not batch.
    """
    if workers != 1 or batch_trials > 1:
        return "inline"
    chosen = os.environ.get(TRAINER_ENV, "").strip().lower()
    if chosen in ("inline", "process"):
        return chosen
    from adamtune.training.devices import cpu_cores

    return "process" if cpu_cores() >= 2 else "inline"


@dataclass(frozen=True)
class TaskInfo:
    """What the trial loop needs to know of a task, as plain data (no model, no data, no torch).

    ``directions`` holds the direction of every metric in ``metric_names``; ``batchable`` is None when
    the task can train several trials as one vectorised model, else the reason it cannot (``batched.py``).
    """

    name: str
    default_epochs: int
    default_batch_size: int
    objective: str
    direction: str
    metric_names: tuple[str, ...]
    directions: Mapping[str, str | None] = field(default_factory=dict)
    is_loop: bool = False
    folds: bool = False  # confirmation on fresh validation folds (``Task.folds``/``LoopTask.folds``)

    @classmethod
    def of(cls, task: Any) -> TaskInfo:
        """The facts of a built-in ``Task`` or a ``LoopTask``."""
        from adamtune.tasks.loop import LoopTask

        names = tuple(task.metric_names)
        return cls(
            name=task.name,
            default_epochs=task.default_epochs,
            default_batch_size=task.default_batch_size,
            objective=task.objective,
            direction=task.direction,
            metric_names=names,
            directions={name: task.direction_of(name) for name in names},
            is_loop=isinstance(task, LoopTask),
            folds=bool(getattr(task, "folds", False)),
        )

    def direction_of(self, metric: str) -> str | None:
        return self.directions.get(metric)


class TrainingError(Exception):
    """An exception raised by the training code in a trainer process.

    ``kind`` is its type's name, ``str()`` its message and ``traceback_text`` its traceback as the
    trainer process formatted it (the user's own frames, which this process does not have).
    """

    def __init__(self, kind: str, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.kind, self.traceback_text = kind, traceback_text

    def __reduce__(self) -> Any:
        return (TrainingError, (self.kind, str(self), self.traceback_text))


class TrainerLost(Exception):
    """The trainer process exited during a run (killed, out of memory, a crash in native code)."""


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """``(type name, traceback text)`` of an exception raised by training, wherever it ran ("" when the
    traceback would only show adamtune's own plumbing: a lost trainer process; or an AdamtuneError, whose
    message is the whole story, e.g. a ``fit`` that broke its contract)."""
    if isinstance(exc, TrainingError):
        return exc.kind, exc.traceback_text
    if isinstance(exc, (TrainerLost, AdamtuneError)):
        return type(exc).__name__, ""
    return type(exc).__name__, format_traceback(exc)


#: adamtune's own source files start with this (frames of its plumbing, left out of a user's traceback).
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback from its first frame outside adamtune (the user's code that raised it, and what
    that called, adamtune's ``trial.report`` included); whole when every frame is adamtune's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


class Trainer(Protocol):
    """Trains a worker's runs; see the module docstring. ``info`` describes the task."""

    info: TaskInfo

    def run(self, context: TrialContext, meanwhile: Callable[[], None] | None = None) -> None:
        """Train one trial against ``context`` (``runner.run_in_context``); its reports are the result.

        ``meanwhile`` is the caller's work for the run's start (writing its settings to the study): done
        before training here, while it trains in a trainer process; what it raises stops the run and is
        raised. On return or raise, ``context`` holds the run's outcome (state, curve, untrained metrics).

        Raises:
            StopTrial: the trial was pruned or diverged. KeyboardInterrupt: interrupted. Anything the
            training code raised (a :class:`TrainingError` from a trainer process), or what
            ``context``'s hooks raised.
        """

    def train_once(
        self,
        params: AdamParams,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        split: str = "val",
        on_epoch: Callable[[Any], None] | None = None,
        objective: str | None = None,
        fold: Fold | None = None,
    ) -> RunOutcome:
        """``runner.train_once`` on this trainer's task, data and device."""

    def save_best(self, context: TrialContext, checkpoints: Any, epoch: int) -> dict[str, Any] | None:
        """Write the final state of the run last trained against ``context`` as the study's best
        checkpoint (``checkpoint.TrialCheckpoints.save_best``); its pointer, None when the run registered
        nothing to save."""

    def close(self) -> None:
        """Release the trainer (a trainer process exits)."""


class InlineTrainer:
    """The training runs in this process, on ``data`` (already on ``device``)."""

    def __init__(self, task: Any, data: Any, device: str) -> None:
        self.task, self.data, self.device = task, data, device
        self.info = TaskInfo.of(task)

    def run(self, context: TrialContext, meanwhile: Callable[[], None] | None = None) -> None:
        from adamtune.training.runner import run_in_context

        if meanwhile is not None:
            meanwhile()
        run_in_context(self.task, self.data, context)

    def train_once(
        self,
        params: AdamParams,
        *,
        epochs: int,
        batch_size: int,
        seed: int,
        split: str = "val",
        on_epoch: Callable[[Any], None] | None = None,
        objective: str | None = None,
        fold: Fold | None = None,
    ) -> RunOutcome:
        from adamtune.training.runner import train_once

        return train_once(
            self.task,
            self.data,
            params,
            device=self.device,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            split=split,
            on_epoch=on_epoch,
            objective=objective,
            fold=fold,
        )

    def save_best(self, context: TrialContext, checkpoints: Any, epoch: int) -> dict[str, Any] | None:
        state = context.capture_state()
        return None if state is None else checkpoints.save_best(epoch, state)

    def close(self) -> None:
        """Nothing to release."""
