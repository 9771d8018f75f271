"""PyTorch Lightning inside a search: a real ``lightning.Trainer`` on the CPU, reporting through the callback.

Skipped only when Lightning is not installed (``pip install -e ".[dev]"`` installs it).
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

pytest.importorskip("lightning")

from click.testing import CliRunner

from adamtune.cli.main import cli
from adamtune.core.config import build_spec
from adamtune.core.space import baseline_optuna_params
from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.tasks import resolve_task
from adamtune.trials.objective import Objective
from tests import lightning_task

TASK = "tests.lightning_task:task"


def test_a_lightning_trainer_searches_and_verifies(workdir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "--task", TASK, "--study", "pl", "--n-trials", "3", "--pruner", "none"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="pl", storage="sqlite:///adamtune.db")
    assert count_trials(study.trials).complete == 3
    curves = study.trials[0].user_attrs[CURVES_ATTR]
    assert set(curves) == {"val_loss", "val_mae"} and len(curves["val_mae"]) == 3  # one report per epoch
    assert study.trials[0].value == pytest.approx(curves["val_mae"][-1])
    verified = runner.invoke(cli, ["verify", "--study", "pl", "--seeds", "2", "--device", "cpu", "--json"])
    assert verified.exit_code == 0, verified.output
    record = json.loads(verified.stdout)
    assert record["metric"] == "test_mae" and set(record["recommended"]) == {"test_mae", "test_loss", "diverged"}


def test_a_pruned_lightning_trial_stops_training() -> None:
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):  # type: ignore[no-untyped-def]
            return True

    task = resolve_task(TASK)
    spec = build_spec(TASK, overrides={"epochs": 3}).with_task(task)
    objective = Objective(spec, task, task.load_data(Path(".")), "cpu", tracker=None, base_seed=0)
    study = optuna.create_study(pruner=AlwaysPrune())
    study.enqueue_trial(baseline_optuna_params(spec.space), user_attrs={BASELINE_ATTR: True})
    lightning_task.EPOCHS_RUN.clear()
    study.optimize(objective, n_trials=2)
    baseline, pruned = study.trials
    assert trial_state(baseline) == "complete" and trial_state(pruned) == "pruned"
    assert [epoch for number, epoch in lightning_task.EPOCHS_RUN if number == 1] == [1]  # Lightning stopped
    assert len(pruned.user_attrs[CURVES_ATTR]["val_mae"]) == 1
