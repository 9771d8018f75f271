"""Waiting writes: a running trial's writes that join its next transaction instead of each taking one.

:class:`WaitingWrites` is the part of :class:`adamtune.storage.rdb.StudyStorage` that keeps them. A trial's writes
wait (:class:`Pending`, per trial, in this process's memory):

* after ``defer_params(trial_id)``: its sampled settings and what the sampler records beside them (system
  attributes, e.g. TPE's relative params), one transaction each in Optuna, until the trial's next write;
* values handed over with ``hold_trial_values`` (a concluding trial's curve and attributes), until its
  next write, at the latest its state change.

The next write of the trial carries them: ``write_trial_values`` (one transaction for any number of user
attributes and intermediate values, where Optuna spends one each), any other write of the trial (the
waiting ones first, so the newest value of a key wins), or its state change, which
``StudyStorage.set_trial_state_values`` makes in the *same* transaction. The rules:

* a write that fails keeps them waiting, before any that came meanwhile: a retry writes them;
* a trial found finished (or missing) drops them: a finished trial takes no writes, in Optuna either;
* this process reads the trial as if they were written (:meth:`WaitingWrites._merged`, used by every
  read of ``StudyStorage``); other processes see the trial without them, as they would between Optuna's
  ``ask`` and the calls that follow it. A process that dies loses them with its trial, which its heartbeat
  then fails and re-queues.
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna import distributions
from optuna.trial import FrozenTrial

from adamtune.storage.optuna_adapter import RDBStorageHooks, session_scope, trial_id_of


@dataclass
class Pending:
    """Writes of one running trial that wait for its next transaction, newest value per key.

    ``params``: (name, internal value, distribution) in the order suggested. ``deferring``: while True,
    the trial's settings and system attributes join this instead of being written. Attribute values are
    kept as their JSON reads back.
    """

    params: list[tuple[str, float, Any]] = field(default_factory=list)
    system_attrs: dict[str, Any] = field(default_factory=dict)
    user_attrs: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    deferring: bool = False

    def __bool__(self) -> bool:
        return bool(self.params or self.system_attrs or self.user_attrs or self.intermediate)

    def add(self, user_attrs: Mapping[str, Any], intermediate: Mapping[int, float]) -> None:
        self.user_attrs.update({key: _as_json_reads(value) for key, value in user_attrs.items()})
        self.intermediate.update({int(step): float(value) for step, value in intermediate.items()})

    def newer(self, other: Pending) -> Pending:
        """These writes followed by ``other``'s (the later wins; a setting is never written twice)."""
        names = {name for name, _, _ in self.params}
        return Pending(
            params=self.params + [p for p in other.params if p[0] not in names],
            system_attrs={**self.system_attrs, **other.system_attrs},
            user_attrs={**self.user_attrs, **other.user_attrs},
            intermediate={**self.intermediate, **other.intermediate},
            deferring=self.deferring or other.deferring,
        )

    def merged(self, trial: FrozenTrial) -> FrozenTrial:
        """A copy of ``trial`` (as read from the database) with these writes applied, as Optuna's storage would
        read it back once they are written: settings appended in their order, attributes replaced in place
        or appended, intermediate values by step (as ``rdb_rows.frozen_trials`` reads them)."""
        if not self:
            return trial
        merged = copy.copy(trial)
        params, kinds = dict(trial.params), dict(trial.distributions)
        for name, value, distribution in self.params:
            if name not in params:
                params[name], kinds[name] = distribution.to_external_repr(value), distribution
        merged.params, merged.distributions = params, kinds
        merged.system_attrs = {**trial.system_attrs, **self.system_attrs}
        merged.user_attrs = {**trial.user_attrs, **self.user_attrs}
        steps = {**trial.intermediate_values, **self.intermediate}
        merged.intermediate_values = {step: steps[step] for step in sorted(steps)}
        return merged


def _as_json_reads(value: Any) -> Any:
    """``value`` as it reads back from a JSON column (tuples become lists, and so on)."""
    return json.loads(json.dumps(value))


class _Waiting:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.trials: dict[int, Pending] = {}


class WaitingWrites(RDBStorageHooks):
    """The waiting writes of :class:`adamtune.storage.rdb.StudyStorage` (see the module docstring)."""

    def _waiting(self) -> _Waiting:
        found = self.__dict__.get("_adamtune_waiting")
        if found is None:
            found = self.__dict__.setdefault("_adamtune_waiting", _Waiting())
        return found

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state.pop("_adamtune_waiting", None)  # a lock and this process's unwritten writes: not for another
        return state

    def _wrote(self) -> None:
        """Called after every write of a trial through this storage (``StudyStorage`` counts them)."""

    def write_trial_values(
        self, trial_id: int, *, user_attrs: Mapping[str, Any], intermediate: Mapping[int, float]
    ) -> None:
        """Several user attributes and intermediate values of one running trial, in one transaction, with the
        trial's waiting writes.

        The same rows as Optuna's ``set_trial_user_attr``/``set_trial_intermediate_value`` one by one (see
        ``reporting.py`` for why it matters). Raises ``UpdateFinishedTrialError`` for a finished trial;
        any other error keeps everything waiting for the trial's next write.
        """
        incoming = Pending()
        incoming.add(user_attrs, intermediate)
        self._write_waiting(trial_id, incoming)

    def hold_trial_values(
        self, trial_id: int, *, user_attrs: Mapping[str, Any], intermediate: Mapping[int, float]
    ) -> None:
        """Like ``write_trial_values``, but the values wait for the trial's next write: at the latest its state
        change, whose transaction then writes them first (a concluding trial's curve and attributes, so that
        its end and its tell are one transaction). This process reads the trial with them at once."""
        waiting = self._waiting()
        with waiting.lock:
            waiting.trials.setdefault(trial_id, Pending()).add(user_attrs, intermediate)

    def defer_params(self, trial_id: int) -> None:
        """Hold trial ``trial_id``'s next ``set_trial_param`` and ``set_trial_system_attr`` calls until its next
        write (idempotent: calling it again drops nothing).

        The settings (and what the sampler records beside them, e.g. TPE's relative params) then reach
        the database with that write (``write_trial_values``) or, at the latest, with the trial's state
        change, in one transaction instead of one each. Until then other processes see the trial RUNNING
        without them, as they do between Optuna's ``ask`` and its ``suggest`` calls anyway. Distribution
        compatibility with an earlier setting of the name is checked at once, as Optuna does.
        """
        waiting = self._waiting()
        with waiting.lock:
            waiting.trials.setdefault(trial_id, Pending()).deferring = True

    def _defer(self, trial_id: int, add: Callable[[Pending], None]) -> bool:
        """Apply ``add`` to the trial's waiting writes if they defer its settings; False (nothing done) if not."""
        waiting = self._waiting()
        with waiting.lock:
            pending = waiting.trials.get(trial_id)
            if pending is None or not pending.deferring:
                return False
            add(pending)
            return True

    def write_param(
        self, trial_id: int, param_name: str, param_value_internal: float, distribution: Any, previous: Any = None
    ) -> None:
        def add(pending: Pending) -> None:
            # a deferring trial runs in this process (its state is RUNNING): the distribution is checked now,
            # as Optuna checks it (a trial's state first, which Optuna's own write below does itself)
            if previous is not None:
                distributions.check_distribution_compatibility(previous, distribution)
            pending.params.append((param_name, param_value_internal, distribution))

        if self._defer(trial_id, add):
            return
        self._write_waiting(trial_id, Pending())
        super().write_param(trial_id, param_name, param_value_internal, distribution, previous)
        self._wrote()

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if self._defer(trial_id, lambda p: p.system_attrs.__setitem__(key, _as_json_reads(value))):
            return
        self._write_waiting(trial_id, Pending())
        super().set_trial_system_attr(trial_id, key, value)
        self._wrote()

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._write_waiting(trial_id, Pending())  # first: a waiting value of the same key is older
        super().set_trial_user_attr(trial_id, key, value)
        self._wrote()

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        self._write_waiting(trial_id, Pending())
        super().set_trial_intermediate_value(trial_id, step, intermediate_value)
        self._wrote()

    def _take(self, trial_id: int, incoming: Pending | None = None) -> Pending:
        """The trial's waiting writes followed by ``incoming``, no longer waiting (the caller writes them, or
        gives them back with :meth:`_give_back`)."""
        waiting = self._waiting()
        with waiting.lock:
            taken = waiting.trials.pop(trial_id, None)
        if taken is None:
            return incoming if incoming is not None else Pending()
        return taken.newer(incoming) if incoming is not None else taken

    def _give_back(self, trial_id: int, taken: Pending) -> None:
        """Writes that failed wait again, before any that came meanwhile."""
        if not taken and not taken.deferring:
            return
        waiting = self._waiting()
        with waiting.lock:
            meanwhile = waiting.trials.get(trial_id)
            waiting.trials[trial_id] = taken.newer(meanwhile) if meanwhile is not None else taken

    def _write_waiting(self, trial_id: int, incoming: Pending) -> None:
        """Write the trial's waiting writes and ``incoming`` in one transaction (nothing to write: no transaction)."""

        from adamtune.storage import rdb_rows, rdb_writes

        taken = self._take(trial_id, incoming)
        if not taken:
            self._give_back(trial_id, taken)  # a deferral with nothing deferred yet goes on
            return
        try:
            with session_scope(self.scoped_session, True) as session:
                self.check_trial_is_updatable(trial_id, rdb_rows.trial_row(session, trial_id).state)
                rdb_writes.write_pending(session, trial_id, taken)
        except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
            raise  # a finished or missing trial takes no writes: they are dropped
        except BaseException:
            self._give_back(trial_id, taken)
            raise
        finally:
            self._wrote()

    def _merged(self, trial: FrozenTrial) -> FrozenTrial:
        """``trial`` as this process reads it: with its waiting writes (a copy), if it has any. A trial read as
        finished (failed as stale by another process, say) drops them: they can never be written."""
        waiting = self._waiting()
        with waiting.lock:
            pending = waiting.trials.get(trial_id_of(trial))
            if pending is not None and trial.state.is_finished():
                del waiting.trials[trial_id_of(trial)]
                return trial
            return pending.merged(trial) if pending else trial
