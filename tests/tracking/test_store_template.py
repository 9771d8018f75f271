"""A new local MLflow store copied from the cached template of MLflow's schema (``tracking_template.py``).

Real parts: MLflow SQLite stores made by MLflow and by copy, opened by a real ``MlflowClient``; template
files damaged on disk; ``create_local_store`` in two processes at once. Whether MLflow ran its schema
migrations is read from its own log line (``mlflow.store.db.utils``: "Creating initial MLflow database
tables..."). Nothing is mocked. Every test keeps its templates in its own directory
(``ADAMTUNE_STORE_TEMPLATE_DIR``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from adamtune.tracking import template as tracking_template
from adamtune.tracking.preflight import create_local_store
from adamtune.tracking.template import TEMPLATE_DIR_ENV

ROOT = Path(__file__).resolve().parents[2]
CREATING = "Creating initial MLflow database tables"


@pytest.fixture
def templates(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's template directory (not created)."""
    folder = workdir / "templates"
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(folder))
    return folder


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def mlflow_log() -> Iterator[list[str]]:
    """The messages MLflow's database utilities log while the test runs (its migrations say so)."""
    logger = logging.getLogger("mlflow.store.db.utils")
    handler, level = _Lines(), logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def _new_store(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MLflow's default store created in ``folder`` as a search creates it (no URI, from that directory)."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    create_local_store(None)
    return folder / "mlflow.db"


def _assert_works(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow uses ``store``, from its directory: its Default experiment and a new one keep artifacts
    beside it, runs log."""
    folder = store.parent
    monkeypatch.chdir(folder)  # where MLflow puts a new experiment's artifacts (./mlruns)
    client = MlflowClient(f"sqlite:///{store}")
    (default,) = client.search_experiments()
    assert (default.experiment_id, default.name) == ("0", "Default")
    assert default.artifact_location == str(folder / "mlruns" / "0")
    assert client.create_experiment("adamtune/x") == "1"  # as in any new store
    for experiment_id in ("0", "1"):
        run_id = client.create_run(experiment_id).info.run_id
        client.log_metric(run_id, "val_loss", 0.5, step=1)
        client.log_text(run_id, "hello", "note.txt")
        client.set_terminated(run_id)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.data.metrics == {"val_loss": 0.5}
        note = folder / "mlruns" / experiment_id / run_id / "artifacts" / "note.txt"
        assert note.read_text() == "hello"


def _schema(store: Path) -> list[tuple[str, str, str]]:
    with closing(sqlite3.connect(store)) as db:
        return sorted(db.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL").fetchall())


def _identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def _is_good(template: Path, probe: Path) -> bool:
    found = tracking_template.find()
    assert found is not None and found.path == template
    made = found.fill(probe)
    probe.unlink(missing_ok=True)
    return made


def test_a_store_copied_from_the_template_is_mlflows_own_for_its_directory(
    workdir: Path, templates: Path, mlflow_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _new_store(workdir / "first", monkeypatch)
    assert any(CREATING in line for line in mlflow_log)  # no template yet: MLflow's migrations
    (template,) = templates.iterdir()  # one file, nothing hidden left behind
    assert template.name.startswith(f"mlflow-{mlflow.__version__}-") and template.suffix == ".db"
    before = _identity(template)

    mlflow_log.clear()
    second = _new_store(workdir / "second", monkeypatch)
    assert mlflow_log == []  # copied: MLflow ran no migration
    assert _identity(template) == before  # read, not rewritten
    assert [p.name for p in second.parent.iterdir()] == ["mlflow.db"]  # no temporary file left

    assert _schema(second) == _schema(first)  # the schema MLflow makes itself
    _assert_works(first, monkeypatch)
    _assert_works(second, monkeypatch)
    assert str(first.parent) not in second.read_bytes().decode("latin-1")  # no trace of the template's origin


def _good_template(templates: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A good template in ``templates`` (made the ordinary way: the first store created)."""
    store = _new_store(tmp_path / "maker", monkeypatch)
    shutil.rmtree(store.parent)
    (template,) = templates.iterdir()
    return template


def _garbage(path: Path) -> None:
    path.write_text("not a database\n")


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwritten(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[4096:65536] = b"\xff" * (65536 - 4096)  # the header is intact, the pages after it are not
    path.write_bytes(bytes(data))


def _sql(*statements: str) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with closing(sqlite3.connect(path)) as db, db:
            for statement in statements:
                db.execute(statement)

    return damage


DAMAGES = {
    "not sqlite": _garbage,
    "empty file": lambda p: p.write_bytes(b""),
    "truncated": _truncated,
    "overwritten pages": _overwritten,
    "another schema": _sql("UPDATE alembic_version SET version_num = '0123456789ab'"),
    "a table missing": _sql("DROP TABLE latest_metrics"),
    "holds an experiment": _sql(
        "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, creation_time,"
        " last_update_time) VALUES (0, 'Default', '/elsewhere/mlruns/0', 'active', 0, 0)"
    ),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_template_is_not_used_and_a_good_one_replaces_it(
    workdir: Path,
    templates: Path,
    mlflow_log: list[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
    damage: Callable[[Path], None],
) -> None:
    template = _good_template(templates, monkeypatch, tmp_path_factory.mktemp("elsewhere"))
    damage(template)
    mlflow_log.clear()
    store = _new_store(workdir / "new", monkeypatch)
    assert any(CREATING in line for line in mlflow_log)  # MLflow created this store itself
    _assert_works(store, monkeypatch)
    assert [p.name for p in store.parent.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in templates.iterdir()) == [template.name]
    assert _is_good(template, workdir / "probe.db")  # saved again from the new store


def test_an_unusable_template_directory_still_gives_working_stores(
    workdir: Path, mlflow_log: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory cannot be created (its parent is a file: this holds for root too, who writes anywhere)."""
    (workdir / "a-file").write_text("mine\n")
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(workdir / "a-file" / "templates"))
    for name in ("first", "second"):
        mlflow_log.clear()
        _assert_works(_new_store(workdir / name, monkeypatch), monkeypatch)
        assert any(CREATING in line for line in mlflow_log)
        assert [p.name for p in (workdir / name).iterdir() if p.name.startswith(".")] == []
    assert (workdir / "a-file").read_text() == "mine\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_a_read_only_template_directory_still_gives_a_working_store(
    workdir: Path, templates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    templates.mkdir(mode=0o500)
    try:
        _assert_works(_new_store(workdir / "new", monkeypatch), monkeypatch)
        assert list(templates.iterdir()) == []
    finally:
        templates.chmod(0o700)


def test_a_store_holding_more_than_the_default_experiment_is_not_saved(workdir: Path, templates: Path) -> None:
    store = workdir / "used.db"
    client = MlflowClient(f"sqlite:///{store}")
    client.set_terminated(client.create_run("0").info.run_id)  # a run in the Default experiment
    found = tracking_template.find()
    assert found is not None
    found.save(store)
    assert not templates.exists() or list(templates.iterdir()) == []


def test_two_processes_making_the_template_at_once_both_get_a_store_and_leave_one_template(
    workdir: Path, templates: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = "from adamtune.tracking.preflight import create_local_store; create_local_store(None)"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    folders = [workdir / "one", workdir / "two"]
    processes = []
    for folder in folders:
        folder.mkdir()
        processes.append(subprocess.Popen([sys.executable, "-c", code], cwd=folder, env=env))
    assert [p.wait(timeout=120) for p in processes] == [0, 0]
    for folder in folders:
        assert [p.name for p in folder.iterdir()] == ["mlflow.db"]
        _assert_works(folder / "mlflow.db", monkeypatch)
    (template,) = templates.iterdir()  # whole, and no hidden file left
    assert _is_good(template, workdir / "probe.db")
