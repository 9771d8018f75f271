"""Screenshot what the MLflow UI shows at the address adamtune prints, against a real ``mlflow server``.

MLflow 3.x opens an experiment on its GenAI overview (traces, "Detect issues"), where no trial shows;
adamtune's address (``…/#/experiments/<id>/runs?workflowType=machine_learning``) opens the runs of the
"Model training" view. This script shows both, side by side, with headless Chromium:

    apt-get install -y chromium
    python bench/ui_screenshot.py --out /tmp/ui        # writes plain.png and adamtune.png, prints a verdict

It starts ``mlflow server`` on a fresh SQLite store on 127.0.0.1, runs a 2-trial ``synthetic`` search
logging to it, takes both screenshots, and reports whether each page's DOM shows the runs list
("matching runs") or the GenAI overview ("Detect Issues"). Nothing outside 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--window-size=1400,900",
    "--virtual-time-budget=15000",  # let the single-page app fetch and render before the capture
]


SERVER_FLAGS = ["--host", "127.0.0.1", "--workers", "1"]


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browse(url: str, *, screenshot: Path | None = None) -> str:
    """The page's rendered DOM (and a screenshot when ``screenshot`` is given)."""
    binary = chromium()
    if binary is None:
        raise SystemExit("chromium not found: apt-get install -y chromium")
    if screenshot is not None:
        subprocess.run([binary, *CHROMIUM_FLAGS, f"--screenshot={screenshot}", url], capture_output=True, timeout=180)
    result = subprocess.run([binary, *CHROMIUM_FLAGS, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    return result.stdout


def describe(dom: str) -> str:
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))
    if "matching runs" in text:
        return "the runs list (Model training view)"
    if "Detect Issues" in text:
        return "the GenAI overview (traces; no trial listed)"
    return "neither (did the page load?)"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("ui-screenshots"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="adamtune-ui-"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "NO_PROXY": "127.0.0.1,localhost"}
    store = ["--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts")]
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *store, *SERVER_FLAGS, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
                if opener.open(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("mlflow server did not start") from None
                time.sleep(0.5)
        tiny = ["--task", "synthetic", "--n-trials", "2", "--epochs", "1", "--storage", f"sqlite:///{root}/adamtune.db"]
        search = subprocess.run(
            [sys.executable, "-m", "adamtune", "search", *tiny, "--tracking-uri", url],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
        )
        printed = re.search(r"learning curves: (\S+)", search.stderr)
        if printed is None:
            raise SystemExit(f"search printed no address:\n{search.stderr}")
        address = printed.group(1)
        plain = address.split("/runs?")[0]  # the experiment's address without adamtune's view
        for name, page in (("plain", plain), ("adamtune", address)):
            shot = args.out / f"{name}.png"
            print(f"{name:9} {page}\n          shows {describe(browse(page, screenshot=shot))}; screenshot {shot}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
