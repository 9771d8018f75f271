"""Signals: SIGTERM/SIGINT as ``KeyboardInterrupt``, deferred while a trial is being created or told.

:class:`Interrupts` is how a worker makes sure no trial is left RUNNING by an interruption: inside
``critical()`` the signal is remembered and raised when the block ends. :func:`restore_sigint` restores
Ctrl-C for a command started in the background with SIGINT ignored. :func:`exit_status` says how a
child process (a trainer process, the MLflow helper) ended.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any


class Interrupts:
    """Turns SIGTERM (and optionally SIGINT) into ``KeyboardInterrupt``, deferred out of critical sections.

    Use as a context manager in the main thread; outside the main thread it installs nothing. Inside
    :meth:`critical` a signal only marks the interrupt as pending; :meth:`raise_pending` raises it at a
    point where the caller can clean up. After the first signal, further ones are ignored so that the
    clean-up (failing the trial, closing the MLflow run) is not itself interrupted.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._pending = False
        self._depth = 0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A block that a signal must not cut in two (creating or telling a trial)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def raise_pending(self) -> None:
        """Raise the ``KeyboardInterrupt`` of a signal that arrived inside a critical block."""
        if self._pending and not self._depth:
            self._pending = False
            raise KeyboardInterrupt(f"signal {self.received}")


def restore_sigint() -> None:
    """Make SIGINT raise ``KeyboardInterrupt`` in this process even if it inherited "ignore SIGINT".

    A command started in the background from a script (``adamtune search ... &``) inherits SIGINT as
    ignored, and Python then installs no handler of its own: ``kill -INT`` would be discarded by the kernel
    for the whole run, not only while the workers run. Called first thing by the command-line entry point.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def exit_status(process: subprocess.Popen[bytes]) -> str:
    """How ``process`` ended, for a one-line message: ``exit code N``, ``killed by signal SIGKILL``, or
    ``still running, but not answering`` (after waiting up to a second for it to end)."""
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(1.0)
    code = process.poll()
    if code is None:
        return "still running, but not answering"
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"
