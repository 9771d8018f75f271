"""The protocol between a worker and its trainer process: the messages, their encoding, what both sides share.

The worker's side is ``trainer_client.py`` (:class:`~adamtune.training.trainer_client.ProcessTrainer`), the
trainer process's is ``trainer_server.py``, started as ``python -m`` :data:`SERVER_MODULE` ``FD PARENT_PID``
(``FD``: its end of a socket pair). This module is what both read: the messages below, the specs they
carry, how failures and a run's outcome are encoded and decoded. It imports neither torch, optuna nor
mlflow.

Framing: each message is one Python tuple sent through a :class:`multiprocessing.connection.Connection`
on the socket pair (pickled, length-prefixed; :func:`open_connection`). Every message is ``(kind, id,
*payload)``; ``id`` is the request's (a run's messages carry their run's id). The trainer process answers
requests one at a time, in order.

Requests and what the trainer process sends back:

* ``("task", id, name)``: import and build the task (``tasks.resolve_task``) -> ``("reply", id, "ok",
  TaskInfo)``;
* ``("device", id, devices)``: resolve ``auto``/``cpu``/``cuda:N`` on this machine -> the device name;
* ``("data", id, data_dir, devices, threads)``: load the task's data once, move it to the device, set
  torch's threads (and the current CUDA device) -> the split sizes;
* ``("warm", id)``: one Adam step on a tiny model, so that the first trial does not pay torch's
  first-use imports (``torch.optim`` imports ``torch._dynamo``, ~0.7 s) -> None;
* ``("run", id, RunSpec)``: train one trial against a :class:`~adamtune.training.context.TrialContext` built
  there (``runner.run_in_context``). Its hooks talk to the worker while it trains:
  ``("epoch", id, epoch, metrics, diverged, asks)`` for every report (``asks``: the worker answers
  ``("decision", id, epoch, prune)``; ``prune`` None means "stop, my side failed"),
  ``("resume", id, epoch, history)`` when a checkpoint was restored, and ``("pointer", id, pointer)``
  after a checkpoint was written (answered ``("pointer_reply", id, error or None)``: the pointer is on
  the trial before training goes on). It ends with ``("ran", id, snapshot, outcome)``: the context's
  :meth:`~adamtune.training.context.TrialContext.snapshot` and ``None`` (returned), ``("stop",)`` (pruned or
  diverged), ``("aborted",)`` (the worker said stop), ``("interrupted",)`` or ``("error", type name,
  message, traceback)`` (decoded by :func:`raise_outcome`);
* ``("once", id, OnceSpec)``: ``runner.train_once`` (confirmation runs), sending ``("tick", id, epoch,
  metrics)`` per epoch -> ``("once", id, "ok", RunOutcome)`` or ``("once", id, "err", outcome)``;
* ``("save_best", id, CheckpointSpec, epoch)``: write the last run's final state as the study's best
  checkpoint -> its pointer, or None when the run registered nothing.

A request that fails is answered ``("reply", id, "err", (type name, message, traceback))``
(:func:`encode_failure`); an :class:`~adamtune.core.errors.AdamtuneError` (unknown task, missing data,
absent device) keeps its class name, so the worker raises the same error (:func:`decode_failure`) and the
user reads the same one line.

Out of band: the worker sends SIGINT to stop a run (``trainer_server.py`` says when it takes effect);
closing its end of the socket ends the trainer process.
"""

from __future__ import annotations

from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.core import errors
from adamtune.core.folds import Fold
from adamtune.core.space import AdamParams
from adamtune.training.trainer import TrainingError, format_traceback

if TYPE_CHECKING:
    from adamtune.training.context import TrialContext

#: The trainer process's module, run as ``python -m SERVER_MODULE FD PARENT_PID``.
SERVER_MODULE = "adamtune.training.trainer_server"

#: The worker's answers to a run's messages (not requests: the trainer process drops those left over).
ANSWERS = ("decision", "pointer_reply")


def open_connection(fd: int) -> Connection:
    """The message framing on one end of the socket pair (which the connection then owns)."""
    return Connection(fd)


@dataclass(frozen=True)
class CheckpointSpec:
    """A lineage's checkpoints (``checkpoint.TrialCheckpoints`` without its store and pointer hook)."""

    location: str
    study_name: str
    lineage: int
    fingerprint: dict[str, Any]
    pointers: list[dict[str, Any]]


@dataclass(frozen=True)
class RunSpec:
    """One trial's run: the arguments of its :class:`TrialContext` in the trainer process."""

    params: AdamParams
    n_epochs: int
    batch_size: int
    seed: int
    objective: str
    direction: str
    split: str
    number: int | None
    checkpoint_dir: Path | None
    checkpoint_every: int | None
    prune_epochs: frozenset[int] | None
    checkpoints: CheckpointSpec | None

    @classmethod
    def of(cls, context: TrialContext) -> RunSpec:
        """The run of the worker's ``context``: what its context in the trainer process is built from."""
        checkpoints = context.checkpoints
        return cls(
            params=context.params,
            n_epochs=context.n_epochs,
            batch_size=context.batch_size,
            seed=context.seed,
            objective=context.objective,
            direction=context.direction,
            split=context.split,
            number=context.number,
            checkpoint_dir=context.checkpoint_dir_setting,
            checkpoint_every=context.checkpoint_every,
            prune_epochs=context.prune_epochs,
            checkpoints=None if checkpoints is None else checkpoint_spec(checkpoints),
        )


@dataclass(frozen=True)
class OnceSpec:
    """One ``runner.train_once`` run (``progress``: send a tick per epoch)."""

    params: AdamParams
    epochs: int
    batch_size: int
    seed: int
    split: str
    objective: str | None
    progress: bool
    fold: Fold | None = None


def checkpoint_spec(checkpoints: Any) -> CheckpointSpec:
    """What a trainer process needs to open a lineage's checkpoints itself."""
    if checkpoints.location is None:
        raise ValueError("a trainer process needs the checkpoint store's location (TrialCheckpoints.location)")
    return CheckpointSpec(
        checkpoints.location, checkpoints.study_name, checkpoints.lineage, checkpoints.fingerprint, checkpoints.pointers
    )


def encode_failure(exc: BaseException) -> tuple[str, str, str]:
    """``(type name, message, traceback)``; an AdamtuneError's message is its whole text (no traceback)."""
    if isinstance(exc, errors.AdamtuneError):
        return type(exc).__name__, str(exc), ""
    return type(exc).__name__, str(exc), format_traceback(exc)


def decode_failure(failure: tuple[str, str, str]) -> Exception:
    """The exception to raise for a failed request: an AdamtuneError keeps its class, else TrainingError."""
    kind, text, trace = failure
    error_class = getattr(errors, kind, None)
    if isinstance(error_class, type) and issubclass(error_class, errors.AdamtuneError):
        return error_class(text)
    return TrainingError(kind, text, trace)


def raise_outcome(outcome: tuple[Any, ...] | None, context: TrialContext | None) -> None:
    """Raise what ended a run in the trainer process (nothing for a run that returned)."""
    if outcome is None:
        return
    kind = outcome[0]
    if kind == "stop":
        assert context is not None and context.stop_reason is not None
        raise context.stop_reason
    if kind == "interrupted":
        raise KeyboardInterrupt("the trainer process was interrupted")
    if kind == "aborted":
        raise TrainingError("Aborted", "the run was stopped by the worker", "")
    _, name, text, trace = outcome
    raise decode_failure((name, text, trace))  # an AdamtuneError (a broken fit contract) keeps its class
