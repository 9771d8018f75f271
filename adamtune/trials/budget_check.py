"""The study's budget at each admission: when the trial phase ends, and how large the trial budget is.

Run by :func:`~adamtune.trials.admission.admit` under the study's admission lock, on the trials it read.
Two things end the trial phase before the trial target (``core/budget.py``, ``core/convergence.py``):

* **time**: the study stores a deadline (``search --timeout``); once the time left is what the
  confirmation stage needs, no trial starts and those running are pruned at their next epoch;
* **the stop rule** (``--stop-when-converged``): more search is unlikely to pay.

Ending the phase lowers the study's stored trial target to the trials finished or running, and records why
(``settings["ended"]``): every worker, the confirmation stage and ``summary`` then see a study that reached
its target. A later ``search`` stores its own target again and resumes.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.budget import (
    auto_dimensions,
    confirm_reserve,
    expected_trials,
    mean_trial_seconds,
)
from adamtune.core.confirm_rule import ConfirmSettings, stage_budget
from adamtune.core.convergence import Convergence, check_convergence, seed_noise
from adamtune.core.space import AdamParams, SearchSpace, baseline_for, suggest
from adamtune.storage.attr_keys import BASELINE_ATTR, SETTINGS_ATTR, WARM_ATTR
from adamtune.storage.outcomes import Counts, trial_state


@dataclass(frozen=True)
class TrialBudget:
    """What the admission found: when running trials must end, and the trial budget of an auto space.

    ``phase_end`` (wall-clock seconds) is None without a time budget; ``expected`` is the number of trials the
    study is expected to hold when its trial phase ends (None: not known yet); ``ended`` names what ended
    the trial phase at this admission (``"time"``, ``"converged"``), else None.
    """

    phase_end: float | None = None
    expected: int | None = None
    ended: str | None = None

    def time_is_up(self) -> bool:
        """True once the trial phase's end has passed (a running trial is then pruned)."""
        return self.phase_end is not None and time.time() >= self.phase_end


def check_budget(
    trials: Sequence[FrozenTrial],
    counts: Counts,
    target: int,
    settings: Mapping[str, Any],
    epochs: int,
    direction: str,
) -> TrialBudget:
    """The budget of a study whose trials are ``trials`` (read under the lock) and settings ``settings``."""
    deadline, stop_rule = settings.get("deadline"), settings.get("stop_when_converged")
    if deadline is None and not stop_rule:  # a budget of trials alone: nothing to estimate
        return TrialBudget(expected=target)
    now = time.time()
    finished = [t for t in trials if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]  # type: ignore[operator]
    trained = sum(max(1, len(t.intermediate_values)) for t in finished)
    epoch_seconds = math.fsum(durations) / trained if trained else None
    workers = counts.running + 1  # this worker and those with a trial running
    phase_end = None
    ended = None
    if deadline is not None:
        runs = confirm_runs(trials, ConfirmSettings.from_dict(settings.get("confirm")), trained, epochs)
        phase_end = float(deadline) - confirm_reserve(epoch_seconds, epochs, runs, workers)
        if now >= phase_end:
            ended = "time"
    if ended is None and stop_rule and trials_convergence(trials, direction).converged:
        ended = "converged"
    expected = target
    if phase_end is not None:
        trial_seconds = mean_trial_seconds(durations)
        expected = expected_trials(counts.finished, counts.running, now, phase_end, trial_seconds, workers, target)
    return TrialBudget(phase_end, expected, ended)


def confirm_runs(trials: Sequence[FrozenTrial], settings: ConfirmSettings, trained_epochs: int, epochs: int) -> int:
    """The most runs the confirmation stage will train: the finalists it can have and the baseline, on every
    seed, within the stage's budget (``confirm_rule.stage_budget``); 0 when confirmation is off, or while no
    trial but the baseline completed: with no finalist the stage trains nothing, so trials may use the time."""
    complete = sum(t.state == TrialState.COMPLETE and not t.user_attrs.get(BASELINE_ATTR) for t in trials)
    if not settings.enabled or complete == 0:
        return 0
    planned = (min(settings.top, complete) + 1) * settings.seeds
    if settings.budget is None:
        return planned
    return min(planned, stage_budget(trained_epochs, epochs, settings.budget))


def _value(trial: FrozenTrial) -> float | None:
    """The trial's objective when it is a usable value: complete, not diverged, finite."""
    if trial.state != TrialState.COMPLETE or trial_state(trial) != "complete" or trial.value is None:
        return None
    return float(trial.value) if math.isfinite(trial.value) else None


def search_values(trials: Iterable[FrozenTrial]) -> list[float | None]:
    """The finished (complete, pruned, failed, diverged) non-baseline trials' values in trial-number order;
    None for a pruned, failed or diverged one: the values the stop rule reads."""
    finished = [t for t in trials if not t.user_attrs.get(BASELINE_ATTR) and t.state.is_finished()]
    return [_value(t) for t in sorted(finished, key=lambda t: t.number)]


def baseline_values(trials: Iterable[FrozenTrial]) -> list[float]:
    """The values of the runs of the defaults among ``trials`` (the baseline and the noise probes)."""
    values = (_value(t) for t in trials if t.user_attrs.get(BASELINE_ATTR))
    return [v for v in values if v is not None]


def trials_convergence(
    trials: Sequence[FrozenTrial], direction: str, fallback: Sequence[float] = (), **kwargs: Any
) -> Convergence:
    """:func:`~adamtune.core.convergence.check_convergence` of ``trials``: σ from their baseline runs when
    there are two or more, else from ``fallback`` (other runs of the defaults) when it holds two or more.
    The workers' stop check, ``summary`` and the live display all read the rule through it."""
    noise = seed_noise(baseline_values(trials))
    if noise is None:
        noise = seed_noise(fallback)
    return check_convergence(search_values(trials), direction, noise, **kwargs)


def end_trial_phase(study: optuna.Study, settings: Mapping[str, Any], counts: Counts, reason: str) -> int:
    """Lower the study's trial target to the trials finished or running, recording why; the new target."""
    target = counts.finished + counts.running
    ended = {"reason": reason, "finished": target, "asked": int(settings.get("n_trials") or target)}
    study.set_user_attr(SETTINGS_ATTR, {**settings, "n_trials": target, "ended": ended})
    return target


def trial_settings(trial: optuna.Trial, space: SearchSpace, budget: TrialBudget) -> tuple[AdamParams, list[str]]:
    """The settings ``trial`` trains with and the dimensions it searched.

    An auto space searches the dimensions its budget pays for (``core/budget.auto_dimensions``), the rest at
    the defaults; a full space all it samples. A warm-started trial (``WARM_ATTR``) trains with exactly the
    settings it was queued with, and a baseline trial with the defaults (``space.baseline_for``).
    """
    searched = [dim.name for dim in space.sampled()]
    if space.auto:
        searched = list(auto_dimensions(budget.expected, searched))
        space = space.searching(searched)
    with warnings.catch_warnings():
        # The baseline is enqueued at Adam's defaults, which may lie outside a study's range (lr in
        # [1, 10]): Optuna warns about that fixed value; the baseline trains with the defaults anyway.
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        params = suggest(trial, space)
    warm = trial.user_attrs.get(WARM_ATTR)
    if trial.user_attrs.get(BASELINE_ATTR):
        params = baseline_for(space)
    elif isinstance(warm, Mapping) and isinstance(warm.get("params"), Mapping):
        params = AdamParams.from_dict(warm["params"])
    return params, searched
