"""Searches logged to a real ``mlflow server`` over HTTP, including one that stops mid-search.

The server is started by the fixture (SQLite backend, proxied artifacts in a temporary directory, a
free port on 127.0.0.1), shared by the module's tests and killed at teardown. Starting it takes 10-20 s
on two cores, so the tests reuse it: one that kills it restarts it, and the last one kills it for good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from adamtune.core.config import build_spec
from adamtune.launch.search import run_search
from adamtune.report.summary import summarize
from adamtune.storage.attr_keys import RUN_ID_ATTR
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.tracking import client as tracking_client
from adamtune.tracking import tracker as tracking
from adamtune.tracking import writer as tracking_writer
from adamtune.tracking.parent_run import PARENT_RUN_ATTR, PARENT_TAG
from adamtune.tracking.store import experiment_name
from adamtune.trials.worker import WorkerOptions
from tests.servers import START_SECONDS, MlflowServer
from tests.tracking.test_run_creation import ANSWER_LOST

pytestmark = pytest.mark.slow

EPOCHS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    handle = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    handle.start()
    try:
        handle.wait()
        yield handle
    finally:
        handle.stop()


def search(tmp_path: Path, study: str, n_trials: int, uri: str, on_trial: Any = None) -> optuna.Study:
    """A one-worker synthetic search, no pruning (every trial completes), logged to ``uri``."""
    spec = build_spec("synthetic", None, study, {"n_trials": n_trials, "epochs": EPOCHS, "pruner": "none", "seed": 1})
    storage = f"sqlite:///{tmp_path}/adamtune.db"
    options = WorkerOptions(storage_url=storage, study_name=study, device="cpu", tracking_uri=uri)
    run_search(spec, options, on_trial=on_trial)
    return optuna.load_study(study_name=study, storage=storage)


def runs_by_trial(client: MlflowClient, study: str) -> dict[int, list[Any]]:
    experiment = client.get_experiment_by_name(experiment_name(study))
    found: dict[int, list[Any]] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=500):
        if run.data.tags.get("adamtune.role") == "trial":
            found.setdefault(int(run.data.tags["adamtune.trial_number"]), []).append(run)
    return found


def test_a_search_through_the_server_can_be_read_back(
    server: MlflowServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.ensure_up()
    study = search(tmp_path, "served", 3, server.url)
    assert "View run" not in capsys.readouterr().out  # MLflow's per-run links are not printed
    client = MlflowClient(server.url)

    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    parent = client.get_run(parent_id)
    assert parent.data.tags["adamtune.role"] == "study" and parent.info.status == "FINISHED"
    assert parent.data.params["task"] == "synthetic"
    runs = runs_by_trial(client, "served")
    assert sorted(runs) == [t.number for t in study.trials]
    for trial in study.trials:
        (run,) = runs[trial.number]
        assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR]
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.data.tags["adamtune.state"] == trial_state(trial) == "complete"
        assert float(run.data.params["lr"]) == pytest.approx(trial.user_attrs["adamtune.params"]["lr"], rel=1e-5)
        for metric in ("train_loss", "val_loss", "val_accuracy", "lr"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        assert run.data.metrics["final_val_loss"] == pytest.approx(trial.value)
    best = client.get_metric_history(parent_id, "best_val_loss")
    assert sorted(m.step for m in best) == [0, 1, 2]

    plots = {a.path for a in client.list_artifacts(parent_id, "plots")}
    assert {"plots/learning_curves.png", "plots/learning_curves.html", "plots/optimization_history.png"} <= plots
    png = Path(client.download_artifacts(parent_id, "plots/learning_curves.png", str(tmp_path)))
    assert png.read_bytes()[:4] == b"\x89PNG"
    recommendation = Path(client.download_artifacts(parent_id, "recommendation.json", str(tmp_path)))
    assert (
        json.loads(recommendation.read_text())["recommended_trial"] == summarize(study).as_dict()["recommended_trial"]
    )


def test_a_server_that_stops_and_comes_back_loses_no_trial(
    server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.ensure_up()
    monkeypatch.setattr(tracking_writer, "MAX_BACKOFF_SECONDS", 1.0)
    monkeypatch.setattr(tracking, "CLOSE_TIMEOUT_SECONDS", float(START_SECONDS))

    def outage(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 0:
            server.stop()  # trials 1 and 2 start while the server is down
        elif trial.number == 2:
            server.start()  # back while the search goes on (it may finish first: close waits)

    with caplog.at_level(logging.WARNING, logger="adamtune.tracking"):
        study = search(tmp_path, "flaky", 5, server.url, on_trial=outage)

    assert count_trials(study.trials).finished == 5 and count_trials(study.trials).failed == 0
    notices = [r.getMessage() for r in caplog.records]
    assert len([n for n in notices if "cannot reach" in n]) == 1, notices
    assert len([n for n in notices if "reachable again" in n]) == 1, notices
    assert not [n for n in notices if "dropped" in n], notices

    client = MlflowClient(server.url)
    runs = runs_by_trial(client, "flaky")
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    assert sorted(runs) == [0, 1, 2, 3, 4]  # every trial has exactly one run
    for trial in study.trials:
        (run,) = runs[trial.number]
        assert run.data.tags[PARENT_TAG] == parent_id
        assert run.data.tags["adamtune.state"] == "complete" and run.info.status == "FINISHED"
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))
        # a trial that ran while the server was down gets its run's id once the run is made (the tags find it too)
        assert trial.user_attrs.get(RUN_ID_ATTR) == run.info.run_id
        # and its run has the trial's times, even if it was created after the trial ended
        assert trial.datetime_start is not None and trial.datetime_complete is not None
        assert trial.datetime_start.timestamp() - 1 <= run.info.start_time / 1000 <= run.info.end_time / 1000
        assert run.info.end_time / 1000 <= trial.datetime_complete.timestamp() + 1
    assert client.get_run(parent_id).info.status == "FINISHED"


def test_a_run_whose_create_answer_is_lost_is_made_once(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage test's rare failure, made certain: the server makes a run but its answer is lost.

    A test double around the tracker client's real ``create_run`` sends it to the server and then raises
    the error MLflow raises when the connection drops before the answer (retryable), once per run: the
    study's parent run (made by the deferred attach), each trial's run and each confirmation run. The
    writer tries each again, and each run exists once (``trial_run.RunMaker``).
    """
    server.ensure_up()
    monkeypatch.setattr(tracking_writer, "INITIAL_BACKOFF_SECONDS", 0.05)
    lost: list[str] = []
    real = tracking_client.LocalClient.__getattr__

    def create_run(self: Any, *args: Any, run_name: str, **kwargs: Any) -> Any:
        run = real(self, "create_run")(*args, run_name=run_name, **kwargs)
        if run_name not in lost:
            lost.append(run_name)
            raise MlflowException(ANSWER_LOST, error_code=INTERNAL_ERROR)
        return run

    monkeypatch.setattr(tracking_client.LocalClient, "create_run", create_run, raising=False)
    study = search(tmp_path, "lost", 3, server.url)

    assert {"lost", "baseline", "trial-1", "trial-2"} <= set(lost)  # the parent's and every trial's answer
    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name(experiment_name("lost"))
    names = [r.info.run_name for r in client.search_runs([experiment.experiment_id], max_results=500)]
    assert sorted(names) == sorted(lost)  # every run once, confirmation runs included
    runs = runs_by_trial(client, "lost")
    assert sorted(runs) == [0, 1, 2]
    for trial in study.trials:
        (run,) = runs[trial.number]
        assert run.info.run_id == trial.user_attrs[RUN_ID_ATTR] and run.info.status == "FINISHED"
        assert run.data.tags[PARENT_TAG] == study.user_attrs[PARENT_RUN_ATTR]


def test_a_server_gone_for_good_does_not_stop_the_search(
    server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.ensure_up()
    monkeypatch.setattr(tracking, "CLOSE_TIMEOUT_SECONDS", 1.0)

    def crash(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.number == 0:
            server.stop()

    with caplog.at_level(logging.WARNING, logger="adamtune.tracking"):
        study = search(tmp_path, "gone", 3, server.url, on_trial=crash)

    counts = count_trials(study.trials)
    assert counts.finished == 3 and counts.failed == 0 and counts.running == 0
    assert all(t.value is not None for t in study.trials)
    notices = [r.getMessage() for r in caplog.records]
    assert len([n for n in notices if "cannot reach" in n]) == 1, notices
    (dropped,) = [n for n in notices if "were dropped" in n]
    assert dropped.startswith("MLflow: ") and "the study database holds every trial" in dropped
