"""The console entry point's quick exit (``adamtune/fastexit.py``) loses nothing a search writes.

Real parts: ``python -m adamtune search`` as a process in a fresh directory, the default SQLite study
database and MLflow's default store ``sqlite:///mlflow.db`` (both created by the command), read back
after the process has exited.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
from mlflow import MlflowClient

from adamtune.report.plots import PLOT_NAMES
from adamtune.storage.outcomes import trial_state
from tests.conftest import trial_run_id

ROOT = Path(__file__).resolve().parents[2]


def test_a_search_process_leaves_its_study_runs_curves_and_plots(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "adamtune", "search", "--task", "digits", "--n-trials", "2", "--epochs", "2"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "study 'digits': 2/2 finished trials" in done.stderr + done.stdout

    study = optuna.load_study(study_name="digits", storage=f"sqlite:///{tmp_path}/adamtune.db")
    assert [trial_state(t) for t in study.trials] == ["complete", "complete"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("adamtune/digits")
    assert experiment is not None
    runs = {r.info.run_id: r for r in client.search_runs([experiment.experiment_id])}
    for trial in study.trials:
        run = runs[trial_run_id(f"sqlite:///{tmp_path}/mlflow.db", "digits", trial)]
        assert run.info.status == "FINISHED" and run.data.tags["adamtune.state"] == "complete"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
        assert "final_val_loss" in run.data.metrics
    (parent,) = [r for r in runs.values() if r.data.tags.get("adamtune.role") == "study"]
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    for name in ("optimization_history", "parallel_coordinates", "learning_curves"):
        assert name in PLOT_NAMES
        assert {f"plots/{name}.html", f"plots/{name}.png"} <= artifacts
    assert "recommendation.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
