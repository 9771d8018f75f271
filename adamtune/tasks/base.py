"""The ``Task`` contract: what adamtune needs to know to train a model with some Adam settings.

A task is plain data plus three callables. It knows nothing of Optuna, MLflow or trials, so a task can
be tested, benchmarked and reused on its own.

Contract
--------
* ``load_data(data_dir)`` is called **once per worker process**; the worker then moves the result to its
  device and keeps it there for every trial. It must be deterministic: the same call returns the same
  train/validation/test split every time (carve validation from the training set with a fixed seed).
  It may download into ``data_dir`` (raising :class:`adamtune.errors.DataError` when it cannot).
* ``make_model()`` returns a freshly initialised ``nn.Module`` on the CPU; the trainer seeds torch's
  RNG right before calling it, so initialisation is reproducible per trial.
* ``loss(logits, targets)`` returns a scalar mean loss (cross-entropy by default).
* ``prepare(x)`` (optional) maps a stored batch to model input on the device, for example uint8 images
  to normalised floats. Applied to every batch, train and evaluation alike.
* ``augment(x, generator)`` (optional) is a batched, on-device training augmentation of a prepared
  batch. It must use ``generator`` for all randomness.

Metrics are classification metrics: targets are integer class labels and accuracy is
``argmax(logits) == y``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split, as whole tensors (never a per-sample dataset)."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"split has {len(self.x)} inputs but {len(self.y)} labels")

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task. ``test`` is held out: tuning never looks at it."""

    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> TaskData:
        """Copy every split to ``device`` (a no-op for tensors already there)."""
        return TaskData(self.train.to(device), self.val.to(device), self.test.to(device))

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, in float32 even under mixed precision."""
    return F.cross_entropy(logits.float(), targets)


@dataclass(frozen=True)
class Task:
    """A dataset, a model and their training defaults. See the module docstring for the contract."""

    name: str
    description: str
    load_data: Callable[[Path], TaskData]
    make_model: Callable[[], nn.Module]
    default_epochs: int
    default_batch_size: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    dataset: str = ""
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default_epochs < 1 or self.default_batch_size < 1:
            raise ValueError(f"task {self.name!r}: default epochs and batch size must be >= 1")
