"""Scoring and ranking a study's trials: the candidates of the recommendation and of the confirmation stage.

Reads trials only (no database access of its own, no torch, no MLflow). ``summary``/``recommend`` show
the ranking (:mod:`adamtune.report.summary`); the confirmation stage races its best candidates
(:mod:`adamtune.confirm.stage`).

The recommendation rule
-----------------------
1. Candidates are the trials adamtune records as ``complete``: trained for every epoch of the study with
   finite losses throughout. Pruned, diverged, failed, running and waiting trials are never recommended.
   The baseline trial (Adam's defaults) is a candidate like any other.
2. A candidate's *score* is the mean of its objective over its last :data:`LATE_EPOCHS` (3) epochs, read
   from the per-epoch curve the objective stores on the trial (user attribute ``adamtune.curves``;
   Optuna's intermediate values when that is missing). A study with fewer epochs averages all of them.
   A trial with no curve, or with a non-finite value among those epochs, is not a candidate.
3. Candidates are ranked by score: lowest first for ``val_loss``, highest first for ``val_accuracy``.
   Ties go to the better final value (Optuna's value), then to the lower trial number. The first is the
   recommendation.

Averaging the late epochs ranks runs by where their curve settled rather than by one noisy last point,
so a trial whose final epoch happened to dip is not preferred over one that is consistently good.
``adamtune verify`` then checks the winner against Adam's defaults on fresh seeds and the test split.

Gains compare the recommendation's score with the baseline trial's score (same rule, same epochs) and are
signed so that positive means "better than Adam's defaults" in both directions: for a minimised objective
``gain = baseline - recommended``, for a maximised one ``gain = recommended - baseline``; the relative
gain divides by ``|baseline|`` (None when the baseline score is 0 or missing).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from adamtune.core.config import StudySpec
from adamtune.core.space import AdamParams, params_from_optuna
from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR, PARAMS_ATTR
from adamtune.storage.outcomes import trial_state

#: Epochs at the end of each run whose objective values are averaged into the ranking score.
LATE_EPOCHS = 3
#: The five settings every recommendation names, in display order.
CORE_SETTINGS = ("lr", "beta1", "beta2", "epsilon", "decay")


def objective_curve(trial: FrozenTrial, objective: str) -> list[float | None]:
    """The per-epoch values of ``objective`` for ``trial`` (None where a value was not finite).

    Read from the ``adamtune.curves`` user attribute; when absent (trials made by other tools), from
    Optuna's intermediate values in step order. Empty when the trial reported nothing.
    """
    curves = trial.user_attrs.get(CURVES_ATTR) or {}
    values = curves.get(objective)
    if values:
        return [v if v is not None and math.isfinite(v) else None for v in values]
    steps = sorted(trial.intermediate_values)
    return [finite_or_none(trial.intermediate_values[s]) for s in steps]


def late_score(trial: FrozenTrial, objective: str, late_epochs: int = LATE_EPOCHS) -> float | None:
    """Mean of ``objective`` over the trial's last ``late_epochs`` epochs (all of them if fewer).

    Returns None when the trial has no curve or one of those values is missing or not finite.
    """
    tail = objective_curve(trial, objective)[-late_epochs:]
    if not tail or any(v is None for v in tail):
        return None
    return math.fsum(v for v in tail if v is not None) / len(tail)


def finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def trial_params(trial: FrozenTrial, spec: StudySpec) -> AdamParams:
    """The exact settings a trial trained with (recorded by the objective; rebuilt from params if absent)."""
    recorded = trial.user_attrs.get(PARAMS_ATTR)
    if recorded:
        return AdamParams.from_dict(recorded)
    return params_from_optuna(trial.params, spec.space)


def settings_dict(params: AdamParams, extras: Iterable[str] = ()) -> dict[str, Any]:
    """``lr, beta1, beta2, epsilon, decay`` and the extra dimensions a space turns on, as plain values."""
    return {key: getattr(params, key) for key in (*CORE_SETTINGS, *extras)}


@dataclass(frozen=True)
class Candidate:
    """One rankable trial: its settings, late-epoch score and final value."""

    trial: int
    params: AdamParams
    score: float
    value: float
    baseline: bool = False

    def as_dict(self, extras: Iterable[str] = ()) -> dict[str, Any]:
        return {
            "trial": self.trial,
            "params": settings_dict(self.params, extras),
            "score": self.score,
            "value": self.value,
        }


def rank_trials(trials: Iterable[FrozenTrial], spec: StudySpec) -> list[Candidate]:
    """Every candidate of the recommendation rule (module docstring), best first."""
    candidates = []
    for trial in trials:
        if trial.state != TrialState.COMPLETE or trial_state(trial) != "complete":
            continue
        value, score = finite_or_none(trial.value), late_score(trial, spec.objective)
        if value is None or score is None:
            continue
        baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        candidates.append(Candidate(trial.number, trial_params(trial, spec), score, value, baseline))
    sign = 1.0 if spec.direction == "minimize" else -1.0
    return sorted(candidates, key=lambda c: (sign * c.score, sign * c.value, c.trial))


def baseline_candidate(trials: Iterable[FrozenTrial], spec: StudySpec) -> Candidate | None:
    """The baseline trial (Adam's defaults) scored by the same rule; None if it has no finite score yet.

    An interrupted baseline is retried as a new trial that carries the baseline mark, so the study may
    hold several baseline trials: the first one with a score counts (the failed ones have none).
    """
    for trial in trials:
        if trial.user_attrs.get(BASELINE_ATTR):
            ranked = rank_trials([trial], spec)
            if ranked:
                return ranked[0]
    return None


def signed_gain(recommended: float, baseline: float, direction: str) -> float:
    """``recommended`` minus ``baseline``, signed so that positive means better (see module docstring)."""
    return baseline - recommended if direction == "minimize" else recommended - baseline
