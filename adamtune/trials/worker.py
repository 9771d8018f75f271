"""Workers: load a task's data once, then loop admit → train → tell until the study has its trials.

A worker is one process on one device. It joins a study by name, so any number of workers on any number
of machines can share one study database. ``n_trials`` (stored on the study by the latest ``search``, and
re-read before every trial) is a study-wide total of *finished* trials (complete + pruned + diverged).

Exact counts: before each trial a worker takes the study's admission lock, counts finished and running
trials and creates its trial only in a free place (``admission.py``); while the remaining places are
taken by other workers' running trials it waits (``waiting.py``), in case one of them fails and must be
replaced, so the study never holds more than ``n_trials`` finished trials and still reaches its count.

Why not ``study.optimize``: it asks for a trial without such a lock, and its heartbeat thread dies on the
first database error. This module runs the same ask → objective → tell steps itself, with a heartbeat
thread that survives database outages and bounded retries (``db_errors.with_db_retry``) around every storage
call outside the objective.

Interruptions: SIGTERM (and SIGINT, where the worker owns the terminal) become ``KeyboardInterrupt``,
deferred while a trial is being created or told, so no trial is ever left RUNNING: the running trial is
told FAIL and re-queued with the same settings (an interruption says nothing about them; a re-queued
baseline stays the baseline), its MLflow run is closed as failed by the objective, and the interrupt
propagates (exit 130).
A second signal while stopping is ignored. A SIGKILL leaves the trial RUNNING until its heartbeat is
``GRACE_SECONDS`` old; then the next worker to start a trial fails it, re-queues it and closes its run.

Where a trial trains is its objective's trainer's business (``trainer.py``: this process, or a trainer
process beside it). Trials that fail with errors are logged and counted by ``failures.py`` (too many in a
row stop the worker). Signals are handled by ``signals.Interrupts``, heartbeats by ``heartbeat.Heartbeat``,
devices by ``devices.py``; a worker is assembled by ``launch/worker_setup.py``; several local worker processes
are run by ``pool.run_pool``.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.errors import ContractError
from adamtune.core.signals import Interrupts
from adamtune.storage.admission import admission_lock
from adamtune.storage.attr_keys import RUN_ID_ATTR, SETTINGS_ATTR
from adamtune.storage.db_errors import is_transient_db_error, with_db_retry
from adamtune.storage.heartbeat import Heartbeat, StaleCheck
from adamtune.storage.optuna_adapter import storage_of, trial_id_of
from adamtune.storage.outcomes import count_trials
from adamtune.storage.stale_trials import RetryStaleTrial, requeue_trial
from adamtune.trials.admission import Admission, admit
from adamtune.trials.failures import FailureLog, FailureStreak
from adamtune.trials.waiting import WAIT_POLL_SECONDS, WaitPauses

if TYPE_CHECKING:
    from adamtune.confirm.stage import ConfirmRun
    from adamtune.storage.outcomes import Counts
    from adamtune.trials.objective import Objective

log = logging.getLogger(__name__)


#: Exit code of a worker process stopped by SIGTERM/SIGINT (as the CLI's Ctrl-C).
INTERRUPTED_EXIT = 130


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs.

    ``name`` is recorded on every trial and MLflow run (``adamtune.worker``), ``label`` prefixes the
    worker's log lines; ``index`` offsets the sampler's seed so that workers of one seeded search do not
    draw identical settings; ``threads`` (None: torch's default) caps torch's CPU threads.
    ``tracking_uri`` None means MLflow's default store.
    """

    storage_url: str
    study_name: str
    device: str = "cpu"
    tracking: bool = True
    tracking_uri: str | None = None
    data_dir: Path | None = None
    seed: int | None = None
    name: str = "worker-0"
    threads: int | None = None
    label: str = "w0"
    index: int = 0
    system_metrics: bool = False
    checkpoint_store: str | None = None  # None: $ADAMTUNE_CHECKPOINT_STORE, else next to the study database


@dataclass
class Worker:
    """Runs trials of one study on one device, with the task's data already loaded there.

    ``n_trials`` is the target when the study stores none; the study's stored target (``SETTINGS_ATTR``),
    re-read before each trial, wins. ``batch_trials`` > 1 admits up to that many trials at once (never
    more than the free places) and trains them as one vectorised model (``batch_worker.py``).
    """

    study: optuna.Study
    objective: Objective
    n_trials: int
    wait_poll_seconds: float = WAIT_POLL_SECONDS
    handle_sigint: bool = True
    #: Called with each confirmation run this worker finished (see :mod:`adamtune.confirm.stage`).
    on_confirm_run: Callable[[ConfirmRun], None] | None = None
    #: What the worker does once the study has its trials: the confirmation stage
    #: (:func:`adamtune.confirm.stage.run_stage`, which ``launch.worker_setup`` sets), called with this
    #: worker, its interrupts and :attr:`on_confirm_run`; True when the stage is decided, False when the trial
    #: target was raised meanwhile. None: the worker stops at the target.
    after_target: Callable[[Worker, Interrupts, Callable[[ConfirmRun], None] | None], bool] | None = None
    #: ``time.monotonic()`` when this worker first found the trial target reached (the stage's start).
    stage_started: float | None = None
    #: Called once, when this worker first finds the trial target reached (before the confirmation stage).
    on_target: Callable[[], None] | None = None
    batch_trials: int = 1
    #: When this worker last looked for stale trials (see ``_admit``).
    _stale_check: StaleCheck = field(default_factory=StaleCheck, init=False, repr=False)
    #: The trials this worker admitted and has not yet told: failed and re-queued if it is interrupted
    #: anywhere between their admission and their end (``_release_held``).
    _held: list[optuna.Trial] = field(default_factory=list, init=False, repr=False)
    #: The lines of this worker's failed trials: the first traceback in full, then one line each.
    _failure_log: FailureLog = field(default_factory=FailureLog, init=False, repr=False)

    def run(self, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
        """Run trials until the study holds its target number of finished ones, then the confirmation stage.

        Waits (polling the study) while the remaining places are taken by other workers' running trials,
        in case one of them fails and must be replaced.

        Args:
            on_trial: called with the study and each trial this worker ran (any final state).

        Returns:
            The number of trials this worker ran.

        Raises:
            TooManyFailures: ``failures.MAX_CONSECUTIVE_FAILURES`` trials in a row raised exceptions (database
                outages excluded).
            ContractError: the task's ``fit`` broke its contract (reported nothing, or not the objective); the
                trial it ran is recorded as failed.
            StorageError: the database stayed unreachable for longer than the retry budget.
            KeyboardInterrupt: SIGTERM (or Ctrl-C), after the running trial was recorded as FAIL.
        """
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # its multi-line database warnings: ours are one line
        signals = (signal.SIGTERM, signal.SIGINT) if self.handle_sigint else (signal.SIGTERM,)
        with Interrupts(signals) as interrupts:
            try:
                return self._loop(interrupts, on_trial)
            except KeyboardInterrupt:
                # An interrupt can land between a trial's admission and the start of its run, where no
                # handler of the run owns it yet: whatever this worker still holds RUNNING ends here.
                with interrupts.critical():
                    self._release_held()
                raise

    def _loop(self, interrupts: Interrupts, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None) -> int:
        """The body of :meth:`run`: admit, run, tell, until the target; then the confirmation stage."""
        ran, failures = 0, FailureStreak()
        waiting_since: int | None = None
        longest = min(
            self.wait_poll_seconds, float(storage_of(self.study).get_heartbeat_interval() or WAIT_POLL_SECONDS)
        )
        pauses = WaitPauses(longest)
        while True:
            interrupts.raise_pending()
            admission = with_db_retry(lambda: self._admit(interrupts), "starting a trial")
            self._close_stale_runs()
            if admission.done:
                # The trial target is reached: confirm the finalists (shared by every worker of the
                # study) unless the target was raised meanwhile, then stop.
                if self.stage_started is None:
                    self.stage_started = time.monotonic()
                    if self.on_target is not None:
                        self.on_target()
                if self.after_target is None or self.after_target(self, interrupts, self.on_confirm_run):
                    return ran
                continue
            if admission.trial is None:
                if waiting_since != admission.counts.finished:
                    waiting_since = admission.counts.finished
                    pauses.reset()
                    log.info(
                        "%d of %d trials finished; waiting for %d running trial(s) of other workers",
                        admission.counts.finished,
                        admission.target,
                        admission.counts.running,
                    )
                interrupts.raise_pending()
                time.sleep(pauses.next())
                continue
            waiting_since = None
            pauses.reset()
            self.objective.budget = admission.budget
            for trial, error in self._run_admitted(admission, interrupts):
                ran += 1
                if on_trial is not None:
                    on_trial(self.study, trial)
                failures.note(trial, error, self.objective.spec.task)

    def _run_admitted(self, admission: Admission, interrupts: Interrupts) -> list[tuple[FrozenTrial, Exception | None]]:
        """Run the admitted trial(s): one as usual, several as one batch (``batch_worker.run_batch``)."""
        if not admission.more:
            assert admission.trial is not None
            ran = [self._run_trial(admission.trial, interrupts)]
        else:
            from adamtune.trials.batch_worker import run_batch

            ran = run_batch(self, admission.trials, interrupts)
        self._held.clear()  # each is told (or failed and re-queued) by now
        return ran

    def release(self, trials: list[optuna.Trial]) -> None:
        """Forget ``trials`` as held: their end was written (used where a run handles its own interrupt)."""
        self._held[:] = [t for t in self._held if all(t is not other for other in trials)]

    def _release_held(self) -> None:
        """Fail and re-queue the trials this worker admitted and has not told (an interrupt between their
        admission and their run); repeating it for a trial already ended neither tells twice nor queues twice."""
        for trial in self._held:
            _, requeued = with_db_retry(
                lambda t=trial: self._fail_and_requeue(t), f"recording and re-queueing trial {trial.number}"
            )
            if requeued:
                log.warning("trial %d: interrupted before it started; queued to run again", trial.number)
        self._held.clear()

    def _target(self) -> int:
        settings = self.study.user_attrs.get(SETTINGS_ATTR) or {}
        return int(settings.get("n_trials") or self.n_trials)

    def _admit(self, interrupts: Interrupts) -> Admission:
        """The admission step (:func:`~adamtune.trials.admission.admit`): under the study's admission lock, create
        up to ``batch_trials`` trials in free places (held until told), or say wait or stop."""
        spec = getattr(self.objective, "spec", None)
        return admit(
            self.study,
            interrupts,
            read_target=self._target,
            batch_trials=self.batch_trials,
            stale_check=self._stale_check,
            held=self._held,
            epochs=(spec.epochs if spec else None) or 1,
            direction=(spec.direction if spec else None) or "minimize",
        )

    def _run_trial(self, trial: optuna.Trial, interrupts: Interrupts) -> tuple[FrozenTrial, Exception | None]:
        """Run the objective on ``trial`` under a heartbeat and tell the outcome (FAIL on any error)."""
        interval = storage_of(self.study).get_heartbeat_interval() or 10
        state, value, error = TrialState.FAIL, None, None
        with Heartbeat(storage_of(self.study), trial_id_of(trial), interval):
            try:
                interrupts.raise_pending()
                value = self.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                with interrupts.critical():
                    _, requeued = with_db_retry(
                        lambda: self._fail_and_requeue(trial), f"recording and re-queueing trial {trial.number}"
                    )
                    self.release([trial])
                again = "; queued to run again with the same settings" if requeued else ""
                log.warning("trial %d: interrupted; recorded as failed%s", trial.number, again)
                raise
            except Exception as exc:
                error = exc
                # a broken contract is its own one-line error: it stops the worker once the trial is told
                if not is_transient_db_error(exc) and not isinstance(exc, ContractError):
                    self._failure_log.log(f"trial {trial.number}", exc)
            with interrupts.critical():
                if error is not None and is_transient_db_error(error):
                    # The database went away under the trial (a restart, a network cut): that says nothing
                    # about its settings, so it runs again rather than counting as a failure.
                    frozen, requeued = with_db_retry(
                        lambda: self._fail_and_requeue(trial), f"recording and re-queueing trial {trial.number}"
                    )
                    again = "; queued to run again with the same settings" if requeued else ""
                    log.warning("trial %d: the study database went away during the trial%s", trial.number, again)
                else:
                    frozen = self._tell(trial, state, value)
        if state == TrialState.COMPLETE and value is not None and not math.isfinite(value):
            log.warning("trial %d: the objective returned %s; recorded as failed", trial.number, value)
        elif state != TrialState.FAIL and frozen.state == TrialState.FAIL:
            log.warning("trial %d was failed as stale by another worker while it ran; its result is lost", trial.number)
        return frozen, error

    def _fail_and_requeue(self, trial: optuna.Trial) -> tuple[FrozenTrial, bool]:
        """Tell ``trial`` FAIL and queue its retry as one step under the admission lock (safe to repeat), for a
        trial whose failure says nothing about its settings (interrupted, or the database went away).

        Under the lock, other workers' admissions see the trial RUNNING, or FAIL with its retry WAITING
        (which their ``ask`` then picks up); never FAIL alone, which would let one of them start a new trial
        in its place and leave the retry WAITING past the study's target. Repeating it after a database
        error neither tells twice nor queues a second retry. Returns the told trial and whether a retry
        is queued; a trial another worker already finished (failed as stale) is not retried here.
        """
        with admission_lock(storage_of(self.study), self.study.study_name):
            frozen = self.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            if frozen.state != TrialState.FAIL:
                return frozen, False
            queued = any(
                t.system_attrs.get("failed_trial") == frozen.number for t in self.study.get_trials(deepcopy=False)
            )
            return frozen, queued or requeue_trial(self.study, frozen)

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None) -> FrozenTrial:
        def tell() -> FrozenTrial:
            if state == TrialState.COMPLETE:
                return self.study.tell(trial, value, skip_if_finished=True)
            return self.study.tell(trial, state=state, skip_if_finished=True)

        return with_db_retry(tell, f"recording trial {trial.number}")

    def _close_stale_runs(self) -> None:
        """Close the MLflow runs of trials this worker just failed as stale (their workers died)."""
        callback = storage_of(self.study).get_heartbeat_stale_trial_callback()
        if not isinstance(callback, RetryStaleTrial):
            return
        from adamtune.tracking.stale import end_stale_trial

        tracker = self.objective.tracker
        for trial in callback.drain():
            if tracker is not None:
                end_stale_trial(tracker, trial.number, trial.user_attrs.get(RUN_ID_ATTR), study=self.study)


def worker_label(trial: FrozenTrial) -> str:
    """``[w1 cuda:0]``-style prefix for a trial's log line, from its worker and device attributes.

    The local host name is left out of the worker's name; workers on other machines keep theirs.
    """
    from adamtune.storage.attr_keys import DEVICE_ATTR, WORKER_ATTR

    worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
    device = str(trial.user_attrs.get(DEVICE_ATTR, ""))
    host = socket.gethostname()
    if worker.startswith(f"{host}-"):
        worker = worker[len(host) + 1 :]
    return f"[{' '.join(part for part in (worker, device) if part)}]" if worker or device else ""


def counts_and_target(study: optuna.Study) -> tuple[Counts, int]:
    """The study's trial counts and its stored target (for progress displays)."""
    trials = study.get_trials(deepcopy=False)
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    return count_trials(trials), int(settings.get("n_trials") or 0)
