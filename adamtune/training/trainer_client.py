"""The worker's side of a trainer process: :class:`ProcessTrainer` (see ``trainer.py`` for why, and
``trainer_protocol.py`` for the messages), and :func:`start_trainer`, which starts one where it pays.

Contract: a :class:`ProcessTrainer` answers :class:`~adamtune.training.trainer.Trainer`'s calls as an
``InlineTrainer`` would, with the same outcomes on the worker's ``TrialContext``: its reports reach the
context's hooks (the study, MLflow) as they are made, in order, and the context adopts the run's outcome
when it ends. What differs is only where the training code runs:

* an exception of the training code is raised here as :class:`~adamtune.training.trainer.TrainingError`, carrying
  its type name and traceback;
* preparation errors (unknown task, missing data, absent device) are raised as the same
  :class:`~adamtune.core.errors.AdamtuneError` class the trainer process raised;
* a ``KeyboardInterrupt`` here (Ctrl-C, SIGTERM turned into one by ``signals.Interrupts``) interrupts the
  run there (SIGINT), waits up to ``INTERRUPT_WAIT_SECONDS`` for it to stop (then kills it) and is
  raised again;
* a trainer process that dies (killed, out of memory, a crash in native code) fails the run with
  :class:`~adamtune.training.trainer.TrainerLost`; the next run starts a new one and prepares it again
  (task, device, data).

The trainer process's stdout and stderr (a user's ``print`` in ``fit``, warnings) are copied line by line
to this process's, so that they appear above a live progress display as this process's own would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from adamtune.core.signals import exit_status
from adamtune.training.trainer import TaskInfo, TrainerLost, trainer_kind
from adamtune.training.trainer_protocol import (
    SERVER_MODULE,
    OnceSpec,
    RunSpec,
    checkpoint_spec,
    decode_failure,
    open_connection,
    raise_outcome,
)

if TYPE_CHECKING:
    from adamtune.core.folds import Fold
    from adamtune.core.space import AdamParams
    from adamtune.training.context import TrialContext
    from adamtune.training.runner import RunOutcome

#: How long an interrupted run may take to stop before its trainer process is killed (seconds).
INTERRUPT_WAIT_SECONDS = 10.0
#: How long closing waits for the trainer process to exit once its socket is closed (seconds).
EXIT_WAIT_SECONDS = 5.0


class ProcessTrainer:
    """A trainer process preparing the task, its data and the device as soon as it is made.

    ``ProcessTrainer(task, data_dir, devices, threads)`` starts the process and sends the preparation
    requests at once; :attr:`info`, :attr:`device`, :meth:`wait_data` and :meth:`wait_ready` wait for
    their answers (raising the preparation's errors), so the caller can do its own start-up meanwhile.
    """

    def __init__(self, task: str, data_dir: Path | None, devices: str, threads: int | None = None) -> None:
        self._preparation = (task, data_dir, devices, threads)
        self._ids = 0
        self._replies: dict[int, tuple[Any, ...]] = {}
        self._stages: dict[str, Any] = {}  # answers of the preparation requests, by stage
        self._process: subprocess.Popen[bytes] | None = None
        self._start()

    # -- the process -----------------------------------------------------------------------------------

    def _start(self) -> None:
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parents[2])  # the directory holding the adamtune package
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        self._process = subprocess.Popen(
            [sys.executable, "-m", SERVER_MODULE, str(theirs.fileno()), str(os.getpid())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the worker, which decides what the trainer does
        )
        theirs.close()
        self._socket = ours
        self._connection = open_connection(os.dup(ours.fileno()))
        self._copiers = [
            _copy_lines(self._process.stdout, lambda: sys.stdout),
            _copy_lines(self._process.stderr, lambda: sys.stderr),
        ]
        self._prepare_ids = self._send_preparation()

    def _send_preparation(self) -> dict[str, int]:
        """All preparation requests at once: the trainer process works through them while this one starts."""
        task, data_dir, devices, threads = self._preparation
        return {
            "task": self._request("task", task),
            "device": self._request("device", devices),
            "data": self._request("data", data_dir, devices, threads),
            "warm": self._request("warm"),
        }

    @property
    def info(self) -> TaskInfo:
        """The task's facts (waits for the trainer process to import it). Raises TaskError."""
        return self._prepared("task")

    @property
    def device(self) -> str:
        """The resolved device (``auto`` -> ``cuda:0`` or ``cpu``). Raises DeviceError."""
        return self._prepared("device")

    def wait_data(self) -> dict[str, int]:
        """Wait until the task's data is loaded on the device; its split sizes. Raises DataError."""
        return self._prepared("data")

    def wait_ready(self) -> None:
        """Wait until the trainer process is ready to train (its first-use imports done)."""
        self._prepared("warm")

    def _prepared(self, stage: str) -> Any:
        """The answer of a preparation stage, awaited once; the stages before it first (their errors first)."""
        for name, ident in self._prepare_ids.items():
            if name not in self._stages:
                self._stages[name] = self._await(ident)
            if name == stage:
                break
        return self._stages[stage]

    def close(self) -> None:
        """Let the trainer process exit and wait a moment for it (then kill it). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._connection.close()
        self._socket.close()
        try:
            process.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for copier in self._copiers:
            copier.join(1.0)

    def _restart(self) -> None:
        """A new trainer process after one was lost, prepared as the first (its answers awaited)."""
        self.close()
        self._replies.clear()
        self._stages.clear()
        self._start()
        self.wait_ready()

    # -- runs ------------------------------------------------------------------------------------------

    def run(self, context: TrialContext, meanwhile: Callable[[], None] | None = None) -> None:
        """Train one trial against ``context`` in the trainer process (see ``Trainer.run``)."""
        if self._process is None:
            self._restart()
        checkpoints = context.checkpoints
        ident = self._request("run", RunSpec.of(context))
        failure: Exception | None = None
        try:
            if meanwhile is not None:
                try:
                    meanwhile()
                except Exception as exc:  # the run stops at once; the failure is raised when it has
                    snapshot, _ = self._interrupt(ident, "ran", context.number)
                    if snapshot is not None:
                        context.adopt(snapshot)
                    raise exc from None
            while True:
                message = self._receive(context.number)
                kind = message[0]
                if kind == "epoch":
                    _, _, epoch, metrics, diverged, asks = message
                    answer: bool | None = None
                    if failure is None:
                        try:
                            answer = context.forward_report(epoch, metrics, diverged)
                        except Exception as exc:  # the study or MLflow side failed: the run stops
                            failure = exc
                    if asks:
                        self._send(("decision", ident, epoch, None if failure is not None else answer))
                elif kind == "resume":
                    context.forward_resume(message[2], message[3])
                elif kind == "pointer":
                    self._send(("pointer_reply", ident, _set_pointer(checkpoints, message[2])))
                elif kind == "ran":
                    _, _, snapshot, outcome = message
                    break
        except KeyboardInterrupt:
            snapshot, outcome = self._interrupt(ident, "ran", context.number)
            if snapshot is not None:
                context.adopt(snapshot)
            raise
        context.adopt(snapshot)
        if failure is not None:
            raise failure
        raise_outcome(outcome, context)

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
        """``runner.train_once`` in the trainer process; ``on_epoch`` gets each epoch's ``EpochMetrics``."""
        from adamtune.core.curves import EpochMetrics

        if self._process is None:
            self._restart()
        spec = OnceSpec(params, epochs, batch_size, seed, split, objective, progress=on_epoch is not None, fold=fold)
        ident = self._request("once", spec)
        try:
            while True:
                message = self._receive(None)
                if message[0] == "tick" and on_epoch is not None:
                    on_epoch(EpochMetrics(message[2], message[3]))
                elif message[0] == "once":
                    _, _, status, value = message
                    break
        except KeyboardInterrupt:
            self._interrupt(ident, "once", None)
            raise
        if status == "ok":
            return value
        raise_outcome(value, None)
        raise AssertionError("unreachable")

    def save_best(self, context: TrialContext, checkpoints: Any, epoch: int) -> dict[str, Any] | None:
        """Write the last run's final state as the study's best checkpoint; its pointer (None: nothing to save)."""
        if self._process is None:
            return None
        return self._await(self._request("save_best", checkpoint_spec(checkpoints), epoch))

    # -- messages --------------------------------------------------------------------------------------

    def _request(self, kind: str, *args: Any) -> int:
        self._ids += 1
        self._send((kind, self._ids, *args))
        return self._ids

    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._connection.send(message)
        except OSError:
            self._lost(None)

    def _receive(self, number: int | None) -> tuple[Any, ...]:
        """The next message that is not a reply to a preparation request (those are kept)."""
        while True:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                self._lost(number)
            if message[0] != "reply":
                return message
            self._replies[message[1]] = message

    def _await(self, ident: int) -> Any:
        """The value of request ``ident``'s reply; its error raised (an AdamtuneError keeps its class)."""
        while ident not in self._replies:
            try:
                message = self._connection.recv()
            except (EOFError, OSError):
                self._lost(None)
            if message[0] == "reply":
                self._replies[message[1]] = message
        _, _, status, value = self._replies.pop(ident)
        if status == "ok":
            return value
        raise decode_failure(value)

    def _interrupt(self, ident: int, final: str, number: int | None) -> tuple[Any, Any]:
        """Stop the run ``ident`` (SIGINT there) and take its last message: ``(snapshot or None, outcome)``."""
        process = self._process
        if process is None:
            return None, None
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGINT)
        try:
            while self._connection.poll(INTERRUPT_WAIT_SECONDS):
                message = self._connection.recv()
                if message[0] == "epoch" and message[5]:
                    self._send(("decision", ident, message[2], None))
                elif message[0] == "pointer":
                    self._send(("pointer_reply", ident, "interrupted"))
                elif message[0] == final:
                    return (message[2], message[3]) if final == "ran" else (None, message[3])
        except (EOFError, OSError):
            pass
        self._kill()
        return None, None

    def _lost(self, number: int | None) -> Any:
        """The trainer process is gone: reap it and raise TrainerLost (the next run starts another)."""
        process = self._process
        status = exit_status(process) if process is not None else "closed"
        self._kill()
        where = f" during trial {number}" if number is not None else ""
        raise TrainerLost(f"the trainer process exited ({status}){where}")

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
        self.close()


def _set_pointer(checkpoints: Any, pointer: dict[str, Any]) -> str | None:
    """Record a checkpoint's pointer on the trial; the error's text when that failed (None: done)."""
    try:
        checkpoints.set_pointer(pointer)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _copy_lines(stream: IO[bytes] | None, target: Callable[[], IO[str]]) -> threading.Thread:
    """A daemon thread copying ``stream``'s lines to ``target()`` (looked up per line: a live display
    may have replaced ``sys.stderr``) until it ends."""

    def copy() -> None:
        assert stream is not None
        for line in iter(stream.readline, b""):
            with contextlib.suppress(Exception):
                out = target()
                out.write(line.decode(errors="replace"))
                out.flush()
        stream.close()

    thread = threading.Thread(target=copy, name="adamtune-trainer-output", daemon=True)
    thread.start()
    return thread


def start_trainer(
    task: str, data_dir: Any, devices: str, workers: int = 1, batch_trials: int = 1, threads: int | None = None
) -> contextlib.AbstractContextManager[Any]:
    """A context holding a :class:`~adamtune.training.trainer_client.ProcessTrainer` that prepares ``task`` (closed
    on exit) when :func:`~adamtune.training.trainer.trainer_kind` says ``process``, else None. Started first
    thing by a command, so that the trainer's imports overlap the command's own."""
    if trainer_kind(workers, batch_trials) != "process":
        return contextlib.nullcontext(None)
    return _process_trainer(task, data_dir, devices, threads)


#: The command's thread switch interval while a trainer process trains (Python's default is 5 ms).
SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _process_trainer(task: str, data_dir: Any, devices: str, threads: int | None) -> Iterator[Any]:
    """A ProcessTrainer, closed on exit. Meanwhile this process's threads hand over the interpreter lock
    every ``SWITCH_INTERVAL``: the main thread answers the trainer (a pruning decision, the next trial) and
    must not wait up to 5 ms each time a background thread (the plots, MLflow's queue) holds the lock;
    nothing here is Python-bound enough for the extra switches to cost."""

    previous = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL)
    try:
        with contextlib.closing(ProcessTrainer(task, data_dir, devices, threads)) as trainer:
            yield trainer
    finally:
        sys.setswitchinterval(previous)
