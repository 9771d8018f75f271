"""How a study summary is shown: values as text, and the Rich tables and caption lines of ``adamtune summary``.

The HTML report and the exports reuse the value formatting (:func:`format_value`, :func:`range_text`)
and the verification lines (:func:`verify_lines`). Rich is imported only when a table is drawn.
"""

from __future__ import annotations

import math
from typing import Any

from adamtune.confirm.ranking import CORE_SETTINGS, LATE_EPOCHS
from adamtune.core.budget import TIMED_TRIAL_CAP, format_duration
from adamtune.core.confirm_rule import FIXED_ROWS_NOTE
from adamtune.core.space import BETAS, defaults_label
from adamtune.report.decision import rule_text
from adamtune.report.summary import StudySummary


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
    caption.extend(budget_lines(row))
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


#: What the confirmation table's status column can say (``confirm.stored`` gives the finalists' own).
STATUSES = ("baseline", "recommended", "unconfirmed", "kept", "dropped", "racing", "not raced")


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
    # Numbers and statuses are never broken; on a narrow terminal the interval wraps at its " to " instead.
    for name in ("arm", "search", "confirmed", "gain"):
        table.add_column(name, justify="left" if name == "arm" else "right", no_wrap=True)
    table.add_column("95% CI", justify="right")
    table.add_column("n", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True, min_width=max(len(status) for status in STATUSES))
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
        interval = f"{f['interval'][0]:+.2g} to {f['interval'][1]:+.2g}" if f["interval"] else "-"
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


def ended_line(row: StudySummary) -> str | None:
    """Why the trial phase ended before its trial target (a time budget, ``--stop-when-converged``), if it did."""
    ended = row.ended
    if not ended:
        return None
    asked, finished = ended.get("asked"), ended.get("finished")
    done = "?" if finished is None else str(finished)
    at = f"at {done} trials" if asked is None or asked >= TIMED_TRIAL_CAP else f"at {done} of {asked} trials"
    if ended["reason"] == "time":
        timeout = ended.get("timeout")
        budget = f"the time budget ({format_duration(float(timeout))})" if timeout else "the time budget"
        return f"{budget} ended the trial phase {at}"
    verdict = f": {row.convergence.describe()}" if row.convergence is not None else ""
    return f"--stop-when-converged ended the trial phase {at}{verdict}"


def budget_lines(row: StudySummary) -> list[str]:
    """What the budget did: the dimensions an auto space searched, why the trial phase ended early (if it
    did), and whether more search is likely to pay (``core/convergence.py``)."""
    lines = []
    space = row.auto_space
    if space is not None:
        if space.searched is None:
            lines.append("space: auto — no finished trial recorded what it searched yet")
        else:
            lines.append(f"space: auto — searched {', '.join(space.searched)}; {space.reason}")
    ended = ended_line(row)
    if ended is not None:
        lines.append(ended)
    if row.convergence is not None and not (row.ended and row.ended.get("reason") == "converged"):
        lines.append(f"convergence: {row.convergence.describe()}")
    return lines


def verify_lines(row: StudySummary) -> list[str]:
    """One or two caption lines describing the stored ``adamtune verify`` result, if any."""
    if row.verify is None:
        return ["verify: not run yet (adamtune verify --task " + row.task + ")"]
    lines = [f"verify: {row.verify.get('verdict', '?')}"]
    if not row.verify_is_current:
        lines.append(f"  (verified trial {row.verify.get('trial')}; the recommendation is now another trial)")
    return lines
