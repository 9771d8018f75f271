"""Connections to a database server: at most two per process, refused connections waited out, PgBouncer.

**The bound: a process holds at most** :data:`MAX_CONNECTIONS` **(2) connections to its study database.**
Every connection a worker makes to the server goes through the engine of the one storage it opens
(``backends.open_storage``; before that, ``backends`` checks a joined study's schema on a throwaway
engine with the same pool, closed before the storage opens). Its pool, :class:`BoundedPool`, keeps one
connection open between uses (``pool_size=1``) and opens a second (``max_overflow=1``) only for the
moments when two are in use at once, closing it when one of them comes back:

* the admission (``admission.admission_lock``): the study's lock is held on one connection while the
  trial is counted and created on the other; both are taken from the pool *before* the lock, so a
  worker never waits for a free slot on the server while it holds the study's lock;
* the heartbeat thread recording a beat while the trial loop writes (the thread has no connection of
  its own: it takes the pool's idle one);
* Optuna's schema check while the storage opens (it reads the schema's version inside a session).

A third user in the process waits for one of the two (``pool_timeout``). A worker's steady state is
therefore one connection, two for milliseconds per trial; ``search --workers N`` also runs the search
process itself, which watches the study through its own storage (bounded the same way). MLflow's
tracking store, when it is a database, is another engine with MLflow's own pool, not counted here.
Connections are named ``adamtune-<pid>`` (``application_name``, shown in ``pg_stat_activity``) unless
the URL names one.

**Refused connections are waited out.** A server that is full refuses a new connection (``sorry, too many
clients already``, ``remaining connection slots are reserved ...``, ``too many connections for role/
database ...``: SQLSTATE 53300; PgBouncer's ``no more connections allowed``) or is restarting (``the
database system is starting up``, 57P03). :class:`BoundedPool` then waits and tries again with backoff
(1 s doubling to 10 s), taking the process's other connection at once if it comes back meanwhile, for
up to ``ADAMTUNE_DB_RETRY_SECONDS`` (``db_errors.db_retry_seconds``, 120 s), and logs one line when a
wait begins (at most one a minute per process: near the server's limit, waits are frequent and short):
``database refused a connection (sorry, too many clients already); retrying in 1s, for up to 120s``.
The caller (a trial's write, its heartbeat, the admission) just waits: no trial fails for it. After the
budget it raises a :class:`~adamtune.core.errors.StorageError` that names the fixes.

**PgBouncer in transaction mode** (``ADAMTUNE_PGBOUNCER=1``, :data:`PGBOUNCER_ENV`): psycopg prepares a
statement on the server after its 5th execution, and under transaction pooling the next transaction may
run on another server connection that never saw it (``prepared statement "_pg3_0" does not exist``);
the setting turns psycopg's prepared statements off (``prepare_threshold=None``). Nothing else adamtune
does depends on a session: the admission lock is ``pg_advisory_xact_lock`` (a transaction's), the study
row lock is ``SELECT ... FOR UPDATE`` in the creating transaction, and no ``SET``, ``LISTEN``, temporary
table or session advisory lock is used. PgBouncer 1.21+ with ``max_prepared_statements`` > 0 tracks
protocol-level prepared statements, psycopg's kind, so it should not need the setting (its documentation;
tested here: 1.18, which needs it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import Any

from sqlalchemy.pool import QueuePool

from adamtune.core.errors import ConfigError, StorageError
from adamtune.storage.db_errors import DB_RETRY_ENV, db_retry_seconds

#: The most connections one process holds to its study database (the pool's size + overflow).
MAX_CONNECTIONS = 2
#: ``1``: the study database is reached through PgBouncer in transaction mode (no prepared statements).
PGBOUNCER_ENV = "ADAMTUNE_PGBOUNCER"
#: How long a user waits for a connection the process's two are using, before an error.
POOL_TIMEOUT_SECONDS = 60
FIRST_DELAY_SECONDS = 1.0
#: A process logs at most one refused connection per this many seconds.
QUIET_SECONDS = 60.0
MAX_DELAY_SECONDS = 10.0
#: SQLSTATEs of a server refusing a connection for now: too many connections, a limit, cannot connect now.
REFUSED_SQLSTATES = frozenset({"53300", "53400", "57P03"})
#: The same, as libpq reports them (its connection errors carry no SQLSTATE), and PgBouncer's own.
REFUSED_MESSAGES = (
    "too many clients already",
    "remaining connection slots are reserved",
    "too many connections for role",
    "too many connections for database",
    "no more connections allowed",  # PgBouncer: max_client_conn
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is not yet accepting connections",
    "the database system is in recovery mode",
)
APPLICATION_PREFIX = "adamtune-"

log = logging.getLogger(__name__)
_episode = threading.Lock()
_waiting = 0  # threads of this process waiting for a refused connection (the first one of an episode logs)
_last_line: float | None = None  # when this process last logged a refused connection


def pgbouncer_mode() -> bool:
    """Whether ``ADAMTUNE_PGBOUNCER`` says the server is reached through PgBouncer in transaction mode.

    Raises:
        ConfigError: a value other than ``0``/``1`` (or ``false``/``true``, ``no``/``yes``, empty).
    """
    text = os.environ.get(PGBOUNCER_ENV, "").strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{PGBOUNCER_ENV} must be 1 (through PgBouncer in transaction mode) or 0, got {text!r}")


def server_engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options for a database server: the bounded pool and, for PostgreSQL, the
    connection's name, a 10 s connect timeout and, with ``ADAMTUNE_PGBOUNCER=1``, no prepared statements."""
    kwargs: dict[str, Any] = {
        "poolclass": BoundedPool,
        "pool_size": 1,
        "max_overflow": MAX_CONNECTIONS - 1,
        "pool_timeout": POOL_TIMEOUT_SECONDS,
        "pool_pre_ping": True,
        "pool_recycle": 300,
    }
    if url.startswith("postgres"):
        query, driver = _query_and_driver(url)
        connect_args: dict[str, Any] = {"connect_timeout": 10}  # an unreachable host fails in seconds
        if "application_name" not in query:
            connect_args["application_name"] = application_name()
        if pgbouncer_mode() and driver == "psycopg":  # psycopg2 and pg8000 prepare nothing on their own
            connect_args["prepare_threshold"] = None
        kwargs["connect_args"] = connect_args
    return kwargs


def application_name() -> str:
    """``adamtune-<pid>``: this process's connections, as ``pg_stat_activity`` lists them."""
    return f"{APPLICATION_PREFIX}{os.getpid()}"


def for_this_process(engine_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``engine_kwargs`` of a storage pickled in another process, with this process's connection name."""
    connect_args = engine_kwargs.get("connect_args")
    name = connect_args.get("application_name") if isinstance(connect_args, dict) else None
    if not (isinstance(name, str) and re.fullmatch(rf"{APPLICATION_PREFIX}\d+", name)):
        return engine_kwargs
    return {**engine_kwargs, "connect_args": {**connect_args, "application_name": application_name()}}


def _query_and_driver(url: str) -> tuple[dict[str, Any], str]:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        return dict(parsed.query), parsed.get_driver_name()
    except Exception:  # an unusable URL is reported by whoever opens it
        return {}, ""


def refusal_reason(exc: BaseException) -> str | None:
    """The server's words when ``exc`` (or an error it wraps) is a refused connection, else None."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        text = str(seen)
        if getattr(seen, "sqlstate", None) in REFUSED_SQLSTATES or any(m in text.lower() for m in REFUSED_MESSAGES):
            match = re.search(r"FATAL:\s+(.+)", text)
            return (match.group(1) if match else text).strip().splitlines()[0]
        seen = getattr(seen, "orig", None) or seen.__cause__ or seen.__context__
    return None


class BoundedPool(QueuePool):
    """SQLAlchemy's ``QueuePool`` that waits out refused connections (see the module docstring).

    Every checkout goes through :meth:`connect`, including those that open a connection again (after a
    failed ``pool_pre_ping`` or ``pool_recycle``). While the server refuses, the pool sleeps with backoff
    and wakes early when another user of this process returns a connection, which it then takes.
    """

    def connect(self) -> Any:
        deadline: float | None = None
        delay = FIRST_DELAY_SECONDS
        try:
            while True:
                try:
                    return super().connect()
                except Exception as exc:
                    reason = refusal_reason(exc)
                    if reason is None:
                        raise
                    now = time.monotonic()
                    if deadline is None:
                        budget = db_retry_seconds()
                        deadline = now + budget
                        _begin_wait(reason, delay, budget)
                    if now >= deadline:
                        raise StorageError(
                            f"the database refused connections for {budget:.0f}s ({reason}); raise its "
                            f"max_connections, run fewer workers, put PgBouncer in front (docs: 'Many workers "
                            f"on one study'), or raise {DB_RETRY_ENV}"
                        ) from None
                    self._wait_for_return(min(delay, deadline - now))
                    delay = min(delay * 2, MAX_DELAY_SECONDS)
        finally:
            if deadline is not None:
                _end_wait()

    def _wait_for_return(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a connection of this process comes back to the pool meanwhile."""
        idle = self.checkedin()  # counts the refused entry too, when it went back to the pool
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))
            if self.checkedin() > idle:
                return


# SQLAlchemy names a pool's logger after its class, which puts this one under ``adamtune``, whose INFO lines
# a worker prints; the pool's own INFO lines (connections made, recycled) are SQLAlchemy's, kept quiet as
# SQLAlchemy keeps its own pools' (WARNING unless the user configures that logger).
logging.getLogger(f"{BoundedPool.__module__}.{BoundedPool.__qualname__}").setLevel(logging.WARNING)


def _begin_wait(reason: str, delay: float, budget: float) -> None:
    """Count a thread that waits for a refused connection; the first of a wait logs its one line, unless
    this process logged one less than ``QUIET_SECONDS`` ago (near the server's limit, waits are frequent)."""
    global _waiting, _last_line
    with _episode:
        _waiting += 1
        now = time.monotonic()
        first = _waiting == 1 and (_last_line is None or now - _last_line >= QUIET_SECONDS)
        if first:
            _last_line = now
    if first:
        log.warning("database refused a connection (%s); retrying in %.0fs, for up to %.0fs", reason, delay, budget)


def _end_wait() -> None:
    global _waiting
    with _episode:
        _waiting -= 1
