"""The studies of a storage: finding the one a command is about, summarising them all, listing them.

``adamtune summary`` (every study), ``adamtune studies`` (the listing, ``--task`` for one task's),
``adamtune tasks`` (the studies per task, :func:`task_studies`) and the commands that take
``--task``/``--study`` (the one study) look studies up here. Reads only the study database.
"""

from __future__ import annotations

from typing import Any

import optuna

from adamtune.confirm.ranking import rank_trials
from adamtune.core.errors import StorageError
from adamtune.report.summary import VERIFY_ATTR, StudySummary, summarize
from adamtune.storage.attr_keys import SETTINGS_ATTR, SPEC_ATTR
from adamtune.storage.outcomes import count_trials
from adamtune.storage.study import spec_from_study, study_names


def is_adamtune_study(study: optuna.Study) -> bool:
    """True for studies made by ``adamtune search`` (they carry the stored study definition)."""
    return SPEC_ATTR in study.user_attrs


def _load(name: str, storage: Any) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except Exception as exc:
        raise StorageError(f"cannot load study {name!r}: {exc}") from None


def summarize_storage(storage: Any, task: str | None = None) -> list[StudySummary]:
    """Summaries of every adamtune study in ``storage``, by study name (only those of ``task`` when given).

    ``task`` matches a study's task or its name. Studies not made by adamtune are skipped.

    Raises:
        StorageError: the storage holds no adamtune study (for ``task``, when given).
    """
    rows = []
    for name in study_names(storage):
        study = _load(name, storage)
        if not is_adamtune_study(study):
            continue
        if task is not None and study.user_attrs[SPEC_ATTR]["task"] != task and name != task:
            continue
        rows.append(summarize(study))
    if not rows:
        what = f"for task {task!r}" if task else "yet"
        hint = f"'adamtune search --task {task}'" if task else "'adamtune search --task TASK'"
        raise StorageError(f"no adamtune study {what} in this storage; run {hint} first")
    return rows


def find_study(storage: Any, task: str | None = None, study_name: str | None = None) -> optuna.Study:
    """The one adamtune study a command is about.

    ``study_name`` wins when given. Otherwise, with ``task``: the study named like the task, else the
    only study of that task. With neither: the only adamtune study in the storage.

    Raises:
        StorageError: no such study, a study not made by adamtune, or several studies match (the message
            lists them and asks for ``--study``).
    """
    names = study_names(storage)
    if study_name is not None:
        if study_name not in names:
            listing = ", ".join(names) or "none"
            raise StorageError(f"no study named {study_name!r} in this storage (studies: {listing})")
        study = _load(study_name, storage)
        if not is_adamtune_study(study):
            raise StorageError(f"study {study_name!r} was not created by adamtune")
        return study
    if task is not None and task in names:
        study = _load(task, storage)
        if is_adamtune_study(study):
            return study
    studies = [s for s in (_load(n, storage) for n in names) if is_adamtune_study(s)]
    if task is not None:
        studies = [s for s in studies if s.user_attrs[SPEC_ATTR]["task"] == task]
    if len(studies) == 1:
        return studies[0]
    if not studies:
        what = f"for task {task!r} " if task else ""
        hint = task or "TASK"
        raise StorageError(f"no adamtune study {what}in this storage; run 'adamtune search --task {hint}' first")
    listing = ", ".join(s.study_name for s in studies)
    need = "" if task else "pass --task or "
    raise StorageError(f"several studies match ({listing}); {need}pass --study NAME")


def task_studies(storage: Any) -> dict[str, list[str]]:
    """The names of the adamtune studies in ``storage`` by task, sorted (studies of other tools left out).

    Reads the studies' attributes only (``BaseStorage.get_all_studies``, one query per table), never their
    trials: ``adamtune tasks`` stays fast on a database of large studies.

    Raises:
        StorageError: the database fails.
    """
    from adamtune.core.confirm_rule import CONFIRMS_ATTR
    from adamtune.storage.db_errors import first_line

    try:
        frozen = storage.get_all_studies()
    except Exception as exc:
        raise StorageError(f"cannot list studies: {first_line(exc)}") from None
    by_task: dict[str, list[str]] = {}
    for study in frozen:
        spec = study.user_attrs.get(SPEC_ATTR)
        if CONFIRMS_ATTR in study.user_attrs or not isinstance(spec, dict) or not spec.get("task"):
            continue
        by_task.setdefault(str(spec["task"]), []).append(study.study_name)
    return {task: sorted(names) for task, names in sorted(by_task.items())}


def list_studies(storage: Any, task: str | None = None) -> list[dict[str, Any]]:
    """Every study in ``storage`` with its trial counts: the documented ``adamtune studies --json`` rows.

    Studies not made by adamtune are listed too, with ``"adamtune": false`` and null task/objective; with
    ``task``, only the adamtune studies of that task (their trials are not read for the others).
    """
    from adamtune.core.confirm_rule import CONFIRMS_ATTR

    rows = []
    for name in study_names(storage):
        study = _load(name, storage)
        if CONFIRMS_ATTR in study.user_attrs:
            continue  # a study's confirmation runs: part of that study, not one of its own
        if task is not None and (study.user_attrs.get(SPEC_ATTR) or {}).get("task") != task:
            continue
        trials = study.get_trials(deepcopy=False)
        spec = study.user_attrs.get(SPEC_ATTR) or {}
        settings = study.user_attrs.get(SETTINGS_ATTR) or {}
        ranked = rank_trials(trials, spec_from_study(study)) if is_adamtune_study(study) else []
        rows.append(
            {
                "study": name,
                "adamtune": is_adamtune_study(study),
                "task": spec.get("task"),
                "objective": spec.get("objective"),
                "direction": study.direction.name.lower(),
                "epochs": spec.get("epochs"),
                "n_trials": settings.get("n_trials"),
                "trials": count_trials(trials).as_dict(),
                "best_score": ranked[0].score if ranked else None,
                "verified": VERIFY_ATTR in study.user_attrs,
            }
        )
    return rows
