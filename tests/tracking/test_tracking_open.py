"""Opening MLflow off the training thread: the store check before anything is written, the deferred open.

Real parts: MLflow SQLite stores (new, existing, and files that are not one), an Optuna SQLite study,
``adamtune search`` through click and as a process, and a closed port for an unreachable server.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from adamtune.cli.main import cli
from adamtune.core.errors import TrackingError
from adamtune.storage.attr_keys import RUN_ID_ATTR
from adamtune.storage.outcomes import trial_state
from adamtune.tracking.parent_run import PARENT_RUN_ATTR, PARENT_TAG
from adamtune.tracking.preflight import DEFAULT_URI, check_store, deferrable_uri
from adamtune.tracking.tracker import Tracker
from tests.conftest import listing

ROOT = Path(__file__).resolve().parents[2]


def _foreign_database(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")


def _corrupt_database(path: Path) -> None:
    _foreign_database(path)
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xff" * (4096 - 100)  # the header survives, the schema page does not
    path.write_bytes(bytes(data))


UNUSABLE = [
    ("missing directory", lambda p: None, "nowhere/mlflow.db", "directory {root}/nowhere does not exist"),
    ("text file", lambda p: p.write_text("not a database\n"), "mlflow.db", "{path} is not an SQLite database"),
    ("corrupt", _corrupt_database, "mlflow.db", "{path} is corrupt"),
    ("foreign", _foreign_database, "mlflow.db", "{path} is an SQLite database of something else (tables users)"),
    ("directory", lambda p: p.mkdir(), "mlflow.db", "{path} is a directory"),
]


@pytest.mark.parametrize(("make", "name", "fragment"), [u[1:] for u in UNUSABLE], ids=[u[0] for u in UNUSABLE])
def test_an_unusable_local_store_is_refused_and_left_as_it_was(tmp_path: Path, make, name, fragment) -> None:
    path = tmp_path / name
    make(path)
    before = sorted((p.relative_to(tmp_path), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*"))
    uri = f"sqlite:///{path}"
    with pytest.raises(TrackingError) as raised:
        check_store(uri)
    message = str(raised.value)
    assert message.startswith(f"cannot use MLflow tracking store {uri}: ")
    assert fragment.format(root=tmp_path, path=path) in message and message.endswith("MLFLOW_TRACKING_URI")
    assert sorted((p.relative_to(tmp_path), p.is_file() and p.read_bytes()) for p in tmp_path.rglob("*")) == before


def test_a_new_or_existing_mlflow_store_passes_without_being_touched(tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    check_store(f"sqlite:///{new}")
    assert not new.exists()

    existing = tmp_path / "mlflow.db"
    MlflowClient(f"sqlite:///{existing}").create_experiment("e")
    stamp = existing.stat().st_mtime_ns
    check_store(f"sqlite:///{existing}")
    assert existing.stat().st_mtime_ns == stamp

    (tmp_path / "empty.db").touch()  # an empty file is an empty SQLite database
    check_store(f"sqlite:///{tmp_path / 'empty.db'}")


def test_an_unreachable_server_is_refused_in_one_line() -> None:
    with pytest.raises(
        TrackingError, match=r"^cannot use MLflow tracking store http://127\.0\.0\.1:9: connection refused; "
    ):
        check_store("http://127.0.0.1:9")


def test_which_stores_are_opened_off_the_training_thread(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    default = f"sqlite:///{workdir}/mlflow.db"  # absolute, as MLflow makes its default
    assert DEFAULT_URI == "sqlite:///mlflow.db" and deferrable_uri(None) == default
    assert deferrable_uri(None) == MlflowClient().tracking_uri  # MLflow's own resolution of its default
    (workdir / "mlruns" / "1" / "abc" / "artifacts").mkdir(parents=True)  # artifacts of the SQLite default
    assert deferrable_uri(None) == default
    (workdir / "mlruns" / "0").mkdir()
    (workdir / "mlruns" / "0" / "meta.yaml").write_text("name: Default\n")  # MLflow's old file store: MLflow decides
    assert deferrable_uri(None) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert deferrable_uri(None) == "http://tracking:5000"
    assert deferrable_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    for synchronous in ("file:///tmp/mlruns", "databricks", "sqlite:///:memory:", "postgresql://h/db"):
        assert deferrable_uri(synchronous) is None


def _study(root: Path) -> optuna.Study:
    from adamtune.core.config import build_spec
    from adamtune.storage.backends import open_storage
    from adamtune.storage.study import create_or_resume

    spec = build_spec("synthetic", None, "d", {"n_trials": 2, "epochs": 1})
    return create_or_resume(spec, open_storage(f"sqlite:///{root}/adamtune.db"))


def test_a_deferred_tracker_logs_the_same_layout(tmp_path: Path) -> None:
    """Parent run, nested trial run with params, curve and end: queued before the store even exists."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = _study(tmp_path)
    tracker = Tracker("d", uri, defer_open=True)
    assert tracker.deferred and tracker.attach(study) is None
    run = tracker.start_trial("trial-0", {"lr": 0.01}, {"adamtune.trial_number": 0})
    run.log_epoch(1, {"val_loss": 0.5})
    run.log_epoch(2, {"val_loss": 0.25})
    run.finish("complete", {"val_loss": 0.25}, {"adamtune.stopped_epoch": 2}, study=study, trial_number=0, value=0.25)
    tracker.end_search(study, artifacts=False)
    assert tracker.close() == 0 and tracker.disabled is None

    parent = study.user_attrs[PARENT_RUN_ATTR]
    assert parent == tracker.parent_run_id
    client = MlflowClient(uri)
    child = client.get_run(run.run_id)
    assert child.data.tags[PARENT_TAG] == parent and child.data.params["lr"] == "0.01"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "val_loss")] == [(1, 0.5), (2, 0.25)]
    assert child.info.status == "FINISHED" and child.data.tags["adamtune.state"] == "complete"
    assert client.get_run(parent).info.status == "FINISHED"


def _half_mlflow_store(path: Path) -> None:
    """An SQLite file with MLflow's table names but not its schema: it passes the check, MLflow fails on it."""
    with sqlite3.connect(path) as connection:
        for table in ("alembic_version", "experiments", "runs"):
            connection.execute(f"CREATE TABLE {table} (junk TEXT)")
        connection.execute("INSERT INTO alembic_version VALUES ('no-such-revision')")


def test_a_store_that_fails_after_the_check_leaves_the_search_to_go_on(workdir: Path) -> None:
    """The search is not stopped by tracking: one notice, every trial in the study, exit 0."""
    _half_mlflow_store(workdir / "half.db")
    env_path = {"PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "adamtune", "search", "--task", "synthetic", "--n-trials", "2", "--epochs", "1"]
    done = subprocess.run(
        [*command, "--no-confirm", "--tracking-uri", f"sqlite:///{workdir}/half.db"],
        cwd=workdir,
        env={**os.environ, **env_path},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    notices = [line for line in done.stderr.splitlines() if "cannot use tracking store" in line]
    assert len(notices) == 1 and "this search goes on without tracking" in notices[0], done.stderr
    assert "Traceback" not in done.stderr and "dropped" not in done.stderr
    study = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{workdir}/adamtune.db")
    assert [trial_state(t) for t in study.trials] == ["complete", "complete"]
    assert all(RUN_ID_ATTR not in t.user_attrs for t in study.trials)


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [("sqlite:///{root}/notes.txt", "is not an SQLite database"), ("http://127.0.0.1:9", "connection refused")],
    ids=["not sqlite", "unreachable server"],
)
def test_search_refuses_an_unusable_store_before_writing_anything(workdir: Path, uri: str, fragment: str) -> None:
    (workdir / "notes.txt").write_text("my notes\n")
    result = CliRunner().invoke(cli, ["search", "--task", "synthetic", "--tracking-uri", uri.format(root=workdir)])
    assert result.exit_code == 5, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and fragment in errors[0] and "Traceback" not in result.stderr
    assert listing(workdir) == ["notes.txt"] and (workdir / "notes.txt").read_text() == "my notes\n"


def test_a_process_killed_while_creating_a_new_store_leaves_it_absent_or_whole(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow's migrations take ~1.5 s; a kill -9 in the middle must not leave a half-made store behind,
    nor a half-made schema template (no template at first: the first store to be made saves it)."""
    import random
    import time

    from adamtune.tracking.template import TEMPLATE_DIR_ENV

    templates = tmp_path_factory.mktemp("templates")
    monkeypatch.setenv(TEMPLATE_DIR_ENV, str(templates))
    store = tmp_path / "mlflow.db"
    code = f"from adamtune.tracking.tracker import Tracker; Tracker('k', 'sqlite:///{store}').close()"
    chance = random.Random(3)
    for delay in [chance.uniform(0.5, 3.0) for _ in range(4)]:
        store.unlink(missing_ok=True)
        process = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
        time.sleep(delay)  # the import takes ~1-2 s, the migrations the next ~1.5 s: kills land in both
        process.kill()
        process.wait()
        if store.exists():  # whole: MLflow opens it and it holds its default experiment
            assert MlflowClient(f"sqlite:///{store}").get_experiment("0") is not None
    finished = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert finished.returncode == 0
    assert MlflowClient(f"sqlite:///{store}").get_experiment_by_name("adamtune/k") is not None
    assert [p.name for p in tmp_path.iterdir() if p.name != "mlflow.db" and not p.name.startswith(".")] == []
    (template,) = [p for p in templates.iterdir() if not p.name.startswith(".")]
    with sqlite3.connect(f"file:{template}?mode=ro", uri=True) as connection:  # whole, and empty
        assert connection.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert connection.execute("SELECT count(*) FROM experiments").fetchone() == (0,)
