"""A user's Lightning training as a loop task (``tests.lightning_task:task``, used by tests/training/test_lightning.py).

This is what the Lightning guide (docs/guides/lightning.md) shows: an ordinary ``LightningModule`` plus the three
adamtune additions (``configure_optimizers``, ``trainer_options``, ``AdamtuneCallback``).
"""

from __future__ import annotations

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import adamtune
from adamtune.training.lightning import AdamtuneCallback, configure_optimizers, trainer_options

#: (trial number, epoch) of every training epoch Lightning ran, to see that pruned trials stop.
EPOCHS_RUN: list[tuple[int | None, int]] = []


def load_data(data_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(320, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g)
    parts = {"train": (0, 192), "val": (192, 256), "test": (256, 320)}
    return {name: TensorDataset(x[a:b], y[a:b]) for name, (a, b) in parts.items()}


class Regressor(lightning.LightningModule):
    def __init__(self, trial: adamtune.TrialContext) -> None:
        super().__init__()
        self.trial = trial
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def on_train_epoch_end(self) -> None:
        EPOCHS_RUN.append((self.trial.number, self.current_epoch + 1))

    def validation_step(self, batch, batch_idx):
        x, y = batch
        prediction = self.net(x)
        self.log("val_loss", nn.functional.mse_loss(prediction, y))
        self.log("val_mae", (prediction - y).abs().mean())

    def configure_optimizers(self):
        return configure_optimizers(self.trial, self.parameters())  # the trial's Adam + its per-step schedule


def fit(trial: adamtune.TrialContext) -> None:
    train = DataLoader(trial.data["train"], batch_size=trial.batch_size, shuffle=True)
    held_out = DataLoader(trial.data[trial.split], batch_size=64)  # validate on trial.split
    trainer = lightning.Trainer(**trainer_options(trial), callbacks=[AdamtuneCallback(trial)])
    trainer.fit(Regressor(trial), train, held_out)


task = adamtune.LoopTask(
    name="lightning-regression",
    fit=fit,
    data=load_data,
    objective="mae",
    direction="minimize",
    metrics=("loss",),
    default_epochs=3,
    default_batch_size=32,
)
