"""A trial's lineage: what a retry takes over from the trials it retries (their seed, their checkpoints,
the MLflow run it resumes).

A retry (``stale_trials.requeue_trial``) belongs to the *lineage* of the trial it retries
(``failed_trial``, the original number). It trains with the lineage's seed (the one recorded on the
original trial, else derived from the original number), and resumes from the lineage's latest checkpoint
(``checkpoint.py``): the restored epochs are re-reported to Optuna (so the pruner sees the whole curve)
and logged to the retry's new MLflow run, which is tagged ``adamtune.resumed_from_epoch`` and
``adamtune.resumed_from_run`` (the earlier run's id): the retry's run holds the whole curve, the earlier,
failed run links nowhere and keeps its part. The lineage's checkpoints are removed when the trial ends in
any way other than an interruption or a lost study database (both re-queue the trial, which resumes).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from adamtune.storage.attr_keys import RUN_ID_ATTR, SEED_ATTR
from adamtune.storage.db_errors import is_transient_db_error, with_db_retry
from adamtune.storage.optuna_adapter import asked_frozen_trial, storage_of, trial_id_of
from adamtune.training.checkpoint import CHECKPOINT_ATTR, RESUMED_ATTR, TrialCheckpoints, lineage_numbers

if TYPE_CHECKING:
    import optuna

    from adamtune.core.config import StudySpec
    from adamtune.core.space import AdamParams
    from adamtune.storage.reporting import TrialWriter
    from adamtune.training.context import TrialContext


def trial_seed(base_seed: int | None, trial_number: int) -> int:
    """The training seed of a trial: derived from ``--seed`` when given, else from fresh entropy."""
    if base_seed is None:
        import secrets

        return secrets.randbelow(2**31)
    return (base_seed * 1_000_003 + trial_number) % 2**31


def lineage_seed(base_seed: int | None, lineage: int, earlier: list[optuna.trial.FrozenTrial]) -> int:
    """The seed a trial of ``lineage`` trains with: the first recorded on its ``earlier`` trials, else derived
    from the lineage's number (:func:`trial_seed`)."""
    return next(
        (int(t.user_attrs[SEED_ATTR]) for t in earlier if isinstance(t.user_attrs.get(SEED_ATTR), int)),
        trial_seed(base_seed, lineage),
    )


def system_attrs(trial: optuna.Trial) -> dict[str, Any]:
    """The trial's Optuna system attributes (``failed_trial``/``retry_history`` of a retry); {} for a FixedTrial."""
    study = getattr(trial, "study", None)
    if study is None:
        return {}
    cached = asked_frozen_trial(trial)  # read when the trial was asked for: no query
    if cached is not None:
        return dict(cached.system_attrs)
    return with_db_retry(
        lambda: storage_of(study).get_trial_system_attrs(trial_id_of(trial)), f"reading trial {trial.number}"
    )


def earlier_trials(trial: optuna.Trial, system_attrs: Mapping[str, Any]) -> list[optuna.trial.FrozenTrial]:
    """The lineage's earlier trials (oldest first); none for a trial that is no retry."""
    numbers = lineage_numbers(trial.number, system_attrs)
    if not numbers:
        return []
    wanted = set(numbers)
    found = [t for t in trial.study.get_trials(deepcopy=False) if t.number in wanted]
    return sorted(found, key=lambda t: t.number)


def lineage_checkpoints(
    trial: optuna.Trial,
    lineage: int,
    earlier: list[optuna.trial.FrozenTrial],
    *,
    store: Any,
    prefix: str,
    location: str | None,
    spec: StudySpec,
    params: AdamParams,
    seed: int,
    writer: TrialWriter,
) -> TrialCheckpoints:
    """The checkpoints of ``trial``'s lineage in ``store``: those its ``earlier`` trials saved (resumed from
    when they fit this trial's task, settings and seed), and the ones it saves, each pointer written to the
    study at once."""
    fingerprint = {
        "task": spec.task,
        "params": params.as_dict(),
        "seed": seed,
        "epochs": spec.epochs,
        "batch_size": spec.batch_size,
    }

    def set_pointer(pointer: dict[str, Any]) -> None:  # durable at once, with the curve so far
        writer.set_attrs({CHECKPOINT_ATTR: pointer})
        with_db_retry(writer.flush, f"recording trial {trial.number}'s checkpoint")

    return TrialCheckpoints(
        store=store,
        prefix=prefix,
        study_name=spec.study_name,
        lineage=lineage,
        fingerprint=json_safe(fingerprint),
        set_pointer=set_pointer,
        pointers=[t.user_attrs[CHECKPOINT_ATTR] for t in earlier if CHECKPOINT_ATTR in t.user_attrs],
        location=location,
    )


def resume_tags(context: TrialContext, earlier: list[optuna.trial.FrozenTrial]) -> Callable[[], dict[str, object]]:
    """A function giving the MLflow tags of a resumed trial (empty until it resumed)."""

    def tags() -> dict[str, object]:
        if context.resumed_from_epoch is None:
            return {}
        found: dict[str, object] = {RESUMED_ATTR: context.resumed_from_epoch}
        runs = [t.user_attrs[RUN_ID_ATTR] for t in earlier if RUN_ID_ATTR in t.user_attrs]
        if runs:
            found["adamtune.resumed_from_run"] = runs[-1]
        return found

    return tags


def is_requeued_error(exc: BaseException) -> bool:
    """The worker re-queues a trial that failed because the study database went away: keep its checkpoint."""
    return is_transient_db_error(exc)


def json_safe(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so fingerprints compare equal."""
    return json.loads(json.dumps(value))
