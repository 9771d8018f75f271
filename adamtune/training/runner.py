"""How a task trains: inside a trial context (every kind of task), and once outside a search trial.

:func:`run_in_context` is the one place that knows how each kind of task trains against a
:class:`~adamtune.training.context.TrialContext`: a :class:`~adamtune.tasks.loop.LoopTask` is the user's
``fit(trial)`` (called after seeding torch, ``random`` and numpy with ``trial.seed``); a built-in
:class:`~adamtune.tasks.base.Task` is ``train.train`` with an adapter that reports its epochs to the
context. The search's objective (``objective.py``) calls it for every trial.

``train_once(task, data, params, seed=…, split=…)`` trains a task's model for the study's full epochs,
without pruning, and returns the final metrics on ``split``, named with the split's prefix
(``val_loss``/``val_accuracy`` or ``test_loss``/``test_accuracy``; a task's own metrics likewise, e.g.
``test_mae``). Confirmation (``val``) and ``verify`` (``test``) call it. A loop task runs with
``trial.split == split`` and its reported metrics are the outcome; a built-in task trains on the
training split and, for ``test``, evaluates the trained model once on the test split.

Scoring rule, shared with the search (``objective.py``): a run that diverges scores as its *untrained*
model on ``split`` (training that blew up is worth no more than no training; for a loop task that
reported no untrained metrics, the rule of ``context.py``), and is flagged ``diverged``.

Nothing here imports optuna or mlflow.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from adamtune.core.errors import ContractError
from adamtune.core.folds import Fold
from adamtune.core.metrics import SPLITS, on_split
from adamtune.core.space import AdamParams
from adamtune.tasks.loop import LoopTask
from adamtune.training.context import TrialContext
from adamtune.training.stops import TrialDiverged

__all__ = ["SPLITS", "RunOutcome", "run_in_context", "seed_all", "split_metric", "train_once"]


@dataclass(frozen=True)
class RunOutcome:
    """One finished run: its seed, the final metrics on ``split`` (prefixed names), divergence, curves."""

    seed: int
    split: str
    metrics: dict[str, float]
    diverged: bool
    curves: Any  # adamtune.curves.Curves


def split_metric(objective: str, split: str) -> str:
    """The name of ``objective`` (a ``val_*`` metric) on ``split``: ``val_loss`` -> ``test_loss``."""
    return on_split(objective, split)


def seed_all(seed: int) -> None:
    """Seed torch, Python's ``random`` and numpy with ``seed`` (what ``trial.seed is already applied`` means)."""
    import random

    import numpy
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    numpy.random.seed(seed % 2**32)


class LateDecisions(Protocol):
    """Pruning answers that may arrive after the report they answer (a trainer process, see
    ``trainer_server.py``). The built-in trainer keeps training meanwhile and applies them at once."""

    def check(self) -> None:
        """Between optimizer steps: apply an answer that has arrived (raises ``TrialPruned`` to stop)."""

    def settle(self) -> None:
        """Before the next report and when training ends: wait for the answer still due, and apply it."""


def run_in_context(task: Any, data: Any, context: TrialContext, late: LateDecisions | None = None) -> None:
    """Train ``task`` against ``context``: the user's ``fit`` for a loop task, the built-in trainer otherwise.

    Args:
        task: a :class:`LoopTask` or a built-in :class:`~adamtune.tasks.base.Task`.
        data: the worker's loaded data (a ``LoopData`` for a loop task; ``TaskData`` on the device else).
        context: the run's context; its reports are the result (see :meth:`TrialContext.result`).
        late: for the built-in trainer only, where its hook returns before adamtune's side has decided
            whether to prune: checked after every step, settled before each report and at the end, so
            the trial stops with exactly the curve it would have had with an answer at once. A loop task's
            hook must answer at once (``late`` is ignored).

    Raises:
        StopTrial: the context stopped the run (pruned or diverged); also when ``fit`` wrapped it in
            its own exception, check ``context.state``. Anything ``fit`` raises propagates unchanged.
    """
    if isinstance(task, LoopTask):
        seed_all(context.seed)
        task.fit(context)
        return
    _fit_builtin(task, data, context, late)


def _fit_builtin(task: Any, data: Any, context: TrialContext, late: LateDecisions | None = None) -> None:
    """The built-in trainer reporting to ``context``: untrained metrics, then per epoch ``train_loss``/``lr``
    (logged) and the validation metrics (reported)."""
    from adamtune.training.train import train

    if context.split != "val":
        raise ValueError("the built-in trainer validates on the val split; use train_once(split='test') for test")

    def on_epoch(metrics: Any) -> None:
        if late is not None:
            late.settle()
        values = metrics.as_dict()
        context.log(**{k: v for k, v in values.items() if not k.startswith("val_")})
        context.report_epoch(metrics.epoch, {k[4:]: v for k, v in values.items() if k.startswith("val_")})

    curves = train(
        task,
        data,
        context.params,
        device=context.device,
        epochs=context.n_epochs,
        batch_size=context.batch_size,
        seed=context.seed,
        on_epoch=on_epoch,
        on_initial=lambda initial: context.report_initial(**initial),
        resume=context,
        on_step=late.check if late is not None else None,
    )
    if late is not None:
        late.settle()
    if curves.diverged and not context.stopped:  # train() stops at divergence without calling on_epoch
        assert curves.last is not None
        on_epoch(curves.last)  # the context applies the same rule and raises TrialDiverged
        context.mark_diverged(curves.last.epoch, "the trainer detected it")


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
    objective: str | None = None,
    fold: Fold | None = None,
) -> RunOutcome:
    """Train ``task`` with ``params`` on ``seed`` for ``epochs`` (no pruning) and score it on ``split``.

    Args:
        task, data: the task and its splits, already on ``device``.
        split: ``val`` (the last epoch's validation metrics) or ``test`` (the trained model evaluated on
            the held-out test split once, after training).
        on_epoch: called with each epoch's metrics (progress, MLflow curves); may raise to stop.
        objective: the study's objective (stored or bare name); a loop task's ``fit`` must report it
            every epoch. Default: the task's.
        fold: a confirmation run's fresh validation fold (``split`` must be ``val``): a built-in task
            trains and validates on :func:`~adamtune.tasks.common.on_fold` of its data; a loop task
            gets it as ``trial.fold``. None: the task's own split.

    Raises:
        ValueError: an unknown ``split``, or a ``fold`` with ``split`` other than ``val``.
        ContractError: a loop task's ``fit`` reported nothing, or not the objective. Anything else ``fit``
            raises propagates.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if fold is not None and split != "val":
        raise ValueError("a validation fold is for the val split only; the test split is never re-split")
    if isinstance(task, LoopTask):
        return _loop_once(task, data, params, device, epochs, batch_size, seed, split, on_epoch, objective, fold)
    import torch

    from adamtune.training.train import build_model, evaluate_metrics, train

    if fold is not None and task.folds:
        from adamtune.tasks.common import on_fold

        data = on_fold(data, fold)

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
        source = curves.initial if curves.diverged or curves.last is None else curves.last.as_dict()
        measured = {name: source[f"val_{name}"] for name in task.metric_names}
    else:
        model = build_model(task, seed, torch.device(device)) if curves.diverged else trained[0]
        measured = evaluate_metrics(task, model, data.test, torch.device(device))
    metrics = {f"{split}_{name}": float(value) for name, value in measured.items()}
    return RunOutcome(seed, split, metrics, curves.diverged, curves)


def _loop_once(
    task: LoopTask,
    data: Any,
    params: AdamParams,
    device: str,
    epochs: int,
    batch_size: int,
    seed: int,
    split: str,
    on_epoch: Callable[[Any], None] | None,
    objective: str | None,
    fold: Fold | None = None,
) -> RunOutcome:
    """``train_once`` for a loop task: ``fit`` runs with ``trial.split == split``; its reports are the outcome."""
    import time

    from adamtune.core.curves import EpochMetrics
    from adamtune.core.metrics import bare_name

    def hook(epoch: int, metrics: Any, diverged: bool) -> bool:
        if on_epoch is not None and not diverged:
            on_epoch(EpochMetrics(epoch, dict(metrics)))
        return False

    name = bare_name(objective) if objective else task.objective
    context = TrialContext(
        params=params,
        n_epochs=epochs,
        batch_size=batch_size,
        seed=seed,
        device=device,
        objective=name,
        direction=task.direction_of(name) or task.direction,
        split=split,
        data=getattr(data, "value", data),
        on_epoch=hook,
        fold=fold if task.folds else None,  # a task that does not declare folds is never handed one
    )
    started = time.perf_counter()
    try:
        run_in_context(task, data, context)
    except TrialDiverged:
        pass
    except ContractError as exc:
        if context.state != "diverged":
            raise ContractError(f"task {task.name!r}: {exc}") from None
    except Exception:
        if context.state != "diverged":
            raise
    try:
        _, metrics = context.result()
    except RuntimeError as exc:  # fit reported nothing
        raise ContractError(f"task {task.name!r}: {exc}") from None
    curves = context.curves()
    curves.seconds = time.perf_counter() - started
    return RunOutcome(seed, split, metrics, context.state == "diverged", curves)
