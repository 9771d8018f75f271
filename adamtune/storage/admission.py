"""The admission lock: the study-wide lock under which a worker counts a study's trials and starts one.

One lock per database kind (a ``flock`` beside a SQLite file, an advisory lock on PostgreSQL), held for
milliseconds; see :func:`admission_lock`.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

from adamtune.storage.db_errors import is_transient_db_error
from adamtune.storage.optuna_adapter import backend_of


@contextlib.contextmanager
def admission_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Hold the study-wide lock under which a worker counts trials and starts one (see ``worker.py``).

    Counting finished + running trials and then creating a trial is a check-then-act race between
    workers; doing both under this lock makes ``n_trials`` exact. The lock is held for milliseconds (a
    count, ``study.ask`` and the sampler's draw of the new trial's settings), never during training, and
    dies with its holder:

    * SQLite: an exclusive ``flock`` on ``<database>.lock`` next to the database file (all workers of a
      SQLite study share one machine).
    * PostgreSQL: a transaction-level advisory lock keyed by the study name, on its own connection
      (``pg_advisory_xact_lock``: it holds through PgBouncer's transaction pooling). The second
      connection, on which the trial is counted and created, is taken from the pool before the lock:
      a worker never waits for a free slot on a full server while it holds the study's lock (the
      others would wait for it, each holding a connection, see ``connections.py``).
    * Other servers: no lock; counts are then exact only up to one trial per concurrently starting worker.

    ``storage`` is an ``RDBStorage`` or the cache Optuna wraps around it (``storage_of(study)``).

    Raises:
        sqlalchemy.exc.OperationalError: the lock's database connection failed (transient; retry it).
    """
    from sqlalchemy import text

    storage = backend_of(storage)  # optuna.Study wraps RDBStorage in a _CachedStorage
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
            with storage.engine.connect():
                pass  # opened (a refusal waited out) and back in the pool, idle, for the counting and creating
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
