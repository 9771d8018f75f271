"""The rows of a trial in Optuna's tables, read and written in as few statements as the database allows.

Used by :class:`adamtune.storage.rdb.StudyStorage`; everything goes through Optuna's own ORM models (no SQL text),
so the rows are exactly those Optuna's ``RDBStorage`` reads and writes:

* :func:`frozen_trials`: FrozenTrials of trial rows, their five child tables read in one ``UNION ALL``
  query and built by Optuna's ``_build_frozen_trial_from_trial_model``;
* :func:`trial_row`, :func:`trial_rows`, :func:`set_trial_row`: a trial's own row as plain columns (Optuna's
  ORM objects cost more to build than the read);
* :func:`write_pending`: a trial's waiting writes (``rdb_waiting.Pending``: settings, system and user
  attributes, intermediate values) as one statement per table, upserts where Optuna's own storage upserts
  (``INSERT ... ON CONFLICT DO UPDATE`` on SQLite >= 3.24 and PostgreSQL; a read and one write per row on
  other databases, as Optuna does there);
* :func:`upsert_value`, :func:`upsert_heartbeat`: a trial's objective value and its heartbeat, one
  statement each on those databases.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple

from optuna import distributions
from optuna.trial import FrozenTrial, TrialState

if TYPE_CHECKING:
    from adamtune.storage.rdb_waiting import Pending

#: The child tables of a trial, by the ``kind`` column of :func:`_children_query`, named as Optuna's
#: ``TrialModel`` relationships that ``_build_frozen_trial_from_trial_model`` reads.
_CHILDREN = ("values", "params", "user_attributes", "system_attributes", "intermediate_values")

#: Up to this many trials, their children are selected by a list of ids bound to a statement built once
#: (building the union costs more than running it); more go by a SELECT of their ids (no long lists).
_LISTED_IDS = 500


class TrialRow(NamedTuple):
    """A trial's own row, its datetimes as Optuna's ``TrialModel`` attributes read them (naive local time)."""

    trial_id: int
    number: int
    state: TrialState
    datetime_start: datetime | None
    datetime_complete: datetime | None


def trial_row(session: Any, trial_id: int, *, for_update: bool = False) -> TrialRow:
    """Trial ``trial_id``'s row, without the ORM's object machinery (the read costs a third of Optuna's
    ``find_or_raise_by_id``); ``for_update`` locks it as Optuna does before a state change.

    Raises:
        KeyError: no such trial (Optuna's error and words).
    """
    row = session.execute(_trial_row_query(for_update), {"trial_id": trial_id}).one_or_none()
    if row is None:
        raise KeyError(f"No trial with trial-id {trial_id} exists.")
    return _trial_row(row)


def study_of(session: Any, trial_id: int) -> int:
    """The study id of trial ``trial_id`` (KeyError for a missing trial, as :func:`trial_row`)."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    table = models.TrialModel.__table__
    study_id = session.execute(select(table.c.study_id).where(table.c.trial_id == trial_id)).scalar_one_or_none()
    if study_id is None:
        raise KeyError(f"No trial with trial-id {trial_id} exists.")
    return int(study_id)


def trial_rows(session: Any, conditions: list[Any]) -> list[TrialRow]:
    """The rows (as :func:`trial_row`) of the trials meeting ``conditions``, by trial id."""
    from optuna.storages._rdb import models
    from sqlalchemy import select

    query = select(*_trial_columns()).where(*conditions).order_by(models.TrialModel.trial_id)
    return [_trial_row(row) for row in session.execute(query)]


def set_trial_row(session: Any, trial_id: int, **columns: Any) -> None:
    """Update columns of trial ``trial_id``'s row: ``state``, and ``datetime_start``/``datetime_complete`` as
    local naive times (stored as Optuna's ``TrialModel`` stores them)."""
    from optuna.storages._rdb import models
    from sqlalchemy import update

    utc = _datetimes_in_utc()
    for name in ("datetime_start", "datetime_complete"):
        if utc and columns.get(name) is not None:
            columns[name] = columns[name].astimezone(timezone.utc).replace(tzinfo=None)
    table = models.TrialModel.__table__
    session.execute(update(table).where(table.c.trial_id == trial_id).values(**columns))


class NoFreePlace(Exception):
    """The study already holds its trial target in running and finished trials: no trial was created."""


def lock_study_places(session: Any, study_id: int, cap: int | None) -> None:
    """Lock study ``study_id``'s row (``FOR UPDATE``, as Optuna does before creating a trial) and, with a
    ``cap``, refuse when its RUNNING, COMPLETE and PRUNED trials (running plus finished, as the worker counts
    them) are ``cap`` or more.

    The check is in the transaction that then creates (or takes from the queue) the trial, so whatever the
    caller read before, and whatever happened to the admission lock's connection meanwhile, a study never
    gets a trial beyond its target: the creations of one study are serialized by this row lock on a
    server, and by the database's single write lock on SQLite.

    Raises:
        KeyError: no such study (Optuna's error). NoFreePlace: the study is full.
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    studies, trials = models.StudyModel.__table__, models.TrialModel.__table__
    locked = sqlalchemy.select(studies.c.study_id).where(studies.c.study_id == study_id).with_for_update()
    if session.execute(locked).first() is None:
        raise KeyError(getattr(models, "NOT_FOUND_MSG", f"No study with id {study_id}."))
    if cap is None:
        return
    taken = sqlalchemy.select(sqlalchemy.func.count(trials.c.trial_id)).where(
        trials.c.study_id == study_id,
        trials.c.state.in_([TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED]),
    )
    if session.execute(taken).scalar_one() >= cap:
        raise NoFreePlace(f"study {study_id} holds its target of {cap} running and finished trials")


def create_trial_row(session: Any, study_id: int, *, heartbeat: bool, cap: int | None = None) -> TrialRow:
    """Create a RUNNING trial of study ``study_id`` with no settings or attributes (what Optuna's ``ask``
    creates), and with its first heartbeat if ``heartbeat``; returns its row.

    Optuna's ``_create_new_trial`` without a template, in fewer statements. As Optuna, the study's row is
    locked first (``FOR UPDATE``: it serializes the creations of a study's trials on a server). Optuna then
    inserts the trial, counts the study's trials with a smaller id as its number and updates the row; here
    the row is inserted with its number counted by a subquery of that same ``INSERT``: the study's trials
    as the statement starts, which are exactly those with a smaller id, because the statement runs either
    under that lock (PostgreSQL) or holding the database's only write lock (SQLite, whose lock is taken as
    the statement starts). 2 statements (3 with the heartbeat) where Optuna sends 4.

    With a ``cap`` (the study's trial target, within an admission), no trial is created once the study
    holds that many running and finished trials (:func:`lock_study_places`).

    Raises:
        KeyError: no such study (Optuna's error). NoFreePlace: the study is full (``cap``).
    """
    import sqlalchemy
    from optuna.storages._rdb import models

    trials = models.TrialModel.__table__
    lock_study_places(session, study_id, cap)
    count = sqlalchemy.select(sqlalchemy.func.count(trials.c.trial_id)).where(trials.c.study_id == study_id)
    start = datetime.now()
    stored = start.astimezone(timezone.utc).replace(tzinfo=None) if _datetimes_in_utc() else start
    insert = trials.insert().values(
        number=count.scalar_subquery(), study_id=study_id, state=TrialState.RUNNING, datetime_start=stored
    )
    if session.get_bind().dialect.insert_returning:
        trial_id, number = session.execute(insert.returning(trials.c.trial_id, trials.c.number)).one()
    else:
        trial_id = session.execute(insert).inserted_primary_key[0]
        number = session.execute(sqlalchemy.select(trials.c.number).where(trials.c.trial_id == trial_id)).scalar_one()
    if heartbeat:
        session.execute(models.TrialHeartbeatModel.__table__.insert().values(trial_id=trial_id))  # the database's clock
    return _trial_row((trial_id, number, TrialState.RUNNING, stored, None))


def _trial_row(row: Any) -> TrialRow:
    trial_id, number, state, start, complete = row
    if _datetimes_in_utc():  # as TrialModel.datetime_start/datetime_complete read them (Optuna >= 5)
        start = None if start is None else start.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
        complete = None if complete is None else complete.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
    return TrialRow(trial_id, number, state, start, complete)


@functools.cache
def _datetimes_in_utc() -> bool:
    """Whether Optuna keeps a trial's datetimes as naive UTC in the database, read as local time by its model's
    properties (Optuna >= 5), rather than as naive local time (before)."""
    from optuna.storages._rdb import models

    return hasattr(models.TrialModel, "_datetime_start_utc")


def _trial_columns() -> tuple[Any, ...]:
    from optuna.storages._rdb import models

    trial = models.TrialModel
    if _datetimes_in_utc():
        return (trial.trial_id, trial.number, trial.state, trial._datetime_start_utc, trial._datetime_complete_utc)
    return (trial.trial_id, trial.number, trial.state, trial.datetime_start, trial.datetime_complete)


@functools.cache
def _trial_row_query(for_update: bool) -> Any:
    from optuna.storages._rdb import models
    from sqlalchemy import bindparam, select

    statement = select(*_trial_columns()).where(models.TrialModel.trial_id == bindparam("trial_id"))
    return statement.with_for_update() if for_update else statement


def frozen_trials(storage: Any, session: Any, trials: list[Any], ids: Any = None) -> list[FrozenTrial]:
    """FrozenTrials of ``trials`` (TrialModel rows, or objects with their columns), children read in one query.

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
        storage._build_frozen_trial_from_trial_model(
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


def write_pending(session: Any, trial_id: int, pending: Pending) -> None:
    """Write ``pending`` for trial ``trial_id`` in ``session`` (whose transaction the caller commits).

    The caller has checked that the trial exists and is updatable. Attributes and intermediate values
    replace stored ones of the same key or step. A setting already stored keeps its stored value, as in
    Optuna (whose insert fails and is ignored), but here the rest of the transaction is written: a write
    retried after a commit whose answer was lost (a connection cut) repeats its settings harmlessly. (On
    databases without upserts the insert fails with ``IntegrityError`` as Optuna's does.) One statement
    per table with rows to write, each built once per database and run with the rows as its parameters
    (an ``executemany``).
    """
    from optuna.storages._rdb import models

    params = [
        {
            "trial_id": trial_id,
            "param_name": name,
            "param_value": value,
            "distribution_json": distributions.distribution_to_json(distribution),
        }
        for name, value, distribution in pending.params
    ]
    if params:
        session.connection().execute(_param_insert(session.get_bind().dialect.name), params)
    for model, attrs in (
        (models.TrialSystemAttributeModel, pending.system_attrs),
        (models.TrialUserAttributeModel, pending.user_attrs),
    ):
        upsert_attrs(session, model, trial_id, attrs)
    steps = models.TrialIntermediateValueModel
    rows = []
    for step, value in pending.intermediate.items():
        number, kind = steps.intermediate_value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "step": step, "intermediate_value": number, "intermediate_value_type": kind})
    _upsert(session, steps, rows)


def upsert_attrs(session: Any, model: Any, trial_id: int, attrs: dict[str, Any]) -> None:
    """Set attributes of a trial (``model``: Optuna's user or system attribute model), one statement."""
    rows = [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]
    _upsert(session, model, rows)


def upsert_value(session: Any, trial_id: int, objective: int, value: float) -> None:
    """Set objective ``objective``'s value of a trial (Optuna's ``_set_trial_value_without_commit``, one statement)."""
    from optuna.storages._rdb import models

    number, kind = models.TrialValueModel.value_to_stored_repr(value)
    row = {"trial_id": trial_id, "objective": objective, "value": number, "value_type": kind}
    _upsert(session, models.TrialValueModel, [row])


def upsert_heartbeat(session: Any, trial_id: int) -> None:
    """Record trial ``trial_id``'s heartbeat at the database's clock (Optuna's ``record_heartbeat``, one statement)."""
    import sqlalchemy
    from optuna.storages._rdb import models

    statement = _upsert_statement(session.get_bind().dialect.name, models.TrialHeartbeatModel)
    if statement is not None:
        session.connection().execute(statement, {"trial_id": trial_id})
        return
    beat = models.TrialHeartbeatModel
    row = beat.where_trial_id(trial_id, session, True)
    if row is None:
        session.add(beat(trial_id=trial_id))
    else:
        row.heartbeat = session.execute(sqlalchemy.func.now()).scalar_one()


#: Per model: its unique key (besides ``trial_id``) and the columns an upsert replaces.
_UPSERTS = {
    "trial_user_attributes": ("key", ("value_json",)),
    "trial_system_attributes": ("key", ("value_json",)),
    "trial_intermediate_values": ("step", ("intermediate_value", "intermediate_value_type")),
    "trial_values": ("objective", ("value", "value_type")),
    "trial_heartbeats": (None, ("heartbeat",)),
}


def _upsert(session: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` of ``model``, replacing the columns of rows whose unique key is stored already."""
    if not rows:
        return
    statement = _upsert_statement(session.get_bind().dialect.name, model)
    if statement is None:  # another database: one read of the rows there, then an insert or update per row
        _upsert_by_rows(session, model, rows)
        return
    session.connection().execute(statement, rows)


@functools.cache
def _param_insert(dialect: str) -> Any:
    """The insert of a trial's settings: with ``ON CONFLICT DO NOTHING`` where the database has it."""
    from optuna.storages._rdb import models
    from sqlalchemy import insert

    table = models.TrialParamModel.__table__
    statement = _dialect_insert(dialect)
    if statement is None:
        return insert(table)
    return statement(table).on_conflict_do_nothing(index_elements=[table.c.trial_id, table.c.param_name])


def _dialect_insert(dialect: str) -> Any:
    """The dialect's ``insert`` construct with ``ON CONFLICT`` clauses (SQLite >= 3.24, PostgreSQL); None if none."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        return insert
    if dialect == "sqlite" and sqlite3.sqlite_version_info >= (3, 24, 0):
        from sqlalchemy.dialects.sqlite import insert

        return insert
    return None


@functools.cache
def _upsert_statement(dialect: str, model: Any) -> Any:
    """The dialect's ``INSERT ... ON CONFLICT DO UPDATE`` for ``model`` (see ``_UPSERTS``), built once; None on
    databases where Optuna upserts by rows (all but SQLite >= 3.24 and PostgreSQL)."""
    import sqlalchemy

    insert = _dialect_insert(dialect)
    if insert is None:
        return None
    table = model.__table__
    key, columns = _UPSERTS[table.name]
    statement = insert(table)
    if key is None:  # the heartbeat: the database's clock, on insert and on update
        statement = statement.values(heartbeat=sqlalchemy.func.now())
        return statement.on_conflict_do_update(
            index_elements=[table.c.trial_id], set_={"heartbeat": sqlalchemy.func.now()}
        )
    return statement.on_conflict_do_update(
        index_elements=[table.c.trial_id, table.c[key]],
        set_={column: statement.excluded[column] for column in columns},
    )


def _upsert_by_rows(session: Any, model: Any, rows: list[dict[str, Any]]) -> None:
    key, columns = _UPSERTS[model.__table__.name]
    trial_id = rows[0]["trial_id"]
    stored = {
        getattr(row, key): row
        for row in session.query(model).filter(
            model.trial_id == trial_id, getattr(model, key).in_([r[key] for r in rows])
        )
    }
    for row in rows:
        existing = stored.get(row[key])
        if existing is None:
            session.add(model(**row))
        else:
            for column in columns:
                setattr(existing, column, row[column])


def exact_datetimes(dialect: str) -> bool:
    """Whether ``dialect`` keeps a Python datetime to the microsecond (so a trial built from the values just
    written equals the trial read back): SQLite (text) and PostgreSQL (``timestamp``) do; MySQL's
    ``DATETIME`` drops the fraction."""
    return dialect in ("sqlite", "postgresql")
