"""Loop tasks end to end: a user's own ``fit(trial)`` with DataLoaders, searched like a built-in task.

Real parts: the search runs through the CLI on a real SQLite study and a real MLflow store; the user
module is a file in the test's working directory, imported as ``module:task`` (tests/loop_tasks.py).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient

from adamtune.cli.main import cli
from adamtune.storage.attr_keys import CURVES_ATTR, DIVERGED_EPOCH_ATTR
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.trials.objective import ERROR_ATTR
from tests.conftest import listing, trial_run_id
from tests.loop_tasks import write_task


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def load(name: str, storage: str = "sqlite:///adamtune.db") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def test_a_loop_task_searches_summarises_and_verifies_with_its_own_metrics(workdir: Path) -> None:
    task = write_task(workdir)
    tracking = f"sqlite:///{workdir}/mlflow.db"
    result = invoke(
        "search", "--task", task, "--study", "loop", "--n-trials", "4", "--seed", "1", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    assert "best val_mae" in result.stderr
    study = load("loop")
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert count_trials(study.trials).finished == 4
    baseline = study.trials[0]
    assert trial_state(baseline) == "complete"
    curves = baseline.user_attrs[CURVES_ATTR]
    assert set(curves) == {"train_loss", "val_loss", "val_mae"} and len(curves["val_mae"]) == 3
    assert baseline.value == pytest.approx(curves["val_mae"][-1])
    assert sorted(baseline.intermediate_values) == [1, 2, 3]  # the objective went to Optuna each epoch
    client = MlflowClient(tracking_uri=tracking)
    run_id = trial_run_id(tracking, "loop", baseline)
    for metric in ("val_mae", "val_loss", "train_loss"):
        assert [m.step for m in client.get_metric_history(run_id, metric)] == [1, 2, 3]

    row = json.loads(invoke("summary", "--json").output)[0]
    assert row["objective"] == "val_mae" and row["direction"] == "minimize"

    verified = invoke("verify", "--study", "loop", "--seeds", "2", "--device", "cpu", "--json", "--no-tracking")
    assert verified.exit_code == 0, verified.output
    record = json.loads(verified.stdout)
    assert record["metric"] == "test_mae"
    assert set(record["recommended"]) >= {"test_mae", "test_loss", "diverged"}
    assert "test_mae" in verified.stderr  # the per-run progress lines name the task's metrics


def test_fit_that_raises_fails_that_trial_once_and_the_search_goes_on(workdir: Path) -> None:
    """Run as a user would (a subprocess), to see what the terminal shows: the traceback exactly once."""
    task = write_task(workdir, behaviour={1: "raise"})
    tracking = f"sqlite:///{workdir}/mlflow.db"
    command = ["search", "--task", task, "--study", "boom", "--n-trials", "3", "--pruner", "none"]
    result = subprocess.run(
        [sys.executable, "-m", "adamtune", *command, "--tracking-uri", tracking],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Traceback (most recent call last)") == 1
    assert "RuntimeError: boom in the user's fit" in result.stderr
    study = load("boom", f"sqlite:///{workdir}/adamtune.db")
    states = [trial_state(t) for t in study.trials]
    assert states.count("failed") == 1 and states[1] == "failed" and count_trials(study.trials).finished == 3
    failed = study.trials[1]
    assert "RuntimeError: boom in the user's fit" in failed.user_attrs[ERROR_ATTR]
    assert "in fit" in failed.user_attrs[ERROR_ATTR]  # the traceback reaches into the user's code
    run = MlflowClient(tracking_uri=tracking).get_run(trial_run_id(tracking, "boom", failed))
    assert run.info.status == "FAILED" and run.data.tags["adamtune.state"] == "failed"
    assert "boom in the user's fit" in run.data.tags["adamtune.traceback"]


@pytest.mark.parametrize(("behaviour", "epoch"), [("nan", 2), ("blowup", 2)])
def test_nan_or_blown_up_reports_end_diverged_and_the_search_goes_on(workdir: Path, behaviour: str, epoch: int) -> None:
    task = write_task(workdir, behaviour={1: behaviour})
    tracking = f"sqlite:///{workdir}/mlflow.db"
    result = invoke(
        "search", "--task", task, "--study", "div", "--n-trials", "3", "--pruner", "none", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    study = load("div")
    states = [trial_state(t) for t in study.trials]
    assert states == ["complete", "diverged", "complete"]
    diverged = study.trials[1]
    assert diverged.user_attrs[DIVERGED_EPOCH_ATTR] == epoch
    # no untrained metrics were reported: a diverged trial scores the worst objective it reported
    reported = [v for v in diverged.user_attrs[CURVES_ATTR]["val_mae"] if v is not None]
    assert diverged.value == pytest.approx(max(reported))
    run = MlflowClient(tracking_uri=tracking).get_run(trial_run_id(tracking, "div", diverged))
    assert run.data.tags["adamtune.state"] == "diverged" and run.data.tags["adamtune.diverged_epoch"] == str(epoch)
    summary = json.loads(invoke("summary", "--json").output)[0]
    assert summary["trials"]["diverged"] == 1 and summary["recommended_trial"] != 1


def test_unknown_objective_lists_the_task_metrics_and_writes_nothing(workdir: Path) -> None:
    task = write_task(workdir)
    before = listing(workdir)
    result = CliRunner().invoke(cli, ["search", "--task", task, "--objective", "val_accuracy"])
    assert result.exit_code == 2, result.output
    assert "objective 'val_accuracy' is not a metric of task 'toy-regression'" in result.stderr
    assert "valid objectives: val_mae, val_loss" in result.stderr and "Traceback" not in result.stderr
    assert [p for p in listing(workdir) if not p.startswith("__pycache__")] == before


def test_another_reported_metric_can_be_the_objective(workdir: Path) -> None:
    task = write_task(workdir, epochs=1)
    result = invoke("search", "--task", task, "--study", "mse", "--objective", "val_loss", "--n-trials", "2")
    assert result.exit_code == 0, result.output
    trial = load("mse").trials[0]
    assert trial.value == pytest.approx(trial.user_attrs[CURVES_ATTR]["val_loss"][-1])


@pytest.mark.slow
def test_a_dataloader_task_runs_with_two_workers(workdir: Path) -> None:
    # Trials of ~1 s each: with 10-ms trials the first worker could finish them all before the second joins.
    task = write_task(workdir, behaviour={number: "slow" for number in range(6)}, epochs=2)
    args = ("--study", "two", "--n-trials", "6", "--workers", "2", "--devices", "cpu", "--no-confirm")
    result = invoke("search", "--task", task, *args)
    assert result.exit_code == 0, result.output
    study = load("two")
    assert count_trials(study.trials).finished == 6
    workers = {t.user_attrs["adamtune.worker"] for t in study.trials}
    assert len(workers) == 2 and count_trials(study.trials).failed == 0


def test_import_adamtune_stays_light_and_exports_the_loop_api() -> None:
    code = (
        "import sys, adamtune\n"
        "print('HEAVY', sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))\n"
        "print(adamtune.LoopTask.__name__, adamtune.TrialContext.__name__)\n"
        "print('AFTER', sorted(m for m in ('torch', 'mlflow', 'optuna') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "LoopTask TrialContext" in out and "AFTER []" in out


def test_builtin_diabetes_searches_and_verifies_on_val_mae(workdir: Path) -> None:
    result = invoke("search", "--task", "diabetes", "--n-trials", "3", "--epochs", "3", "--seed", "0", "--no-tracking")
    assert result.exit_code == 0, result.output
    study = load("diabetes")
    assert [trial_state(t) for t in study.trials].count("failed") == 0
    curves = study.trials[0].user_attrs[CURVES_ATTR]
    assert set(curves) == {"train_loss", "val_loss", "val_mae"}
    assert 10 < study.trials[0].value < 200  # MAE in score points (the target spans 25..346)
    verified = invoke("verify", "--task", "diabetes", "--seeds", "2", "--device", "cpu", "--json", "--no-tracking")
    assert verified.exit_code == 0, verified.output
    record = json.loads(verified.stdout)
    assert record["metric"] == "test_mae" and record["direction"] == "minimize"
    assert list(record["recommended"]) == ["test_mae", "test_loss", "diverged"]


REGRESSION_TASK = """
import torch
from torch import nn
from adamtune.tasks.base import Split, Task, TaskData

def load_data(data_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = x.sum(dim=1, keepdim=True)
    split = lambda a, b: Split(x[a:b], y[a:b])
    return TaskData(split(0, 200), split(200, 250), split(250, 300))

def mae(outputs, targets):
    return (outputs - targets).abs().mean()

def make_task():
    return Task(name="reg", description="regression", load_data=load_data,
                make_model=lambda: nn.Linear(4, 1), loss=nn.functional.mse_loss,
                metrics={"mae": mae}, objective="mae", direction="minimize",
                default_epochs=2, default_batch_size=50)
"""


def test_a_builtin_style_task_names_its_metrics_and_objective(workdir: Path) -> None:
    (workdir / "regression_task_module.py").write_text(REGRESSION_TASK)
    result = invoke("search", "--task", "regression_task_module:make_task", "--study", "reg", "--n-trials", "2")
    assert result.exit_code == 0, result.output
    trial = load("reg").trials[0]
    curves = trial.user_attrs[CURVES_ATTR]
    assert set(curves) == {"train_loss", "val_loss", "val_mae", "lr"}
    assert trial.value == pytest.approx(curves["val_mae"][-1])
    bad = CliRunner().invoke(cli, ["search", "--task", "regression_task_module:make_task", "--objective", "val_acc"])
    assert bad.exit_code == 2 and "valid objectives: val_loss, val_mae" in bad.stderr
    verified = invoke("verify", "--study", "reg", "--seeds", "2", "--device", "cpu", "--json")
    record = json.loads(verified.stdout)
    assert record["metric"] == "test_mae" and set(record["default"]) == {"test_mae", "test_loss", "diverged"}


def test_a_fit_that_always_raises_stops_the_worker_after_three_failures(workdir: Path) -> None:
    task = write_task(workdir, behaviour={n: "raise" for n in range(10)}, epochs=2)
    result = CliRunner().invoke(
        cli, ["search", "--task", task, "--study", "broken", "--n-trials", "5", "--pruner", "none", "--no-tracking"]
    )
    assert result.exit_code != 0
    assert "3 trials in a row failed with errors" in result.stderr and "Traceback" not in result.stderr.splitlines()[-1]
    assert [trial_state(t) for t in load("broken").trials] == ["failed"] * 3
