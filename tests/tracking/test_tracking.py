"""tracking*.py: the writer's queue and retries, the parent/child run layout, stale runs, and ``adamtune ui``.

The writer tests drive :class:`Writer` with calls that fail on demand (real ``MlflowException``s, as
MLflow raises them for a refused connection or a rejected value): what is tested is the queue, not
MLflow. Everything else uses real stores: an MLflow SQLite store and an Optuna SQLite study. The
HTTP server cases are in ``test_mlflow_server.py``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
)

from adamtune.cli.main import cli
from adamtune.core.config import build_spec
from adamtune.core.errors import TrackingError
from adamtune.launch.search import run_search
from adamtune.report.artifacts import ReportArtifacts
from adamtune.report.summary import summarize
from adamtune.storage.outcomes import trial_state
from adamtune.tracking import ui as tracking_ui
from adamtune.tracking.parent_run import PARENT_RUN_ATTR, PARENT_TAG, study_progress
from adamtune.tracking.stale import end_stale_trial, runs_of_trial
from adamtune.tracking.tracker import Tracker
from adamtune.tracking.writer import Writer, _Op, describe_error, is_retryable
from adamtune.trials.worker import WorkerOptions
from tests.conftest import trial_run_id

CONNECTION_REFUSED = (
    "API request to http://127.0.0.1:1/api failed with exception NewConnectionError(Connection refused)"
)


# -- the writer -----------------------------------------------------------------------------------


class Store:
    """Calls that succeed, or fail as an unreachable (``down``) or refusing store would."""

    def __init__(self) -> None:
        self.down = False
        self.refuse: set[str] = set()
        self.sent: list[str] = []
        self.attempts = 0

    def op(self, name: str, on_drop: Any = None) -> _Op:
        def action(_client: Any, _run_id: str | None) -> None:
            self.attempts += 1
            if self.down:
                raise MlflowException(CONNECTION_REFUSED, error_code=INTERNAL_ERROR)
            if name in self.refuse:
                raise MlflowException(f"bad value in {name}", error_code=INVALID_PARAMETER_VALUE)
            self.sent.append(name)

        return _Op(name, action, None, on_drop)


def make_writer(notices: list[str], **kwargs: Any) -> Writer:
    return Writer(None, "http://store", notices.append, initial_backoff=0.01, max_backoff=0.05, **kwargs)


def wait_for(condition: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_writer_sends_every_call_in_order() -> None:
    store, notices = Store(), []
    writer = make_writer(notices)
    for i in range(20):
        assert writer.submit(store.op(f"call {i}"))

    assert writer.close(timeout=10) == 0
    assert store.sent == [f"call {i}" for i in range(20)]
    assert writer.sent == 20 and notices == []


def test_an_unreachable_store_is_retried_in_order_with_one_notice_each_way() -> None:
    store, notices = Store(), []
    store.down = True
    writer = make_writer(notices)
    for i in range(5):
        writer.submit(store.op(f"call {i}"))
    wait_for(lambda: store.attempts >= 4)  # the first call is being retried
    assert not writer.healthy and store.sent == []

    store.down = False
    assert writer.close(timeout=10) == 0

    assert store.sent == [f"call {i}" for i in range(5)]
    assert len(notices) == 2
    assert notices[0].startswith("MLflow: cannot reach http://store (connection refused); trials go on")
    assert "reachable again" in notices[1]
    assert writer.healthy


def test_a_store_back_before_the_close_deadline_gets_everything_despite_a_long_backoff() -> None:
    """Before the fix the writer slept its grown backoff (here 30 s) straight past the close deadline."""
    store, notices = Store(), []
    store.down = True
    writer = Writer(None, "http://store", notices.append, initial_backoff=30.0, max_backoff=30.0)
    for i in range(20):
        writer.submit(store.op(f"call {i}"))
    wait_for(lambda: store.attempts >= 1)  # the first call failed; the writer now pauses for 30 s
    threading.Timer(1.0, lambda: setattr(store, "down", False)).start()  # back one second into the close

    assert writer.close(timeout=8) == 0
    assert store.sent == [f"call {i}" for i in range(20)]


def test_a_refused_call_is_dropped_and_the_next_goes_out() -> None:
    store, notices = Store(), []
    store.refuse = {"bad"}
    dropped: list[str] = []
    writer = make_writer(notices)
    for name in ("a", "bad", "b"):
        writer.submit(store.op(name, on_drop=lambda name=name: dropped.append(name)))

    assert writer.close(timeout=10) == 1
    assert store.sent == ["a", "b"] and dropped == ["bad"]
    assert len(notices) == 1 and "could not bad" in notices[0]


def test_close_drops_what_cannot_be_sent_and_releases_it() -> None:
    store, notices = Store(), []
    store.down = True
    released: list[str] = []
    writer = make_writer(notices)
    for i in range(5):
        writer.submit(store.op(f"call {i}", on_drop=lambda i=i: released.append(f"call {i}")))

    assert writer.close(timeout=0.3) == 5
    assert sorted(released) == [f"call {i}" for i in range(5)]
    assert not writer.submit(store.op("late"))  # closed: refused and counted
    assert writer.dropped == 6 and store.sent == []


def test_a_full_queue_drops_new_calls_with_one_notice() -> None:
    gate, started = threading.Event(), threading.Event()
    sent: list[str] = []

    def blocking(_client: Any, _run_id: str | None) -> None:
        started.set()
        gate.wait(10)
        sent.append("first")

    notices: list[str] = []
    writer = make_writer(notices, max_queue=2)
    writer.submit(_Op("first", blocking))
    assert started.wait(10)  # the first call is in flight, the queue is empty
    results = [writer.submit(_Op(f"next {i}", lambda c, r, i=i: sent.append(f"next {i}"))) for i in range(4)]
    gate.set()

    assert results == [True, True, False, False]
    assert writer.close(timeout=10) == 2
    assert sent == ["first", "next 0", "next 1"]
    assert len(notices) == 1 and "2 tracking calls are waiting" in notices[0]


@pytest.mark.parametrize(
    ("error", "retry"),
    [
        (MlflowException(CONNECTION_REFUSED, error_code=INTERNAL_ERROR), True),
        (MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED), True),
        (MlflowException("bad value", error_code=INVALID_PARAMETER_VALUE), False),
        (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (OSError("disk"), True),
    ],
)
def test_which_errors_are_retried(error: Exception, retry: bool) -> None:
    assert is_retryable(error) is retry


def test_describe_error_shortens_connection_errors() -> None:
    assert describe_error(MlflowException(CONNECTION_REFUSED)) == "connection refused"
    assert describe_error(ValueError("line one\nline two")) == "line one"


# -- the parent run's per-trial numbers -----------------------------------------------------------


def _frozen(number: int, state: str, value: float | None) -> optuna.trial.FrozenTrial:
    optuna_state = {
        "complete": optuna.trial.TrialState.COMPLETE,
        "diverged": optuna.trial.TrialState.COMPLETE,
        "pruned": optuna.trial.TrialState.PRUNED,
        "failed": optuna.trial.TrialState.FAIL,
        "running": optuna.trial.TrialState.RUNNING,
    }[state]
    trial = optuna.trial.create_trial(
        state=optuna_state,
        value=value if optuna_state == optuna.trial.TrialState.COMPLETE else None,
        user_attrs={"adamtune.state": state} if state == "diverged" else {},
    )
    trial.number = number
    return trial


def test_study_progress_counts_trials_up_to_this_one() -> None:
    trials = [
        _frozen(0, "complete", 0.5),
        _frozen(1, "diverged", 0.1),  # never the best: its value is the untrained model's
        _frozen(2, "pruned", None),
        _frozen(3, "running", None),  # this trial, not told yet
        _frozen(4, "complete", 0.01),  # later than this trial: not counted
        _frozen(5, "failed", None),
    ]
    progress = study_progress(trials, 3, "complete", 0.3, "minimize")
    assert progress.best == 0.3
    assert progress.counts == {"complete": 2, "pruned": 1, "diverged": 1, "failed": 0}

    assert study_progress(trials, 3, "complete", 0.3, "maximize").best == 0.5
    assert study_progress(trials[:1], 1, "failed", None, "minimize").counts["failed"] == 1


# -- a search with a local store ------------------------------------------------------------------


def search(root: Path, study: str, n_trials: int, tracking_uri: str, **options: Any) -> optuna.Study:
    """A one-worker synthetic search (2 epochs, no pruning: every trial completes)."""
    spec = build_spec("synthetic", None, study, {"n_trials": n_trials, "epochs": 2, "pruner": "none", "seed": 5})
    storage = f"sqlite:///{root}/adamtune.db"
    worker = WorkerOptions(storage_url=storage, study_name=study, device="cpu", tracking_uri=tracking_uri, **options)
    run_search(spec, worker)
    return optuna.load_study(study_name=study, storage=storage)


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 3-trial search logged to a local MLflow SQLite store, then resumed to 4 trials."""
    root = tmp_path_factory.mktemp("local")
    uri = f"sqlite:///{root}/mlflow.db"
    first = search(root, "s", 3, uri)
    parent_after_first = first.user_attrs[PARENT_RUN_ATTR]
    study = search(root, "s", 4, uri)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("adamtune/s")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    return {
        "root": root,
        "uri": uri,
        "study": study,
        "client": client,
        "parent_after_first": parent_after_first,
        "runs": {r.info.run_id: r for r in runs},
    }


def test_every_trial_is_a_child_of_the_study_parent_run(local: dict[str, Any]) -> None:
    study, runs = local["study"], local["runs"]
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    assert parent_id == local["parent_after_first"]  # the resumed search reused the parent

    parents = [r for r in runs.values() if r.data.tags.get("adamtune.role") == "study"]
    children = [r for r in runs.values() if r.data.tags.get("adamtune.role") == "trial"]
    assert [p.info.run_id for p in parents] == [parent_id]
    assert len(children) == len(study.trials) == 4  # one run per trial
    for trial in study.trials:
        run = runs[trial_run_id(local["uri"], "s", trial)]
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.data.tags["adamtune.trial_number"] == str(trial.number)
        assert run.data.tags["adamtune.study"] == "s"
        assert run.data.tags["adamtune.state"] == trial_state(trial) == "complete"
        assert run.data.tags["adamtune.stopped_epoch"] == "2"
        assert {"adamtune.device", "adamtune.host", "adamtune.worker"} <= set(run.data.tags)
        assert {"lr", "beta1", "beta2", "epsilon", "decay", "seed"} <= set(run.data.params)
        assert run.data.params["seed"] == str(trial.user_attrs["adamtune.seed"])
        assert run.data.metrics["objective_value"] == pytest.approx(trial.value)
        assert run.info.status == "FINISHED"
        history = local["client"].get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == [1, 2]  # one point per epoch


def test_parent_run_holds_config_progress_and_artifacts(local: dict[str, Any]) -> None:
    study, client = local["study"], local["client"]
    parent = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
    assert parent.info.status == "FINISHED"
    params = parent.data.params
    assert params["task"] == "synthetic" and params["objective"] == "val_loss" and params["epochs"] == "2"
    assert params["space.lr"] == "[1e-05, 0.1] log"
    assert parent.data.tags["adamtune.n_trials"] == "4" and parent.data.tags["adamtune.pruner"] == "none"

    best = client.get_metric_history(parent.info.run_id, "best_val_loss")
    assert [m.step for m in sorted(best, key=lambda m: m.step)] == [0, 1, 2, 3]
    values = [t.value for t in study.trials]
    expected = [min(values[: i + 1]) for i in range(4)]
    assert [m.value for m in sorted(best, key=lambda m: m.step)] == pytest.approx(expected)
    complete = client.get_metric_history(parent.info.run_id, "trials_complete")
    assert max(m.value for m in complete) == 4

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("optimization_history", "parallel_coordinates", "learning_curves"):
        assert {f"plots/{name}.html", f"plots/{name}.png"} <= artifacts
    # 4 trials are fewer than the summary's importance needs: the plot is skipped, and says why
    assert "plots/param_importances.html" not in artifacts and "plots/skipped.txt" in artifacts
    skipped = Path(client.download_artifacts(parent.info.run_id, "plots/skipped.txt", str(local["root"])))
    assert skipped.read_text().startswith("param_importances: needs at least 6 complete trials")
    path = client.download_artifacts(parent.info.run_id, "recommendation.json", str(local["root"]))
    assert json.loads(Path(path).read_text()) == json.loads(json.dumps(summarize(study).as_dict()))


def test_a_joining_worker_finds_the_same_parent(local: dict[str, Any]) -> None:
    tracker = Tracker("s", local["uri"])
    try:
        assert tracker.attach(local["study"]) == local["study"].user_attrs[PARENT_RUN_ATTR]
    finally:
        tracker.close()


def test_a_parent_missing_from_this_store_is_made_anew(local: dict[str, Any], tmp_path: Path) -> None:
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{local['root']}/adamtune.db")
    old = study.user_attrs[PARENT_RUN_ATTR]
    tracker = Tracker("s", f"sqlite:///{tmp_path}/other.db")
    try:
        new = tracker.attach(study)
    finally:
        tracker.close()
    assert new != old and study.user_attrs[PARENT_RUN_ATTR] == new
    study.set_user_attr(PARENT_RUN_ATTR, old)  # leave the module's study as it was


def test_a_stale_trial_run_is_found_by_its_tags_and_closed(local: dict[str, Any]) -> None:
    tracker = Tracker("stale", local["uri"])
    run = tracker.start_trial("trial-7", {"lr": 0.1}, {"adamtune.trial_number": 7})
    run_id = run.wait_for_run_id()
    assert run_id is not None
    assert [r.info.run_id for r in runs_of_trial(tracker, 7)] == [run_id]

    end_stale_trial(tracker, 7)  # as a worker does for a trial whose worker died before storing the run id
    assert tracker.close() == 0

    closed = tracker.client.get_run(run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags["adamtune.stale"] == "true" and closed.data.tags["adamtune.state"] == "failed"


def test_system_metrics_are_recorded_in_the_trial_run(local: dict[str, Any]) -> None:
    """Even a trial shorter than the sampling interval gets its samples (logged when it ends)."""
    tracker = Tracker("sys", local["uri"], system_metrics=True)
    run = tracker.start_trial("trial-0", {}, {"adamtune.trial_number": 0})
    run_id = run.wait_for_run_id()
    wait_for(lambda: run.handle.monitor is not None)
    time.sleep(0.2)
    run.finish("complete", {}, {})
    assert tracker.close() == 0

    metrics = tracker.client.get_run(run_id).data.metrics
    assert "system/cpu_utilization_percentage" in metrics
    assert "system/system_memory_usage_megabytes" in metrics


def test_an_unreachable_store_at_start_is_a_one_line_error() -> None:
    with pytest.raises(TrackingError, match=r"cannot use MLflow tracking store http://127\.0\.0\.1:9/?: connection"):
        Tracker("x", "http://127.0.0.1:9")


# -- adamtune ui ----------------------------------------------------------------------------------


def test_ui_for_a_server_prints_its_url() -> None:
    result = CliRunner().invoke(cli, ["ui", "--tracking-uri", "http://127.0.0.1:5555"])
    assert result.exit_code == 0
    assert "open http://127.0.0.1:5555 in a browser" in result.output


def test_ui_without_a_store_is_a_one_line_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 5
    assert result.stderr.startswith(f"Error: no MLflow store at {tmp_path}/none.db")


def test_ui_plan_binds_localhost_and_warns_beyond(tmp_path: Path) -> None:
    store = tmp_path / "mlflow.db"
    store.touch()
    plan = tracking_ui.ui_plan(f"sqlite:///{store}", "127.0.0.1", 5001)
    assert plan.argv is not None and plan.argv[1:4] == ["-m", "mlflow", "ui"]
    assert plan.argv[4:] == ["--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1", "--port", "5001"]
    assert plan.warning is None and "http://127.0.0.1:5001" in plan.message

    exposed = tracking_ui.ui_plan(f"sqlite:///{store}", "0.0.0.0", 5001)
    assert exposed.warning is not None and "no login" in exposed.warning


def test_ui_serves_the_local_store(local: dict[str, Any]) -> None:
    """``adamtune ui`` really starts MLflow's UI on the store (run as a subprocess, then stopped)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "adamtune", "ui", "--tracking-uri", local["uri"], "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        body = None
        while body is None:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "the UI did not start"
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=adamtune/s"
                body = json.loads(urllib.request.urlopen(url, timeout=2).read())
            except OSError:
                time.sleep(0.3)
        assert body["experiment"]["name"] == "adamtune/s"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)


def test_plots_begun_at_the_target_are_drawn_again_when_more_trials_ran_since(tmp_path: Path) -> None:
    """The search draws its plots while the confirmation stage trains; a later trial (another search raised
    the target meanwhile) makes them stale, and the end of the search draws them again from the study."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    study = search(tmp_path, "late", 3, uri, tracking=True)
    tracker = Tracker("late", uri)
    tracker.artifacts = ReportArtifacts()
    try:
        tracker.attach(study)
        tracker.begin_artifacts(study)
        drawing = tracker._drawing
        assert drawing is not None
        first = drawing.wait()
        stale = (first / "plots" / "optimization_history.png").read_bytes()
        last = study.trials[-1]
        study.add_trial(optuna.trial.create_trial(value=0.0, params=last.params, distributions=last.distributions))
        tracker.end_search(study)
    finally:
        tracker.close()
    client = MlflowClient(uri)
    parent = study.user_attrs[PARENT_RUN_ATTR]
    uploaded = Path(client.download_artifacts(parent, "plots/optimization_history.png", str(tmp_path)))
    assert uploaded.read_bytes() != stale  # drawn again, with the fourth trial
