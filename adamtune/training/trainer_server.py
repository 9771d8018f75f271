"""The trainer process: holds a worker's task and data, and trains its runs.

Started as ``python -m adamtune.training.trainer_server FD PARENT_PID`` by
:class:`~adamtune.training.trainer_client.ProcessTrainer` (see ``trainer.py`` for why), it answers the
worker's requests on the socket pair ``FD``, one at a time, in order; ``trainer_protocol.py`` lists the
messages. This module owns this side of them: preparing the task, its data and the device, building each
run's :class:`~adamtune.training.context.TrialContext` with hooks that talk to the worker, and when a
run's answers and interruptions take effect.

Decisions that come late. For the built-in trainer the worker's answer to a report need not be awaited:
training goes on, each step checks whether it arrived, and the next report waits for it
(``runner.LateDecisions``), so a pruned trial stops with exactly the curve it would have had, a few
steps later than an answer at once would have stopped it. A user's ``fit`` (a loop task) waits for the
answer at every report where the worker may prune (``RunSpec.prune_epochs``), as in one process.

Interruptions. This process runs in its own session: a Ctrl-C at the terminal reaches the worker, which
sends SIGINT here when a run should stop. It interrupts training (``KeyboardInterrupt`` inside the
task's code), never a message half-sent: a signal that arrives while a message is being sent or read is
raised right after. SIGTERM ends the process (the worker fails the run). The process exits when the
worker closes the socket or dies (on Linux it is also killed with its parent).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from adamtune.core.errors import AdamtuneError
from adamtune.core.space import AdamParams
from adamtune.training.context import TrialContext
from adamtune.training.stops import StopTrial
from adamtune.training.trainer_protocol import (
    ANSWERS,
    CheckpointSpec,
    OnceSpec,
    RunSpec,
    encode_failure,
    open_connection,
)


class Aborted(Exception):
    """The worker's side of a run failed (its answer to a report was "stop"): training ends here."""


class _Signals:
    """SIGINT raises ``KeyboardInterrupt`` only while training runs, and never inside a message's I/O."""

    def __init__(self) -> None:
        self.training = False
        self.in_io = 0
        self.pending = False

    def handle(self, signum: int, frame: Any) -> None:
        if self.training and not self.in_io:
            self.pending = False
            raise KeyboardInterrupt("interrupted by the worker")
        self.pending = True

    @contextlib.contextmanager
    def io(self) -> Iterator[None]:
        self.in_io += 1
        try:
            yield
        finally:
            self.in_io -= 1
        if self.pending and self.training and not self.in_io:
            self.pending = False
            raise KeyboardInterrupt("interrupted by the worker")

    @contextlib.contextmanager
    def training_run(self) -> Iterator[None]:
        self.pending, self.training = False, True  # an interrupt meant for an earlier run is dropped
        try:
            yield
        finally:
            self.training = False


class Channel:
    """The socket pair to the worker: sends, and receives the messages of one kind, keeping the others."""

    def __init__(self, connection: Connection, signals: _Signals) -> None:
        self.connection, self.signals = connection, signals
        self._inbox: list[tuple[Any, ...]] = []

    def send(self, message: tuple[Any, ...]) -> None:
        with self.signals.io():
            self.connection.send(message)

    def poll(self) -> bool:
        return bool(self._inbox) or self.connection.poll()

    def receive(self, kind: str, ident: int) -> tuple[Any, ...]:
        """The next ``kind`` message of ``ident``; others of the current run wait in the inbox, others of
        earlier runs (answers to reports a finished run no longer waited for) are dropped."""
        for i, message in enumerate(self._inbox):
            if message[0] == kind and message[1] == ident:
                return self._inbox.pop(i)
        while True:
            with self.signals.io():
                message = self.connection.recv()
            if message[0] == kind and message[1] == ident:
                return message
            if message[1] == ident:
                self._inbox.append(message)

    def next_request(self) -> tuple[Any, ...]:
        """The next request (answers left over from earlier runs are dropped)."""
        self._inbox.clear()
        while True:
            with self.signals.io():
                message = self.connection.recv()
            if message[0] not in ANSWERS:
                return message


class RunHooks:
    """A run's hooks on this side: reports go to the worker; its answers come back now or later."""

    def __init__(self, channel: Channel, ident: int, prune_epochs: frozenset[int] | None, wait: bool) -> None:
        self.channel, self.ident, self.prune_epochs, self.wait = channel, ident, prune_epochs, wait
        self.context: TrialContext | None = None
        self.pending: int | None = None  # the epoch whose answer is due

    def on_epoch(self, epoch: int, metrics: Any, diverged: bool) -> bool:
        asks = not diverged and (self.prune_epochs is None or epoch in self.prune_epochs)
        self.channel.send(("epoch", self.ident, epoch, dict(metrics), diverged, asks))
        if not asks:
            return False
        if self.wait:
            return self._answer(epoch)
        self.pending = epoch
        return False

    def check(self) -> None:
        if self.pending is not None and self.channel.poll():
            self.settle()

    def settle(self) -> None:
        if self.pending is not None:
            epoch, self.pending = self.pending, None
            if self._answer(epoch):
                assert self.context is not None
                self.context.prune(epoch)

    def _answer(self, epoch: int) -> bool:
        _, _, answered, prune = self.channel.receive("decision", self.ident)
        if prune is None:
            raise Aborted(f"the worker stopped the run at epoch {answered}")
        return bool(prune)

    def on_resume(self, epoch: int, history: list[tuple[int, dict[str, float]]]) -> None:
        self.channel.send(("resume", self.ident, epoch, history))

    def set_pointer(self, pointer: dict[str, Any]) -> None:
        self.channel.send(("pointer", self.ident, pointer))
        error = self.channel.receive("pointer_reply", self.ident)[2]
        if error is not None:
            raise RuntimeError(error)


class TrainerServer:
    """This process's state: the task, its data on the device, the last run's context, open stores."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.task: Any = None
        self.info: Any = None
        self.data: Any = None
        self.device = "cpu"
        self.last_context: TrialContext | None = None
        self._stores: dict[str, tuple[Any, str]] = {}

    def serve(self) -> None:
        while True:
            try:
                request = self.channel.next_request()
            except (EOFError, OSError):
                return
            kind, ident, args = request[0], request[1], request[2:]
            if kind == "run":
                self.run(ident, *args)
            elif kind == "once":
                self.once(ident, *args)
            else:
                try:
                    value = getattr(self, f"do_{kind}")(*args)
                    answer: tuple[Any, ...] = ("reply", ident, "ok", value)
                except Exception as exc:
                    answer = ("reply", ident, "err", encode_failure(exc))
                self.channel.send(answer)

    # -- preparation -----------------------------------------------------------------------------

    def do_task(self, name: str) -> Any:
        from adamtune.tasks import resolve_task
        from adamtune.training.trainer import TaskInfo

        self.task = resolve_task(name)
        self.info = TaskInfo.of(self.task)
        return self.info

    def do_device(self, devices: str) -> str:
        from adamtune.training.devices import resolve_devices

        return resolve_devices(devices, 1)[0]

    def do_data(self, data_dir: Path | None, devices: str, threads: int | None) -> dict[str, int]:
        import torch

        from adamtune.data.download import default_data_dir

        if self.task is None:
            raise AdamtuneError("no task loaded")
        device = self.do_device(devices)
        if threads:
            torch.set_num_threads(threads)
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)
        self.device = device
        self.data = self.task.load_data(data_dir or default_data_dir()).to(device)
        return self.data.sizes()

    def do_warm(self) -> None:
        import torch

        from adamtune.training.optim import make_optimizer

        model = torch.nn.Linear(2, 1)
        optimizer, scheduler = make_optimizer(model, AdamParams())
        model(torch.zeros(1, 2)).sum().backward()
        optimizer.step()
        scheduler.step()

    def do_save_best(self, spec: CheckpointSpec, epoch: int) -> dict[str, Any] | None:
        state = self.last_context.capture_state() if self.last_context is not None else None
        if state is None:
            return None
        return self._checkpoints(spec, lambda pointer: None).save_best(epoch, state)

    # -- runs --------------------------------------------------------------------------------------

    def run(self, ident: int, spec: RunSpec) -> None:
        from adamtune.training.runner import run_in_context

        loop = bool(self.info.is_loop)
        hooks = RunHooks(self.channel, ident, spec.prune_epochs, wait=loop)
        checkpoints = self._checkpoints(spec.checkpoints, hooks.set_pointer) if spec.checkpoints else None
        context = TrialContext(
            params=spec.params,
            n_epochs=spec.n_epochs,
            batch_size=spec.batch_size,
            seed=spec.seed,
            device=self.device,
            objective=spec.objective,
            direction=spec.direction,
            split=spec.split,
            number=spec.number,
            checkpoint_dir=spec.checkpoint_dir,
            data=self.data.value if loop else self.data,
            on_epoch=hooks.on_epoch,
            checkpoints=checkpoints,
            checkpoint_every=spec.checkpoint_every,
            on_resume=hooks.on_resume,
        )
        context.prune_epochs, hooks.context = spec.prune_epochs, context
        self.last_context = context
        outcome: tuple[Any, ...] | None = None
        try:
            with self.channel.signals.training_run():
                run_in_context(self.task, self.data, context, late=None if loop else hooks)
        except StopTrial:
            outcome = ("stop",)
        except Aborted:
            outcome = ("aborted",)
        except KeyboardInterrupt:
            outcome = ("interrupted",)
        except Exception as exc:
            outcome = ("error", *encode_failure(exc))
        self.channel.send(("ran", ident, context.snapshot(), outcome))

    def once(self, ident: int, spec: OnceSpec) -> None:
        from adamtune.training.runner import train_once

        def tick(metrics: Any) -> None:
            self.channel.send(("tick", ident, int(metrics.epoch), metrics.as_dict()))

        try:
            with self.channel.signals.training_run():
                outcome = train_once(
                    self.task,
                    self.data,
                    spec.params,
                    device=self.device,
                    epochs=spec.epochs,
                    batch_size=spec.batch_size,
                    seed=spec.seed,
                    split=spec.split,
                    on_epoch=tick if spec.progress else None,
                    objective=spec.objective,
                    fold=spec.fold,
                )
        except KeyboardInterrupt:
            self.channel.send(("once", ident, "err", ("interrupted",)))
            return
        except Exception as exc:
            self.channel.send(("once", ident, "err", ("error", *encode_failure(exc))))
            return
        self.channel.send(("once", ident, "ok", outcome))

    def _checkpoints(self, spec: CheckpointSpec, set_pointer: Any) -> Any:
        from adamtune.training.checkpoint import TrialCheckpoints, open_store

        if spec.location not in self._stores:
            self._stores[spec.location] = open_store(spec.location)
        store, prefix = self._stores[spec.location]
        return TrialCheckpoints(
            store=store,
            prefix=prefix,
            study_name=spec.study_name,
            lineage=spec.lineage,
            fingerprint=spec.fingerprint,
            set_pointer=set_pointer,
            pointers=list(spec.pointers),
        )


def _die_with_parent() -> None:
    """On Linux, be killed when the worker's process dies (a SIGKILL leaves it no time to close us)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def main(argv: list[str]) -> None:
    """``FD PARENT_PID``: serve the worker on the inherited socket ``FD`` until it closes it or dies."""
    signals = _Signals()
    signal.signal(signal.SIGINT, signals.handle)
    _die_with_parent()
    if os.getppid() != int(argv[1]):  # the worker died before the line above took effect
        os._exit(0)
    channel = Channel(open_connection(int(argv[0])), signals)
    try:
        TrainerServer(channel).serve()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)  # no interpreter shutdown: it would keep the worker's output pipes open


if __name__ == "__main__":  # run as this package's module, not as __main__: one copy of its classes
    from adamtune.training.trainer_server import main as serve

    serve(sys.argv[1:])
