"""Writing a trial's rows to Optuna's tables: creating a trial, changing its row, and upserting its records.

Used by :class:`adamtune.storage.rdb.StudyStorage` (reads are in ``rdb_rows.py``); everything goes through
Optuna's own ORM models (no SQL text), so the rows are exactly those Optuna's ``RDBStorage`` writes:

* :func:`create_trial_row`, :func:`lock_study_places`: a new RUNNING trial in fewer statements than
  Optuna's, refused (:class:`NoFreePlace`) once the study holds its trial target;
* :func:`set_trial_row`: a trial's own row (state, datetimes);
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
from typing import TYPE_CHECKING, Any

from optuna import distributions
from optuna.trial import TrialState

from adamtune.storage.optuna_adapter import rdb_models
from adamtune.storage.rdb_rows import TrialRow, as_trial_row, datetimes_in_utc

if TYPE_CHECKING:
    from adamtune.storage.rdb_waiting import Pending


def set_trial_row(session: Any, trial_id: int, **columns: Any) -> None:
    """Update columns of trial ``trial_id``'s row: ``state``, and ``datetime_start``/``datetime_complete`` as
    local naive times (stored as Optuna's ``TrialModel`` stores them)."""
    models = rdb_models()
    from sqlalchemy import update

    utc = datetimes_in_utc()
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

    models = rdb_models()

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

    models = rdb_models()

    trials = models.TrialModel.__table__
    lock_study_places(session, study_id, cap)
    count = sqlalchemy.select(sqlalchemy.func.count(trials.c.trial_id)).where(trials.c.study_id == study_id)
    start = datetime.now()
    stored = start.astimezone(timezone.utc).replace(tzinfo=None) if datetimes_in_utc() else start
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
    return as_trial_row((trial_id, number, TrialState.RUNNING, stored, None))


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
    models = rdb_models()

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
    models = rdb_models()

    number, kind = models.TrialValueModel.value_to_stored_repr(value)
    row = {"trial_id": trial_id, "objective": objective, "value": number, "value_type": kind}
    _upsert(session, models.TrialValueModel, [row])


def upsert_heartbeat(session: Any, trial_id: int) -> None:
    """Record trial ``trial_id``'s heartbeat at the database's clock (Optuna's ``record_heartbeat``, one statement)."""
    import sqlalchemy

    models = rdb_models()

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
    models = rdb_models()
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
