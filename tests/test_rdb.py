"""adamtune's RDBStorage (rdb.StudyStorage) on a real SQLite file: fewer reads, the same answers."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from adamtune.study import open_storage


def test_shared_reads_answer_once_until_a_write(tmp_path, monkeypatch):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 1.0})
    parent = optuna.storages.RDBStorage._get_trials
    reads = [0]

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads[0] += 1
        return parent(self, *args, **kwargs)

    monkeypatch.setattr(optuna.storages.RDBStorage, "_get_trials", counted)  # counts, then runs the real read
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
