"""``diabetes``: regression on scikit-learn's bundled diabetes data, written as a loop task.

This is the reference example of :class:`adamtune.LoopTask`: the training loop below is an ordinary
PyTorch loop over ``torch.utils.data.DataLoader`` batches, and the only adamtune calls are the ones on
``trial``. Copy it as the starting point for your own task.

Data: 442 patients, 10 baseline measurements each (age, sex, BMI, blood pressure, six serum values);
the target is a disease-progression score one year later (25..346). It ships with scikit-learn, so
nothing is downloaded. A seeded shuffle splits it 60/20/20 into train (265), validation (88) and test
(89, held out). Features and target are standardised with the *training* split's mean and standard
deviation; the model is trained on the standardised target. Confirmation runs (``trial.fold`` set) train
and validate on a fresh split of the pooled training + validation patients, 88 of them validating.

Model: MLP 10-64-64-1 (ReLU), trained with mean squared error.

Metrics, reported each epoch on ``trial.split``: ``loss`` (MSE of the standardised target, the
training criterion) and ``mae`` (mean absolute error in the target's own units, score points).

Objective: ``val_mae``, minimised. Why MAE rather than MSE: it is in the units a reader knows ("off by
44 points on average"); with only 88 validation patients the MSE is dominated by the few largest
residuals, so MAE ranks settings more stably; and it shows that the metric a study selects on need not
be the loss it trains with. ``--objective val_loss`` selects on the MSE instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Subset, TensorDataset

import adamtune
from adamtune.tasks.loop import LoopTask

SPLIT_SEED = 0
EVAL_BATCH_SIZE = 256


def load_data(data_dir: Path | None = None) -> dict[str, Any]:
    """The three splits as ``TensorDataset``s, standardised with the training split's statistics.

    Called once per worker process (``data_dir`` is unused: the data ships with scikit-learn). Also
    returns ``target_std``, to turn standardised errors back into score points.
    """
    from sklearn.datasets import load_diabetes

    raw = load_diabetes(scaled=False)
    x = torch.tensor(raw.data, dtype=torch.float32)
    y = torch.tensor(raw.target, dtype=torch.float32).unsqueeze(1)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train, n_val = int(0.6 * len(y)), int(0.2 * len(y))
    parts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    x_mean, x_std = x[parts["train"]].mean(0), x[parts["train"]].std(0)
    y_mean, y_std = y[parts["train"]].mean(), y[parts["train"]].std()
    datasets = {
        name: TensorDataset((x[index] - x_mean) / x_std, (y[index] - y_mean) / y_std) for name, index in parts.items()
    }
    return {**datasets, "target_std": float(y_std)}


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: str, target_std: float) -> dict[str, float]:
    """``loss`` (MSE, standardised target) and ``mae`` (score points) over the whole split."""
    model.eval()
    squared = absolute = 0.0
    for x, y in loader:
        error = model(x.to(device)) - y.to(device)
        squared += error.pow(2).sum().item()
        absolute += error.abs().sum().item()
    n = len(loader.dataset)  # type: ignore[arg-type]
    return {"loss": squared / n, "mae": absolute / n * target_std}


def fit(trial: adamtune.TrialContext) -> None:
    """Train the MLP with the trial's Adam settings; report validation (or test) metrics every epoch."""
    data = trial.data
    train_set, held_out_set = data["train"], data[trial.split]  # "val", or "test" in verify
    if trial.fold is not None:  # a confirmation run: a fresh split of train + val, the same for every arm
        pool = ConcatDataset([train_set, held_out_set])
        train_index, val_index = trial.fold.split(len(pool), val_size=len(held_out_set))
        train_set, held_out_set = Subset(pool, train_index), Subset(pool, val_index)
    model = make_model().to(trial.device)  # trial.seed is already applied: the same seed, the same init
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    shuffle = torch.Generator().manual_seed(trial.seed)
    train = DataLoader(train_set, batch_size=trial.batch_size, shuffle=True, generator=shuffle)
    held_out = DataLoader(held_out_set, batch_size=EVAL_BATCH_SIZE)
    trial.report_initial(**evaluate(model, held_out, trial.device, data["target_std"]))  # the untrained model
    for _epoch in trial.epochs():
        model.train()
        total = 0.0
        for x, y in train:
            loss = nn.functional.mse_loss(model(x.to(trial.device)), y.to(trial.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()  # the learning-rate schedule advances once per optimizer step
            total += loss.item() * len(y)
        trial.log(train_loss=total / len(train_set))
        trial.report(**evaluate(model, held_out, trial.device, data["target_std"]))  # may stop the trial


task = LoopTask(
    name="diabetes",
    fit=fit,
    data=load_data,
    objective="mae",
    direction="minimize",
    metrics=("loss",),
    default_epochs=30,
    default_batch_size=32,
    folds=True,  # fit honours trial.fold: confirmation runs train and validate on fresh folds of train + val
    description="scikit-learn's diabetes regression with an MLP, as a loop task over DataLoaders (offline)",
    dataset="sklearn diabetes: 265 train / 88 val / 89 test, 10 standardised features, target 25..346",
    model="MLP 10-64-64-1 (ReLU), MSE on the standardised target",
    extra={"data": "bundled with scikit-learn; nothing to download", "objective": "val_mae (score points)"},
)
