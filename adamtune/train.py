"""Train one model with one set of Adam settings: ``train(task, data, params, ...) -> Curves``.

The loop reads top to bottom and knows nothing of Optuna or MLflow. Hyperparameters arrive as
arguments; the data arrives as tensors already on ``device`` (loaded once per worker process), and
batches are slices of a ``randperm`` permutation: no DataLoader, no per-sample Python.

Divergence: training stops, and ``Curves.diverged_epoch`` records the epoch, when at the end of an epoch
the training or validation loss is non-finite, or the validation loss exceeds ``DIVERGENCE_FACTOR``
times the untrained model's. The second rule matters: with a far too large learning rate Adam often
blows the loss up to 1e3–1e6 without ever producing NaN, then settles in a dead network. The untrained
model's validation metrics are measured once before training (``Curves.initial_val_loss``/
``initial_val_accuracy``); the caller decides what a diverged run scores. The check runs once per
epoch (one device sync), so a loss that turns NaN mid-epoch is caught at that epoch's end.

``on_epoch(metrics)`` is called after each epoch's validation; an exception it raises (for example
Optuna's ``TrialPruned``) propagates out of :func:`train` unchanged.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from adamtune.optim import make_optimizer
from adamtune.space import AdamParams
from adamtune.tasks.base import Split, Task, TaskData

EVAL_BATCH_SIZE = 2048  # evaluation needs no gradients, so large batches are cheap
DIVERGENCE_FACTOR = 10.0  # a validation loss 10x the untrained model's is a blow-up, not learning


@dataclass(frozen=True)
class EpochMetrics:
    """What one epoch produced. ``epoch`` counts from 1; ``lr`` is the rate after the epoch's last step."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass
class Curves:
    """Per-epoch learning curves of one training run."""

    epochs: list[EpochMetrics] = field(default_factory=list)
    diverged_epoch: int | None = None
    seconds: float = 0.0
    initial_val_loss: float = math.nan
    initial_val_accuracy: float = math.nan

    @property
    def diverged(self) -> bool:
        return self.diverged_epoch is not None

    @property
    def last(self) -> EpochMetrics | None:
        return self.epochs[-1] if self.epochs else None

    def history(self) -> dict[str, list[float | None]]:
        """Metric name -> values per epoch, with non-finite values as None (JSON-safe)."""
        names = ("train_loss", "val_loss", "val_accuracy", "lr")
        return {n: [_finite_or_none(getattr(e, n)) for e in self.epochs] for n in names}


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
def evaluate(task: Task, model: torch.nn.Module, split: Split, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``split`` (evaluation mode, no augmentation)."""
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(split), EVAL_BATCH_SIZE):
        x = _to_model_input(task, split.x[start : start + EVAL_BATCH_SIZE], device)
        y = split.y[start : start + EVAL_BATCH_SIZE]
        with _autocast(device):
            logits = model(x)
        total_loss += task.loss(logits, y).float() * len(y)
        correct += (logits.argmax(dim=1) == y).sum()
    n = max(len(split), 1)
    return (total_loss / n).item(), correct.item() / n


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
    optimizer, scheduler = make_optimizer(model.parameters(), params)
    generator = torch.Generator(device=device).manual_seed(seed)
    train_x, train_y = data.train.x, data.train.y
    n = len(data.train)
    initial_val_loss, initial_val_accuracy = evaluate(task, model, data.val, device)
    curves = Curves(initial_val_loss=initial_val_loss, initial_val_accuracy=initial_val_accuracy)
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
        val_loss, val_accuracy = evaluate(task, model, data.val, device)
        metrics = EpochMetrics(epoch, train_loss, val_loss, val_accuracy, scheduler.get_last_lr()[0])
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
