"""MLflow in a helper process: the proxy answers as ``MlflowClient`` does here, and a search trains without MLflow.

Real parts: MLflow SQLite stores, the helper interpreter (``python -m adamtune.tracking_remote``),
``adamtune search`` as a process, a real SIGKILL of the helper. Nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from adamtune.study import trial_state
from adamtune.tracking_preflight import create_local_store
from adamtune.tracking_remote import LocalClient, Metric, Param, RemoteClient, RemoteError, RunTag
from adamtune.tracking_writer import is_retryable
from tests.conftest import trial_run_id

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.fixture(params=["here", "helper"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalClient | RemoteClient]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    made: LocalClient | RemoteClient
    if request.param == "helper":
        made = RemoteClient()
        assert made.open(uri) == uri
    else:
        create_local_store(uri)
        made = LocalClient(uri)
    yield made
    made.close()


def test_both_clients_answer_the_trackers_calls_alike(client: LocalClient | RemoteClient, tmp_path: Path) -> None:
    experiment_id = client.create_experiment("adamtune/x", tags={"adamtune.study": "x"})
    assert client.get_experiment_by_name("adamtune/x").lifecycle_stage == "active"
    assert client.get_experiment_by_name("adamtune/missing") is None
    run_id = client.create_run(experiment_id, run_name="r", tags={"adamtune.role": "trial"}).info.run_id
    metrics = [Metric("loss", 0.5, 1_000, 1), Metric("loss", 0.25, 1_001, 2)]
    client.log_batch(run_id, metrics=metrics, params=[Param("lr", "0.01")], tags=[RunTag("k", "v")])
    client.set_terminated(run_id, status="FINISHED")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id == experiment_id
    assert run.data.metrics == {"loss": 0.25} and run.data.params == {"lr": "0.01"} and run.data.tags["k"] == "v"
    assert [r.info.run_id for r in client.search_runs([experiment_id], filter_string="tags.k = 'v'")] == [run_id]
    with pytest.raises(Exception) as refused:  # MLflow's own error here, a RemoteError from the helper
        client.get_run("0" * 32)
    assert not is_retryable(refused.value) and "0" * 32 in str(refused.value)
    history = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]  # MLflow's own records


def test_a_helper_that_exits_fails_every_later_call_without_retry(tmp_path: Path) -> None:
    told: list[str] = []
    client = RemoteClient(on_exit=told.append)
    client.open(f"sqlite:///{tmp_path}/mlflow.db")
    client._process.kill()
    for _ in range(2):
        with pytest.raises(RemoteError) as failed:
            client.search_experiments()
        assert not is_retryable(failed.value) and "killed by signal SIGKILL" in str(failed.value)
    assert told == [str(failed.value)]  # told once
    client.close()


def test_the_helper_leaves_sigint_and_sigterm_to_the_command(tmp_path: Path) -> None:
    """A Ctrl-C or a scheduler's SIGTERM to the whole job must not stop it before the command flushes."""
    client = RemoteClient()
    client.open(f"sqlite:///{tmp_path}/mlflow.db")
    for sent in (signal.SIGINT, signal.SIGTERM):
        os.kill(client._process.pid, sent)
    time.sleep(0.5)
    assert client.get_experiment_by_name("Default") is not None  # still answering
    client.close()
    assert client._process.poll() == 0


def test_a_prestarted_helper_is_taken_only_where_it_was_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLflow resolves relative paths (./mlruns) and its settings in the helper: same directory, same env."""
    from adamtune import tracking_remote

    monkeypatch.chdir(tmp_path)
    tracking_remote.prestart()  # replaces one an earlier in-process search left in another directory
    spare = tracking_remote._spare
    assert spare is not None and spare.started_in[0] == str(tmp_path)
    taken = tracking_remote.take_helper()
    assert taken is spare and tracking_remote._spare is None
    taken.close()
    tracking_remote.prestart()
    spare = tracking_remote._spare
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    taken = tracking_remote.take_helper()
    assert taken is not spare and taken.started_in[0] == str(tmp_path / "elsewhere")
    assert spare is not None and spare._process.poll() == 0  # the stale one was closed
    taken.close()


def test_a_preloaded_helper_answers_every_later_call_in_turn(tmp_path: Path) -> None:
    """``preload`` gets no answer: the calls after it still get their own answers, not a stale one."""
    client = RemoteClient()
    try:
        client.preload()
        client.preload()  # twice is harmless
        uri = f"sqlite:///{tmp_path}/mlflow.db"
        assert client.open(uri) == uri
        experiment_id = client.create_experiment("adamtune/x")
        assert client.get_experiment_by_name("adamtune/x").experiment_id == experiment_id
    finally:
        client.close()
    client.preload()  # after close: nothing to send, no error


def test_closing_lets_the_helper_exit(tmp_path: Path) -> None:
    client = RemoteClient()
    client.open(f"sqlite:///{tmp_path}/mlflow.db")
    client.close()
    assert client._process.poll() == 0
    with pytest.raises(RemoteError):
        client.search_experiments()


PROBE = """
import sys
from adamtune.cli import cli
try:
    cli(sys.argv[1:])
except SystemExit as exit_:
    print("mlflow imported here:", "mlflow" in sys.modules, file=sys.stderr)
    raise
"""


def test_a_one_worker_search_never_imports_mlflow_in_the_training_process(workdir: Path) -> None:
    command = [sys.executable, "-c", PROBE, "search", "--task", "synthetic", "--n-trials", "3", "--epochs", "2"]
    command += ["--pruner", "none", "--no-confirm"]
    done = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "mlflow imported here: False" in done.stderr
    study = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{workdir}/adamtune.db")
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("adamtune/synthetic")
    assert f"#/experiments/{experiment.experiment_id}/runs" in done.stderr  # the URL, from the tracker
    for trial in study.trials:
        run_id = trial_run_id(f"sqlite:///{workdir}/mlflow.db", "synthetic", trial)
        history = client.get_metric_history(run_id, "val_loss")
        assert [m.step for m in history] == [1, 2]  # one point per epoch, as in-process tracking logs


def _helper_of(pid: int) -> int | None:
    """The pid of the tracking helper whose parent is ``pid``, if it runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            status = (entry / "status").read_text()
        except OSError:
            continue
        if b"adamtune.tracking_remote" in cmdline and f"\nPPid:\t{pid}\n" in status:
            return int(entry.name)
    return None


def test_a_helper_killed_mid_search_leaves_the_search_to_go_on(workdir: Path) -> None:
    """One notice, no traceback, exit 0, and every trial in the study: tracking is only the review copy."""
    command = [sys.executable, "-m", "adamtune", "search", "--task", "synthetic", "--n-trials", "8"]
    command += ["--epochs", "60", "--pruner", "none", "--no-confirm"]
    search = subprocess.Popen(command, cwd=workdir, env=ENV, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{workdir}/adamtune.db"
    deadline, helper = time.monotonic() + 120, None
    while time.monotonic() < deadline and helper is None:
        time.sleep(0.2)
        found = _helper_of(search.pid)
        if found is not None and (workdir / "mlflow.db").exists():
            try:
                study = optuna.load_study(study_name="synthetic", storage=storage)
            except Exception:  # not created yet
                continue
            if any(t.state.is_finished() for t in study.trials):
                helper = found
    assert helper is not None, "the search had no tracking helper with a finished trial"
    os.kill(helper, signal.SIGKILL)
    _, stderr = search.communicate(timeout=300)
    assert search.returncode == 0, stderr
    notices = [line for line in stderr.splitlines() if "MLflow" in line]
    assert len(notices) == 1 and "helper process exited (killed by signal SIGKILL)" in notices[0], stderr
    assert "goes on without tracking" in notices[0] and "Traceback" not in stderr
    study = optuna.load_study(study_name="synthetic", storage=storage)
    states = [trial_state(t) for t in study.trials]
    assert len(states) == 8 and set(states) <= {"complete", "diverged"}, states  # none failed, none running
