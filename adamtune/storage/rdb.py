"""adamtune's Optuna ``RDBStorage``: stale trials that never beat, fewer transactions, batched trial writes.

:class:`StudyStorage` is what ``backends.open_storage`` opens. It stores exactly the rows Optuna's own
``RDBStorage`` stores, so any Optuna tool reads an adamtune study; what it changes is how many
transactions, statements and reads a trial costs (row reads in ``rdb_rows.py``, writes in ``rdb_writes.py``):

* **waiting writes** (``rdb_waiting.py``): a running trial's settings, the sampler's records beside them
  and its concluding values wait for the trial's next write, at the latest its state change, which
  writes them in the *same* transaction as the new state and value (a trial's end and its tell are one
  transaction). A write that fails keeps them for its retry; this process reads the trial with them;
* **reads answered without the database**: the first read of a trial this storage just created (Optuna's
  ``ask`` reads it back at once) answers from the creation; the first read of a trial this storage just
  finished (``study.tell`` reads it back) answers from the rows read inside the finishing transaction.
  Both are what the database holds then: nothing else writes a trial in those milliseconds (another
  worker may fail a trial only once its heartbeat is a grace period old);
* **first heartbeats**: within ``first_heartbeats()``, a trial this thread creates or takes from the
  queue gets its heartbeat in that same transaction (Optuna's heartbeat model, the database's clock);
* **reads** (``rdb_shared.py``): a study's trials in 2 statements (Optuna's eager loading sends 6-7),
  shared within ``shared_reads()`` by the reads of one admission (the worker's count, Optuna's look at
  its queue, the sampler's draw), with the study's user attributes read alongside;
* study ids are remembered by name (Optuna's Hyperband builds a study object per bracket several times a
  trial, each asking the database for the id); a heartbeat is one statement (an upsert, where the
  database has one).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from types import SimpleNamespace
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from adamtune.storage import rdb_rows, rdb_writes
from adamtune.storage.connections import for_this_process
from adamtune.storage.optuna_adapter import rdb_models, session_scope, trial_id_of
from adamtune.storage.rdb_shared import SharedReads

log = logging.getLogger(__name__)

_beats = threading.local()  # .scope: (storage, set of trial ids) of this thread's first_heartbeats()
_caps = threading.local()  # .scope: (storage, target) of this thread's admission_cap()

#: How many finished trials are kept for their first read after this storage finished them.
_TOLD = 16


@dataclass
class _State:
    """What a :class:`StudyStorage` keeps in memory (``lock`` guards the rest)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    told: dict[int, FrozenTrial] = field(default_factory=dict)  # finished here, until read once
    fresh: dict[int, FrozenTrial] = field(default_factory=dict)  # created here, until read once or any write
    study_ids: dict[str, int] = field(default_factory=dict)


class StudyStorage(SharedReads):
    """Optuna's ``RDBStorage`` whose stale-trial check also covers trials that never beat (see the module
    docstring for the transactions it saves).

    Optuna counts a RUNNING trial as stale only once its heartbeat is older than the grace period; a trial
    whose worker died between creating it and recording its first heartbeat has no heartbeat at all and
    would stay RUNNING forever (and, counted as running, block the study's last places). Here such a trial
    is stale too once its start (``datetime_start``, written by the creating worker's clock) is older than
    the grace period. A worker creates its trials within ``first_heartbeats()``, so its trials have a
    heartbeat from their first moment; the rule covers other callers of ``ask``.

    Study ids are remembered by name. A name's id changes only when the study is deleted and created
    again; deleting it through this storage forgets the id (a study deleted by another process while
    this one still runs trials in it fails those trials either way).
    """

    def _st(self) -> _State:
        state = self.__dict__.get("_adamtune")
        if state is None:
            state = self.__dict__.setdefault("_adamtune", _State())
        return state

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_adamtune", None)  # a lock and this process's reads: not for another process
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        # the connections opened in this process carry its own pid in their name (connections.py)
        super().__setstate__({**state, "engine_kwargs": for_this_process(state.get("engine_kwargs") or {})})

    def get_study_id_from_name(self, study_name: str) -> int:
        known = self._st().study_ids
        if study_name not in known:
            known[study_name] = super().get_study_id_from_name(study_name)
        return known[study_name]

    def delete_study(self, study_id: int) -> None:
        state = self._st()
        with state.lock:
            state.study_ids.clear()
            state.told.clear()
        self._wrote()
        super().delete_study(study_id)

    def stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's rule (a heartbeat older than the grace period, by the database's clock) plus trials that
        never beat and started longer ago than the grace period, from one read of the running trials."""
        from datetime import timedelta

        import sqlalchemy

        models = rdb_models()
        from sqlalchemy import orm

        assert self.heartbeat_interval is not None
        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        stale = []
        with session_scope(self.scoped_session, True) as session:
            database_now = session.execute(sqlalchemy.func.now()).scalar()
            assert database_now is not None
            database_now = database_now.replace(tzinfo=None)  # naive, as Optuna compares them
            now = datetime.now()  # TrialModel.datetime_start is local naive time too
            running = (
                session.query(models.TrialModel)
                .options(orm.selectinload(models.TrialModel.heartbeats))
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialModel.study_id == study_id)
                .all()
            )
            for trial in running:
                if trial.heartbeats:
                    if database_now - trial.heartbeats[0].heartbeat > grace:
                        stale.append(trial.trial_id)
                elif trial.datetime_start is not None and now - trial.datetime_start > grace:
                    stale.append(trial.trial_id)
        return stale

    # ----- a trial's state -----

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        """Optuna's ``set_trial_state_values`` (same checks, rows and answers), with the trial's waiting writes
        first in the same transaction. A finished trial is read back inside it (answered to the next
        ``get_trial`` of it); a trial taken from the queue within ``first_heartbeats()`` gets its heartbeat."""
        from sqlalchemy.exc import IntegrityError

        taken = self._take(trial_id)
        beaten = self._beaten()
        told = None
        try:
            with session_scope(self.scoped_session) as session:
                cap = self._cap() if state == TrialState.RUNNING else None
                if cap is not None:  # taking a queued trial within an admission: only into a free place
                    rdb_writes.lock_study_places(session, rdb_rows.study_of(session, trial_id), cap)
                row = rdb_rows.trial_row(session, trial_id, for_update=True)
                self.check_trial_is_updatable(trial_id, row.state)
                if taken:
                    rdb_writes.write_pending(session, trial_id, taken)
                for objective, value in enumerate(values or ()):
                    rdb_writes.upsert_value(session, trial_id, objective, value)
                if state == TrialState.RUNNING and row.state != TrialState.WAITING:
                    return False  # the writes above are committed, as Optuna commits the values
                changes: dict[str, Any] = {"state": state}
                if state == TrialState.RUNNING:
                    changes["datetime_start"] = datetime.now()
                if state.is_finished():
                    changes["datetime_complete"] = datetime.now()
                rdb_writes.set_trial_row(session, trial_id, **changes)
                if state == TrialState.RUNNING and beaten is not None:
                    rdb_writes.upsert_heartbeat(session, trial_id)
                if state.is_finished() and rdb_writes.exact_datetimes(self.engine.dialect.name):
                    now = {**row._asdict(), **changes}
                    told = rdb_rows.frozen_trials(self, session, [SimpleNamespace(**now)])[0]
        except IntegrityError:
            if not taken:
                return False  # as Optuna
            # A waiting write conflicts with a stored row: written apart as before (Optuna ignores such a
            # conflict), so that the state change does not fail for it.
            log.warning("trial %d: its waiting writes conflict with stored rows; writing its state alone", trial_id)
            with contextlib.suppress(optuna.exceptions.OptunaError):
                self._write_waiting(trial_id, taken)
            return self.set_trial_state_values(trial_id, state, values)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            raise  # a finished or missing trial takes no writes: they are dropped
        except BaseException:
            self._give_back(trial_id, taken)
            raise
        finally:
            self._wrote()
        if beaten is not None and state == TrialState.RUNNING:
            beaten.add(trial_id)
        if told is not None:
            self._remember_told(told)
        return True

    def link_trial(self, trial_id: int, key: str, value: Any) -> None:
        """Set a user attribute of a trial in any state, finished ones included (Optuna refuses those).

        For a *link* found after the trial ended, never a result: adamtune stores here the MLflow run id of
        a trial whose run the tracker created after the trial was told (``mlflow_run.link_run_late``). This
        process's cached copy of a finished trial does not show it; a new read does.
        """
        models = rdb_models()

        with session_scope(self.scoped_session, True) as session:
            rdb_rows.trial_row(session, trial_id)  # KeyError for a missing trial, as Optuna's setters
            rdb_writes.upsert_attrs(session, models.TrialUserAttributeModel, trial_id, {key: value})

    def _remember_told(self, trial: FrozenTrial) -> None:
        state = self._st()
        with state.lock:
            state.told[trial_id_of(trial)] = trial
            while len(state.told) > _TOLD:
                del state.told[next(iter(state.told))]

    def new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Optuna's trial creation; a trial without a template (``ask``'s) in fewer statements
        (``rdb_writes.create_trial_row``), with its first heartbeat within ``first_heartbeats()``, and
        answered to the first ``get_trial`` of it (Optuna's ``ask`` reads it back at once)."""
        before = self._write_count()
        beaten = self._beaten()
        if template_trial is not None:
            try:
                frozen = super().new_trial(study_id, template_trial)
            finally:
                self._wrote()
            self._share_created(study_id, copy.deepcopy(frozen), before)
            return frozen
        try:
            row = self._create_running_trial(study_id, heartbeat=beaten is not None, cap=self._cap())
        finally:
            self._wrote()
        if beaten is not None:
            beaten.add(row.trial_id)
        state = self._st()
        with state.lock:
            state.fresh[row.trial_id] = _new_trial(row)
        self._share_created(study_id, _new_trial(row), before)
        return _new_trial(row)

    def _create_running_trial(self, study_id: int, *, heartbeat: bool, cap: int | None = None) -> rdb_rows.TrialRow:
        """A new RUNNING trial's row as Optuna's ``_create_new_trial`` makes it, tried up to 5 times as Optuna
        does (a deadlock between servers' workers is reported as ``StorageInternalError``)."""
        import random
        import time

        for attempt in range(1, 6):
            try:
                with session_scope(self.scoped_session) as session:
                    return rdb_writes.create_trial_row(session, study_id, heartbeat=heartbeat, cap=cap)
            except optuna.exceptions.StorageInternalError:
                if attempt == 5:
                    raise
                time.sleep(random.random() * 2.0)
        raise AssertionError("not reached")

    def record_heartbeat(self, trial_id: int) -> None:
        """Optuna's ``record_heartbeat`` in one statement (an upsert) where the database has one."""

        with session_scope(self.scoped_session, True) as session:
            rdb_writes.upsert_heartbeat(session, trial_id)

    @contextlib.contextmanager
    def first_heartbeats(self) -> Iterator[set[int]]:
        """Within: a RUNNING trial this thread creates (``ask``) or takes from the queue gets its first heartbeat
        in the same transaction. Yields the set of the trials that got one (the caller records the others')."""
        outer = getattr(_beats, "scope", None)
        beaten: set[int] = set()
        _beats.scope = (self, beaten)
        try:
            yield beaten
        finally:
            _beats.scope = outer

    @contextlib.contextmanager
    def admission_cap(self, target: int) -> Iterator[None]:
        """Within: a trial this thread creates, or takes from the queue, only goes into a free place of the
        study's ``target`` (checked in the creating transaction, ``rdb_writes.lock_study_places``); otherwise
        ``ask`` raises :class:`~adamtune.storage.rdb_writes.NoFreePlace` and nothing was created."""
        outer = getattr(_caps, "scope", None)
        _caps.scope = (self, target)
        try:
            yield
        finally:
            _caps.scope = outer

    def _cap(self) -> int | None:
        scope = getattr(_caps, "scope", None)
        return scope[1] if scope is not None and scope[0] is self else None

    def _beaten(self) -> set[int] | None:
        scope = getattr(_beats, "scope", None)
        return scope[1] if scope is not None and scope[0] is self else None

    # ----- reads -----

    def _wrote(self) -> None:
        state = self._st()
        with state.lock:
            state.fresh.clear()  # a created trial is answered only until this storage writes anything
        super()._wrote()

    def get_trial(self, trial_id: int) -> FrozenTrial:

        state = self._st()
        with state.lock:
            known = state.told.pop(trial_id, None) or state.fresh.pop(trial_id, None)
        if known is not None:
            return self._merged(known)
        with session_scope(self.scoped_session) as session:
            frozen = rdb_rows.frozen_trials(self, session, [rdb_rows.trial_row(session, trial_id)])[0]
        return self._merged(frozen)


def _new_trial(row: rdb_rows.TrialRow) -> FrozenTrial:
    """The FrozenTrial of a trial just created without a template, as Optuna's ``_create_new_trial`` returns it
    (and reads it back)."""
    return FrozenTrial(
        number=row.number,
        state=row.state,
        value=None,
        values=None,
        datetime_start=row.datetime_start,
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs={},
        system_attrs={},
        intermediate_values={},
        trial_id=row.trial_id,
    )


def _counted_write(name: str) -> Any:
    base = getattr(RDBStorage, name)

    def write(self: StudyStorage, *args: Any, **kwargs: Any) -> Any:
        self._wrote()
        return base(self, *args, **kwargs)

    write.__name__, write.__doc__ = name, base.__doc__
    return write


for _name in ("set_study_user_attr", "set_study_system_attr"):
    setattr(StudyStorage, _name, _counted_write(_name))
