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
