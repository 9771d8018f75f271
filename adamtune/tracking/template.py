"""A cached, pre-migrated MLflow schema, so that a new local store is a file copy, not ~60 migrations.

Part of the MLflow boundary, used by :func:`adamtune.tracking.preflight.create_local_store` in the
process that opens MLflow (MLflow is imported inside :func:`find` only). MLflow creates an SQLite
store by running its alembic migrations (~1.4 s of CPU on a 2-core machine); MLflow opening a copy of
an empty, already migrated store costs what opening an existing store costs.

The template is one SQLite file per schema, ``mlflow-<MLflow version>-<alembic head revision>.db``, in
``$ADAMTUNE_STORE_TEMPLATE_DIR``, else in ``platformdirs.user_cache_dir("adamtune")/mlflow-templates``
(``~/.cache/adamtune/mlflow-templates`` on Linux); an empty variable counts as unset.

* :meth:`Template.save` makes it from a store MLflow has just created: a copy without the default
  experiment (id 0), which MLflow creates again when it opens a copy, with the artifact location of
  *that* store (``SqlAlchemyStore.__init__`` → ``_initialize_store_state``: ``get_experiment("0")``,
  ``_create_default_experiment`` when missing; the location is ``./mlruns/0`` resolved in the working
  directory). The only rows left are the schema revision (``alembic_version``) and MLflow's
  ``default`` workspace (``workspaces``; no path, no time): a store with rows anywhere else, or a
  workspace with an artifact root, is not saved. It is written to a hidden file beside the template
  (``.<name>.saving-<pid>``, deleted rows zeroed) and renamed into place, so a template is whole or
  absent; concurrent savers each write a whole file and the last rename wins; a killed saver leaves
  only its hidden file.
* :meth:`Template.fill` copies it to a new store's temporary file and checks the copy: SQLite's
  ``quick_check``, the revision MLflow expects, every table of MLflow's models (so MLflow runs no
  migration on it) and no experiment. MLflow's own schema check follows when the caller opens it.

Nothing here fails a search: a missing, unreadable or corrupt template, one of another schema, a
directory that cannot be created or written, a copy that fails: :meth:`~Template.fill` returns False
and :meth:`~Template.save` does nothing, and the caller lets MLflow create the store as before (and
then saves a fresh template over a bad one).
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass
from pathlib import Path

#: Overrides the directory templates are kept in (tests use it to keep away from the user's cache).
TEMPLATE_DIR_ENV = "ADAMTUNE_STORE_TEMPLATE_DIR"
#: The tables a template may hold rows in (written by MLflow's migrations, free of paths and times).
SEED_TABLES = frozenset({"alembic_version", "workspaces"})


@dataclass(frozen=True)
class Template:
    """The template file for the installed MLflow (``path``), the schema revision it must hold and the
    tables MLflow's models need (with them all, MLflow opens a store without running migrations)."""

    path: Path
    revision: str
    tables: frozenset[str]

    def fill(self, target: Path) -> bool:
        """Copy the template to ``target`` (a new, private file); True when the copy is fit to open.

        On False, ``target`` does not exist (a failed copy is removed).
        """
        try:
            shutil.copyfile(self.path, target)
            with closing(sqlite3.connect(target)) as db:
                whole = db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
                if whole and _is_empty(db, self.revision) and _tables(db) >= self.tables:
                    return True
        except (OSError, sqlite3.Error):
            pass
        _remove(target)
        return False

    def save(self, store: Path) -> None:
        """Save ``store``, just created by MLflow and holding nothing but its default experiment, as the
        template (replacing any); does nothing when it cannot (see the module docstring)."""
        partial = self.path.with_name(f".{self.path.name}.saving-{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store, partial)
            with closing(sqlite3.connect(partial)) as db:
                db.execute("PRAGMA secure_delete = ON")  # the old directory's path is zeroed, not left behind
                with db:
                    db.execute("DELETE FROM experiments WHERE experiment_id = 0")
                if not (_is_empty(db, self.revision) and _only_seed_rows(db)):
                    return
            os.replace(partial, self.path)
        except (OSError, sqlite3.Error):
            pass
        finally:
            _remove(partial)


def find() -> Template | None:
    """The template for the installed MLflow's schema (it may not exist yet); None when the schema's
    revision or the template directory cannot be found. Imports MLflow."""
    try:
        import mlflow

        from adamtune.tracking.mlflow_adapter import store_schema

        revision, tables = store_schema()  # what MLflow's schema check expects of a store
        folder = template_dir()
    except Exception:  # private parts of MLflow (mlflow_adapter): if they move, stores are created as before
        return None
    name = re.sub(r"[^A-Za-z0-9._-]", "_", f"mlflow-{mlflow.__version__}-{revision}")
    return Template(folder / f"{name}.db", revision, tables)


def template_dir() -> Path:
    """``$ADAMTUNE_STORE_TEMPLATE_DIR``, else ``mlflow-templates`` in the user cache directory."""
    value = os.environ.get(TEMPLATE_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("adamtune")) / "mlflow-templates"


def _is_empty(db: sqlite3.Connection, revision: str) -> bool:
    """An MLflow schema at ``revision`` with no experiment."""
    revisions = db.execute("SELECT version_num FROM alembic_version").fetchall()
    return revisions == [(revision,)] and db.execute("SELECT count(*) FROM experiments").fetchone() == (0,)


def _tables(db: sqlite3.Connection) -> set[str]:
    return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _only_seed_rows(db: sqlite3.Connection) -> bool:
    for table in sorted(_tables(db)):
        if table in SEED_TABLES or table.startswith("sqlite_"):
            continue
        if db.execute(f'SELECT EXISTS (SELECT 1 FROM "{table}")').fetchone() != (0,):
            return False
    return db.execute("SELECT count(*) FROM workspaces WHERE default_artifact_root IS NOT NULL").fetchone() == (0,)


def _remove(path: Path) -> None:
    with suppress(OSError):
        path.unlink(missing_ok=True)
