"""A worker's admission step: under the study's admission lock, create the next trial(s), or say wait or stop.

Exact counts. Before each trial a worker takes the study's admission lock (``admission.admission_lock``:
a file lock for SQLite, an advisory lock for PostgreSQL), fails stale trials of dead workers (it looks
at most once per heartbeat interval, ``heartbeat.StaleCheck``), counts finished and running trials, and
creates its trial with ``study.ask()`` only while
``finished + running < n_trials``; the new trial is RUNNING (and has a heartbeat) before the lock is
released, so the next worker counts it. Hence the study never holds more than ``n_trials`` finished
trials. When ``finished < n_trials <= finished + running`` the worker does not exit but waits: if one of
the running trials fails (an error, or its worker dies and the heartbeat marks it stale and re-queues
it), a place opens and a live worker takes it, so the study still reaches its count.

The sampler draws each new trial's settings here, under the lock (:func:`_draw_settings`), and a trial
that a failed ``ask`` left RUNNING goes back to the queue (:func:`_hand_back`). The loop around this step
is :class:`~adamtune.trials.worker.Worker`'s.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from adamtune.storage.admission import admission_lock
from adamtune.storage.attr_keys import SETTINGS_ATTR
from adamtune.storage.db_errors import is_transient_db_error, with_db_retry
from adamtune.storage.optuna_adapter import backend_of, storage_of, trial_id_of
from adamtune.storage.outcomes import count_trials
from adamtune.storage.rdb import StudyStorage
from adamtune.storage.rdb_writes import NoFreePlace
from adamtune.trials.budget_check import TrialBudget, check_budget, end_trial_phase

if TYPE_CHECKING:
    from adamtune.core.signals import Interrupts
    from adamtune.storage.heartbeat import StaleCheck
    from adamtune.storage.outcomes import Counts

log = logging.getLogger(__name__)

#: How the log names what ended a trial phase early (``budget_check.TrialBudget.ended``).
ENDED_BY = {
    "time": "the time budget is down to what the confirmation stage needs",
    "converged": "the search converged (--stop-when-converged: more search is unlikely to pay)",
}


@dataclass(frozen=True)
class Admission:
    """What the admission step decided: a trial to run, or wait (``trial`` None), or stop (``done``)."""

    counts: Counts
    target: int
    trial: optuna.Trial | None = None
    done: bool = False
    more: tuple[optuna.Trial, ...] = ()  # further trials admitted with ``trial`` (batched workers)
    budget: TrialBudget = field(default_factory=TrialBudget)  # the time budget's phase end, the auto space's size

    @property
    def trials(self) -> list[optuna.Trial]:
        return [] if self.trial is None else [self.trial, *self.more]


def admit(
    study: optuna.Study,
    interrupts: Interrupts,
    *,
    read_target: Callable[[], int],
    batch_trials: int,
    stale_check: StaleCheck,
    held: list[optuna.Trial],
    epochs: int = 1,
    direction: str = "minimize",
) -> Admission:
    """Under the admission lock: fail stale trials, count, create up to ``batch_trials`` trials in free places.

    ``read_target`` reads the study's trial target (with the trials, in the same transaction); the trials created
    are put in ``held`` (the worker's trials admitted and not yet told) before the lock is released.

    Stale trials are looked for at most once per heartbeat interval (``stale_check``): a trial is stale only
    after the longer grace period, so a dead worker's trial is found at most one interval later. Each new
    trial gets its first heartbeat in the transaction that creates it (``rdb.first_heartbeats``; otherwise
    right after, still under the lock), and its settings are drawn by the sampler here
    (:func:`_draw_settings`), from the trials this admission read. A time budget or the stop rule may end
    the trial phase here (``budget_check.py``: the stored target is lowered to the trials finished or
    running); ``epochs`` and ``direction`` are the study's, for their estimates.
    """
    storage = storage_of(study)
    backend = backend_of(storage)
    ours = isinstance(backend, StudyStorage)
    # The count below, ask's look for queued trials and the sampler read the trials within milliseconds
    # under the lock: one database read serves those that no write separates (rdb.shared_reads).
    shared = backend.shared_reads() if ours else nullcontext()
    beats = backend.first_heartbeats() if ours else nullcontext(set[int]())
    with interrupts.critical(), admission_lock(storage, study.study_name), shared, beats as beaten:
        stale_check.run(study)
        trials = study.get_trials(deepcopy=False)
        target = read_target()  # read with the trials, in the same transaction (rdb_shared.shared_reads)
        counts = count_trials(trials)
        if counts.finished >= target:
            return Admission(counts, target, done=True)
        settings = study.user_attrs.get(SETTINGS_ATTR) or {}
        budget = check_budget(trials, counts, target, settings, epochs, direction)
        if budget.ended is not None:
            target = end_trial_phase(study, settings, counts, budget.ended)
            log.info("%s: no new trials", ENDED_BY[budget.ended])
            return Admission(counts, target, done=counts.finished >= target, budget=budget)
        if counts.finished + counts.running >= target:
            return Admission(counts, target, budget=budget)
        running_before = {trial_id_of(t) for t in trials if t.state == TrialState.RUNNING}
        asked: list[optuna.Trial] = []
        # The storage checks the target again in each creating transaction: a lost lock (its connection
        # cut) or a stale read above can then cost a wait, never a trial beyond the target.
        capped = backend.admission_cap(target) if ours else nullcontext()
        try:
            try:
                with warnings.catch_warnings(), capped:
                    # Optuna warns about asking outside Study.optimize on a storage with heartbeats; this
                    # worker records the heartbeats itself (see Heartbeat): the warning does not apply.
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                    # Never more than the free places: each asked trial is RUNNING before the lock is released.
                    for _ in range(max(1, min(batch_trials, target - counts.finished - counts.running))):
                        asked.append(study.ask())
            except NoFreePlace:
                if not asked:
                    return Admission(counts, target)  # full after all: wait, as for a place taken
            for trial in asked:
                _draw_settings(study, trial)
        except Exception as exc:
            if is_transient_db_error(exc):
                with_db_retry(lambda: _hand_back(study, running_before), "handing back a half-created trial")
            raise
        held[:] = asked
        for trial in asked:  # retried on its own: repeating the whole admission would create more trials
            if trial_id_of(trial) not in beaten:
                with_db_retry(lambda t=trial: storage.record_heartbeat(trial_id_of(t)), "recording a heartbeat")
        return Admission(counts, target, asked[0], more=tuple(asked[1:]), budget=budget)


def _draw_settings(study: optuna.Study, trial: optuna.Trial) -> None:
    """Let the sampler draw ``trial``'s settings jointly now (Optuna's ``Trial.relative_params``, which it
    otherwise draws at the trial's first ``suggest``), under the admission lock.

    It reads the study's trials: here those of this admission (``rdb.shared_reads``, plus the trials
    just created), where at the first ``suggest`` it would read them again milliseconds later. What it
    records beside them (TPE's relative params, for other workers' constant liar) waits for the
    trial's first write, with its settings (``rdb.defer_params``). ``suggest`` then takes the drawn
    values; a one-worker search draws exactly what it drew before. A draw that fails for any reason
    but the database is left to the first ``suggest``, which draws again and fails the trial as before.
    """
    backend = backend_of(storage_of(study))
    if isinstance(backend, StudyStorage):
        backend.defer_params(trial_id_of(trial))
    try:
        trial.relative_params  # noqa: B018  (a property that draws and keeps the values)
    except Exception as exc:
        if is_transient_db_error(exc):
            raise
        log.debug("trial %d: the sampler's draw is left to its first suggest", trial.number, exc_info=True)


def _hand_back(study: optuna.Study, running_before: set[int]) -> None:
    """Return to the queue (WAITING) trials that a failed ``ask`` made RUNNING before it broke.

    ``ask`` creates (or pops) the trial, then lets the sampler read the study; if the database fails
    in between, the trial would stay RUNNING with no heartbeat and nobody to finish it. Under the
    admission lock no other worker starts trials, so the RUNNING trials that were not running before
    are ours. WAITING is the state of a queued trial: the next ``ask`` picks it up again, with its
    fixed params if it had any (a re-queued baseline stays the baseline).
    """
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_id_of(trial) not in running_before:
            storage_of(study).set_trial_state_values(trial_id_of(trial), TrialState.WAITING)
            log.warning("trial %d: handed back to the queue after a database error while creating it", trial.number)
