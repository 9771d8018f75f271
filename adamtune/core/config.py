"""Study configuration: the study file (TOML), its validation, and the precedence of settings.

Precedence is command line > environment > study file > built-in default. The command line and the
environment are merged by click (each option declares its environment variable); this module merges
that result over the study file through :func:`build_spec`.

A study file looks like ``studies/digits.toml``::

    [study]
    task = "digits"
    objective = "val_loss"     # or "val_accuracy"; any metric of the task (default: the task's objective)
    n_trials = 30              # finished trials the study should hold
    epochs = 20
    batch_size = 64
    sampler = "tpe"
    pruner = "hyperband"

    [space]
    lr = { low = 1e-5, high = 1e-1 }
    beta1 = { low = 0.5, high = 0.99 }

Unknown keys are errors that name the key and the file. The objective is checked against the task's
metrics, and takes its direction from the task, in :meth:`StudySpec.with_task` (the task must be
imported for that; ``search`` does it before anything is written). This module imports neither torch,
optuna nor mlflow.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from adamtune.core.budget import TIMED_TRIAL_CAP, parse_duration
from adamtune.core.confirm_rule import MIN_SEEDS, ConfirmSettings
from adamtune.core.errors import ConfigError
from adamtune.core.metrics import KNOWN_DIRECTIONS, bare_name, on_split
from adamtune.core.space import SearchSpace, parse_space

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: Sampler and pruner names; their factories live in ``storage/algorithms.py`` (a test keeps the two in step).
SAMPLER_NAMES = ("tpe", "random", "qmc", "cmaes", "gp")
PRUNER_NAMES = ("hyperband", "median", "sha", "none")

STUDY_KEYS = (
    "task",
    "objective",
    "n_trials",
    "epochs",
    "batch_size",
    "sampler",
    "pruner",
    "seed",
    "confirm",
    "confirm_top",
    "confirm_seeds",
    "confirm_folds",
    "confirm_budget",
    "checkpoint_every",
    "keep_best_checkpoint",
    "batch_trials",
    "timeout",
    "space",
    "warm_start",
    "stop_when_converged",
)
#: Values of the ``space`` key: ``auto`` grows the searched dimensions with the budget, ``full`` searches them all.
SPACE_MODES = ("auto", "full")
#: ``[study]`` keys that size the confirmation stage (``core/confirm_rule.py``), gathered into ``StudySpec.confirm``.
CONFIRM_KEYS = {
    "confirm": "enabled",
    "confirm_top": "top",
    "confirm_seeds": "seeds",
    "confirm_folds": "folds",
    "confirm_budget": "budget",
}
TOP_LEVEL_KEYS = ("study", "space")


@dataclass(frozen=True)
class StudySpec:
    """Everything that defines a study. ``epochs``/``batch_size`` of ``None`` mean the task's defaults.

    ``objective`` is a stored ``val_*`` metric name; None (what :func:`build_spec` leaves when nothing
    names one) means the task's objective. ``direction`` None means the usual direction of the
    objective's metric (:data:`adamtune.core.metrics.KNOWN_DIRECTIONS`); :meth:`with_task` sets both from the
    task.
    """

    task: str
    study_name: str
    objective: str | None = "val_loss"
    n_trials: int = 30
    epochs: int | None = None
    batch_size: int | None = None
    sampler: str = "tpe"
    pruner: str = "hyperband"
    seed: int | None = None
    batch_trials: int = 1  # trials a worker trains at once as one vectorised model (batched.py)
    space: SearchSpace = field(default_factory=SearchSpace)
    source: str = "built-in defaults"
    direction: str | None = None
    confirm: ConfirmSettings = field(default_factory=ConfirmSettings)
    checkpoint_every: int | None = None  # None: automatic (see context.py), 0: never
    keep_best_checkpoint: bool | None = None  # keep the best complete trial's final checkpoint (None: no)
    timeout: float | None = None  # seconds the whole search may take, confirmation included (None: no limit)
    warm_start: tuple[str, ...] = ()  # earlier studies whose best settings the new study evaluates first
    stop_when_converged: bool = False  # end the trial phase once more search is unlikely to pay

    def __post_init__(self) -> None:
        if self.objective is not None:
            object.__setattr__(self, "objective", on_split(self.objective, "val"))
            if self.direction is None:
                object.__setattr__(self, "direction", KNOWN_DIRECTIONS.get(bare_name(self.objective)))

    def with_task_defaults(self, epochs: int, batch_size: int) -> StudySpec:
        """Fill ``epochs``/``batch_size`` left unset with the task's defaults (and the objective, when unset,
        with ``val_loss``)."""
        objective = self.objective or "val_loss"
        direction = self.direction or KNOWN_DIRECTIONS["loss"]
        return replace(
            self,
            epochs=self.epochs or epochs,
            batch_size=self.batch_size or batch_size,
            objective=objective,
            direction=direction,
        )

    def with_task(self, task: Any) -> StudySpec:
        """This spec with the task's defaults: epochs, batch size, objective and its direction.

        ``task`` is a built-in ``Task`` or a ``LoopTask`` (anything with ``name``, ``default_epochs``,
        ``default_batch_size``, ``objective``, ``metric_names`` and ``direction_of``).

        Raises:
            ConfigError: the objective is not one of the task's metrics (the message lists them), or the
                task declares no direction for it.
        """
        objective, direction = resolve_objective(task, self.objective)
        return replace(
            self,
            epochs=self.epochs or task.default_epochs,
            batch_size=self.batch_size or task.default_batch_size,
            objective=objective,
            direction=direction,
            # Fresh validation folds where the task declares them and the study did not turn them off.
            confirm=replace(self.confirm, folds=self.confirm.folds and bool(getattr(task, "folds", False))),
        )

    def stored_form(self) -> dict[str, Any]:
        """What is saved on the Optuna study so that workers joining later train the same way."""
        return {
            "task": self.task,
            "objective": self.objective,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "space": self.space.to_dict(),
        }


def resolve_objective(task: Any, objective: str | None) -> tuple[str, str]:
    """The stored name (``val_<metric>``) and direction of ``objective`` for ``task``; None: the task's own.

    Raises:
        ConfigError: an unknown metric (naming the valid ones) or one of unknown direction.
    """
    metric = bare_name(objective) if objective else task.objective
    valid = ", ".join(f"val_{name}" for name in task.metric_names)
    if metric not in task.metric_names:
        raise ConfigError(
            f"objective {on_split(metric, 'val')!r} is not a metric of task {task.name!r}; valid objectives: {valid}"
        )
    direction = task.direction_of(metric)
    if direction is None:
        raise ConfigError(
            f"task {task.name!r} declares no direction for metric {metric!r}; add it to the task's "
            f"directions={{{metric!r}: 'minimize' or 'maximize'}}"
        )
    return f"val_{metric}", direction


def studies_dir() -> Path:
    """Where the built-in study files live: inside the installed package, else the source tree."""
    packaged = resources.files("adamtune").joinpath("studies")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "studies"


def builtin_study_file(task: str) -> Path | None:
    """The study file shipped for a built-in task, or None (user tasks have none)."""
    path = studies_dir() / f"{task}.toml"
    return path if path.is_file() else None


def read_study_file(path: Path) -> dict[str, Any]:
    """Parse a TOML study file, turning I/O and syntax problems into a one-line :class:`ConfigError`."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"study file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read study file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"study file {path} is not valid TOML: {exc}") from None


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ConfigError(f"unknown key {key!r} in {where}; valid keys: {', '.join(allowed)}")


def _positive_int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key} in {where} must be a whole number >= 1, got {value!r}")
    return value


def _choice(value: Any, key: str, choices: tuple[str, ...] | Mapping[str, Any], where: str) -> str:
    if value not in choices:
        raise ConfigError(f"{key} in {where} must be one of {', '.join(choices)}, got {value!r}")
    return value


def validate_study_settings(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Type- and range-check ``[study]`` values (from a file or the command line)."""
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if key in ("n_trials", "epochs", "batch_size", "batch_trials"):
            checked[key] = _positive_int(value, key, where)
        elif key == "seed":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"seed in {where} must be a whole number >= 0, got {value!r}")
            checked[key] = value
        elif key in ("confirm", "confirm_folds"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} in {where} must be true or false, got {value!r}")
            checked[key] = value
        elif key == "confirm_budget":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(
                    f"confirm_budget in {where} must be a share of the search's epochs > 0 (e.g. 0.4), got {value!r}"
                )
            checked[key] = float(value)
        elif key == "confirm_top":
            checked[key] = _positive_int(value, key, where)
        elif key == "confirm_seeds":
            if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SEEDS:
                raise ConfigError(
                    f"confirm_seeds in {where} must be a whole number >= {MIN_SEEDS} (an interval needs two "
                    f"paired runs), got {value!r}"
                )
            checked[key] = value
        elif key == "checkpoint_every":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"checkpoint_every in {where} must be a whole number of epochs >= 0 (0: never), got {value!r}"
                )
            checked[key] = value
        elif key == "timeout":
            checked[key] = parse_duration(value, "--timeout" if where == "the command line" else f"timeout in {where}")
        elif key == "space":
            checked[key] = _choice(value, key, SPACE_MODES, where)
        elif key == "warm_start":
            checked[key] = _study_list(value, where)
        elif key in ("keep_best_checkpoint", "stop_when_converged"):
            if not isinstance(value, bool):
                raise ConfigError(f"{key} in {where} must be true or false, got {value!r}")
            checked[key] = value
        elif key == "objective":
            if not isinstance(value, str) or not value.replace("_", "a").isalnum():
                raise ConfigError(f"objective in {where} must be a metric name such as val_loss, got {value!r}")
            checked[key] = on_split(value, "val")
        elif key == "sampler":
            checked[key] = _choice(value, key, SAMPLER_NAMES, where)
        elif key == "pruner":
            checked[key] = _choice(value, key, PRUNER_NAMES, where)
        elif key == "task":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"task in {where} must be a task name, got {value!r}")
            checked[key] = value
        else:
            raise ConfigError(f"unknown key {key!r} in {where}; valid keys: {', '.join(STUDY_KEYS)}")
    return checked


def _study_list(value: object, where: str) -> tuple[str, ...]:
    """Study names (``NAME`` or ``URL#NAME``) from a list or a comma-separated string."""
    items = value if isinstance(value, (list, tuple)) else [value]
    if not all(isinstance(item, str) for item in items):
        raise ConfigError(f'warm_start in {where} must be study names such as "digits" or ["a", "b"], got {value!r}')
    names = tuple(part.strip() for item in items for part in str(item).split(","))
    if not names or not all(names):
        raise ConfigError(
            f"warm_start in {where} has an empty study name: {value!r}; write NAME or URL#NAME, comma-separated"
        )
    return names


def build_spec(
    task: str | None,
    config: Path | None = None,
    study_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StudySpec:
    """Merge command-line values over a study file over defaults into a validated :class:`StudySpec`.

    Args:
        task: the task from the command line (or environment); may be None when ``config`` names one.
        config: a user's study file; when None, the built-in file for ``task`` is used if there is one.
        study_name: the study's name; defaults to the task name.
        overrides: command-line/environment values for ``[study]`` keys; None values are ignored.

    Raises:
        ConfigError: a malformed or unknown key (naming key and file), a bad value, or no task at all.
    """
    file_values: dict[str, Any] = {}
    space_table: Mapping[str, Any] = {}
    source = "built-in defaults"
    path = config if config is not None else (builtin_study_file(task) if task else None)
    if path is not None:
        source = str(path)
        raw = read_study_file(path)
        _check_keys(raw, TOP_LEVEL_KEYS, source)
        study_table = raw.get("study", {})
        space_table = raw.get("space", {})
        if not isinstance(study_table, Mapping) or not isinstance(space_table, Mapping):
            raise ConfigError(f"[study] and [space] in {source} must be tables")
        _check_keys(study_table, STUDY_KEYS, f"[study] of {source}")
        file_values = validate_study_settings(study_table, f"[study] of {source}")
    cli_values = validate_study_settings(dict(overrides or {}), "the command line")
    if "timeout" in cli_values and "n_trials" not in cli_values:
        file_values.pop("n_trials", None)  # a time budget alone on the command line replaces the file's budget
    merged = {**file_values, **cli_values}
    if "timeout" in merged and "n_trials" not in merged:
        merged["n_trials"] = TIMED_TRIAL_CAP  # as many trials as the time allows
    space_mode = merged.pop("space", None)
    if task:
        merged["task"] = task
    if "task" not in merged:
        raise ConfigError("no task given: pass --task NAME or a study file whose [study] names a task")
    space = parse_space(space_table, source)
    # auto by default; a file's explicit [space] is searched as given unless it says space = "auto"
    space = replace(space, auto=space_mode == "auto" if space_mode else space.auto or not space_table)
    merged.setdefault("objective", None)  # None: the task's objective (StudySpec.with_task)
    confirm = ConfirmSettings(**{CONFIRM_KEYS[k]: merged.pop(k) for k in list(merged) if k in CONFIRM_KEYS})
    return StudySpec(study_name=study_name or merged["task"], space=space, source=source, confirm=confirm, **merged)
