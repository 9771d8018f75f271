"""``adamtune report``: a study's plots as PNG and interactive HTML, and one offline ``index.html``.

Reads only the study. Plots a study cannot support yet (too few trials, a fixed dimension) are listed
on the page with the reason instead of failing the report.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import TrialState

from adamtune.confirm.ranking import CORE_SETTINGS, LATE_EPOCHS
from adamtune.core.errors import ConfigError
from adamtune.report.decision import rule_text
from adamtune.report.render import format_value, range_text, verify_lines
from adamtune.report.summary import StudySummary, recommendation, summarize
from adamtune.storage.attr_keys import SPEC_ATTR


@dataclass
class ReportFiles:
    """What :func:`write_report` produced: the page, each plot's files, and the plots it had to skip."""

    index: Path
    plots: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


#: Optuna's names for the sampled betas (see ``space.py``).
BETA1, BETA2 = "one_minus_beta1", "one_minus_beta2"
#: The report's plots, in page order, with their captions.
REPORT_PLOTS = {
    "optimization_history": "Objective of every complete trial, with the best so far.",
    "param_importances": "Importance of each setting for the objective (PED-ANOVA, as in the summary).",
    "contour_lr_beta1": "Objective over learning rate × (1 − β1), both on log scales.",
    "contour_lr_beta2": "Objective over learning rate × (1 − β2), both on log scales.",
    "slice": "Objective against each sampled setting, one panel per setting.",
    "learning_curves": "Per-epoch objective of the best trials against Adam's defaults (dashed).",
}


def _optuna_plot(study: optuna.Study, out_dir: Path, name: str, plot: str, params: list[str]) -> list[Path]:
    """Write Optuna's ``plot_<plot>`` for ``params`` as HTML (plotly) and PNG (matplotlib)."""
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    from adamtune.report.plots import PlotUnavailable, optuna_pair

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params]
    sampled = {p for t in complete for p in t.params}
    missing = [p for p in params if p not in sampled]
    if missing:
        raise PlotUnavailable(f"{', '.join(missing)} not sampled in this study")
    if len(complete) < 2:
        raise PlotUnavailable(f"needs at least 2 complete trials, the study has {len(complete)}")
    target = study.user_attrs.get(SPEC_ATTR, {}).get("objective", "Objective Value")
    width = max(10.0, 3.6 * len(params) + 1.5) if plot == "slice" else 10.0
    return optuna_pair(
        name,
        out_dir,
        lambda: getattr(vis, f"plot_{plot}")(study, params=params, target_name=target),
        lambda: getattr(vis_mpl, f"plot_{plot}")(study, params=params, target_name=target),
        "directory",
        width,
    )


def write_report(study: optuna.Study, out_dir: Path, *, top: int = 5) -> ReportFiles:
    """Write the plots of :data:`REPORT_PLOTS` (PNG and interactive HTML) and ``index.html`` into ``out_dir``.

    ``index.html`` shows the summary table, the PNGs and links to the interactive versions, which share one
    ``plotly.min.js`` in ``out_dir`` (so the folder works offline). Plots the study cannot support yet (too
    few trials, a setting not sampled) are listed on the page with the reason instead. Existing files of
    the same names are overwritten; nothing else in ``out_dir`` is touched.

    Raises:
        StorageError: the study has no complete trial yet (nothing to report).
        ConfigError: ``out_dir`` exists and is not a directory, or cannot be created.
    """
    from adamtune.report import plots

    summary = summarize(study)
    if summary.recommended is None:
        recommendation(study)  # raises the one-line "no complete trial yet" error
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ConfigError(f"--out {out_dir} exists and is not a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot create --out {out_dir}: {exc.strerror}") from None
    sampled = sorted({p for t in study.get_trials(deepcopy=False) for p in t.params})
    producers: dict[str, Callable[[], list[Path]]] = {
        "optimization_history": lambda: plots.optimization_history(study, out_dir, plotlyjs="directory"),
        "param_importances": lambda: plots.importance(study, out_dir, plotlyjs="directory"),
        "contour_lr_beta1": lambda: _optuna_plot(study, out_dir, "contour_lr_beta1", "contour", ["lr", BETA1]),
        "contour_lr_beta2": lambda: _optuna_plot(study, out_dir, "contour_lr_beta2", "contour", ["lr", BETA2]),
        "slice": lambda: _optuna_plot(study, out_dir, "slice", "slice", sampled),
        "learning_curves": lambda: plots.learning_curves(study, out_dir, top=top, plotlyjs="directory"),
    }
    files = ReportFiles(index=out_dir / "index.html")
    for name, produce in producers.items():
        try:
            files.plots[name] = produce()
        except plots.PlotUnavailable as exc:
            files.skipped[name] = str(exc)
        except Exception as exc:  # one broken plot must not cost the whole report; the page says why
            files.skipped[name] = f"failed: {type(exc).__name__}: {exc}"
    files.index.write_text(_report_page(summary, files), encoding="utf-8")
    return files


def _report_page(summary: StudySummary, files: ReportFiles) -> str:
    """The ``index.html`` of a report: the summary as a table, then every plot (PNG, linked to its HTML)."""
    esc = html.escape
    rec = summary.recommended
    assert rec is not None

    def tr(*cells: str, cls: str = "") -> str:
        row = "".join(f"<td>{esc(cell)}</td>" for cell in cells)
        return f"<tr class='{cls}'>{row}</tr>" if cls else f"<tr>{row}</tr>"

    rows = []
    ranges = summary.robust.params if summary.robust else {}
    for key in (*CORE_SETTINGS, *summary.extra_dimensions):
        weight = summary.importance.get(key) if summary.importance else None
        rows.append(
            tr(
                key,
                format_value(getattr(rec.params, key), key),
                format_value(getattr(summary.defaults, key), key),
                range_text(ranges.get(key), key),
                "-" if weight is None else f"{weight:.2f}",
            )
        )
    baseline = format_value(summary.baseline.score) if summary.baseline else "-"
    rows.append(tr(f"search score (trial {rec.trial})", format_value(rec.score), baseline, "", "", cls="sep"))
    if summary.gain is not None:
        relative = f" ({summary.relative_gain:+.1%})" if summary.relative_gain is not None else ""
        rows.append(tr("search-time gain over default", f"{summary.gain:+.4g}{relative}", "", "", ""))
    counts = summary.counts
    notes = [
        f"Recommendation: {rule_text(summary)}.",
        f"Trials: {counts.complete} complete, {counts.pruned} pruned, {counts.diverged} diverged, "
        f"{counts.failed} failed.",
        f"Score: mean {summary.objective} over the last {LATE_EPOCHS} epochs of a complete trial "
        "(the recommendation rule); range: the best-scoring 10% of complete trials, at least 3.",
        "Importance column: PED-ANOVA (Optuna's default evaluator)."
        if summary.importance is not None
        else f"Importance: {summary.importance_note}.",
        *verify_lines(summary),
    ]
    figures = []
    for name, caption in REPORT_PLOTS.items():
        if name in files.plots:
            html_file, png_file = (p.name for p in files.plots[name])
            figures.append(
                f"<figure><a href='{esc(html_file)}'><img src='{esc(png_file)}' alt='{esc(name)}'></a>"
                f"<figcaption>{esc(caption)} <a href='{esc(html_file)}'>interactive</a></figcaption></figure>"
            )
        else:
            figures.append(f"<p class='skipped'>{esc(name)}: not drawn ({esc(files.skipped.get(name, '?'))}).</p>")
    title = f"adamtune report: {summary.study} (task {summary.task})"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; }}
table {{ border-collapse: collapse; }} td, th {{ padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; }}
td:not(:first-child) {{ text-align: right; font-variant-numeric: tabular-nums; }}
tr.sep td {{ border-top: 2px solid #888; }} img {{ max-width: 100%; }} .skipped {{ color: #888; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>{esc(summary.objective)} ({esc(summary.direction)}d), {summary.epochs} epochs, batch size {summary.batch_size}.</p>
<table><tr><th>setting</th><th>recommended</th><th>Adam default</th><th>range (top trials)</th><th>importance</th></tr>
{chr(10).join(rows)}
</table>
<ul>{"".join(f"<li>{esc(n)}</li>" for n in notes)}</ul>
{chr(10).join(figures)}
</body></html>
"""
