"""Reading a trial's rows from Optuna's tables, in as few statements as the database allows.

Used by :class:`adamtune.storage.rdb.StudyStorage` (writes are in ``rdb_writes.py``); everything goes
through Optuna's own ORM models (no SQL text), so the rows are exactly those Optuna's ``RDBStorage`` reads:

* :func:`frozen_trials`: FrozenTrials of trial rows, their five child tables read in one ``UNION ALL``
  query and built by Optuna's ``_build_frozen_trial_from_trial_model``;
* :func:`trial_row`, :func:`trial_rows`, :func:`study_of`: a trial's own row as plain columns (Optuna's
  ORM objects cost more to build than the read), or the id of its study.
"""

from __future__ import annotations

import functools
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import Any, NamedTuple

from optuna.trial import FrozenTrial, TrialState

from adamtune.storage.optuna_adapter import build_frozen_trial, rdb_models

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
    return as_trial_row(row)


def study_of(session: Any, trial_id: int) -> int:
    """The study id of trial ``trial_id`` (KeyError for a missing trial, as :func:`trial_row`)."""
    models = rdb_models()
    from sqlalchemy import select

    table = models.TrialModel.__table__
    study_id = session.execute(select(table.c.study_id).where(table.c.trial_id == trial_id)).scalar_one_or_none()
    if study_id is None:
        raise KeyError(f"No trial with trial-id {trial_id} exists.")
    return int(study_id)


def trial_rows(session: Any, conditions: list[Any]) -> list[TrialRow]:
    """The rows (as :func:`trial_row`) of the trials meeting ``conditions``, by trial id."""
    models = rdb_models()
    from sqlalchemy import select

    query = select(*_trial_columns()).where(*conditions).order_by(models.TrialModel.trial_id)
    return [as_trial_row(row) for row in session.execute(query)]


def as_trial_row(row: Any) -> TrialRow:
    """A selected row (trial_id, number, state, start, complete) as a :class:`TrialRow`, read as Optuna reads it."""
    trial_id, number, state, start, complete = row
    if datetimes_in_utc():  # as TrialModel.datetime_start/datetime_complete read them (Optuna >= 5)
        start = None if start is None else start.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
        complete = None if complete is None else complete.replace(tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
    return TrialRow(trial_id, number, state, start, complete)


@functools.cache
def datetimes_in_utc() -> bool:
    """Whether Optuna keeps a trial's datetimes as naive UTC in the database, read as local time by its model's
    properties (Optuna >= 5), rather than as naive local time (before)."""
    models = rdb_models()

    return hasattr(models.TrialModel, "_datetime_start_utc")


def _trial_columns() -> tuple[Any, ...]:
    models = rdb_models()

    trial = models.TrialModel
    if datetimes_in_utc():
        return (trial.trial_id, trial.number, trial.state, trial._datetime_start_utc, trial._datetime_complete_utc)
    return (trial.trial_id, trial.number, trial.state, trial.datetime_start, trial.datetime_complete)


@functools.cache
def _trial_row_query(for_update: bool) -> Any:
    models = rdb_models()
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
        build_frozen_trial(
            storage,
            SimpleNamespace(
                trial_id=trial.trial_id,
                number=trial.number,
                state=trial.state,
                datetime_start=trial.datetime_start,
                datetime_complete=trial.datetime_complete,
                **rows[trial.trial_id],
            ),
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
    models = rdb_models()
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
    models = rdb_models()

    if row.kind == 0:
        kind = models.TrialValueModel.TrialValueType[row.a]
        return SimpleNamespace(objective=row.n, value=row.x, value_type=kind)
    if row.kind == 1:
        return SimpleNamespace(param_id=row.n, param_name=row.a, param_value=row.x, distribution_json=row.b)
    if row.kind in (2, 3):
        return SimpleNamespace(key=row.a, value_json=row.b)
    kind = models.TrialIntermediateValueModel.TrialIntermediateValueType[row.a]
    return SimpleNamespace(step=row.n, intermediate_value=row.x, intermediate_value_type=kind)
