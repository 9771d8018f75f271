"""adamtune's Optuna ``RDBStorage``: stale trials that never beat, fewer round trips, batched trial writes.

:class:`StudyStorage` is what ``study.open_storage`` opens. It stores exactly the rows Optuna's own
``RDBStorage`` stores, so any Optuna tool reads an adamtune study; what it changes is how many
transactions and reads a trial costs:

* ``write_trial_values``: a running trial's user attributes and intermediate values in one transaction
  (used by ``reporting.TrialWriter``; Optuna writes each value in its own);
* study ids are remembered by name (Optuna's Hyperband builds a study object per bracket several times a
  trial, each asking the database for the id);
* ``defer_params(trial_id)``: the trial's sampled settings (one transaction each in Optuna) wait for the
  trial's next ``write_trial_values`` (or its end) and go in that transaction;
* reading trials (``get_trial``, and ``_get_trials`` behind ``study.get_trials``): the trial rows, then
  all their params, values, attributes and intermediate values in *one* ``UNION ALL`` query, where
  Optuna's eager loading sends one query per table (2 round trips instead of 6-7; each is ~0.7-1 ms on
  a local PostgreSQL). The FrozenTrials are built by Optuna's own ``_build_frozen_trial_from_trial_model``;
* ``shared_reads()``: inside it, this thread's repeated reads of a study's trials are answered once until
  this storage writes (the worker's admission reads the trials, then Optuna's ``ask`` reads them again
  for the queue, and the sampler twice more).
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from optuna import distributions
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

_shared = threading.local()  # .storage, .writes, .answers: the shared_reads() scope of this thread


class StudyStorage(RDBStorage):
    """Optuna's ``RDBStorage`` whose stale-trial check also covers trials that never beat.

    Optuna counts a RUNNING trial as stale only once its heartbeat is older than the grace period; a trial
    whose worker died between creating it and recording its first heartbeat has no heartbeat at all and
    would stay RUNNING forever (and, counted as running, block the study's last places). Here such a trial
    is stale too once its start (``datetime_start``, written by the creating worker's clock) is older than
    the grace period. The worker records the first heartbeat within the admission lock, milliseconds after
    creating the trial, so a live trial is never caught by this rule.

    It also remembers study ids by name: Optuna's Hyperband builds a study object per bracket several
    times a trial, each asking the database for the id. A name's id changes only when the study is
    deleted and created again; deleting it through this storage forgets the id (a study deleted by
    another process while this one still runs trials in it fails those trials either way).
    """

    def get_study_id_from_name(self, study_name: str) -> int:
        known = self.__dict__.setdefault("_study_ids", {})
        if study_name not in known:
            known[study_name] = super().get_study_id_from_name(study_name)
        return known[study_name]

    def delete_study(self, study_id: int) -> None:
        self.__dict__.get("_study_ids", {}).clear()
        self._wrote()
        super().delete_study(study_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's rule (a heartbeat older than the grace period, by the database's clock) plus trials that
        never beat and started longer ago than the grace period, from one read of the running trials."""
        from datetime import datetime, timedelta

        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session
        from sqlalchemy import orm

        assert self.heartbeat_interval is not None
        grace = timedelta(seconds=self.grace_period or 2 * self.heartbeat_interval)
        stale = []
        with _create_scoped_session(self.scoped_session, True) as session:
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

    def write_trial_values(
        self, trial_id: int, *, user_attrs: Mapping[str, Any], intermediate: Mapping[int, float]
    ) -> None:
        """Several user attributes and intermediate values of one running trial, in one transaction.

        The same rows as Optuna's ``set_trial_user_attr``/``set_trial_intermediate_value`` one by one,
        with one read of the trial and one of each table instead of a transaction per value (see
        ``reporting.py`` for why it matters). Raises ``UpdateFinishedTrialError`` for a finished trial.
        """
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        values, attrs = models.TrialIntermediateValueModel, models.TrialUserAttributeModel
        self._wrote()
        params = self._pending_params().pop(trial_id, [])
        with _create_scoped_session(self.scoped_session, True) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            self.check_trial_is_updatable(trial_id, trial.state)
            for name, value, distribution in params:
                session.add(
                    models.TrialParamModel(
                        trial_id=trial_id,
                        param_name=name,
                        param_value=value,
                        distribution_json=distributions.distribution_to_json(distribution),
                    )
                )
            if intermediate:  # one read of the rows to update, then one insert/update per value
                rows = session.query(values).filter(values.trial_id == trial_id, values.step.in_(list(intermediate)))
                stored = {row.step: row for row in rows}
                for step, value in intermediate.items():
                    number, kind = values.intermediate_value_to_stored_repr(value)
                    row = stored.get(step)
                    if row is None:
                        session.add(
                            values(
                                trial_id=trial_id, step=step, intermediate_value=number, intermediate_value_type=kind
                            )
                        )
                    else:
                        row.intermediate_value, row.intermediate_value_type = number, kind
            if user_attrs:
                rows = session.query(attrs).filter(attrs.trial_id == trial_id, attrs.key.in_(list(user_attrs)))
                stored_attrs = {row.key: row for row in rows}
                for key, value in user_attrs.items():
                    text = json.dumps(value)
                    if key in stored_attrs:
                        stored_attrs[key].value_json = text
                    else:
                        session.add(attrs(trial_id=trial_id, key=key, value_json=text))

    def defer_params(self, trial_id: int) -> None:
        """Hold trial ``trial_id``'s next ``set_trial_param`` calls until its next write of values.

        The settings then reach the database with that write (``write_trial_values``) or, at the latest,
        just before the trial's state changes (``set_trial_state_values``), in one transaction instead of
        one each. Until then other processes see the trial RUNNING without those settings, as they do
        between Optuna's ``ask`` and its ``suggest`` calls anyway. Distribution compatibility is checked
        at once, as Optuna does.
        """
        self._pending_params()[trial_id] = []

    def _pending_params(self) -> dict[int, list[tuple[str, float, Any]]]:
        return self.__dict__.setdefault("_params_waiting", {})

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any = None
    ) -> None:
        waiting = self._pending_params().get(trial_id)
        if waiting is None:
            super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous)
            return
        if previous is not None:
            distributions.check_distribution_compatibility(previous, distribution)
        self._wrote()
        waiting.append((param_name, param_value_internal, distribution))

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if self._pending_params().get(trial_id):  # a trial that ends before its first write keeps its settings
            with contextlib.suppress(Exception):
                self.write_trial_values(trial_id, user_attrs={}, intermediate={})
        self._pending_params().pop(trial_id, None)
        self._wrote()
        return super().set_trial_state_values(trial_id, state, values)

    @contextlib.contextmanager
    def shared_reads(self) -> Iterator[None]:
        """Within: this thread's identical reads of a study's trials return the first answer, until a write.

        Any write through this storage (from any thread of this process) ends the sharing for the reads
        after it. Writes of other processes are not seen by a shared answer: use it only around a few
        reads milliseconds apart that would act on the same snapshot anyway (the admission lock's
        critical section, where no other worker creates or starts trials).
        """
        outer = getattr(_shared, "storage", None)
        _shared.storage, _shared.writes, _shared.answers = self, self._write_count(), {}
        try:
            yield
        finally:
            _shared.storage = outer

    def _write_count(self) -> int:
        return self.__dict__.get("_writes", 0)

    def _wrote(self) -> None:
        self.__dict__["_writes"] = self._write_count() + 1

    def get_trial(self, trial_id: int) -> FrozenTrial:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session)
            return self._frozen(session, [trial])[0]

    def _read_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[FrozenTrial]:
        """Optuna's ``RDBStorage._get_trials`` (same arguments, same answer) in 2 round trips instead of 7."""
        import sqlalchemy
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        wanted = {i for i in included_trial_ids if i <= trial_id_greater_than}
        trial_model = models.TrialModel
        conditions = [trial_model.study_id == study_id]
        if states is not None:
            conditions.append(trial_model.state.in_(list(states)))
        if wanted and trial_id_greater_than > -1:
            conditions.append(
                sqlalchemy.or_(trial_model.trial_id.in_(wanted), trial_model.trial_id > trial_id_greater_than)
            )
        elif trial_id_greater_than > -1:
            conditions.append(trial_model.trial_id > trial_id_greater_than)
        with _create_scoped_session(self.scoped_session) as session:
            try:
                trials = session.query(trial_model).filter(*conditions).order_by(trial_model.trial_id).all()
                if not trials:  # a study that has trials exists: only an empty answer needs the check
                    models.StudyModel.find_or_raise_by_id(study_id, session)  # KeyError for a missing study
                # the children of the same trials, selected again by the database (no long list of ids)
                return self._frozen(session, trials, sqlalchemy.select(trial_model.trial_id).where(*conditions))
            except sqlalchemy.exc.OperationalError:  # too many ids for one IN (Optuna's own fallback)
                session.rollback()
                return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    def _frozen(self, session: Any, trials: list[Any], ids: Any = None) -> list[FrozenTrial]:
        """FrozenTrials of ``trials`` (TrialModel rows), their child rows read in one query.

        ``ids``: a SELECT of exactly those trials' ids (default: their ids as a list).
        """
        rows: dict[int, dict[str, list[Any]]] = {trial.trial_id: {name: [] for name in _CHILDREN} for trial in trials}
        if trials:
            numbers = [trial.trial_id for trial in trials]
            if ids is None or len(numbers) <= _LISTED_IDS:  # the prepared statement, with the ids bound
                result = session.execute(_listed_children_query(), {"ids": numbers})
            else:
                result = session.execute(_children_query(ids))
            for row in result:
                rows[row.trial_id][_CHILDREN[row.kind]].append(_child(row))
        return [
            self._build_frozen_trial_from_trial_model(
                SimpleNamespace(
                    trial_id=trial.trial_id,
                    number=trial.number,
                    state=trial.state,
                    datetime_start=trial.datetime_start,
                    datetime_complete=trial.datetime_complete,
                    **rows[trial.trial_id],
                )
            )
            for trial in trials
        ]

    def _get_trials(
        self, study_id: int, states: Any, included_trial_ids: set[int], trial_id_greater_than: int
    ) -> list[FrozenTrial]:
        if getattr(_shared, "storage", None) is not self:
            return self._read_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        if _shared.writes != self._write_count():
            _shared.writes, _shared.answers = self._write_count(), {}
        wanted = {i for i in included_trial_ids if i <= trial_id_greater_than}
        answer = _shared.answers.get((study_id, _states_key(states)))
        if answer is not None:
            known, greater, trials = answer
            # It holds every trial above `greater` and those of `known`: enough if nothing else is wanted.
            if trial_id_greater_than >= greater and all(i in known or i > greater for i in wanted):
                return [t for t in trials if t._trial_id in wanted or t._trial_id > trial_id_greater_than]
        trials = self._read_trials(study_id, states, included_trial_ids, trial_id_greater_than)
        _shared.answers[(study_id, _states_key(states))] = (wanted, trial_id_greater_than, trials)
        return list(trials)


#: The child tables of a trial, by the ``kind`` column of :func:`_children_query`, named as Optuna's
#: ``TrialModel`` relationships that ``_build_frozen_trial_from_trial_model`` reads.
_CHILDREN = ("values", "params", "user_attributes", "system_attributes", "intermediate_values")


#: Up to this many trials, their children are selected by a list of ids bound to a statement built once
#: (building the union costs more than running it); more go by a SELECT of their ids (no long lists).
_LISTED_IDS = 500


@functools.cache
def _listed_children_query() -> Any:
    """:func:`_children_query` for the ids bound as the expanding parameter ``ids``, built once."""
    from sqlalchemy import bindparam

    return _children_query(bindparam("ids", expanding=True))


def _children_query(trial_ids: Any) -> Any:
    """One ``UNION ALL`` of the five child tables' rows of ``trial_ids`` (a SELECT of ids, or a bound
    expanding parameter), as rows (trial_id, kind, n, x, a, b).

    ``kind`` indexes :data:`_CHILDREN`; ``n`` is the objective / param id / attribute id / step, ``x`` the
    number, ``a`` a name or an enum's name, ``b`` JSON text. Sorted by trial, kind and ``n``.
    """
    from optuna.storages._rdb import models
    from sqlalchemy import Float, Integer, String, Text, cast, literal, null, select, union_all

    def branch(kind: int, table: Any, n: Any, x: Any, a: Any, b: Any) -> Any:
        return select(
            table.trial_id.label("trial_id"),
            literal(kind, Integer).label("kind"),
            cast(n, Integer).label("n"),
            cast(x, Float).label("x"),
            cast(a, String).label("a"),
            cast(b, Text).label("b"),
        ).where(table.trial_id.in_(trial_ids))

    value, param = models.TrialValueModel, models.TrialParamModel
    user, system, step = (
        models.TrialUserAttributeModel,
        models.TrialSystemAttributeModel,
        models.TrialIntermediateValueModel,
    )
    query = union_all(
        branch(0, value, value.objective, value.value, value.value_type, null()),
        branch(1, param, param.param_id, param.param_value, param.param_name, param.distribution_json),
        branch(2, user, user.trial_user_attribute_id, null(), user.key, user.value_json),
        branch(3, system, system.trial_system_attribute_id, null(), system.key, system.value_json),
        branch(4, step, step.step, step.intermediate_value, step.intermediate_value_type, null()),
    ).subquery()
    return select(query).order_by(query.c.trial_id, query.c.kind, query.c.n)


def _child(row: Any) -> SimpleNamespace:
    """One child row as the attributes Optuna's model of its table has (enum names back to enums)."""
    from optuna.storages._rdb import models

    if row.kind == 0:
        kind = models.TrialValueModel.TrialValueType[row.a]
        return SimpleNamespace(objective=row.n, value=row.x, value_type=kind)
    if row.kind == 1:
        return SimpleNamespace(param_id=row.n, param_name=row.a, param_value=row.x, distribution_json=row.b)
    if row.kind in (2, 3):
        return SimpleNamespace(key=row.a, value_json=row.b)
    kind = models.TrialIntermediateValueModel.TrialIntermediateValueType[row.a]
    return SimpleNamespace(step=row.n, intermediate_value=row.x, intermediate_value_type=kind)


def _states_key(states: Any) -> tuple[int, ...] | None:
    return None if states is None else tuple(sorted(TrialState(s).value for s in states))


def _counted_write(name: str) -> Any:
    base = getattr(RDBStorage, name)

    def write(self: StudyStorage, *args: Any, **kwargs: Any) -> Any:
        self._wrote()
        return base(self, *args, **kwargs)

    write.__name__, write.__doc__ = name, base.__doc__
    return write


for _name in (
    "create_new_trial",
    "set_trial_param",
    "set_trial_intermediate_value",
    "set_trial_user_attr",
    "set_trial_system_attr",
    "set_study_user_attr",
    "set_study_system_attr",
):
    setattr(StudyStorage, _name, _counted_write(_name))
