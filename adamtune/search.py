"""``adamtune search``: validate everything, create or resume the study, then run workers.

Order matters for "nothing written on bad input": the task, the device and the data are checked
before the study database or the MLflow store is created, so a typo or a missing dataset leaves the
working directory as it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.config import StudySpec
from adamtune.study import count_trials, create_or_resume, open_storage, trial_state
from adamtune.worker import WorkerOptions, default_data_dir, make_worker, open_tracker, resolve_device


@dataclass(frozen=True)
class SearchOutcome:
    """What a search left in the study."""

    study_name: str
    ran: int
    finished: int
    target: int
    best_value: float | None


def run_search(
    spec: StudySpec,
    options: WorkerOptions,
    on_trial: Callable[[optuna.Study, FrozenTrial], None] | None = None,
    on_start: Callable[[StudySpec, int], None] | None = None,
) -> SearchOutcome:
    """Create or resume ``spec``'s study in ``options.storage_url`` and run a worker in this process.

    Args:
        spec: the study; epochs and batch size left unset take the task's defaults.
        options: storage, device, tracking and data settings of the worker.
        on_trial: called after each trial with the study and the frozen trial.
        on_start: called once the study is open, with the final spec and the number of trials
            already finished (a resumed study may already be complete).
    """
    from adamtune.tasks import resolve_task

    task = resolve_task(spec.task)
    spec = spec.with_task_defaults(task.default_epochs, task.default_batch_size)
    options = replace(options, device=resolve_device(options.device), study_name=spec.study_name)
    data = task.load_data(options.data_dir or default_data_dir())
    options = replace(options, seed=spec.seed if spec.seed is not None else options.seed)
    with removed_if_new(sqlite_files(options.storage_url)):
        storage = open_storage(options.storage_url)
        tracker = open_tracker(spec.study_name, options)
    study = create_or_resume(spec, storage, seed=options.seed)
    worker = make_worker(study, spec, task, data, options, tracker)
    already = count_trials(study.get_trials(deepcopy=False)).finished
    if on_start is not None:
        on_start(spec, already)
    ran = worker.run(on_trial)
    trials = study.get_trials(deepcopy=False)
    return SearchOutcome(
        spec.study_name, ran, count_trials(trials).finished, spec.n_trials, best_value(trials, spec.direction)
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
