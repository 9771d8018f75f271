"""Processes that open one new study database at the same instant (workers joining a study as it is
created, a search and a script reading its file) all get a usable storage: the ones that lose the race
to create Optuna's tables and stamp its schema version retry instead of failing.

Real SQLite files and this machine's PostgreSQL; the processes are forked after the imports and released
together by a barrier, so each round is a genuine collision (without the retries, every run of these tests
failed on this 2-core machine).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Callable
from pathlib import Path

import optuna
import sqlalchemy

from adamtune.core.errors import StorageError
from adamtune.storage.backends import open_storage

OPENERS = 4
ROUNDS = 5


def _open_when_released(url: str, barrier, answers) -> None:  # type: ignore[no-untyped-def]
    barrier.wait()
    try:
        storage = open_storage(url)
        storage.engine.dispose()
        answers.put("ok")
    except StorageError as exc:
        answers.put(str(exc))


def _open_together(url: str) -> list[str]:
    context = multiprocessing.get_context("fork")
    barrier, answers = context.Barrier(OPENERS), context.Queue()
    openers = [context.Process(target=_open_when_released, args=(url, barrier, answers)) for _ in range(OPENERS)]
    for opener in openers:
        opener.start()
    for opener in openers:
        opener.join(timeout=120)
    assert all(opener.exitcode == 0 for opener in openers)
    return [answers.get(timeout=5) for _ in openers]


def _assert_one_whole_schema(url: str) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            stamps = connection.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).all()
            versions = connection.execute(sqlalchemy.text("SELECT COUNT(*) FROM version_info")).scalar_one()
    finally:
        engine.dispose()
    assert len(stamps) == 1 and versions == 1
    study = optuna.create_study(study_name="after-the-race", storage=url)
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(study.trials) == 2


def test_processes_opening_a_new_sqlite_file_together_all_succeed(tmp_path: Path) -> None:
    for round_number in range(ROUNDS):
        url = f"sqlite:///{tmp_path}/round{round_number}.db"
        assert _open_together(url) == ["ok"] * OPENERS
        _assert_one_whole_schema(url)
        with sqlite3.connect(tmp_path / f"round{round_number}.db") as connection:
            assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_processes_opening_a_new_postgres_database_together_all_succeed(
    new_postgres_url: Callable[[], str],
) -> None:
    for _ in range(3):
        url = new_postgres_url()
        assert _open_together(url) == ["ok"] * OPENERS
        _assert_one_whole_schema(url)
    assert _open_together(url) == ["ok"] * OPENERS  # opening an existing schema together stays harmless
