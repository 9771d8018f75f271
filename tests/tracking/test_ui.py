"""The MLflow UI address adamtune prints opens the study's runs ("Model training" view), not MLflow 3's
GenAI overview. The browser test drives headless Chromium against a real ``mlflow server`` and is
skipped where Chromium is not installed (``apt-get install -y chromium``); bench/ui_screenshot.py
takes the screenshots.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from adamtune.cli.main import cli
from adamtune.core.errors import TrackingError
from adamtune.tracking import tracker as tracking
from adamtune.tracking import ui as tracking_ui
from tests.servers import MlflowServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--virtual-time-budget=15000",
]


def test_ui_plan_opens_the_study_runs_view(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = tracking.Tracker("digits", uri)
    experiment_id = tracker.experiment_id
    tracker.close()
    runs = f"http://127.0.0.1:5001/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    plan = tracking_ui.ui_plan(uri, "127.0.0.1", 5001)  # the store's only study
    assert f"at {runs} (study digits)" in plan.message
    assert tracking_ui.ui_plan(uri, "127.0.0.1", 5001, study="digits").message == plan.message
    with pytest.raises(TrackingError, match=r"no MLflow experiment for study 'cifar10' .*\(studies there: digits\)"):
        tracking_ui.ui_plan(uri, study="cifar10")
    served = tracking_ui.ui_plan("http://127.0.0.1:5999", study=None)
    assert served.argv is None and "http://127.0.0.1:5999" in served.message  # unreachable: the plain address


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: apt-get install -y chromium")
def test_the_printed_address_shows_the_trials_in_chromium(workdir: Path) -> None:
    server = MlflowServer(workdir)
    server.start()
    try:
        server.wait()
        args = ["search", "--task", "synthetic", "--n-trials", "2", "--epochs", "1", "--no-confirm"]
        result = CliRunner().invoke(cli, [*args, "--tracking-uri", server.url])
        assert result.exit_code == 0, result.output
        address = re.search(r"learning curves: (\S+)", result.stderr).group(1)  # type: ignore[union-attr]
        assert re.fullmatch(rf"{server.url}/#/experiments/\d+/runs\?workflowType=machine_learning", address)

        def page_text(url: str) -> str:
            dom = subprocess.run([CHROMIUM, *FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=180)
            return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom.stdout))

        shown = page_text(address)
        assert "3 matching runs" in shown and "synthetic" in shown, shown[-2000:]  # the parent run and its 2 trials
        assert "Detect Issues" not in shown
        plain = page_text(address.split("/runs?")[0])  # what MLflow opens without adamtune's view
        assert "Detect Issues" in plain and "matching runs" not in plain
    finally:
        server.stop()
