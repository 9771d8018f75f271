"""Train one model with one set of Adam settings: ``train(task, data, params, ...) -> Curves``.

The loop reads top to bottom and knows nothing of Optuna or MLflow. Hyperparameters arrive as
arguments; the data arrives as tensors already on ``device`` (loaded once per worker process), and
batches are slices of a ``randperm`` permutation: no DataLoader, no per-sample Python.

Divergence: training stops, and ``Curves.diverged_epoch`` records the epoch, when at the end of an epoch
the training or validation loss is non-finite, or the validation loss exceeds ``DIVERGENCE_FACTOR``
times the untrained model's. The second rule matters: with a far too large learning rate Adam often
blows the loss up to 1e3–1e6 without ever producing NaN, then settles in a dead network. The untrained
model's validation metrics are measured once before training (``Curves.initial``); the caller decides
what a diverged run scores. The check runs once per epoch (one device sync), so a loss that turns NaN
mid-epoch is caught at that epoch's end.

``on_epoch(metrics)`` is called after each epoch's validation; an exception it raises (for example
Optuna's ``TrialPruned``) propagates out of :func:`train` unchanged.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from adamtune.optim import make_optimizer
from adamtune.space import AdamParams
from adamtune.tasks.base import Split, Task, TaskData

EVAL_BATCH_SIZE = 2048  # evaluation needs no gradients, so large batches are cheap
DIVERGENCE_FACTOR = 10.0  # a validation loss 10x the untrained model's is a blow-up, not learning


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch produced, under stored names: ``train_loss``, ``val_loss``, ``val_<metric>``…, ``lr``.

    ``epoch`` counts from 1; ``lr`` is the rate after the epoch's last step. Metrics read as attributes
    too (``metrics.val_loss``). A user loop's epochs hold whatever it reported and logged.
    """

    epoch: int
    values: Mapping[str, float]

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def __getattr__(self, name: str) -> float:
        values = self.__dict__.get("values")
        if values is not None and name in values:
            return values[name]
        raise AttributeError(f"epoch metrics have no {name!r}")


@dataclass
class Curves:
    """Per-epoch learning curves of one training run.

    ``initial`` holds the untrained model's validation metrics (stored names), measured before training.
    """

    epochs: list[EpochMetrics] = field(default_factory=list)
    diverged_epoch: int | None = None
    seconds: float = 0.0
    initial: dict[str, float] = field(default_factory=dict)

    @property
    def diverged(self) -> bool:
        return self.diverged_epoch is not None

    @property
    def last(self) -> EpochMetrics | None:
        return self.epochs[-1] if self.epochs else None

    @property
    def initial_val_loss(self) -> float:
        return self.initial.get("val_loss", math.nan)

    @property
    def initial_val_accuracy(self) -> float:
        return self.initial.get("val_accuracy", math.nan)

    def history(self) -> dict[str, list[float | None]]:
        """Metric name -> values per epoch, with non-finite or missing values as None (JSON-safe)."""
        names = list(dict.fromkeys(name for e in self.epochs for name in e.values))
        return {n: [_finite_or_none(e.values.get(n, math.nan)) for e in self.epochs] for n in names}


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def seed_everything(seed: int) -> None:
    """Seed torch's global RNG (used by model initialisation and dropout)."""
    torch.manual_seed(seed)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 mixed precision on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_model_input(task: Task, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = task.prepare(x) if task.prepare is not None else x
    if device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


@torch.no_grad()
def evaluate_metrics(task: Task, model: torch.nn.Module, split: Split, device: torch.device) -> dict[str, float]:
    """``task``'s metrics of ``model`` on ``split`` by bare name, ``loss`` first (eval mode, no augmentation).

    Each metric is averaged over the evaluation batches weighted by their size (see ``tasks/base.py``).
    """
    model.eval()
    totals = {name: torch.zeros((), device=device) for name in task.metric_names}
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        x = _to_model_input(task, split.x[start : start + EVAL_BATCH_SIZE], device)
        y = split.y[start : start + EVAL_BATCH_SIZE]
        with _autocast(device):
            outputs = model(x)
        totals["loss"] += task.loss(outputs, y).float() * len(y)
        for name, metric in task.metrics.items():
            totals[name] += metric(outputs.float(), y).float() * len(y)
    n = max(len(split), 1)
    return {name: (total / n).item() for name, total in totals.items()}


def evaluate(task: Task, model: torch.nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (NaN accuracy for a task that measures none)."""
    metrics = evaluate_metrics(task, model, split, device)
    return metrics["loss"], metrics.get("accuracy", math.nan)


def build_model(task: Task, seed: int, device: torch.device) -> torch.nn.Module:
    """A freshly initialised model, identical for identical seeds."""
    seed_everything(seed)
    model = task.make_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def train(
    task: Task,
    data: TaskData,
    params: AdamParams,
    *,
    device: torch.device | str,
    epochs: int,
    batch_size: int,
    seed: int,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_trained: Callable[[torch.nn.Module], None] | None = None,
    on_initial: Callable[[dict[str, float]], None] | None = None,
) -> Curves:
    """Train ``task``'s model on ``data.train`` with Adam ``params``; validate on ``data.val`` each epoch.

    Args:
        task: the task (model factory, loss, optional prepare/augment).
        data: the task's splits, already on ``device``.
        params: the Adam settings.
        device: where to train; must be where ``data`` lives.
        epochs: number of passes over the training split (>= 1).
        batch_size: samples per optimizer step; the last batch of an epoch may be smaller.
        seed: seeds model initialisation, shuffling and augmentation.
        on_epoch: called with each epoch's metrics; may raise to stop training (pruning).
        on_trained: called once with the model (in eval mode) when training stops after the last epoch or
            at divergence, before returning; not called when ``on_epoch`` raised. For callers that
            evaluate the trained model further, e.g. on the test split (``adamtune verify``).

    Returns:
        The curves. ``diverged_epoch`` is set (and training stopped) when a loss became non-finite.
    """
    device = torch.device(device)
    started = time.perf_counter()
    model = build_model(task, seed, device)
    optimizer, scheduler = make_optimizer(model, params, groups=task.param_groups)
    generator = torch.Generator(device=device).manual_seed(seed)
    train_x, train_y = data.train.x, data.train.y
    n = len(data.train)
    initial = evaluate_metrics(task, model, data.val, device)
    curves = Curves(initial={f"val_{name}": value for name, value in initial.items()})
    if on_initial is not None:
        on_initial(initial)
    initial_val_loss = initial["loss"]
    blow_up = DIVERGENCE_FACTOR * initial_val_loss if math.isfinite(initial_val_loss) else math.inf
    for epoch in range(1, epochs + 1):
        model.train()
        total_loss = torch.zeros((), device=device)
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = _to_model_input(task, train_x[index], device)
            if task.augment is not None:
                x = task.augment(x, generator)
            with _autocast(device):
                loss = task.loss(model(x), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.detach().float() * len(index)
        train_loss = (total_loss / n).item()
        val = evaluate_metrics(task, model, data.val, device)
        val_loss = val["loss"]
        values = {"train_loss": train_loss, **{f"val_{k}": v for k, v in val.items()}, "lr": scheduler.get_last_lr()[0]}
        metrics = EpochMetrics(epoch, values)
        curves.epochs.append(metrics)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)) or val_loss > blow_up:
            curves.diverged_epoch = epoch
            break
        if on_epoch is not None:
            on_epoch(metrics)
    curves.seconds = time.perf_counter() - started
    if on_trained is not None:
        on_trained(model)
    return curves
