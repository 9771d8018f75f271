"""The search's live display: it counts the trials this process finished, and reads the study only now and then."""

from __future__ import annotations

import io

import optuna
import pytest
from rich.console import Console

from adamtune.report import progress
from adamtune.report.progress import SearchProgress
from adamtune.storage.attr_keys import STATE_ATTR
from adamtune.storage.outcomes import Counts


def trial(state: optuna.trial.TrialState, value: float | None = None, outcome: str | None = None) -> object:
    attrs = {STATE_ATTR: outcome} if outcome else {}
    return optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)


def test_trials_are_counted_between_reads_of_the_study(monkeypatch: pytest.MonkeyPatch) -> None:
    bar = SearchProgress("s", 10, "val_loss", console=Console(file=io.StringIO(), force_terminal=False))
    complete = optuna.trial.TrialState.COMPLETE
    assert bar.add(trial(complete, 0.5), "minimize")  # no counts yet: the caller reads the study
    bar.update(Counts(complete=1, running=1), 0.5)
    assert not bar.add(trial(complete, 0.3), "minimize")
    assert not bar.add(trial(optuna.trial.TrialState.PRUNED), "minimize")
    assert not bar.add(trial(complete, 0.1, outcome="diverged"), "minimize")  # never the best
    assert not bar.add(trial(complete, 0.9), "minimize")
    assert bar.counts == Counts(complete=3, pruned=1, diverged=1, running=1) and bar.best == 0.3
    monkeypatch.setattr(progress, "READ_SECONDS", 0.0)
    assert bar.add(trial(complete, 0.2), "minimize")  # a read is due: other workers' trials count too


def test_a_maximised_objective_keeps_the_largest(monkeypatch: pytest.MonkeyPatch) -> None:
    bar = SearchProgress("s", 10, "val_accuracy", console=Console(file=io.StringIO(), force_terminal=False))
    bar.update(Counts(complete=1), 0.8)
    assert not bar.add(trial(optuna.trial.TrialState.COMPLETE, 0.9), "maximize")
    assert not bar.add(trial(optuna.trial.TrialState.COMPLETE, 0.7), "maximize")
    assert bar.best == 0.9 and bar.counts is not None and bar.counts.complete == 3
