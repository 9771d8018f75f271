"""Opening a study database: checking its URL, driver, SQLite file or server, and creating Optuna's schema.

:func:`open_storage` is the one way adamtune opens a study database, as a
:class:`~adamtune.storage.rdb.StudyStorage` with heartbeats on. Every error that comes out of SQLAlchemy or
the driver on the way is translated into a :class:`~adamtune.core.errors.StorageError` with a one-line
message; processes that create the same database at the same moment retry their lost race.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from adamtune.core.errors import StorageError
from adamtune.storage.connections import server_engine_kwargs
from adamtune.storage.db_errors import first_line
from adamtune.storage.rdb import StudyStorage
from adamtune.storage.stale_trials import MAX_RETRIES, RetryStaleTrial, heartbeat_settings

DEFAULT_STORAGE = "sqlite:///adamtune.db"
SCHEMA_RACE_ATTEMPTS = 5  # tries to open a database that other processes are creating at the same moment
SQLITE_BUSY_TIMEOUT_SECONDS = 60

T = TypeVar("T")


def _check_sqlite_target(url: str, database: str | None) -> None:
    """A SQLite file must be creatable: its directory must exist and be writable (probed, not guessed)."""
    if not database or database == ":memory:":
        raise StorageError(f"storage {url!r} names no database file; use e.g. sqlite:///adamtune.db")
    path = Path(database)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"study database {path} is not readable and writable; fix its permissions")
        return
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise StorageError(f"directory {directory} for the study database does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".adamtune-probe-"):
            pass
    except OSError:
        raise StorageError(
            f"cannot create the study database in {directory.resolve()} (not writable); "
            "run from a writable directory or pass --storage"
        ) from None


#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_file(path: Path) -> None:
    """An existing, non-empty file must be a readable SQLite database of Optuna studies (only read here).

    Raises:
        StorageError: the file is not a SQLite database, SQLite finds it corrupt, or it holds tables of
            something other than Optuna (adamtune never adds its tables to another program's database).
    """
    if not path.is_file() or path.stat().st_size == 0:  # new or empty: SQLite creates the database
        return
    fix = "pass another --storage, or move the file away"
    with open(path, "rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            raise StorageError(f"study database {path} is not a SQLite database; {fix}")
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return  # another worker is writing: the file is a database
        raise StorageError(f"study database {path} cannot be read ({exc}); {fix}") from None
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"study database {path} is corrupt ({exc}); {fix}") from None
    if tables and "studies" not in tables:  # someone else's database: never add Optuna's tables to it
        raise StorageError(f"{path} is a SQLite database of something else (no Optuna studies in it); {fix}")


def _enable_wal(database: str) -> None:
    """Switch a SQLite file to write-ahead logging (persistent): readers no longer block the writer.

    Changing the journal mode needs the file to itself, and SQLite answers "database is locked" at once
    (its busy timeout does not apply) while another process holds it: processes opening a new file
    together would fail. So a file already in WAL mode is left as it is, and a locked switch is retried
    (up to ``SCHEMA_RACE_ATTEMPTS`` times) until this process or another one has made it.
    """
    try:
        with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_SECONDS)) as connection:

            def switch() -> None:
                if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    connection.execute("PRAGMA journal_mode=WAL")

            _retry_lost_race(switch, lambda exc: isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc))
    except sqlite3.DatabaseError as exc:
        raise StorageError(f"study database {database} cannot be used ({exc}); pass another --storage") from None


def _retry_lost_race(action: Callable[[], T], lost_race: Callable[[Exception], bool]) -> T:
    """Run ``action``; when it fails because another process did the same thing at that moment (``lost_race``),
    run it again after a short pause, ``SCHEMA_RACE_ATTEMPTS`` times at most. Other errors propagate at once.
    """
    for attempt in range(1, SCHEMA_RACE_ATTEMPTS):
        try:
            return action()
        except Exception as exc:
            if not lost_race(exc):
                raise
        time.sleep(0.05 * attempt)
    return action()


def engine_kwargs_for(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options per backend: a busy timeout for SQLite; for a server, at most two
    connections per process, refused connections waited out, liveness checks (``connections.py``)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}}
    return server_engine_kwargs(url)


def open_storage(url: str, *, create: bool = True) -> StudyStorage:
    """Open (and, for SQLite with ``create``, create) the study database at ``url``.

    Heartbeats are on: a trial whose worker stops beating for ``GRACE_SECONDS`` is failed by the next
    worker that looks for stale trials (each worker looks when it starts a trial or waits for one, at most
    once per heartbeat interval: ``heartbeat.StaleCheck``) and re-queued up to ``MAX_RETRIES`` times (see
    :class:`RetryStaleTrial`); both periods can be changed with
    ``ADAMTUNE_HEARTBEAT_SECONDS``/``ADAMTUNE_GRACE_SECONDS``.

    Raises:
        StorageError: an unparsable URL, a missing driver, a SQLite file that cannot be created, or a
            server that cannot be reached. Nothing is created in those cases.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect().import_dbapi()  # the driver too: a missing psycopg is reported here, in one line
    except NoSuchModuleError:  # a subclass of ArgumentError: catch it first
        raise StorageError(
            f"storage URL {url!r} names an unknown database dialect {parsed.drivername!r}; "
            "use sqlite:///FILE or postgresql+psycopg://user@host/db"
        ) from None
    except (ArgumentError, ValueError):
        raise StorageError(
            f"storage URL {url!r} is not a database URL; use e.g. sqlite:///adamtune.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    except ImportError as exc:
        hint = "pip install 'adamtune[postgres]'" if parsed.drivername.startswith("postgres") else "install it"
        raise StorageError(f"the database driver for {url!r} is not installed ({exc.name}); {hint}") from None
    heartbeat, grace = heartbeat_settings()
    if parsed.drivername.startswith("sqlite"):
        if not create and not (parsed.database and Path(parsed.database).is_file()):
            raise StorageError(f"study database {parsed.database} does not exist; run 'adamtune search' first")
        _check_sqlite_target(url, parsed.database)
        _check_sqlite_file(Path(parsed.database))
        if create:
            _enable_wal(parsed.database)
    elif not create:
        _check_server_has_studies(url, parsed)
    try:
        storage = _new_storage(url, heartbeat, grace)
    except Exception as exc:  # SQLAlchemy/driver errors: unreachable host, bad credentials, ...
        raise StorageError(f"cannot open study database {_redact(parsed)}: {first_line(exc)}") from None
    if parsed.drivername.startswith("sqlite"):
        _sync_normal(storage.engine)
    return storage


def _new_storage(url: str, heartbeat: int, grace: int) -> StudyStorage:
    """A :class:`StudyStorage` on ``url``, with Optuna's tables and schema stamp created where missing.

    Processes that open a new database at the same moment (two workers starting one study, or a search
    and a script reading its file) race to create the tables and to stamp the schema version: the losers
    get "table ... already exists" or a duplicate key, although the database is whole a moment later.
    Such a lost race is retried, up to ``SCHEMA_RACE_ATTEMPTS`` times after a short pause; any other
    error is raised at once.
    """
    return _retry_lost_race(
        lambda: StudyStorage(
            url,
            engine_kwargs=engine_kwargs_for(url),
            heartbeat_interval=heartbeat,
            grace_period=grace,
            heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=MAX_RETRIES),
        ),
        _lost_schema_race,
    )


def _lost_schema_race(exc: BaseException) -> bool:
    """Whether opening a storage failed because another process created the same schema concurrently."""
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    cause: BaseException | None = exc
    while cause is not None:  # Optuna may wrap SQLAlchemy's error in its StorageInternalError
        if isinstance(cause, IntegrityError):  # the only rows written on opening: version and alembic stamps
            return True
        if isinstance(cause, (OperationalError, ProgrammingError)) and "already exists" in str(cause):
            return True
        cause = cause.__cause__
    return False


def _sync_normal(engine: Any) -> None:
    """``PRAGMA synchronous=NORMAL`` on every SQLite connection: in WAL mode, a commit no longer fsyncs.

    A trial writes to the study every epoch (``trial.report``), and the fsync was half of each write's
    cost. WAL with NORMAL stays consistent after a crash of any process; only the last commits before
    a power loss or OS crash can be lost (SQLite's documented trade-off, the common choice with WAL).
    """
    from sqlalchemy import event

    event.listen(engine, "connect", lambda connection, _record: connection.execute("PRAGMA synchronous=NORMAL"))
    engine.dispose()  # connections opened while creating the tables predate the listener


def _check_server_has_studies(url: str, parsed: Any) -> None:
    """For ``create=False`` on a server: the database must be reachable and already hold Optuna's tables.

    ``RDBStorage`` would otherwise create its tables in whatever database the URL names, so a typo in
    the database name of ``adamtune worker`` would write a schema there. Only the schema is inspected.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs_for(url))
    try:
        has_studies = sqlalchemy.inspect(engine).has_table("studies")
    except Exception as exc:
        raise StorageError(f"cannot open study database {_redact(parsed)}: {first_line(exc)}") from None
    finally:
        engine.dispose()
    if not has_studies:
        raise StorageError(
            f"database {_redact(parsed)} holds no studies; start one there with 'adamtune search --storage ...'"
        )


def _redact(parsed: Any) -> str:
    return parsed.render_as_string(hide_password=True)


def redact_url(url: str) -> str:
    """``url`` with its password masked, safe to print or log; unparsable URLs are returned unchanged."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return _redact(make_url(url))
    except (ArgumentError, ValueError):
        return url
