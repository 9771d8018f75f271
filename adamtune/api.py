"""adamtune's Python API: run a search and read its result, as ``adamtune search`` and ``summary`` do.

``adamtune.search(...)`` creates or resumes an Optuna study, runs its trials and the confirmation stage,
and returns a :class:`SearchResult`; ``adamtune.load(...)`` returns the same object for a study that is
already in a storage. The command line calls the same functions (``adamtune.cli``); errors are the same
:class:`~adamtune.core.errors.AdamtuneError` subclasses, which the command line turns into exit codes.
:func:`search` shows an example. This module imports neither torch nor MLflow until a search or a
verification runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.core.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    import pandas
    import rich.table

    from adamtune.confirm.stage import ConfirmRun
    from adamtune.core.config import StudySpec
    from adamtune.launch.search import SearchOutcome
    from adamtune.storage.outcomes import Counts

#: The study database a search uses when none is given (a SQLite file in the working directory).
DEFAULT_STORAGE = "sqlite:///adamtune.db"


@dataclass
class SearchResult:
    """An adamtune study in a storage, read on demand: its recommendation, confirmation, summary and trials.

    Returned by [search][adamtune.api.search] and [load][adamtune.api.load]. Every property and method
    reads the study database again, so a result stays current while other workers add trials.

    Attributes:
        study_name: The Optuna study's name.
        storage: The storage URL the study lives in.
        outcome: What the search that returned this result did (trials run, finished, target, seconds);
            None for a result from [load][adamtune.api.load].
    """

    study_name: str
    storage: str
    outcome: SearchOutcome | None = field(default=None, repr=False)
    _opened = None  # the opened study database (on first use, then reused): not a dataclass field

    def _open_storage(self) -> Any:
        if self._opened is None:
            from adamtune.storage.backends import open_storage

            self._opened = open_storage(self.storage, create=False)
        return self._opened

    @property
    def study(self) -> optuna.Study:
        """The Optuna study, loaded anew on each access.

        Raises:
            StorageError: the storage cannot be opened, or no longer holds the study.
        """
        from adamtune.storage.study import load_study

        return load_study(self.study_name, self._open_storage())

    def summary(self, *, importance: bool = True) -> dict[str, Any]:
        """The study's summary: the same object as one row of ``adamtune summary --json``.

        Args:
            importance: Compute the settings' importance (the slowest part); False leaves it None.

        Returns:
            The summary, whose shape ``docs/reference/json.md`` documents.
        """
        from adamtune.report.summary import summarize

        return summarize(self.study, importance=importance).as_dict()

    @property
    def recommendation(self) -> dict[str, Any] | None:
        """The recommended settings, or None for Adam's defaults or when nothing is recommendable yet.

        ``lr``, ``beta1``, ``beta2``, ``epsilon``, ``decay`` and any extra dimension of the space, when the
        confirmation stage found a finalist better than Adam's defaults with confidence
        (``summary()["rule_text"]`` says which rule chose).
        """
        row = self.summary(importance=False)
        if row["rule"] == "defaults" or row["recommended"] is None:
            return None
        return dict(row["recommended"])

    @property
    def confirmation(self) -> dict[str, Any] | None:
        """The confirmation stage as ``summary --json`` shows it, or None when the study was not confirmed.

        Its finalists, seeds, folds, intervals and the decision.
        """
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
        on_tracking_error: Callable[[str], None] | None = None,
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
            on_tracking_error: Called with a message when the MLflow run cannot be written (the result is
                stored on the study all the same); default: a warning in the log.

        Returns:
            The same object as ``adamtune verify --json`` (``docs/reference/json.md``).

        Raises:
            ConfigError: Bad ``seeds`` or ``device``.
            StorageError: The study has no complete trial yet.
            DataError: The task's dataset is missing and cannot be downloaded.
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
            on_tracking_error=on_tracking_error,
        )
        return result.as_dict()

    def snippet(self, fmt: str = "torch") -> str:
        """The recommendation as text to paste: ``torch`` or ``keras`` code, or ``json``/``toml`` data.

        Args:
            fmt: ``torch``, ``keras``, ``json`` or ``toml`` (as ``adamtune recommend --format``).

        Returns:
            The text ``adamtune recommend --format FMT`` prints.

        Raises:
            ConfigError: An unknown format.
            StorageError: The study has no complete trial yet.
        """
        from adamtune.report.export import FORMATTERS, check_format
        from adamtune.report.summary import recommendation

        fmt = check_format(fmt)
        if fmt == "table":
            raise ConfigError("snippet formats are torch, keras, json and toml ('table' is for the terminal)")
        return FORMATTERS[fmt](recommendation(self.study))

    def table(self) -> rich.table.Table:
        """The recommendation next to Adam's defaults as a table: what ``adamtune recommend`` prints.

        Returns:
            A `rich <https://rich.readthedocs.io>`_ table; print it with ``rich.print`` (a notebook shows it).

        Raises:
            StorageError: The study has no complete trial yet.
        """
        from adamtune.report.export import render_recommendation
        from adamtune.report.summary import recommendation

        return render_recommendation(recommendation(self.study))

    def trials_dataframe(self, **kwargs: Any) -> pandas.DataFrame:
        """The study's trials as a pandas DataFrame (needs pandas).

        Args:
            **kwargs: Passed to ``optuna.Study.trials_dataframe`` (``attrs``, ``multi_index``).

        Returns:
            One row per trial.
        """
        return self.study.trials_dataframe(**kwargs)


def search(
    task: str | None = None,
    *,
    n_trials: int | None = None,
    timeout: str | float | None = None,
    space: str | None = None,
    warm_start: str | Sequence[str] | None = None,
    stop_when_converged: bool | None = None,
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
        timeout: A time budget for the whole search, confirmation included: seconds or a duration such as
            ``"15m"`` or ``"2h"``. With ``n_trials`` the first reached ends the search; alone, it replaces
            the study file's trial target.
        space: ``"auto"`` searches lr alone, adding beta1, epsilon, beta2 and decay as the budget grows;
            ``"full"`` every dimension of the study file's space (default: the study file's, auto for
            built-in tasks).
        warm_start: Earlier studies (``NAME`` or ``URL#NAME``, a list or comma-separated) whose confirmed
            recommendations and top trials this study evaluates first.
        stop_when_converged: End the trial phase early once more search is unlikely to pay.
        study: The study's name (default: the task's name).
        storage: The study database's SQLAlchemy URL.
        config: A study file (TOML) to start from.
        epochs: Epochs per trial.
        batch_size: The batch size.
        objective: The validation metric to optimise, e.g. ``val_mae`` (default: the task's objective).
        sampler: The Optuna sampler: ``tpe`` (default), ``random``, ``qmc``, ``cmaes`` or ``gp``.
        pruner: The Optuna pruner: ``hyperband`` (default), ``median``, ``sha`` or ``none``.
        seed: Makes a one-worker search reproducible.
        confirm: Confirm the finalists against Adam's defaults on fresh seeds after the trials (default: on).
        confirm_top: Finalists the confirmation stage trains again on fresh seeds (default 3).
        confirm_seeds: Most fresh seeds per finalist and for Adam's defaults (default 5).
        confirm_folds: Confirm each seed on a fresh split of the training + validation rows, where the task
            allows (default: on); False reuses the task's validation rows (seeds only).
        confirm_budget: Most the confirmation stage trains, as a share of the epochs the search trials
            trained (default 0.4).
        checkpoint_every: Checkpoint each trial every this many epochs so that a retry resumes (0: never;
            default: every epoch for trials expected to take over a minute, else never).
        keep_best_checkpoint: Keep the final checkpoint of the best complete trial.
        batch_trials: Trials a worker trains at once as one vectorised model.
        workers: Worker processes (1: this process, with a trainer process where a core is spare).
        devices: ``auto``, or a list such as ``cuda:0,cuda:1`` or ``cpu``.
        tracking: Log every trial to MLflow (its curves).
        tracking_uri: The MLflow tracking store (default: MLflow's own default).
        system_metrics: Record CPU, GPU and memory use in each trial's MLflow run.
        data_dir: The dataset cache (default: the user cache directory).
        checkpoint_store: Where trial checkpoints go: a directory or ``s3://bucket/prefix``.
        progress: Show a live progress display on stderr, with a line per finished trial and confirmation
            run above it, as ``adamtune search`` does (off by default: a notebook gets log lines).
        on_start: Called with the final study settings and the number of trials already done.
        on_trial: Called with the study and each trial this process finished.
        on_log: Called with each line the search reports (default: above the progress display, else the
            ``adamtune`` logger at INFO).
        on_progress: Called with the study's counts and best value as they change.
        on_confirm_run: Called with each confirmation run this process finished.

    Returns:
        The study's [SearchResult][adamtune.api.SearchResult] (its ``outcome`` says what this search did).

    Raises:
        ConfigError: Bad settings (unknown task, bad ranges, a malformed study file); nothing is written.
        TaskError: A task that cannot be imported or is malformed.
        DataError: The task's dataset is missing and cannot be downloaded.
        DeviceError: A device in ``devices`` that this machine does not have.
        StorageError: The study database cannot be opened or written.
        TrackingError: The MLflow tracking store is unusable.
        KeyboardInterrupt: Ctrl-C or SIGTERM, after running trials were recorded as failed.

    Example:
        ```python
        import adamtune

        result = adamtune.search("digits", n_trials=30, storage="sqlite:///adamtune.db")
        print(result.recommendation)  # the recommended settings, or None (Adam's defaults)
        print(result.verify(seeds=5)["verdict"])
        print(result.snippet("torch"))
        ```
    """
    from adamtune.core.config import STUDY_KEYS, build_spec
    from adamtune.tasks import check_task_name

    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    if task is not None:
        check_task_name(task)
    # the arguments named like [study] keys of a study file override the file (validated there)
    overrides = {key: value for key, value in locals().items() if key in STUDY_KEYS and key != "task"}
    spec = build_spec(task, Path(config) if config is not None else None, study, overrides)
    check_task_name(spec.task)
    data_path = Path(data_dir) if data_dir is not None else None
    from adamtune.training.trainer_client import start_trainer

    # One worker trains in a trainer process where a core is spare; it starts first, so that its imports
    # (torch, the task, the data) overlap this process's (Optuna, the study database).
    with start_trainer(spec.task, data_path, devices, workers, spec.batch_trials) as trainer:
        from adamtune.launch.display import SearchDisplay
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
        hooks = SearchDisplay(progress, on_start, on_trial, on_log, on_progress, on_confirm_run)
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
    """The [SearchResult][adamtune.api.SearchResult] of a study already in ``storage``, found by name or by task.

    The same lookup as the ``--study`` and ``--task`` options of ``adamtune summary``, ``recommend``,
    ``verify`` and ``report``.

    Args:
        study: The study's name; it wins over ``task``.
        storage: The study database's SQLAlchemy URL.
        task: Without ``study``: the study named like the task, else the only study of that task. With
            neither: the storage's only adamtune study.

    Returns:
        The study's result (its ``outcome`` is None).

    Raises:
        StorageError: The storage cannot be opened, holds no such study (the message lists those it
            holds), or several studies match.
    """
    from adamtune.report.studies import find_study
    from adamtune.storage.backends import open_storage

    opened = open_storage(storage, create=False)
    result = SearchResult(find_study(opened, task, study).study_name, storage)
    result._opened = opened  # the commands that load a study read it at once: one opening serves both
    return result
