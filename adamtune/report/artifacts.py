"""The study's artifacts for its MLflow parent run: the plots and ``recommendation.json``.

:class:`ReportArtifacts` is what a search sets on its tracker (``tracker.artifacts``); the tracking layer
uploads what it makes (``adamtune.tracking.parent_run``) and never imports the reports itself.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adamtune.tracking.parent_run import yield_cpu

if TYPE_CHECKING:
    import optuna


class ReportArtifacts:
    """The plots (:func:`draw_plots`) and the summary (``summarize(study).as_dict()``) of a study."""

    def draw_plots(self, study: optuna.Study, out: Path) -> None:
        draw_plots(study, out)

    def recommendation(self, study: optuna.Study) -> dict[str, Any]:
        from adamtune.report.summary import summarize

        return summarize(study).as_dict()


def preload_plots() -> threading.Thread:
    """Import the plotting libraries on a background thread (of a command that mostly waits for its trainer
    process); :class:`PlotDrawing` then pays only for drawing."""

    def load() -> None:
        yield_cpu()
        import matplotlib

        from adamtune.report import plots

        matplotlib.use("Agg")
        with contextlib.suppress(Exception):  # an import that fails now fails again, and is reported, when drawing
            plots.preload()

    thread = threading.Thread(target=load, name="adamtune-plot-imports", daemon=True)
    thread.start()
    return thread


def draw_plots(study: optuna.Study, out: Path) -> None:
    """The study's plots in ``out/plots`` (``plots.write_all``), with ``skipped.txt`` naming those left out."""
    import matplotlib

    from adamtune.report import plots

    matplotlib.use("Agg")  # never a window, whichever thread draws
    result = plots.write_all(study, out / "plots")
    if result.skipped:
        lines = "\n".join(f"{name}: {reason}" for name, reason in result.skipped.items())
        (out / "plots").mkdir(exist_ok=True)
        (out / "plots" / "skipped.txt").write_text(lines + "\n")
