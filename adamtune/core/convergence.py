"""Knowing when to stop: whether more search is likely to pay, from the trials so far and the seed noise.

Pure functions of plain numbers (no Optuna): ``report/convergence.py`` feeds them a study's trials (for
``summary`` and the live display), and the workers' admission step feeds them the same for
``--stop-when-converged``.

**The rule.** Take the finished trials that are not runs of Adam's defaults, in trial-number order, each
with its objective value (none for a pruned, failed or diverged trial), and the *seed noise* σ: the sample
standard deviation of the objective over repeated runs of Adam's defaults on different seeds. With ``n``
such trials, the search has **converged** when all three hold:

1. *enough trials*: at least ``min_trials`` (12) trials finished;
2. *stall*: the best value improved by less than σ over the last ``window`` = max(8, n // 4) trials
   (the best of all ``n`` against the best of the first ``n - window``);
3. *crowd*: the ``top`` (5) best values lie within 2σ of each other (the best minus the ``top``-th best).

A stall alone may be a sampler stuck in one region; a crowd alone may be a lucky cluster found just now.
Together they say the best settings are indistinguishable by seed noise, so a "better" one found later
could not be confirmed anyway. With σ unknown (fewer than two runs of the defaults) the search never
converges, and the verdict says the noise is not measured yet. With σ = 0 (a task that ignores its seed)
the stall test cannot pass: nothing is "less than no noise", and the search runs to its budget.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: How many of the best values must lie within 2σ of each other (the crowd test).
TOP = 5
#: The fewest finished trials before the search may be called converged.
MIN_TRIALS = 12
#: The smallest stall window, in trials (it grows as n // 4 beyond 32 trials).
MIN_WINDOW = 8

NOT_MEASURED = "the seed noise is not measured (it is, by --stop-when-converged or the confirmation stage)"


def _num(value: float) -> str:
    return f"{value:.2g}"


@dataclass(frozen=True)
class Convergence:
    """The verdict of :func:`check_convergence` and the numbers behind it.

    Attributes:
        converged: All three tests of the rule (module docstring) pass.
        trials: Finished non-baseline trials considered (``n``).
        noise: The seed noise σ; None when not measured.
        spread: The best value minus the ``top``-th best (absolute); None with fewer than ``top`` values.
        recent_gain: How much the best improved over the last ``window`` trials (>= 0); None when no
            value precedes the window.
        window: The stall window, max(8, n // 4).
        top: The crowd size the rule used.
        min_trials: The fewest trials the rule needs.
    """

    converged: bool
    trials: int
    noise: float | None
    spread: float | None
    recent_gain: float | None
    window: int
    top: int = TOP
    min_trials: int = MIN_TRIALS

    def _reasons(self) -> list[str]:
        """What keeps the search from being converged (σ known)."""
        assert self.noise is not None
        early = self.trials < self.min_trials
        reasons = [f"{self.trials} of the {self.min_trials} trials the rule needs have finished"] if early else []
        if self.recent_gain is None:
            if not early:
                reasons.append(f"no value before the last {self.window} trials to compare the best with")
        elif self.recent_gain >= self.noise:
            reasons.append(f"the best improved by {_num(self.recent_gain)} over the last {self.window} trials")
        if self.spread is None:
            if not early:
                reasons.append(f"fewer than {self.top} trials have a value")
        elif self.spread > 2 * self.noise:
            reasons.append(f"the top {self.top} spread over {_num(self.spread)}, more than 2σ {_num(2 * self.noise)}")
        return reasons

    def describe(self) -> str:
        """One line: the verdict and the numbers behind it (``summary``, the docs)."""
        if self.noise is None:
            return f"not known yet: {NOT_MEASURED}"
        noise = _num(self.noise)
        if self.converged:
            assert self.recent_gain is not None and self.spread is not None
            gain = (
                f"the best improved by {_num(self.recent_gain)}" if self.recent_gain > 0 else "the best did not improve"
            )
            return (
                f"more search is unlikely to pay: {gain} over the last {self.window} trials (less than the seed "
                f"noise σ {noise}) and the top {self.top} lie within {_num(self.spread)} (at most 2σ "
                f"{_num(2 * self.noise)})"
            )
        return f"more search may pay: {'; '.join(self._reasons())} (seed noise σ {noise})"

    def short(self) -> str:
        """A few words for a status line: ``converged: top 5 within 0.004, gain 0.001 in 8 (σ 0.011)``."""
        if self.noise is None:
            return "σ not measured"
        parts = [f"{self.trials}/{self.min_trials} trials"] if self.trials < self.min_trials else []
        if self.spread is not None:
            parts.append(f"top {self.top} within {_num(self.spread)}")
        if self.recent_gain is not None:
            parts.append(f"gain {_num(self.recent_gain)} in {self.window}")
        verdict = "converged" if self.converged else "searching"
        return f"{verdict}: {', '.join(parts) or 'no value yet'} (σ {_num(self.noise)})"

    def as_dict(self) -> dict[str, Any]:
        """The ``convergence`` object of ``summary --json``: the fields, plus ``text`` (:meth:`describe`)."""
        return {
            "converged": self.converged,
            "trials": self.trials,
            "noise": self.noise,
            "spread": self.spread,
            "recent_gain": self.recent_gain,
            "window": self.window,
            "top": self.top,
            "min_trials": self.min_trials,
            "text": self.describe(),
        }


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def seed_noise(values: Sequence[float]) -> float | None:
    """The sample standard deviation of the finite ``values``; None with fewer than two of them."""
    finite = [float(v) for v in values if _finite(v)]
    return statistics.stdev(finite) if len(finite) >= 2 else None


def check_convergence(
    values: Sequence[float | None],
    direction: str,
    noise: float | None,
    *,
    top: int = TOP,
    min_trials: int = MIN_TRIALS,
) -> Convergence:
    """Whether the search has converged by the rule of this module's docstring.

    Args:
        values: The objective of each finished non-baseline trial in trial-number order; None (or a
            non-finite number) for a pruned, failed or diverged trial.
        direction: ``"minimize"`` or ``"maximize"``.
        noise: The seed noise σ (:func:`seed_noise`); None (or non-finite, or negative) when not measured.
        top: How many of the best values must lie within 2σ.
        min_trials: The fewest finished trials before the search may converge.

    Returns:
        The verdict and its numbers.

    Raises:
        ValueError: an unknown ``direction``, or ``top`` below 1.
    """
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}")
    sign = 1.0 if direction == "minimize" else -1.0
    losses = [sign * float(v) if _finite(v) else None for v in values]  # lower is better
    n = len(losses)
    window = max(MIN_WINDOW, n // 4)
    ranked = sorted(v for v in losses if v is not None)
    spread = ranked[top - 1] - ranked[0] if len(ranked) >= top else None
    before = [v for v in losses[: max(0, n - window)] if v is not None]
    recent_gain = min(before) - ranked[0] if before else None
    if noise is not None and (not math.isfinite(noise) or noise < 0):
        noise = None
    converged = (
        noise is not None
        and n >= min_trials
        and recent_gain is not None
        and recent_gain < noise
        and spread is not None
        and spread <= 2 * noise
    )
    return Convergence(converged, n, noise, spread, recent_gain, window, top, min_trials)


def first_stop(values: Sequence[float | None], direction: str, noise: float | None, **kwargs: Any) -> int | None:
    """The smallest ``n`` such that ``check_convergence(values[:n], ...)`` converges; None if none does.

    What ``--stop-when-converged`` would have stopped at, had the trials come in this order (a benchmark
    counts its false stops with it). ``kwargs`` are those of :func:`check_convergence`.
    """
    for n in range(1, len(values) + 1):
        if check_convergence(values[:n], direction, noise, **kwargs).converged:
            return n
    return None
