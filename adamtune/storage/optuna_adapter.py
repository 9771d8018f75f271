"""Every use of Optuna's non-public names in adamtune, in one place.

Nothing else in adamtune imports a private Optuna module or touches a private attribute of an Optuna
object (``tests/project/test_architecture.py`` greps for it). Each use below says what it is for and why no
public way exists. All were checked on Optuna **4.9.0** (the lowest version ``pyproject.toml`` allows,
installed by CI's floor job from ``.ci/floor-constraints.txt``) and **5.1.0** (the newest, CI's main
job), 2026-12-05; both jobs run the study storage through Optuna's own ``StorageTestCase``.

Objects a study hands out:

* :func:`storage_of` -- ``Study._storage``: the storage a study was opened on (Optuna's cache in front of
  an RDB storage). ``Study`` exposes no storage; adamtune's workers need it for heartbeats, the
  admission lock and the stale-trial callback of the storage they were given.
* :func:`backend_of` -- ``_CachedStorage._backend``: the storage behind Optuna's cache, to call
  adamtune's own methods on its :class:`~adamtune.storage.rdb.StudyStorage` (deferred writes, the
  admission cap). ``optuna.storages.get_storage`` wraps an ``RDBStorage`` and gives no way back.
* :func:`trial_id_of` -- ``Trial._trial_id`` / ``FrozenTrial._trial_id``: the storage's id of a trial,
  which every ``BaseStorage`` method takes. Optuna has no public accessor for it.
* :func:`asked_frozen_trial` -- ``Trial._cached_frozen_trial``: the trial as ``study.ask`` read it, so
  that a value written now also shows in it (as Optuna's own setters keep it) without a read.

Pruners (:func:`decision_epochs`): the epochs at which the study's pruner can stop a trial, so that a
trial reports to Optuna only there and at its end (the full curve goes to MLflow and one attribute):
``PercentilePruner._n_warmup_steps``/``_interval_steps``, ``SuccessiveHalvingPruner._min_resource``/
``_reduction_factor``/``_min_early_stopping_rate``, ``HyperbandPruner._pruners``/
``_try_initialization``/``_get_bracket_id``. The pruners keep these settings private. If they change,
the answer is None and the trial reports every epoch, as without this.

The study storage (:mod:`adamtune.storage.rdb` and its modules), which writes and reads exactly
Optuna's rows in fewer transactions and statements:

* :func:`rdb_models` -- ``optuna.storages._rdb.models``: the ORM models of Optuna's tables (the
  storage's schema, which Optuna migrates with Alembic).
* :func:`session_scope` -- ``optuna.storages._rdb.storage._create_scoped_session``: Optuna's
  transaction scope, which translates SQLAlchemy's errors to Optuna's.
* :func:`build_frozen_trial` -- ``RDBStorage._build_frozen_trial_from_trial_model``: a ``FrozenTrial``
  from trial rows, as Optuna builds it.
* :class:`RDBStorageHooks` -- ``RDBStorage._get_stale_trial_ids``, ``_create_new_trial``,
  ``_set_trial_param`` and ``_get_trials``: the hooks that ``RDBStorage`` and its cache call; given
  public names here, so that the study storage overrides those and never a private one.
* :data:`RDB_MODELS_MODULE` -- the models' module name, preloaded by the local worker pool's fork server.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Container, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from optuna.storages import RDBStorage

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage
    from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

#: Optuna's ORM models of its tables (imported by the fork server ahead of the workers).
RDB_MODELS_MODULE = "optuna.storages._rdb.models"


# --------------------------------------------------------------------------- study and trial objects


def storage_of(study: optuna.Study) -> BaseStorage:
    """The storage ``study`` was opened on (for an RDB storage: Optuna's cache in front of it)."""
    return study._storage


def backend_of(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache (``storage`` itself when it is not cached)."""
    return getattr(storage, "_backend", storage)


def trial_id_of(trial: Any) -> int:
    """The storage id of a ``Trial`` or ``FrozenTrial``."""
    return int(trial._trial_id)


def asked_frozen_trial(trial: Any) -> FrozenTrial | None:
    """The ``FrozenTrial`` that ``study.ask`` read for ``trial`` (None for a ``FixedTrial``)."""
    return getattr(trial, "_cached_frozen_trial", None)


# --------------------------------------------------------------------------- pruners


def decision_epochs(pruner: Any, study: Any, trial_number: int, n_epochs: int) -> frozenset[int] | None:
    """The epochs (1..``n_epochs``) at which ``pruner`` can stop trial ``trial_number``; None: any epoch.

    None is the safe answer for a pruner this function does not know (or whose internals changed): the
    caller then asks it every epoch.
    """
    from optuna.pruners import HyperbandPruner, NopPruner, PercentilePruner, SuccessiveHalvingPruner

    try:
        if isinstance(pruner, NopPruner):
            return frozenset()
        if isinstance(pruner, PercentilePruner):  # MedianPruner is a PercentilePruner
            warmup, interval = int(pruner._n_warmup_steps), int(pruner._interval_steps)
            return frozenset(e for e in range(1, n_epochs + 1) if e >= warmup and (e - warmup) % interval == 0)
        if isinstance(pruner, SuccessiveHalvingPruner):
            return _rung_epochs(pruner, n_epochs)
        if isinstance(pruner, HyperbandPruner):
            if not pruner._pruners:
                pruner._try_initialization(study)
            if not pruner._pruners:  # max_resource="auto" before any trial completed
                return None
            bracket = pruner._get_bracket_id(study, _Numbered(trial_number))
            return _rung_epochs(pruner._pruners[bracket], n_epochs)
    except (AttributeError, TypeError, ValueError):  # Optuna's internals changed: ask every epoch
        log.debug("cannot tell when %s acts; asking it every epoch", type(pruner).__name__, exc_info=True)
    return None


def _rung_epochs(pruner: Any, n_epochs: int) -> frozenset[int] | None:
    minimum = pruner._min_resource
    if not isinstance(minimum, int) or minimum < 1:  # "auto": estimated from the study later
        return None
    eta, rate = int(pruner._reduction_factor), int(pruner._min_early_stopping_rate)
    steps, k = set(), 0
    while (step := minimum * eta ** (rate + k)) <= n_epochs:
        steps.add(step)
        k += 1
    return frozenset(steps)


class _Numbered:
    """The one attribute Hyperband's bracket choice reads from a trial."""

    def __init__(self, number: int) -> None:
        self.number = number


# --------------------------------------------------------------------------- the RDB storage's internals


def rdb_models() -> ModuleType:
    """Optuna's ORM models of its tables (``TrialModel``, ``TrialParamModel``, ...)."""
    from optuna.storages._rdb import models

    return models


def session_scope(scoped_session: Any, ignore_integrity_error: bool = False) -> contextlib.AbstractContextManager[Any]:
    """Optuna's transaction scope over ``RDBStorage.scoped_session``: commit at the end, roll back on an
    error, SQLAlchemy's errors raised as Optuna's (an integrity error ignored when asked)."""
    from optuna.storages._rdb.storage import _create_scoped_session

    return _create_scoped_session(scoped_session, ignore_integrity_error)


def build_frozen_trial(storage: RDBStorage, trial_model: Any) -> FrozenTrial:
    """A ``FrozenTrial`` built from a trial's rows (an object with ``TrialModel``'s attributes and relations)."""
    return storage._build_frozen_trial_from_trial_model(trial_model)


class RDBStorageHooks(RDBStorage):
    """Optuna's ``RDBStorage`` with the private hooks it (and its cache) calls given public names.

    A subclass overrides :meth:`stale_trial_ids`, :meth:`new_trial`, :meth:`write_param` and
    :meth:`read_trials` (calling ``super()`` for Optuna's own behaviour); each private hook calls its
    public name, and each public name's default is Optuna's hook.
    """

    # Optuna's hooks, routed to the public names.
    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.stale_trial_ids(study_id)

    def _create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        return self.new_trial(study_id, template_trial)

    def _set_trial_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any = None
    ) -> None:
        self.write_param(trial_id, param_name, param_value_internal, distribution, previous)

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        return self.read_trials(study_id, states, included_trial_ids, trial_id_greater_than)

    # The public names, Optuna's behaviour by default.
    def stale_trial_ids(self, study_id: int) -> list[int]:
        """The ids of the study's RUNNING trials whose heartbeat is older than the grace period."""
        return super()._get_stale_trial_ids(study_id)

    def new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> FrozenTrial:
        """Create a trial (RUNNING, or as ``template_trial`` says) and return it."""
        return super()._create_new_trial(study_id, template_trial)

    def write_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any = None
    ) -> None:
        """Write one parameter of a trial (``previous``: the study's earlier distribution of the name)."""
        super()._set_trial_param(trial_id, param_name, param_value_internal, distribution, previous)

    def read_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        """The study's trials: those in ``states`` (None: all) with ids in ``included_trial_ids`` or above
        ``trial_id_greater_than`` (what Optuna's cache asks for)."""
        return super()._get_trials(study_id, states, included_trial_ids, trial_id_greater_than)


__all__: Sequence[str] = [
    "RDB_MODELS_MODULE",
    "RDBStorageHooks",
    "asked_frozen_trial",
    "backend_of",
    "build_frozen_trial",
    "decision_epochs",
    "rdb_models",
    "session_scope",
    "storage_of",
    "trial_id_of",
]
