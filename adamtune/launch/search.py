"""``adamtune search``: validate everything, create or resume the study, then run workers.

Order matters for "nothing written on bad input": the task, the device and the data are checked
before the study database or the MLflow store is created, so a typo or a missing dataset leaves the
working directory as it was.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.config import StudySpec
from adamtune.core.errors import ContractError
from adamtune.data.download import default_data_dir
from adamtune.launch.pool import WorkerFailed
from adamtune.launch.warm_start import enqueue_warm_starts, read_warm_starts
from adamtune.launch.worker_setup import make_worker, open_tracker
from adamtune.storage.attr_keys import SETTINGS_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.outcomes import Counts, count_trials, trial_state
from adamtune.storage.stale_trials import heartbeat_settings
from adamtune.storage.study import create_or_resume
from adamtune.tracking.parent_run import search_tracking
from adamtune.trials.worker import WorkerOptions

if TYPE_CHECKING:
    from adamtune.confirm.stage import ConfirmRun
    from adamtune.report.summary import StudySummary
    from adamtune.tasks.base import Task
    from adamtune.tasks.loop import LoopTask
    from adamtune.tracking.tracker import Tracker
    from adamtune.training.trainer_client import ProcessTrainer


@dataclass(frozen=True)
class SearchOutcome:
    """What a search left in the study."""

    study_name: str
    ran: int
    finished: int
    target: int
    best_value: float | None
    #: The study's summary after the search (the confirmed recommendation; importance not computed).
    summary: StudySummary | None = None
    #: Wall seconds of this search until the trial target was reached, and of the confirmation stage after.
    search_seconds: float | None = None
    stage_seconds: float | None = None
    #: ``(tracking URI, experiment id)`` of the study's runs in MLflow when this search tracked them.
    experiment: tuple[str, str] | None = None
    #: What ended the trial phase before ``spec.n_trials``: ``"time"`` (the time budget) or ``"converged"``.
    ended: str | None = None


def check_checkpoint_store(options: WorkerOptions) -> None:
    """Raise ConfigError when the checkpoint store ``options`` names cannot be used (a file, ``s3://`` without
    boto3); writes nothing (a directory store is created at the first save)."""
    from adamtune.training.checkpoint import open_store, resolve_location

    open_store(resolve_location(options.checkpoint_store, options.storage_url))


def run_search(
    spec: StudySpec,
    options: WorkerOptions,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_start: Callable[[StudySpec, int], None] | None = None,
    *,
    workers: int = 1,
    devices: str | None = None,
    on_log: Callable[[str], None] | None = None,
    on_progress: Callable[[Counts, float | None], None] | None = None,
    on_confirm_run: Callable[[ConfirmRun], None] | None = None,
    trainer: ProcessTrainer | None = None,
) -> SearchOutcome:
    """Create or resume ``spec``'s study in ``options.storage_url`` and run ``workers`` workers on it.

    Everything (task, devices, data, storage URL, tracking store, heartbeat settings) is checked before
    the study database is created, so bad input writes nothing. With one worker, it runs in this process
    (Ctrl-C interrupts the running trial directly). With more, each runs in its own process
    (:func:`~adamtune.launch.pool.run_pool`) that joins the study by name and loads the data once; this
    process polls the storage about once a second and calls ``on_trial`` for every trial that finished
    since, whichever worker (or machine) ran it.

    Args:
        spec: the study; epochs and batch size left unset take the task's defaults.
        options: storage, tracking and data settings of the workers (``options.device`` is used when
            ``devices`` is None).
        on_trial: called with the study and each newly finished trial (any final state).
        on_start: called once the study is open, with the final spec and the number of trials
            already finished (a resumed study may already be complete).
        workers: number of workers, >= 1.
        devices: ``auto`` or a comma-separated device list, assigned round-robin (see
            :func:`~adamtune.training.devices.resolve_devices`).
        on_log: receives the log lines of worker processes (default: stderr).
        on_progress: with several workers, called at every poll with the study's counts (all workers,
            all machines) and best value, e.g. to show how many trials are running.
        on_confirm_run: called with each confirmation run that finished (any worker), see
            ``confirm/stage.py``. The stage runs in the workers once the trial target is reached, unless
            ``spec.confirm`` turns it off.
        trainer: with one worker, a trainer process already preparing ``spec.task`` (``trainer.py``):
            the worker's runs train there, and this process never loads the task or its data. The
            caller closes it.

    Raises:
        ConfigError, DeviceError, TaskError, DataError, StorageError, TrackingError: bad input, before
            anything is written.
        ContractError: the task's ``fit`` broke its contract (reported nothing, or not the objective); the
            worker stopped at that trial, recorded as failed.
        WorkerFailed: a worker process exited with an error or was killed (the others ran on).
        KeyboardInterrupt: Ctrl-C or SIGTERM; running trials were recorded as failed.
    """
    from adamtune.launch.pool import plan_workers, run_pool, start_fork_server
    from adamtune.tasks import resolve_task
    from adamtune.training.devices import resolve_devices

    started = time.monotonic()
    if workers == 1 and options.tracking and trainer is not None:
        # this process mostly waits for the trainer's start-up: import the plots' libraries meanwhile
        from adamtune.report.artifacts import preload_plots

        preload_plots()
    if workers > 1:  # the workers' imports happen in the fork server while this process prepares the study
        start_fork_server(tracking=options.tracking)
    task: Task | LoopTask | None = None
    data: Any = None
    if trainer is not None:  # the trainer process imports the task and loads its data meanwhile
        spec = spec.with_task(trainer.info)
        device_list = [trainer.device]
    else:
        task = resolve_task(spec.task)
        spec = spec.with_task(task)  # epochs, batch size, objective and direction; ConfigError for a bad one
        device_list = resolve_devices(devices if devices is not None else options.device, workers)
    heartbeat_settings()
    check_checkpoint_store(options)  # a store that cannot be used is refused before the study exists
    options = replace(options, device=device_list[0], study_name=spec.study_name, name=f"{socket.gethostname()}-w0")
    if trainer is not None:
        trainer.wait_data()  # a missing dataset is reported before anything is written
    else:
        data = task.load_data(options.data_dir or default_data_dir())
    options = replace(options, seed=spec.seed if spec.seed is not None else options.seed)
    # earlier studies' best settings, read (read-only) before anything is written: a bad name writes nothing
    warm_starts = read_warm_starts(spec.warm_start, options.storage_url) if spec.warm_start else []
    with removed_if_new(sqlite_files(options.storage_url)):
        storage = open_storage(options.storage_url)
        # One worker trains here: MLflow opens on the tracker's thread while trial 0 starts. With more,
        # the workers look for the study's parent run, so it is made before they start.
        tracker = open_tracker(spec.study_name, options, defer_open=workers == 1)
    study = create_or_resume(spec, storage, seed=options.seed)
    if warm_starts:
        enqueue_warm_starts(study, spec.space, warm_starts)
    if tracker is not None:  # the study's MLflow parent run, before any worker looks for it
        tracker.attach(study, storage_url=options.storage_url, reopen=True)
    already = count_trials(study.get_trials(deepcopy=False)).finished
    with search_tracking(tracker, study):  # ends the parent run (plots, status) and flushes MLflow
        if workers == 1 or already >= spec.n_trials:  # a complete study needs no worker processes
            if trainer is not None:
                trainer.wait_ready()  # trial 0 starts when the trainer can train it
            worker = make_worker(study, spec, task, data, options, tracker, trainer)
            worker.on_confirm_run = on_confirm_run
            if tracker is not None:  # the plots are drawn while the confirmation stage trains
                worker.on_target = lambda: tracker.begin_artifacts(study)
            if on_start is not None:
                on_start(spec, already)
            ran = worker.run(on_trial)
            stage_started = worker.stage_started
        else:
            del data  # each worker process loads its own copy once
            if on_start is not None:
                on_start(spec, already)
            watcher = FinishedTrialWatcher(study, on_trial, on_progress, spec.direction, on_confirm_run)
            if tracker is not None:
                watcher.on_target = lambda: tracker.begin_artifacts(study)
            result = run_pool(plan_workers(options, device_list), on_poll=watcher.poll, on_log=on_log)
            ran, stage_started = watcher.seen_since_start, watcher.target_reached
            failures = result.failures()
            if result.contract_error is not None:  # the task's fit broke its contract: that one line, not a list
                raise ContractError(result.contract_error)
            if failures:
                counts = count_trials(study.get_trials(deepcopy=False))
                raise WorkerFailed(
                    f"{'; '.join(failures)} (see its messages above); the study holds {counts.finished} of "
                    f"{spec.n_trials} finished trials, and running the same command resumes it"
                )
    from adamtune.report.summary import summarize

    ended = time.monotonic()
    stage_started = stage_started if stage_started is not None else ended
    trials = study.get_trials(deepcopy=False)
    settings = study.user_attrs.get(SETTINGS_ATTR) or {}
    return SearchOutcome(
        spec.study_name,
        ran,
        count_trials(trials).finished,
        int(settings.get("n_trials") or spec.n_trials),
        best_value(trials, spec.direction),
        summarize(study, importance=False),
        stage_started - started,
        ended - stage_started,
        _tracked_experiment(tracker),
        (settings.get("ended") or {}).get("reason"),
    )


def _tracked_experiment(tracker: Tracker | None) -> tuple[str, str] | None:
    """Where the tracker logged the study, read from it (asking MLflow again would import it here)."""
    if tracker is None or tracker.disabled is not None or tracker.experiment_id is None:
        return None
    return str(tracker.tracking_uri), str(tracker.experiment_id)


class FinishedTrialWatcher:
    """Calls ``on_trial`` once for each trial that has finished since the watcher was made (by polling).

    Trials finished before are not reported; those finished since are reported in number order. With
    ``on_confirm_run``, the confirmation runs finished since (by any worker) are reported too.
    """

    def __init__(
        self,
        study: optuna.Study,
        on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
        on_progress: Callable[[Counts, float | None], None] | None = None,
        direction: str = "minimize",
        on_confirm_run: Callable[[ConfirmRun], None] | None = None,
    ) -> None:
        self.study = study
        self.on_trial = on_trial
        self.on_progress = on_progress
        self.direction = direction
        self.on_confirm_run = on_confirm_run
        self._seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
        self._before = len(self._seen)
        #: ``time.monotonic()`` at the first poll that found the trial target reached (the stage's start).
        self.target_reached: float | None = None
        #: Called once, at that poll.
        self.on_target: Callable[[], None] | None = None
        self._confirm: optuna.Study | None = None
        self._confirm_seen = {t.number for t in self._confirm_trials() if t.state.is_finished()}

    @property
    def seen_since_start(self) -> int:
        return len(self._seen) - self._before

    def poll(self) -> None:
        """Report newly finished trials, then the counts (reads the storage once)."""
        trials = self.study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state.is_finished() and trial.number not in self._seen:
                self._seen.add(trial.number)
                if self.on_trial is not None:
                    self.on_trial(self.study, trial)
        counts = count_trials(trials)
        if self.target_reached is None and counts.finished >= self._target():
            self.target_reached = time.monotonic()
            if self.on_target is not None:
                self.on_target()
        if self.on_progress is not None:
            self.on_progress(counts, best_value(trials, self.direction))
        if self.on_confirm_run is not None:
            for trial in self._confirm_trials():
                if trial.state.is_finished() and trial.number not in self._confirm_seen:
                    self._confirm_seen.add(trial.number)
                    self.on_confirm_run(confirm_run_of(trial, self.study))

    def _target(self) -> int:

        return int((self.study.user_attrs.get(SETTINGS_ATTR) or {}).get("n_trials") or 0) or 1 << 62

    def _confirm_trials(self) -> list[FrozenTrial]:
        if self.on_confirm_run is None:
            return []
        if self._confirm is None:
            from adamtune.confirm.stored import load_confirm_study

            self._confirm = load_confirm_study(self.study)
        return self._confirm.get_trials(deepcopy=False) if self._confirm is not None else []


def confirm_run_of(trial: FrozenTrial, study: optuna.Study) -> ConfirmRun:
    """A finished confirmation trial as the :class:`~adamtune.confirm.stage.ConfirmRun` progress lines show."""
    from adamtune.confirm.stage import ConfirmRun
    from adamtune.core.confirm_rule import ARM_ATTR
    from adamtune.storage.attr_keys import DEVICE_ATTR, SEED_ATTR, STATE_ATTR, WORKER_ATTR
    from adamtune.storage.study import spec_from_study
    from adamtune.training.runner import split_metric

    value = trial.value if trial.state == TrialState.COMPLETE else None
    return ConfirmRun(
        str(trial.user_attrs.get(ARM_ATTR, "?")),
        int(trial.user_attrs.get(SEED_ATTR, 0)),
        value,
        split_metric(spec_from_study(study).objective, "val"),
        trial.user_attrs.get(STATE_ATTR) == "diverged",
        str(trial.user_attrs.get(WORKER_ATTR, "")),
        str(trial.user_attrs.get(DEVICE_ATTR, "")),
    )


def best_value(trials: list[FrozenTrial], direction: str) -> float | None:
    """The best objective among complete, non-diverged trials; None if there is none."""
    values = [
        t.value
        for t in trials
        if t.state == TrialState.COMPLETE and trial_state(t) == "complete" and t.value is not None
    ]
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    return min(values) if direction == "minimize" else max(values)


def sqlite_files(url: str) -> list[Path]:
    """The files a SQLite URL's database consists of (main file, WAL, shared memory); [] for servers."""
    if not url.startswith("sqlite"):
        return []
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return [Path(database + suffix) for suffix in ("", "-wal", "-shm")] if database else []


@contextlib.contextmanager
def removed_if_new(paths: list[Path]) -> Iterator[None]:
    """Delete those of ``paths`` that did not exist before the block, if the block raises."""
    new = [path for path in paths if not path.exists()]
    try:
        yield
    except BaseException:
        for path in new:
            path.unlink(missing_ok=True)
        raise
