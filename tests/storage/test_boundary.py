"""A worker's trial boundary (admit, draw, begin, conclude, tell) on a real SQLite file and the PostgreSQL server:
the transactions each step costs, and the settings drawn, against Optuna's own ask/suggest/tell.

Transactions are counted with SQLAlchemy's commit event (they do not depend on the machine's load); the
bounds are what issue 14 brought them to (from 13 per trial on the serial path to 4: admit 2, tell 2), so
a change that adds a round trip at the boundary fails here.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from adamtune.core.signals import Interrupts
from adamtune.storage.backends import open_storage
from adamtune.storage.reporting import TrialWriter
from adamtune.trials.worker import Worker

TRIALS = 14  # TPE's joint draw starts after its 10 startup trials


def loss(params: dict[str, float]) -> float:
    return abs(math.log10(params["lr"]) + 2.5) + params["width"] / 10


def space(trial: optuna.Trial) -> dict[str, float]:
    return {"lr": trial.suggest_float("lr", 1e-5, 1.0, log=True), "width": trial.suggest_float("width", 0.0, 1.0)}


def study_on(storage: Any, name: str) -> optuna.Study:
    sampler = optuna.samplers.TPESampler(seed=3, constant_liar=True)  # as algorithms.SAMPLERS["tpe"]
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=optuna.pruners.NopPruner())
    study.enqueue_trial({"lr": 1e-3, "width": 0.5})  # a queued first trial, as the baseline
    return study


class Commits:
    def __init__(self, storage: Any) -> None:
        from sqlalchemy import event

        self.count, thread = 0, threading.get_ident()

        def committed(_connection: object) -> None:
            self.count += threading.get_ident() == thread

        event.listen(storage.engine, "commit", committed)

    def of(self, action: Callable[[], Any]) -> tuple[Any, int]:
        before = self.count
        result = action()
        return result, self.count - before


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_boundary_costs_four_transactions_and_draws_what_optuna_draws(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    storage = open_storage(url)
    study = study_on(storage, "ours")
    worker = Worker(study, objective=None, n_trials=TRIALS)  # type: ignore[arg-type]  # only its storage steps
    commits = Commits(storage)
    steps: list[dict[str, int]] = []
    with Interrupts() as interrupts:
        for _ in range(TRIALS):
            admission, admit = commits.of(lambda: worker._admit(interrupts))
            trial = admission.trial
            writer = TrialWriter(trial, 2)
            writer.defer_params()
            params, draw = commits.of(lambda t=trial: space(t))
            writer.set_attrs({"seed": 1})
            _, begin = commits.of(writer.flush)  # settings, the sampler's record and the attributes together
            writer.report(loss(params), 1)
            writer.report(loss(params), 2)
            writer.set_attrs({"state": "complete"})
            _, conclude = commits.of(writer.flush_at_end)
            frozen, tell = commits.of(lambda t=trial, p=params: worker._tell(t, TrialState.COMPLETE, loss(p)))
            assert frozen.state == TrialState.COMPLETE and frozen.user_attrs["state"] == "complete"
            steps.append({"admit": admit, "draw": draw, "begin": begin, "conclude": conclude, "tell": tell})
    steady = steps[2:]  # the first admission also looks for stale trials, the second pops no queue
    assert all(s["draw"] == 0 and s["conclude"] == 0 and s["begin"] == 1 for s in steady), steps
    assert all(s["admit"] <= 2 and s["tell"] <= 2 for s in steady), steps

    # Optuna's own storage and its own ask/suggest/tell draw the same settings from the same seed.
    plain = optuna.storages.RDBStorage(url)
    reference = study_on(plain, "optuna's")
    for _ in range(TRIALS):
        trial = reference.ask()
        reference.tell(trial, loss(space(trial)))
    ours = [(t.number, t.params, t.value, t.state) for t in study.get_trials()]
    assert ours == [(t.number, t.params, t.value, t.state) for t in reference.get_trials()]
    assert all(t.user_attrs == {"seed": 1, "state": "complete"} for t in plain.get_all_trials(study._study_id))


def test_a_draw_that_fails_is_left_to_the_trial_s_suggest(tmp_path: Path) -> None:
    """A sampler that raises while drawing at admission: the trial is admitted, and its suggest raises as before."""

    class Broken(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
            raise ValueError("broken sampler")

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage, sampler=Broken())
    worker = Worker(study, objective=None, n_trials=1)  # type: ignore[arg-type]
    with Interrupts() as interrupts, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        admission = worker._admit(interrupts)
    assert admission.trial is not None
    with pytest.raises(ValueError, match="broken sampler"):
        space(admission.trial)
