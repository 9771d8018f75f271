"""What every ``adamtune`` command shares: the error handling and the options declared once.

An :class:`~adamtune.core.errors.AdamtuneError` becomes ``Error: <message>`` on stderr and its exit code
(2 for bad input, 3 storage, 4 data, 5 tracking); Ctrl-C exits 130 after the running trial was recorded
as failed. Nothing here imports torch, Optuna or MLflow.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from adamtune.core.errors import AdamtuneError

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


def study_options(command: F) -> F:
    """``--task`` and ``--study``: which study a command is about (see ``report.find_study``)."""
    command = click.option(
        "--study", "study_name", envvar="ADAMTUNE_STUDY", help="Study name; default: the study of --task."
    )(command)
    return click.option(
        "--task", envvar="ADAMTUNE_TASK", help="Task whose study to use (the study named like it, or its only one)."
    )(command)
