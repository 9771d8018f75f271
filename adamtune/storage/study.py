"""Studies: creating or resuming an adamtune study, loading one by name, and rebuilding its spec.

A study stores its definition (``attr_keys.SPEC_ATTR``) and the latest run settings
(``attr_keys.SETTINGS_ATTR``) as study attributes; resuming checks the definition, and workers that join
later read both. Database errors on the way become a :class:`~adamtune.core.errors.StorageError` with a
one-line message.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.storages import RDBStorage

from adamtune.core.config import StudySpec
from adamtune.core.confirm_rule import ConfirmSettings
from adamtune.core.errors import ConfigError, StorageError
from adamtune.core.space import baseline_optuna_params
from adamtune.storage.algorithms import make_pruner, make_sampler
from adamtune.storage.attr_keys import BASELINE_ATTR, NOISE_PROBE_ATTR, SETTINGS_ATTR, SPEC_ATTR
from adamtune.storage.db_errors import first_line

#: Repeats of the baseline on other seeds that ``--stop-when-converged`` adds, to measure the seed noise.
NOISE_PROBES = 2


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
        with quiet_optuna():
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
            if spec.stored_form() != stored:  # only the space's mode differs: the latest search's mode holds
                study.set_user_attr(SPEC_ATTR, spec.stored_form())
        settings = {
            "n_trials": spec.n_trials,
            "sampler": spec.sampler,
            "pruner": spec.pruner,
            "confirm": spec.confirm.as_dict(),
            "batch_trials": spec.batch_trials,
        }
        if spec.checkpoint_every is not None:  # a run setting, like the sampler: workers joining later use it
            settings["checkpoint_every"] = spec.checkpoint_every
        if spec.keep_best_checkpoint:
            settings["keep_best_checkpoint"] = True
        if spec.timeout is not None:  # the deadline lives in the study: every worker, on any machine, obeys it
            settings["timeout"] = spec.timeout
            settings["deadline"] = time.time() + spec.timeout
        if spec.stop_when_converged:
            settings["stop_when_converged"] = True
            _enqueue_noise_probes(study, spec)
        study.set_user_attr(SETTINGS_ATTR, settings)
    except ConfigError:
        raise
    except Exception as exc:
        raise StorageError(f"study database error for {spec.study_name!r}: {first_line(exc)}") from None
    return study


def _enqueue_noise_probes(study: optuna.Study, spec: StudySpec) -> None:
    """Queue repeats of the baseline (other seeds: each trial has its own) until the study holds
    ``1 + NOISE_PROBES`` baseline trials that did not fail: their spread is the seed noise of the stop rule."""
    from optuna.trial import TrialState

    baselines = [
        t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR) and t.state != TrialState.FAIL
    ]
    for _ in range(1 + NOISE_PROBES - len(baselines)):
        attrs = {BASELINE_ATTR: True, NOISE_PROBE_ATTR: True}
        study.enqueue_trial(baseline_optuna_params(spec.space), user_attrs=attrs)


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Within it, Optuna logs warnings and errors only: its INFO line ``A new study created in RDB`` is an
    internal detail of a search, not for the user's terminal. Restores the caller's verbosity after."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(verbosity, optuna.logging.WARNING))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _check_same_definition(spec: StudySpec, stored: dict[str, Any]) -> None:
    """Refuse to resume with another task, objective, epochs, batch size or ranges. The space's mode (auto or
    full) may change: it decides which dimensions new trials search, not what the trials mean."""

    def comparable(form: dict[str, Any]) -> dict[str, Any]:
        space = {k: v for k, v in (form.get("space") or {}).items() if k != "auto"}
        return {**form, "space": space}

    current, stored = comparable(spec.stored_form()), comparable(stored)
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
        raise StorageError(f"cannot load study {name!r}: {first_line(exc)}") from None
    if stored is None or settings is None:
        raise StorageError(f"study {name!r} was not created by adamtune; pick an adamtune study")
    study.sampler = make_sampler(settings["sampler"], seed)
    study.pruner = make_pruner(settings["pruner"], int(stored["epochs"]))
    return study


def study_names(storage: RDBStorage) -> list[str]:
    """The names of the studies in ``storage``; a study's confirmation runs (``<study>.confirm``) are part of
    that study and not listed."""
    from adamtune.core.confirm_rule import CONFIRMS_ATTR

    try:
        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        return sorted(s.study_name for s in summaries if CONFIRMS_ATTR not in s.user_attrs)
    except Exception as exc:
        raise StorageError(f"cannot list studies: {first_line(exc)}") from None


def spec_from_study(study: optuna.Study) -> StudySpec:
    """Rebuild the :class:`StudySpec` an adamtune study was created with (for joining workers, reports)."""
    from adamtune.core.space import parse_space

    stored = study.user_attrs[SPEC_ATTR]
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    source = f"study {study.study_name!r}"
    return StudySpec(
        task=stored["task"],
        study_name=study.study_name,
        objective=stored["objective"],
        direction=study.direction.name.lower(),  # the task's direction, as the study was created with
        n_trials=int(settings.get("n_trials", 0)) or 1,
        epochs=stored["epochs"],
        batch_size=stored["batch_size"],
        sampler=settings.get("sampler", "tpe"),
        pruner=settings.get("pruner", "hyperband"),
        confirm=ConfirmSettings.from_dict(settings.get("confirm")),
        checkpoint_every=settings.get("checkpoint_every"),
        keep_best_checkpoint=settings.get("keep_best_checkpoint"),
        batch_trials=int(settings.get("batch_trials", 1)),
        timeout=settings.get("timeout"),
        stop_when_converged=bool(settings.get("stop_when_converged", False)),
        space=parse_space(stored["space"], source),
        source=source,
    )
