"""One heartbeat thread per worker process beats all its running trials (real SQLite storage)."""

from __future__ import annotations

import threading
import time
import warnings

import optuna
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session

from adamtune.storage.backends import open_storage
from adamtune.storage.heartbeat import Heartbeat


def beats(storage, trial_id: int):  # type: ignore[no-untyped-def]
    with _create_scoped_session(storage.scoped_session) as session:
        row = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial_id).one_or_none()
        return None if row is None else row.heartbeat


def wait_until(condition, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_all_running_trials_share_one_heartbeat_thread(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize on a heartbeat storage
        first, second = study.ask(), study.ask()
    with Heartbeat(storage, first._trial_id, 0.05), Heartbeat(storage, second._trial_id, 0.05):
        assert wait_until(lambda: beats(storage, first._trial_id) and beats(storage, second._trial_id))
        names = [t.name for t in threading.enumerate()]
        assert names.count("adamtune-heartbeat") == 1 and not any(n.startswith("heartbeat-") for n in names)
    stopped = beats(storage, first._trial_id)
    time.sleep(0.3)
    assert beats(storage, first._trial_id) == stopped  # no beat after the trial's block ended
    with Heartbeat(storage, second._trial_id, 0.05):  # the idle thread serves the next trial
        before = beats(storage, second._trial_id)
        assert wait_until(lambda: beats(storage, second._trial_id) != before)
    assert [t.name for t in threading.enumerate()].count("adamtune-heartbeat") == 1


def test_stale_trials_are_looked_for_at_most_once_per_heartbeat_interval(tmp_path, monkeypatch):
    """A dead worker's trial is failed by the first look after it went stale; looks come once per interval."""
    from datetime import timedelta

    import sqlalchemy
    from optuna.trial import TrialState

    from adamtune.storage.heartbeat import StaleCheck

    monkeypatch.setenv("ADAMTUNE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("ADAMTUNE_GRACE_SECONDS", "2")
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ask() outside optimize on a heartbeat storage
        trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    now = [100.0]
    check = StaleCheck(clock=lambda: now[0])
    assert check.run(study)  # the first call always looks
    with _create_scoped_session(storage.scoped_session) as session:  # its worker died a minute ago
        row = session.query(models.TrialHeartbeatModel).filter_by(trial_id=trial._trial_id).one()
        row.heartbeat = session.execute(sqlalchemy.func.now()).scalar() - timedelta(minutes=1)  # the database's clock
    now[0] += 0.5
    assert not check.run(study)  # within the interval: no look, the trial still counts as running
    assert storage.get_trial(trial._trial_id).state == TrialState.RUNNING
    now[0] += 0.5
    assert check.run(study)
    assert storage.get_trial(trial._trial_id).state == TrialState.FAIL
    now[0] -= 10  # a clock that went backwards never stops the looks
    assert check.run(study)
