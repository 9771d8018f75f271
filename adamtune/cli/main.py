"""The ``adamtune`` command line: one click group; each command parses and calls one library function.

The commands live beside this module (``search_commands.py``: the ones that run trials;
``study_commands.py``: the ones that read or clean a study) and share their options and error handling
(``options.py``). Light start: nothing here imports torch, Optuna or MLflow at module level; each command
imports what it needs when it runs, so ``adamtune --help`` is instant.
"""

from __future__ import annotations

import click

from adamtune import __version__
from adamtune.cli import search_commands, study_commands


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


cli.add_command(search_commands.search)
cli.add_command(search_commands.worker)
cli.add_command(study_commands.ui)
cli.add_command(study_commands.summary)
cli.add_command(study_commands.recommend)
cli.add_command(study_commands.verify)
cli.add_command(study_commands.report)
cli.add_command(study_commands.studies)
cli.add_command(study_commands.cleanup)
cli.add_command(study_commands.tasks)


def main() -> None:
    """Console-script entry point."""
    from adamtune.cli.fastexit import freeze_at_exit
    from adamtune.core.signals import restore_sigint

    freeze_at_exit()  # the interpreter's shutdown skips collecting what the libraries left (1-2 s)
    restore_sigint()  # a command started in the background from a script still stops on kill -INT
    cli(prog_name="adamtune")
