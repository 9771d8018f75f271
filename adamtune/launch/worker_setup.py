"""Assembling a worker: its MLflow tracker, its objective (checkpoints, where it trains) and its study.

:func:`make_worker` puts together what :class:`~adamtune.trials.worker.Worker` runs with, for ``search`` (which
has already checked the task, the device and the data, and made or resumed the study) and for
:func:`join_study` (``adamtune worker`` and the local worker processes of ``pool.py``, which join a study
by name). The trial loop itself is ``worker.py``'s.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna

from adamtune.core.config import StudySpec
from adamtune.storage.backends import open_storage
from adamtune.storage.study import load_study, spec_from_study
from adamtune.training.devices import resolve_device
from adamtune.training.trainer import Trainer
from adamtune.trials.worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from adamtune.tasks.base import Task, TaskData
    from adamtune.tracking.tracker import Tracker

log = logging.getLogger(__name__)


def open_tracker(study_name: str, options: WorkerOptions, *, defer_open: bool = False) -> Tracker | None:
    """The MLflow tracker for a study, or None when tracking is off.

    ``defer_open``: check the store now and open it on the tracker's writer thread, so that this
    process's first trial does not wait for MLflow (see ``Tracker``); for a process that trains.

    Raises:
        TrackingError: the tracking store cannot be used.
    """
    if not options.tracking:
        return None
    from adamtune.report.artifacts import ReportArtifacts
    from adamtune.tracking.tracker import Tracker

    tracker = Tracker(study_name, options.tracking_uri, system_metrics=options.system_metrics, defer_open=defer_open)
    tracker.artifacts = ReportArtifacts()  # the plots and recommendation.json its parent run gets at the end
    return tracker


def make_worker(
    study: optuna.Study,
    spec: StudySpec,
    task: Task | None,
    data: TaskData | None,
    options: WorkerOptions,
    tracker: Tracker | None,
    trainer: Trainer | None = None,
) -> Worker:
    """Assemble a worker. Training in this process (no ``trainer``): ``data`` moved to the device (made
    the current CUDA device), CPU threads set. With a ``trainer`` (a prepared trainer process, see
    ``trainer.py``), ``task`` and ``data`` are not needed: the trainer holds them."""
    from adamtune.trials.objective import Objective

    if trainer is None:
        import torch

        assert task is not None and data is not None
        if options.threads:
            torch.set_num_threads(options.threads)
        if options.device.startswith("cuda:"):
            torch.cuda.set_device(options.device)  # implicit "current device" uses (synchronize, caches) stay on it
        data = data.to(options.device)
    if tracker is not None:
        tracker.attach(study, storage_url=options.storage_url)  # the study's MLflow parent run
    from adamtune.training.checkpoint import open_store, resolve_location

    location = resolve_location(options.checkpoint_store, options.storage_url)
    keep_best = bool(spec.keep_best_checkpoint)
    store = None if spec.checkpoint_every == 0 and not keep_best else open_store(location)
    objective = Objective(
        spec,
        task if trainer is None else trainer.info,
        data,
        options.device,
        tracker,
        options.seed,
        options.name,
        checkpoint_store=store,
        checkpoint_every=spec.checkpoint_every,
        keep_best_checkpoint=keep_best,
        checkpoint_location=location,
        trainer=trainer,
    )
    batch_trials = spec.batch_trials
    if batch_trials > 1 and trainer is None:
        from adamtune.training.batched import batch_blocker

        reason = batch_blocker(task, objective.data, options.device)
        if reason is not None:
            log.warning("batch_trials=%d: task %r trains one trial at a time: %s", batch_trials, spec.task, reason)
            batch_trials = 1
    from adamtune.confirm.stage import run_stage

    return Worker(
        study, objective, spec.n_trials, batch_trials=batch_trials if trainer is None else 1, after_target=run_stage
    )


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
    from adamtune.data.download import default_data_dir

    data = task.load_data(options.data_dir or default_data_dir())
    return make_worker(study, spec, task, data, options, open_tracker(spec.study_name, options))
