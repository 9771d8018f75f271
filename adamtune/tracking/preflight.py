"""Checking an MLflow tracking store before a search starts, without importing MLflow.

Part of the MLflow boundary. A ``search`` that runs its trials in its own process opens MLflow (its
import, and for a new local store its schema, copied from a cached template or else made by MLflow's
migrations: ~2.5 s on a 2-core machine without the template) on the tracking writer's thread while
trial 0 already trains (``Tracker(defer_open=True)``). The promise that an unusable store is refused
*before anything is written* is kept by this module: it finds the store the way MLflow would and
checks, in milliseconds, what can make it unusable.

* :func:`deferrable_uri` names the stores this is done for: a local SQLite store (``sqlite:///path``,
  MLflow's default ``sqlite:///mlflow.db`` when no URI is given and ``./mlruns`` holds no old file store) and a
  tracking server (``http(s)://``). Anything else (a file store, ``databricks``, an in-memory SQLite,
  a plugin scheme) returns None and is opened synchronously, as before.
* :func:`check_store` raises :class:`~adamtune.core.errors.TrackingError` with one line naming the problem
  and the fix: a missing or unwritable directory, a file that is not SQLite, a corrupt one, an SQLite
  database of something other than MLflow, an unwritable store; a server that does not answer.

:func:`create_local_store` makes a new SQLite store appear complete or not at all, from a cached copy of
MLflow's schema when it can (:mod:`adamtune.tracking.template`); it imports MLflow: the tracker calls
it when it opens the store.

What it cannot see (a migration that fails half-way, a server that answers ``/health`` but refuses
the tracking API) is reported by the tracker once, from its writer, and the search goes on without
tracking: the study database keeps every trial either way.
"""

from __future__ import annotations

import os
import posixpath
import sqlite3
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn
from urllib.parse import quote, unquote
from urllib.request import pathname2url

from adamtune.core.errors import TrackingError

#: MLflow 3's default tracking URI when ``./mlruns`` holds no older file store.
DEFAULT_URI = "sqlite:///mlflow.db"
#: The first 16 bytes of every SQLite 3 database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: Tables every MLflow SQL store has (MLflow's own schema; ``alembic_version`` records its migration).
MLFLOW_TABLES = frozenset({"alembic_version", "experiments", "runs"})
#: Seconds to wait for a tracking server's ``/health`` answer (MLflow's own client waits this long too,
#: see ``store.HTTP_DEFAULTS``); ``MLFLOW_HTTP_REQUEST_TIMEOUT`` overrides it.
HEALTH_TIMEOUT_SECONDS = 10.0


def deferrable_uri(tracking_uri: str | None) -> str | None:
    """The URI MLflow would use for ``tracking_uri`` (None: its default, made absolute as MLflow makes
    it), when this module can check it.

    Returns None for the stores that must be opened synchronously (see the module docstring),
    including no URI at all where ``./mlruns`` holds an old file store (MLflow then keeps using it).
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if uri is None:
        if _has_file_store(Path("mlruns")):
            return None
        # absolute, as MLflow makes its default (its stores are cached by URI, whatever the directory)
        uri = _sqlite_uri(Path(DEFAULT_URI[len("sqlite:///") :]))
    if uri.startswith(("http://", "https://")):
        return uri
    if sqlite_path(uri) is not None:
        return uri
    return None


def _has_file_store(folder: Path) -> bool:
    """MLflow's own test for keeping its old default, the file store ``./mlruns``: an experiment's
    ``<id>/meta.yaml`` in it (artifacts alone, which the SQLite default also puts there, do not count)."""
    try:
        return any(entry.name.isdigit() and (entry / "meta.yaml").exists() for entry in folder.iterdir())
    except OSError:
        return False


def _sqlite_uri(path: Path) -> str:
    """The absolute ``sqlite:////...`` URI of ``path``, written as MLflow writes its default store's."""
    return "sqlite:///" + posixpath.abspath(pathname2url(os.path.abspath(path)))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///relative`` or ``sqlite:////absolute`` URI; None for others."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = unquote(uri[len("sqlite:///") :].split("?", 1)[0])
    if not rest or rest == ":memory:" or rest.startswith("file:"):
        return None
    return Path(rest)


def check_store(uri: str) -> None:
    """Raise :class:`TrackingError` when the store at ``uri`` (from :func:`deferrable_uri`) is unusable.

    Writes nothing: a new SQLite store is only checked to be creatable, an existing one is read
    (read-only) for its tables.
    """
    path = sqlite_path(uri)
    if path is not None:
        _check_sqlite(uri, path)
    else:
        _check_server(uri)


def create_local_store(tracking_uri: str | None) -> None:
    """Create a new local SQLite store all at once: made under a temporary name, then linked into place.

    MLflow creates a store by running its schema migrations (~1.4 s of CPU), so a process killed
    meanwhile (preemption, ``kill -9`` during a search's first trial) would leave a half-made store
    that MLflow then refuses forever ("table ... already exists"). Here the store is either absent or
    complete. Does nothing for other stores or a file that exists; when another process publishes the
    same store first, its store is kept and this one discarded. Imports MLflow.

    The temporary file is a copy of the cached, pre-migrated template for the installed MLflow
    (:mod:`adamtune.tracking.template`), which MLflow then opens (checking its schema, adding the
    default experiment); without a usable template, or when MLflow refuses the copy, MLflow creates
    the store in a second temporary file and that store is saved as the template. A killed creation
    leaves only its hidden temporary files (``.<name>.creating-<pid>``, ``.<name>.copying-<pid>``)
    beside the store.
    """
    uri = deferrable_uri(tracking_uri)
    path = sqlite_path(uri) if uri is not None else None
    if path is None or path.exists():
        return
    from mlflow import MlflowClient

    from adamtune.tracking import template as tracking_template

    final = Path(os.path.abspath(path))
    # two names: MLflow keeps an engine (and an open connection) per URI, so a refused copy's name is not reused
    copying = final.with_name(f".{final.name}.copying-{os.getpid()}")
    temporary = final.with_name(f".{final.name}.creating-{os.getpid()}")
    for stale in (copying, temporary):
        stale.unlink(missing_ok=True)
    try:
        template = tracking_template.find()
        if template is not None and template.fill(copying) and _opens(copying):
            made = copying
        else:
            # MLflow creates the store, its schema and the default experiment on the first call
            MlflowClient(tracking_uri=_sqlite_uri(temporary)).search_experiments()
            if template is not None:
                template.save(temporary)
            made = temporary
        try:
            os.link(made, final)  # never replaces: a store published meanwhile by another process wins
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: a rename, unless a store appeared meanwhile
            if not final.exists():
                os.replace(made, final)
    finally:
        for leftover in (copying, temporary):
            leftover.unlink(missing_ok=True)


def _opens(copy: Path) -> bool:
    """MLflow opens the template's copy (checks its schema, adds the default experiment for this place)."""
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking_uri=_sqlite_uri(copy)).search_experiments()
    except Exception:  # whatever MLflow has against the copy, it is told again when it creates the store
        return False
    return True


def _fail(uri: str, problem: str) -> NoReturn:
    raise TrackingError(
        f"cannot use MLflow tracking store {uri}: {problem}; check --tracking-uri / MLFLOW_TRACKING_URI"
    )


def _check_sqlite(uri: str, path: Path) -> None:
    if not path.exists():
        folder = path.parent
        if not folder.is_dir():
            _fail(uri, f"directory {folder} does not exist")
        if not os.access(folder, os.W_OK | os.X_OK):
            _fail(uri, f"directory {folder} is not writable")
        return
    if path.is_dir():
        _fail(uri, f"{path} is a directory, not an SQLite file")
    if not os.access(path, os.R_OK | os.W_OK):
        _fail(uri, f"{path} is not writable")
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if not header:
        return  # an empty file is an empty SQLite database: MLflow creates its schema in it
    if header != SQLITE_HEADER:
        _fail(uri, f"{path} is not an SQLite database")
    try:
        connection = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        _fail(uri, f"{path} is corrupt ({exc})")
    if tables and not tables >= MLFLOW_TABLES:
        shown = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        _fail(uri, f"{path} is an SQLite database of something else (tables {shown}), not an MLflow store")


def _check_server(uri: str) -> None:
    from adamtune.tracking.writer import describe_error

    timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or HEALTH_TIMEOUT_SECONDS)
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy or a server without /health): the store's own calls will tell
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        _fail(uri, describe_error(reason if isinstance(reason, BaseException) else exc))
