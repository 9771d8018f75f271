"""The tracker's MLflow client takes adamtune's light entities and answers as ``MlflowClient`` does.

Real parts: an MLflow SQLite store. Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from adamtune.tracking.client import LocalClient, Metric, Param, RunTag
from adamtune.tracking.preflight import create_local_store
from adamtune.tracking.writer import is_retryable


def test_the_client_takes_light_entities_and_answers_as_mlflow(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    create_local_store(uri)
    client = LocalClient(uri)
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
    with pytest.raises(Exception) as refused:  # MLflow's own error: a refused call, not retried
        client.get_run("0" * 32)
    assert not is_retryable(refused.value) and "0" * 32 in str(refused.value)
    history = MlflowClient(uri).get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.5), (2, 0.25)]  # MLflow's own records
