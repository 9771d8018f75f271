"""What ``adamtune verify`` found: the runs of both settings on the test split and the statistics comparing them.

:class:`VerifyResult` holds the runs and computes mean ± std, the paired difference, the paired and
Welch t-tests, the bootstrap interval and probability of improvement, the outcome and the verdict; its
JSON shape (``verify --json``, the ``adamtune.verify`` study attribute) and its text
(:func:`render_result`). The procedure that produces it is in :mod:`adamtune.report.verify`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from adamtune.core.space import defaults_label

#: Significance level of the verdict (paired t-test).
ALPHA = 0.05
#: Resamples of the bootstrap interval and probability of improvement, and the RNG seed they use.
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class RunResult:
    """One training run evaluated on the test split: ``metrics`` by stored name (``test_loss``, ``test_mae``…)."""

    seed: int
    metrics: dict[str, float]
    diverged: bool

    def value(self, metric: str) -> float:
        """The run's ``metric`` (NaN when it was not measured, e.g. a diverged loop run's other metrics)."""
        return self.metrics.get(metric, math.nan)


@dataclass
class VerifyResult:
    """The runs of both settings and the statistics that compare them (see :mod:`adamtune.report.verify`)."""

    study: str
    task: str
    trial: int
    params: dict[str, Any]
    metric: str
    direction: str
    epochs: int
    batch_size: int
    device: str
    recommended: list[RunResult] = field(default_factory=list)
    default: list[RunResult] = field(default_factory=list)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.recommended]

    def values(self, which: str, metric: str | None = None) -> list[float]:
        runs = self.recommended if which == "recommended" else self.default
        return [run.value(metric or self.metric) for run in runs]

    def differences(self) -> list[float]:
        """Per-seed difference of the compared metric, positive where the recommendation is better."""
        sign = 1.0 if self.direction == "minimize" else -1.0
        return [sign * (d - r) for r, d in zip(self.values("recommended"), self.values("default"), strict=True)]

    def p_values(self) -> dict[str, float | None]:
        """Two-sided p-values of the paired and of Welch's t-test; None where undefined."""
        import warnings

        from scipy import stats

        recommended, default = self.values("recommended"), self.values("default")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about (near-)identical samples; we report None
            paired = stats.ttest_rel(recommended, default).pvalue
            welch = stats.ttest_ind(recommended, default, equal_var=False).pvalue
        return {"paired": _finite_or_none(paired), "welch": _finite_or_none(welch)}

    def bootstrap(self) -> dict[str, Any]:
        """The bootstrap interval of the mean paired difference and the probability of improvement."""
        return bootstrap_difference(self.differences())

    def outcome(self) -> str:
        """``better``, ``worse``, ``same`` (every difference zero) or ``not significant``."""
        differences = self.differences()
        if all(d == 0 for d in differences):
            return "same"
        p = self.p_values()["paired"]
        if p is None or p >= ALPHA:
            return "not significant"
        return "better" if statistics.fmean(differences) > 0 else "worse"

    def verdict(self) -> str:
        """The result in words, e.g. "the recommendation beats Adam's defaults on the test split by …"."""
        n = len(self.recommended)
        differences = self.differences()
        mean, std = statistics.fmean(differences), _std(differences)
        p = self.p_values()
        tests = f"paired t-test p = {_p_text(p['paired'])}, Welch p = {_p_text(p['welch'])}"
        by = f"{abs(mean):.4g} ± {std:.2g} {self.metric} (mean ± std over {n} seeds; {tests})"
        outcome = self.outcome()
        if outcome == "same":
            return f"no difference on the test split: both settings gave identical results on {n} seeds"
        if outcome == "better":
            return f"the recommendation beats {defaults_label('weight_decay' in self.params)} on the test split by {by}"
        if outcome == "worse":
            return f"{defaults_label('weight_decay' in self.params)} beat the recommendation on the test split by {by}"
        direction = "better" if mean > 0 else "worse"
        return f"no significant difference on the test split (α = {ALPHA}): the recommendation is {direction} by {by}"

    @property
    def metric_names(self) -> list[str]:
        """Every metric the runs measured: the compared one first, then in the order first measured."""
        names = dict.fromkeys([self.metric])
        for run in (*self.recommended, *self.default):
            names.update(dict.fromkeys(run.metrics))
        return list(names)

    def _arm(self, which: str) -> dict[str, Any]:
        runs = self.recommended if which == "recommended" else self.default
        arm: dict[str, Any] = {}
        for metric in self.metric_names:
            values = self.values(which, metric)
            arm[metric] = {"mean": statistics.fmean(values), "std": _std(values), "values": values}
        arm["diverged"] = sum(run.diverged for run in runs)
        return arm

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape (``verify --json``, the ``adamtune.verify`` study attribute)."""
        differences = self.differences()
        boot = self.bootstrap()
        return {
            "study": self.study,
            "task": self.task,
            "trial": self.trial,
            "params": self.params,
            "metric": self.metric,
            "direction": self.direction,
            "split": "test",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "device": self.device,
            "seeds": self.seeds,
            "recommended": self._arm("recommended"),
            "default": self._arm("default"),
            "difference": {"mean": statistics.fmean(differences), "std": _std(differences)},
            "bootstrap": boot,
            "probability_of_improvement": boot["probability_of_improvement"],
            "p_value": self.p_values(),
            "alpha": ALPHA,
            "outcome": self.outcome(),
            "verdict": self.verdict(),
            "created": self.created,
        }


def bootstrap_difference(
    differences: list[float], resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = 0.95
) -> dict[str, Any]:
    """Percentile bootstrap of the mean of ``differences`` (positive = the recommendation is better).

    Returns ``{"low", "high", "confidence", "resamples", "probability_of_improvement"}``; the probability
    is the share of resampled means above zero, ties counting half. Deterministic (fixed RNG seed).
    """
    import numpy as np

    values = np.asarray(differences, dtype=float)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    better = float(np.mean(means > 0) + 0.5 * np.mean(means == 0))
    return {
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "resamples": resamples,
        "probability_of_improvement": better,
    }


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _p_text(p: float | None) -> str:
    if p is None:
        return "undefined"
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def render_result(result: VerifyResult | Mapping[str, Any]) -> str:
    """The result as a few aligned lines of text (``adamtune verify`` without ``--json``).

    ``result`` is a :class:`VerifyResult` or its JSON object (:meth:`VerifyResult.as_dict`, what
    ``adamtune.SearchResult.verify`` returns).
    """
    record = result.as_dict() if isinstance(result, VerifyResult) else result
    n = len(record["seeds"])
    wd = "weight_decay" in record["params"]
    lines = [
        f"verify {record['study']} (task {record['task']}): trial {record['trial']} against "
        f"{defaults_label(wd)}, {n} seeds x {record['epochs']} epochs, test split, {record['device']}",
        f"{'':16}{'recommended':>22}{'AdamW default' if wd else 'Adam default':>22}",
    ]
    metric_names = [name for name in record["recommended"] if name != "diverged"]  # as VerifyResult.metric_names
    for metric in metric_names:
        cells = []
        for arm in ("recommended", "default"):
            stats = record[arm][metric]
            cells.append(f"{stats['mean']:.4f} ± {stats['std']:.4f}")
        lines.append(f"{metric:16}{cells[0]:>22}{cells[1]:>22}")
    diverged = record["recommended"]["diverged"], record["default"]["diverged"]
    if any(diverged):
        lines.append(f"{'diverged runs':16}{diverged[0]:>22}{diverged[1]:>22}")
    boot = record["bootstrap"]
    lines.append(
        f"difference (positive = recommendation better): {record['difference']['mean']:+.4g}, "
        f"95% bootstrap interval {boot['low']:+.4g} to {boot['high']:+.4g}; "
        f"probability of improvement {record['probability_of_improvement']:.0%}"
    )
    lines.append(f"verdict: {record['verdict']}")
    return "\n".join(lines)
