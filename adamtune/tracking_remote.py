"""MLflow in a helper process: the tracker's client calls, made by another interpreter on another core.

Part of the MLflow boundary. On a CPU-bound training loop MLflow's own Python -- its import (~1 s),
creating a local store with its schema migrations (~1.5 s), ~50 ms of SQLAlchemy and entity code per
run -- shares the interpreter's lock with training even when it runs on the tracker's writer thread.
:class:`RemoteClient` moves it out: a child interpreter (``python -m adamtune.tracking_remote``) holds
the real ``MlflowClient``, and each method call on the proxy is a request over a socket pair, answered
before the next one (the writer thread is the only caller that matters; a lock keeps others in turn).
The process that trains never imports MLflow.

Contract (both clients)
-----------------------
:class:`RemoteClient` and :class:`LocalClient` (``MlflowClient`` in this process) answer the same
calls the same way, so the tracker's code does not know which one it has:

* arguments may hold the light entities of this module (:class:`Metric`, :class:`Param`,
  :class:`RunTag`, same fields and order as MLflow's); they become MLflow's before the call. Real
  MLflow entities pass through unchanged.
* :class:`RemoteClient` answers MLflow entities as plain namespaces with the same attributes
  (``run.info.run_id``, ``run.data.tags``, ``experiment.lifecycle_stage``; a search's pages as lists),
  since building real ones here would import MLflow; and MLflow's errors as :class:`RemoteError`,
  which says what :func:`~adamtune.tracking_writer.is_retryable` and the writer need to know. A
  :class:`~adamtune.errors.TrackingError` raised there is raised here as one.

Failure: a helper that exits (killed, out of memory) makes every later call raise a
:class:`RemoteError` that is not retryable; the first such call tells ``on_exit``, and the tracker
gives tracking up with one notice (``tracking.py``) while the training and the study go on. The
helper runs at a lower scheduling priority (``NICENESS``), in its own session, and ignores SIGINT and
SIGTERM, so a Ctrl-C, or a scheduler's SIGTERM to every process of the job, leaves it to the command,
which then sends what is queued.
It exits when the command closes the socket or dies, and skips its interpreter's slow shutdown
(``os._exit``), so that it never holds the command's output pipes open.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from adamtune.errors import TrackingError
from adamtune.signals import exit_status

#: How long closing waits for the helper to exit after the socket is closed (seconds).
EXIT_WAIT_SECONDS = 5.0
#: Set to "0" to keep MLflow in the training process (diagnostics, same-minute benchmarks).
PROCESS_ENV = "ADAMTUNE_TRACKING_PROCESS"
#: The helper's scheduling priority below the command's (``os.nice``): where cores are short, training and
#: the trial loop run first, and MLflow catches up in their pauses (its queue is bounded, see tracking_writer).
NICENESS = 10
#: The one request that gets no answer (:meth:`RemoteClient.preload`).
PRELOAD = "__preload__"


class Metric(NamedTuple):
    key: str
    value: float
    timestamp: int
    step: int


class Param(NamedTuple):
    key: str
    value: str


class RunTag(NamedTuple):
    key: str
    value: str


class RemoteError(Exception):
    """An exception raised by the helper's MLflow call, as far as this side needs to know it.

    ``kind`` is the original exception's class name, ``retryable`` what ``is_retryable`` said of it
    there, ``server_error`` whether a tracking server answered with an error of its own
    (``RestException``); ``str()`` is the original message.
    """

    def __init__(self, message: str, kind: str, *, retryable: bool, server_error: bool = False) -> None:
        super().__init__(message)
        self.kind, self.retryable, self.server_error = kind, retryable, server_error

    def __reduce__(self) -> Any:
        return (_remote_error, (str(self), self.kind, self.retryable, self.server_error))


def _remote_error(message: str, kind: str, retryable: bool, server_error: bool) -> RemoteError:
    return RemoteError(message, kind, retryable=retryable, server_error=server_error)


def use_process() -> bool:
    """Whether a deferred tracker runs MLflow in a helper process (default yes; ``PROCESS_ENV=0``: no)."""
    return os.environ.get(PROCESS_ENV, "1") != "0"


_spare: RemoteClient | None = None


def prestart() -> None:
    """Start a helper now, for the tracker this process makes later (:func:`take_helper`): its interpreter
    and MLflow's import then overlap this process's own start-up. Does nothing when ``PROCESS_ENV=0``.
    A helper nobody takes exits with this process (closed at exit, or it reads EOF)."""
    global _spare
    if _spare is not None and not _spare.fits_here():  # left by a search that failed before its tracker
        _drop_spare()
    if _spare is None and use_process():
        _spare = RemoteClient()
        atexit.register(_spare.close)


def _drop_spare() -> None:
    global _spare
    helper, _spare = _spare, None
    if helper is not None:
        atexit.unregister(helper.close)
        helper.close()


def preload_spare() -> None:
    """Have the helper :func:`prestart` started import MLflow now. Called by a search once its heavy
    start-up is done (the task, and torch, imported): the import then fills the cores' idle moments during
    the first trial instead of slowing the start-up down (or starting only when the tracker opens the store)."""
    if _spare is not None:
        _spare.preload()


def take_helper(on_exit: Callable[[str], None] | None = None) -> RemoteClient:
    """The helper :func:`prestart` started, or a new one; ``on_exit`` as for :class:`RemoteClient`."""
    global _spare
    if _spare is not None and not _spare.fits_here():
        _drop_spare()
    helper, _spare = _spare, None
    if helper is None:
        return RemoteClient(on_exit)
    atexit.unregister(helper.close)  # its tracker closes it
    helper.on_exit = on_exit
    return helper


def to_mlflow(value: Any) -> Any:
    """``value`` with this module's light entities (also inside lists, tuples, dicts) made MLflow's."""
    if isinstance(value, Metric | Param | RunTag):
        from mlflow import entities

        return getattr(entities, type(value).__name__)(*value)
    if isinstance(value, list | tuple):
        return type(value)(to_mlflow(v) for v in value)
    if isinstance(value, dict):
        return {k: to_mlflow(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """An MLflow answer as picklable plain data: entities as namespaces, pages as lists."""
    from mlflow.entities._mlflow_object import _MlflowObject

    if isinstance(value, _MlflowObject):
        return types.SimpleNamespace(**{name: _plain(item) for name, item in value})
    if isinstance(value, list | tuple):  # also MLflow's PagedList (a list)
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class LocalClient:
    """``MlflowClient`` in this process, taking the light entities too (see the module's contract)."""

    def __init__(self, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: attribute(*to_mlflow(args), **to_mlflow(kwargs))

    def close(self) -> None:
        """Nothing to release (the same call as :meth:`RemoteClient.close`)."""


class RemoteClient:
    """A proxy for an ``MlflowClient`` that lives in a helper process (started here, see the module doc)."""

    def __init__(self, on_exit: Callable[[str], None] | None = None) -> None:
        """Start the helper; ``on_exit(reason)`` is called once, by the call that finds it has exited."""
        self.on_exit = on_exit
        #: The working directory and environment the helper inherited.
        self.started_in = (os.getcwd(), dict(os.environ))
        ours, theirs = socket.socketpair()
        package_root = str(Path(__file__).resolve().parent.parent)
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": package_root + (os.pathsep + path if path else "")}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "adamtune.tracking_remote", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # MLflow's prints must not mix with the command's output
            env=env,
            start_new_session=True,
        )
        theirs.close()
        self._socket = ours  # kept for shutdown(), which wakes a call waiting for its answer
        self._connection = Connection(os.dup(ours.fileno()))
        self._lock = threading.Lock()
        self._gone: str | None = None
        self._closing = False
        self.tracking_uri: str | None = None

    def fits_here(self) -> bool:
        """Whether the helper inherited this directory and environment (MLflow resolves ``./mlruns``,
        and reads its settings such as the HTTP client's retries, in the helper)."""
        return self.started_in == (os.getcwd(), dict(os.environ))

    def open(self, tracking_uri: str | None) -> str:
        """Import MLflow there, create the local store if it is new, and make the client; the resolved URI."""
        self.tracking_uri = str(self._call("__open__", tracking_uri))
        return self.tracking_uri

    def preload(self) -> None:
        """Have the helper import MLflow now, before :meth:`open` (a message with no answer: nothing waits)."""
        with self._lock:
            if self._gone is None:
                with contextlib.suppress(OSError):
                    self._connection.send((PRELOAD, (), {}))

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *args, **kwargs: self._call(name, *args, **kwargs)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        exited = False
        with self._lock:
            if self._gone is None:
                try:
                    self._connection.send((name, args, kwargs))
                    status, value = self._connection.recv()
                except (EOFError, OSError):
                    if self._closing:  # our own close() ended the call
                        self._gone = "the MLflow helper process was closed"
                    else:
                        self._gone = f"the MLflow helper process exited ({exit_status(self._process)})"
                        exited = True
            gone = self._gone
        if gone is not None:
            if exited and self.on_exit is not None:  # outside the lock: on_exit may close this client
                self.on_exit(gone)
            raise RemoteError(gone, "HelperExited", retryable=False)
        if status == "ok":
            return value
        if value.kind == "TrackingError":
            raise TrackingError(str(value))
        raise value

    def close(self) -> None:
        """Let the helper exit, and wait a moment for it; a call still waiting for its answer fails. Idempotent."""
        self._closing = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # the helper reads EOF and exits
        with self._lock:  # taken once no call is in flight (the shutdown ends one that waits)
            if self._gone is None:
                self._gone = "the MLflow helper process was closed"
            self._connection.close()
            self._socket.close()
        try:
            self._process.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            self._process.kill()


# -- the helper's side ---------------------------------------------------------------------------


def _describe(exc: BaseException) -> RemoteError:
    from mlflow.exceptions import RestException

    from adamtune.tracking_writer import _first_line, is_retryable

    message = str(exc).strip() or _first_line(exc)
    return RemoteError(
        message, type(exc).__name__, retryable=is_retryable(exc), server_error=isinstance(exc, RestException)
    )


def _open(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    from adamtune.tracking import _quiet_mlflow_logs
    from adamtune.tracking_preflight import create_local_store

    _quiet_mlflow_logs()
    create_local_store(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri)


def _preload() -> None:
    """Import MLflow's client and its SQL store (~1.5 s; :func:`preload_spare`). A failing import is left
    to :func:`_open`, which reports it."""
    with contextlib.suppress(Exception):
        import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        from mlflow import MlflowClient  # noqa: F401


def serve(connection: Connection) -> None:
    """Answer requests ``(method, args, kwargs)`` until the other side closes the connection."""
    client: Any = None
    while True:
        try:
            name, args, kwargs = connection.recv()
        except (EOFError, OSError):
            return
        if name == PRELOAD:  # no answer: the caller does not wait
            _preload()
            continue
        try:
            if name == "__open__":
                client = _open(*args)
                answer: tuple[str, Any] = ("ok", str(client.tracking_uri))
            else:
                answer = ("ok", _plain(getattr(client, name)(*to_mlflow(args), **to_mlflow(kwargs))))
        except Exception as exc:
            answer = ("err", _describe(exc))
        try:
            connection.send(answer)
        except OSError:
            return
        except Exception as exc:  # an answer that does not pickle: refused, the helper goes on
            refused = RemoteError(f"cannot send the answer to {name}: {exc}", type(exc).__name__, retryable=False)
            connection.send(("err", refused))


def main(argv: list[str]) -> None:
    # The command handles Ctrl-C and SIGTERM (a scheduler may signal every process of the job) and then
    # sends what is queued through us; we exit when it closes the socket or dies.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # the review copy yields the CPU to training and the trial loop
        os.nice(NICENESS)
    try:
        serve(Connection(int(argv[0])))
    finally:
        sys.stderr.flush()
        os._exit(0)  # no interpreter shutdown: it would hold the command's stderr open for a second


if __name__ == "__main__":  # run as this package's module, so that both sides pickle the same classes
    from adamtune.tracking_remote import main as run

    run(sys.argv[1:])
