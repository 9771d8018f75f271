"""The objective with Optuna's FixedTrial and an in-memory study: values, states, attributes."""

from __future__ import annotations

import optuna

from adamtune.core.config import build_spec
from adamtune.core.space import BASELINE, baseline_optuna_params
from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR, PARAMS_ATTR, STATE_ATTR
from adamtune.storage.outcomes import trial_state
from adamtune.tasks import resolve_task
from adamtune.trials.objective import Objective

TASK = resolve_task("synthetic")
DATA = TASK.load_data(None)
SPEC = build_spec("synthetic", overrides={"epochs": 3}).with_task_defaults(5, 100)


def objective() -> Objective:
    return Objective(SPEC, TASK, DATA, "cpu", tracker=None, base_seed=0)


def test_fixed_trial_returns_the_final_validation_loss() -> None:
    params = {"lr": 1e-2, "one_minus_beta1": 0.1, "one_minus_beta2": 1e-3, "epsilon": 1e-8, "decay": 1e-5}
    value = objective()(optuna.trial.FixedTrial(params))
    assert 0 < value < 1.0


def test_study_records_states_params_and_curves() -> None:
    study = optuna.create_study(direction="minimize", pruner=optuna.pruners.NopPruner())
    study.enqueue_trial(baseline_optuna_params(SPEC.space), user_attrs={BASELINE_ATTR: True})
    study.enqueue_trial({"lr": 10.0})
    study.optimize(objective(), n_trials=3)
    baseline, diverged, normal = study.trials
    assert baseline.user_attrs[PARAMS_ATTR] == BASELINE.as_dict()  # exact defaults, decay 0
    assert trial_state(baseline) == "complete" and len(baseline.user_attrs[CURVES_ATTR]["val_loss"]) == 3
    assert trial_state(diverged) == "diverged" and diverged.user_attrs["adamtune.diverged_epoch"] == 1
    assert diverged.value > baseline.value  # a diverged trial scores as an untrained model: clearly bad
    assert normal.user_attrs[STATE_ATTR] == "complete"
    assert sorted(baseline.intermediate_values) == [1, 2, 3]


def test_pruned_trial_keeps_its_partial_curve() -> None:
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):  # type: ignore[no-untyped-def]
            return True

    study = optuna.create_study(pruner=AlwaysPrune())
    study.enqueue_trial(baseline_optuna_params(SPEC.space), user_attrs={BASELINE_ATTR: True})
    study.optimize(objective(), n_trials=2)
    baseline, pruned = study.trials
    assert trial_state(baseline) == "complete"  # the baseline is never pruned
    assert trial_state(pruned) == "pruned" and len(pruned.user_attrs[CURVES_ATTR]["val_loss"]) == 1
