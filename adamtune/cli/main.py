"""The ``adamtune`` command line: one click group, each command parses and calls one library function.

Light start: this module imports neither torch, optuna nor mlflow at module level; each command
imports what it needs when it runs, so ``adamtune --help`` is instant.

Errors: an :class:`~adamtune.core.errors.AdamtuneError` becomes ``Error: <message>`` on stderr and its
exit code (2 for bad input, 3 storage, 4 data, 5 tracking); click's own usage errors exit 2;
Ctrl-C exits 130 after the running trial was recorded as failed.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from adamtune import __version__
from adamtune.core.config import PRUNER_NAMES, SAMPLER_NAMES, build_spec
from adamtune.core.errors import AdamtuneError
from adamtune.tasks import BUILTIN_TASKS, check_task_name

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORAGE = "sqlite:///adamtune.db"
INTERRUPTED_EXIT = 130


def fail(message: str, code: int) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def handle_errors(command: F) -> F:
    """Turn adamtune errors and Ctrl-C into a one-line message and an exit code (no traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except AdamtuneError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; finished trials are saved, and running the same command resumes", INTERRUPTED_EXIT)

    return wrapper  # type: ignore[return-value]


def storage_option(command: F) -> F:
    return click.option(
        "--storage",
        envvar="ADAMTUNE_STORAGE",
        default=DEFAULT_STORAGE,
        show_default=True,
        metavar="URL",
        help="SQLAlchemy URL of the study database [env ADAMTUNE_STORAGE], e.g. postgresql+psycopg://user@host/db.",
    )(command)


def tracking_options(command: F) -> F:
    """``--tracking/--no-tracking``, ``--tracking-uri`` and ``--system-metrics`` (keyword ``system_metrics``)."""
    command = click.option(
        "--system-metrics",
        is_flag=True,
        help="Record CPU/GPU/memory use in each trial's MLflow run (system/* metrics; GPU needs nvidia-ml-py).",
    )(command)
    command = click.option(
        "--tracking/--no-tracking", default=True, show_default=True, help="Log every trial to MLflow."
    )(command)
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        metavar="URI",
        help="MLflow tracking URI [env MLFLOW_TRACKING_URI]; default: MLflow's own default store.",
    )(command)


def checkpoint_store_option(command: F) -> F:
    return click.option(
        "--checkpoint-store",
        envvar="ADAMTUNE_CHECKPOINT_STORE",
        metavar="DIR|s3://BUCKET/PREFIX",
        help="Where trial checkpoints go [env ADAMTUNE_CHECKPOINT_STORE]; every worker of a multi-host study "
        "must reach it. Default: <database>-checkpoints next to a SQLite file, else ./adamtune-checkpoints.",
    )(command)


def data_dir_option(command: F) -> F:
    return click.option(
        "--data-dir",
        envvar="ADAMTUNE_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        help="Dataset cache [env ADAMTUNE_DATA_DIR]; default: the user cache directory.",
    )(command)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="adamtune")
def cli() -> None:
    """Tune the Adam optimizer: Optuna studies in SQL, learning curves in MLflow.

    \b
    adamtune search --task digits --n-trials 30   # run (or resume) a study
    adamtune summary                              # what to use, and the gain over Adam's defaults
    adamtune recommend --task digits --format torch   # the settings as a snippet to paste
    adamtune verify --task digits                 # recommendation vs defaults on fresh seeds, test split
    mlflow ui                                     # every trial's learning curves
    """
    from adamtune.report.importance_import import for_commands

    for_commands()  # PED-ANOVA without scikit-learn's import (see importance_import.py)


@cli.command()
@click.option("--task", envvar="ADAMTUNE_TASK", help=f"Built-in task ({', '.join(BUILTIN_TASKS)}) or module:function.")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Study file (TOML); default: the built-in studies/<task>.toml.",
)
@click.option("--study", "study_name", envvar="ADAMTUNE_STUDY", help="Study name; default: the task name.")
@click.option(
    "--n-trials", type=click.IntRange(min=1), envvar="ADAMTUNE_N_TRIALS", help="Finished trials the study should hold."
)
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per trial (overrides the study file).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (overrides the study file).")
@click.option(
    "--objective",
    metavar="METRIC",
    help="Validation metric to optimise, e.g. val_loss, val_accuracy, val_mae; default: the task's objective.",
)
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help="Optuna sampler (default tpe).")
@click.option("--pruner", type=click.Choice(PRUNER_NAMES), help="Optuna pruner (default hyperband).")
@click.option("--seed", type=click.IntRange(min=0), help="Make a one-worker search reproducible.")
@click.option(
    "--confirm-top",
    type=click.IntRange(min=1),
    help="Finalists the confirmation stage trains again on fresh seeds (default 3).",
)
@click.option(
    "--confirm-seeds",
    type=click.IntRange(min=2),
    help="Most fresh seeds per finalist and for Adam's defaults in the confirmation stage (default 5).",
)
@click.option(
    "--confirm-folds/--no-confirm-folds",
    "confirm_folds",
    default=None,
    help="Confirm each seed on a fresh split of the training + validation rows, where the task allows "
    "(default: on); --no-confirm-folds reuses the task's validation rows (seeds only).",
)
@click.option(
    "--confirm-budget",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SHARE",
    help="Most the confirmation stage trains, as a share of the epochs the search trials trained (default "
    "0.4; never less than one finalist and the defaults on 3 seeds).",
)
@click.option(
    "--confirm/--no-confirm",
    "confirm",
    default=None,
    help="After the trials, confirm the finalists against Adam's defaults on fresh seeds (default: on).",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=0),
    metavar="EPOCHS",
    help="Checkpoint each trial every EPOCHS epochs so a retry resumes (0: never); default: every epoch "
    "for trials expected to take over a minute, else never.",
)
@click.option(
    "--keep-best-checkpoint",
    is_flag=True,
    default=None,
    help="Keep the final checkpoint of the best complete trial (<store>/<study>.best); others are removed.",
)
@click.option(
    "--batch-trials",
    type=click.IntRange(min=1),
    envvar="ADAMTUNE_BATCH_TRIALS",
    help="Trials a worker trains at once as one vectorised model (default 1; tasks that cannot batch: one at a time).",
)
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes; 1 runs in this process. Each loads the data once and trains one trial at a time.",
)
@click.option(
    "--devices",
    "--device",
    "devices",
    default="auto",
    show_default=True,
    help="auto (every CUDA GPU, else the CPU) or a list such as cuda:0,cuda:1 or cpu; workers take them in turn.",
)
@storage_option
@tracking_options
@data_dir_option
@checkpoint_store_option
@handle_errors
def search(
    task: str | None,
    config: Path | None,
    study_name: str | None,
    n_trials: int | None,
    epochs: int | None,
    batch_size: int | None,
    objective: str | None,
    sampler: str | None,
    pruner: str | None,
    seed: int | None,
    confirm_top: int | None,
    confirm_seeds: int | None,
    confirm_folds: bool | None,
    confirm_budget: float | None,
    confirm: bool | None,
    checkpoint_every: int | None,
    keep_best_checkpoint: bool | None,
    batch_trials: int | None,
    workers: int,
    devices: str,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    system_metrics: bool,
    data_dir: Path | None,
    checkpoint_store: str | None,
) -> None:
    """Create or resume a study and run trials until it holds --n-trials finished ones, then confirm.

    The confirmation stage trains the top finalists and Adam's defaults again on fresh seeds and
    recommends a finalist only if it is better with confidence (see the README's decision rule).

    \b
    adamtune search --task digits --workers 2 --devices cpu
    adamtune search --task cifar10 --workers 8 --devices cuda:0,cuda:1   # 4 trials at a time per GPU
    """
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}", 2)
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
    spec = build_spec(task, config, study_name, overrides)
    check_task_name(spec.task)
    from adamtune.training.trainer_client import start_trainer

    # One worker trains in a trainer process where a core is spare (trainer.py). It starts first, so that
    # its imports (torch, the task, the data) overlap this process's (optuna, the study database).
    with start_trainer(spec.task, data_dir, devices, workers, spec.batch_trials) as trainer:
        from adamtune.launch.search import best_value, run_search
        from adamtune.report.progress import SearchProgress
        from adamtune.search.worker import WorkerOptions
        from adamtune.storage.study import count_trials, redact_url

        options = WorkerOptions(
            storage_url=storage,
            study_name=spec.study_name,
            tracking=tracking,
            tracking_uri=tracking_uri,
            system_metrics=system_metrics,
            data_dir=data_dir,
            seed=seed,
            checkpoint_store=checkpoint_store,
        )
        display: dict[str, SearchProgress] = {}
        final: dict[str, Any] = {"spec": spec}

        def on_start(final_spec: Any, already: int) -> None:
            final["spec"] = final_spec
            click.echo(
                f"study {final_spec.study_name!r} (task {final_spec.task}, {final_spec.epochs} epochs, "
                f"{final_spec.sampler}/{final_spec.pruner}) in {redact_url(storage)}: "
                f"{already} of {final_spec.n_trials} trials done",
                err=True,
            )
            display["bar"] = SearchProgress(
                final_spec.study_name, final_spec.n_trials, final_spec.objective
            ).__enter__()

        def on_trial(study: Any, trial: Any) -> None:
            display["bar"].log(describe_trial(trial))
            if not display["bar"].add(trial, final["spec"].direction):
                return  # counted without reading the study (it is read every few seconds)
            try:
                trials = study.get_trials(deepcopy=False)
            except Exception:  # the database is away for a moment: the worker retries; the display waits
                return
            display["bar"].update(count_trials(trials), best_value(trials, final["spec"].direction))

        try:
            outcome = run_search(
                spec,
                options,
                on_trial=on_trial,
                on_start=on_start,
                workers=workers,
                devices=devices,
                trainer=trainer,
                on_log=lambda line: display["bar"].log(line) if "bar" in display else click.echo(line, err=True),
                on_progress=lambda counts, best: display["bar"].update(counts, best) if "bar" in display else None,
                on_confirm_run=lambda run: _log_line(display, describe_confirm_run(run)),
            )
        finally:
            if "bar" in display:
                display["bar"].__exit__(None, None, None)
    best = f"{outcome.best_value:.4g}" if outcome.best_value is not None else "none yet"
    click.echo(
        f"study {outcome.study_name!r}: {outcome.finished}/{outcome.target} finished trials "
        f"({outcome.ran} run now), best search-time {final['spec'].objective} {best}.",
        err=True,
    )
    if outcome.summary is not None:
        for line in outcome_lines(outcome.summary, outcome.search_seconds, outcome.stage_seconds):
            click.echo(line, err=True)
    if tracking:
        from adamtune.tracking.ui import experiment_url, study_ui_url, ui_base_url

        if outcome.experiment is not None:  # known from the search's own tracker
            url: str | None = experiment_url(ui_base_url(outcome.experiment[0]), outcome.experiment[1])
        else:
            url = study_ui_url(tracking_uri, outcome.study_name)
        if url is not None:
            local = not (tracking_uri or "").startswith(("http://", "https://"))
            click.echo(f"learning curves: {url}" + (" (after 'adamtune ui')" if local else ""), err=True)
    click.echo("Next: adamtune summary", err=True)


def _log_line(display: dict[str, Any], line: str) -> None:
    """A line above the live display when there is one, else on stderr."""
    if "bar" in display:
        display["bar"].log(line)
    else:
        click.echo(line, err=True)


def describe_confirm_run(run: Any) -> str:
    """One log line for a finished confirmation run: worker and device, arm, seed, value."""
    host = __import__("socket").gethostname()
    worker = run.worker.removeprefix(f"{host}-")
    prefix = f"[{' '.join(p for p in (worker, run.device) if p)}] " if worker or run.device else ""
    if run.value is None:
        return f"{prefix}confirm {run.arm} seed {run.seed}: failed"
    note = " (diverged)" if run.diverged else ""
    return f"{prefix}confirm {run.arm} seed {run.seed}: {run.metric} {run.value:.4g}{note}"


def outcome_lines(row: Any, search_seconds: float | None = None, stage_seconds: float | None = None) -> list[str]:
    """What a search ends with: the recommendation, the rule that chose it, and the stage's cost.

    The cost is given as wall time of this command (the stage against the search before it) when the
    stage ran here, and always as the confirmation runs' time against the trials' (start to end as Optuna
    records them, summed over workers).
    """
    conf = row.confirmation or {}
    lines = [f"recommendation: {row.rule_text_line()}"]
    if conf.get("status") in ("confirmed", "defaults", "in progress"):
        share, runs = conf.get("cost_share"), conf["runs"]["finished"]
        training = f"runs {conf['seconds']:.1f} s vs trials {conf['search_seconds']:.1f} s"
        training += f" ({share:.0%})" if share is not None else ""
        if search_seconds and stage_seconds:
            lines.append(
                f"confirmation: {runs} runs, {stage_seconds:.1f} s = {stage_seconds / search_seconds:.0%} of the "
                f"search's {search_seconds:.1f} s (wall time); {training}, summed over workers"
            )
        else:
            lines.append(f"confirmation: {runs} runs; {training}, summed over workers")
    return lines


@cli.command()
@click.option("--study", "study_name", envvar="ADAMTUNE_STUDY", required=True, help="Name of the study to join.")
@click.option(
    "--device", default="auto", show_default=True, help="auto (the first CUDA GPU, else the CPU), cpu, cuda:N or mps."
)
@click.option("--name", "worker_name", help="Name recorded on its trials and MLflow runs; default <host>-p<pid>.")
@storage_option
@tracking_options
@data_dir_option
@checkpoint_store_option
@handle_errors
def worker(
    study_name: str,
    device: str,
    worker_name: str | None,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    system_metrics: bool,
    data_dir: Path | None,
    checkpoint_store: str | None,
) -> None:
    """Join an existing study from this machine and run its trials until it holds its --n-trials.

    Then it shares the study's confirmation stage (finalists against Adam's defaults on fresh seeds), as
    every worker does.

    \b
    adamtune worker --study cifar10 --storage postgresql+psycopg://user@db/adamtune --device cuda:0

    Start the study with 'adamtune search' first; this worker uses its task, space and target.
    """
    import logging
    import os
    import socket

    from adamtune.launch.worker_setup import join_study
    from adamtune.search.worker import WorkerOptions
    from adamtune.storage.study import count_trials, redact_url
    from adamtune.training.devices import resolve_devices

    resolved = resolve_devices(device, 1)[0]
    name = worker_name or f"{socket.gethostname()}-p{os.getpid()}"
    label = name.removeprefix(f"{socket.gethostname()}-")
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(f"[{label} {resolved}] %(message)s"))
    logging.getLogger("adamtune").addHandler(handler)
    logging.getLogger("adamtune").setLevel(logging.INFO)
    options = WorkerOptions(
        storage_url=storage,
        study_name=study_name,
        device=resolved,
        tracking=tracking,
        tracking_uri=tracking_uri,
        system_metrics=system_metrics,
        data_dir=data_dir,
        name=name,
        label=label,
        checkpoint_store=checkpoint_store,
    )
    runner = join_study(options)
    counts = count_trials(runner.study.get_trials(deepcopy=False))
    click.echo(
        f"worker {name} on {resolved} joined study {study_name!r} in {redact_url(storage)}: "
        f"{counts.finished} of {runner.n_trials} trials done",
        err=True,
    )
    runner.on_confirm_run = lambda run: click.echo(describe_confirm_run(run), err=True)
    try:
        ran = runner.run(on_trial=lambda _study, trial: click.echo(describe_trial(trial), err=True))
    finally:
        if runner.objective.tracker is not None:
            runner.objective.tracker.close()  # send what is queued for MLflow, or say what was dropped
    counts = count_trials(runner.study.get_trials(deepcopy=False))
    click.echo(f"worker {name}: ran {ran} trial(s); the study holds {counts.finished} finished trials", err=True)
    from adamtune.report.summary import summarize

    for line in outcome_lines(summarize(runner.study, importance=False)):
        click.echo(line, err=True)


@cli.command()
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    metavar="URI",
    help="The store your searches logged to [env MLFLOW_TRACKING_URI]; default: MLflow's default (./mlflow.db).",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Interface to bind. The UI has no login: bind beyond localhost only on a trusted network.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True, help="Port to listen on.")
@click.option(
    "--study", "study_name", envvar="ADAMTUNE_STUDY", help="Open this study's runs; default: the store's only study."
)
@handle_errors
def ui(tracking_uri: str | None, host: str, port: int, study_name: str | None) -> None:
    """Start the MLflow UI on your studies' tracking store (replaces this process with 'mlflow ui').

    \b
    adamtune ui                                        # the default store, ./mlflow.db
    adamtune ui --tracking-uri sqlite:///runs/mlflow.db --port 5001 --study digits
    adamtune ui --tracking-uri http://127.0.0.1:5000   # a tracking server: prints its URL

    Each study is an experiment adamtune/<study>; its trials are nested under the study's parent run. The
    address printed opens the study's runs in the "Model training" view.
    """
    import os

    from adamtune.tracking.ui import ui_plan

    plan = ui_plan(tracking_uri, host, port, study_name)
    if plan.argv is None:
        click.echo(plan.message)
        return
    if plan.warning:
        click.echo(f"Warning: {plan.warning}", err=True)
    click.echo(plan.message, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(plan.argv[0], plan.argv)


def describe_trial(trial: Any) -> str:
    """One log line for a finished trial: worker and device, number, outcome, value and settings."""
    from adamtune.search.worker import worker_label
    from adamtune.storage.study import PARAMS_ATTR, trial_state

    state = trial_state(trial)
    params = trial.user_attrs.get(PARAMS_ATTR, {})
    shown = ("lr", "beta1", "beta2", "epsilon", "decay", "warmup", "weight_decay")  # the last two when on
    settings = " ".join(f"{k}={_fmt(params[k])}" for k in shown if k in params and (params[k] or k in shown[:5]))
    value = f" value={trial.value:.4g}" if trial.value is not None and state == "complete" else ""
    notes = ["baseline"] if trial.user_attrs.get("adamtune.baseline") else []
    if "failed_trial" in trial.system_attrs:
        notes.append(f"retry of {trial.system_attrs['failed_trial']}")
    if trial.user_attrs.get("adamtune.resumed_from_epoch"):
        notes.append(f"resumed after epoch {trial.user_attrs['adamtune.resumed_from_epoch']}")
    note = f" ({', '.join(notes)})" if notes else ""
    prefix = worker_label(trial)
    return f"{prefix + ' ' if prefix else ''}trial {trial.number}{note}: {state}{value}  {settings}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@cli.command()
@click.option("--task", help="Only the studies of this task (or the study of this name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (shape documented in the README).")
@storage_option
@handle_errors
def summary(task: str | None, as_json: bool, storage: str) -> None:
    """Recommended Adam settings per study: gain over Adam's defaults, trials, importance, robust ranges.

    Reads only the study database (no training). The recommendation is the best finalist of the
    confirmation stage when its gain over Adam's defaults on fresh seeds has a 95% interval above 0, else
    Adam's defaults (the summary names the best candidate and its interval); see 'adamtune recommend'.
    """
    from adamtune.report.summary import summarize_storage
    from adamtune.storage.study import open_storage

    rows = summarize_storage(open_storage(storage, create=False), task)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    from rich.console import Console

    from adamtune.report.summary import render_summary

    console = Console()
    for row in rows:
        console.print(render_summary(row))


def study_options(command: F) -> F:
    """``--task`` and ``--study``: which study a command is about (see ``report.find_study``)."""
    command = click.option(
        "--study", "study_name", envvar="ADAMTUNE_STUDY", help="Study name; default: the study of --task."
    )(command)
    return click.option(
        "--task", envvar="ADAMTUNE_TASK", help="Task whose study to use (the study named like it, or its only one)."
    )(command)


def _find_study(storage: str, task: str | None, study_name: str | None) -> Any:
    from adamtune.report.summary import find_study
    from adamtune.storage.study import open_storage

    return find_study(open_storage(storage, create=False), task, study_name)


@cli.command()
@study_options
@click.option(
    "--format",
    "fmt",
    default="table",
    show_default=True,
    metavar="FORMAT",
    help="table, json (settings as data), toml, torch or keras (a snippet to paste).",
)
@storage_option
@handle_errors
def recommend(task: str | None, study_name: str | None, fmt: str, storage: str) -> None:
    """Print a study's recommended Adam settings as a table, data (json, toml) or code (torch, keras).

    \b
    adamtune recommend --task digits --format torch   # needs `model`; defines optimizer, scheduler
    adamtune recommend --task digits --format json > adam.json
    """
    from adamtune.report.export import FORMATTERS, check_format
    from adamtune.report.summary import recommendation

    fmt = check_format(fmt)
    row = recommendation(_find_study(storage, task, study_name))
    if fmt != "table":
        click.echo(FORMATTERS[fmt](row), nl=False)
        return
    from rich.console import Console

    from adamtune.report.export import render_recommendation

    Console().print(render_recommendation(row))


@cli.command()
@study_options
@click.option("--seeds", default=5, show_default=True, metavar="N", help="Fresh seeds per setting (at least 2).")
@click.option("--device", default="auto", show_default=True, help="auto (first CUDA GPU, else cpu), cpu, cuda:N, mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON (shape documented in the README).")
@click.option("--tracking/--no-tracking", default=True, show_default=True, help="Log a 'verify' run to MLflow.")
@click.option(
    "--tracking-uri",
    envvar="MLFLOW_TRACKING_URI",
    metavar="URI",
    help="MLflow tracking URI [env MLFLOW_TRACKING_URI]; default: MLflow's own default store.",
)
@storage_option
@data_dir_option
@handle_errors
def verify(
    task: str | None,
    study_name: str | None,
    seeds: int,
    device: str,
    as_json: bool,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    data_dir: Path | None,
) -> None:
    """Train the recommendation and Adam's defaults on fresh seeds; compare them on the test split.

    Full epochs of the study, no pruning. Reports mean ± std of each, the paired and Welch t-tests, and a
    verdict; stores the result on the study (shown by 'adamtune summary') and logs an MLflow run 'verify'.
    """
    from adamtune.report.verify import check_seeds

    check_seeds(seeds)
    from adamtune.report.verify import run_verify

    study = _find_study(storage, task, study_name)

    def on_run(which: str, run: Any) -> None:
        note = " (diverged)" if run.diverged else ""
        measured = ", ".join(f"{name} {value:.4g}" for name, value in run.metrics.items())
        click.echo(f"seed {run.seed} {which}: {measured}{note}", err=True)

    def on_tracking_error(message: str) -> None:
        click.echo(f"Warning: {message}; the result is stored on the study", err=True)

    result = run_verify(
        study,
        seeds=seeds,
        device=device,
        data_dir=data_dir,
        tracking=tracking,
        tracking_uri=tracking_uri,
        on_run=on_run,
        on_tracking_error=on_tracking_error,
    )
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
        return
    from adamtune.report.verify import render_result

    click.echo(render_result(result))


@cli.command()
@study_options
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder for index.html and the plots (created if missing; files of the same names are replaced).",
)
@click.option("--top", default=5, show_default=True, type=click.IntRange(min=1), help="Trials in the learning curves.")
@storage_option
@handle_errors
def report(task: str | None, study_name: str | None, out_dir: Path, top: int, storage: str) -> None:
    """Write a study's plots (PNG + interactive HTML) and one index.html page into --out."""
    from adamtune.report.html import write_report

    files = write_report(_find_study(storage, task, study_name), out_dir, top=top)
    for name, reason in files.skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(str(files.index))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (shape documented in the README).")
@storage_option
@handle_errors
def studies(as_json: bool, storage: str) -> None:
    """List the studies in the storage with their task and trial counts."""
    from adamtune.report.summary import list_studies
    from adamtune.storage.study import open_storage

    rows = list_studies(open_storage(storage, create=False))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no study in this storage; run 'adamtune search --task TASK' first")
    for row in rows:
        counts = row["trials"]
        best = f", best score {row['best_score']:.4g}" if row["best_score"] is not None else ""
        what = f"task {row['task']}, {row['objective']}" if row["adamtune"] else "not an adamtune study"
        verified = ", verified" if row["verified"] else ""
        click.echo(
            f"{row['study']}: {what}; {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['diverged']} diverged, {counts['failed']} failed{best}{verified}"
        )


@cli.command()
@click.option("--study", "study_name", envvar="ADAMTUNE_STUDY", required=True, help="Name of the study to clean up.")
@tracking_options
@storage_option
@handle_errors
def cleanup(study_name: str, tracking: bool, tracking_uri: str | None, system_metrics: bool, storage: str) -> None:
    """Fail and re-queue trials left RUNNING by dead workers, and close their MLflow runs.

    A trial is stale when its heartbeat (or, if it never beat, its start) is older than the grace period
    (ADAMTUNE_GRACE_SECONDS, default 30). Trials with a live heartbeat are left alone.
    """
    from adamtune.launch.cleanup import cleanup_study

    click.echo(cleanup_study(storage, study_name, tracking=tracking, tracking_uri=tracking_uri).describe())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (shape documented in the README).")
@handle_errors
def tasks(as_json: bool) -> None:
    """List the built-in tasks: dataset, model, sizes and default epochs.

    JSON rows: name, description, dataset, model, default_epochs, default_batch_size, and extra (an object
    of task-specific notes, e.g. where the data comes from).
    """
    from adamtune.tasks import resolve_task

    described = []
    for name in BUILTIN_TASKS:
        task = resolve_task(name)
        described.append(
            {
                "name": task.name,
                "description": task.description,
                "dataset": task.dataset,
                "model": task.model,
                "default_epochs": task.default_epochs,
                "default_batch_size": task.default_batch_size,
                "extra": dict(task.extra),
            }
        )
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for entry in described:
        click.echo(f"{entry['name']}: {entry['description']}")
        for key, value in {**entry, **entry["extra"]}.items():
            if key not in ("name", "description", "extra"):
                click.echo(f"    {key}: {value}")


def main() -> None:
    """Console-script entry point."""
    from adamtune.cli.fastexit import freeze_at_exit
    from adamtune.core.signals import restore_sigint

    freeze_at_exit()  # the interpreter's shutdown skips collecting what the libraries left (1-2 s)
    restore_sigint()  # a command started in the background from a script still stops on kill -INT
    cli(prog_name="adamtune")
