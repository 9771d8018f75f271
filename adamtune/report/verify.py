"""``adamtune verify``: does the recommendation beat Adam's defaults on data the search never saw?

Procedure
---------
1. The recommendation is the study's recommendation (``report.py``'s rule: the confirmed finalist, or
   the defaults when none was confirmed better, or the best search-time trial when not confirmed).
   The defaults are :func:`adamtune.core.space.baseline_for` the study's space (Adam's, or AdamW's with
   weight decay).
2. Both are trained on the same ``n`` fresh seeds: :data:`FIRST_SEED`, ``FIRST_SEED + 1``, … skipping
   any seed a trial of the study trained with. A seed fixes the model's initialisation, the shuffling
   and the augmentation, so the two settings of one seed see identical starts and batches (a *paired*
   design). Each run trains for the study's full epochs and batch size, without pruning, on the
   task's training split.
3. Each trained model is evaluated on the held-out **test** split, which tuning never looks at. The
   compared metric is the test counterpart of the study's objective (``val_loss`` -> ``test_loss``,
   ``val_mae`` -> ``test_mae``); every metric of the task is recorded (a loop task's ``fit`` runs with
   ``trial.split == "test"`` and what it reports is recorded). A run that diverges scores as its
   untrained model, exactly as a diverged trial does during the search, and is counted.
4. Reported: mean ± sample standard deviation (ddof=1) per setting; the per-seed difference, signed so
   that positive means "the recommendation is better", as mean ± std; the p-values of a paired t-test
   (``scipy.stats.ttest_rel``; the seeds are shared) and of Welch's t-test (``ttest_ind`` with
   ``equal_var=False``). The verdict uses the paired test at :data:`ALPHA` = 0.05. A p-value is None
   when it is undefined (every difference is exactly zero, e.g. when the recommendation *is* Adam's
   defaults).
5. Also reported: a 95% percentile **bootstrap interval** of the mean paired difference
   (:data:`BOOTSTRAP_RESAMPLES` resamples of the seeds with replacement, from a fixed RNG seed, so the
   same runs give the same interval), and the **probability of improvement**: the share of those
   resamples whose mean difference is above zero (ties count half). With few seeds the bootstrap
   interval is narrower than the t-test suggests (it under-covers at n = 5); read it next to the p-value.

The result is stored on the study (user attribute ``adamtune.verify``, shown by ``adamtune summary``;
a new verification replaces the previous one) and, unless tracking is off, logged to MLflow as a run
named ``verify`` in the study's experiment. Deterministic on the CPU: the same study and seeds give the
same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna

from adamtune.confirm.ranking import settings_dict
from adamtune.core.errors import ConfigError
from adamtune.core.space import AdamParams, defaults_label
from adamtune.report.summary import VERIFY_ATTR, StudySummary, recommendation
from adamtune.storage.study import SEED_ATTR
from adamtune.training.runner import split_metric

#: Significance level of the verdict (paired t-test).
ALPHA = 0.05
#: The first verification seed; far from the small seeds people pick by hand.
FIRST_SEED = 7_000_000
#: Fewest seeds: a t-test needs at least two runs of each setting.
MIN_SEEDS = 2
#: MLflow's maximum number of metrics in one log_batch call.
MLFLOW_BATCH = 1000
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
    """The runs of both settings and the statistics that compare them (see the module docstring)."""

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


def check_seeds(seeds: int) -> None:
    """Raises :class:`ConfigError` unless ``seeds >= MIN_SEEDS``."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < MIN_SEEDS:
        raise ConfigError(f"--seeds must be at least {MIN_SEEDS} (a t-test needs two runs of each), got {seeds!r}")


def fresh_seeds(study: optuna.Study, n: int) -> list[int]:
    """``n`` seeds from :data:`FIRST_SEED` upwards that no trial of ``study`` trained with."""
    from adamtune.core.confirm_rule import seeds_avoiding

    return seeds_avoiding(FIRST_SEED, (t.user_attrs.get(SEED_ATTR) for t in study.get_trials(deepcopy=False)), n)


def pick_device(device: str) -> str:
    """``auto`` is the first CUDA GPU when there is one, else the CPU; other names are checked as for search."""
    from adamtune.training.devices import resolve_device

    if device == "auto":
        import torch

        return "cuda:0" if torch.cuda.is_available() else "cpu"
    return resolve_device(device)


def run_verify(
    study: optuna.Study,
    *,
    seeds: int = 5,
    device: str = "auto",
    data_dir: Path | None = None,
    tracking: bool = True,
    tracking_uri: str | None = None,
    on_run: Callable[[str, RunResult], None] | None = None,
    on_tracking_error: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Train the recommendation and Adam's defaults on ``seeds`` fresh seeds and compare them on the test split.

    Everything that can fail fast (seeds, recommendation, device, task, data, tracking store) is checked
    before the first run trains. The result is stored on the study before MLflow is written, so an
    unreachable tracking store never loses it; tracking errors go to ``on_tracking_error`` (a warning).

    Args:
        study: an adamtune study with at least one complete trial.
        seeds: runs per setting (>= 2).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        data_dir: the dataset cache (default: ``$ADAMTUNE_DATA_DIR`` or the user cache directory).
        tracking, tracking_uri: log a ``verify`` run to the study's MLflow experiment.
        on_run: called after each run with ``"recommended"`` or ``"default"`` and its result (progress).

    Raises:
        ConfigError: fewer than 2 seeds. StorageError: no complete trial to recommend.
        DeviceError, TaskError, DataError, TrackingError: as for ``adamtune search``.
    """
    from adamtune.data.download import default_data_dir
    from adamtune.tasks import resolve_task

    check_seeds(seeds)
    summary = recommendation(study)
    assert summary.recommended is not None
    device = pick_device(device)
    task = resolve_task(summary.task)
    data = task.load_data(data_dir or default_data_dir()).to(device)
    tracker = None
    if tracking:
        from adamtune.tracking.tracker import Tracker

        tracker = Tracker(summary.study, tracking_uri)
    result = VerifyResult(
        study=summary.study,
        task=summary.task,
        trial=summary.recommended.trial,
        params=settings_dict(summary.recommended.params, summary.extra_dimensions),
        metric=split_metric(summary.objective, "test"),
        direction=summary.direction,
        epochs=summary.epochs,
        batch_size=summary.batch_size,
        device=device,
    )
    arms: list[tuple[str, AdamParams, list[RunResult]]] = [
        ("recommended", summary.recommended.params, result.recommended),
        ("default", summary.defaults, result.default),
    ]
    same_settings = summary.recommended.params == summary.defaults  # the defaults won: one run serves both arms
    for seed in fresh_seeds(study, seeds):
        shared: RunResult | None = None
        for name, params, runs in arms:
            run = shared or train_and_test(task, data, params, device=device, summary=summary, seed=seed)
            shared = run if same_settings else None
            runs.append(run)
            if on_run is not None:
                on_run(name, run)
    study.set_user_attr(VERIFY_ATTR, result.as_dict())
    if tracker is not None:
        try:
            log_to_mlflow(tracker, result, on_error=on_tracking_error)
        finally:
            tracker.close()
    return result


def train_and_test(
    task: Any, data: Any, params: AdamParams, *, device: str, summary: StudySummary, seed: int
) -> RunResult:
    """Train with ``params`` for the study's epochs (no pruning) and evaluate on ``data.test``.

    A diverged run is scored as its untrained model on the test split (as diverged trials are scored).
    """
    from adamtune.training.runner import train_once

    run = train_once(
        task,
        data,
        params,
        device=device,
        epochs=summary.epochs,
        batch_size=summary.batch_size,
        seed=seed,
        split="test",
        objective=summary.objective,
    )
    return RunResult(seed, run.metrics, run.diverged)


def log_to_mlflow(tracker: Any, result: VerifyResult, on_error: Callable[[str], None] | None = None) -> str | None:
    """Log ``result`` as a finished run named ``verify`` in the study's experiment; return its run id.

    ``tracker`` is an :class:`adamtune.tracking.tracker.Tracker` (it finds or makes the study's experiment); the
    run is written synchronously through its ``client``, so it is complete when this returns.

    Metrics: ``{recommended,default}_<metric>_{mean,std}`` for each test metric (``test_loss``,
    ``test_mae``…), ``{recommended,default}_diverged``,
    ``difference_mean``, ``difference_std``, ``difference_bootstrap_{low,high}``,
    ``probability_of_improvement``, ``p_paired``, ``p_welch`` (undefined p-values are left out),
    and per-seed values ``{recommended,default}_<metric>`` with step = the seed's index. Params: the
    verified settings, trial, seeds, epochs, batch size, device, metric. Tags: ``adamtune.kind = verify``,
    the outcome, and the verdict as the run's description. Errors are reported through ``on_error`` (or
    the tracker's ``notify``) and return None: the result is already stored on the study.
    """
    from adamtune.tracking.client import Metric, Param, RunTag

    stamp = int(datetime.now(timezone.utc).timestamp() * 1000)
    record = result.as_dict()
    metrics = []
    for arm in ("recommended", "default"):
        for metric in result.metric_names:
            stats = record[arm][metric]
            metrics.append(Metric(f"{arm}_{metric}_mean", stats["mean"], stamp, 0))
            metrics.append(Metric(f"{arm}_{metric}_std", stats["std"], stamp, 0))
            metrics.extend(Metric(f"{arm}_{metric}", v, stamp, i) for i, v in enumerate(stats["values"]))
        metrics.append(Metric(f"{arm}_diverged", float(record[arm]["diverged"]), stamp, 0))
    metrics.append(Metric("difference_mean", record["difference"]["mean"], stamp, 0))
    metrics.append(Metric("difference_std", record["difference"]["std"], stamp, 0))
    metrics.append(Metric("difference_bootstrap_low", record["bootstrap"]["low"], stamp, 0))
    metrics.append(Metric("difference_bootstrap_high", record["bootstrap"]["high"], stamp, 0))
    metrics.append(Metric("probability_of_improvement", record["probability_of_improvement"], stamp, 0))
    for name, p in record["p_value"].items():
        if p is not None:
            metrics.append(Metric(f"p_{name}", p, stamp, 0))
    params = [Param(k, str(v)) for k, v in result.params.items()]
    params += [
        Param("trial", str(result.trial)),
        Param("seeds", ",".join(map(str, result.seeds))),
        Param("epochs", str(result.epochs)),
        Param("batch_size", str(result.batch_size)),
        Param("device", result.device),
        Param("metric", result.metric),
    ]
    tags = [
        RunTag("adamtune.study", result.study),
        RunTag("adamtune.task", result.task),
        RunTag("adamtune.kind", "verify"),
        RunTag("adamtune.outcome", record["outcome"]),
        RunTag("mlflow.note.content", record["verdict"]),
    ]
    report = on_error or tracker.notify
    try:
        client = tracker.client
        run_id = client.create_run(tracker.experiment_id, run_name="verify").info.run_id
        client.log_batch(run_id, params=params, tags=tags)
        for start in range(0, len(metrics), MLFLOW_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + MLFLOW_BATCH])
        client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # the study holds the result; tracking is a copy
        text = str(exc).strip()
        report(f"MLflow: could not log the verify run: {text.splitlines()[0] if text else type(exc).__name__}")
        return None
    return run_id


def render_result(result: VerifyResult) -> str:
    """The result as a few aligned lines of text (``adamtune verify`` without ``--json``)."""
    record = result.as_dict()
    n = len(result.seeds)
    lines = [
        f"verify {result.study} (task {result.task}): trial {result.trial} against "
        f"{defaults_label('weight_decay' in result.params)}, "
        f"{n} seeds x {result.epochs} epochs, test split, {result.device}",
        f"{'':16}{'recommended':>22}{'AdamW default' if 'weight_decay' in result.params else 'Adam default':>22}",
    ]
    for metric in result.metric_names:
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
