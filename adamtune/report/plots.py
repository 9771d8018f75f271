"""Plots of a study, each written twice: interactive HTML (plotly) and a static PNG (matplotlib).

Used for the artifacts of a search's MLflow parent run (``tracking/tracker.py``) and by ``adamtune report``.
Every plot function has the same contract::

    paths = optimization_history(study, out_dir)   # [out_dir/optimization_history.html, ….png]

* It writes ``<name>.html`` and ``<name>.png`` into ``out_dir`` (created if missing, files overwritten)
  and returns the two paths, HTML first.
* It reads only the Optuna study (trials and their user attributes); it never trains and never touches
  MLflow.
* When the study cannot support the plot yet (no complete trial, nothing sampled, …) it raises
  :class:`PlotUnavailable` with a one-line reason and writes nothing. :func:`write_all` collects those
  reasons instead of raising.

What goes in: Optuna's own plots use trials in Optuna state COMPLETE, which includes *diverged* trials
(scored as the untrained model, see ``objective.py``) and excludes pruned and failed ones. Parameter
names are Optuna's: the betas appear as ``one_minus_beta1`` / ``one_minus_beta2`` (sampled on a log
scale of ``1 - beta``, see ``space.py``). The learning-curve overlay reads the per-epoch curves stored
on each trial (``adamtune.curves``) and shows Adam's defaults (the baseline trial) against the best
complete, non-diverged trials.

HTML files embed plotly.js by default (about 4.5 MB each) so they render with no internet access, e.g.
in the MLflow UI of an air-gapped cluster; pass ``plotlyjs="cdn"`` for small files that load plotly.js
from its CDN instead.

PNG files: the learning-curve overlay uses matplotlib's object-oriented API on an Agg canvas (no
pyplot). Optuna's matplotlib plots go through pyplot, which picks a non-interactive backend by itself
when there is no display; this module never changes the caller's backend and closes every figure it
opens.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR, SPEC_ATTR
from adamtune.storage.outcomes import trial_state

if TYPE_CHECKING:
    import optuna

#: Names of the plots :func:`write_all` makes, in order; each is also the stem of its two files.
PLOT_NAMES = ("optimization_history", "param_importances", "parallel_coordinates", "learning_curves")
#: How ``include_plotlyjs`` is set in plotly's ``write_html``: True embeds plotly.js, "cdn" links it.
PlotlyJs = bool | str

BASELINE_STYLE = {"color": "black", "dash": "dash"}


class PlotUnavailable(Exception):
    """The study cannot support this plot yet; ``str(exc)`` is a one-line reason."""


@dataclass
class PlotSet:
    """What :func:`write_all` produced: paths per plot name, and the reason for each plot it skipped."""

    paths: dict[str, list[Path]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def all_paths(self) -> list[Path]:
        return [path for name in PLOT_NAMES for path in self.paths.get(name, [])]


def _objective_name(study: optuna.Study) -> str:
    """The study's objective metric (``val_loss``/``val_accuracy``), or Optuna's generic name."""
    spec = study.user_attrs.get(SPEC_ATTR) or {}
    return str(spec.get("objective", "Objective Value"))


def _complete(study: optuna.Study) -> list[FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]


def _paths(out_dir: Path, name: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir / f"{name}.html", out_dir / f"{name}.png"


def _save_png(axes_or_figure: Any, path: Path, width: float = 9.0) -> None:
    """Save a matplotlib figure (or the figure of an Axes/array of Axes), ``width`` inches wide, and release it."""
    import numpy as np
    from matplotlib import pyplot as plt

    figure = axes_or_figure
    if isinstance(figure, np.ndarray):
        figure = figure.flat[0]
    figure = getattr(figure, "figure", figure)
    figure.set_size_inches(width, 5.5)
    _plain_log_ticks(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plain_log_ticks(figure: Any) -> None:
    """Label log-scale axes as ``1e-05`` rather than matplotlib's default mathtext (10 to the power -5):
    parsing the mathtext labels was a third of the time to draw the study's plots."""
    from matplotlib.ticker import LogFormatter

    for axes in figure.axes:
        for axis in (axes.xaxis, axes.yaxis):
            if axis.get_scale() == "log":
                axis.set_major_formatter(LogFormatter(labelOnlyBase=True))
                axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def optuna_pair(
    name: str,
    out_dir: Path,
    plotly_figure: Callable[[], Any],
    matplotlib_axes: Callable[[], Any],
    plotlyjs: PlotlyJs,
    width: float = 9.0,
) -> list[Path]:
    """Write the plotly figure as ``name.html`` and the matplotlib one as ``name.png`` (``width`` inches).

    The two callables build the same plot with Optuna's two plotting back ends; returns both paths.
    """
    html, png = _paths(out_dir, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib back end is "experimental"
        plotly_figure().write_html(html, include_plotlyjs=plotlyjs)
        _save_png(matplotlib_axes(), png, width)
    return [html, png]


def optimization_history(study: optuna.Study, out_dir: Path, *, plotlyjs: PlotlyJs = True) -> list[Path]:
    """The objective of every complete trial against its trial number, with the best so far.

    Raises:
        PlotUnavailable: the study has no complete trial with a finite value.
    """
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    if not _complete(study):
        raise PlotUnavailable("no complete trial yet")
    target = _objective_name(study)
    return optuna_pair(
        "optimization_history",
        out_dir,
        lambda: vis.plot_optimization_history(study, target_name=target),
        lambda: vis_mpl.plot_optimization_history(study, target_name=target),
        plotlyjs,
    )


def importance(study: optuna.Study, out_dir: Path, *, plotlyjs: PlotlyJs = True) -> list[Path]:
    """The PED-ANOVA importance of each sampled parameter: the numbers ``adamtune summary`` reports.

    Same evaluator and settings as :func:`adamtune.report.importance.param_importance` (Optuna's default
    evaluator), evaluated once for both files.

    Raises:
        PlotUnavailable: fewer complete trials than the summary needs for importance
            (:data:`~adamtune.report.importance.MIN_IMPORTANCE_TRIALS`), or no sampled parameter.
    """
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    from adamtune.report.importance import MIN_IMPORTANCE_TRIALS, importance_evaluator

    complete = _complete(study)
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise PlotUnavailable(f"needs at least {MIN_IMPORTANCE_TRIALS} complete trials, the study has {len(complete)}")
    if not any(t.params for t in complete):
        raise PlotUnavailable("no parameter is sampled in this study")
    target = _objective_name(study)
    evaluator = _evaluated_once(importance_evaluator(len(complete)))

    return optuna_pair(
        "param_importances",
        out_dir,
        lambda: vis.plot_param_importances(study, evaluator=evaluator, target_name=target),
        lambda: vis_mpl.plot_param_importances(study, evaluator=evaluator, target_name=target),
        plotlyjs,
    )


def _evaluated_once(inner: Any) -> Any:
    """An importance evaluator (Optuna requires a ``BaseImportanceEvaluator``) that evaluates once and
    answers later calls with the first result: the plotly and matplotlib plots show the same numbers for
    the price of one evaluation."""
    from optuna.importance import BaseImportanceEvaluator

    class EvaluatedOnce(BaseImportanceEvaluator):
        result: dict[str, float] | None = None

        def evaluate(self, study: optuna.Study, params: Any = None, *, target: Any = None) -> dict[str, float]:
            if self.result is None:
                self.result = inner.evaluate(study, params=params, target=target)
            return dict(self.result)

    return EvaluatedOnce()


def parallel_coordinates(study: optuna.Study, out_dir: Path, *, plotlyjs: PlotlyJs = True) -> list[Path]:
    """Each complete trial as a line through its parameter values and its objective.

    Raises:
        PlotUnavailable: fewer than 2 complete trials (one line compares nothing), or no sampled parameter.
    """
    import optuna.visualization as vis
    import optuna.visualization.matplotlib as vis_mpl

    complete = _complete(study)
    if len(complete) < 2:
        raise PlotUnavailable(f"needs at least 2 complete trials, the study has {len(complete)}")
    if not any(t.params for t in complete):
        raise PlotUnavailable("no parameter is sampled in this study")
    target = _objective_name(study)
    return optuna_pair(
        "parallel_coordinates",
        out_dir,
        lambda: vis.plot_parallel_coordinate(study, target_name=target),
        lambda: vis_mpl.plot_parallel_coordinate(study, target_name=target),
        plotlyjs,
    )


@dataclass(frozen=True)
class Curve:
    """One line of the learning-curve overlay."""

    label: str
    epochs: list[int]
    values: list[float]
    baseline: bool


def _curve_of(trial: FrozenTrial, metric: str, label: str, baseline: bool) -> Curve | None:
    history = (trial.user_attrs.get(CURVES_ATTR) or {}).get(metric) or []
    points = [(i + 1, v) for i, v in enumerate(history) if v is not None and math.isfinite(v)]
    if not points:
        return None
    return Curve(label, [p[0] for p in points], [p[1] for p in points], baseline)


def best_curves(study: optuna.Study, *, top: int = 5, metric: str | None = None) -> list[Curve]:
    """The baseline's curve (when it has one) followed by those of the ``top`` best complete trials.

    "Best" is by the study's objective value and direction, among complete, non-diverged trials other
    than the baseline; ties keep trial order. ``metric`` (default: the objective) names the curve.
    """
    metric = metric or _objective_name(study)
    minimize = study.direction.name == "MINIMIZE"
    trials = study.get_trials(deepcopy=False)
    curves: list[Curve] = []
    for trial in trials:
        if trial.user_attrs.get(BASELINE_ATTR) and trial.state == TrialState.COMPLETE:
            curve = _curve_of(trial, metric, f"baseline: Adam defaults (trial {trial.number})", True)
            if curve is not None:
                curves.append(curve)
            break
    candidates = [
        t
        for t in trials
        if trial_state(t) == "complete"
        and not t.user_attrs.get(BASELINE_ATTR)
        and t.value is not None
        and math.isfinite(t.value)
    ]
    candidates.sort(key=lambda t: (t.value if minimize else -t.value, t.number))  # type: ignore[operator]
    for trial in candidates[: max(0, top)]:
        curve = _curve_of(trial, metric, f"trial {trial.number} ({trial.value:.4g})", False)
        if curve is not None:
            curves.append(curve)
    return curves


def learning_curves(
    study: optuna.Study, out_dir: Path, *, top: int = 5, metric: str | None = None, plotlyjs: PlotlyJs = True
) -> list[Path]:
    """Overlay the per-epoch ``metric`` (default: the objective) of the baseline and the ``top`` best trials.

    The baseline is drawn dashed black; trials are labelled with their number and objective value.

    Raises:
        PlotUnavailable: neither the baseline nor any complete trial has a stored curve.
    """
    import plotly.graph_objects as go
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    metric = metric or _objective_name(study)
    curves = best_curves(study, top=top, metric=metric)
    if not curves:
        raise PlotUnavailable(f"no complete trial has a {metric} curve yet")
    html, png = _paths(out_dir, "learning_curves")
    n_best = sum(not c.baseline for c in curves)
    title = f"{metric} per epoch: Adam's defaults against the {n_best} best trial{'s' * (n_best != 1)}"

    figure = go.Figure()
    for curve in curves:
        figure.add_trace(
            go.Scatter(
                x=curve.epochs,
                y=curve.values,
                mode="lines+markers",
                name=curve.label,
                line=BASELINE_STYLE if curve.baseline else None,
            )
        )
    figure.update_layout(title=title, xaxis_title="epoch", yaxis_title=metric, template="plotly_white")
    figure.write_html(html, include_plotlyjs=plotlyjs)

    mpl_figure = Figure(figsize=(9, 5.5))
    FigureCanvasAgg(mpl_figure)
    axes = mpl_figure.add_subplot()
    for curve in curves:
        style = {"color": "black", "linestyle": "--"} if curve.baseline else {}
        axes.plot(curve.epochs, curve.values, marker="o", markersize=3, label=curve.label, **style)
    axes.set_title(title)
    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    mpl_figure.tight_layout()
    mpl_figure.savefig(png, dpi=110)
    return [html, png]


PLOTTERS: dict[str, Callable[..., list[Path]]] = {
    "optimization_history": optimization_history,
    "param_importances": importance,
    "parallel_coordinates": parallel_coordinates,
    "learning_curves": learning_curves,
}


def preload() -> None:
    """Import what :func:`write_all` needs (Optuna's plotting modules, plotly, matplotlib, the importance
    evaluators; ~0.6 s), e.g. on a background thread of a process that waits anyway, so that drawing
    later pays only for drawing."""
    import matplotlib.backends.backend_agg
    import matplotlib.pyplot  # noqa: F401
    import optuna.visualization
    import optuna.visualization.matplotlib  # noqa: F401
    import plotly.graph_objects  # noqa: F401

    from adamtune.report.importance_import import optuna_importance

    optuna_importance()


def write_all(study: optuna.Study, out_dir: Path, *, top: int = 5, plotlyjs: PlotlyJs = True) -> PlotSet:
    """Write every plot of :data:`PLOT_NAMES` that the study supports into ``out_dir``.

    Plots the study cannot support yet are listed in ``PlotSet.skipped`` with their reason; other
    errors propagate.
    """
    result = PlotSet()
    for name in PLOT_NAMES:
        kwargs: dict[str, Any] = {"plotlyjs": plotlyjs}
        if name == "learning_curves":
            kwargs["top"] = top
        try:
            result.paths[name] = PLOTTERS[name](study, out_dir, **kwargs)
        except PlotUnavailable as exc:
            result.skipped[name] = str(exc)
    return result
