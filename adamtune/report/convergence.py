"""Whether more search is likely to pay, read from a study: the values and the seed noise that the stop rule
(:mod:`adamtune.core.convergence`, which states it) needs, taken from the trials.

:func:`trials_convergence` works on trials already read (the live display passes those it has seen);
:func:`study_convergence` reads a study and falls back on the confirmation stage's runs of the defaults
for the noise. Read-only; no torch, no MLflow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from adamtune.core.confirm_rule import BASELINE_ARM
from adamtune.core.convergence import Convergence

# The trials' values and seed noise are read as the workers' stop check reads them (one definition).
from adamtune.trials.budget_check import baseline_values, search_values, trials_convergence

__all__ = ["baseline_values", "confirm_baseline_values", "search_values", "study_convergence", "trials_convergence"]


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
