"""Workers: load a task's data once, then loop ask → train → tell until the study has its trials.

A worker is one process on one device. It joins a study by name, so any number of workers on any
number of machines can share one study database; ``n_trials`` (stored on the study by the latest
``search``) is a study-wide total of finished trials, and a worker starts a trial only while
``finished + running < n_trials``.

Interruptions: SIGTERM is turned into ``KeyboardInterrupt``; either one fails the running trial in
Optuna (never left RUNNING), closes its MLflow run as failed, and propagates so the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.config import StudySpec
from adamtune.errors import AdamtuneError, DeviceError
from adamtune.study import count_trials, load_study, open_storage, spec_from_study

if TYPE_CHECKING:
    from adamtune.objective import Objective
    from adamtune.tasks.base import Task, TaskData
    from adamtune.tracking import Tracker

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 3


@dataclass(frozen=True)
class WorkerOptions:
    """How one worker runs. ``tracking_uri`` None means MLflow's default store."""

    storage_url: str
    study_name: str
    device: str = "cpu"
    tracking: bool = True
    tracking_uri: str | None = None
    data_dir: Path | None = None
    seed: int | None = None
    name: str = "worker-0"
    threads: int | None = None


class TooManyFailures(AdamtuneError):
    """Every recent trial failed with an exception: the task or its data is broken, not the settings."""


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
    return parsed.type if parsed.type != "cuda" else f"cuda:{index}"


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_sigterm_handler() -> None:
    """Make SIGTERM behave like Ctrl-C (only possible from the main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def should_start_trial(study: optuna.Study, n_trials: int) -> bool:
    """True while the study holds fewer than ``n_trials`` finished plus running trials.

    Stale trials of dead workers are failed (and re-queued) first, so they do not hold places.
    """
    optuna.storages.fail_stale_trials(study)
    counts = count_trials(study.get_trials(deepcopy=False))
    return counts.finished + counts.running < n_trials


@dataclass
class Worker:
    """Runs trials of one study on one device, with the task's data already loaded there."""

    study: optuna.Study
    objective: Objective
    n_trials: int

    def run(self, on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None) -> int:
        """Run trials until the study holds ``n_trials`` finished ones.

        Args:
            on_trial: called with the study and each trial this worker ran (any state), e.g. for progress.

        Returns:
            The number of trials this worker ran.

        Raises:
            TooManyFailures: ``MAX_CONSECUTIVE_FAILURES`` trials in a row raised exceptions.
            KeyboardInterrupt: Ctrl-C or SIGTERM, after the running trial was recorded as failed.
        """
        install_sigterm_handler()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ran, consecutive_failures = 0, 0
        finished: list[FrozenTrial] = []
        while should_start_trial(self.study, self.n_trials):
            self.study.optimize(
                self.objective, n_trials=1, catch=(Exception,), callbacks=[lambda _, t: finished.append(t)]
            )
            trial = finished[-1]
            ran += 1
            if on_trial is not None:
                on_trial(self.study, trial)
            if trial.state != TrialState.FAIL:
                consecutive_failures = 0
                continue
            consecutive_failures += 1
            if consecutive_failures >= MAX_CONSECUTIVE_FAILURES:
                raise TooManyFailures(
                    f"{consecutive_failures} trials in a row failed with errors (see the log above); "
                    f"check task {self.objective.spec.task!r} and its data"
                )
        return ran


def open_tracker(study_name: str, options: WorkerOptions) -> Tracker | None:
    """The MLflow tracker for a study, or None when tracking is off.

    Raises:
        TrackingError: the tracking store cannot be used.
    """
    if not options.tracking:
        return None
    from adamtune.tracking import Tracker

    return Tracker(study_name, options.tracking_uri)


def make_worker(
    study: optuna.Study,
    spec: StudySpec,
    task: Task,
    data: TaskData,
    options: WorkerOptions,
    tracker: Tracker | None,
) -> Worker:
    """Assemble a worker: data moved to the device, CPU threads set."""
    from adamtune.objective import Objective

    if options.threads:
        import torch

        torch.set_num_threads(options.threads)
    objective = Objective(spec, task, data.to(options.device), options.device, tracker, options.seed, options.name)
    return Worker(study, objective, spec.n_trials)


def join_study(options: WorkerOptions) -> Worker:
    """A worker for an existing study, found by name in ``options.storage_url`` (``adamtune worker``).

    Raises:
        StorageError, DeviceError, TaskError, DataError, TrackingError: before any trial starts.
    """
    from adamtune.tasks import resolve_task

    options = replace(options, device=resolve_device(options.device))
    storage = open_storage(options.storage_url, create=False)
    study = load_study(options.study_name, storage, seed=options.seed)
    spec = spec_from_study(study)
    task = resolve_task(spec.task)
    data = task.load_data(options.data_dir or default_data_dir())
    return make_worker(study, spec, task, data, options, open_tracker(spec.study_name, options))


def default_data_dir() -> Path:
    """``$ADAMTUNE_DATA_DIR``, else the user's cache directory (``~/.cache/adamtune/data`` on Linux)."""
    configured = os.environ.get("ADAMTUNE_DATA_DIR")
    if configured:
        return Path(configured)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("adamtune")) / "data"
