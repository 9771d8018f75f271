"""Workers: load a task's data once, then loop admit → train → tell until the study has its trials.

A worker is one process on one device. It joins a study by name, so any number of workers on any number
of machines can share one study database. ``n_trials`` (stored on the study by the latest ``search``, and
re-read before every trial) is a study-wide total of *finished* trials (complete + pruned + diverged).

Exact counts. Before each trial a worker takes the study's admission lock (``study.admission_lock``:
a file lock for SQLite, an advisory lock for PostgreSQL), fails stale trials of dead workers, counts
finished and running trials, and creates its trial with ``study.ask()`` only while
``finished + running < n_trials``; the new trial is RUNNING (and has a heartbeat) before the lock is
released, so the next worker counts it. Hence the study never holds more than ``n_trials`` finished
trials. When ``finished < n_trials <= finished + running`` the worker does not exit but waits: if one of
the running trials fails (an error, or its worker dies and the heartbeat marks it stale and re-queues
it), a place opens and a live worker takes it, so the study still reaches its count.

Why not ``study.optimize``: it asks for a trial without such a lock, and its heartbeat thread dies on the
first database error. This module runs the same ask → objective → tell steps itself, with a heartbeat
thread that survives database outages and bounded retries (``study.with_db_retry``) around every storage
call outside the objective.

Interruptions: SIGTERM (and SIGINT, where the worker owns the terminal) become ``KeyboardInterrupt``,
deferred while a trial is being created or told, so no trial is ever left RUNNING: the running trial is
told FAIL and re-queued with the same settings (an interruption says nothing about them; a re-queued
baseline stays the baseline), its MLflow run is closed as failed by the objective, and the interrupt
propagates (exit 130).
A second signal while stopping is ignored. A SIGKILL leaves the trial RUNNING until its heartbeat is
``GRACE_SECONDS`` old; then the next worker to start a trial fails it, re-queues it and closes its run.

Several local workers: :func:`run_pool` starts N processes forked from a fork server that imported
torch, optuna, MLflow and adamtune once (never a fork of this process, whose threads and databases are
open), each on one device with its share of the CPU cores.
"""

from __future__ import annotations

import logging
import logging.handlers
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.config import StudySpec
from adamtune.errors import AdamtuneError, DeviceError
from adamtune.rdb import StudyStorage
from adamtune.study import (
    RUN_ID_ATTR,
    SETTINGS_ATTR,
    RetryStaleTrial,
    admission_lock,
    count_trials,
    db_error_text,
    is_transient_db_error,
    load_study,
    open_storage,
    requeue_trial,
    spec_from_study,
    with_db_retry,
)

if TYPE_CHECKING:
    from adamtune.confirm_stage import ConfirmRun
    from adamtune.objective import Objective
    from adamtune.study import Counts
    from adamtune.tasks.base import Task, TaskData
    from adamtune.tracking import Tracker

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3
#: Pauses between two looks at the study while waiting for other workers' last trials: the first, and the
#: longest (the pause grows by half while nothing changes, so that many idle workers load the database little).
WAIT_FIRST_POLL_SECONDS = 0.25
WAIT_POLL_SECONDS = 5.0
#: Exit code of a worker process stopped by SIGTERM/SIGINT (as the CLI's Ctrl-C).
INTERRUPTED_EXIT = 130
#: How many killed worker processes one local search starts again (beyond that it goes on narrower).
MAX_WORKER_RESTARTS = 3


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


class TooManyFailures(AdamtuneError):
    """Every recent trial failed with an exception: the task or its data is broken, not the settings."""


class WorkerFailed(AdamtuneError):
    """A worker process of a multi-worker search exited with an error or was killed."""


def resolve_device(device: str) -> str:
    """Check that ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) exists here; return its canonical name.

    Raises:
        DeviceError: the device is malformed or absent (e.g. ``cuda:3`` on a machine with two GPUs).
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        index = parsed.index or 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise DeviceError(f"device {device!r} is not available: this machine has {have}; use --devices cpu")
        return f"cuda:{index}"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} is not available on this machine; use --devices cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return parsed.type


def resolve_devices(devices: str, workers: int) -> list[str]:
    """The device of each of ``workers`` workers, assigned round-robin from ``devices``.

    ``devices`` is ``auto`` (every CUDA GPU, else the CPU) or a comma-separated list such as
    ``cuda:0,cuda:1`` or ``cpu``; each entry is checked with :func:`resolve_device`. More workers than
    devices share them (``--devices cuda:0,cuda:1 --workers 8``: four per GPU); fewer leave the last ones
    unused.

    Raises:
        DeviceError: an entry is malformed or not present on this machine, or the list is empty.
        ConfigError: ``workers`` < 1.
    """
    from adamtune.errors import ConfigError

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    text = devices.strip()
    if text == "auto":
        import torch

        available = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    else:
        entries = [entry.strip() for entry in text.split(",")]
        if not text or any(not entry for entry in entries):
            raise DeviceError(f"--devices {devices!r} has an empty entry; use auto, cpu or e.g. cuda:0,cuda:1")
        available = [resolve_device(entry) for entry in entries]
    return [available[i % len(available)] for i in range(workers)]


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def plan_workers(base: WorkerOptions, devices: list[str], cores: int | None = None) -> list[WorkerOptions]:
    """Options for each worker process of a local multi-worker search, one per entry of ``devices``.

    Workers are named ``<host>-w<i>`` (label ``w<i>``). CPU workers split the cores:
    ``max(1, cores // cpu_workers)`` torch threads each, so that they do not oversubscribe; GPU workers
    get ``max(1, cores // workers)`` for their host-side work.
    """
    cores = cores or cpu_cores()
    host = socket.gethostname()
    cpu_workers = sum(1 for device in devices if device == "cpu")
    plans = []
    for index, device in enumerate(devices):
        share = cpu_workers if device == "cpu" else len(devices)
        plans.append(
            replace(
                base,
                device=device,
                name=f"{host}-w{index}",
                label=f"w{index}",
                index=index,
                threads=max(1, cores // share),
            )
        )
    return plans


class Interrupts:
    """Turns SIGTERM (and optionally SIGINT) into ``KeyboardInterrupt``, deferred out of critical sections.

    Use as a context manager in the main thread; outside the main thread it installs nothing. Inside
    :meth:`critical` a signal only marks the interrupt as pending; :meth:`raise_pending` raises it at a
    point where the caller can clean up. After the first signal, further ones are ignored so that the
    clean-up (failing the trial, closing the MLflow run) is not itself interrupted.
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)) -> None:
        self.signals = signals
        self.received: int | None = None
        self._pending = False
        self._depth = 0
        self._previous: dict[signal.Signals, Any] = {}

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return
        self.received = signum
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextmanager
    def critical(self) -> Iterator[None]:
        """A block that a signal must not cut in two (creating or telling a trial)."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1

    def raise_pending(self) -> None:
        """Raise the ``KeyboardInterrupt`` of a signal that arrived inside a critical block."""
        if self._pending and not self._depth:
            self._pending = False
            raise KeyboardInterrupt(f"signal {self.received}")


class Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds, surviving DB errors.

    Optuna's own heartbeat thread ends at the first database error, after which live trials would be
    failed as stale; this one logs a warning and keeps trying until the ``with`` block ends. All trials
    of a process (a worker's batch of K, the confirmation runs) share one daemon thread,
    :class:`_HeartbeatThread`, started with the first and idle between trials: no thread per trial.
    """

    def __init__(self, storage: Any, trial_id: int, interval: float) -> None:
        self.storage = storage
        self.trial_id = trial_id
        self.interval = interval

    def __enter__(self) -> Heartbeat:
        _HeartbeatThread.shared().add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _HeartbeatThread.shared().remove(self)


class _HeartbeatThread:
    """The process's one heartbeat thread: beats each registered trial when its interval has passed."""

    _instance: _HeartbeatThread | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        self._due: dict[Heartbeat, float] = {}
        self._failing: set[int] = set()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._beat, name="adamtune-heartbeat", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls) -> _HeartbeatThread:
        with cls._instance_lock:
            # A forked child inherits the object but not the thread: it starts its own.
            if cls._instance is None or not cls._instance._thread.is_alive():
                cls._instance = cls()
            return cls._instance

    def add(self, beat: Heartbeat) -> None:
        with self._changed:
            self._due[beat] = time.monotonic() + beat.interval
            self._changed.notify()

    def remove(self, beat: Heartbeat) -> None:
        """Stop beating ``beat``; returns after any beat of it in flight has been recorded."""
        with self._changed:
            self._due.pop(beat, None)

    def _beat(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                due = [beat for beat, at in self._due.items() if at <= now]
                for beat in due:  # under the lock: a trial that ended is never beaten after remove()
                    self._due[beat] = now + beat.interval
                    self._record(beat)
                wake = min(self._due.values(), default=now + 3600) - time.monotonic()
                self._changed.wait(timeout=max(0.0, wake))

    def _record(self, beat: Heartbeat) -> None:
        try:
            beat.storage.record_heartbeat(beat.trial_id)
            self._failing.discard(beat.trial_id)
        except Exception as exc:
            if beat.trial_id not in self._failing:
                log.warning("could not record the heartbeat of the running trial (%s); retrying", db_error_text(exc))
            self._failing.add(beat.trial_id)


@dataclass(frozen=True)
class Admission:
    """What the admission step decided: a trial to run, or wait (``trial`` None), or stop (``done``)."""

    counts: Counts
    target: int
    trial: optuna.Trial | None = None
    done: bool = False
    more: tuple[optuna.Trial, ...] = ()  # further trials admitted with ``trial`` (batched workers)

    @property
    def trials(self) -> list[optuna.Trial]:
        return [] if self.trial is None else [self.trial, *self.more]


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
    #: Called with each confirmation run this worker finished (see ``confirm_stage.py``).
    on_confirm_run: Callable[[ConfirmRun], None] | None = None
    #: ``time.monotonic()`` when this worker first found the trial target reached (the stage's start).
    stage_started: float | None = None
    batch_trials: int = 1

    def run(self, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
        """Run trials until the study holds its target number of finished ones, then the confirmation stage.

        Waits (polling the study) while the remaining places are taken by other workers' running trials,
        in case one of them fails and must be replaced.

        Args:
            on_trial: called with the study and each trial this worker ran (any final state).

        Returns:
            The number of trials this worker ran.

        Raises:
            TooManyFailures: ``MAX_CONSECUTIVE_FAILURES`` trials in a row raised exceptions (database
                outages excluded).
            StorageError: the database stayed unreachable for longer than the retry budget.
            KeyboardInterrupt: SIGTERM (or Ctrl-C), after the running trial was recorded as FAIL.
        """
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # its multi-line database warnings: ours are one line
        signals = (signal.SIGTERM, signal.SIGINT) if self.handle_sigint else (signal.SIGTERM,)
        ran, consecutive_failures = 0, 0
        waiting_since: int | None = None
        longest = min(self.wait_poll_seconds, float(self.study._storage.get_heartbeat_interval() or WAIT_POLL_SECONDS))
        poll = WAIT_FIRST_POLL_SECONDS
        with Interrupts(signals) as interrupts:
            while True:
                interrupts.raise_pending()
                admission = with_db_retry(lambda: self._admit(interrupts), "starting a trial")
                self._close_stale_runs()
                if admission.done:
                    # The trial target is reached: confirm the finalists (shared by every worker of the
                    # study) unless the target was raised meanwhile, then stop.
                    from adamtune.confirm_stage import run_stage

                    if self.stage_started is None:
                        self.stage_started = time.monotonic()
                    if run_stage(self, interrupts, self.on_confirm_run):
                        return ran
                    continue
                if admission.trial is None:
                    poll = min(longest, poll * 1.5)
                    if waiting_since != admission.counts.finished:
                        waiting_since, poll = admission.counts.finished, WAIT_FIRST_POLL_SECONDS
                        log.info(
                            "%d of %d trials finished; waiting for %d running trial(s) of other workers",
                            admission.counts.finished,
                            admission.target,
                            admission.counts.running,
                        )
                    interrupts.raise_pending()
                    time.sleep(poll)
                    continue
                waiting_since, poll = None, WAIT_FIRST_POLL_SECONDS
                for trial, error in self._run_admitted(admission, interrupts):
                    ran += 1
                    if on_trial is not None:
                        on_trial(self.study, trial)
                    if trial.state != TrialState.FAIL or error is None or is_transient_db_error(error):
                        consecutive_failures = 0
                        continue
                    consecutive_failures += 1
                    if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                        raise TooManyFailures(
                            f"{consecutive_failures} trials in a row failed with errors (see the log above); "
                            f"check task {self.objective.spec.task!r} and its data"
                        )

    def _run_admitted(self, admission: Admission, interrupts: Interrupts) -> list[tuple[FrozenTrial, Exception | None]]:
        """Run the admitted trial(s): one as usual, several as one batch (``batch_worker.run_batch``)."""
        if not admission.more:
            assert admission.trial is not None
            return [self._run_trial(admission.trial, interrupts)]
        from adamtune.batch_worker import run_batch

        return run_batch(self, admission.trials, interrupts)

    def _target(self) -> int:
        settings = self.study.user_attrs.get(SETTINGS_ATTR) or {}
        return int(settings.get("n_trials") or self.n_trials)

    def _admit(self, interrupts: Interrupts) -> Admission:
        """Under the admission lock: fail stale trials, count, create up to ``batch_trials`` trials in free places."""
        storage = self.study._storage
        backend = getattr(storage, "_backend", storage)
        # The count below, ask's look for queued trials and the sampler read the trials within milliseconds
        # under the lock: one database read serves those that no write separates (rdb.shared_reads).
        shared = backend.shared_reads() if isinstance(backend, StudyStorage) else nullcontext()
        with interrupts.critical(), admission_lock(storage, self.study.study_name), shared:
            optuna.storages.fail_stale_trials(self.study)
            target = self._target()
            trials = self.study.get_trials(deepcopy=False)
            counts = count_trials(trials)
            if counts.finished >= target:
                return Admission(counts, target, done=True)
            if counts.finished + counts.running >= target:
                return Admission(counts, target)
            running_before = {t._trial_id for t in trials if t.state == TrialState.RUNNING}
            asked: list[optuna.Trial] = []
            try:
                with warnings.catch_warnings():
                    # Optuna warns about asking outside Study.optimize on a storage with heartbeats; this
                    # worker records the heartbeats itself (see Heartbeat), so the warning does not apply.
                    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                    # Never more than the free places: each asked trial is RUNNING before the lock is released.
                    for _ in range(max(1, min(self.batch_trials, target - counts.finished - counts.running))):
                        asked.append(self.study.ask())
            except Exception as exc:
                if is_transient_db_error(exc):
                    with_db_retry(lambda: self._hand_back(running_before), "handing back a half-created trial")
                raise
            for trial in asked:  # retried on its own: repeating the whole admission would create more trials
                with_db_retry(lambda t=trial: storage.record_heartbeat(t._trial_id), "recording a heartbeat")
            return Admission(counts, target, asked[0], more=tuple(asked[1:]))

    def _hand_back(self, running_before: set[int]) -> None:
        """Return to the queue (WAITING) trials that a failed ``ask`` made RUNNING before it broke.

        ``ask`` creates (or pops) the trial, then lets the sampler read the study; if the database fails
        in between, the trial would stay RUNNING with no heartbeat and nobody to finish it. Under the
        admission lock no other worker starts trials, so the RUNNING trials that were not running before
        are ours. WAITING is the state of a queued trial: the next ``ask`` picks it up again, with its
        fixed params if it had any (a re-queued baseline stays the baseline).
        """
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial._trial_id not in running_before:
                self.study._storage.set_trial_state_values(trial._trial_id, TrialState.WAITING)
                log.warning("trial %d: handed back to the queue after a database error while creating it", trial.number)

    def _run_trial(self, trial: optuna.Trial, interrupts: Interrupts) -> tuple[FrozenTrial, Exception | None]:
        """Run the objective on ``trial`` under a heartbeat and tell the outcome (FAIL on any error)."""
        interval = self.study._storage.get_heartbeat_interval() or 10
        state, value, error = TrialState.FAIL, None, None
        with Heartbeat(self.study._storage, trial._trial_id, interval):
            try:
                interrupts.raise_pending()
                value = self.objective(trial)
                state = TrialState.COMPLETE
            except optuna.TrialPruned:
                state = TrialState.PRUNED
            except KeyboardInterrupt:
                with interrupts.critical():
                    failed = self._tell(trial, TrialState.FAIL, None)
                    requeued = failed.state == TrialState.FAIL and with_db_retry(
                        lambda: requeue_trial(self.study, failed), f"re-queueing trial {trial.number}"
                    )
                again = "; queued to run again with the same settings" if requeued else ""
                log.warning("trial %d: interrupted; recorded as failed%s", trial.number, again)
                raise
            except Exception as exc:
                error = exc
                if not is_transient_db_error(exc):
                    log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc, exc_info=True)
            with interrupts.critical():
                frozen = self._tell(trial, state, value)
                if error is not None and is_transient_db_error(error) and frozen.state == TrialState.FAIL:
                    # The database went away under the trial (a restart, a network cut): that says nothing
                    # about its settings, so it runs again rather than counting as a failure.
                    requeued = with_db_retry(
                        lambda: requeue_trial(self.study, frozen), f"re-queueing trial {trial.number}"
                    )
                    again = "; queued to run again with the same settings" if requeued else ""
                    log.warning("trial %d: the study database went away during the trial%s", trial.number, again)
        if state == TrialState.COMPLETE and value is not None and not math.isfinite(value):
            log.warning("trial %d: the objective returned %s; recorded as failed", trial.number, value)
        elif state != TrialState.FAIL and frozen.state == TrialState.FAIL:
            log.warning("trial %d was failed as stale by another worker while it ran; its result is lost", trial.number)
        return frozen, error

    def _tell(self, trial: optuna.Trial, state: TrialState, value: float | None) -> FrozenTrial:
        def tell() -> FrozenTrial:
            if state == TrialState.COMPLETE:
                return self.study.tell(trial, value, skip_if_finished=True)
            return self.study.tell(trial, state=state, skip_if_finished=True)

        return with_db_retry(tell, f"recording trial {trial.number}")

    def _close_stale_runs(self) -> None:
        """Close the MLflow runs of trials this worker just failed as stale (their workers died)."""
        callback = self.study._storage.get_heartbeat_stale_trial_callback()
        if not isinstance(callback, RetryStaleTrial):
            return
        tracker = self.objective.tracker
        for trial in callback.drain():
            if tracker is not None:
                tracker.end_stale_trial(trial.number, trial.user_attrs.get(RUN_ID_ATTR), study=self.study)


def open_tracker(study_name: str, options: WorkerOptions) -> Tracker | None:
    """The MLflow tracker for a study, or None when tracking is off.

    Raises:
        TrackingError: the tracking store cannot be used.
    """
    if not options.tracking:
        return None
    from adamtune.tracking import Tracker

    return Tracker(study_name, options.tracking_uri, system_metrics=options.system_metrics)


def make_worker(
    study: optuna.Study,
    spec: StudySpec,
    task: Task,
    data: TaskData,
    options: WorkerOptions,
    tracker: Tracker | None,
) -> Worker:
    """Assemble a worker: data moved to the device (made the current CUDA device), CPU threads set."""
    import torch

    from adamtune.objective import Objective

    if options.threads:
        torch.set_num_threads(options.threads)
    if options.device.startswith("cuda:"):
        torch.cuda.set_device(options.device)  # implicit "current device" uses (synchronize, caches) stay on it
    if tracker is not None:
        tracker.attach(study, storage_url=options.storage_url)  # the study's MLflow parent run
    from adamtune.checkpoint import open_store, resolve_location

    location = resolve_location(options.checkpoint_store, options.storage_url)
    keep_best = bool(spec.keep_best_checkpoint)
    store = None if spec.checkpoint_every == 0 and not keep_best else open_store(location)
    objective = Objective(
        spec,
        task,
        data.to(options.device),
        options.device,
        tracker,
        options.seed,
        options.name,
        checkpoint_store=store,
        checkpoint_every=spec.checkpoint_every,
        keep_best_checkpoint=keep_best,
    )
    batch_trials = spec.batch_trials
    if batch_trials > 1:
        from adamtune.batched import batch_blocker

        reason = batch_blocker(task, objective.data, options.device)
        if reason is not None:
            log.warning("batch_trials=%d: task %r trains one trial at a time: %s", batch_trials, spec.task, reason)
            batch_trials = 1
    return Worker(study, objective, spec.n_trials, batch_trials=batch_trials)


def join_study(options: WorkerOptions) -> Worker:
    """A worker for an existing study, found by name in ``options.storage_url`` (``adamtune worker``).

    The sampler is seeded with ``options.seed + options.index`` when a seed is given.

    Raises:
        StorageError, DeviceError, TaskError, DataError, TrackingError: before any trial starts.
    """
    from adamtune.tasks import resolve_task

    options = replace(options, device=resolve_device(options.device))
    storage = open_storage(options.storage_url, create=False)
    sampler_seed = None if options.seed is None else options.seed + options.index
    study = load_study(options.study_name, storage, seed=sampler_seed)
    spec = spec_from_study(study)
    task = resolve_task(spec.task)
    from adamtune.data import default_data_dir

    data = task.load_data(options.data_dir or default_data_dir())
    return make_worker(study, spec, task, data, options, open_tracker(spec.study_name, options))


def worker_label(trial: FrozenTrial) -> str:
    """``[w1 cuda:0]``-style prefix for a trial's log line, from its worker and device attributes.

    The local host name is left out of the worker's name; workers on other machines keep theirs.
    """
    from adamtune.study import DEVICE_ATTR, WORKER_ATTR

    worker = str(trial.user_attrs.get(WORKER_ATTR, ""))
    device = str(trial.user_attrs.get(DEVICE_ATTR, ""))
    host = socket.gethostname()
    if worker.startswith(f"{host}-"):
        worker = worker[len(host) + 1 :]
    return f"[{' '.join(part for part in (worker, device) if part)}]" if worker or device else ""


# ---------------------------------------------------------------------------------------------------------
# Local worker processes


def _process_main(options: WorkerOptions, log_queue: Any) -> None:
    """Entry point of a spawned worker process: join the study, run, exit with a meaningful code.

    Log records go to ``log_queue`` (the parent prints them above its progress display). SIGINT is
    ignored (inherited from the parent, which forwards SIGTERM on Ctrl-C). Exit codes: 0 done, an
    ``AdamtuneError``'s code, 130 interrupted, 1 anything else.
    """
    handler = logging.handlers.QueueHandler(log_queue)
    handler.setFormatter(logging.Formatter(f"[{options.label} {options.device}] %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("adamtune").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    code = 0
    worker: Worker | None = None
    try:
        worker = join_study(options)
        worker.handle_sigint = False
        worker.run()
    except AdamtuneError as exc:
        log.error("%s", exc)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT
    except BaseException:
        log.exception("worker crashed")
        code = 1
    finally:
        if worker is not None and worker.objective.tracker is not None:
            worker.objective.tracker.close()  # send the MLflow calls still queued
    logging.shutdown()
    sys.exit(code)


@dataclass(frozen=True)
class PoolResult:
    """Exit codes of a pool's workers, in the order of their plans."""

    plans: list[WorkerOptions]
    exit_codes: list[int | None]

    def failures(self) -> list[str]:
        """One description per worker that did not exit 0."""
        return [
            f"worker {plan.label} ({plan.device}) "
            + (f"exited with code {code}" if code >= 0 else f"killed by signal {-code}")
            for plan, code in zip(self.plans, self.exit_codes, strict=True)
            if code is not None and code != 0
        ]


#: Imported once by the fork server, before any worker: each worker process is a fork of it and starts
#: with these loaded instead of importing them again (about 4-8 s of CPU per worker on a laptop core).
#: ``torch._dynamo`` is what the first ``torch.optim`` step imports.
PRELOAD = ["torch", "torch._dynamo", "optuna", "mlflow", "adamtune.worker", "adamtune.objective", "adamtune.tracking"]


def worker_context() -> Any:
    """The multiprocessing context of worker processes: a fork server with :data:`PRELOAD` imported.

    A fork server is a fresh interpreter (nothing of this process's threads or open databases), so it is
    as safe as ``spawn``; its children are forks of it, so they do not re-pay the imports. CUDA is never
    initialised in the server (importing torch does not), so GPU workers start as with ``spawn``.
    Platforms without ``fork`` (Windows, and macOS where forking is unsafe) get ``spawn``.
    """
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the workers' fork server now, so its imports overlap with this process's own start-up."""
    if sys.platform == "linux":
        worker_context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def run_pool(
    plans: list[WorkerOptions],
    on_poll: Callable[[], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    poll_seconds: float = 1.0,
    stop_seconds: float = 120.0,
) -> PoolResult:
    """Start one worker process per plan (see :func:`worker_context`); call ``on_poll`` about every
    ``poll_seconds`` until all exit.

    Args:
        plans: the options of each worker (see :func:`plan_workers`); the study must already exist.
        on_poll: called in this process between waits, e.g. to update a progress display from the
            storage; its exceptions are logged and ignored.
        on_log: receives each log line of the workers (default: printed to stderr).
        stop_seconds: after a Ctrl-C, how long to wait for the workers to finish failing their trials
            before killing them.

    A worker process killed by a signal (SIGKILL, the OOM killer) is started again, at most
    ``MAX_WORKER_RESTARTS`` times per call, so the search finishes at full width; its trial goes stale and
    is retried by whichever worker starts a trial after the grace period.

    Returns:
        The workers' exit codes, of the last process of each slot (a negative code: killed by that signal).

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM here; SIGTERM was forwarded to every worker and they have
            exited (their running trials are FAIL, their MLflow runs closed). A second Ctrl-C kills them
            at once; their trials are then failed by the heartbeat check of the next worker.
    """
    from multiprocessing.connection import wait

    emit = on_log or (lambda line: print(line, file=sys.stderr))
    context = worker_context()
    log_queue = context.Queue()

    def make_process(plan: WorkerOptions) -> Any:
        return context.Process(target=_process_main, args=(plan, log_queue), name=f"adamtune-{plan.label}")

    processes = [make_process(plan) for plan in plans]
    restarts = [0]

    def replace_killed() -> None:
        """Start a new process for each worker killed by a signal (SIGKILL, the OOM killer, a crash).

        Its trial goes stale and is retried by a live worker; the new process joins the study as the old
        one did. A worker that exited by itself (done, an error, SIGTERM) is not replaced, and at most
        ``MAX_WORKER_RESTARTS`` processes are started again per search.
        """
        for index, process in enumerate(processes):
            code = process.exitcode
            if code is None or code >= 0 or restarts[0] >= MAX_WORKER_RESTARTS:
                continue
            restarts[0] += 1
            plan = plans[index]
            emit(
                f"worker {plan.label} ({plan.device}) was killed by signal {-code}; starting a new one "
                f"(restart {restarts[0]} of at most {MAX_WORKER_RESTARTS})"
            )
            processes[index] = make_process(plan)
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                processes[index].start()
            finally:
                signal.signal(signal.SIGINT, previous)

    def drain() -> None:
        while True:
            try:
                record = log_queue.get_nowait()
            except Exception:  # queue.Empty, or a closed queue
                return
            emit(record.getMessage())

    display_failing = [False]

    def poll() -> None:
        drain()
        if on_poll is None:
            return
        try:
            on_poll()
            display_failing[0] = False
        except Exception as exc:  # the display must never stop the search; say so once per outage
            if not display_failing[0]:
                emit(f"progress display: cannot read the study ({str(exc).splitlines()[0][:200]}); retrying")
            display_failing[0] = True

    with Interrupts((signal.SIGTERM,)), _sigint_raises():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # children inherit "ignore SIGINT"
        try:
            for process in processes:
                process.start()
        finally:
            signal.signal(signal.SIGINT, previous)
        try:
            while True:
                replace_killed()
                alive = [process for process in processes if process.is_alive()]
                if not alive:
                    break
                wait([process.sentinel for process in alive], timeout=poll_seconds)
                poll()
        except KeyboardInterrupt:
            _stop(processes, drain, stop_seconds)
            raise
        finally:
            poll()
            log_queue.close()
    return PoolResult(plans, [process.exitcode for process in processes])


@contextmanager
def _sigint_raises() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` in this block even if this process inherited "ignore SIGINT".

    A search started in the background from a script inherits SIGINT as ignored, and Python then installs
    no handler of its own: ``kill -INT`` would be ignored by the parent while its workers run to the end.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def _stop(processes: list[Any], drain: Callable[[], None], stop_seconds: float) -> None:
    """SIGTERM every live worker and wait for them to exit; a second Ctrl-C (or the deadline) kills them."""
    from multiprocessing.connection import wait

    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + stop_seconds
    try:
        while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
            wait([process.sentinel for process in processes if process.is_alive()], timeout=1.0)
            drain()
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()


def counts_and_target(study: optuna.Study) -> tuple[Counts, int]:
    """The study's trial counts and its stored target (for progress displays)."""
    trials = study.get_trials(deepcopy=False)
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    return count_trials(trials), int(settings.get("n_trials") or 0)
