"""Whether more search is likely to pay, read from a study: the values and the seed noise that the stop rule
(:mod:`adamtune.core.convergence`, which states it) needs, taken from the trials.

:func:`trials_convergence` works on trials already read (the live display passes those it has seen);
:func:`study_convergence` reads a study and falls back on the confirmation stage's runs of the defaults
for the noise. Read-only; no torch, no MLflow.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.confirm_rule import BASELINE_ARM
from adamtune.core.convergence import Convergence, check_convergence, seed_noise
from adamtune.storage.attr_keys import BASELINE_ATTR
from adamtune.storage.outcomes import trial_state


def _value(trial: FrozenTrial) -> float | None:
    """The trial's objective when it is a usable value: complete, not diverged, finite."""
    if trial.state != TrialState.COMPLETE or trial_state(trial) != "complete" or trial.value is None:
        return None
    return float(trial.value) if math.isfinite(trial.value) else None


def search_values(trials: Iterable[FrozenTrial]) -> list[float | None]:
    """The finished (complete, pruned, failed, diverged) non-baseline trials' values in trial-number order;
    None for a pruned, failed or diverged one: the values the workers' stop check reads
    (``trials/budget_check.py``)."""
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
    there are two or more, else from ``fallback`` (other runs of the defaults) when it holds two or more."""
    noise = seed_noise(baseline_values(trials))
    if noise is None:
        noise = seed_noise(fallback)
    return check_convergence(search_values(trials), direction, noise, **kwargs)


def confirm_baseline_values(stage: Any) -> list[float]:
    """The confirmation stage's runs of the defaults (a :class:`~adamtune.confirm.stored.StageState`)."""
    return [value for (arm, _seed), value in stage.results.items() if arm == BASELINE_ARM]


def study_convergence(
    study: optuna.Study, *, trials: Sequence[FrozenTrial] | None = None, stage: Any | None = None
) -> Convergence:
    """The stop rule's verdict on a search study.

    σ is the seed noise of the study's runs of the defaults (the baseline trial and the noise probes that
    ``--stop-when-converged`` adds) when there are two or more, else of the confirmation stage's baseline
    runs when there are two or more, else unknown.

    Args:
        study: The search study (not its ``.confirm`` study).
        trials: Its trials when already read (saves a read).
        stage: Its confirmation stage when already read (``confirm.stored.read_stage``); read only when
            the study itself holds fewer than two runs of the defaults.
    """
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    direction = study.direction.name.lower()
    if len(baseline_values(trials)) >= 2:
        return trials_convergence(trials, direction)
    if stage is None:
        from adamtune.confirm.stored import read_stage

        stage = read_stage(study)
    return trials_convergence(trials, direction, confirm_baseline_values(stage))
