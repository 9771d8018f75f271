"""Build torch's own Adam/AdamW, its parameter groups, and the warmup + decay learning-rate schedule.

Schedule
--------
One formula, at optimizer step ``t`` (0 for the first update)::

    lr_t = lr * min(1, (t + 1) / warmup) / (1 + decay * t)

a linear warmup over ``warmup`` steps (0 or 1: none) times the Keras inverse-time decay (``decay = 0``:
none). During warmup the rate climbs ``lr/warmup, 2·lr/warmup, …`` and reaches the decayed ``lr`` at
step ``warmup - 1``; the decay counts from step 0, so it is not restarted after the warmup.
:func:`lr_factor` is the multiplier as a pure function, :func:`scheduled_lr` the rate; the ``LambdaLR``
returned by :func:`make_optimizer` applies it to every group and must be stepped once after every
optimizer step, so ``scheduler.get_last_lr()`` is the rate of the next update.

Parameter groups
----------------
With ``weight_decay > 0`` (AdamW), decay applies only to parameters with two or more dimensions
(``p.dim() >= 2``: weight matrices, convolution kernels, embedding tables); parameters with fewer
(biases, LayerNorm/BatchNorm/RMSNorm scales and shifts, any other 1-D or scalar parameter) get
``weight_decay = 0``. This is nanoGPT's ``configure_optimizers`` rule, and for the usual layers the same
split as Hugging Face's (no decay for ``bias`` and ``LayerNorm.weight``). It needs no parameter names,
so it applies equally to ``model.parameters()``. :func:`param_groups` builds the two groups; a task can
override them by passing its own param-group dicts (see :func:`make_optimizer`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from adamtune.core.space import AdamParams

#: What :func:`make_optimizer` accepts as its first argument.
ParamsLike = torch.nn.Module | Iterable[torch.nn.Parameter] | Iterable[Mapping[str, Any]]
#: A task's grouping hook: the model (or whatever was passed) -> torch param-group dicts.
GroupsHook = Callable[[Any], Iterable[Mapping[str, Any]]]


def lr_factor(step: int, *, warmup: int = 0, decay: float = 0.0) -> float:
    """The multiplier of ``lr`` for update number ``step`` (0-based): ``min(1, (step+1)/warmup) / (1 + decay*step)``.

    ``warmup`` 0 (or 1) means no warmup: the factor is then ``1 / (1 + decay * step)``.
    """
    ramp = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    return ramp / (1.0 + decay * step)


def scheduled_lr(params: AdamParams, step: int) -> float:
    """The learning rate of update number ``step`` (0-based) under ``params``' warmup and decay."""
    return params.lr * lr_factor(step, warmup=params.warmup, decay=params.decay)


def decayed_lr(lr: float, decay: float, step: int) -> float:
    """The learning rate used for update number ``step`` (0-based) without warmup: ``lr / (1 + decay * step)``."""
    return lr * lr_factor(step, decay=decay)


def param_groups(model_or_params: torch.nn.Module | Iterable[torch.nn.Parameter], weight_decay: float) -> list[dict]:
    """The default parameter groups for ``weight_decay`` (see the module docstring for the rule).

    ``weight_decay == 0``: one group holding every parameter (plain Adam). Otherwise two groups, always
    in this order and present even when empty: ``{"params": [p.dim() >= 2], "weight_decay": weight_decay}``
    then ``{"params": [p.dim() < 2], "weight_decay": 0.0}``; each keeps the parameters' order.
    """
    parameters = list(model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params)
    if weight_decay <= 0:
        return [{"params": parameters}]
    return [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(
    model_or_params: ParamsLike, params: AdamParams, groups: GroupsHook | None = None
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Return ``(optimizer, scheduler)`` for ``params``.

    Args:
        model_or_params: an ``nn.Module``, an iterable of parameters (``model.parameters()``), or
            explicit torch param-group dicts. Modules and parameters are grouped by
            :func:`param_groups`; dicts are used as given, and a group without a ``"weight_decay"``
            key gets ``params.weight_decay`` (set ``"weight_decay": 0.0`` to exempt a group; under plain
            Adam, ``params.weight_decay == 0``, a group's own non-zero value is torch's coupled L2 penalty).
        params: the Adam settings. ``torch.optim.Adam`` is used unless ``params.weight_decay > 0``,
            which selects ``AdamW`` (decoupled weight decay).
        groups: a task's override of the grouping, called as ``groups(model_or_params)`` and returning
            param-group dicts, treated as above. None: the default rule.

    Returns:
        The optimizer and a ``LambdaLR`` applying :func:`lr_factor` to every group's initial rate. Call
        ``scheduler.step()`` after each ``optimizer.step()``.

    Raises:
        ValueError: no parameters at all.
    """
    if groups is not None:
        group_list = [dict(g) for g in groups(model_or_params)]
    else:
        items = list(model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params)
        if items and all(isinstance(g, Mapping) for g in items):
            group_list = [dict(g) for g in items]
        else:
            group_list = param_groups(items, params.weight_decay)
    for group in group_list:
        given = group["params"]
        group["params"] = [given] if isinstance(given, torch.Tensor) else list(given)  # generators: read once
        group.setdefault("weight_decay", params.weight_decay)
    if not any(group["params"] for group in group_list):
        raise ValueError("make_optimizer got no parameters to optimize")
    kwargs = {
        "lr": params.lr,
        "betas": (params.beta1, params.beta2),
        "eps": params.epsilon,
        "amsgrad": params.amsgrad,
    }
    if params.weight_decay > 0:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(group_list, weight_decay=params.weight_decay, **kwargs)
    else:
        optimizer = torch.optim.Adam(group_list, **kwargs)
    warmup, decay = params.warmup, params.decay
    scheduler = LambdaLR(optimizer, lr_lambda=lambda step: lr_factor(step, warmup=warmup, decay=decay))
    return optimizer, scheduler
