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

Resuming: with ``resume`` (a trial context, see ``context.py``), the trainer registers its model,
optimizer, scheduler and shuffling generator with ``resume.checkpoint(...)`` and trains the epochs that
``resume.epochs()`` yields: a resumed trial starts after its checkpoint with every state as it was, so
on CPU its epochs are bit-for-bit those of an uninterrupted run. ``Curves`` then hold this run's epochs
only (the context holds the whole curve).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch

from adamtune.core.curves import Curves, EpochMetrics
from adamtune.core.space import AdamParams
from adamtune.tasks.base import Split, Task, TaskData
from adamtune.training.optim import make_optimizer

EVAL_BATCH_SIZE = 2048  # evaluation needs no gradients, so large batches are cheap
DIVERGENCE_FACTOR = 10.0  # a validation loss 10x the untrained model's is a blow-up, not learning


class Resumable(Protocol):
    """What :func:`train` needs of a trial context to checkpoint and resume (``TrialContext`` is one)."""

    def checkpoint(self, **objects: Any) -> None: ...

    def epochs(self) -> Iterator[int]: ...


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


def _input_of(task: Task, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`_to_model_input` for ``task`` on ``device``, as cheap per batch as it can be (identity when
    the task prepares nothing on the CPU)."""
    if task.prepare is None and device.type != "cuda":
        return lambda x: x
    return lambda x: _to_model_input(task, x, device)


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
    resume: Resumable | None = None,
    on_step: Callable[[], None] | None = None,
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
        resume: a trial context to checkpoint to and resume from (see the module docstring); its
            ``n_epochs`` must equal ``epochs``.
        on_step: called after every optimizer step; may raise to stop training at once (a pruning
            decision that arrived after its epoch's report, see ``trainer_server.py``).

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
    schedule: Iterable[int] = range(1, epochs + 1)
    if resume is not None:
        resume.checkpoint(model=model, optimizer=optimizer, scheduler=scheduler, generator=generator)
        schedule = resume.epochs()
    # Per step only what training needs: the batch's loss is kept (detached) and weighted once per epoch.
    autocast, as_input = _autocast(device), _input_of(task, device)
    full, last = divmod(n, batch_size)
    weights = torch.tensor([batch_size] * full + ([last] if last else []), dtype=torch.float32, device=device)
    for epoch in schedule:
        model.train()
        losses: list[torch.Tensor] = []
        order = torch.randperm(n, device=device, generator=generator)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = as_input(train_x[index])
            if task.augment is not None:
                x = task.augment(x, generator)
            with autocast:
                loss = task.loss(model(x), train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())
            if on_step is not None:
                on_step()
        train_loss = (torch.stack(losses).float() @ weights / n).item()
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
