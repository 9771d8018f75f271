"""adamtune's RDBStorage (rdb.StudyStorage) on a real SQLite file: fewer reads, the same answers."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from adamtune import rdb
from adamtune.rdb import StudyStorage
from adamtune.study import open_storage


def _varied_study(storage: StudyStorage) -> optuna.Study:
    """Trials in every state, with float/int/categorical settings, attributes, non-finite values and curves."""
    study = optuna.create_study(storage=storage, study_name="varied")
    ends = [1.0, math.inf, TrialState.PRUNED, TrialState.FAIL, -math.inf, None, 0.25]
    for number, end in enumerate(ends):
        trial = study.ask()
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        trial.suggest_int("width", 1, 9)
        trial.suggest_categorical("kind", ["a", "b", None])
        trial.set_user_attr("nested", {"k": [number, 2.5], "text": "é"})
        storage.set_trial_system_attr(trial._trial_id, "rung", number)
        for step, value in enumerate([0.5, math.inf, -math.inf, math.nan][number % 4 :]):
            trial.report(value, step)
        if isinstance(end, TrialState):
            study.tell(trial, state=end)
        elif end is not None:
            study.tell(trial, end)
    study.enqueue_trial({"lr": 0.01})  # a WAITING trial with system attributes and no params
    return study


def _same(ours: list[FrozenTrial], optunas: list[FrozenTrial]) -> bool:
    def fields(trial: FrozenTrial) -> str:
        return repr(sorted((name, repr(value)) for name, value in vars(trial).items()))

    return len(ours) == len(optunas) and all(fields(a) == fields(b) for a, b in zip(ours, optunas, strict=True))


@pytest.mark.parametrize("listed", [True, False], ids=["ids-listed", "ids-selected"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_trials_read_in_one_union_are_optuna_s(
    backend: str, listed: bool, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every way Optuna reads trials answers exactly what Optuna's own RDBStorage answers, on both databases,
    whether the children are selected by a list of ids (small reads) or by a SELECT of them (large ones)."""
    if not listed:
        monkeypatch.setattr(rdb, "_LISTED_IDS", 1)
    url = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    storage = open_storage(url)
    study = _varied_study(storage)
    plain = optuna.storages.RDBStorage(url)
    study_id = storage.get_study_id_from_name("varied")
    everything = optuna.storages.RDBStorage._get_trials(plain, study_id, None, set(), -1)
    assert len(everything) == 8 and {t.state for t in everything} == set(TrialState)
    for states in (None, [TrialState.COMPLETE], [TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING]):
        for included, greater in ((set(), -1), ({2, 3}, 4), (set(), 5), ({1}, -1)):
            expected = optuna.storages.RDBStorage._get_trials(plain, study_id, states, included, greater)
            assert _same(storage._read_trials(study_id, states, included, greater), expected), (states, included)
    assert _same([storage.get_trial(t._trial_id) for t in everything], everything)
    assert _same(study.get_trials(), everything)  # through Optuna's cached storage and this one's _get_trials
    with pytest.raises(KeyError):
        storage.get_trial(10_000)
    with pytest.raises(KeyError):
        storage._read_trials(10_000, None, set(), -1)


def test_shared_reads_answer_once_until_a_write(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 1.0})
    parent = StudyStorage._read_trials
    reads = [0]

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads[0] += 1
        return parent(self, *args, **kwargs)

    monkeypatch.setattr(StudyStorage, "_read_trials", counted)  # counts, then runs the real read
    with storage.shared_reads():
        first = study.get_trials(deepcopy=False)
        again = study.get_trials(deepcopy=False)
        assert reads[0] == 1 and [t.number for t in again] == [t.number for t in first]
        trial = study.ask()  # pops the queued trial: a write, so the next read goes to the database
        assert trial.number == 0
        after = study.get_trials(deepcopy=False)
        assert after[0].state == TrialState.RUNNING and reads[0] >= 2
    outside = reads[0]
    study.get_trials(deepcopy=False)
    study.get_trials(deepcopy=False)
    assert reads[0] == outside + 2  # outside the scope every read reaches the database


def test_shared_reads_see_writes_of_other_threads(tmp_path):
    import threading

    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    with storage.shared_reads():
        assert study.get_trials(deepcopy=False) == []
        writer = threading.Thread(target=lambda: study.enqueue_trial({"x": 2.0}))
        writer.start()
        writer.join()
        assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.WAITING]


def test_study_ids_are_remembered_and_forgotten_on_delete(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    first = optuna.create_study(study_name="s", storage=storage)
    assert storage.get_study_id_from_name("s") == first._study_id
    optuna.delete_study(study_name="s", storage=storage)
    with pytest.raises(KeyError):  # forgotten: the database is asked again
        storage.get_study_id_from_name("s")


def test_deferred_settings_arrive_with_the_next_write_or_the_end(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.defer_params(trial._trial_id)
    x = trial.suggest_float("x", 0.0, 1.0)
    assert storage.get_trial(trial._trial_id).params == {}  # held back
    storage.write_trial_values(trial._trial_id, user_attrs={"a": 1}, intermediate={})
    assert storage.get_trial(trial._trial_id).params == {"x": x}
    trial.suggest_float("y", 0.0, 1.0)  # after the write: written at once, as Optuna does
    assert set(storage.get_trial(trial._trial_id).params) == {"x", "y"}

    second = study.ask()
    storage.defer_params(second._trial_id)
    z = second.suggest_float("x", 0.0, 1.0)
    study.tell(second, 1.0)  # ends before any write: its settings are stored with its end
    assert storage.get_trial(second._trial_id).params == {"x": z}
    with pytest.raises(ValueError):  # an incompatible distribution is refused at once, as Optuna does
        third = study.ask()
        storage.defer_params(third._trial_id)
        third.suggest_int("x", 0, 3)
