"""adamtune's Python API: run a search and read its result, as ``adamtune search`` and ``summary`` do.

``adamtune.search(...)`` creates or resumes an Optuna study, runs its trials and the confirmation stage,
and returns a :class:`SearchResult`; ``adamtune.load(...)`` returns the same object for a study that is
already in a storage. The command line calls the same functions (``adamtune.cli``); errors are the same
:class:`~adamtune.core.errors.AdamtuneError` subclasses, which the command line turns into exit codes.

Example::

    import adamtune

    result = adamtune.search("digits", n_trials=30, storage="sqlite:///adamtune.db")
    print(result.recommendation)          # the recommended settings, or None (Adam's defaults)
    print(result.verify(seeds=5)["verdict"])
    print(result.snippet("torch"))

This module imports neither torch nor MLflow until a search or a verification runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import pandas

    from adamtune.confirm.stage import ConfirmRun
    from adamtune.core.config import StudySpec
    from adamtune.launch.search import SearchOutcome
    from adamtune.storage.outcomes import Counts

#: The study database a search uses when none is given (a SQLite file in the working directory).
DEFAULT_STORAGE = "sqlite:///adamtune.db"

log = logging.getLogger("adamtune")


@dataclass
class SearchResult:
    """An adamtune study in a storage, read on demand: its recommendation, confirmation, summary and trials.

    Returned by :func:`search` and :func:`load`. Every property reads the study database again, so a
    result stays current while other workers add trials.

    Attributes:
        study_name: The Optuna study's name.
        storage: The storage URL the study lives in.
        outcome: What the search that returned this result did (trials run, finished, target, seconds);
            None for a result from :func:`load`.
    """

    study_name: str
    storage: str
    outcome: SearchOutcome | None = field(default=None, repr=False)

    @property
    def study(self) -> optuna.Study:
        """The Optuna study (opened anew on each access)."""
        from adamtune.storage.backends import open_storage
        from adamtune.storage.study import load_study

        return load_study(self.study_name, open_storage(self.storage, create=False))

    def summary(self, *, importance: bool = True) -> dict[str, Any]:
        """The study's summary: the same object as one row of ``adamtune summary --json``.

        Args:
            importance: Compute the settings' importance (the slowest part); False leaves it None.
        """
        from adamtune.report.summary import summarize

        return summarize(self.study, importance=importance).as_dict()

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """The recommended settings (``lr``, ``beta1``, ``beta2``, ``epsilon``, ``decay`` and any extra
        dimension of the space) when the confirmation stage found a finalist better than Adam's defaults
        with confidence; None when the recommendation is Adam's defaults or nothing is recommendable yet.
        ``summary()["rule_text"]`` says which rule chose."""
        row = self.summary(importance=False)
        if row["rule"] == "defaults" or row["recommended"] is None:
            return None
        return dict(row["recommended"])

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The confirmation stage as ``summary --json`` shows it (finalists, seeds, folds, intervals, the
        decision); None when the study was not confirmed."""
        return self.summary(importance=False)["confirmation"]

    def verify(
        self,
        seeds: int = 5,
        *,
        device: str = "auto",
        tracking: bool = False,
        tracking_uri: str | None = None,
        data_dir: str | Path | None = None,
        on_run: Callable[[str, Any], None] | None = None,
    ) -> dict[str, Any]:
        """Train the recommendation and Adam's defaults on fresh seeds and compare them on the test split.

        The same as ``adamtune verify``: the result is stored on the study (``summary`` shows it) and, with
        ``tracking``, logged as an MLflow run.

        Args:
            seeds: Fresh seeds per setting (at least 2).
            device: ``auto``, ``cpu``, ``cuda:N`` or ``mps``.
            tracking: Log a ``verify`` run to MLflow.
            tracking_uri: The MLflow tracking store (default: MLflow's own default).
            data_dir: The dataset cache (default: the user cache directory).
            on_run: Called with ``("recommended" | "default", run)`` after each training.

        Returns:
            The same object as ``adamtune verify --json``.

        Raises:
            ConfigError: bad ``seeds`` or ``device``.
            StorageError: the study has no complete trial yet.
            DataError: the task's dataset is missing and cannot be downloaded.
        """
        from adamtune.report.verify import check_seeds, run_verify

        check_seeds(seeds)
        result = run_verify(
            self.study,
            seeds=seeds,
            device=device,
            data_dir=Path(data_dir) if data_dir is not None else None,
            tracking=tracking,
            tracking_uri=tracking_uri,
            on_run=on_run,
        )
        return result.as_dict()

    def snippet(self, fmt: str = "torch") -> str:
        """The recommendation as text to paste: ``torch`` or ``keras`` code, or ``json``/``toml`` data.

        Raises:
            ConfigError: an unknown format.
            StorageError: the study has no complete trial yet.
        """
        from adamtune.report.export import FORMATTERS, check_format
        from adamtune.report.summary import recommendation

        fmt = check_format(fmt)
        if fmt == "table":
            raise ConfigError("snippet formats are torch, keras, json and toml ('table' is for the terminal)")
        return FORMATTERS[fmt](recommendation(self.study))

    def trials_dataframe(self, **kwargs: Any) -> pandas.DataFrame:
        """The study's trials as a pandas DataFrame (``optuna.Study.trials_dataframe``; needs pandas)."""
        return self.study.trials_dataframe(**kwargs)


def search(
    task: str | None = None,
    *,
    n_trials: int | None = None,
    study: str | None = None,
    storage: str = DEFAULT_STORAGE,
    config: str | Path | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    objective: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    seed: int | None = None,
    confirm: bool | None = None,
    confirm_top: int | None = None,
    confirm_seeds: int | None = None,
    confirm_folds: bool | None = None,
    confirm_budget: float | None = None,
    checkpoint_every: int | None = None,
    keep_best_checkpoint: bool | None = None,
    batch_trials: int | None = None,
    workers: int = 1,
    devices: str = "auto",
    tracking: bool = True,
    tracking_uri: str | None = None,
    system_metrics: bool = False,
    data_dir: str | Path | None = None,
    checkpoint_store: str | None = None,
    progress: bool = False,
    on_start: Callable[[StudySpec, int], None] | None = None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    on_progress: Callable[[Counts, float | None], None] | None = None,
    on_confirm_run: Callable[[ConfirmRun], None] | None = None,
) -> SearchResult:
    """Create or resume a study and run trials until it holds ``n_trials`` finished ones, then confirm.

    The same search as ``adamtune search``, with the same study, rules and defaults: the settings of a
    study file (``config``, else the task's built-in file), overridden by the arguments given here.
    Blocks until the search and its confirmation stage are done. Ctrl-C (``KeyboardInterrupt``) stops it:
    finished trials stay, running ones are recorded as failed, and the same call resumes.

    Args:
        task: A built-in task name (``adamtune tasks``) or ``module:name`` of your ``Task``/``LoopTask``;
            may be left out when ``config`` names it.
        n_trials: The study's trial target (default: the study file's, 30 for built-in tasks).
        study: The study's name (default: the task's name).
        storage: The study database's SQLAlchemy URL.
        config: A study file (TOML) to start from.
        epochs, batch_size, objective, sampler, pruner, seed: Override the study file.
        confirm, confirm_top, confirm_seeds, confirm_folds, confirm_budget: The confirmation stage (see
            ``adamtune search --help``).
        checkpoint_every, keep_best_checkpoint, checkpoint_store: Trial checkpoints.
        batch_trials: Trials a worker trains at once as one vectorised model.
        workers: Worker processes (1: this process, with a trainer process where a core is spare).
        devices: ``auto``, or a list such as ``cuda:0,cuda:1`` or ``cpu``.
        tracking, tracking_uri, system_metrics: MLflow tracking (each trial's curves).
        data_dir: The dataset cache.
        progress: Show a live progress display on stderr, with a line per finished trial and confirmation
            run above it, as ``adamtune search`` does (off by default: a notebook gets log lines).
        on_start: Called with the final study settings and the number of trials already done.
        on_trial: Called with the study and each trial this process finished.
        on_log: Called with each line the search reports (default: above the progress display, else the
            ``adamtune`` logger at INFO).
        on_progress: Called with the study's counts and best value as they change.
        on_confirm_run: Called with each confirmation run this process finished.

    Returns:
        The study's :class:`SearchResult` (its ``outcome`` says what this search did).

    Raises:
        ConfigError: bad settings (unknown task, bad ranges, a malformed study file), before anything is
            written.
        TaskError, DataError, DeviceError, StorageError, TrackingError: as ``adamtune search`` reports them.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after running trials were recorded as failed.
    """
    from adamtune.core.config import build_spec
    from adamtune.tasks import check_task_name

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if task is not None:
        check_task_name(task)
    overrides = {
        "n_trials": n_trials,
        "epochs": epochs,
        "batch_size": batch_size,
        "objective": objective,
        "sampler": sampler,
        "pruner": pruner,
        "seed": seed,
        "confirm": confirm,
        "confirm_top": confirm_top,
        "confirm_seeds": confirm_seeds,
        "confirm_folds": confirm_folds,
        "confirm_budget": confirm_budget,
        "checkpoint_every": checkpoint_every,
        "keep_best_checkpoint": keep_best_checkpoint,
        "batch_trials": batch_trials,
    }
    spec = build_spec(task, Path(config) if config is not None else None, study, overrides)
    check_task_name(spec.task)
    data_path = Path(data_dir) if data_dir is not None else None
    from adamtune.training.trainer_client import start_trainer

    # One worker trains in a trainer process where a core is spare; it starts first, so that its imports
    # (torch, the task, the data) overlap this process's (Optuna, the study database).
    with start_trainer(spec.task, data_path, devices, workers, spec.batch_trials) as trainer:
        from adamtune.launch.search import run_search
        from adamtune.trials.worker import WorkerOptions

        options = WorkerOptions(
            storage_url=storage,
            study_name=spec.study_name,
            tracking=tracking,
            tracking_uri=tracking_uri,
            system_metrics=system_metrics,
            data_dir=data_path,
            seed=seed,
            checkpoint_store=checkpoint_store,
        )
        hooks = _Display(progress, on_start, on_trial, on_log, on_progress, on_confirm_run)
        try:
            outcome = run_search(
                spec,
                options,
                on_trial=hooks.trial,
                on_start=hooks.start,
                workers=workers,
                devices=devices,
                trainer=trainer,
                on_log=hooks.log,
                on_progress=hooks.progress,
                on_confirm_run=hooks.confirm_run,
            )
        finally:
            hooks.close()
    return SearchResult(outcome.study_name, storage, outcome)


def load(study: str | None = None, *, storage: str = DEFAULT_STORAGE, task: str | None = None) -> SearchResult:
    """The :class:`SearchResult` of a study already in ``storage``.

    Args:
        study: The study's name; default: the study of ``task``, or the storage's only adamtune study.
        storage: The study database's SQLAlchemy URL.
        task: Find the study by its task instead of its name.

    Raises:
        StorageError: the storage cannot be opened, or holds no such study (the message lists those it
            holds).
    """
    from adamtune.report.studies import find_study
    from adamtune.storage.backends import open_storage

    found = find_study(open_storage(storage, create=False), task, study)
    return SearchResult(found.study_name, storage)


class _Display:
    """A search's callbacks: the caller's, plus the live progress display when asked for."""

    def __init__(
        self,
        progress: bool,
        on_start: Callable[[StudySpec, int], None] | None,
        on_trial: Callable[[Any, Any], None] | None,
        on_log: Callable[[str], None] | None,
        on_progress: Callable[[Counts, float | None], None] | None,
        on_confirm_run: Callable[[ConfirmRun], None] | None,
    ) -> None:
        self.wanted = progress
        self.bar: Any = None
        self.spec: StudySpec | None = None
        self._on_start, self._on_trial, self._on_log = on_start, on_trial, on_log
        self._on_progress, self._on_confirm_run = on_progress, on_confirm_run

    def start(self, spec: StudySpec, already: int) -> None:
        self.spec = spec
        if self._on_start is not None:
            self._on_start(spec, already)
        if self.wanted:
            from adamtune.report.progress import SearchProgress

            self.bar = SearchProgress(spec.study_name, spec.n_trials, spec.objective).__enter__()

    def trial(self, study: Any, trial: Any) -> None:
        if self.bar is not None and self.spec is not None:
            from adamtune.report.trial_lines import describe_trial

            self.bar.log(describe_trial(trial))
            if self.bar.add(trial, self.spec.direction):  # else counted without reading the study
                self._update_from(study)
        if self._on_trial is not None:
            self._on_trial(study, trial)

    def _update_from(self, study: Any) -> None:
        from adamtune.launch.search import best_value
        from adamtune.storage.outcomes import count_trials

        try:
            trials = study.get_trials(deepcopy=False)
        except Exception:  # the database is away for a moment: the worker retries; the display waits
            return
        assert self.spec is not None
        self.bar.update(count_trials(trials), best_value(trials, self.spec.direction))

    def log(self, line: str) -> None:
        if self._on_log is not None:
            self._on_log(line)
        elif self.bar is not None:
            self.bar.log(line)
        elif self.wanted:  # a terminal display was asked for: its lines before it starts go to stderr
            print(line, file=sys.stderr, flush=True)
        else:
            log.info(line)

    def progress(self, counts: Counts, best: float | None) -> None:
        if self.bar is not None:
            self.bar.update(counts, best)
        if self._on_progress is not None:
            self._on_progress(counts, best)

    def confirm_run(self, run: ConfirmRun) -> None:
        if self.wanted:
            from adamtune.report.trial_lines import describe_confirm_run

            self.log(describe_confirm_run(run))
        if self._on_confirm_run is not None:
            self._on_confirm_run(run)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
