"""One training run outside a search trial: what confirmation (``val`` split) and ``verify`` (``test``) call.

``train_once(task, data, params, seed=…, split=…)`` trains a task's model for the study's full epochs,
without pruning, and returns the final metrics on ``split``, named with the split's prefix
(``val_loss``/``val_accuracy`` or ``test_loss``/``test_accuracy``). It is the one place that knows how a
task trains outside a trial, so each kind of task (the built-in trainer today; user loops, batched trials
later) plugs in here once and serves confirmation and verification alike.

Scoring rule, shared with the search (``objective.py``): a run that diverges scores as its *untrained*
model on ``split`` (training that blew up is worth no more than no training), and is flagged ``diverged``.

Nothing here imports optuna or mlflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adamtune.space import AdamParams

#: The splits a run can be scored on: ``val`` during search and confirmation, ``test`` during verify.
SPLITS = ("val", "test")


@dataclass(frozen=True)
class RunOutcome:
    """One finished run: its seed, the final metrics on ``split`` (prefixed names), divergence, curves."""

    seed: int
    split: str
    metrics: dict[str, float]
    diverged: bool
    curves: Any  # adamtune.train.Curves (typed loosely so this module imports no torch at import time)


def split_metric(objective: str, split: str) -> str:
    """The name of ``objective`` (a ``val_*`` metric) on ``split``: ``val_loss`` -> ``test_loss``."""
    base = objective.split("_", 1)[1] if objective.startswith(("val_", "test_")) else objective
    return f"{split}_{base}"


def train_once(
    task: Any,
    data: Any,
    params: AdamParams,
    *,
    device: str,
    epochs: int,
    batch_size: int,
    seed: int,
    split: str = "val",
    on_epoch: Callable[[Any], None] | None = None,
) -> RunOutcome:
    """Train ``task`` with ``params`` on ``seed`` for ``epochs`` (no pruning) and score it on ``split``.

    Args:
        task, data: the task and its splits, already on ``device``.
        split: ``val`` (the last epoch's validation metrics) or ``test`` (the trained model evaluated on
            the held-out test split once, after training).
        on_epoch: called with each epoch's metrics (progress, MLflow curves); may raise to stop.

    Raises:
        ValueError: an unknown ``split``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    import torch

    from adamtune.train import build_model, evaluate, train

    trained: list[torch.nn.Module] = []
    curves = train(
        task,
        data,
        params,
        device=device,
        epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        on_epoch=on_epoch,
        on_trained=trained.append,
    )
    if split == "val":
        if curves.diverged or curves.last is None:
            loss, accuracy = curves.initial_val_loss, curves.initial_val_accuracy
        else:
            loss, accuracy = curves.last.val_loss, curves.last.val_accuracy
    else:
        model = build_model(task, seed, torch.device(device)) if curves.diverged else trained[0]
        loss, accuracy = evaluate(task, model, data.test, torch.device(device))
    metrics = {f"{split}_loss": float(loss), f"{split}_accuracy": float(accuracy)}
    return RunOutcome(seed, split, metrics, curves.diverged, curves)
