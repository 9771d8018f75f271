"""Train K models of one task as one vectorised model: ``train_batched(task, data, trials, ...)``.

The K models are built exactly as :func:`adamtune.training.train.build_model` builds them (each from its own
seed), stacked with ``torch.func.stack_module_state`` and run with ``vmap(functional_call)``: one
forward and one backward pass per step for all K. :class:`BatchedAdam` is a hand-written Adam/AdamW step
over the stacked parameters whose settings (lr, betas, epsilon, decay, warmup, weight decay, amsgrad)
are per-trial tensors; it performs torch's own update for every trial (``tests/training/test_batched.py`` checks
it against ``torch.optim.Adam``/``AdamW`` per trial).

What each trial keeps, as in :func:`adamtune.training.train.train`:

* its seed: its initialisation (the model is built after ``torch.manual_seed(seed)``) and its shuffling
  order (a ``torch.Generator`` seeded with ``seed``; every epoch each trial draws its own ``randperm``,
  and step ``i`` gathers each trial's own samples);
* its curve: the untrained model's validation metrics, then per epoch ``train_loss``, the validation
  metrics and ``lr``, computed by the same code as ``train.py`` (same metric functions, same weighting);
* divergence: the rule of ``train.py`` (non-finite training/validation loss, or a validation loss over
  ``DIVERGENCE_FACTOR`` times the untrained model's) ends that trial at that epoch;
* its callbacks: ``on_epoch`` may raise (pruning), which ends that trial only.

A trial that ends (diverged, pruned, or its callback failed) leaves the batch: the stacked state
shrinks to the trials still training; the others' updates are unaffected (every trial's update reads
only its own slice). Slots are not refilled: all trials of a batch share the step counter.

Equality with sequential runs is to float tolerance (batched matrix products sum in another order).
Models with dropout train with ``vmap(randomness="different")``: each trial gets its own masks, but not
the masks its sequential run would draw, so such curves match sequential runs in distribution only.

Not batchable (:func:`batch_blocker` says why, and the caller trains one trial at a time): loop tasks
(the user's own ``fit``), tasks with a training augmentation or their own parameter groups, models with
batch norm (running statistics are buffers updated in training mode), and models that ``vmap`` cannot
trace (for example data-dependent Python control flow), found by a probe on two samples.

The schedule is :func:`adamtune.training.optim.lr_factor` (warmup and decay). Weight decay (AdamW,
``weight_decay > 0``) applies only to parameters with two or more dimensions, the default rule of
:func:`adamtune.training.optim.param_groups`; a task with its own ``param_groups`` trains one trial at a time.
Nothing here imports optuna or mlflow.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch.func import functional_call, stack_module_state, vmap

from adamtune.core.space import AdamParams
from adamtune.tasks.base import Split, Task, TaskData
from adamtune.training.optim import lr_factor
from adamtune.training.train import (
    DIVERGENCE_FACTOR,
    EVAL_BATCH_SIZE,
    Curves,
    EpochMetrics,
    _autocast,
    _to_model_input,
    build_model,
)


def decays(parameter: torch.Tensor) -> bool:
    """Whether AdamW's weight decay applies to a (per-trial) parameter: two or more dimensions, the default
    rule of :func:`adamtune.training.optim.param_groups` (a task with its own ``param_groups`` does not batch)."""
    return parameter.dim() >= 2


class BatchedAdam:
    """Adam/AdamW over stacked parameters ``{name: tensor[K, ...]}``, one setting per leading index.

    Per trial ``k`` the update is ``torch.optim.Adam`` (``weight_decay == 0``) or ``torch.optim.AdamW``
    (decoupled decay on parameters with ``dim() >= 2`` per trial), at learning rate
    ``lr * lr_factor(t, warmup, decay)`` for update ``t`` (0-based). All K trials take their steps
    together, so ``t`` is shared. Call :meth:`step` after the gradients are in ``param.grad``.
    """

    def __init__(self, params: dict[str, torch.Tensor], settings: Sequence[AdamParams]) -> None:
        self.params = params
        self.settings = list(settings)
        self.steps = 0
        self.exp_avg = {n: torch.zeros_like(p) for n, p in params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self.max_exp_avg_sq = {n: torch.zeros_like(p) for n, p in params.items()}
        self._cache: dict[tuple, torch.Tensor] = {}

    def current_lr(self, k: int, step: int | None = None) -> float:
        """Trial ``k``'s learning rate for update ``step`` (default: the next one)."""
        s = self.settings[k]
        return s.lr * lr_factor(self.steps if step is None else step, warmup=s.warmup, decay=s.decay)

    def _columns(self, rows: list[list[float]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """``rows`` (each K values) as one ``[len(rows), K]`` tensor: one host-to-device copy."""
        return torch.tensor(rows, dtype=torch.float64).to(dtype).to(device, non_blocking=True)

    def _constants(self, like: torch.Tensor) -> torch.Tensor:
        """The per-trial constants ``[5, K]``: 1-beta1, beta2, 1-beta2, epsilon, amsgrad (cached per dtype)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            s = self.settings
            rows = [[1.0 - x.beta1 for x in s], [x.beta2 for x in s], [1.0 - x.beta2 for x in s]]
            rows += [[x.epsilon for x in s], [1.0 if x.amsgrad else 0.0 for x in s]]
            self._cache[key] = self._columns(rows, like.device, like.dtype)
        return self._cache[key]

    @torch.no_grad()
    def step(self) -> None:
        t = self.steps
        self.steps += 1
        rates = [self.current_lr(k, t) for k in range(len(self.settings))]
        # Computed per trial in double precision, as torch does with Python floats.
        shrink = [1.0 - lr * s.weight_decay for lr, s in zip(rates, self.settings, strict=True)]
        step_size = [-lr / (1.0 - s.beta1 ** (t + 1)) for lr, s in zip(rates, self.settings, strict=True)]
        bc2_sqrt = [math.sqrt(1.0 - s.beta2 ** (t + 1)) for s in self.settings]
        amsgrad = any(s.amsgrad for s in self.settings)
        decoupled = any(s.weight_decay > 0 for s in self.settings)
        per_step: dict[tuple, torch.Tensor] = {}
        for name, p in self.params.items():
            grad = p.grad
            if grad is None:
                continue
            key = (p.device, p.dtype)
            if key not in per_step:
                per_step[key] = self._columns([shrink, step_size, bc2_sqrt], p.device, p.dtype)
            shape = (-1, *([1] * (p.dim() - 1)))
            one_minus_b1, b2, one_minus_b2, eps, use_ams = (c.view(shape) for c in self._constants(p))
            shrink_t, step_t, bc2_t = (c.view(shape) for c in per_step[key])
            if decoupled and decays(p[0]):
                p.mul_(shrink_t)
            m, v = self.exp_avg[name], self.exp_avg_sq[name]
            m.lerp_(grad, one_minus_b1)
            v.mul_(b2).addcmul_(grad, grad * one_minus_b2)
            if amsgrad:
                vmax = self.max_exp_avg_sq[name]
                torch.maximum(vmax, v, out=vmax)
                v = torch.where(use_ams.bool(), vmax, v)
            denom = v.sqrt().div_(bc2_t).add_(eps)
            p.addcdiv_(m * step_t, denom)

    def keep(self, index: torch.Tensor, kept: Sequence[int]) -> None:
        """Shrink to the trials at ``index`` (also given as Python ints ``kept``); ``params`` is replaced."""
        self.params = {n: p.detach()[index].requires_grad_(p.requires_grad) for n, p in self.params.items()}
        for state in (self.exp_avg, self.exp_avg_sq, self.max_exp_avg_sq):
            for n in state:
                state[n] = state[n][index]
        self.settings = [self.settings[k] for k in kept]
        self._cache.clear()


@dataclass
class BatchTrial:
    """One trial of a batch: its settings and seed, and its callbacks (see :func:`train_batched`)."""

    params: AdamParams
    seed: int
    on_epoch: Callable[[EpochMetrics], None] | None = None
    on_initial: Callable[[dict[str, float]], None] | None = None
    curves: Curves = field(default_factory=Curves)
    error: BaseException | None = None  # what its on_epoch/on_initial raised; it left the batch then


def batch_blocker(task: object, data: TaskData | None = None, device: str = "cpu") -> str | None:
    """Why ``task`` cannot train batched (a short reason), or None when it can.

    With ``data``, the model is also probed: a vmapped forward and backward on two training samples.
    """
    from adamtune.tasks.loop import LoopTask

    if isinstance(task, LoopTask) or not isinstance(task, Task):
        return "a loop task trains in its own fit(trial)"
    model = task.make_model()
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return "its model uses batch norm (running statistics updated in training mode)"
    if task.augment is not None:
        return "its training augmentation is not batched"
    if task.param_groups is not None:
        return "its own optimizer parameter groups (param_groups) are not batched"
    if data is None:
        return None
    try:
        trainer = _Stack(task, [build_model(task, 0, torch.device(device)) for _ in range(2)])
        x = data.train.x[:2].to(device)
        y = data.train.y[:2].to(device)
        losses = trainer.losses(torch.stack([x, x]), torch.stack([y, y]))
        losses.sum().backward()
    except Exception as exc:  # any failure to trace means: train one at a time
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        return f"its model cannot be vectorised ({type(exc).__name__}: {first[:120]})"
    return None


class _Stack:
    """K models of one architecture as stacked parameters and one vmapped forward."""

    def __init__(self, task: Task, models: list[torch.nn.Module]) -> None:
        self.task = task
        params, buffers = stack_module_state(models)
        self.params = {n: p.detach().requires_grad_() for n, p in params.items()}
        self.buffers = buffers
        self.base = copy.deepcopy(models[0]).to("meta")

        def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.base, (p, b), (x,))

        def loss(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return task.loss(forward(p, b, x), y)

        self._forward = vmap(forward, in_dims=(0, 0, None), randomness="different")
        self._loss = vmap(loss, in_dims=(0, 0, 0, 0), randomness="different")

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-trial training losses ``[K]`` of stacked batches ``x [K, b, ...]``, ``y [K, b]``."""
        k, b = x.shape[:2]
        device = x.device
        prepared = _to_model_input(self.task, x.reshape(k * b, *x.shape[2:]), device)
        prepared = prepared.reshape(k, b, *prepared.shape[1:])
        self.base.train()
        with _autocast(device):
            return self._loss(self.params, self.buffers, prepared, y)

    def keep(self, index: torch.Tensor) -> None:
        self.buffers = {n: t[index] for n, t in self.buffers.items()}

    @torch.no_grad()
    def evaluate(self, split: Split, device: torch.device) -> list[dict[str, float]]:
        """Each trial's metrics on ``split``, computed as :func:`adamtune.training.train.evaluate_metrics` does."""
        self.base.eval()
        k = len(next(iter(self.params.values())))
        task = self.task
        totals = [{name: torch.zeros((), device=device) for name in task.metric_names} for _ in range(k)]
        for start in range(0, len(split), EVAL_BATCH_SIZE):
            x = _to_model_input(task, split.x[start : start + EVAL_BATCH_SIZE], device)
            y = split.y[start : start + EVAL_BATCH_SIZE]
            with _autocast(device):
                outputs = self._forward(self.params, self.buffers, x)
            for i in range(k):
                totals[i]["loss"] += task.loss(outputs[i], y).float() * len(y)
                for name, metric in task.metrics.items():
                    totals[i][name] += metric(outputs[i].float(), y).float() * len(y)
        n = max(len(split), 1)
        return [{name: (total / n).item() for name, total in t.items()} for t in totals]


def train_batched(
    task: Task,
    data: TaskData,
    trials: Sequence[BatchTrial],
    *,
    device: torch.device | str,
    epochs: int,
    batch_size: int,
) -> list[BatchTrial]:
    """Train every trial in ``trials`` as one vectorised model; fill each trial's ``curves`` (and ``error``).

    Per trial this is :func:`adamtune.training.train.train` (see the module docstring): ``on_initial`` gets the
    untrained metrics (bare names), ``on_epoch`` each epoch's metrics unless the epoch diverged (then
    ``curves.diverged_epoch`` is set and ``on_epoch`` is not called, as in ``train``). A callback that
    raises an ``Exception`` ends that trial (kept in ``trial.error``); the others go on.
    ``curves.seconds`` is the batch's wall time so far when the trial left it.

    Raises:
        ValueError: no trials. BaseException (KeyboardInterrupt) from a callback propagates.
    """
    if not trials:
        raise ValueError("train_batched needs at least one trial")
    device = torch.device(device)
    started = time.perf_counter()
    stack = _Stack(task, [build_model(task, t.seed, device) for t in trials])
    optimizer = BatchedAdam(stack.params, [t.params for t in trials])
    generators = [torch.Generator(device=device).manual_seed(t.seed) for t in trials]
    active = list(range(len(trials)))  # indices into ``trials`` of the slots still training
    train_x, train_y = data.train.x, data.train.y
    n = len(data.train)

    def leave(gone: set[int]) -> None:
        if not gone:
            return
        kept = [slot for slot, k in enumerate(active) if k not in gone]
        for k in gone:
            trials[k].curves.seconds = time.perf_counter() - started
        if not kept:
            active.clear()
            return
        index = torch.tensor(kept, device=device)
        optimizer.keep(index, kept)
        stack.params = optimizer.params
        stack.keep(index)
        active[:] = [active[slot] for slot in kept]
        generators[:] = [generators[slot] for slot in kept]

    def call(k: int, fn: Callable, arg: object) -> bool:
        try:
            fn(arg)
            return True
        except Exception as exc:  # pruning (StopTrial) or the callback's own failure: this trial ends
            trials[k].error = exc
            return False

    blow_up: dict[int, float] = {}
    gone: set[int] = set()
    for k, initial in zip(active, stack.evaluate(data.val, device), strict=True):
        trials[k].curves.initial = {f"val_{name}": value for name, value in initial.items()}
        loss = initial["loss"]
        blow_up[k] = DIVERGENCE_FACTOR * loss if math.isfinite(loss) else math.inf
        if trials[k].on_initial is not None and not call(k, trials[k].on_initial, initial):
            gone.add(k)
    leave(gone)
    for epoch in range(1, epochs + 1):
        if not active:
            break
        total = torch.zeros(len(active), device=device)
        orders = torch.stack([torch.randperm(n, device=device, generator=g) for g in generators])
        for start in range(0, n, batch_size):
            index = orders[:, start : start + batch_size]
            losses = stack.losses(train_x[index], train_y[index])
            for p in stack.params.values():
                p.grad = None
            losses.sum().backward()
            optimizer.step()
            total += losses.detach().float() * index.shape[1]
        train_losses = (total / n).tolist()
        gone = set()
        for slot, (k, val) in enumerate(zip(active, stack.evaluate(data.val, device), strict=True)):
            train_loss, val_loss = train_losses[slot], val["loss"]
            values = {"train_loss": train_loss, **{f"val_{m}": v for m, v in val.items()}}
            values["lr"] = optimizer.current_lr(slot)
            metrics = EpochMetrics(epoch, values)
            trials[k].curves.epochs.append(metrics)
            if not (math.isfinite(train_loss) and math.isfinite(val_loss)) or val_loss > blow_up[k]:
                trials[k].curves.diverged_epoch = epoch
                gone.add(k)
            elif trials[k].on_epoch is not None and not call(k, trials[k].on_epoch, metrics):
                gone.add(k)
        if epoch == epochs:
            gone = set(active)
        leave(gone)
    return list(trials)
