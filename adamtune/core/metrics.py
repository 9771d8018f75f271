"""Metric names and directions, shared by tasks, the study spec, the trial context and the reports.

Naming. A task names its metrics *bare* (``loss``, ``accuracy``, ``mae``); adamtune stores each one with
the prefix of the split it was measured on: ``val_mae`` during the search and confirmation,
``test_mae`` during ``verify``. A study's objective is a stored ``val_*`` name. Metrics a training loop
logs without a split (``train_loss``, ``lr``) are stored as they are named.

Directions. The task declares the direction of its objective. For other metrics a study may be asked
to optimise, :data:`KNOWN_DIRECTIONS` gives the usual one (``loss``/``mse``/``mae`` minimise,
``accuracy``/``r2`` maximise) unless the task's ``directions`` says otherwise; a metric with neither is
an error, never a silent guess.

This module imports nothing heavy (the CLI and ``config.py`` use it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: The splits a metric can be measured on: ``val`` in search and confirmation, ``test`` in ``verify``.
SPLITS = ("val", "test")
DIRECTIONS = ("minimize", "maximize")
#: The direction of common metric names, used when a task does not declare one.
KNOWN_DIRECTIONS: dict[str, str] = {
    "loss": "minimize",
    "mse": "minimize",
    "mae": "minimize",
    "rmse": "minimize",
    "error": "minimize",
    "perplexity": "minimize",
    "accuracy": "maximize",
    "r2": "maximize",
    "f1": "maximize",
    "auc": "maximize",
}

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def bare_name(name: str) -> str:
    """``val_mae`` -> ``mae``; ``test_loss`` -> ``loss``; a name without a split prefix is returned as is."""
    for split in SPLITS:
        if name.startswith(f"{split}_"):
            return name[len(split) + 1 :]
    return name


def on_split(name: str, split: str) -> str:
    """The stored name of metric ``name`` (bare or prefixed) measured on ``split``: ``on_split("val_mae", "test")``
    is ``test_mae``."""
    return f"{split}_{bare_name(name)}"


def check_metric_name(name: str, where: str) -> str:
    """Return ``name`` if it is a usable bare metric name (a letter, then letters, digits, ``_``; no split prefix).

    Raises:
        ValueError: naming ``where`` the bad name came from.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: metric name {name!r} must start with a letter and hold only letters, digits, _")
    if bare_name(name) != name:
        raise ValueError(
            f"{where}: metric name {name!r} must not carry a split prefix; adamtune adds val_/test_ itself "
            f"(report {bare_name(name)!r})"
        )
    return name


def check_direction(direction: str, where: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"{where}: direction must be 'minimize' or 'maximize', got {direction!r}")
    return direction


def direction_of(metric: str, objective: str, direction: str, directions: Mapping[str, str]) -> str | None:
    """The direction of bare ``metric`` for a task whose objective is ``objective`` with ``direction``.

    The task's own declarations win (its objective's direction, then ``directions``); then
    :data:`KNOWN_DIRECTIONS`; None when the direction is unknown.
    """
    if metric == objective:
        return direction
    return directions.get(metric) or KNOWN_DIRECTIONS.get(metric)
