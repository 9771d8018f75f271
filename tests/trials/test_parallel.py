"""Parallel and distributed search end to end: worker processes sharing one study database.

Everything is real: ``adamtune`` started as subprocesses, spawned worker processes, a SQLite file, this
machine's PostgreSQL server, a local MLflow store (SQLite). Heartbeats are shortened through the
environment (1 s beat, 3 s grace) so that a killed worker's trial goes stale quickly. The tests assert
outcomes (counts, states, run statuses), never timings.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from adamtune.core.config import build_spec
from adamtune.core.space import BASELINE
from adamtune.storage.attr_keys import BASELINE_ATTR, PARAMS_ATTR, RUN_ID_ATTR, WORKER_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume

pytestmark = pytest.mark.slow

FAST_HEARTBEAT = {"ADAMTUNE_HEARTBEAT_SECONDS": "1", "ADAMTUNE_GRACE_SECONDS": "3"}
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def start(*args: str, cwd: Path, preexec_fn: Callable[[], object] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **FAST_HEARTBEAT, "PYTHONUNBUFFERED": "1"}
    for name in ("ADAMTUNE_STORAGE", "MLFLOW_TRACKING_URI", "ADAMTUNE_STUDY", "ADAMTUNE_N_TRIALS"):
        env.pop(name, None)
    return subprocess.Popen(
        [sys.executable, "-m", "adamtune", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"adamtune did not finish in {timeout}s; stderr:\n{stderr}")
    return process.returncode, stderr


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (KeyError, optuna.exceptions.OptunaError, Exception):  # the study may not exist yet
            value = None
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def trials(storage: str, name: str = "synthetic") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def create_study(storage: str, n_trials: int, epochs: int) -> None:
    spec = build_spec("synthetic", None, None, {"n_trials": n_trials, "epochs": epochs, "pruner": "none"})
    create_or_resume(spec.with_task_defaults(5, 100), open_storage(storage))


class ConnectionKiller:
    """Terminates every PostgreSQL connection to one database every ``every`` seconds (a flaky network)."""

    def __init__(self, url: str, every: float = 2.0) -> None:
        from tests.conftest import _admin_connection

        self.database = url.rsplit("/", 1)[1]
        self.admin = _admin_connection()
        self.every = every
        self.killed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            rows = self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchall()
            self.killed += len(rows)

    def __enter__(self) -> ConnectionKiller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.admin.close()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_four_workers_finish_exactly_the_target(backend: str, workdir: Path, request: pytest.FixtureRequest) -> None:
    """4 worker processes, 40 trials: exactly 40 finished, none left RUNNING, no lock errors.

    On PostgreSQL the workers' connections are also terminated every 2 s while they run: the database
    "going away" must cost retries, never the count.
    """
    storage = "sqlite:///adamtune.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    # 20 epochs: the search runs long enough (~5 s of trials) for the connection killer to act on it; with 2 it
    # was often over (or its running trials missed by the poll) before the first kill.
    args = ("search", "--task", "synthetic", "--n-trials", "40", "--epochs", "20", "--workers", "4")
    process = start(*args, "--devices", "cpu", "--no-tracking", "--storage", storage, cwd=workdir)
    if backend == "postgres":
        wait_for(  # a search that ended early (or failed) is reported by the assertions below, with its stderr
            lambda: process.poll() is not None or any(t.state == TrialState.RUNNING for t in trials(storage)),
            "a running trial",
        )
        with ConnectionKiller(storage) as killer:
            wait_for(lambda: process.poll() is not None or killer.killed >= 3, "three killed connections", 200)
    code, stderr = finish(process)

    assert code == 0, stderr
    assert "database is locked" not in stderr
    done = trials(storage)
    states = Counter(t.state for t in done)
    assert sum(states[s] for s in FINISHED) == 40, states
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0, states
    if backend == "sqlite":
        assert states[TrialState.FAIL] == 0, stderr
    workers = {t.user_attrs.get(WORKER_ATTR) for t in done if t.state in FINISHED}
    assert len(workers) >= 2 and all(re.fullmatch(r".+-w[0-3]", str(w)) for w in workers), workers
    assert re.search(r"^\[w[0-3] cpu\] trial \d+", stderr, re.MULTILINE), stderr
    assert "40/40 finished trials" in stderr


def test_a_killed_worker_s_trial_is_failed_retried_and_its_run_closed(workdir: Path) -> None:
    """SIGKILL a worker in the middle of the baseline trial; a second worker retries it and finishes."""
    # Absolute URIs: MLflow caches its store per URI in this process, so a relative one would be reused
    # across tests (and their directories).
    storage, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    # 60 epochs (~1.5 s a trial here): a 6-epoch trial lasts ~0.15 s, and under load the poll below could miss
    # every trial's window between its run id being stored and its end.
    create_study(storage, n_trials=4, epochs=60)
    common = ("--study", "synthetic", "--storage", storage, "--tracking-uri", tracking, "--device", "cpu")

    def victims_running_trials() -> list:  # type: ignore[type-arg]
        return [
            t
            for t in trials(storage)
            if t.state == TrialState.RUNNING
            and t.user_attrs.get(WORKER_ATTR) == "victim"
            and RUN_ID_ATTR in t.user_attrs
        ]

    # The trial seen running may finish before the kill lands, so the killed trial is read back after the
    # kill; in the rare case the kill fell between two trials, the victim is started again.
    stuck: list = []  # type: ignore[type-arg]
    for _ in range(3):
        victim = start("worker", *common, "--name", "victim", cwd=workdir)
        wait_for(victims_running_trials, "the victim's running trial with an MLflow run", 180)
        victim.kill()
        victim.communicate()
        stuck = victims_running_trials()
        if stuck:
            break
    assert len(stuck) == 1, "the victim was never killed in the middle of a trial"
    killed = stuck[0]

    code, stderr = finish(start("worker", *common, "--name", "survivor", cwd=workdir))

    assert code == 0, stderr
    done = {t.number: t for t in trials(storage)}
    assert done[killed.number].state == TrialState.FAIL
    retries = [t for t in done.values() if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, stderr
    assert retries[0].params == killed.params
    assert retries[0].user_attrs.get(BASELINE_ATTR) is killed.user_attrs.get(BASELINE_ATTR)
    if killed.user_attrs.get(BASELINE_ATTR):
        assert retries[0].user_attrs[PARAMS_ATTR] == BASELINE.as_dict()
    states = Counter(t.state for t in done.values())
    assert sum(states[s] for s in FINISHED) == 4 and states[TrialState.RUNNING] == 0, states
    assert "was stale" in stderr

    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=tracking).get_run(killed.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "FAILED"
    assert run.data.tags["adamtune.state"] == "failed"
    assert run.data.tags["adamtune.stale"] == "true"


def test_ctrl_c_stops_all_workers_and_leaves_nothing_running(workdir: Path) -> None:
    """Ctrl-C in the parent: SIGTERM reaches each worker, whose running trial ends FAIL and MLflow run FAILED."""
    # Absolute URIs: MLflow caches its store per URI in this process, so a relative one would be reused
    # across tests (and their directories).
    storage, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    args = ("search", "--task", "synthetic", "--n-trials", "30", "--epochs", "30", "--pruner", "none")
    process = start(*args, "--workers", "2", "--devices", "cpu", "--tracking-uri", tracking, cwd=workdir)
    wait_for(
        lambda: [t for t in trials(storage) if t.state == TrialState.RUNNING and RUN_ID_ATTR in t.user_attrs],
        "a running trial with an MLflow run",
        180,
    )
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process, timeout=120)

    assert code == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("Error: interrupted")
    done = trials(storage)
    states = Counter(t.state for t in done)
    assert states[TrialState.RUNNING] == 0 and states[TrialState.FAIL] >= 1, states
    # Each interrupted trial is queued to run again with the same settings (the next search starts with them).
    retried = {t.system_attrs.get("failed_trial"): t for t in done if t.state == TrialState.WAITING}
    for trial in done:
        if trial.state == TrialState.FAIL:
            assert retried[trial.number].params == trial.params

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking)
    for trial in done:
        if RUN_ID_ATTR not in trial.user_attrs:
            continue
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        assert run.info.status != "RUNNING", (trial.number, trial.state)
        if trial.state == TrialState.FAIL:
            assert run.info.status == "FAILED" and run.data.tags["adamtune.state"] == "failed"
