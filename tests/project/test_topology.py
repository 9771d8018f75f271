"""The docker-compose deployment's topology, run without containers (issue 7, item 4).

docker-compose.yml runs PostgreSQL (the study database and, in a second database, MLflow's backend store),
an MLflow tracking server with proxied artifacts, a one-shot ``study`` service (``adamtune search``) and
``worker`` services that join its study, the trainers all through docker/entrypoint.py. Here the same
processes run on this machine: its PostgreSQL server with two fresh databases, a real ``mlflow server``,
and ``python docker/entrypoint.py search ...`` plus two ``python docker/entrypoint.py worker ...``, given
the storage and tracking URIs in the environment as compose gives them.

The commands are read from docker-compose.yml, so the test follows the file; what differs, and why:

* the synthetic task and 12 trials of 2 epochs (through the same ``${ADAMTUNE_TASK}``-style variables
  that .env sets), and ``--device(s)=cpu`` instead of ``auto``: the CPU is what every test machine has
  (the entrypoint's GPU claim is tested on its own in test_compose.py);
* the MLflow server gets its backend store with ``--backend-store-uri`` rather than in its environment
  (compose does that only to keep the password off the command line; the test database has none), and
  one web worker instead of four, as in test_mlflow_server.py;
* the entrypoint polls for the study every 0.2 s instead of every 5 s.

Start order: as under compose, the study and both workers start at once; a worker that finds no study
yet waits for it with the entrypoint's own wait, which needs nothing of a container (it polls the
storage read-only). So the wait is exercised too, rather than sidestepped by starting workers late.

Sharing the work out: the ``study`` service creates the study seconds before a worker has imported torch
and joined it, and could finish all 12 trials alone on a fast machine. So that "every process ran
trials" holds every time instead of usually, the test holds the study's admission lock (the PostgreSQL
advisory lock under which every worker starts a trial, ``adamtune.storage.admission.admission_lock``) from before
the start until all three processes are queued on it, then lets go: PostgreSQL grants queued lock
requests in order, so the first three trials go to three different processes. The processes themselves
are not touched: holding the lock only delays their first trial.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState
from sqlalchemy import create_engine

from adamtune.storage.admission import admission_lock
from adamtune.storage.attr_keys import RUN_ID_ATTR, WORKER_ATTR
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.storage.study import spec_from_study
from adamtune.tracking.parent_run import PARENT_RUN_ATTR, PARENT_TAG
from adamtune.tracking.store import experiment_name
from tests.conftest import _admin_connection
from tests.servers import START_SECONDS, MlflowServer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.py"

STUDY = "synthetic"
N_TRIALS = 12
EPOCHS = 2
# What .env would set: the compose commands read them as ${NAME:-default}.
COMPOSE_VARIABLES = {"ADAMTUNE_TASK": "synthetic", "ADAMTUNE_STUDY": STUDY, "ADAMTUNE_N_TRIALS": str(N_TRIALS)}
RUN_SECONDS = 300  # the longest the three processes may take on a busy two-core machine
DEFAULT = re.compile(r"\$\{(\w+):-([^}]*)\}")


def compose_command(service: str, replace: Mapping[str, str | None]) -> list[str]:
    """The ``command:`` of a compose service, ``${NAME:-default}`` resolved with COMPOSE_VARIABLES.

    ``replace`` maps ``--option`` to a new value (or None to drop the option); options not in the
    command are added.
    """
    command = yaml.safe_load(COMPOSE.read_text())["services"][service]["command"]
    args = [DEFAULT.sub(lambda m: COMPOSE_VARIABLES.get(m[1]) or m[2], arg) for arg in command]
    assert not [arg for arg in args if "$" in arg], args  # only ${NAME:-default} is expected there
    for name, value in replace.items():
        args = [arg for arg in args if arg.split("=", 1)[0] != name]
        if value is not None:
            args.append(f"{name}={value}")
    return args


@pytest.fixture
def mlflow_server(mlflow_postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The compose file's ``mlflow`` service: its flags, a PostgreSQL backend store, proxied artifacts."""
    server_args = compose_command("mlflow", {"--host": None, "--port": None, "--artifacts-destination": None})
    assert server_args[0] == "server", server_args
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_postgres_url, server_args[1:])
    server.start()
    try:
        server.wait()
        yield server
    finally:
        server.stop()


class Service:
    """One trainer container's process: ``python docker/entrypoint.py ARGS`` with its output in a file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.name = name
        self.log = cwd / f"{name}.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(ENTRYPOINT), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return f"---- {self.name} (exit {self.process.poll()}) ----\n{self.log.read_text(errors='replace')}"


def outputs(services: list[Service]) -> str:
    return "\n".join(s.output() for s in services)


def queued_on_advisory_locks(admin: Any, database: str) -> int:
    """How many sessions of ``database`` wait for an advisory lock (the admission lock is the only one)."""
    row = admin.execute(
        "SELECT count(DISTINCT l.pid) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s",
        (database,),
    ).fetchone()
    return int(row[0]) if row else 0


def test_study_service_and_two_workers_share_one_study_and_one_mlflow_server(
    postgres_url: str, mlflow_server: MlflowServer, workdir: Path
) -> None:
    """1 study + 2 workers, 12 trials: every process exits 0, each ran trials, and MLflow holds them all."""
    env = {
        **os.environ,
        # The entrypoint execs `adamtune`, as installed next to this Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # compose's x-adamtune-env, pointing at this machine's servers
        "ADAMTUNE_STORAGE": postgres_url,
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "ADAMTUNE_DATA_DIR": str(workdir / "data"),
        "ADAMTUNE_STUDY": STUDY,
        "ADAMTUNE_LOCK_DIR": str(workdir / "locks"),
        "ADAMTUNE_WORKERS_PER_GPU": "1",
        "ADAMTUNE_WAIT_TIMEOUT": str(START_SECONDS),
        "ADAMTUNE_WAIT_POLL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    study_args = compose_command("study", {"--devices": "cpu", "--epochs": str(EPOCHS)})
    worker_args = compose_command("worker", {"--device": "cpu"})
    assert study_args[0] == "search" and worker_args[0] == "worker"

    services: list[Service] = []
    gate_engine = create_engine(postgres_url)
    try:
        # admission_lock needs only the storage's engine; the study and its tables do not exist yet.
        with admission_lock(SimpleNamespace(engine=gate_engine), STUDY), _admin_connection() as admin:
            services.append(Service("study", study_args, env, workdir))
            services += [Service(f"worker{i}", worker_args, env, workdir) for i in (1, 2)]
            deadline = time.monotonic() + START_SECONDS
            while queued_on_advisory_locks(admin, postgres_url.rsplit("/", 1)[1]) < len(services):
                exited = [s for s in services if s.process.poll() is not None]
                if exited or time.monotonic() > deadline:
                    pytest.fail("not all three processes reached their first trial:\n" + outputs(services))
                time.sleep(0.2)
        deadline = time.monotonic() + RUN_SECONDS
        for service in services:
            try:
                service.process.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{service.name} did not finish in {RUN_SECONDS} s:\n" + outputs(services))
    finally:
        for service in services:
            if service.process.poll() is None:
                service.process.kill()
                service.process.wait()
        gate_engine.dispose()

    logs = outputs(services)
    assert [s.process.returncode for s in services] == [0, 0, 0], logs

    study = optuna.load_study(study_name=STUDY, storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    counts = count_trials(trials)
    assert counts.finished == N_TRIALS and counts.running == counts.failed == counts.waiting == 0, counts
    host = socket.gethostname()
    by_process = {f"{host}-w0"} | {f"{host}-p{s.process.pid}" for s in services[1:]}  # exec keeps the pid
    assert {t.user_attrs[WORKER_ATTR] for t in trials} == by_process, logs

    client = MlflowClient(tracking_uri=mlflow_server.url)
    experiment = client.get_experiment_by_name(experiment_name(STUDY))
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [r for r in runs if r.data.tags.get("adamtune.role") == "study"]
    assert parent.info.run_id == study.user_attrs[PARENT_RUN_ATTR]
    assert parent.info.status == "FINISHED"
    assert {r.data.tags.get(PARENT_TAG) for r in runs if r is not parent} == {parent.info.run_id}
    children = {r.info.run_id: r for r in runs if r.data.tags.get("adamtune.role") == "trial"}
    assert sorted(children) == sorted(t.user_attrs[RUN_ID_ATTR] for t in trials)  # one run per trial, no other
    # The confirmation stage ran after the trials, shared by the processes: one FINISHED run per stored run.
    confirm_runs = [r for r in runs if r.data.tags.get("adamtune.role") == "confirmation"]
    stored = optuna.load_study(study_name=f"{STUDY}.confirm", storage=postgres_url).trials
    finished = [t for t in stored if t.state == TrialState.COMPLETE]
    assert finished and len(confirm_runs) == len(finished) and len(runs) == 1 + len(trials) + len(finished)
    assert all(r.info.status == "FINISHED" for r in confirm_runs)
    keys = {(t.user_attrs["adamtune.confirm.arm"], t.user_attrs["adamtune.seed"]) for t in finished}
    assert len(keys) == len(finished)  # no run twice

    objective = spec_from_study(study).objective
    for trial in trials:
        run = children[trial.user_attrs[RUN_ID_ATTR]]
        assert run.data.tags["adamtune.trial_number"] == str(trial.number)
        assert run.data.tags["adamtune.worker"] == trial.user_attrs[WORKER_ATTR]
        assert run.data.tags["adamtune.state"] == trial_state(trial)
        assert run.info.status == "FINISHED"
        history = sorted(client.get_metric_history(run.info.run_id, objective), key=lambda m: m.step)
        assert history and [m.step for m in history] == sorted(trial.intermediate_values), trial.number
        assert [m.value for m in history] == pytest.approx([trial.intermediate_values[m.step] for m in history])

    # The search's artifacts went through the server into its --artifacts-destination.
    assert "recommendation.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert list((mlflow_server.root / "artifacts").rglob("recommendation.json"))
