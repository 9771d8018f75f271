"""The trainer on its own: curves, seeding, divergence, and the on_epoch hook."""

from __future__ import annotations

import math

import pytest

from adamtune.core.space import AdamParams
from adamtune.tasks import resolve_task
from adamtune.training.train import train

TASK = resolve_task("synthetic")
DATA = TASK.load_data(None)


def run(params: AdamParams, epochs: int = 3, seed: int = 0, **kwargs):  # type: ignore[no-untyped-def]
    return train(TASK, DATA, params, device="cpu", epochs=epochs, batch_size=100, seed=seed, **kwargs)


def test_one_point_per_epoch_and_learning_happens() -> None:
    curves = run(AdamParams(lr=1e-2), epochs=4)
    assert [e.epoch for e in curves.epochs] == [1, 2, 3, 4]
    assert not curves.diverged
    assert curves.epochs[-1].val_loss < curves.initial_val_loss
    assert curves.epochs[-1].val_accuracy > 0.5
    assert all(len(values) == 4 for values in curves.history().values())


def test_same_seed_same_curves_other_seed_other_curves() -> None:
    a, b, c = run(AdamParams(), seed=1), run(AdamParams(), seed=1), run(AdamParams(), seed=2)
    assert a.history() == b.history()
    assert a.history() != c.history()


def test_decay_lowers_the_learning_rate() -> None:
    curves = run(AdamParams(lr=1e-2, decay=1e-2), epochs=2)
    steps = 2 * math.ceil(len(DATA.train) / 100)
    assert curves.epochs[-1].lr == pytest.approx(1e-2 / (1 + 1e-2 * steps))


def test_lr_ten_diverges_and_stops() -> None:
    curves = run(AdamParams(lr=10.0), epochs=5)
    assert curves.diverged and curves.diverged_epoch == 1
    assert len(curves.epochs) == 1
    assert math.isfinite(curves.initial_val_loss)


def test_on_epoch_can_stop_training() -> None:
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(metrics):  # type: ignore[no-untyped-def]
        seen.append(metrics.epoch)
        if metrics.epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run(AdamParams(), epochs=5, on_epoch=on_epoch)
    assert seen == [1, 2]


def test_trainer_imports_neither_optuna_nor_mlflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, adamtune.training.train, adamtune.tasks.digits; "
        "print('optuna' in sys.modules, 'mlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_task_s_param_groups_reach_the_optimizer() -> None:
    """A task's grouping hook overrides the default rule: here the first layer is frozen by lr 0."""
    import dataclasses

    import torch

    def groups(model: torch.nn.Module) -> list[dict]:
        return [{"params": list(model[0].parameters()), "lr": 0.0}, {"params": list(model[2].parameters())}]

    trained: list[torch.nn.Module] = []
    task = dataclasses.replace(TASK, param_groups=groups)
    train(task, DATA, AdamParams(lr=1e-2), device="cpu", epochs=1, batch_size=100, seed=0, on_trained=trained.append)
    torch.manual_seed(0)
    fresh = task.make_model()
    assert torch.equal(trained[0][0].weight, fresh[0].weight)  # frozen
    assert not torch.equal(trained[0][2].weight, fresh[2].weight)  # trained


def test_digits_loads_without_importing_scikit_learn_and_keeps_its_split() -> None:
    """The stored split is the one scikit-learn's stratified train_test_split gives (and the data the same)."""
    import subprocess
    import sys

    code = (
        "import sys; from adamtune.tasks.digits import load_data; d = load_data(); "
        "print(d.sizes(), 'sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "{'train': 1077, 'val': 360, 'test': 360} False"

    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from adamtune.tasks.digits import SPLIT_SEED, load_data

    digits, data = load_digits(), load_data()
    index = torch.arange(len(digits.target)).numpy()
    rest, test = train_test_split(index, test_size=0.2, random_state=SPLIT_SEED, stratify=digits.target)
    train_index, val = train_test_split(rest, test_size=0.25, random_state=SPLIT_SEED, stratify=digits.target[rest])
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    for split, picked in ((data.train, train_index), (data.val, val), (data.test, test)):
        assert torch.equal(split.x, x[picked]) and torch.equal(split.y, torch.tensor(digits.target[picked]))
