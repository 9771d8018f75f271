"""A real ``mlflow server`` as a subprocess, for the tests that talk to MLflow over HTTP.

Used by test_mlflow_server.py (SQLite backend store) and test_topology.py (PostgreSQL backend store,
the compose file's flags).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

START_SECONDS = 180  # the longest a start may take on a busy two-core machine


class MlflowServer:
    """A real ``mlflow server`` subprocess that can be stopped (killed) and started again on the same port.

    It listens on a free port of 127.0.0.1 with one web worker (enough for tests, and it starts faster on
    two cores than MLflow's default of four), proxies artifacts to ``root/artifacts`` and logs to
    ``root/server.log``. The backend store is ``backend_store_uri`` (default: ``root/mlflow.db``, SQLite);
    ``options`` are more ``mlflow server`` flags.
    """

    def __init__(self, root: Path, backend_store_uri: str | None = None, options: Sequence[str] = ()) -> None:
        self.root = root
        self.backend_store_uri = backend_store_uri or f"sqlite:///{root}/mlflow.db"
        self.options = list(options)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the server without waiting for it (see :meth:`wait`)."""
        command = [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
            *self.options,
        ]
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - kept open for the process's life
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200
        except OSError:
            return False

    def wait(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while not self.healthy():
            assert self.process is not None and self.process.poll() is None, (self.root / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)

    def ensure_up(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.start()
        self.wait()

    def stop(self) -> None:
        """Kill the server and its workers (the whole process group), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
