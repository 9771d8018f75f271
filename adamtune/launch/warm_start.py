"""Warm starts: a new study begins with the settings earlier studies found (``search --warm-start``).

:func:`read_warm_starts` reads each source study, read-only, from the new study's own database (``NAME``)
or from another one (``URL#NAME``, any SQLAlchemy URL adamtune reads): first the settings its confirmation
stage recommends, when a finalist was confirmed better than the defaults, then its ``top`` best complete
trials by the recommendation's ranking rule (``confirm/ranking.py``), the baseline left out. Identical
settings are kept once, in that order. A source study of another task is welcome (a related task): its
settings are used as they are.

:func:`enqueue_warm_starts` queues them as waiting trials of the new study, evaluated anew: each carries
``attr_keys.WARM_ATTR`` (the exact settings and where they come from), which the objective trains with;
its Optuna params are those settings clipped into the space's sampling bounds. A start whose origin the
study already holds is not queued again, so resuming with the same ``--warm-start`` adds nothing.

:func:`related_studies` and :func:`studies_by_task` name the studies of a storage per task (``adamtune
tasks``, ``adamtune studies --task``). Source databases are only read: a missing SQLite file is an error
(or, for the listings, no study), never a new empty database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from adamtune.core.errors import ConfigError, StorageError
from adamtune.core.space import AdamParams, SearchSpace, optuna_params_of
from adamtune.storage.attr_keys import WARM_ATTR

#: Separates a source's database URL from its study name: ``sqlite:///old.db#digits`` (split on the last one).
URL_SEPARATOR = "#"


@dataclass(frozen=True)
class WarmStart:
    """One setting to start a study from: the exact Adam settings and where they come from."""

    params: AdamParams
    origin: str  # e.g. "digits-old trial 12 (confirmed)" or "sqlite:///old.db#digits trial 7"


def parse_sources(text: str | Sequence[str]) -> tuple[str, ...]:
    """The sources of ``--warm-start``: ``"a,b"`` or ``["a", "b,c"]`` -> ``("a", "b", "c")``.

    Entries are stripped; a source named twice is kept once. An empty sequence gives ``()``.

    Raises:
        ConfigError: an empty entry (``"a,,b"``, ``"a,"``, ``""``).
    """
    parts = [text] if isinstance(text, str) else list(text)
    sources: list[str] = []
    for part in parts:
        for entry in part.split(","):
            entry = entry.strip()
            if not entry:
                raise ConfigError(
                    f"--warm-start {part!r} has an empty entry; pass STUDY[,STUDY...], each a study name or URL#STUDY"
                )
            sources.append(entry)
    return tuple(dict.fromkeys(sources))


def split_source(source: str, storage_url: str) -> tuple[str, str, str]:
    """``(url, study name, label)`` of one source: ``URL#NAME`` (split on the last ``#``) or a ``NAME`` of
    ``storage_url``. The label names the source in origins and messages (the URL's password masked).

    Raises:
        ConfigError: ``URL#`` without a study name.
    """
    url, separator, name = source.rpartition(URL_SEPARATOR)
    if not separator or "://" not in url:  # a plain study name (which may itself hold a '#')
        return storage_url, source, source
    if not name.strip():
        raise ConfigError(f"--warm-start {source!r} names no study after '#'; pass URL#STUDY, e.g. {url}#digits")
    from adamtune.storage.backends import redact_url

    return url, name.strip(), f"{redact_url(url)}#{name.strip()}"


def open_source(url: str, *, missing_ok: bool = False) -> Any | None:
    """Open the study database at ``url`` to read it (``open_storage(create=False)``): nothing is created.

    A SQLite file must exist and hold data: opening a missing or empty one would create Optuna's tables.

    Returns:
        The storage; None for a missing or empty SQLite file when ``missing_ok``.

    Raises:
        StorageError: the file is missing or empty (unless ``missing_ok``), the URL or driver is bad, the
            database is unreadable, corrupt, not Optuna's, or holds no studies.
    """
    from sqlalchemy.engine import make_url

    from adamtune.storage.backends import open_storage

    try:
        parsed = make_url(url)
    except Exception:  # an unparsable URL: open_storage says so in its own words
        return open_storage(url, create=False)
    if parsed.drivername.startswith("sqlite") and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database)
        if not path.is_file() or path.stat().st_size == 0:
            if missing_ok:
                return None
            what = "does not exist" if not path.exists() else "is empty" if path.is_file() else "is not a file"
            raise StorageError(
                f"study database {path} {what}; check the path in --warm-start URL#STUDY "
                "(sqlite:///relative.db or sqlite:////absolute.db)"
            )
    return open_storage(url, create=False)


def _close(storage: Any) -> None:
    """Release the connections of a storage opened here (a server keeps no idle ones of ours)."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def _load_source(name: str, storage: Any, label: str, database: str | None) -> optuna.Study:
    """The adamtune study ``name`` of ``storage`` (the new study's own, or ``database``), read-only.

    Raises:
        StorageError: no such study (the message lists the storage's studies) or the storage fails.
        ConfigError: the study was not made by adamtune.
    """
    from adamtune.report.studies import is_adamtune_study
    from adamtune.storage.db_errors import first_line
    from adamtune.storage.study import quiet_optuna, study_names

    names = study_names(storage)
    if name not in names:
        listing = ", ".join(names) if names else "none"
        if database is None:
            where = "this storage"
            fix = f"name one of them, or a study of another database as URL#STUDY (e.g. sqlite:///old.db#{name})"
        else:
            where, fix = f"database {database}", f"name one of them as {database}#STUDY"
        raise StorageError(f"no study named {name!r} in {where} (studies: {listing}); {fix}")
    try:
        with quiet_optuna():
            study = optuna.load_study(study_name=name, storage=storage)
        adamtune = is_adamtune_study(study)
    except Exception as exc:
        raise StorageError(f"cannot read warm-start study {label!r}: {first_line(exc)}") from None
    if not adamtune:
        raise ConfigError(
            f"study {label!r} was not created by adamtune (it has no stored definition); "
            "warm-start from an adamtune study"
        )
    return study


def _starts_of(study: optuna.Study, label: str, top: int) -> list[WarmStart]:
    """The confirmed recommendation of ``study`` (if any), then its ``top`` best non-baseline trials."""
    from adamtune.confirm.ranking import rank_trials
    from adamtune.report.summary import summarize
    from adamtune.storage.db_errors import first_line
    from adamtune.storage.study import spec_from_study

    try:
        spec = spec_from_study(study)
        summary = summarize(study, importance=False)
        ranked = [c for c in rank_trials(study.get_trials(deepcopy=False), spec) if not c.baseline]
    except (ConfigError, StorageError):
        raise
    except Exception as exc:  # a damaged stored definition or a failing database
        raise StorageError(f"cannot read warm-start study {label!r}: {first_line(exc)}") from None
    starts = []
    if summary.rule == "confirmed" and summary.recommended is not None:  # "defaults" adds nothing
        starts.append(WarmStart(summary.recommended.params, f"{label} trial {summary.recommended.trial} (confirmed)"))
    starts.extend(WarmStart(c.params, f"{label} trial {c.trial}") for c in ranked[:top])
    return starts


def read_warm_starts(sources: Sequence[str], storage_url: str, *, top: int = 3) -> list[WarmStart]:
    """The settings to start a new study in ``storage_url`` from, read from ``sources`` (module docstring).

    Args:
        sources: Study names of ``storage_url``, or ``URL#NAME`` for a study of another database
            (:func:`parse_sources` splits the option's text).
        storage_url: The new study's database, where plain names are looked up.
        top: Best complete trials taken from each source, after its confirmed recommendation.

    Returns:
        The starts in order (per source: confirmed recommendation, then best trials), each setting once.

    Raises:
        ConfigError: a negative ``top``, a malformed source, or a study not made by adamtune.
        StorageError: a missing, unreadable or corrupt database, or an unknown study (the message lists
            the studies of that database and how to name another one).
    """
    from adamtune.storage.backends import redact_url

    if top < 0:
        raise ConfigError(f"warm-start top must be >= 0, got {top}; pass 0 to take only confirmed settings")
    by_url: dict[str, list[tuple[str, str]]] = {}
    for source in sources:
        url, name, label = split_source(source, storage_url)
        by_url.setdefault(url, []).append((name, label))
    starts: dict[AdamParams, WarmStart] = {}
    ordered: list[WarmStart] = []
    found: dict[str, list[WarmStart]] = {}
    for url, studies in by_url.items():  # each database opened once, read, and closed
        database = None if url == storage_url else redact_url(url)
        storage = open_source(url, missing_ok=database is None)
        if storage is None:  # plain names, and this study's own database does not exist yet
            raise StorageError(
                f"no study named {studies[0][0]!r}: the study database {redact_url(url)} holds no studies yet; "
                "name a study of another database as URL#STUDY (e.g. sqlite:///old.db#digits)"
            )
        try:
            for name, label in studies:
                found[label] = _starts_of(_load_source(name, storage, label, database), label, top)
        finally:
            _close(storage)
    for source in sources:  # back in the order the sources were given
        for start in found[split_source(source, storage_url)[2]]:
            if start.params not in starts:
                starts[start.params] = start
                ordered.append(start)
    return ordered


def warm_origins(study: optuna.Study) -> set[str]:
    """The origins of the warm starts ``study`` already holds (queued, running or finished)."""
    origins = set()
    for trial in study.get_trials(deepcopy=False):
        mark = trial.user_attrs.get(WARM_ATTR)
        if isinstance(mark, dict) and mark.get("origin"):
            origins.add(str(mark["origin"]))
    return origins


def enqueue_warm_starts(study: optuna.Study, space: SearchSpace, starts: Sequence[WarmStart]) -> int:
    """Queue ``starts`` as waiting trials of ``study`` (over ``space``), skipping origins it already holds.

    Each trial carries ``WARM_ATTR = {"params": exact settings, "origin": ...}`` (what the objective trains)
    and the settings clipped into ``space`` as its Optuna params (``space.optuna_params_of``).

    Returns:
        How many trials were queued.

    Raises:
        StorageError: the database fails.
    """
    from adamtune.storage.db_errors import first_line

    try:
        seen = warm_origins(study)
        queued = 0
        for start in starts:
            if start.origin in seen:
                continue
            study.enqueue_trial(
                optuna_params_of(space, start.params),
                user_attrs={WARM_ATTR: {"params": start.params.as_dict(), "origin": start.origin}},
                skip_if_exists=False,
            )
            seen.add(start.origin)
            queued += 1
    except Exception as exc:
        raise StorageError(f"cannot queue the warm starts of study {study.study_name!r}: {first_line(exc)}") from None
    return queued


def studies_by_task(storage_url: str) -> dict[str, list[str]] | None:
    """The adamtune studies of the database at ``storage_url`` by task, each list sorted (read-only).

    Returns:
        ``{task: [study, ...]}``; None when ``storage_url`` is a missing or empty SQLite file (no file is
        created).

    Raises:
        StorageError: the database cannot be opened or read.
    """
    from adamtune.report.studies import task_studies

    storage = open_source(storage_url, missing_ok=True)
    if storage is None:
        return None
    try:
        return task_studies(storage)
    finally:
        _close(storage)


def related_studies(storage_url: str, task: str) -> list[str]:
    """Names of the adamtune studies in ``storage_url`` whose task is ``task``, sorted (read-only).

    A missing SQLite file holds none (``[]``) and is not created.

    Raises:
        StorageError: the database cannot be opened or read.
    """
    return (studies_by_task(storage_url) or {}).get(task, [])
