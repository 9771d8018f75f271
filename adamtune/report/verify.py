"""``adamtune verify``: does the recommendation beat Adam's defaults on data the search never saw?

Procedure
---------
1. The recommendation is the study's recommendation (:mod:`adamtune.report.decision`'s rule: the
   confirmed finalist, or the defaults when none was confirmed better, or the best search-time trial
   when not confirmed).
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
   ``equal_var=False``). The verdict uses the paired test at
   :data:`~adamtune.report.verify_result.ALPHA` = 0.05. A p-value is None when it is undefined (every
   difference is exactly zero, e.g. when the recommendation *is* Adam's defaults).
5. Also reported: a 95% percentile **bootstrap interval** of the mean paired difference
   (:data:`~adamtune.report.verify_result.BOOTSTRAP_RESAMPLES` resamples of the seeds with replacement,
   from a fixed RNG seed, so the same runs give the same interval), and the **probability of
   improvement**: the share of those resamples whose mean difference is above zero (ties count half).
   With few seeds the bootstrap interval is narrower than the t-test suggests (it under-covers at
   n = 5); read it next to the p-value.

The result is stored on the study (user attribute ``adamtune.verify``, shown by ``adamtune summary``;
a new verification replaces the previous one) and, unless tracking is off, logged to MLflow as a run
named ``verify`` in the study's experiment. Deterministic on the CPU: the same study and seeds give the
same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna

from adamtune.confirm.ranking import settings_dict
from adamtune.core.errors import ConfigError
from adamtune.core.space import AdamParams
from adamtune.report.summary import VERIFY_ATTR, StudySummary, recommendation
from adamtune.report.verify_mlflow import log_to_mlflow
from adamtune.report.verify_result import RunResult, VerifyResult
from adamtune.storage.attr_keys import SEED_ATTR
from adamtune.training.runner import split_metric

#: The first verification seed; far from the small seeds people pick by hand.
FIRST_SEED = 7_000_000
#: Fewest seeds: a t-test needs at least two runs of each setting.
MIN_SEEDS = 2


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
