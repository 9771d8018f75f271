"""adamtune's RDBStorage (rdb.StudyStorage) on a real SQLite file and the PostgreSQL server: fewer reads and
transactions, the same rows and answers as Optuna's own RDBStorage (which reads the same database here, as
another process would)."""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from adamtune.storage import rdb_rows, rdb_writes
from adamtune.storage.backends import open_storage
from adamtune.storage.db_errors import is_transient_db_error, with_db_retry
from adamtune.storage.rdb import StudyStorage


@pytest.fixture
def not_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 5:30 ahead of UTC: Optuna keeps a trial's times as UTC in the database and reads them as local
    time, so a conversion missed anywhere shows (this machine runs on UTC)."""
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("postgres_url")


class Transactions:
    """Counts the transactions (commits) this thread sends through ``storage``'s engine."""

    def __init__(self, storage: StudyStorage) -> None:
        from sqlalchemy import event

        self.count = 0
        thread = threading.get_ident()

        def committed(_connection: object) -> None:
            if threading.get_ident() == thread:
                self.count += 1

        event.listen(storage.engine, "commit", committed)

    def during(self, action) -> int:  # type: ignore[no-untyped-def]
        before = self.count
        action()
        return self.count - before


def ask(study: optuna.Study) -> optuna.Trial:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize on a heartbeat storage
        return study.ask()


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
    """Every field equal, in the same order (settings, attributes), except the order of intermediate values,
    which Optuna's own read leaves to the database (by step on SQLite, as stored on PostgreSQL); ours is by step.
    """

    def fields(trial: FrozenTrial) -> str:
        found = dict(vars(trial))
        found["intermediate_values"] = sorted(found["intermediate_values"].items())
        return repr(sorted((name, repr(value)) for name, value in found.items()))

    return len(ours) == len(optunas) and all(fields(a) == fields(b) for a, b in zip(ours, optunas, strict=True))


@pytest.mark.parametrize("listed", [True, False], ids=["ids-listed", "ids-selected"])
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_trials_read_in_one_union_are_optuna_s(
    backend: str,
    listed: bool,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    not_utc: None,
) -> None:
    """Every way Optuna reads trials answers exactly what Optuna's own RDBStorage answers, on both databases,
    whether the children are selected by a list of ids (small reads) or by a SELECT of them (large ones)."""
    if not listed:
        monkeypatch.setattr(rdb_rows, "_LISTED_IDS", 1)
    url = database_url(backend, tmp_path, request)
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
    with pytest.raises(KeyError):  # as Optuna: no trial of a missing study
        storage.create_new_trial(10_000)


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


def test_shared_reads_read_the_study_s_attributes_with_its_trials(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    study.set_user_attr("target", 3)
    transactions = Transactions(storage)
    with storage.shared_reads():
        assert transactions.during(lambda: study.get_trials(deepcopy=False)) == 1
        assert transactions.during(lambda: study.user_attrs) == 0  # read with the trials
        assert study.user_attrs == {"target": 3}
        study.set_user_attr("target", 4)  # a write: read again
        assert transactions.during(lambda: study.user_attrs) == 1 and study.user_attrs == {"target": 4}
    assert transactions.during(lambda: study.user_attrs) == 1  # outside: every read reaches the database


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


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_waiting_writes_are_read_here_and_written_with_the_trial_s_end(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, not_utc: None
) -> None:
    """Deferred settings and system attributes, then values held for the end: this process reads them at once,
    Optuna's storage (another process) only once written, and the end writes them with the state change."""
    url = database_url(backend, tmp_path, request)
    storage = open_storage(url)
    other = optuna.storages.RDBStorage(url)
    study = optuna.create_study(storage=storage)
    trial = ask(study)
    trial_id = trial._trial_id
    storage.defer_params(trial_id)
    storage.defer_params(trial_id)  # idempotent: nothing waiting is dropped
    x = trial.suggest_float("x", 0.0, 1.0)
    storage.set_trial_system_attr(trial_id, "drawn", {"x": x, "pair": (1, 2)})
    assert other.get_trial(trial_id).params == {} and "drawn" not in other.get_trial(trial_id).system_attrs
    mine = storage.get_trial(trial_id)
    assert mine.params == {"x": x} and mine.system_attrs["drawn"] == {"x": x, "pair": [1, 2]}  # as JSON reads back

    storage.write_trial_values(trial_id, user_attrs={"a": 1}, intermediate={1: 0.5, 2: math.nan})
    assert _same([storage.get_trial(trial_id)], [other.get_trial(trial_id)])  # written: the same everywhere
    storage.write_trial_values(trial_id, user_attrs={"a": 2}, intermediate={2: 0.25, 3: math.inf})  # replaced
    assert other.get_trial(trial_id).intermediate_values == {1: 0.5, 2: 0.25, 3: math.inf}

    storage.hold_trial_values(trial_id, user_attrs={"a": 3, "curve": [{"epoch": 4}]}, intermediate={4: 0.125, 0: 2.0})
    assert other.get_trial(trial_id).user_attrs == {"a": 2}
    assert storage.get_trial(trial_id).user_attrs == {"a": 3, "curve": [{"epoch": 4}]}
    assert list(study.get_trials(deepcopy=False)[0].intermediate_values) == [0, 1, 2, 3, 4]  # by step, as read

    transactions = Transactions(storage)
    told: list[FrozenTrial] = []
    # Pruned: Optuna takes the value from the last intermediate value, the held one.
    assert transactions.during(lambda: told.append(study.tell(trial, state=TrialState.PRUNED))) == 2
    stored = other.get_trial(trial_id)
    assert stored.state == TrialState.PRUNED and stored.value == 0.125 and stored.user_attrs["a"] == 3
    assert _same(told, [stored])  # tell's answer is the finishing transaction's read: the database's rows


def test_a_tell_that_fails_keeps_the_waiting_writes_for_its_retry(tmp_path: Path) -> None:
    """The database is locked by another writer when the trial ends: the tell fails (transiently), the worker's
    retry (with_db_retry) tells it once the lock is gone, and nothing held for the end is lost."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_storage(url)  # creates the file in WAL mode: readers pass, a second writer waits
    storage = StudyStorage(url, engine_kwargs={"connect_args": {"timeout": 0.2}})
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.defer_params(trial._trial_id)
    x = trial.suggest_float("x", 0.0, 1.0)
    storage.hold_trial_values(trial._trial_id, user_attrs={"state": "complete"}, intermediate={1: 0.5})

    blocker = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    with pytest.raises(Exception) as failed:
        study.tell(trial, 0.5)
    assert is_transient_db_error(failed.value)
    threading.Timer(0.5, lambda: blocker.execute("COMMIT")).start()
    with_db_retry(lambda: study.tell(trial, 0.5, skip_if_finished=True), "telling", budget_seconds=30)
    blocker.close()

    stored = optuna.storages.RDBStorage(url).get_trial(trial._trial_id)
    assert stored.state == TrialState.COMPLETE and stored.value == 0.5 and stored.params == {"x": x}
    assert stored.user_attrs == {"state": "complete"} and stored.intermediate_values == {1: 0.5}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_trial_is_created_with_its_first_heartbeat_and_read_back_without_the_database(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest, not_utc: None
) -> None:
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session

    url = database_url(backend, tmp_path, request)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.5})
    transactions = Transactions(storage)

    def heartbeat(trial_id: int) -> object:
        with _create_scoped_session(storage.scoped_session) as session:
            return models.TrialHeartbeatModel.where_trial_id(trial_id, session)

    with storage.shared_reads(), storage.first_heartbeats() as beaten:  # as a worker's admission
        queued = ask(study)  # from the queue: RUNNING and its heartbeat in one transaction
        study.get_trials(deepcopy=False)  # the admission's count, which ask's look at the queue shares
        created: list[optuna.Trial] = []
        # Creation and its heartbeat are one transaction; Optuna's read of the new trial needs none.
        assert transactions.during(lambda: created.append(ask(study))) == 1
    assert beaten == {queued._trial_id, created[0]._trial_id}
    assert heartbeat(queued._trial_id) is not None and heartbeat(created[0]._trial_id) is not None
    assert _same([created[0]._cached_frozen_trial], [optuna.storages.RDBStorage(url).get_trial(created[0]._trial_id)])
    outside = ask(study)
    assert heartbeat(outside._trial_id) is None  # as Optuna's own ask


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_setting_stored_already_keeps_its_value_and_the_rest_is_written(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A waiting setting that is stored already (another process wrote it, or a write whose commit answer was
    lost is retried): the stored value stays, as in Optuna, and the rest of the transaction is written."""
    url = database_url(backend, tmp_path, request)
    storage = open_storage(url)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.defer_params(trial._trial_id)
    trial.suggest_float("x", 0.0, 1.0)
    distribution = optuna.distributions.FloatDistribution(0.0, 1.0)
    optuna.storages.RDBStorage(url).set_trial_param(trial._trial_id, "x", 0.25, distribution)
    storage.hold_trial_values(trial._trial_id, user_attrs={"state": "complete"}, intermediate={1: 0.5})
    study.tell(trial, 1.0)
    stored = optuna.storages.RDBStorage(url).get_trial(trial._trial_id)
    assert stored.state == TrialState.COMPLETE and stored.params == {"x": 0.25}
    assert stored.user_attrs == {"state": "complete"} and stored.intermediate_values == {1: 0.5}


def test_pickled_storage_leaves_its_waiting_writes_behind(tmp_path: Path) -> None:
    import pickle

    storage = StudyStorage(f"sqlite:///{tmp_path / 's.db'}")  # (open_storage's stale-trial callback has a lock)
    study = optuna.create_study(storage=storage)
    trial = study.ask()
    storage.hold_trial_values(trial._trial_id, user_attrs={"a": 1}, intermediate={})
    copy = pickle.loads(pickle.dumps(storage))
    assert copy.get_trial(trial._trial_id).user_attrs == {}  # another process: not written yet
    assert storage.get_trial(trial._trial_id).user_attrs == {"a": 1}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_trials_created_at_once_by_many_storages_get_distinct_numbers(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Creation outside any admission lock (4 storages, as 4 processes, asking at once): numbers 0..n-1."""
    url = database_url(backend, tmp_path, request)
    optuna.create_study(storage=open_storage(url), study_name="race")
    studies = [optuna.load_study(study_name="race", storage=open_storage(url)) for _ in range(4)]
    start = threading.Barrier(len(studies))

    def asks(study: optuna.Study) -> None:
        start.wait()
        for _ in range(10):
            ask(study)

    threads = [threading.Thread(target=asks, args=(study,)) for study in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    numbers = [t.number for t in optuna.storages.RDBStorage(url).get_all_trials(studies[0]._study_id)]
    assert sorted(numbers) == list(range(40))


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_admission_cap_never_creates_or_takes_a_trial_beyond_the_target(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The target is checked in the creating transaction itself: whatever an admission read before (a stale
    read, a lock lost with its connection), a full study gets no new trial and no queued one is taken."""
    storage = open_storage(database_url(backend, tmp_path, request))
    study = optuna.create_study(storage=storage, study_name="capped")
    done = ask(study)
    study.tell(done, 1.0)
    pruned = ask(study)
    study.tell(pruned, state=TrialState.PRUNED)
    failed = ask(study)
    study.tell(failed, state=TrialState.FAIL)  # a failed trial holds no place
    with storage.admission_cap(3):
        running = ask(study)  # the third place
        with pytest.raises(rdb_writes.NoFreePlace):
            ask(study)
    study.enqueue_trial({}, skip_if_exists=False)
    with storage.admission_cap(3), pytest.raises(rdb_writes.NoFreePlace):
        ask(study)  # the queued trial is not taken either
    states = [t.state for t in study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    study.tell(running, state=TrialState.FAIL)
    with storage.admission_cap(3):
        assert ask(study).number == 4  # a place freed: the queued trial is taken
    assert ask(study).number == 5  # outside an admission: no cap
