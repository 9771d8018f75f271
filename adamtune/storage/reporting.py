"""What a running trial writes to the study database, and when: as little and as late as pruning allows.

Every ``trial.report`` and ``trial.set_user_attr`` of Optuna is its own database transaction, and every
``trial.should_prune`` reads the trial back and lets the pruner read the study. A 20-epoch trial that
did all three each epoch spent most of its bookkeeping there. :class:`TrialWriter` keeps a trial's
intermediate values and user attributes in memory and writes them in **one transaction** when the pruner
is about to decide, and once more when the trial ends (``flush``). It consults the pruner only at the
epochs where the pruner can act (:func:`decision_epochs`). So that the study still shows a trial's
progress (Optuna Dashboard, ``adamtune summary`` on a running study, a test waiting for mid-training),
the first epoch's value is written at once and buffered values never wait longer than
``FLUSH_SECONDS`` (30 s; ``ADAMTUNE_STUDY_FLUSH_SECONDS`` sets it, 0 writes every epoch): a long
trial costs one write per half minute, a short one a write or two.

Why the pruner decides exactly as before. Before it asks the pruner, the writer flushes every buffered
value, so the pruner sees this trial's whole curve so far, as it would have with a write per epoch. At
the epochs it skips, Optuna's pruners return "keep going" without reading or writing anything:

* ``MedianPruner``/``PercentilePruner``: they act at ``step >= n_warmup_steps`` on the first step of
  each ``interval_steps`` interval, and compare with *completed* trials (whose values are all written by
  then);
* ``SuccessiveHalvingPruner``: it acts only at its rung steps ``min_resource * eta**(rate + k)``, where
  it records the rung value as a system attribute that other trials compare with;
* ``HyperbandPruner``: the rung steps of the trial's bracket (a hash of the study name and the trial
  number);
* ``NopPruner``: never.

Any other pruner (or a future Optuna that changes these internals) is consulted every epoch, as before.
``tests/storage/test_reporting.py`` runs the same seeded studies both ways and checks that the same trials are
pruned at the same epochs with the same settings sampled.

The trial's final study state is the same as with a write per epoch: every epoch's intermediate value
and every attribute is written by the time the trial is told. The last of them are written *with* the
tell (``TrialWriter.flush_at_end``: in the transaction that changes the trial's state, see
``rdb.StudyStorage``), so a trial's end is one transaction; a tell that fails (the database away,
retried by ``db_errors.with_db_retry``) keeps them for its retry. Only a worker that dies mid-trial (or
between a trial's end and its tell) loses what it had not written yet; its retry re-reports the
restored curve when it resumes from a checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import optuna

from adamtune.storage.optuna_adapter import asked_frozen_trial, backend_of, decision_epochs, storage_of, trial_id_of
from adamtune.storage.rdb import StudyStorage

log = logging.getLogger(__name__)

FLUSH_SECONDS = 30.0


def flush_seconds_setting() -> float:
    """``ADAMTUNE_STUDY_FLUSH_SECONDS`` (seconds, >= 0), else ``FLUSH_SECONDS``; a bad value is ignored."""
    try:
        return max(0.0, float(os.environ.get("ADAMTUNE_STUDY_FLUSH_SECONDS", FLUSH_SECONDS)))
    except ValueError:
        log.warning("ADAMTUNE_STUDY_FLUSH_SECONDS must be a number of seconds; using %s", FLUSH_SECONDS)
        return FLUSH_SECONDS


class TrialWriter:
    """Buffers one running trial's intermediate values and user attributes; writes them in one transaction.

    ``set_attrs`` and ``report`` only buffer; ``flush`` writes what is buffered; ``should_prune(epoch)``
    flushes and asks the pruner at the epochs where it can act (else returns False at once). Works with
    any Optuna trial: on storages other than adamtune's ``StudyStorage`` (an in-memory study, a
    ``FixedTrial``) it falls back to Optuna's one-call-per-value API.
    """

    def __init__(self, trial: optuna.Trial, n_epochs: int, flush_seconds: float | None = None) -> None:
        self.trial = trial
        self.n_epochs = n_epochs
        self.flush_seconds = flush_seconds_setting() if flush_seconds is None else flush_seconds
        self._attrs: dict[str, Any] = {}
        self._values: dict[int, float] = {}
        self._epochs: frozenset[int] | None = None  # None: any epoch
        self._epochs_known = False
        self._curve_written = False
        self._last_flush = time.monotonic()

    def defer_params(self) -> None:
        """The settings the trial samples next are written with its next flush (see ``rdb.defer_params``)."""
        backend = _study_storage(self.trial)
        if backend is not None:
            backend.defer_params(trial_id_of(self.trial))

    def set_attrs(self, attrs: Mapping[str, Any]) -> None:
        self._attrs.update(attrs)

    def report(self, value: float, epoch: int) -> None:
        """Buffer epoch ``epoch``'s value; written now if it is the trial's first or the buffer is old."""
        self._values[epoch] = float(value)
        if not self._curve_written or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def decision_epochs(self) -> frozenset[int] | None:
        """The epochs at which :meth:`should_prune` asks the pruner (None: every epoch)."""
        if not self._epochs_known:
            study = getattr(self.trial, "study", None)
            pruner = getattr(study, "pruner", None)
            self._epochs = None if pruner is None else decision_epochs(pruner, study, self.trial.number, self.n_epochs)
            self._epochs_known = True
        return self._epochs

    def should_prune(self, epoch: int) -> bool:
        """Flush and ask the pruner when it can act at ``epoch``; False without a database call otherwise."""
        epochs = self.decision_epochs()
        if epochs is not None and epoch not in epochs:
            return False
        self.flush()
        return self.trial.should_prune()

    def flush(self) -> None:
        """Write the buffered values and attributes (one transaction on adamtune's storage); no-op when empty.

        Raises:
            Whatever the storage raises (the buffer is kept, so a retry writes it again).
        """
        if not self._attrs and not self._values:
            return
        write_trial(self.trial, user_attrs=self._attrs, intermediate=self._values)
        self._flushed()

    def flush_at_end(self) -> None:
        """Hand the buffered values and attributes over to be written with the trial's end, for a trial whose
        training is over and that is told next.

        On adamtune's storage they join the transaction of the trial's state change (``study.tell``, or a
        FAIL the worker records instead): the trial's end costs one transaction, and everything is written
        by the time it is told. A tell that fails keeps them for its retry; if the worker dies before the
        tell, they are lost with the trial's result (the trial is retried as stale). The trial reads with
        them at once in this process (its cached copy, and the storage's answers). On any other storage
        this is :meth:`flush`.
        """
        if not self._attrs and not self._values:
            return
        write_trial(self.trial, user_attrs=self._attrs, intermediate=self._values, at_end=True)
        self._flushed()

    def _flushed(self) -> None:
        self._curve_written = self._curve_written or bool(self._values)
        self._attrs, self._values = {}, {}
        self._last_flush = time.monotonic()


def write_trial(
    trial: optuna.Trial,
    *,
    user_attrs: Mapping[str, Any] | None = None,
    intermediate: Mapping[int, float] | None = None,
    at_end: bool = False,
) -> None:
    """Write ``user_attrs`` and ``intermediate`` values (step -> value) of a running ``trial`` together.

    One transaction on a :class:`StudyStorage` (the trial's cached copy is updated too, as Optuna's own
    setters do); ``at_end``: in the transaction of the trial's state change instead
    (``StudyStorage.hold_trial_values``). On any other storage, or a ``FixedTrial``, Optuna's
    one-call-per-value API, at once.
    """
    user_attrs, intermediate = dict(user_attrs or {}), dict(intermediate or {})
    backend = _study_storage(trial)
    cached = asked_frozen_trial(trial)
    if backend is None or cached is None:
        for key, value in user_attrs.items():
            trial.set_user_attr(key, value)
        for step, value in intermediate.items():
            trial.report(value, step)
        return
    write = backend.hold_trial_values if at_end else backend.write_trial_values
    write(trial_id_of(trial), user_attrs=user_attrs, intermediate=intermediate)
    cached.user_attrs.update(user_attrs)
    cached.intermediate_values.update(intermediate)


def _study_storage(trial: Any) -> StudyStorage | None:
    """The adamtune storage under ``trial``'s study (Optuna wraps it in a cache); None for any other."""
    study = getattr(trial, "study", None)  # a FixedTrial has none
    backend = backend_of(storage_of(study)) if study is not None else None
    return backend if isinstance(backend, StudyStorage) else None
