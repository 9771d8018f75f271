"""How much each sampled setting matters: PED-ANOVA parameter importance and the top-trial (robust) range.

Reads the trials of one study (and the ranking of :mod:`adamtune.confirm.ranking`); imports neither torch
nor MLflow. :func:`importance_evaluator` is also the evaluator of the ``param_importances`` plot.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.confirm.ranking import Candidate, finite_or_none
from adamtune.core.config import StudySpec
from adamtune.core.space import BETAS
from adamtune.report.importance_import import optuna_importance

#: The robust range spans the best TOP_FRACTION of candidates, and at least MIN_TOP_TRIALS of them.
TOP_FRACTION = 0.1
MIN_TOP_TRIALS = 3
#: Parameter importance needs this many Optuna-COMPLETE trials; below it, summaries say so instead.
MIN_IMPORTANCE_TRIALS = 6


def param_importance(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[dict[str, float] | None, str | None]:
    """PED-ANOVA importance of each sampled setting for reaching the study's best trials.

    Uses :class:`optuna.importance.PedAnovaImportanceEvaluator` (Optuna's default evaluator) on the
    Optuna-COMPLETE trials, which include diverged ones at their (bad) untrained score, with
    ``target_quantile = max(0.1, 3 / n)`` so that the "top" group holds at least 3 trials. Importances are
    normalised to sum to 1 and keyed by setting name (``beta1``, not ``one_minus_beta1``).

    Returns:
        ``(importances, None)``, or ``(None, reason)`` when the study has fewer than
        :data:`MIN_IMPORTANCE_TRIALS` complete trials, samples no setting, or the evaluator fails.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and finite_or_none(t.value) is not None]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, f"needs at least {MIN_IMPORTANCE_TRIALS} complete trials, the study has {len(complete)}"
    names = sorted({name for t in complete for name in t.params})
    if not names:
        return None, "no setting is sampled in this study"
    evaluator = importance_evaluator(len(complete))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = optuna_importance().get_param_importances(study, evaluator=evaluator, params=names)
    except Exception as exc:  # the evaluator rejects an unusual study: say why, keep the summary
        return None, f"importance could not be computed: {type(exc).__name__}: {exc}"
    return {_setting_name(name): float(value) for name, value in raw.items()}, None


def importance_evaluator(complete: int) -> optuna.importance.BaseImportanceEvaluator:
    """The evaluator of :func:`param_importance` (and of the ``param_importances`` plot) for a study of
    ``complete`` complete trials: PED-ANOVA with ``target_quantile = max(0.1, 3 / complete)``."""
    evaluators = optuna_importance()  # first use in this process: without scikit-learn where allowed
    return evaluators.PedAnovaImportanceEvaluator(target_quantile=max(TOP_FRACTION, MIN_TOP_TRIALS / complete))


def _setting_name(optuna_name: str) -> str:
    prefix = "one_minus_"
    if optuna_name.startswith(prefix) and optuna_name[len(prefix) :] in BETAS:
        return optuna_name[len(prefix) :]
    return optuna_name


@dataclass(frozen=True)
class RobustRange:
    """The span of each sampled setting over the best-scoring candidates (how sensitive the task is)."""

    trials: tuple[int, ...]
    best_score: float
    worst_score: float
    params: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": list(self.trials),
            "score": {"best": self.best_score, "worst": self.worst_score},
            "params": self.params,
        }


def robust_range(ranked: list[Candidate], spec: StudySpec) -> RobustRange | None:
    """The range of every sampled setting over the top ``max(3, ceil(10% of candidates))`` candidates.

    Continuous settings give ``{"low": min, "high": max}``; a sampled ``amsgrad`` gives
    ``{"values": [...]}``. Returns None with fewer than :data:`MIN_TOP_TRIALS` candidates.
    """
    if len(ranked) < MIN_TOP_TRIALS:
        return None
    top = ranked[: max(MIN_TOP_TRIALS, math.ceil(TOP_FRACTION * len(ranked)))]
    params: dict[str, dict[str, Any]] = {}
    for dim in spec.space.sampled():
        values = [getattr(c.params, dim.name) for c in top]
        if dim.choices:
            params[dim.name] = {"values": sorted(set(values))}
        else:
            params[dim.name] = {"low": min(values), "high": max(values)}
    return RobustRange(tuple(c.trial for c in top), top[0].score, top[-1].score, params)
