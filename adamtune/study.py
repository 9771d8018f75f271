"""The Optuna boundary: storages, samplers, pruners, study creation/resume, and trial counts.

Every error that comes out of Optuna's storage or SQLAlchemy is translated here into a
:class:`~adamtune.errors.StorageError` with a one-line message.

Trial bookkeeping. adamtune's view of a trial's outcome is the user attribute ``adamtune.state``:

* ``complete`` — trained to the end of its budget; its value is the objective.
* ``pruned`` — stopped early by the pruner (Optuna state PRUNED).
* ``diverged`` — a loss became non-finite. The trial is COMPLETE in Optuna with the value of the
  untrained model, so the sampler learns that the region is bad; summaries count it separately and
  never recommend it.
* ``failed`` — an exception or an interruption (Optuna state FAIL); a stale trial of a dead worker
  also ends FAIL and is re-queued by the heartbeat callback.

The number of *finished* trials (complete + pruned + diverged) is what ``--n-trials`` asks for.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from adamtune.config import StudySpec
from adamtune.errors import ConfigError, StorageError
from adamtune.space import baseline_optuna_params

# Heartbeats and their retry callback are "experimental" in Optuna since v2.8 yet stable in practice;
# adamtune relies on them deliberately, so their warnings would only be noise for users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///adamtune.db"
SPEC_ATTR = "adamtune.spec"
SETTINGS_ATTR = "adamtune.settings"
STATE_ATTR = "adamtune.state"
BASELINE_ATTR = "adamtune.baseline"
SEED_ATTR = "adamtune.seed"
PARAMS_ATTR = "adamtune.params"
CURVES_ATTR = "adamtune.curves"
RUN_ID_ATTR = "mlflow.run_id"
DIVERGED_EPOCH_ATTR = "adamtune.diverged_epoch"
DEVICE_ATTR = "adamtune.device"
HOST_ATTR = "adamtune.host"
WORKER_ATTR = "adamtune.worker"
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
MAX_RETRIES = 2
SQLITE_BUSY_TIMEOUT_SECONDS = 60

SAMPLERS: dict[str, Callable[[int | None], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, constant_liar=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed, scramble=True, warn_asynchronous_seeding=False),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),
}

PRUNERS: dict[str, Callable[[int], optuna.pruners.BasePruner]] = {
    "hyperband": lambda epochs: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs),
    "median": lambda epochs: optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4)),
    "sha": lambda epochs: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
    "none": lambda epochs: optuna.pruners.NopPruner(),
}

FINISHED_STATES = ("complete", "pruned", "diverged")


def _check_sqlite_target(url: str, database: str | None) -> None:
    """A SQLite file must be creatable: its directory must exist and be writable (probed, not guessed)."""
    if not database or database == ":memory:":
        raise StorageError(f"storage {url!r} names no database file; use e.g. sqlite:///adamtune.db")
    path = Path(database)
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise StorageError(f"study database {path} is not readable and writable; fix its permissions")
        return
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise StorageError(f"directory {directory} for the study database does not exist; create it first")
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".adamtune-probe-"):
            pass
    except OSError:
        raise StorageError(
            f"cannot create the study database in {directory.resolve()} (not writable); "
            "run from a writable directory or pass --storage"
        ) from None


def _enable_wal(database: str) -> None:
    """Switch a SQLite file to write-ahead logging (persistent): readers no longer block the writer."""
    with sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_SECONDS) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def engine_kwargs_for(url: str) -> dict[str, Any]:
    """SQLAlchemy engine options per backend (busy timeout for SQLite, liveness checks for servers)."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_SECONDS}}
    return {"pool_pre_ping": True, "pool_recycle": 300}


def open_storage(url: str, *, create: bool = True) -> RDBStorage:
    """Open (and, for SQLite with ``create``, create) the study database at ``url``.

    Heartbeats are on: a trial whose worker stops beating for ``GRACE_SECONDS`` is failed by the next
    worker that starts a trial and re-queued up to ``MAX_RETRIES`` times.

    Raises:
        StorageError: an unparsable URL, a missing driver, a SQLite file that cannot be created, or a
            server that cannot be reached. Nothing is created in those cases.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except (ArgumentError, ValueError):
        raise StorageError(
            f"storage URL {url!r} is not a database URL; use e.g. sqlite:///adamtune.db "
            "or postgresql+psycopg://user@host/db"
        ) from None
    except NoSuchModuleError:
        raise StorageError(f"storage URL {url!r} names an unknown database dialect {parsed.drivername!r}") from None
    except ImportError as exc:
        hint = "pip install 'adamtune[postgres]'" if parsed.drivername.startswith("postgres") else "install it"
        raise StorageError(f"the database driver for {url!r} is not installed ({exc.name}); {hint}") from None
    if parsed.drivername.startswith("sqlite"):
        if not create and not (parsed.database and Path(parsed.database).is_file()):
            raise StorageError(f"study database {parsed.database} does not exist; run 'adamtune search' first")
        _check_sqlite_target(url, parsed.database)
        if create:
            _enable_wal(parsed.database)
    try:
        return RDBStorage(
            url,
            engine_kwargs=engine_kwargs_for(url),
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
        )
    except Exception as exc:  # SQLAlchemy/driver errors: unreachable host, bad credentials, ...
        raise StorageError(f"cannot open study database {_redact(parsed)}: {_first_line(exc)}") from None


def _redact(parsed: Any) -> str:
    return parsed.render_as_string(hide_password=True)


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    return SAMPLERS[name](seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    return PRUNERS[name](epochs)


def create_or_resume(spec: StudySpec, storage: RDBStorage, *, seed: int | None = None) -> optuna.Study:
    """Create the study ``spec.study_name``, or resume it if it exists.

    A new study stores ``spec`` (task, objective, epochs, batch size, space) and enqueues Adam's
    defaults as its first trial, marked as the baseline. Resuming checks that the stored definition
    matches ``spec``: mixing trials of different spaces or epochs would make them incomparable.

    Raises:
        ConfigError: the existing study was made with a different task, objective, epochs, batch size
            or space.
        StorageError: the database fails.
    """
    assert spec.epochs is not None, "fill task defaults before creating a study"
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=spec.study_name,
            direction=spec.direction,
            sampler=make_sampler(spec.sampler, seed),
            pruner=make_pruner(spec.pruner, spec.epochs),
            load_if_exists=True,
        )
        stored = study.user_attrs.get(SPEC_ATTR)
        if stored is None:
            study.set_user_attr(SPEC_ATTR, spec.stored_form())
            if not study.trials:
                study.enqueue_trial(baseline_optuna_params(spec.space), user_attrs={BASELINE_ATTR: True})
        else:
            _check_same_definition(spec, stored)
        study.set_user_attr(SETTINGS_ATTR, {"n_trials": spec.n_trials, "sampler": spec.sampler, "pruner": spec.pruner})
    except ConfigError:
        raise
    except Exception as exc:
        raise StorageError(f"study database error for {spec.study_name!r}: {_first_line(exc)}") from None
    return study


def _check_same_definition(spec: StudySpec, stored: dict[str, Any]) -> None:
    current = spec.stored_form()
    different = [key for key in current if json.dumps(current[key]) != json.dumps(stored.get(key))]
    if different:
        raise ConfigError(
            f"study {spec.study_name!r} already exists with a different {', '.join(different)}; "
            "pass --study NEW_NAME to start a new study, or run with the original settings to resume it"
        )


def load_study(name: str, storage: RDBStorage, *, seed: int | None = None) -> optuna.Study:
    """Load an existing adamtune study by name (for workers that join later).

    The sampler, pruner and target number of trials are those the latest ``search`` stored.

    Raises:
        StorageError: no study of that name exists in the storage (the message lists the ones that do).
    """
    names = study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        raise StorageError(
            f"no study named {name!r} in this storage (studies: {listing}); start it with 'adamtune search'"
        )
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        stored, settings = study.user_attrs.get(SPEC_ATTR), study.user_attrs.get(SETTINGS_ATTR)
    except Exception as exc:
        raise StorageError(f"cannot load study {name!r}: {_first_line(exc)}") from None
    if stored is None or settings is None:
        raise StorageError(f"study {name!r} was not created by adamtune; pick an adamtune study")
    study.sampler = make_sampler(settings["sampler"], seed)
    study.pruner = make_pruner(settings["pruner"], int(stored["epochs"]))
    return study


def study_names(storage: RDBStorage) -> list[str]:
    try:
        return sorted(s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False))
    except Exception as exc:
        raise StorageError(f"cannot list studies: {_first_line(exc)}") from None


def trial_state(trial: FrozenTrial) -> str:
    """adamtune's outcome name for ``trial`` (see the module docstring); ``running``/``waiting`` too."""
    if trial.state == TrialState.COMPLETE:
        return trial.user_attrs.get(STATE_ATTR, "complete")
    return {
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


@dataclass(frozen=True)
class Counts:
    """Trials of a study by adamtune outcome."""

    complete: int = 0
    pruned: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    def as_dict(self) -> dict[str, int]:
        return {
            "complete": self.complete,
            "pruned": self.pruned,
            "diverged": self.diverged,
            "failed": self.failed,
            "running": self.running,
            "waiting": self.waiting,
        }


def count_trials(trials: list[FrozenTrial]) -> Counts:
    tally: dict[str, int] = {}
    for trial in trials:
        state = trial_state(trial)
        tally[state] = tally.get(state, 0) + 1
    return Counts(**tally)


def spec_from_study(study: optuna.Study) -> StudySpec:
    """Rebuild the :class:`StudySpec` an adamtune study was created with (for joining workers, reports)."""
    from adamtune.space import parse_space

    stored = study.user_attrs[SPEC_ATTR]
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    source = f"study {study.study_name!r}"
    return StudySpec(
        task=stored["task"],
        study_name=study.study_name,
        objective=stored["objective"],
        n_trials=int(settings.get("n_trials", 0)) or 1,
        epochs=stored["epochs"],
        batch_size=stored["batch_size"],
        sampler=settings.get("sampler", "tpe"),
        pruner=settings.get("pruner", "hyperband"),
        space=parse_space(stored["space"], source),
        source=source,
    )
