"""The trial context on its own: naming, epochs, divergence, pruning, results (no study, no MLflow)."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import pytest
import torch

import adamtune
from adamtune.core.space import AdamParams
from adamtune.tasks.loop import LoopData, LoopTask
from adamtune.training.context import TrialContext
from adamtune.training.runner import run_in_context, train_once
from adamtune.training.stops import TrialDiverged, TrialPruned


def context(**overrides: object) -> TrialContext:
    settings: dict[str, object] = {
        "params": AdamParams(lr=0.01),
        "n_epochs": 4,
        "batch_size": 8,
        "seed": 3,
        "device": "cpu",
        "objective": "mae",
    }
    settings.update(overrides)
    return TrialContext(**settings)  # type: ignore[arg-type]


def test_reports_are_stored_with_the_split_prefix_and_logs_as_named() -> None:
    trial = context()
    for epoch in trial.epochs():
        trial.log(train_loss=1.0 / epoch)
        trial.report(loss=torch.tensor(2.0 / epoch), mae=1.0 / epoch)
    assert [epoch for epoch, _ in trial.history] == [1, 2, 3, 4]
    assert trial.history[0][1] == {"train_loss": 1.0, "val_loss": 2.0, "val_mae": 1.0}
    value, metrics = trial.result()
    assert value == 0.25 and metrics == {"val_loss": 0.5, "val_mae": 0.25}
    test = context(split="test")
    test.report(mae=0.5)
    assert test.result() == (0.5, {"test_mae": 0.5})


def test_reporting_mistakes_are_clear_errors() -> None:
    trial = context()
    epochs = trial.epochs()
    next(epochs)
    with pytest.raises(ValueError, match="must include the objective 'mae'"):
        trial.report(loss=1.0)
    with pytest.raises(ValueError, match="must not carry a split prefix"):
        trial.report(mae=1.0, val_loss=2.0)
    with pytest.raises(TypeError, match="metric 'mae' must be a number"):
        trial.report(mae="x")
    trial.report(mae=1.0)
    with pytest.raises(ValueError, match="called twice for epoch 1"):
        trial.report(mae=1.0)
    with pytest.raises(RuntimeError, match="runs once per trial"):
        trial.epochs()
    with pytest.raises(RuntimeError, match="without reporting any epoch"):
        context().result()


def test_a_non_finite_report_diverges_and_a_swallowed_stop_still_stops() -> None:
    trial = context()
    seen = []
    for epoch in trial.epochs():
        seen.append(epoch)
        with contextlib.suppress(TrialDiverged):  # a fit that catches everything: the trial stays stopped
            trial.report(mae=math.nan if epoch == 2 else 1.0)
    assert seen == [1, 2] and trial.state == "diverged" and trial.diverged_epoch == 2
    with pytest.raises(TrialDiverged):
        trial.report(mae=1.0)
    assert trial.result() == (1.0, {"val_mae": 1.0})  # the worst finite objective reported


def test_blow_up_rule_uses_the_untrained_loss_when_reported_else_the_first_epoch() -> None:
    first = context()
    first.report(loss=1.0, mae=1.0)
    first.report(loss=9.9, mae=2.0)  # under 10x the first epoch's loss: still learning
    with pytest.raises(TrialDiverged, match="over 10x"):
        first.report(loss=10.5, mae=3.0)
    assert first.diverged_epoch == 3 and first.result()[0] == 3.0
    initial = context()
    initial.report_initial(loss=0.5, mae=0.7)
    with pytest.raises(TrialDiverged):
        initial.report(loss=6.0, mae=0.6)
    assert initial.result() == (0.7, {"val_loss": 0.5, "val_mae": 0.7})  # scored as the untrained model
    nothing = context(direction="maximize", objective="accuracy")
    with pytest.raises(TrialDiverged):
        nothing.report(accuracy=math.inf)
    assert nothing.result()[0] == -math.inf


def test_the_epoch_hook_prunes_and_sees_diverged_epochs_for_the_curves() -> None:
    calls = []

    def hook(epoch: int, metrics: object, diverged: bool) -> bool:
        calls.append((epoch, diverged))
        return epoch == 2

    trial = context(on_epoch=hook)
    with pytest.raises(TrialPruned):
        for _ in trial.epochs():
            trial.report(mae=1.0)
    assert calls == [(1, False), (2, False)] and trial.state == "pruned"
    diverging = context(on_epoch=hook)
    with pytest.raises(TrialDiverged):
        diverging.report(mae=math.nan)
    assert calls[-1] == (1, True)


def test_checkpoint_dir_is_made_on_first_use(tmp_path: Path) -> None:
    trial = context(checkpoint_dir=tmp_path / "study" / "trial-3")
    assert not (tmp_path / "study").exists()
    assert trial.checkpoint_dir.is_dir() and trial.checkpoint_dir == tmp_path / "study" / "trial-3"


def test_make_optimizer_forwards_to_the_optimizer_factory() -> None:
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = context(params=AdamParams(lr=0.02, beta1=0.8)).make_optimizer(model.parameters())
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.02
    assert optimizer.param_groups[0]["betas"] == (0.8, 0.999) and scheduler.get_last_lr() == [0.02]


def _seeded_fit(trial: adamtune.TrialContext) -> None:
    for _ in trial.epochs():
        trial.report(mae=torch.rand(()).item())


def test_a_loop_task_runs_seeded_and_train_once_scores_it_on_the_split() -> None:
    task = LoopTask(name="seeded", fit=_seeded_fit, objective="mae", default_epochs=2)
    runs = [
        train_once(task, LoopData(), AdamParams(), device="cpu", epochs=2, batch_size=4, seed=s, split="test")
        for s in (5, 5, 6)
    ]
    assert runs[0].metrics == runs[1].metrics != runs[2].metrics  # trial.seed was applied to torch
    assert set(runs[0].metrics) == {"test_mae"} and not runs[0].diverged
    assert [e.epoch for e in runs[0].curves.epochs] == [1, 2]
    trial = context(seed=5, n_epochs=2)
    run_in_context(task, LoopData(), trial)
    assert trial.history[-1][1]["val_mae"] == runs[0].metrics["test_mae"]


def test_loop_task_rejects_bad_definitions() -> None:
    with pytest.raises(ValueError, match="direction must be 'minimize' or 'maximize'"):
        LoopTask(name="x", fit=_seeded_fit, direction="down")
    with pytest.raises(ValueError, match="must not carry a split prefix"):
        LoopTask(name="x", fit=_seeded_fit, objective="val_mae")
    with pytest.raises(ValueError, match="default_epochs must be a whole number"):
        LoopTask(name="x", fit=_seeded_fit, default_epochs=0)
