"""The tracking writer: one background thread that sends MLflow calls in order, retrying while the store is down.

Part of the MLflow boundary (``tracking/tracker.py`` decides *what* to log; this module only gets it there).
Contract: :meth:`Writer.submit` never blocks and never raises, so the training loop never waits on
MLflow. A call is an :class:`_Op`, ``action(client, run_id)``, run on the writer thread; an op bound to
a :class:`RunHandle` whose run was never created is dropped.

Failure
-------
A tracking store that is unreachable *during* a search never kills a trial. The writer keeps calls in
a bounded queue (``max_queue``) in order and retries the one at its head with exponential backoff
(0.5 s doubling to 30 s) for as long as the store answers with connection errors or 5xx/429; a call
the store rejects (4xx: bad value, run deleted) is dropped, and so is one that keeps failing with 5xx
(``MAX_SERVER_ERROR_ATTEMPTS``). The user gets one notice when the store becomes unreachable and one
when it is back, never a traceback per trial. :meth:`Writer.close` waits up to a timeout for the queue
to drain and then reports how many calls were dropped; a dropped call's ``on_drop`` releases what it
held (a temporary directory, a run handle that waits for its id).

The client may be set after the writer starts (``Writer(None, ...)``, then ``writer.client = ...`` by
the first call): a tracker that opens MLflow off the training thread does so (``tracking/tracker.py``).

Heavy imports (mlflow) happen inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Backoff between tries of a call while the store is unreachable: doubles from the first to the last.
INITIAL_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
#: While closing, a call that fails is retried at least this often, so that a store back a second before
#: the deadline still gets what is queued (the backoff may have grown to MAX_BACKOFF_SECONDS before).
CLOSING_RETRY_SECONDS = 0.5
#: A call that failed with a 5xx answer (the server is up but fails) is dropped after this many tries.
MAX_SERVER_ERROR_ATTEMPTS = 5


def _now_ms() -> int:
    """Now, as MLflow timestamps it: milliseconds since the epoch."""
    return int(time.time() * 1000)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def describe_error(exc: BaseException) -> str:
    """A short, one-line account of a tracking error (connection errors without urllib3's details)."""
    text = _first_line(exc)
    if "NewConnectionError" in text or "Connection refused" in text or "Failed to establish" in text:
        return "connection refused"
    if "timed out" in text.lower():
        return "no answer (timed out)"
    return text[:200]


def is_retryable(exc: BaseException) -> bool:
    """True when ``exc`` says the store is unreachable or failing (retry), False when it refused the call.

    MLflow reports a refused call (bad value, unknown or deleted run) as an ``MlflowException`` whose
    error code maps to a 4xx HTTP status; connection errors and server errors map to 5xx, and anything
    that is not an ``MlflowException`` (OSError, requests or SQLAlchemy errors) is taken as transient.
    """
    if "mlflow.exceptions" not in sys.modules:  # MLflow is not imported here: not one of its errors
        return True
    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException):
        return True
    status = exc.get_http_status_code()
    return not (400 <= status < 500) or status == 429


def answered_with_error(exc: BaseException) -> bool:
    """True when a tracking server answered the call with an error of its own (MLflow's ``RestException``)."""
    exceptions = sys.modules.get("mlflow.exceptions")
    return exceptions is not None and isinstance(exc, exceptions.RestException)


@dataclass
class RunHandle:
    """A run that the writer creates; ``run_id`` is None until then (or forever, if creation was dropped)."""

    name: str
    run_id: str | None = None
    abandoned: bool = False
    created: threading.Event = field(default_factory=threading.Event)
    monitor: Any = None

    def resolve(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.abandoned = run_id is None
        self.created.set()


@dataclass
class _Op:
    """One queued tracking call: ``action(client, run_id)``; ``run`` None means ``run_id`` is unused."""

    what: str
    action: Callable[[Any, str | None], None]
    run: RunHandle | None = None
    on_drop: Callable[[], None] | None = None


class Writer:
    """Sends tracking calls in order from one background thread, retrying while the store is down.

    :meth:`submit` never blocks: when ``max_queue`` calls are waiting, the new call is dropped and
    counted. Notices for the user (store unreachable, back, queue full, calls refused) go to ``notify``
    once per event, from the writer thread. A dropped call's ``on_drop`` runs (to release what it held).
    """

    def __init__(
        self,
        client: Any,
        where: str,
        notify: Callable[[str], None],
        *,
        max_queue: int = 10_000,
        initial_backoff: float | None = None,
        max_backoff: float | None = None,
    ) -> None:
        self.client = client
        self.where = where
        self.notify = notify
        self.initial_backoff = INITIAL_BACKOFF_SECONDS if initial_backoff is None else initial_backoff
        self.max_backoff = MAX_BACKOFF_SECONDS if max_backoff is None else max_backoff
        self._queue: queue.Queue[_Op | None] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._abandon = threading.Event()
        self._wake = threading.Event()  # cuts a retry pause short (close, abandon)
        self.accepted = 0
        self.sent = 0
        self.dropped = 0
        self._accepted_dropped = 0
        self._unreachable = False
        self._full_reported = False
        self._refused_reported = False
        self._closed = False
        self._final = False
        self._disabled = False
        self._thread = threading.Thread(target=self._loop, name="adamtune-mlflow-writer", daemon=True)
        self._thread.start()

    @property
    def healthy(self) -> bool:
        """False while the store is unreachable (the call at the head of the queue is being retried)."""
        return not self._unreachable

    @property
    def pending(self) -> int:
        """Calls accepted and neither sent nor dropped yet."""
        with self._lock:
            return self.accepted - self.sent - self._accepted_dropped

    def submit(self, op: _Op) -> bool:
        """Queue ``op``; False (and counted as dropped) when the queue is full or the writer is closed."""
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait(op)
                    self.accepted += 1
                    return True
                except queue.Full:
                    if not self._full_reported:
                        self._full_reported = True
                        self.notify(
                            f"MLflow: {self._queue.maxsize} tracking calls are waiting for {self.where}; new "
                            "ones are dropped until it catches up (the study database keeps every trial)"
                        )
            self.dropped += 1
        _release(op)
        return False

    def disable(self) -> None:
        """Drop (and release) every call from now on: the store cannot be used (a failed deferred open)."""
        self._disabled = True

    def _done(self, op: _Op, sent: bool) -> None:
        with self._lock:
            if self._final:  # close() already counted it as dropped
                return
            if sent:
                self.sent += 1
            else:
                self.dropped += 1
                self._accepted_dropped += 1
        if not sent:
            _release(op)

    def _loop(self) -> None:
        # Blocks while idle (no polling that would wake the process while it trains); close() wakes it
        # with a None, or, if the queue was full then, the timeout does once it has drained.
        while not self._abandon.is_set():
            try:
                op = self._queue.get(timeout=1.0)
            except queue.Empty:
                op = None
            if op is None:
                if self._stop.is_set():
                    return
                continue
            self._done(op, self._run(op))

    def _run(self, op: _Op) -> bool:
        """Try ``op`` until it is sent, refused, or the writer is abandoned; True when it was sent."""
        if self._disabled or (op.run is not None and op.run.run_id is None):
            return False  # tracking was given up, or its run was never created
        backoff, server_errors = self.initial_backoff, 0
        while not self._abandon.is_set():
            try:
                op.action(self.client, op.run.run_id if op.run is not None else None)
            except Exception as exc:
                if not is_retryable(exc):
                    self._refused(op, exc)
                    return False
                if answered_with_error(exc):
                    server_errors += 1
                    if server_errors >= MAX_SERVER_ERROR_ATTEMPTS:
                        self._refused(op, exc)
                        return False
                if not self._unreachable:
                    self._unreachable = True
                    self.notify(
                        f"MLflow: cannot reach {self.where} ({describe_error(exc)}); trials go on, "
                        "and tracking calls are queued and retried"
                    )
                if self._stop.is_set():  # closing: retry often until the deadline, never sleep past it
                    backoff = min(backoff, CLOSING_RETRY_SECONDS)
                self._wake.wait(backoff)
                self._wake.clear()
                backoff = min(backoff * 2, self.max_backoff)
                continue
            if self._unreachable:
                self._unreachable = False
                self.notify(f"MLflow: {self.where} is reachable again; sending the queued tracking calls")
            return True
        return False

    def _refused(self, op: _Op, exc: BaseException) -> None:
        log.debug("MLflow refused %s: %s", op.what, exc)
        if not self._refused_reported and not self._disabled:  # a tracker that gave up has said why
            self._refused_reported = True
            self.notify(f"MLflow: could not {op.what} ({describe_error(exc)}); skipping it and going on")

    def close(self, timeout: float) -> int:
        """Send what is queued, waiting at most ``timeout`` seconds; return how many calls were dropped.

        A call being retried is tried again at once and then every ``CLOSING_RETRY_SECONDS`` until the
        deadline, whatever backoff it had reached. Calls still waiting at the deadline are dropped (and
        released); so is anything submitted after ``close``. Safe to call more than once.
        """
        with self._lock:
            already, self._closed = self._closed, True
        if already:
            return self.dropped
        self._stop.set()
        self._wake.set()  # a call being retried is tried again now, then every CLOSING_RETRY_SECONDS
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            self._wake.set()
            self._thread.join(1.0)
        left: list[_Op | None] = []
        with self._lock:
            self._final = True
            self.dropped += self.accepted - self.sent - self._accepted_dropped
            while True:
                try:
                    left.append(self._queue.get_nowait())
                except queue.Empty:
                    break
        for op in left:
            if op is not None:
                _release(op)
        return self.dropped


def _release(op: _Op) -> None:
    if op.on_drop is not None:
        with contextlib.suppress(Exception):
            op.on_drop()
