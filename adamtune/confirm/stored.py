"""The stored confirmation stage, read-only: what ``summary``, ``recommend`` and the workers read.

:func:`read_stage` reads a study and its ``<study>.confirm`` study (see ``core/confirm_rule.py`` for the rule and
the storage layout) into a :class:`StageState`, replaying :func:`~adamtune.core.confirm_rule.plan_stage` over the
finished runs; :func:`stage_as_dict` is the ``confirmation`` object of ``summary --json``. Nothing here
trains or writes; no torch, no MLflow.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from adamtune.core.confirm_rule import (
    ARM_ATTR,
    BASELINE_ARM,
    ERROR_ATTR,
    FIXED_ROWS_NOTE,
    FOLD_ATTR,
    ConfirmSettings,
    Finalist,
    Plan,
    confirm_seeds,
    confirm_study_name,
    plan_stage,
    stage_budget,
)
from adamtune.core.stats import CONFIDENCE
from adamtune.storage.optuna_adapter import storage_of
from adamtune.storage.outcomes import count_trials


@dataclass(frozen=True)
class StageState:
    """The stage as stored: settings, finalists, seeds, finished results, runs in flight, and the plan."""

    settings: ConfirmSettings
    direction: str
    metric: str
    finalists: tuple[Finalist, ...]
    seeds: tuple[int, ...]
    results: dict[tuple[str, int], float]
    running: frozenset[tuple[str, int]]
    errors: dict[tuple[str, int], int]
    plan: Plan
    runs: int  # finished confirmation runs in the store (all of them, reused or not)
    seconds: float  # time of those runs (start to end, as Optuna records it), summed over workers
    search_seconds: float  # the search trials' time, measured the same way, summed over workers
    search_epochs: int = 0  # epochs the finished search trials trained (what the budget is a share of)
    budget: int | None = None  # the most runs the stage may train (``confirm.stage_budget``)
    trials_done: bool = False  # the study holds its trial target (a time budget or the stop rule may lower it)

    @property
    def started(self) -> bool:
        return bool(self.results) or bool(self.running)


def run_seconds(trial: Any) -> float:
    """Wall seconds from a trial's start to its end (0 when either is missing)."""
    if trial.datetime_start is None or trial.datetime_complete is None:
        return 0.0
    return max(0.0, (trial.datetime_complete - trial.datetime_start).total_seconds())


def load_confirm_study(study: Any) -> Any | None:
    """The confirmation study of ``study`` in the same storage, or None when it was never created."""
    import optuna

    try:
        return optuna.load_study(study_name=confirm_study_name(study.study_name), storage=storage_of(study))
    except KeyError:
        return None


def study_settings(study: Any) -> ConfirmSettings:
    """The confirmation settings the latest ``search`` stored on ``study`` (defaults for older studies)."""
    from adamtune.storage.attr_keys import SETTINGS_ATTR

    return ConfirmSettings.from_dict((study.user_attrs.get(SETTINGS_ATTR) or {}).get("confirm"))


def finalists_of(study: Any, trials: Sequence[Any], top: int) -> tuple[Finalist, ...]:
    """The top ``top`` complete trials by the search's ranking rule, the baseline trial left out."""
    from adamtune.confirm.ranking import rank_trials
    from adamtune.storage.study import spec_from_study

    ranked = [c for c in rank_trials(trials, spec_from_study(study)) if not c.baseline]
    return tuple(Finalist(c.trial, c.params.as_dict(), c.score) for c in ranked[:top])


def read_stage(study: Any, confirm_study: Any | None = None, settings: ConfirmSettings | None = None) -> StageState:
    """Read the stage of ``study`` (read-only: a missing confirmation study is an empty stage)."""
    from optuna.trial import TrialState

    from adamtune.storage.attr_keys import SEED_ATTR, SETTINGS_ATTR
    from adamtune.storage.study import spec_from_study
    from adamtune.training.runner import split_metric

    settings = settings or study_settings(study)
    spec = spec_from_study(study)
    trials = study.get_trials(deepcopy=False)
    finalists = finalists_of(study, trials, settings.top)
    seeds = tuple(confirm_seeds((t.user_attrs.get(SEED_ATTR) for t in trials), settings.seeds))
    confirm_study = confirm_study if confirm_study is not None else load_confirm_study(study)
    results: dict[tuple[str, int], float] = {}
    running: set[tuple[str, int]] = set()
    errors: dict[tuple[str, int], int] = {}
    runs, seconds = 0, 0.0
    for trial in confirm_study.get_trials(deepcopy=False) if confirm_study is not None else []:
        arm, seed = trial.user_attrs.get(ARM_ATTR), trial.user_attrs.get(SEED_ATTR)
        if arm is None or seed is None or (FOLD_ATTR in trial.user_attrs) != settings.folds:
            continue  # not a run, or one of the other kind (a study confirmed on fixed rows, now on folds)
        key = (str(arm), int(seed))
        if trial.state == TrialState.COMPLETE and trial.value is not None and math.isfinite(trial.value):
            runs += 1
            seconds += run_seconds(trial)  # start to end, bookkeeping included: measured as trials are
            results.setdefault(key, float(trial.value))
        elif trial.state == TrialState.RUNNING:
            running.add(key)
        elif trial.state == TrialState.FAIL and trial.user_attrs.get(ERROR_ATTR):
            errors[key] = errors.get(key, 0) + 1
    search_seconds = math.fsum(run_seconds(t) for t in trials if t.state.is_finished())
    search_epochs = sum(trained_epochs(t, spec.objective) for t in trials if t.state.is_finished())
    budget = None if settings.budget is None else stage_budget(search_epochs, spec.epochs or 1, settings.budget)
    stored = study.user_attrs.get(SETTINGS_ATTR) or {}
    deadline = stored.get("deadline")
    # The time budget cannot pay for another run (one run: the epochs at the trials' seconds per epoch): the
    # stage is decided as it is. Once true it stays true, so every reader of the study sees the same plan.
    one_run = search_seconds / max(1, search_epochs) * (spec.epochs or 1)
    cut = deadline is not None and time.time() + one_run >= float(deadline)
    plan = plan_stage(finalists, results, seeds, spec.direction, budget, cut)
    return StageState(
        settings,
        spec.direction,
        split_metric(spec.objective, "val"),
        finalists,
        seeds,
        results,
        frozenset(running),
        errors,
        plan,
        runs,
        seconds,
        search_seconds,
        search_epochs,
        budget,
        count_trials(trials).finished >= int(stored.get("n_trials") or 1 << 62),
    )


def trained_epochs(trial: Any, objective: str) -> int:
    """The epochs a finished search trial trained: the length of its stored curve (0 without one)."""
    from adamtune.storage.attr_keys import CURVES_ATTR

    return len((trial.user_attrs.get(CURVES_ATTR) or {}).get(objective) or ())


def stage_status(state: StageState) -> str:
    """``off``, ``not run``, ``in progress``, ``confirmed`` (a finalist won) or ``defaults`` (none did)."""
    if not state.settings.enabled:
        return "off"
    if not state.finalists:
        return "not run"
    if not state.plan.decided:
        return "in progress" if state.started else "not run"
    return "confirmed" if state.plan.recommended is not None else "defaults"


def _relative(value: float | None, baseline: Sequence[float]) -> float | None:
    if value is None or not baseline:
        return None
    scale = abs(statistics.fmean(baseline))
    return value / scale if scale else None


def _arm_status(dropped_after: int | None, decided: bool) -> str:
    if dropped_after == 0:
        return "not raced"  # beyond what the stage's budget pays for
    if dropped_after is not None:
        return "dropped"
    return "kept" if decided else "racing"


def stage_as_dict(state: StageState, extras: Iterable[str] = ()) -> dict[str, Any]:
    """The documented ``confirmation`` object of ``summary --json`` (docs/reference/json.md)."""
    from adamtune.confirm.ranking import settings_dict
    from adamtune.core.space import AdamParams

    plan = state.plan
    baseline = list(plan.baseline_values) or [
        state.results[(BASELINE_ARM, s)] for s in plan.seeds[: plan.round_seeds] if (BASELINE_ARM, s) in state.results
    ]
    finalists = []
    for arm in plan.arms:
        gain = arm.gain
        finalists.append(
            {
                "trial": arm.finalist.trial,
                "params": settings_dict(AdamParams.from_dict(arm.finalist.params), extras),
                "search_score": arm.finalist.search_score,
                "confirmed_score": arm.confirmed_score,
                "seeds": len(arm.values),
                "gain": gain.mean if gain else None,
                "relative_gain": _relative(gain.mean if gain else None, baseline[: len(arm.values)]),
                "interval": [gain.low, gain.high] if gain else None,
                "status": _arm_status(arm.dropped_after, plan.decided),
            }
        )
    best = plan.best
    return {
        "status": stage_status(state),
        "enabled": state.settings.enabled,
        "validation": state.settings.validation,
        "note": None if state.settings.folds else FIXED_ROWS_NOTE,
        "top": state.settings.top,
        "max_seeds": state.settings.seeds,
        "metric": state.metric,
        "split": "val",
        "interval": f"paired t, {CONFIDENCE:.0%}",
        "seeds": list(plan.seeds[: plan.round_seeds]),
        "baseline": {"confirmed_score": statistics.fmean(baseline) if baseline else None, "seeds": len(baseline)},
        "finalists": finalists,
        "best_candidate": best.finalist.trial if best else None,
        "recommended_trial": plan.recommended.finalist.trial if plan.recommended else None,
        "runs": {"finished": state.runs, "running": len(state.running), "needed": len(plan.needed)},
        "budget": {
            "share": state.settings.budget,
            "runs": state.budget,
            "search_epochs": state.search_epochs,
            "notes": list(plan.notes),
        },
        "seconds": state.seconds,
        "search_seconds": state.search_seconds,
        "cost_share": state.seconds / state.search_seconds if state.search_seconds else None,
    }
