"""Summaries of studies: the recommended settings and their gain over Adam's defaults.

Reads only the study database (no training, no MLflow). The recommendation is the best *complete*
trial (diverged and pruned trials are never recommended); the baseline is the trial marked as Adam's
defaults. Gains are signed so that positive means "better than the baseline" in both directions:
for a minimised objective ``gain = baseline - best``, for a maximised one ``gain = best - baseline``;
the relative gain divides by ``|baseline|``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.errors import StorageError
from adamtune.space import AdamParams, params_from_optuna
from adamtune.study import (
    BASELINE_ATTR,
    PARAMS_ATTR,
    SPEC_ATTR,
    Counts,
    count_trials,
    spec_from_study,
    study_names,
    trial_state,
)


@dataclass(frozen=True)
class StudySummary:
    """One study's answer: what to use, how it compares with the defaults, and what the trials did."""

    study: str
    task: str
    objective: str
    direction: str
    counts: Counts
    recommended: AdamParams | None
    recommended_trial: int | None
    value: float | None
    baseline_value: float | None
    extra_dimensions: tuple[str, ...] = ()

    @property
    def gain(self) -> float | None:
        if self.value is None or self.baseline_value is None:
            return None
        sign = 1.0 if self.direction == "minimize" else -1.0
        return sign * (self.baseline_value - self.value)

    @property
    def relative_gain(self) -> float | None:
        if self.gain is None or not self.baseline_value:
            return None
        return self.gain / abs(self.baseline_value)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape of one summary row."""
        return {
            "study": self.study,
            "task": self.task,
            "objective": self.objective,
            "direction": self.direction,
            "recommended": _recommended_dict(self.recommended, self.extra_dimensions),
            "recommended_trial": self.recommended_trial,
            "value": self.value,
            "baseline_value": self.baseline_value,
            "gain": self.gain,
            "relative_gain": self.relative_gain,
            "trials": self.counts.as_dict(),
        }


def _recommended_dict(params: AdamParams | None, extras: tuple[str, ...]) -> dict[str, Any] | None:
    if params is None:
        return None
    keys = ("lr", "beta1", "beta2", "epsilon", "decay", *extras)
    return {key: getattr(params, key) for key in keys}


def trial_params(trial: FrozenTrial, study: optuna.Study) -> AdamParams:
    """The exact settings a trial trained with (recorded by the objective; rebuilt from params if absent)."""
    recorded = trial.user_attrs.get(PARAMS_ATTR)
    if recorded:
        return AdamParams.from_dict(recorded)
    return params_from_optuna(trial.params, spec_from_study(study).space)


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def baseline_trial(trials: list[FrozenTrial]) -> FrozenTrial | None:
    for trial in trials:
        if trial.user_attrs.get(BASELINE_ATTR) and trial.state == TrialState.COMPLETE:
            return trial
    return None


def best_complete_trial(trials: list[FrozenTrial], direction: str) -> FrozenTrial | None:
    """The best complete (not diverged, not pruned) trial with a finite value."""
    candidates = [t for t in trials if trial_state(t) == "complete" and _finite(t.value)]
    if not candidates:
        return None
    key = (lambda t: t.value) if direction == "minimize" else (lambda t: -t.value)  # type: ignore[operator]
    return min(candidates, key=key)


def summarize(study: optuna.Study) -> StudySummary:
    """Summarise one adamtune study."""
    spec = spec_from_study(study)
    trials = study.get_trials(deepcopy=False)
    best = best_complete_trial(trials, spec.direction)
    baseline = baseline_trial(trials)
    baseline_value = baseline.value if baseline is not None and trial_state(baseline) == "complete" else None
    return StudySummary(
        study=study.study_name,
        task=spec.task,
        objective=spec.objective,
        direction=spec.direction,
        counts=count_trials(trials),
        recommended=trial_params(best, study) if best is not None else None,
        recommended_trial=best.number if best is not None else None,
        value=best.value if best is not None else None,
        baseline_value=baseline_value,
        extra_dimensions=tuple(spec.space.extra_dimensions()),
    )


def summarize_storage(storage: Any, task: str | None = None) -> list[StudySummary]:
    """Summaries of every adamtune study in ``storage`` (only those of ``task`` when given).

    Raises:
        StorageError: the storage holds no adamtune study (for ``task``, when given).
    """
    rows = []
    for name in study_names(storage):
        study = optuna.load_study(study_name=name, storage=storage)
        if SPEC_ATTR not in study.user_attrs:
            continue
        if task is not None and study.user_attrs[SPEC_ATTR]["task"] != task and name != task:
            continue
        rows.append(summarize(study))
    if not rows:
        what = f"for task {task!r}" if task else "yet"
        raise StorageError(f"no adamtune study {what} in this storage; run 'adamtune search --task TASK' first")
    return rows
