"""Build torch's own Adam/AdamW and the Keras-style learning-rate decay schedule.

The decay has exactly the Keras meaning: at optimizer step ``t`` (0 for the first update),
``lr_t = lr / (1 + decay * t)``. :func:`decayed_lr` is that formula as a pure function; the scheduler
returned by :func:`make_optimizer` applies it, and must be stepped once after every optimizer step.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from adamtune.space import AdamParams


def decayed_lr(lr: float, decay: float, step: int) -> float:
    """The learning rate used for update number ``step`` (0-based): ``lr / (1 + decay * step)``."""
    return lr / (1.0 + decay * step)


def make_optimizer(
    parameters: Iterable[torch.nn.Parameter], params: AdamParams
) -> tuple[torch.optim.Optimizer, LambdaLR]:
    """Return ``(optimizer, scheduler)`` for ``params``.

    ``torch.optim.Adam`` is used unless ``params.weight_decay > 0``, which selects ``AdamW`` (decoupled
    weight decay). Call ``scheduler.step()`` after each ``optimizer.step()``.
    """
    kwargs = {
        "lr": params.lr,
        "betas": (params.beta1, params.beta2),
        "eps": params.epsilon,
        "amsgrad": params.amsgrad,
    }
    if params.weight_decay > 0:
        optimizer: torch.optim.Optimizer = torch.optim.AdamW(parameters, weight_decay=params.weight_decay, **kwargs)
    else:
        optimizer = torch.optim.Adam(parameters, **kwargs)
    decay = params.decay
    scheduler = LambdaLR(optimizer, lr_lambda=lambda step: 1.0 / (1.0 + decay * step))
    return optimizer, scheduler
