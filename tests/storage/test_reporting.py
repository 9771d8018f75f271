"""The batched study writes (reporting.TrialWriter) prune exactly the trials a write per epoch prunes.

Each case runs the same seeded study twice on a real SQLite file through adamtune's storage: once with
Optuna's ``trial.report`` + ``trial.should_prune`` every epoch, once through ``TrialWriter`` (buffered
values, the pruner asked only at its decision epochs, the last values written with the tell). The sampled
settings, the states, the epoch each pruned trial stopped at and every stored intermediate value must be
identical.
"""

from __future__ import annotations

import math

import optuna
import pytest

from adamtune.storage.algorithms import PRUNERS
from adamtune.storage.backends import open_storage
from adamtune.storage.optuna_adapter import decision_epochs
from adamtune.storage.reporting import TrialWriter, write_trial

EPOCHS = 20
TRIALS = 30


def curve(lr: float, noise: float, epoch: int) -> float:
    """A deterministic learning curve: better for lr near 1e-2, with a per-trial wobble."""
    quality = abs(math.log10(lr) + 2.0)
    return quality + 1.0 / epoch + 0.05 * math.sin(epoch * noise)


def run_study(url: str, pruner: optuna.pruners.BasePruner, *, batched: bool, name: str) -> list[tuple]:
    storage = open_storage(url)
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=optuna.samplers.TPESampler(seed=7), pruner=pruner
    )
    for _ in range(TRIALS):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-5, 1.0, log=True)
        noise = trial.suggest_float("noise", 0.1, 3.0)
        writer = TrialWriter(trial, EPOCHS) if batched else None
        stopped = None
        for epoch in range(1, EPOCHS + 1):
            value = curve(lr, noise, epoch)
            if writer is not None:
                writer.report(value, epoch)
                prune = writer.should_prune(epoch)
            else:
                trial.report(value, epoch)
                prune = trial.should_prune()
            if prune:
                stopped = epoch
                break
        if writer is not None:  # the end's values are written with the tell (one transaction), as conclude does
            writer.set_attrs({"last": stopped or EPOCHS})
            writer.flush_at_end()
        else:
            trial.set_user_attr("last", stopped or EPOCHS)
        if stopped is None:
            study.tell(trial, curve(lr, noise, EPOCHS))
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    return [
        (t.number, t.state.name, t.params, t.user_attrs, dict(t.intermediate_values))
        for t in optuna.load_study(study_name=name, storage=storage).get_trials()
    ]


@pytest.mark.parametrize(
    "make_pruner",
    [
        pytest.param(lambda: PRUNERS["hyperband"](EPOCHS), id="hyperband"),
        pytest.param(lambda: PRUNERS["median"](EPOCHS), id="median"),
        pytest.param(lambda: PRUNERS["sha"](EPOCHS), id="sha"),
        pytest.param(
            lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=4, interval_steps=3),
            id="median-interval",
        ),
        pytest.param(
            lambda: optuna.pruners.HyperbandPruner(min_resource=2, max_resource=EPOCHS, reduction_factor=2),
            id="hyperband-eta2",
        ),
        pytest.param(lambda: optuna.pruners.ThresholdPruner(upper=2.5), id="unknown-pruner"),
    ],
)
def test_batched_writes_prune_the_same_trials(tmp_path, make_pruner, request):
    # The same study name in two files: Hyperband's bracket of a trial is a hash of the name and number.
    every_epoch = run_study(f"sqlite:///{tmp_path / 'every.db'}", make_pruner(), batched=False, name="s")
    batched = run_study(f"sqlite:///{tmp_path / 'batched.db'}", make_pruner(), batched=True, name="s")
    assert batched == every_epoch
    states = {state for _, state, *_ in batched}
    if request.node.callspec.id != "unknown-pruner":
        assert "PRUNED" in states and "COMPLETE" in states  # the case exercises pruning at all


def test_decision_epochs_are_the_pruners_rungs(tmp_path):
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    assert decision_epochs(optuna.pruners.NopPruner(), study, 0, 20) == frozenset()
    median = optuna.pruners.MedianPruner(n_warmup_steps=5, interval_steps=5)
    assert decision_epochs(median, study, 0, 20) == {5, 10, 15, 20}
    sha = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    assert decision_epochs(sha, study, 0, 20) == {1, 3, 9}
    assert decision_epochs(optuna.pruners.SuccessiveHalvingPruner(), study, 0, 20) is None  # "auto"
    assert decision_epochs(optuna.pruners.ThresholdPruner(upper=1.0), study, 0, 20) is None


def test_writer_asks_no_database_between_rungs(tmp_path):
    """Past the first epoch, the writer neither writes nor asks the pruner between rungs; it flushes at one."""
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.MedianPruner(n_warmup_steps=5, interval_steps=5))
    trial = study.ask()
    writer = TrialWriter(trial, 20)
    for epoch in range(1, 5):
        writer.report(float(epoch), epoch)
        assert writer.should_prune(epoch) is False
    # The first epoch is written at once (the study shows the trial training); 2-4 wait for the rung.
    assert storage.get_trial(trial._trial_id).intermediate_values == {1: 1.0}
    writer.report(5.0, 5)
    writer.should_prune(5)
    assert storage.get_trial(trial._trial_id).intermediate_values == {e: float(e) for e in range(1, 6)}


def test_a_buffer_never_waits_longer_than_the_flush_interval(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.NopPruner())
    monkeypatch.setenv("ADAMTUNE_STUDY_FLUSH_SECONDS", "0")
    trial = study.ask()
    writer = TrialWriter(trial, 5)
    for epoch in range(1, 4):
        writer.report(float(epoch), epoch)
        assert writer.should_prune(epoch) is False
        assert storage.get_trial(trial._trial_id).intermediate_values == {e: float(e) for e in range(1, epoch + 1)}


def test_write_trial_overwrites_and_keeps_the_cached_copy(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    write_trial(trial, user_attrs={"a": 1, "b": [1, 2]}, intermediate={1: 0.5, 2: float("nan")})
    write_trial(trial, user_attrs={"a": 2}, intermediate={2: 0.25, 3: float("inf")})
    stored = storage.get_trial(trial._trial_id)
    assert stored.user_attrs == {"a": 2, "b": [1, 2]}
    assert stored.intermediate_values == {1: 0.5, 2: 0.25, 3: float("inf")}
    assert trial.user_attrs == {"a": 2, "b": [1, 2]}
    study.tell(trial, 1.0)
    with pytest.raises(RuntimeError):  # a finished trial cannot be written, as with Optuna's own setters
        write_trial(trial, user_attrs={"a": 3})


def test_write_trial_on_other_storages_uses_optunas_api():
    study = optuna.create_study()  # in-memory
    trial = study.ask()
    write_trial(trial, user_attrs={"a": 1}, intermediate={1: 2.0})
    assert study.trials[0].user_attrs == {"a": 1} and study.trials[0].intermediate_values == {1: 2.0}
    fixed = optuna.trial.FixedTrial({})
    write_trial(fixed, user_attrs={"a": 1}, intermediate={1: 2.0})
    assert fixed.user_attrs == {"a": 1}
