"""The commands that read a study (``summary``, ``recommend``, ``report``, ``studies``, ``verify``), clean it
up (``cleanup``), list the tasks (``tasks``) and open the MLflow UI (``ui``).

Each parses its options and calls the library; heavy imports happen when a command runs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from adamtune.cli.options import (
    DEFAULT_STORAGE,
    data_dir_option,
    handle_errors,
    storage_option,
    study_options,
    tracking_options,
)
from adamtune.tasks import BUILTIN_TASKS


@click.command()
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


@click.command()
@click.option("--task", help="Only the studies of this task (or the study of this name).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (documented in docs/reference/json.md).")
@storage_option
@handle_errors
def summary(task: str | None, as_json: bool, storage: str) -> None:
    """Recommended Adam settings per study: gain over Adam's defaults, trials, importance, robust ranges.

    Reads only the study database (no training). The recommendation is the best finalist of the
    confirmation stage when its gain over Adam's defaults on fresh seeds has a 95% interval above 0, else
    Adam's defaults (the summary names the best candidate and its interval); see 'adamtune recommend'.
    """
    from adamtune.report.studies import summarize_storage
    from adamtune.storage.backends import open_storage

    # Every study of the storage (or of --task): each row is the summary adamtune.load(...).summary() gives.
    rows = summarize_storage(open_storage(storage, create=False), task)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    from rich.console import Console

    from adamtune.report.render import render_summary

    console = Console()
    for row in rows:
        console.print(render_summary(row))


@click.command()
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
    from adamtune.api import load
    from adamtune.report.export import check_format

    fmt = check_format(fmt)  # before the study is read, as any bad option
    result = load(study_name, storage=storage, task=task)
    if fmt != "table":
        click.echo(result.snippet(fmt), nl=False)
        return
    from rich.console import Console

    Console().print(result.table())


@click.command()
@study_options
@click.option("--seeds", default=5, show_default=True, metavar="N", help="Fresh seeds per setting (at least 2).")
@click.option("--device", default="auto", show_default=True, help="auto (first CUDA GPU, else cpu), cpu, cuda:N, mps.")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON (documented in docs/reference/json.md)."
)
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
    from adamtune.api import load
    from adamtune.report.verify import check_seeds

    check_seeds(seeds)  # before the study is read, as any bad option
    result = load(study_name, storage=storage, task=task)

    def on_run(which: str, run: Any) -> None:
        note = " (diverged)" if run.diverged else ""
        measured = ", ".join(f"{name} {value:.4g}" for name, value in run.metrics.items())
        click.echo(f"seed {run.seed} {which}: {measured}{note}", err=True)

    def on_tracking_error(message: str) -> None:
        click.echo(f"Warning: {message}; the result is stored on the study", err=True)

    record = result.verify(
        seeds,
        device=device,
        tracking=tracking,
        tracking_uri=tracking_uri,
        data_dir=data_dir,
        on_run=on_run,
        on_tracking_error=on_tracking_error,
    )
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    from adamtune.report.verify_result import render_result

    click.echo(render_result(record))


@click.command()
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
    from adamtune.api import load
    from adamtune.report.html import write_report

    files = write_report(load(study_name, storage=storage, task=task).study, out_dir, top=top)
    for name, reason in files.skipped.items():
        click.echo(f"skipped {name}: {reason}", err=True)
    click.echo(str(files.index))


@click.command()
@click.option("--task", help="Only the adamtune studies of this task (to warm-start a related study from).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (documented in docs/reference/json.md).")
@storage_option
@handle_errors
def studies(task: str | None, as_json: bool, storage: str) -> None:
    """List the studies in the storage with their task and trial counts (--task: only that task's).

    \b
    adamtune studies --task digits                  # the studies a new digits search can warm-start from
    adamtune search --task digits --study digits-2 --warm-start digits
    """
    from adamtune.report.studies import list_studies
    from adamtune.storage.backends import open_storage

    rows = list_studies(open_storage(storage, create=False), task)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        what = f"of task {task} " if task else ""
        click.echo(f"no study {what}in this storage; run 'adamtune search --task {task or 'TASK'}' first")
    for row in rows:
        counts = row["trials"]
        best = f", best score {row['best_score']:.4g}" if row["best_score"] is not None else ""
        what = f"task {row['task']}, {row['objective']}" if row["adamtune"] else "not an adamtune study"
        verified = ", verified" if row["verified"] else ""
        click.echo(
            f"{row['study']}: {what}; {counts['complete']} complete, {counts['pruned']} pruned, "
            f"{counts['diverged']} diverged, {counts['failed']} failed{best}{verified}"
        )
    if task and rows:
        click.echo(f"warm-start a new study from them: {warm_start_hint(task, [row['study'] for row in rows])}")


def warm_start_hint(task: str, names: list[str]) -> str:
    """The command that starts a new study of ``task`` from its existing studies ``names`` (the first three).

    Names a new ``--study`` when the task's default study (named like the task) exists: without it, the
    search would resume that study instead of starting one.
    """
    new = f" --study {task}-2" if task in names else ""
    return f"adamtune search --task {task}{new} --warm-start {','.join(names[:3])}"


@click.command()
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


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list (documented in docs/reference/json.md).")
@click.option(
    "--storage",
    envvar="ADAMTUNE_STORAGE",
    metavar="URL",
    help="Also count each task's studies in this study database [env ADAMTUNE_STORAGE]; default: "
    f"{DEFAULT_STORAGE} when that file exists (read only: nothing is created).",
)
@handle_errors
def tasks(as_json: bool, storage: str | None) -> None:
    """List the built-in tasks: dataset, model, sizes and default epochs (and each task's studies).

    JSON rows: name, description, dataset, model, default_epochs, default_batch_size, and extra (an object
    of task-specific notes, e.g. where the data comes from); when a study database was read, also studies
    (the names of that task's adamtune studies, to warm-start a new search from).
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
    by_task = _studies_by_task(storage)
    if by_task is not None:
        for entry in described:
            entry["studies"] = by_task.get(entry["name"], [])
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for entry in described:
        click.echo(f"{entry['name']}: {entry['description']}")
        for key, value in {**entry, **entry["extra"]}.items():
            if key not in ("name", "description", "extra", "studies"):
                click.echo(f"    {key}: {value}")
        names = entry.get("studies")
        if names:
            hint = warm_start_hint(entry["name"], names)
            click.echo(f"    studies: {len(names)} ({', '.join(names)}); start from them: {hint}")


def _studies_by_task(storage: str | None) -> dict[str, list[str]] | None:
    """The adamtune studies per task of ``storage`` (default: ./adamtune.db if it exists), or None when there
    is no database to read. Read-only: a missing SQLite file is no database, never a new one; a database
    that cannot be read is a warning (the tasks are listed all the same)."""
    if storage is None:
        if not Path(DEFAULT_STORAGE.removeprefix("sqlite:///")).is_file():
            return None  # fast: neither Optuna nor SQLAlchemy is imported
        storage = DEFAULT_STORAGE
    from adamtune.core.errors import AdamtuneError
    from adamtune.launch.warm_start import studies_by_task

    try:
        return studies_by_task(storage)
    except AdamtuneError as exc:
        click.echo(f"Warning: cannot count the studies of each task: {exc}", err=True)
        return None
