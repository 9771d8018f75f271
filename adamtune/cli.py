"""The ``adamtune`` command line: one click group, each command parses and calls one library function.

Light start: this module imports neither torch, optuna nor mlflow at module level; each command
imports what it needs when it runs, so ``adamtune --help`` is instant.

Errors: an :class:`~adamtune.errors.AdamtuneError` becomes ``Error: <message>`` on stderr and its
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
from adamtune.config import OBJECTIVES, PRUNER_NAMES, SAMPLER_NAMES, build_spec
from adamtune.errors import AdamtuneError
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
    command = click.option(
        "--tracking/--no-tracking", default=True, show_default=True, help="Log every trial to MLflow."
    )(command)
    return click.option(
        "--tracking-uri",
        envvar="MLFLOW_TRACKING_URI",
        metavar="URI",
        help="MLflow tracking URI [env MLFLOW_TRACKING_URI]; default: MLflow's own default store.",
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
    mlflow ui                                     # every trial's learning curves
    """


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
@click.option("--objective", type=click.Choice(list(OBJECTIVES)), help="Validation metric to optimise.")
@click.option("--sampler", type=click.Choice(SAMPLER_NAMES), help="Optuna sampler (default tpe).")
@click.option("--pruner", type=click.Choice(PRUNER_NAMES), help="Optuna pruner (default hyperband).")
@click.option("--seed", type=click.IntRange(min=0), help="Make a one-worker search reproducible.")
@click.option("--device", default="cpu", show_default=True, help="Where to train: cpu, cuda, cuda:N, mps.")
@storage_option
@tracking_options
@data_dir_option
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
    device: str,
    storage: str,
    tracking: bool,
    tracking_uri: str | None,
    data_dir: Path | None,
) -> None:
    """Create or resume a study and run trials until it holds --n-trials finished ones."""
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
    }
    spec = build_spec(task, config, study_name, overrides)
    check_task_name(spec.task)

    from adamtune.progress import SearchProgress
    from adamtune.search import best_value, run_search
    from adamtune.study import count_trials
    from adamtune.worker import WorkerOptions

    options = WorkerOptions(
        storage_url=storage,
        study_name=spec.study_name,
        device=device,
        tracking=tracking,
        tracking_uri=tracking_uri,
        data_dir=data_dir,
        seed=seed,
    )
    display: dict[str, SearchProgress] = {}

    def on_start(final_spec: Any, already: int) -> None:
        click.echo(
            f"study {final_spec.study_name!r} (task {final_spec.task}, {final_spec.epochs} epochs, "
            f"{final_spec.sampler}/{final_spec.pruner}) in {storage}: {already} of {final_spec.n_trials} trials done",
            err=True,
        )
        display["bar"] = SearchProgress(final_spec.study_name, final_spec.n_trials, final_spec.objective).__enter__()

    def on_trial(study: Any, trial: Any) -> None:
        trials = study.get_trials(deepcopy=False)
        display["bar"].log(describe_trial(trial))
        display["bar"].update(count_trials(trials), best_value(trials, spec.direction))

    try:
        outcome = run_search(spec, options, on_trial=on_trial, on_start=on_start)
    finally:
        if "bar" in display:
            display["bar"].__exit__(None, None, None)
    best = f"{outcome.best_value:.4g}" if outcome.best_value is not None else "none yet"
    click.echo(
        f"study {outcome.study_name!r}: {outcome.finished}/{outcome.target} finished trials "
        f"({outcome.ran} run now), best {spec.objective} {best}. Next: adamtune summary",
        err=True,
    )


def describe_trial(trial: Any) -> str:
    """One log line for a finished trial: number, outcome, value and settings."""
    from adamtune.study import PARAMS_ATTR, trial_state

    state = trial_state(trial)
    params = trial.user_attrs.get(PARAMS_ATTR, {})
    settings = " ".join(f"{k}={_fmt(params[k])}" for k in ("lr", "beta1", "beta2", "epsilon", "decay") if k in params)
    value = f" value={trial.value:.4g}" if trial.value is not None and state == "complete" else ""
    baseline = " (baseline)" if trial.user_attrs.get("adamtune.baseline") else ""
    return f"trial {trial.number}{baseline}: {state}{value}  {settings}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@cli.command()
@click.option("--task", help="Only the studies of this task (or the study of this name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (shape documented in the README).")
@storage_option
@handle_errors
def summary(task: str | None, as_json: bool, storage: str) -> None:
    """Recommended Adam settings per study, and their gain over Adam's defaults."""
    from adamtune.report import summarize_storage
    from adamtune.study import open_storage

    rows = summarize_storage(open_storage(storage, create=False), task)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    from rich.console import Console

    console = Console()
    for row in rows:
        console.print(render_summary(row))


def render_summary(row: Any) -> Any:
    """A rich table for one study summary."""
    from rich.table import Table

    counts = row.counts
    caption = (
        f"trials: {counts.complete} complete, {counts.pruned} pruned, "
        f"{counts.diverged} diverged, {counts.failed} failed"
    )
    table = Table(title=f"{row.study} (task {row.task})", title_justify="left", caption=caption, caption_justify="left")
    table.add_column("setting")
    table.add_column("recommended", justify="right")
    table.add_column("Adam default", justify="right")
    from adamtune.space import BASELINE

    if row.recommended is None:
        table.add_row("(no complete trial yet)", "-", "-")
        return table
    for key in ("lr", "beta1", "beta2", "epsilon", "decay", *row.extra_dimensions):
        table.add_row(key, _fmt(getattr(row.recommended, key)), _fmt(getattr(BASELINE, key)))
    table.add_section()
    baseline = f"{row.baseline_value:.4g}" if row.baseline_value is not None else "-"
    table.add_row(f"{row.objective} (trial {row.recommended_trial})", f"{row.value:.4g}", baseline)
    if row.gain is not None:
        relative = f" ({row.relative_gain:+.1%})" if row.relative_gain is not None else ""
        verdict = "better" if row.gain > 0 else "not better"
        table.add_row("gain over default", f"{row.gain:+.4g}{relative}", verdict)
    return table


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@handle_errors
def tasks(as_json: bool) -> None:
    """List the built-in tasks: dataset, model, sizes and default epochs."""
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
                **task.extra,
            }
        )
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for entry in described:
        click.echo(f"{entry['name']}: {entry['description']}")
        for key, value in entry.items():
            if key not in ("name", "description"):
                click.echo(f"    {key}: {value}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="adamtune")
