"""The ``Task`` contract: what adamtune needs to know to train a model with some Adam settings.

A task is plain data plus three callables. It knows nothing of Optuna, MLflow or trials, so a task can
be tested, benchmarked and reused on its own.

Contract
--------
* ``load_data(data_dir)`` is called **once per training process** (a worker's, or its trainer process),
  which moves the result to its device and keeps it there for every trial. It must be deterministic:
  the same call returns the same train/validation/test split every time (carve validation from the
  training set with a fixed seed).
  It may download into ``data_dir`` (raising :class:`adamtune.core.errors.DataError` when it cannot).
* ``make_model()`` returns a freshly initialised ``nn.Module`` on the CPU; the trainer seeds torch's
  RNG right before calling it, so initialisation is reproducible per trial.
* ``loss(logits, targets)`` returns a scalar mean loss (cross-entropy by default).
* ``prepare(x)`` (optional) maps a stored batch to model input on the device, for example uint8 images
  to normalised floats. Applied to every batch, train and evaluation alike.
* ``augment(x, generator)`` (optional) is a batched, on-device training augmentation of a prepared
  batch. It must use ``generator`` for all randomness.

Metrics. ``metrics`` maps bare names to functions ``fn(outputs, targets) -> scalar tensor``, each the
*mean over the batch* (adamtune averages batches weighted by their size, so means such as accuracy,
MSE or MAE come out exact over the split; a root such as RMSE does not: report MSE instead). The loss is
always measured too, as ``loss``. Stored names get the split's prefix (``val_accuracy``, ``test_mae``;
see :mod:`adamtune.core.metrics`). ``objective`` (bare, default ``loss``) and ``direction`` are what a study
of the task optimises unless ``--objective`` picks another of its metrics; ``directions`` gives the
direction of further metrics whose names :data:`adamtune.core.metrics.KNOWN_DIRECTIONS` does not know.

Confirmation. The confirmation stage scores the finalists and the defaults on fresh validation folds: for
each of its seeds, the training and validation rows are pooled and split again (:func:`adamtune.tasks.
common.on_fold`, stratified for integer labels), the validation part keeping ``len(val)`` rows; the test
split is never touched. Set ``folds=False`` for data whose rows must not be re-split.

The default is classification: cross-entropy loss and ``accuracy`` (``argmax(logits) == y``), with
the objective ``val_loss``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from adamtune.core.metrics import check_direction, check_metric_name, direction_of

MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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
        """This split with both tensors on ``device``.

        Args:
            device: A torch device or its name.
        """
        return Split(self.x.to(device), self.y.to(device))


@dataclass(frozen=True)
class TaskData:
    """The three splits of a task. ``test`` is held out: tuning never looks at it."""

    train: Split
    val: Split
    test: Split

    def to(self, device: torch.device | str) -> TaskData:
        """Copy every split to ``device`` (a no-op for tensors already there).

        Args:
            device: A torch device or its name.
        """
        return TaskData(self.train.to(device), self.val.to(device), self.test.to(device))

    def sizes(self) -> dict[str, int]:
        """The number of samples of each split, by name (``train``, ``val``, ``test``)."""
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, in float32 even under mixed precision.

    Args:
        logits: The model's outputs, one row of class scores per sample.
        targets: The integer class labels.
    """
    return F.cross_entropy(logits if logits.dtype == torch.float32 else logits.float(), targets)


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fraction of the batch whose arg-max class is the label.

    Args:
        logits: The model's outputs, one row of class scores per sample.
        targets: The integer class labels.
    """
    return (logits.argmax(dim=1) == targets).float().mean()


def _classification_metrics() -> dict[str, MetricFn]:
    return {"accuracy": accuracy}


@dataclass(frozen=True)
class Task:
    """A dataset, a model and their training defaults: a task the built-in trainer trains.

    adamtune owns the loop (batches, the optimizer, evaluation); see the module docstring for the contract.

    Args:
        name: The task's name (``--task``, the default study name).
        description: One line for ``adamtune tasks``.
        load_data: ``load_data(data_dir) -> TaskData``, called once per training process; deterministic.
        make_model: ``make_model() -> nn.Module``, a freshly initialised model on the CPU.
        default_epochs: Epochs per trial unless the study says otherwise.
        default_batch_size: The batch size unless the study says otherwise.
        loss: ``loss(outputs, targets)``, a scalar mean loss (default: cross-entropy).
        prepare: ``prepare(x)`` maps a stored batch to model input on the device (e.g. uint8 to float).
        augment: ``augment(x, generator)``, a batched on-device training augmentation using ``generator``.
        param_groups: ``param_groups(model)``, the optimizer's parameter groups (default: weight decay on
            parameters of two or more dimensions only).
        dataset: The dataset, in words, for ``adamtune tasks``.
        model: The model, in words, for ``adamtune tasks``.
        extra: Further notes for ``adamtune tasks`` (e.g. where the data comes from).
        metrics: Bare metric names to ``fn(outputs, targets)``, each the mean over the batch (default:
            ``accuracy``); ``loss`` is always measured.
        objective: The bare metric a study optimises (default ``loss``).
        direction: The objective's direction, ``"minimize"`` or ``"maximize"``.
        directions: Directions of further metrics whose names adamtune does not know.
        folds: Confirm on fresh folds of the pooled training + validation rows; False keeps the task's own
            validation rows (seeds only), e.g. where rows are not exchangeable.

    Raises:
        ValueError: Bad defaults, a metric named ``loss`` or badly, an unknown direction, or an objective
            that is not one of the metrics.
    """

    name: str
    description: str
    load_data: Callable[[Path], TaskData]
    make_model: Callable[[], nn.Module]
    default_epochs: int
    default_batch_size: int
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    #: The optimizer's parameter groups, overriding the default rule (weight decay on >= 2-D parameters
    #: only; see ``optim.py``): ``param_groups(model) -> [{"params": [...], "weight_decay": ...}, ...]``.
    param_groups: Callable[[nn.Module], Iterable[Mapping[str, Any]]] | None = None
    dataset: str = ""
    model: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    metrics: Mapping[str, MetricFn] = field(default_factory=_classification_metrics)
    objective: str = "loss"
    direction: str = "minimize"
    directions: Mapping[str, str] = field(default_factory=dict)
    #: Confirm on fresh folds of the pooled training + validation rows (``adamtune.folds``); False keeps
    #: the task's own validation rows for confirmation too (seeds only), e.g. where rows are not exchangeable.
    folds: bool = True

    def __post_init__(self) -> None:
        if self.default_epochs < 1 or self.default_batch_size < 1:
            raise ValueError(f"task {self.name!r}: default epochs and batch size must be >= 1")
        where = f"task {self.name!r}"
        for name in self.metrics:
            check_metric_name(name, where)
            if name == "loss":
                raise ValueError(
                    f"{where}: 'loss' is always measured (with the task's loss); name the metric otherwise"
                )
        check_direction(self.direction, where)
        for direction in self.directions.values():
            check_direction(direction, where)
        if self.objective not in self.metric_names:
            raise ValueError(f"{where}: objective {self.objective!r} is not one of its metrics {self.metric_names}")

    @property
    def metric_names(self) -> tuple[str, ...]:
        """Bare names of what evaluation measures: ``loss`` first, then ``metrics`` in order."""
        return ("loss", *self.metrics)

    def direction_of(self, metric: str) -> str | None:
        """The direction of bare ``metric`` (None: unknown; see ``adamtune.core.metrics.direction_of``).

        Args:
            metric: A bare metric name, e.g. ``accuracy``.
        """
        return direction_of(metric, self.objective, self.direction, self.directions)
