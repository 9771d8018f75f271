"""Shared fixtures: a working directory per test, a throwaway PostgreSQL database, CLI helpers, and the
session's own directory of MLflow store templates.

PostgreSQL tests use this machine's server (127.0.0.1:5432, trust auth). They are skipped when it is
unreachable, unless ``ADAMTUNE_REQUIRE_POSTGRES=1`` (set by CI), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

POSTGRES_ADMIN_URL = os.environ.get("ADAMTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    """MLflow store templates (``tracking_template.py``) in this session's own directory, never the user's
    cache: set before the test modules are imported, so environments they copy at import carry it too."""
    os.environ["ADAMTUNE_STORE_TEMPLATE_DIR"] = tempfile.mkdtemp(prefix="adamtune-store-templates-")


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = os.environ.pop("ADAMTUNE_STORE_TEMPLATE_DIR", None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test inside an empty directory, with no adamtune/MLflow environment leaking in."""
    monkeypatch.chdir(tmp_path)
    for name in ("ADAMTUNE_STORAGE", "MLFLOW_TRACKING_URI", "ADAMTUNE_TASK", "ADAMTUNE_STUDY", "ADAMTUNE_N_TRIALS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)


def postgres_admin():  # type: ignore[no-untyped-def]
    """An autocommit admin connection; skips the test when the server is unreachable, or fails it in CI."""
    try:
        return _admin_connection()
    except Exception as exc:  # server down or psycopg missing
        if os.environ.get("ADAMTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required (ADAMTUNE_REQUIRE_POSTGRES=1) but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")


def _fresh_database(purpose: str) -> Iterator[str]:
    """Create a PostgreSQL database, yield its SQLAlchemy URL, drop it (skip or fail when unreachable)."""
    admin = postgres_admin()
    name = f"adamtune_{purpose}_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards; yields its SQLAlchemy URL."""
    yield from _fresh_database("test")


@pytest.fixture
def mlflow_postgres_url() -> Iterator[str]:
    """Another fresh database, for an MLflow server's backend store (as MLflow has its own in compose)."""
    yield from _fresh_database("mlflow_test")


@pytest.fixture
def new_postgres_url() -> Iterator[Callable[[], str]]:
    """A factory of fresh PostgreSQL databases for one test (each call a new one, all dropped afterwards)."""
    with contextlib.ExitStack() as databases:
        yield lambda: databases.enter_context(contextlib.contextmanager(_fresh_database)("test"))


def listing(path: Path) -> list[str]:
    """Names of the files under ``path`` (to assert that nothing was written)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def trial_run_id(tracking_uri: str, study_name: str, trial) -> str:  # type: ignore[no-untyped-def]
    """The id of ``trial``'s MLflow run, found by its tags as the product promises (``tracking_trial.py``).

    The trial's ``mlflow.run_id`` attribute may be missing while a run created after the trial ended (a
    one-worker search's first trial often ends before the tracker's writer has opened the store) is not
    linked yet; when it is there, it must name the same run.
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(f"adamtune/{study_name}")
    assert experiment is not None, f"no MLflow experiment for study {study_name!r}"
    query = f"tags.`adamtune.role` = 'trial' and tags.`adamtune.trial_number` = '{trial.number}'"
    found = [r.info.run_id for r in client.search_runs([experiment.experiment_id], filter_string=query)]
    assert len(found) == 1, (trial.number, found)
    assert trial.user_attrs.get("mlflow.run_id") in (None, found[0])
    return found[0]


def copy_storage(url: str, path: Path) -> str:
    """Copy a SQLite study database (WAL included, via SQLite's backup API) so a test can change it."""
    source, target = sqlite3.connect(url.removeprefix("sqlite:///")), sqlite3.connect(path)
    with source, target:
        source.backup(target)
    source.close()
    target.close()
    return f"sqlite:///{path}"
