"""Two small real classification tasks, written as a user would, for ``bench/quality.py``.

Both use data bundled with scikit-learn (offline), a seeded split into train / validation / test, features
standardised with the training split's statistics, and a small MLP trained for 30 epochs.

* ``cancer`` — the Wisconsin breast-cancer data (569 rows, 30 features, 2 classes) as a built-in-style
  :class:`adamtune.Task`: 364 train / 91 validation / 114 test. adamtune confirms it on fresh validation
  folds by itself.
* ``wine`` — the wine recognition data (178 rows, 13 features, 3 classes) as a :class:`adamtune.LoopTask`
  whose ``fit`` honours ``trial.fold`` (``folds=True``): 106 train / 36 validation / 36 test.
* ``wine_fixed`` — the same loop task without ``folds=True``: confirmed on its own 36 rows only.

Use: ``cd bench && adamtune search --task small_tasks:cancer`` (or put ``bench`` on ``PYTHONPATH``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import adamtune
from adamtune.tasks.base import Split, Task, TaskData
from adamtune.tasks.loop import LoopTask

SPLIT_SEED = 0


def _splits(x: torch.Tensor, y: torch.Tensor, test: float, val: float) -> dict[str, torch.Tensor]:
    """Seeded indices of the three splits: ``test`` of all rows, then ``val`` of the rest."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_test = round(test * len(y))
    n_val = round(val * (len(y) - n_test))
    return {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}


def _standardised(loader: Any, test: float, val: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    raw = loader()
    x = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.long)
    parts = _splits(x, y, test, val)
    mean, std = x[parts["train"]].mean(0), x[parts["train"]].std(0)
    return {name: ((x[index] - mean) / std, y[index]) for name, index in parts.items()}


# --------------------------------------------------------------------------- cancer: a built-in-style Task


def load_cancer(data_dir: Path) -> TaskData:
    from sklearn.datasets import load_breast_cancer

    parts = _standardised(load_breast_cancer, test=0.2, val=0.2)
    return TaskData(*(Split(*parts[name]) for name in ("train", "val", "test")))


def cancer() -> Task:
    return Task(
        name="cancer",
        description="scikit-learn's breast-cancer data, MLP 30-64-2 (a small-data user task)",
        load_data=load_cancer,
        make_model=lambda: nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 2)),
        default_epochs=30,
        default_batch_size=32,
        dataset="sklearn breast cancer: 364 train / 91 val / 114 test",
        model="MLP 30-64-2 (ReLU)",
    )


# --------------------------------------------------------------------------- wine: a LoopTask honouring folds


def load_wine(data_dir: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from sklearn.datasets import load_wine as sklearn_wine

    return _standardised(sklearn_wine, test=0.2, val=0.25)


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y).item(), "accuracy": (logits.argmax(1) == y).float().mean().item()}


def fit_wine(trial: adamtune.TrialContext) -> None:
    data = trial.data
    (train_x, train_y), (held_x, held_y) = data["train"], data[trial.split]
    if trial.fold is not None:  # confirmation: a fresh split of train + val, the same for every arm of this seed
        pool_x, pool_y = torch.cat([train_x, held_x]), torch.cat([train_y, held_y])
        train_index, val_index = trial.fold.split(len(pool_y), val_size=len(held_y), labels=pool_y.numpy())
        train_x, train_y, held_x, held_y = (
            pool_x[train_index],
            pool_y[train_index],
            pool_x[val_index],
            pool_y[val_index],
        )
    model = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    shuffle = torch.Generator().manual_seed(trial.seed)
    trial.report_initial(**_evaluate(model, held_x, held_y))
    for _epoch in trial.epochs():
        model.train()
        for batch in torch.randperm(len(train_y), generator=shuffle).split(trial.batch_size):
            loss = F.cross_entropy(model(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        trial.report(**_evaluate(model, held_x, held_y))


wine = LoopTask(
    name="wine",
    fit=fit_wine,
    data=load_wine,
    objective="loss",
    metrics=("accuracy",),
    default_epochs=30,
    default_batch_size=16,
    folds=True,
    description="scikit-learn's wine data, MLP 13-32-3, a loop task that honours trial.fold",
    dataset="sklearn wine: 106 train / 36 val / 36 test, 3 classes",
    model="MLP 13-32-3 (ReLU)",
)
wine_fixed = replace(wine, name="wine-fixed", folds=False)
