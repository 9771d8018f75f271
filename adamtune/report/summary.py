"""One study's summary: the :class:`StudySummary` data (what to use, how it compares with the defaults,
what the trials did) and :func:`summarize`, which builds it from the study.

Reads only the study database. Nothing here trains (``verify.py`` does), and nothing here imports torch
or MLflow, so ``adamtune summary`` and ``adamtune recommend`` start fast and work on a machine that only
holds the study file.

The recommendation rule is in :mod:`adamtune.report.decision` (its candidates and their scores in
:mod:`adamtune.confirm.ranking`); importance and the top-trial range in :mod:`adamtune.report.importance`;
finding and listing the studies of a storage in :mod:`adamtune.report.studies`; whether more search is
likely to pay in :mod:`adamtune.report.convergence`; the terminal display in :mod:`adamtune.report.render`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.confirm.ranking import (
    LATE_EPOCHS,
    Candidate,
    baseline_candidate,
    rank_trials,
    settings_dict,
    signed_gain,
)
from adamtune.core.budget import TIMED_TRIAL_CAP, auto_reason
from adamtune.core.config import StudySpec
from adamtune.core.convergence import Convergence
from adamtune.core.errors import StorageError
from adamtune.core.space import BASELINE, AdamParams, baseline_for
from adamtune.report.convergence import study_convergence
from adamtune.report.decision import choose, rule_text
from adamtune.report.importance import RobustRange, param_importance, robust_range
from adamtune.storage.attr_keys import BASELINE_ATTR, DEVICE_ATTR, SEARCHED_ATTR, SETTINGS_ATTR
from adamtune.storage.outcomes import FINISHED_STATES, Counts, count_trials, trial_state
from adamtune.storage.study import spec_from_study

#: Study user attribute holding the latest ``adamtune verify`` result (see ``verify.py``).
VERIFY_ATTR = "adamtune.verify"


def device_counts(trials: Iterable[FrozenTrial]) -> dict[str, dict[str, int]]:
    """Trial outcomes per device (the ``adamtune.device`` attribute); trials that never started are left out.

    A trial that ran without recording its device (made by another tool) counts under ``"unknown"``.
    """
    by_device: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.WAITING:
            continue
        by_device.setdefault(str(trial.user_attrs.get(DEVICE_ATTR, "unknown")), []).append(trial)
    return {device: count_trials(group).as_dict() for device, group in sorted(by_device.items())}


# --------------------------------------------------------------------------- the budget: space and early end


@dataclass(frozen=True)
class AutoSpace:
    """What an auto space searched: the dimensions of the last finished trial, and why the rest were fixed."""

    searched: tuple[str, ...] | None  # None: no finished trial recorded what it searched
    fixed: tuple[str, ...]
    budget: int | None  # the trial budget the space was sized for; None while a time budget's is unknown
    reason: str | None  # ``core.budget.auto_reason``; None with ``searched`` None

    def as_dict(self) -> dict[str, Any]:
        searched = list(self.searched) if self.searched is not None else None
        return {"searched": searched, "fixed": list(self.fixed), "budget": self.budget, "reason": self.reason}


def trial_phase_ended(settings: dict[str, Any]) -> dict[str, Any] | None:
    """Why the latest search's trial phase ended before its trial target, if it did: the settings' ``ended``
    (``reason`` ``time`` or ``converged``, ``finished``, ``asked``) with the time budget (``timeout``, s)."""
    ended = settings.get("ended")
    if not isinstance(ended, dict) or ended.get("reason") not in ("time", "converged"):
        return None
    return {
        "reason": ended["reason"],
        "finished": ended.get("finished"),
        "asked": ended.get("asked"),
        "timeout": settings.get("timeout"),
    }


def auto_space(spec: StudySpec, trials: Iterable[FrozenTrial], settings: dict[str, Any]) -> AutoSpace | None:
    """The :class:`AutoSpace` of a study whose space grows with the budget; None for a fixed space."""
    space = spec.space
    if not space.auto:
        return None
    sampled = [d.name for d in space.sampled()]
    ended = trial_phase_ended(settings)
    target = int(settings.get("n_trials") or 0)
    budget = ended["finished"] if ended and ended["finished"] is not None else target
    budget = None if not budget or budget >= TIMED_TRIAL_CAP else int(budget)
    finished = [
        t
        for t in trials
        if trial_state(t) in FINISHED_STATES and not t.user_attrs.get(BASELINE_ATTR) and SEARCHED_ATTR in t.user_attrs
    ]
    if not finished:
        return AutoSpace(None, (), budget, None)
    searched = tuple(max(finished, key=lambda t: t.number).user_attrs[SEARCHED_ATTR])
    fixed = tuple(name for name in sampled if name not in searched)
    return AutoSpace(searched, fixed, budget, auto_reason(budget, searched, sampled))


# --------------------------------------------------------------------------- the summary of one study


@dataclass(frozen=True)
class StudySummary:
    """One study's answer: what to use, how it compares with the defaults, and what the trials did."""

    study: str
    task: str
    objective: str
    direction: str
    epochs: int
    batch_size: int
    counts: Counts
    recommended: Candidate | None
    baseline: Candidate | None
    extra_dimensions: tuple[str, ...] = ()
    devices: dict[str, dict[str, int]] = field(default_factory=dict)
    importance: dict[str, float] | None = None
    importance_note: str | None = None
    robust: RobustRange | None = None
    verify: dict[str, Any] | None = None
    defaults: AdamParams = BASELINE  # what the baseline trains with: space.baseline_for(the space)
    #: Which rule chose ``recommended``: ``confirmed``, ``defaults`` or ``search`` (see :func:`choose`).
    rule: str = "search"
    #: The confirmation stage as ``confirm.stage_as_dict`` (None for summaries built without it).
    confirmation: dict[str, Any] | None = None
    #: Whether more search is likely to pay (``report.convergence.study_convergence``).
    convergence: Convergence | None = None
    #: What an auto space searched and why (None for a fixed space).
    auto_space: AutoSpace | None = None
    #: Why the trial phase ended before its target (:func:`trial_phase_ended`), None when it did not.
    ended: dict[str, Any] | None = None

    @property
    def gain(self) -> float | None:
        if self.recommended is None or self.baseline is None:
            return None
        return signed_gain(self.recommended.score, self.baseline.score, self.direction)

    @property
    def relative_gain(self) -> float | None:
        if self.gain is None or self.baseline is None or not self.baseline.score:
            return None
        return self.gain / abs(self.baseline.score)

    def rule_text_line(self) -> str:
        """:func:`rule_text` of this summary."""
        return rule_text(self)

    @property
    def verify_is_current(self) -> bool:
        """True when the stored verification tested the trial that is recommended now."""
        return bool(self.verify and self.recommended and self.verify.get("trial") == self.recommended.trial)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape of one ``adamtune summary --json`` row (docs/reference/json.md).

        ``recommended`` is the settings as a flat object (null when nothing is recommendable yet);
        ``score``/``baseline_score`` are late-epoch means (the ranking rule), ``value``/``baseline_value``
        the final-epoch objective; ``gain``/``relative_gain`` compare the scores.
        """
        rec, base = self.recommended, self.baseline
        verify = None
        if self.verify is not None:
            verify = {**self.verify, "current": self.verify_is_current}
        return {
            "study": self.study,
            "task": self.task,
            "objective": self.objective,
            "direction": self.direction,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "score_rule": f"mean {self.objective} over the last {LATE_EPOCHS} epochs of a complete trial",
            "recommended": settings_dict(rec.params, self.extra_dimensions) if rec else None,
            "recommended_trial": rec.trial if rec else None,
            "score": rec.score if rec else None,
            "value": rec.value if rec else None,
            "baseline_trial": base.trial if base else None,
            "baseline_score": base.score if base else None,
            "baseline_value": base.value if base else None,
            "gain": self.gain,
            "relative_gain": self.relative_gain,
            "trials": self.counts.as_dict(),
            "devices": self.devices,
            "importance": self.importance,
            "importance_note": self.importance_note,
            "robust_range": self.robust.as_dict() if self.robust else None,
            "verify": verify,
            "rule": self.rule,
            "rule_text": rule_text(self),
            "confirmation": self.confirmation,
            "convergence": self.convergence.as_dict() if self.convergence else None,
            "auto_space": self.auto_space.as_dict() if self.auto_space else None,
            "ended": self.ended,
        }


def summarize(study: optuna.Study, *, importance: bool = True) -> StudySummary:
    """Summarise one adamtune study (reads the study only; the rule is :func:`adamtune.report.decision.choose`).

    ``importance=False`` skips the parameter-importance fit (the slowest part) for commands that only
    need the recommendation; ``importance`` is then None with a note saying so.
    """
    from adamtune.confirm.stored import read_stage, stage_as_dict

    spec = spec_from_study(study)
    trials = study.get_trials(deepcopy=False)
    ranked = rank_trials(trials, spec)
    baseline = baseline_candidate(trials, spec)
    scores, note = param_importance(study, trials) if importance else (None, "not computed")
    stage = read_stage(study)
    extras = tuple(spec.space.extra_dimensions())
    rule, recommended = choose(ranked, baseline, stage, baseline_for(spec.space))
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    return StudySummary(
        study=study.study_name,
        task=spec.task,
        objective=spec.objective,
        direction=spec.direction,
        epochs=int(spec.epochs or 0),
        batch_size=int(spec.batch_size or 0),
        counts=count_trials(trials),
        recommended=recommended,
        baseline=baseline,
        extra_dimensions=extras,
        devices=device_counts(trials),
        importance=scores,
        importance_note=note,
        robust=robust_range(ranked, spec),
        verify=study.user_attrs.get(VERIFY_ATTR),
        defaults=baseline_for(spec.space),
        rule=rule,
        confirmation=stage_as_dict(stage, extras),
        convergence=study_convergence(study, trials=trials, stage=stage),
        auto_space=auto_space(spec, trials, settings),
        ended=trial_phase_ended(settings),
    )


def recommendation(study: optuna.Study) -> StudySummary:
    """The summary of ``study`` for commands that need a recommendation (no importance computed).

    Raises:
        StorageError: the study has no complete trial with a full, finite curve yet.
    """
    summary = summarize(study, importance=False)
    if summary.recommended is None:
        counts = summary.counts
        raise StorageError(
            f"study {study.study_name!r} has no complete trial yet ({counts.finished} finished: "
            f"{counts.pruned} pruned, {counts.diverged} diverged); run 'adamtune search' to add trials"
        )
    return summary
