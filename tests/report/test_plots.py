"""plots.py on real Optuna studies in SQLite, whose trials carry what ``objective.py`` stores on them.

No training: the trials are added with ``study.add_trial`` (fast), which is all the plots read.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution

from adamtune.report import importance, plots
from adamtune.report.importance import MIN_IMPORTANCE_TRIALS
from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR, SPEC_ATTR, STATE_ATTR

DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-5, 1e-1, log=True),
    "one_minus_beta1": FloatDistribution(0.01, 0.5, log=True),
}


def _study(tmp_path: Path, objective: str = "val_loss") -> optuna.Study:
    direction = "minimize" if objective == "val_loss" else "maximize"
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", direction=direction)
    study.set_user_attr(SPEC_ATTR, {"task": "synthetic", "objective": objective, "epochs": 3, "batch_size": 10})
    return study


def _add(
    study: optuna.Study,
    value: float,
    lr: float,
    *,
    state: str = "complete",
    baseline: bool = False,
    curve: list[float | None] | None = None,
) -> None:
    attrs: dict[str, object] = {
        STATE_ATTR: state,
        CURVES_ATTR: {"val_loss": curve or [value + 0.2, value + 0.1, value]},
    }
    if baseline:
        attrs[BASELINE_ATTR] = True
    study.add_trial(
        optuna.trial.create_trial(
            params={"lr": lr, "one_minus_beta1": 0.1},
            distributions=DISTRIBUTIONS,
            value=value,
            user_attrs=attrs,
        )
    )


def _filled(tmp_path: Path) -> optuna.Study:
    study = _study(tmp_path)
    _add(study, 0.9, 1e-3, baseline=True)
    for i, value in enumerate([0.5, 0.3, 0.7, 0.2, 0.6, 0.4, 0.1]):
        _add(study, value, 10 ** (-4 + i * 0.4))
    _add(study, 2.3, 0.09, state="diverged", curve=[2.3, None])
    return study


def test_write_all_makes_html_and_png_for_every_plot(tmp_path: Path) -> None:
    result = plots.write_all(_filled(tmp_path), tmp_path / "out", plotlyjs="cdn")

    assert result.skipped == {}
    assert list(result.paths) == list(plots.PLOT_NAMES)
    for name, paths in result.paths.items():
        assert [p.name for p in paths] == [f"{name}.html", f"{name}.png"]
        html, png = paths
        assert "plotly" in html.read_text()
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_curves_are_baseline_then_best_complete_trials(tmp_path: Path) -> None:
    curves = plots.best_curves(_filled(tmp_path), top=3)

    assert curves[0].baseline and curves[0].label.startswith("baseline")
    # best three complete values 0.1, 0.2, 0.3; the diverged trial (2.3) and the baseline never count
    assert [c.values[-1] for c in curves[1:]] == [0.1, 0.2, 0.3]
    assert all(c.epochs == [1, 2, 3] for c in curves)


def test_best_curves_follow_a_maximised_objective(tmp_path: Path) -> None:
    study = _study(tmp_path, objective="val_accuracy")
    for value in (0.5, 0.9, 0.7):
        _add(study, value, 1e-3, curve=None)

    curves = plots.best_curves(study, top=2, metric="val_loss")

    assert [c.values[-1] for c in curves] == [0.9, 0.7]


def test_non_finite_points_are_left_out_of_a_curve(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, 0.5, 1e-3, curve=[0.7, math.nan, 0.5])

    (curve,) = plots.best_curves(study)

    assert curve.epochs == [1, 3] and curve.values == [0.7, 0.5]


def test_an_empty_study_skips_every_plot_and_writes_nothing(tmp_path: Path) -> None:
    result = plots.write_all(_study(tmp_path), tmp_path / "out")

    assert result.paths == {}
    assert set(result.skipped) == set(plots.PLOT_NAMES)
    assert not (tmp_path / "out").exists()


def test_the_importance_plot_evaluates_once_with_the_summary_s_evaluator(tmp_path: Path, monkeypatch) -> None:
    """Both files of the importance plot come from one evaluation by the evaluator the summary uses."""
    study = _study(tmp_path)
    for number in range(MIN_IMPORTANCE_TRIALS + 2):
        _add(study, 0.1 + 0.05 * number, 10 ** (-4 + number / 3))
    made, evaluations = [], []
    chosen = importance.importance_evaluator

    def counted(complete: int):  # type: ignore[no-untyped-def]
        evaluator = chosen(complete)
        made.append(type(evaluator).__name__)
        real = evaluator.evaluate

        def evaluate(*args, **kwargs):  # type: ignore[no-untyped-def]
            evaluations.append(1)
            return real(*args, **kwargs)

        evaluator.evaluate = evaluate
        return evaluator

    monkeypatch.setattr(importance, "importance_evaluator", counted)
    html, png = plots.importance(study, tmp_path, plotlyjs="cdn")

    assert html.stat().st_size > 0 and png.stat().st_size > 0
    assert made == ["PedAnovaImportanceEvaluator"] and len(evaluations) == 1


def test_parallel_coordinates_needs_two_trials_to_compare(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, 0.5, 1e-3)

    with pytest.raises(plots.PlotUnavailable, match="at least 2 complete trials, the study has 1"):
        plots.parallel_coordinates(study, tmp_path)
    _add(study, 0.4, 1e-2)
    assert all(path.exists() for path in plots.parallel_coordinates(study, tmp_path, plotlyjs="cdn"))


def test_log_axes_are_labelled_without_mathtext(tmp_path: Path) -> None:
    """Log-scale tick labels read ``1e-03``: matplotlib's mathtext labels took a third of the drawing time."""
    from matplotlib.figure import Figure

    figure = Figure()
    axes = figure.add_subplot()
    axes.plot([1e-5, 1e-1], [1, 2])
    axes.set_xscale("log")
    plots._plain_log_ticks(figure)
    figure.canvas.draw()

    labels = [label.get_text().replace("\N{MINUS SIGN}", "-") for label in axes.get_xticklabels() if label.get_text()]
    assert "1e-03" in labels and not any("$" in label for label in labels)
    assert all("$" not in label.get_text() for label in axes.get_yticklabels())


def test_importance_needs_as_many_complete_trials_as_the_summary(tmp_path: Path) -> None:
    study = _study(tmp_path)
    _add(study, 0.5, 1e-3)

    with pytest.raises(plots.PlotUnavailable, match=f"at least {MIN_IMPORTANCE_TRIALS} complete trials"):
        plots.importance(study, tmp_path)
    assert plots.optimization_history(study, tmp_path, plotlyjs="cdn")[0].exists()
