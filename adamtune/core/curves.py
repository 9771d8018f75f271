"""Learning curves as plain data: one training run's per-epoch metrics (no torch, no optuna, no mlflow).

:class:`Curves` is what the built-in trainer (``train.py``) returns and what a trial context
(``context.py``) hands to adamtune's side; both sides of a trainer process exchange it, so it lives here
where importing it costs nothing. ``train.py`` re-exports both classes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


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
