"""The Optuna boundary: storages, samplers, pruners, study creation/resume, and trial counts.

Every error that comes out of Optuna's storage or SQLAlchemy is translated here into a
:class:`~adamtune.core.errors.StorageError` with a one-line message.

Trial bookkeeping. adamtune's view of a trial's outcome is the user attribute ``adamtune.state``:

* ``complete`` — trained to the end of its budget; its value is the objective.
* ``pruned`` — stopped early by the pruner (Optuna state PRUNED).
* ``diverged`` — a loss became non-finite. The trial is COMPLETE in Optuna with the value of the
  untrained model, so the sampler learns that the region is bad; summaries count it separately and
  never recommend it.
* ``failed`` — an exception or an interruption (Optuna state FAIL); a stale trial of a dead worker
  also ends FAIL and is re-queued by the heartbeat callback.

The number of *finished* trials (complete + pruned + diverged) is what ``--n-trials`` asks for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.config import StudySpec
from adamtune.core.confirm_rule import ConfirmSettings
from adamtune.core.errors import ConfigError, StorageError
from adamtune.core.space import baseline_optuna_params
from adamtune.storage.rdb import StudyStorage

# Heartbeats and their retry callback are "experimental" in Optuna since v2.8 yet stable in practice;
# adamtune relies on them deliberately, so their warnings would only be noise for users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///adamtune.db"
SCHEMA_RACE_ATTEMPTS = 5  # tries to open a database that other processes are creating at the same moment
SPEC_ATTR = "adamtune.spec"
SETTINGS_ATTR = "adamtune.settings"
STATE_ATTR = "adamtune.state"
BASELINE_ATTR = "adamtune.baseline"
SEED_ATTR = "adamtune.seed"
PARAMS_ATTR = "adamtune.params"
CURVES_ATTR = "adamtune.curves"
RUN_ID_ATTR = "mlflow.run_id"
DIVERGED_EPOCH_ATTR = "adamtune.diverged_epoch"
DEVICE_ATTR = "adamtune.device"
HOST_ATTR = "adamtune.host"
WORKER_ATTR = "adamtune.worker"
#: Marks a confirmation run (``confirm.ARM_ATTR``): never re-queued, the stage plans it again.
CONFIRM_ARM_ATTR = "adamtune.confirm.arm"
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
#: Environment overrides of the two above (whole seconds), e.g. 1 and 3 in tests.
HEARTBEAT_ENV = "ADAMTUNE_HEARTBEAT_SECONDS"
GRACE_ENV = "ADAMTUNE_GRACE_SECONDS"
MAX_RETRIES = 2
SQLITE_BUSY_TIMEOUT_SECONDS = 60
#: How long a worker keeps retrying a database that went away before giving up (env override).
DB_RETRY_SECONDS = 120.0
DB_RETRY_ENV = "ADAMTUNE_DB_RETRY_SECONDS"

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLERS: dict[str, Callable[[int | None], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
}

PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4)),
    "sha": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}

FINISHED_STATES = ("complete", "pruned", "diverged")


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
    """SQLAlchemy engine options per backend (busy timeout for SQLite, liveness checks for servers)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_recycle": 300}
    if url.startswith("postgres"):
        kwargs["connect_args"] = {"connect_timeout": 10}  # an unreachable host fails in seconds, not minutes
    return kwargs


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
        raise StorageError(f"cannot open study database {_redact(parsed)}: {_first_line(exc)}") from None
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
        raise StorageError(f"cannot open study database {_redact(parsed)}: {_first_line(exc)}") from None
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


def _first_line(exc: BaseException) -> str:
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
    return _first_line(root)


def heartbeat_settings() -> tuple[int, int]:
    """The heartbeat interval and grace period in seconds: ``HEARTBEAT_SECONDS``/``GRACE_SECONDS``, or the
    whole numbers in ``ADAMTUNE_HEARTBEAT_SECONDS``/``ADAMTUNE_GRACE_SECONDS``.

    Every worker of a study should use the same values: a worker with a shorter grace period than another's
    heartbeat interval would fail that worker's live trials as stale.

    Raises:
        ConfigError: a value is not a whole number >= 1, or the grace period is not longer than the interval.
    """
    values = []
    for env, default in ((HEARTBEAT_ENV, HEARTBEAT_SECONDS), (GRACE_ENV, GRACE_SECONDS)):
        text = os.environ.get(env, "").strip()
        if not text:
            values.append(default)
            continue
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{env} must be a whole number of seconds >= 1, got {text!r}")
        values.append(int(text))
    heartbeat, grace = values
    if grace <= heartbeat:
        raise ConfigError(
            f"the grace period ({grace}s, {GRACE_ENV}) must be longer than the heartbeat interval "
            f"({heartbeat}s, {HEARTBEAT_ENV})"
        )
    return heartbeat, grace


def requeue_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = MAX_RETRIES) -> bool:
    """Queue a new WAITING trial that retries the failed ``trial`` with the same settings; False if it has
    been retried ``max_retry`` times already (None: no limit). The baseline trial has no limit: a study must
    always end up with a complete baseline. See :class:`RetryStaleTrial` for what is copied.

    Used for trials that failed for reasons that say nothing about their settings: a dead worker (stale
    heartbeat) or an interruption (Ctrl-C/SIGTERM).
    """
    if trial.user_attrs.get(CONFIRM_ARM_ATTR) is not None:
        return False  # a confirmation run: the stage's plan creates it again (see confirm_stage.py)
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    if not is_baseline and max_retry is not None and len(system_attrs["retry_history"]) > max_retry:
        return False  # the baseline is always retried: every gain is measured against it
    user_attrs = {BASELINE_ATTR: True} if is_baseline else {}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    return True


class RetryStaleTrial:
    """Heartbeat-stale trial callback: re-queue the trial of a dead worker with the same settings.

    Called (through ``optuna.storages.fail_stale_trials``) by whichever live worker notices that a trial has
    not beaten for the grace period, after Optuna marked it FAIL. The retry is a new WAITING trial that the
    next worker to start a trial picks up first.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` (which copies *every* user attribute, so a retry
    would carry the dead run's MLflow id, host and partial curves), this copies the params and their
    distributions (the same Adam settings are tried again), Optuna's system attributes (``fixed_params`` of
    an enqueued trial, and ``failed_trial``/``retry_history`` in Optuna's format so
    ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` works), and of the user attributes only
    ``adamtune.baseline``: a retried baseline must still train with Adam's defaults and never be pruned.

    A trial is retried at most ``max_retry`` times (None: always). Every stale trial this process failed is
    also kept until :meth:`drain` so that the worker can close its MLflow run.
    """

    def __init__(self, max_retry: int | None = MAX_RETRIES) -> None:
        self.max_retry = max_retry
        self._stale: list[FrozenTrial] = []
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            self._stale.append(trial)
        if trial.user_attrs.get(CONFIRM_ARM_ATTR) is not None:
            log.warning("confirmation run %d was stale (its worker stopped beating): failed it", trial.number)
            return
        if not requeue_trial(study, trial, self.max_retry):
            log.warning("trial %d was stale (its worker died) and has been retried enough; not retrying", trial.number)
            return
        log.warning("trial %d was stale (its worker stopped beating): failed it and queued a retry", trial.number)

    def drain(self) -> list[FrozenTrial]:
        """The stale trials failed by this process since the last call."""
        with self._lock:
            stale, self._stale = self._stale, []
        return stale


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
                    f"the study database failed for {budget:.0f}s while {what}: {_first_line(exc)}"
                ) from None
            wait = min(delay, left)
            log.warning("study database error while %s (%s); retrying in %.1fs", what, _first_line(exc), wait)
            time.sleep(wait)
            delay = min(delay * 2, 10.0)


@contextlib.contextmanager
def admission_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Hold the study-wide lock under which a worker counts trials and starts one (see ``worker.py``).

    Counting finished + running trials and then creating a trial is a check-then-act race between
    workers; doing both under this lock makes ``n_trials`` exact. The lock is held for milliseconds (a
    count, ``study.ask`` and the sampler's draw of the new trial's settings), never during training, and
    dies with its holder:

    * SQLite: an exclusive ``flock`` on ``<database>.lock`` next to the database file (all workers of a
      SQLite study share one machine).
    * PostgreSQL: a transaction-level advisory lock keyed by the study name, on its own connection.
    * Other servers: no lock; counts are then exact only up to one trial per concurrently starting worker.

    ``storage`` is an ``RDBStorage`` or the cache Optuna wraps around it (``study._storage``).

    Raises:
        sqlalchemy.exc.OperationalError: the lock's database connection failed (transient; retry it).
    """
    from sqlalchemy import text

    storage = getattr(storage, "_backend", storage)  # optuna.Study wraps RDBStorage in a _CachedStorage
    dialect = storage.engine.dialect.name
    if dialect == "sqlite":
        database = storage.engine.url.database
        try:
            import fcntl
        except ImportError:  # Windows: no flock; fall through unlocked
            yield
            return
        with open(f"{database}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
        return
    if dialect == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"adamtune:{study_name}".encode()).digest()[:8], "big", signed=True)
        with storage.engine.connect() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                try:
                    connection.rollback()  # ends the transaction, which releases the lock
                except Exception as exc:
                    # A connection that went away took its lock with it: the admission's work stands (raising
                    # here would repeat it, and leave the trials it created RUNNING with nobody to run them).
                    if not is_transient_db_error(exc):
                        raise
        return
    yield


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name](epochs)


def create_or_resume(spec: StudySpec, storage: RDBStorage, *, seed: int | None = None) -> optuna.Study:
    """Create the study ``spec.study_name``, or resume it if it exists.

    A new study stores ``spec`` (task, objective, epochs, batch size, space) and enqueues Adam's
    defaults as its first trial, marked as the baseline. Resuming checks that the stored definition
    matches ``spec``: mixing trials of different spaces or epochs would make them incomparable.

    Raises:
        ConfigError: the existing study was made with a different task, objective, epochs, batch size
            or space.
        StorageError: the database fails.
    """
    assert spec.epochs is not None, "fill task defaults before creating a study"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            direction=spec.direction,
            sampler=make_sampler(spec.sampler, seed),
            pruner=make_pruner(spec.pruner, spec.epochs),
            load_if_exists=True,
        )
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, spec.stored_form())
            if not study.trials:
                study.enqueue_trial(baseline_optuna_params(spec.space), user_attrs={BASELINE_ATTR: True})
        else:
            _check_same_definition(spec, stored)
        settings = {
            "n_trials": spec.n_trials,
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "confirm": spec.confirm.as_dict(),
            "batch_trials": spec.batch_trials,
        }
        if spec.checkpoint_every is not None:  # a run setting, like the sampler: workers joining later use it
            settings["checkpoint_every"] = spec.checkpoint_every
        if spec.keep_best_checkpoint:
            settings["keep_best_checkpoint"] = True
        study.set_user_attr(SETTINGS_ATTR, settings)
    except ConfigError:
        raise
    except Exception as exc:
        raise StorageError(f"study database error for {spec.study_name!r}: {_first_line(exc)}") from None
    return study


def _check_same_definition(spec: StudySpec, stored: dict[str, Any]) -> None:
    current = spec.stored_form()
    different = [key for key in current if json.dumps(current[key]) != json.dumps(stored.get(key))]
    if different:
        raise ConfigError(
            f"study {spec.study_name!r} already exists with a different {', '.join(different)}; "
            "pass --study NEW_NAME to start a new study, or run with the original settings to resume it"
        )


def load_study(name: str, storage: RDBStorage, *, seed: int | None = None) -> optuna.Study:
    """Load an existing adamtune study by name (for workers that join later).

    The sampler, pruner and target number of trials are those the latest ``search`` stored.

    Raises:
        StorageError: no study of that name exists in the storage (the message lists the ones that do).
    """
    names = study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise StorageError(
            f"no study named {name!r} in this storage (studies: {listing}); start it with 'adamtune search'"
        )
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        stored, settings = study.user_attrs.get(SPEC_ATTR), study.user_attrs.get(SETTINGS_ATTR)
    except Exception as exc:
        raise StorageError(f"cannot load study {name!r}: {_first_line(exc)}") from None
    if stored is None or settings is None:
        raise StorageError(f"study {name!r} was not created by adamtune; pick an adamtune study")
    study.sampler = make_sampler(settings["sampler"], seed)
    study.pruner = make_pruner(settings["pruner"], int(stored["epochs"]))
    return study


def study_names(storage: RDBStorage) -> list[str]:
    """The names of the studies in ``storage``; a study's confirmation runs (``<study>.confirm``) are part of
    that study and not listed."""
    from adamtune.core.confirm_rule import CONFIRMS_ATTR

    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        return sorted(s.study_name for s in summaries if CONFIRMS_ATTR not in s.user_attrs)
    except Exception as exc:
        raise StorageError(f"cannot list studies: {_first_line(exc)}") from None


def trial_state(trial: FrozenTrial) -> str:
    """adamtune's outcome name for ``trial`` (see the module docstring); ``running``/``waiting`` too."""
    if trial.state == TrialState.COMPLETE:
        return trial.user_attrs.get(STATE_ATTR, "complete")
    return {
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


@dataclass(frozen=True)
class Counts:
    """Trials of a study by adamtune outcome."""

    complete: int = 0
    pruned: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    def as_dict(self) -> dict[str, int]:
        return {
            "complete": self.complete,
            "pruned": self.pruned,
            "diverged": self.diverged,
            "failed": self.failed,
            "running": self.running,
            "waiting": self.waiting,
        }


def count_trials(trials: list[FrozenTrial]) -> Counts:
    tally: dict[str, int] = {}
    for trial in trials:
        state = trial_state(trial)
        tally[state] = tally.get(state, 0) + 1
    return Counts(**tally)


def spec_from_study(study: optuna.Study) -> StudySpec:
    """Rebuild the :class:`StudySpec` an adamtune study was created with (for joining workers, reports)."""
    from adamtune.core.space import parse_space

    stored = study.user_attrs[SPEC_ATTR]
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    source = f"study {study.study_name!r}"
    return StudySpec(
        task=stored["task"],
        study_name=study.study_name,
        objective=stored["objective"],
        direction=study.direction.name.lower(),  # the task's direction, as the study was created with
        n_trials=int(settings.get("n_trials", 0)) or 1,
        epochs=stored["epochs"],
        batch_size=stored["batch_size"],
        sampler=settings.get("sampler", "tpe"),
        pruner=settings.get("pruner", "hyperband"),
        confirm=ConfirmSettings.from_dict(settings.get("confirm")),
        checkpoint_every=settings.get("checkpoint_every"),
        keep_best_checkpoint=settings.get("keep_best_checkpoint"),
        batch_trials=int(settings.get("batch_trials", 1)),
        space=parse_space(stored["space"], source),
        source=source,
    )
