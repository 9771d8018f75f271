"""Which settings to use: study summaries, the robust recommendation, importance, ranges, listings.

Reads only the study database. Nothing here trains (``verify.py`` does), and nothing here imports torch
or MLflow, so ``adamtune summary`` and ``adamtune recommend`` start fast and work on a machine that only
holds the study file.

The recommendation rule (its candidates and their scores) is in :mod:`adamtune.confirm.ranking`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.confirm.ranking import (
    CORE_SETTINGS,
    LATE_EPOCHS,
    Candidate,
    baseline_candidate,
    finite_or_none,
    rank_trials,
    settings_dict,
    signed_gain,
)
from adamtune.core.config import StudySpec
from adamtune.core.confirm_rule import FIXED_ROWS_NOTE
from adamtune.core.errors import StorageError
from adamtune.core.space import BASELINE, BETAS, AdamParams, baseline_for, defaults_label
from adamtune.report.importance_import import optuna_importance
from adamtune.storage.study import (
    DEVICE_ATTR,
    SETTINGS_ATTR,
    SPEC_ATTR,
    Counts,
    count_trials,
    spec_from_study,
    study_names,
)

if TYPE_CHECKING:
    from adamtune.confirm.stored import StageState

#: The robust range spans the best TOP_FRACTION of candidates, and at least MIN_TOP_TRIALS of them.
TOP_FRACTION = 0.1
MIN_TOP_TRIALS = 3
#: Parameter importance needs this many Optuna-COMPLETE trials; below it, summaries say so instead.
MIN_IMPORTANCE_TRIALS = 6
#: Study user attribute holding the latest ``adamtune verify`` result (see ``verify.py``).
VERIFY_ATTR = "adamtune.verify"


# --------------------------------------------------------------------------- importance and ranges


def param_importance(study: optuna.Study, trials: list[FrozenTrial]) -> tuple[dict[str, float] | None, str | None]:
    """PED-ANOVA importance of each sampled setting for reaching the study's best trials.

    Uses :class:`optuna.importance.PedAnovaImportanceEvaluator` (Optuna's default evaluator) on the
    Optuna-COMPLETE trials, which include diverged ones at their (bad) untrained score, with
    ``target_quantile = max(0.1, 3 / n)`` so that the "top" group holds at least 3 trials. Importances are
    normalised to sum to 1 and keyed by setting name (``beta1``, not ``one_minus_beta1``).

    Returns:
        ``(importances, None)``, or ``(None, reason)`` when the study has fewer than
        :data:`MIN_IMPORTANCE_TRIALS` complete trials, samples no setting, or the evaluator fails.
    """
    complete = [t for t in trials if t.state == TrialState.COMPLETE and finite_or_none(t.value) is not None]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        return None, f"needs at least {MIN_IMPORTANCE_TRIALS} complete trials, the study has {len(complete)}"
    names = sorted({name for t in complete for name in t.params})
    if not names:
        return None, "no setting is sampled in this study"
    evaluator = importance_evaluator(len(complete))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = optuna_importance().get_param_importances(study, evaluator=evaluator, params=names)
    except Exception as exc:  # the evaluator rejects an unusual study: say why, keep the summary
        return None, f"importance could not be computed: {type(exc).__name__}: {exc}"
    return {_setting_name(name): float(value) for name, value in raw.items()}, None


def importance_evaluator(complete: int) -> optuna.importance.BaseImportanceEvaluator:
    """The evaluator of :func:`param_importance` (and of the ``param_importances`` plot) for a study of
    ``complete`` complete trials: PED-ANOVA with ``target_quantile = max(0.1, 3 / complete)``."""
    evaluators = optuna_importance()  # first use in this process: without scikit-learn where allowed
    return evaluators.PedAnovaImportanceEvaluator(target_quantile=max(TOP_FRACTION, MIN_TOP_TRIALS / complete))


def _setting_name(optuna_name: str) -> str:
    prefix = "one_minus_"
    if optuna_name.startswith(prefix) and optuna_name[len(prefix) :] in BETAS:
        return optuna_name[len(prefix) :]
    return optuna_name


@dataclass(frozen=True)
class RobustRange:
    """The span of each sampled setting over the best-scoring candidates (how sensitive the task is)."""

    trials: tuple[int, ...]
    best_score: float
    worst_score: float
    params: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {
            "trials": list(self.trials),
            "score": {"best": self.best_score, "worst": self.worst_score},
            "params": self.params,
        }


def robust_range(ranked: list[Candidate], spec: StudySpec) -> RobustRange | None:
    """The range of every sampled setting over the top ``max(3, ceil(10% of candidates))`` candidates.

    Continuous settings give ``{"low": min, "high": max}``; a sampled ``amsgrad`` gives
    ``{"values": [...]}``. Returns None with fewer than :data:`MIN_TOP_TRIALS` candidates.
    """
    if len(ranked) < MIN_TOP_TRIALS:
        return None
    top = ranked[: max(MIN_TOP_TRIALS, math.ceil(TOP_FRACTION * len(ranked)))]
    params: dict[str, dict[str, Any]] = {}
    for dim in spec.space.sampled():
        values = [getattr(c.params, dim.name) for c in top]
        if dim.choices:
            params[dim.name] = {"values": sorted(set(values))}
        else:
            params[dim.name] = {"low": min(values), "high": max(values)}
    return RobustRange(tuple(c.trial for c in top), top[0].score, top[-1].score, params)


def device_counts(trials: Iterable[FrozenTrial]) -> dict[str, dict[str, int]]:
    """Trial outcomes per device (the ``adamtune.device`` attribute); trials that never started are left out.

    A trial that ran without recording its device (made by another tool) counts under ``"unknown"``.
    """
    by_device: dict[str, list[FrozenTrial]] = {}
    for trial in trials:
        if trial.state == TrialState.WAITING:
            continue
        by_device.setdefault(str(trial.user_attrs.get(DEVICE_ATTR, "unknown")), []).append(trial)
    return {device: count_trials(group).as_dict() for device, group in sorted(by_device.items())}


# --------------------------------------------------------------------------- the summary of one study


@dataclass(frozen=True)
class StudySummary:
    """One study's answer: what to use, how it compares with the defaults, and what the trials did."""

    study: str
    task: str
    objective: str
    direction: str
    epochs: int
    batch_size: int
    counts: Counts
    recommended: Candidate | None
    baseline: Candidate | None
    extra_dimensions: tuple[str, ...] = ()
    devices: dict[str, dict[str, int]] = field(default_factory=dict)
    importance: dict[str, float] | None = None
    importance_note: str | None = None
    robust: RobustRange | None = None
    verify: dict[str, Any] | None = None
    defaults: AdamParams = BASELINE  # what the baseline trains with: space.baseline_for(the space)
    #: Which rule chose ``recommended``: ``confirmed``, ``defaults`` or ``search`` (see :func:`choose`).
    rule: str = "search"
    #: The confirmation stage as ``confirm.stage_as_dict`` (None for summaries built without it).
    confirmation: dict[str, Any] | None = None

    @property
    def gain(self) -> float | None:
        if self.recommended is None or self.baseline is None:
            return None
        return signed_gain(self.recommended.score, self.baseline.score, self.direction)

    @property
    def relative_gain(self) -> float | None:
        if self.gain is None or self.baseline is None or not self.baseline.score:
            return None
        return self.gain / abs(self.baseline.score)

    def rule_text_line(self) -> str:
        """:func:`rule_text` of this summary."""
        return rule_text(self)

    @property
    def verify_is_current(self) -> bool:
        """True when the stored verification tested the trial that is recommended now."""
        return bool(self.verify and self.recommended and self.verify.get("trial") == self.recommended.trial)

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape of one ``adamtune summary --json`` row (see the README).

        ``recommended`` is the settings as a flat object (null when nothing is recommendable yet);
        ``score``/``baseline_score`` are late-epoch means (the ranking rule), ``value``/``baseline_value``
        the final-epoch objective; ``gain``/``relative_gain`` compare the scores.
        """
        rec, base = self.recommended, self.baseline
        verify = None
        if self.verify is not None:
            verify = {**self.verify, "current": self.verify_is_current}
        return {
            "study": self.study,
            "task": self.task,
            "objective": self.objective,
            "direction": self.direction,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "score_rule": f"mean {self.objective} over the last {LATE_EPOCHS} epochs of a complete trial",
            "recommended": settings_dict(rec.params, self.extra_dimensions) if rec else None,
            "recommended_trial": rec.trial if rec else None,
            "score": rec.score if rec else None,
            "value": rec.value if rec else None,
            "baseline_trial": base.trial if base else None,
            "baseline_score": base.score if base else None,
            "baseline_value": base.value if base else None,
            "gain": self.gain,
            "relative_gain": self.relative_gain,
            "trials": self.counts.as_dict(),
            "devices": self.devices,
            "importance": self.importance,
            "importance_note": self.importance_note,
            "robust_range": self.robust.as_dict() if self.robust else None,
            "verify": verify,
            "rule": self.rule,
            "rule_text": rule_text(self),
            "confirmation": self.confirmation,
        }


def is_adamtune_study(study: optuna.Study) -> bool:
    """True for studies made by ``adamtune search`` (they carry the stored study definition)."""
    return SPEC_ATTR in study.user_attrs


def summarize(study: optuna.Study, *, importance: bool = True) -> StudySummary:
    """Summarise one adamtune study (reads the study only; see the module docstring for the rule).

    ``importance=False`` skips the parameter-importance fit (the slowest part) for commands that only
    need the recommendation; ``importance`` is then None with a note saying so.
    """
    from adamtune.confirm.stored import read_stage, stage_as_dict

    spec = spec_from_study(study)
    trials = study.get_trials(deepcopy=False)
    ranked = rank_trials(trials, spec)
    baseline = baseline_candidate(trials, spec)
    scores, note = param_importance(study, trials) if importance else (None, "not computed")
    stage = read_stage(study)
    extras = tuple(spec.space.extra_dimensions())
    rule, recommended = choose(ranked, baseline, stage, baseline_for(spec.space))
    return StudySummary(
        study=study.study_name,
        task=spec.task,
        objective=spec.objective,
        direction=spec.direction,
        epochs=int(spec.epochs or 0),
        batch_size=int(spec.batch_size or 0),
        counts=count_trials(trials),
        recommended=recommended,
        baseline=baseline,
        extra_dimensions=extras,
        devices=device_counts(trials),
        importance=scores,
        importance_note=note,
        robust=robust_range(ranked, spec),
        verify=study.user_attrs.get(VERIFY_ATTR),
        defaults=baseline_for(spec.space),
        rule=rule,
        confirmation=stage_as_dict(stage, extras),
    )


def choose(
    ranked: list[Candidate], baseline: Candidate | None, stage: StageState, defaults: AdamParams = BASELINE
) -> tuple[str, Candidate | None]:
    """The recommendation and the rule that chose it (the README's decision rule).

    * ``confirmed``: the confirmation stage is decided and its best finalist's gain interval lies above
      zero: that finalist.
    * ``defaults``: the stage is decided and no finalist was confirmed better: the defaults (the baseline
      trial; settings ``defaults``, i.e. ``space.baseline_for`` the study's space: Adam's, or AdamW's with
      weight decay; scored with the baseline's values).
    * ``search``: no decided stage (confirmation off, not run yet, in progress, or no finalist): the best
      search-time score, which summaries flag as unconfirmed.
    """
    plan = stage.plan
    if stage.settings.enabled and stage.finalists and plan.decided:
        if plan.recommended is not None:
            number = plan.recommended.finalist.trial
            return "confirmed", next(c for c in ranked if c.trial == number)
        if baseline is not None:
            return "defaults", replace(baseline, params=defaults)
        mean = math.fsum(plan.baseline_values) / len(plan.baseline_values)
        return "defaults", Candidate(-1, defaults, mean, mean, baseline=True)
    return "search", ranked[0] if ranked else None


def rule_text(row: StudySummary) -> str:
    """One sentence saying which rule chose the recommendation, with the confirmed gain and interval."""
    conf = row.confirmation or {}
    metric = conf.get("metric", row.objective)
    if row.rule in ("confirmed", "defaults"):
        best = next((f for f in conf["finalists"] if f["trial"] == conf["best_candidate"]), None)
        folds = conf.get("validation") == "folds"
        fresh = "fresh seeds and validation folds" if folds else "fresh seeds"
        detail = ""
        if best is not None:
            relative = f" ({best['relative_gain']:+.1%})" if best.get("relative_gain") is not None else ""
            low, high = best["interval"]
            detail = (
                f"trial {best['trial']}: {metric} {best['confirmed_score']:.4g} "
                f"vs {conf['baseline']['confirmed_score']:.4g} "
                f"for Adam's defaults, gain {best['gain']:+.3g}{relative}, 95% CI {low:+.3g} to {high:+.3g} "
                f"over {best['seeds']} {fresh}"
            )
        caveat = "" if folds else f" ({conf.get('note') or FIXED_ROWS_NOTE})"
        if row.rule == "confirmed":
            return f"confirmed on {fresh}{caveat}: {detail}"
        return (
            f"Adam's defaults: no finalist was confirmed better on {fresh}{caveat} (the interval of the gain "
            f"must lie above 0); best candidate {detail}"
        )
    why = {
        "off": "confirmation is off for this study",
        "not run": "confirmation has not run yet",
        "in progress": "confirmation is in progress",
    }.get(conf.get("status", "not run"), "confirmation has not run yet")
    hint = (
        "search again with --confirm to confirm it"
        if conf.get("status") == "off"
        else "run 'adamtune search' again with the same --n-trials to confirm it"
    )
    return f"the best search-time score (one seed each), UNCONFIRMED: {why}; {hint}"


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


def recommendation(study: optuna.Study) -> StudySummary:
    """The summary of ``study`` for commands that need a recommendation (no importance computed).

    Raises:
        StorageError: the study has no complete trial with a full, finite curve yet.
    """
    summary = summarize(study, importance=False)
    if summary.recommended is None:
        counts = summary.counts
        raise StorageError(
            f"study {study.study_name!r} has no complete trial yet ({counts.finished} finished: "
            f"{counts.pruned} pruned, {counts.diverged} diverged); run 'adamtune search' to add trials"
        )
    return summary


# --------------------------------------------------------------------------- listing studies


def list_studies(storage: Any) -> list[dict[str, Any]]:
    """Every study in ``storage`` with its trial counts: the documented ``adamtune studies --json`` rows.

    Studies not made by adamtune are listed too, with ``"adamtune": false`` and null task/objective.
    """
    from adamtune.core.confirm_rule import CONFIRMS_ATTR

    rows = []
    for name in study_names(storage):
        study = _load(name, storage)
        if CONFIRMS_ATTR in study.user_attrs:
            continue  # a study's confirmation runs: part of that study, not one of its own
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


# --------------------------------------------------------------------------- terminal rendering


def format_value(value: Any, name: str = "", digits: int = 4) -> str:
    """A value for display: ``digits`` significant digits; a beta with ``digits`` significant digits of 1 - beta.

    So 0.9995 shows as 0.9995 (not 1) and 0.99990123 as 0.9999012.
    """
    if isinstance(value, bool):
        return str(value).lower()
    if not isinstance(value, float):
        return str(value)
    if name in BETAS and 0.0 < value < 1.0:
        decimals = max(digits - 1, math.ceil(-math.log10(1.0 - value)) + digits - 1)
        text = f"{value:.{decimals}f}".rstrip("0")
        return text + "0" if text.endswith(".") else text
    return f"{value:.{digits}g}"


def range_text(entry: dict[str, Any] | None, name: str = "") -> str:
    if entry is None:
        return "-"
    if "values" in entry:
        return ", ".join(format_value(v) for v in entry["values"])
    return f"{format_value(entry['low'], name, 3)}–{format_value(entry['high'], name, 3)}"


def render_summary(row: StudySummary) -> Any:
    """A rich table for one study: settings, range, importance, scores, trial counts and verification."""
    from rich.table import Table

    counts = row.counts
    caption = [f"recommendation: {rule_text(row)}"]
    if row.gain is not None and row.rule == "search":
        relative = f" ({row.relative_gain:+.1%})" if row.relative_gain is not None else ""
        if row.gain == 0:
            is_baseline = row.recommended is not None and row.baseline is not None
            is_baseline = is_baseline and row.recommended.trial == row.baseline.trial
            verdict = (
                f"the recommendation is {defaults_label(row.defaults.weight_decay > 0)}" if is_baseline else "a tie"
            )
        else:
            verdict = f"{'better' if row.gain > 0 else 'worse'} than {defaults_label(row.defaults.weight_decay > 0)}"
        caption.append(f"search-time gain over default (one seed, unconfirmed): {row.gain:+.3g}{relative}, {verdict}")
    caption += [
        f"trials: {counts.complete} complete, {counts.pruned} pruned, {counts.diverged} diverged, "
        f"{counts.failed} failed"
        + (f", {counts.running} running" if counts.running else "")
        + (f", {counts.waiting} waiting" if counts.waiting else ""),
    ]
    if row.devices:
        per_device = ", ".join(f"{d} {sum(c.values())}" for d, c in row.devices.items())
        caption.append(f"trials per device: {per_device}")
    caption.append(
        f"search-time score: mean {row.objective} over the last {LATE_EPOCHS} epochs of a complete trial "
        "(one seed); finalists: the best search-time scores"
    )
    if row.robust is not None:
        caption.append(f"top-trial range: the {len(row.robust.trials)} best-scoring trials (top 10%, at least 3)")
    caption.append(
        "importance: PED-ANOVA (Optuna)" if row.importance is not None else f"importance: {row.importance_note}"
    )
    caption.extend(verify_lines(row))
    from rich import box

    table = Table(
        title=f"{row.study} (task {row.task}, {row.objective}, {row.epochs} epochs)",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        caption="\n".join(caption),
        caption_justify="left",
    )
    table.add_column("setting", no_wrap=True)
    table.add_column("recommended", justify="right", no_wrap=True)
    table.add_column("default", justify="right", no_wrap=True)
    table.add_column("top-trial range", justify="right", no_wrap=True)
    table.add_column("importance", justify="right", no_wrap=True)
    if row.recommended is None:
        table.add_row("(no complete trial yet)", "-", "-", "-", "-")
        return table
    ranges = row.robust.params if row.robust else {}
    for key in (*CORE_SETTINGS, *row.extra_dimensions):
        weight = row.importance.get(key) if row.importance else None
        table.add_row(
            key,
            format_value(getattr(row.recommended.params, key), key),
            format_value(getattr(row.defaults, key), key),
            range_text(ranges.get(key), key),
            f"{weight:.2f}" if weight is not None else "-",
        )
    table.add_section()
    baseline = format_value(row.baseline.score) if row.baseline is not None else "-"
    spread = f"{row.robust.best_score:.4g}–{row.robust.worst_score:.4g}" if row.robust else "-"
    table.add_row("search score", format_value(row.recommended.score), baseline, spread, "")
    finalists = render_confirmation(row)
    if finalists is None:
        return table
    from rich.console import Group

    return Group(table, finalists)


def render_confirmation(row: StudySummary) -> Any:
    """A rich table of the finalists: search-time vs confirmed score, gain, interval, seeds; None if none."""
    conf = row.confirmation
    if not conf or not conf.get("finalists"):
        return None
    from rich import box
    from rich.table import Table

    base = conf["baseline"]
    cost = f", runs {conf['cost_share']:.0%} of the trials' time" if conf.get("cost_share") else ""
    where = (
        "the same fresh seeds and validation folds"
        if conf.get("validation") == "folds"
        else f"the same fresh seeds; {conf.get('note') or FIXED_ROWS_NOTE}"
    )
    table = Table(
        title=(
            f"confirmation ({conf['status']}): {conf['metric']} on {where}, "
            f"{conf['interval']} interval of the gain{cost}"
        ),
        title_justify="left",
        box=box.SIMPLE_HEAD,
    )
    for name in ("arm", "search", "confirmed", "gain", "95% CI", "n"):
        table.add_column(name, justify="left" if name == "arm" else "right", no_wrap=True)
    table.add_column("status", overflow="fold")
    confirmed = base["confirmed_score"]
    table.add_row(
        "defaults",
        format_value(row.baseline.score) if row.baseline else "-",
        format_value(confirmed) if confirmed is not None else "-",
        "",
        "",
        str(base["seeds"]),
        "baseline",
    )
    for f in conf["finalists"]:
        interval = f"{f['interval'][0]:+.2g}..{f['interval'][1]:+.2g}" if f["interval"] else "-"
        status = f["status"]
        if f["trial"] == conf.get("recommended_trial"):
            status = "recommended"
        elif f["trial"] == conf.get("best_candidate") and row.rule == "defaults":
            status = "unconfirmed"  # the best candidate, when the defaults are kept
        table.add_row(
            f"#{f['trial']}",
            format_value(f["search_score"]),
            format_value(f["confirmed_score"]) if f["confirmed_score"] is not None else "-",
            f"{f['gain']:+.3g}" if f["gain"] is not None else "-",
            interval,
            str(f["seeds"]),
            status,
        )
    return table


def verify_lines(row: StudySummary) -> list[str]:
    """One or two caption lines describing the stored ``adamtune verify`` result, if any."""
    if row.verify is None:
        return ["verify: not run yet (adamtune verify --task " + row.task + ")"]
    lines = [f"verify: {row.verify.get('verdict', '?')}"]
    if not row.verify_is_current:
        lines.append(f"  (verified trial {row.verify.get('trial')}; the recommendation is now another trial)")
    return lines
