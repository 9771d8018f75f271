"""Divergence labelling (found when tried with ``lr`` in [1, 10]): a trial that ends no better than the
untrained model is labelled diverged, for built-in and loop tasks alike, keeps its per-epoch points in
Optuna and MLflow, and Optuna's warning about the baseline's out-of-range ``lr`` never reaches the user.
Real ``adamtune search`` processes, a SQLite study file, a local MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import torch

from adamtune.core.space import AdamParams
from adamtune.storage.attr_keys import CURVES_ATTR, SEED_ATTR, STATE_ATTR
from adamtune.tasks import resolve_task
from adamtune.training.context import TrialContext
from adamtune.training.train import build_model, evaluate_metrics
from tests.conftest import trial_run_id
from tests.trials.test_parallel import finish, start

WILD = """
[study]
task = "synthetic"
[space]
lr = { low = 1.0, high = 10.0 }
"""

FLAT_LOOP = """
import adamtune

def fit(trial):
    trial.report_initial(loss=1.0, mae=1.0)
    for epoch in trial.epochs():
        if trial.number == 1:      # learns nothing: sits at the untrained model's level
            trial.report(loss=1.0 + 0.01 * epoch, mae=1.0)
        else:
            trial.report(loss=1.0 / (epoch + 1), mae=1.0 / (epoch + 1))

task = adamtune.LoopTask(name="flat", fit=fit, data=lambda _: None, objective="mae", metrics=("loss",),
                         default_epochs=3, default_batch_size=8)
"""


def test_built_in_trials_with_a_huge_lr_are_diverged_never_ranked_and_keep_their_points(workdir: Path) -> None:
    (workdir / "wild.toml").write_text(WILD)
    storage, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    args = ("search", "--config", "wild.toml", "--n-trials", "6", "--epochs", "3", "--pruner", "none")
    code, stderr = finish(start(*args, "--seed", "1", "--tracking-uri", tracking, cwd=workdir))

    assert code == 0, stderr
    assert "Fixed parameter" not in stderr and "UserWarning" not in stderr, stderr
    task = resolve_task("synthetic")
    data = task.load_data(None)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    trials = optuna.load_study(study_name="synthetic", storage=storage).get_trials()
    for trial in trials:
        state = trial.user_attrs[STATE_ATTR]
        untrained = evaluate_metrics(
            task, build_model(task, trial.user_attrs[SEED_ATTR], torch.device("cpu")), data.val, torch.device("cpu")
        )
        if state == "complete":  # a ranked result learned something
            assert trial.value < untrained["loss"], (trial.number, trial.value, untrained)
        assert state in ("complete", "diverged")
        assert trial.intermediate_values, trial.number  # per-epoch points, diverged ones too
        assert trial.user_attrs[CURVES_ATTR]["val_loss"]
        assert client.get_metric_history(trial_run_id(tracking, "synthetic", trial), "val_loss"), trial.number
    assert sum(t.user_attrs[STATE_ATTR] == "diverged" for t in trials) >= 4


def test_a_loop_trial_no_better_than_untrained_is_diverged_with_its_whole_curve(workdir: Path) -> None:
    (workdir / "flat_loop_task.py").write_text(FLAT_LOOP)
    storage = f"sqlite:///{workdir}/adamtune.db"
    args = (
        "search",
        "--task",
        "flat_loop_task:task",
        "--n-trials",
        "3",
        "--pruner",
        "none",
        "--no-tracking",
        "--no-confirm",
    )
    code, stderr = finish(start(*args, cwd=workdir))

    assert code == 0, stderr
    (name,) = optuna.get_all_study_names(storage)
    trials = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).get_trials()}
    assert trials[1].user_attrs[STATE_ATTR] == "diverged"
    assert sorted(trials[1].intermediate_values) == [1, 2, 3]
    assert trials[1].value == 1.0  # scored as the untrained model
    assert trials[2].user_attrs[STATE_ATTR] == "complete"
    summary = start("summary", "--json", "--storage", storage, cwd=workdir)
    out, _ = summary.communicate(timeout=120)
    assert json.loads(out)[0]["trials"]["diverged"] == 1, out


def test_the_rule_needs_the_untrained_metrics_and_follows_the_direction() -> None:
    def context(direction: str, initial: float | None, last: float) -> TrialContext:
        made = TrialContext(
            params=AdamParams(),
            n_epochs=2,
            batch_size=1,
            seed=0,
            device="cpu",
            objective="accuracy",
            direction=direction,
        )
        if initial is not None:
            made.report_initial(loss=1.0, accuracy=initial)
        made.report(loss=0.5, accuracy=last)
        return made

    assert context("maximize", 0.25, 0.25).no_better_than_untrained()
    assert not context("maximize", 0.25, 0.9).no_better_than_untrained()
    assert context("minimize", 0.25, 0.9).no_better_than_untrained()
    assert not context("maximize", None, 0.1).no_better_than_untrained()
