"""Database errors: which ones are transient, retrying an action through them, and their one-line text.

A database that goes away for a few seconds (a restart, a network blip, a long write lock) should cost a
worker warnings, not its life: :func:`with_db_retry` retries what :func:`is_transient_db_error` recognises.
:func:`first_line` and :func:`db_error_text` turn SQLAlchemy's and Optuna's multi-line errors into the
one-line messages of :class:`~adamtune.core.errors.StorageError`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from adamtune.core.errors import ConfigError, StorageError

#: How long a worker keeps retrying a database that went away before giving up (env override).
DB_RETRY_SECONDS = 120.0
DB_RETRY_ENV = "ADAMTUNE_DB_RETRY_SECONDS"

log = logging.getLogger(__name__)
T = TypeVar("T")


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def db_error_text(exc: BaseException) -> str:
    """The first line of the innermost cause of a database error (the driver's words, not Optuna's wrapper)."""
    root = exc
    for _ in range(6):
        inner = root.__cause__ or getattr(root, "orig", None)
        if not isinstance(inner, BaseException):
            break
        root = inner
    return first_line(root)


def is_transient_db_error(exc: BaseException) -> bool:
    """True for errors of a database that is unreachable or busy for a while (worth retrying).

    SQLAlchemy raises ``OperationalError`` for a lost connection, a server restart or a locked SQLite file;
    Optuna wraps errors raised during a commit in ``StorageInternalError`` with the original as its cause,
    so the chain of causes is searched.
    """
    from sqlalchemy.exc import DBAPIError, OperationalError

    seen: BaseException | None = exc
    for _ in range(6):  # the error and the causes it wraps (Optuna -> SQLAlchemy -> the driver)
        if seen is None:
            return False
        if isinstance(seen, OperationalError) or (isinstance(seen, DBAPIError) and seen.connection_invalidated):
            return True
        if any(
            c.__name__ == "OperationalError" and c.__module__.startswith(("psycopg", "sqlite3"))
            for c in type(seen).__mro__
        ):
            return True  # the driver's own (psycopg.errors.AdminShutdown is one)
        seen = seen.__cause__ or seen.__context__
    return False


def db_retry_seconds() -> float:
    """How long :func:`with_db_retry` keeps trying: ``ADAMTUNE_DB_RETRY_SECONDS`` or ``DB_RETRY_SECONDS``."""
    text = os.environ.get(DB_RETRY_ENV, "").strip()
    try:
        return float(text) if text else DB_RETRY_SECONDS
    except ValueError:
        raise ConfigError(f"{DB_RETRY_ENV} must be a number of seconds, got {text!r}") from None


def with_db_retry(action: Callable[[], T], what: str, *, budget_seconds: float | None = None) -> T:
    """Run ``action``; while it fails with a transient database error, retry with exponential backoff.

    A database that goes away for a few seconds (a restart, a network blip, a long write lock) costs a
    warning per attempt, not the worker. Other exceptions propagate at once.

    Contract for callers: ``action`` may run more than once, so it must be safe to repeat (a read, a
    ``tell`` with ``skip_if_finished``); an action that had committed before the connection broke is
    repeated too.

    Raises:
        StorageError: the database kept failing for ``budget_seconds`` (default :func:`db_retry_seconds`).
    """
    budget = db_retry_seconds() if budget_seconds is None else budget_seconds
    deadline = time.monotonic() + budget
    delay = 0.5
    while True:
        try:
            return action()
        except Exception as exc:
            if not is_transient_db_error(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StorageError(
                    f"the study database failed for {budget:.0f}s while {what}: {first_line(exc)}"
                ) from None
            wait = min(delay, left)
            log.warning("study database error while %s (%s); retrying in %.1fs", what, first_line(exc), wait)
            time.sleep(wait)
            delay = min(delay * 2, 10.0)
