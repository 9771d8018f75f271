"""User-style loop tasks for the tests, written as a module file into a test's working directory.

Each test writes its own module (a unique name: one Python process imports a module name once) with
:func:`write_task`, then runs ``adamtune search --task <module>:task``. The task is what a user writes:
a small regression MLP trained with a plain ``torch.utils.data.DataLoader``, reporting ``loss`` and
``mae`` on ``trial.split`` each epoch. ``BEHAVIOUR`` makes chosen trials misbehave.
"""

from __future__ import annotations

import itertools
from pathlib import Path

_COUNTER = itertools.count()

TEMPLATE = """
import math
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adamtune

BEHAVIOUR = {behaviour!r}   # trial number -> "raise" | "nan" | "blowup" | "slow" (0.5 s more per epoch)


def data(data_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(400, 1, generator=g)
    return {{
        "train": TensorDataset(x[:240], y[:240]),
        "val": TensorDataset(x[240:320], y[240:320]),
        "test": TensorDataset(x[320:], y[320:]),
    }}


def evaluate(model, loader, device):
    model.eval()
    total_mse = total_mae = 0.0
    with torch.no_grad():
        for x, y in loader:
            prediction = model(x.to(device))
            total_mse += nn.functional.mse_loss(prediction, y.to(device), reduction="sum").item()
            total_mae += (prediction - y.to(device)).abs().sum().item()
    n = len(loader.dataset)
    return total_mse / n, total_mae / n


def fit(trial: adamtune.TrialContext) -> None:
    behaviour = BEHAVIOUR.get(trial.number)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1)).to(trial.device)
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    train = DataLoader(trial.data["train"], batch_size=trial.batch_size, shuffle=True)
    held_out = DataLoader(trial.data[trial.split], batch_size=64)
    for epoch in trial.epochs():
        if behaviour == "slow":
            time.sleep(0.5)
        model.train()
        total = 0.0
        for x, y in train:
            loss = nn.functional.mse_loss(model(x.to(trial.device)), y.to(trial.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(y)
        if behaviour == "raise" and epoch == 2:
            raise RuntimeError("boom in the user's fit")
        mse, mae = evaluate(model, held_out, trial.device)
        if behaviour == "nan" and epoch == 2:
            mse = math.nan
        if behaviour == "blowup" and epoch >= 2:
            mse, mae = mse * 1000, mae * 1000
        trial.log(train_loss=total / len(train.dataset))
        trial.report(loss=mse, mae=mae)


task = adamtune.LoopTask(
    name="toy-regression",
    fit=fit,
    data=data,
    objective="mae",
    direction="minimize",
    metrics=("loss",),
    default_epochs={epochs},
    default_batch_size=32,
)
"""


def write_task(directory: Path, behaviour: dict[int, str] | None = None, epochs: int = 3) -> str:
    """Write a loop-task module into ``directory``; return its ``module:task`` reference."""
    name = f"user_loop_task_{next(_COUNTER)}_{abs(hash(str(directory))) % 10**8}"
    (directory / f"{name}.py").write_text(TEMPLATE.format(behaviour=behaviour or {}, epochs=epochs))
    return f"{name}:task"
