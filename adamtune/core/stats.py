"""The statistics of the confirmation stage's decision: Student's t quantiles and the paired gain's interval.

Pure Python (``math``, ``statistics``): no NumPy, SciPy, torch, Optuna or MLflow.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

#: Fewest pairs: an interval needs two paired differences.
MIN_SEEDS = 2
#: The two-sided confidence of the paired gain's interval.
CONFIDENCE = 0.95


def t_central_mass(t: float, df: int) -> float:
    """``P(|T| < t)`` for Student's t with ``df`` >= 1 (an integer) degrees of freedom, ``t`` >= 0.

    The closed forms of Abramowitz & Stegun 26.7.3-4 (a finite series in ``cos(atan(t / sqrt(df)))``),
    exact to rounding for every integer ``df``, in pure Python: scipy.stats costs about a second of
    import in every process that decides a confirmation.
    """
    theta = math.atan(t / math.sqrt(df))
    sin, cos2 = math.sin(theta), math.cos(theta) ** 2
    # Odd df: (2/pi) (theta + sin (cos + 2/3 cos^3 + ... + (2*4..(df-3))/(1*3..(df-2)) cos^(df-2)));
    # even df: sin (1 + 1/2 cos^2 + ... + (1*3..(df-3))/(2*4..(df-2)) cos^(df-2)). Each term is the one
    # before times cos^2 (k-1)/k, k being the new term's power of cos.
    term = math.cos(theta) if df % 2 else 1.0
    total = term
    for power in range(3 if df % 2 else 2, df - 1, 2):
        term *= cos2 * (power - 1) / power
        total += term
    if df % 2 == 0:
        return sin * total
    return 2 / math.pi * (theta + (sin * total if df > 1 else 0.0))


@functools.lru_cache(maxsize=256)
def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t critical value ``t`` with ``P(|T| < t) = confidence`` for ``df`` >= 1.

    Found by bisection on :func:`t_central_mass` (to ~1e-12 relative); equals scipy's
    ``stats.t.ppf(0.5 + confidence / 2, df)``.

    Raises:
        ValueError: ``df`` < 1 or ``confidence`` outside (0, 1).
    """
    if df < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need df >= 1 and 0 < confidence < 1, got df={df}, confidence={confidence}")
    low, high = 0.0, 1.0
    while t_central_mass(high, df) < confidence:
        low, high = high, high * 2
    while high - low > 1e-13 * high:
        middle = (low + high) / 2
        if t_central_mass(middle, df) < confidence:
            low = middle
        else:
            high = middle
    return (low + high) / 2


@dataclass(frozen=True)
class Gain:
    """Paired differences (positive = better than the baseline) and their interval."""

    differences: tuple[float, ...]
    mean: float
    low: float
    high: float

    @property
    def n(self) -> int:
        return len(self.differences)


def paired_gain(values: Sequence[float], baseline: Sequence[float], direction: str) -> Gain:
    """The gain of ``values`` over ``baseline`` (same seeds, same order) with its paired-t interval.

    Raises:
        ValueError: fewer than :data:`MIN_SEEDS` pairs or unequal lengths.
    """
    if len(values) != len(baseline) or len(values) < MIN_SEEDS:
        raise ValueError(f"need at least {MIN_SEEDS} pairs of equal length, got {len(values)} and {len(baseline)}")
    sign = 1.0 if direction == "minimize" else -1.0
    differences = tuple(sign * (b - v) for v, b in zip(values, baseline, strict=True))
    mean = statistics.fmean(differences)
    sd = statistics.stdev(differences)
    half = t_quantile(len(differences) - 1) * sd / math.sqrt(len(differences)) if sd > 0 else 0.0
    return Gain(differences, mean, mean - half, mean + half)


def projected_low(gain: Gain, seeds: int) -> float:
    """The lower bound ``gain`` would have on ``seeds`` seeds with its current mean and spread."""
    sd = statistics.stdev(gain.differences)
    return gain.mean - (t_quantile(seeds - 1) * sd / math.sqrt(seeds) if sd > 0 else 0.0)
