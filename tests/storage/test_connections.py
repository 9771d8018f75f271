"""Connections to the PostgreSQL server: at most two per process, refused connections waited out.

Real searches against this machine's server: the bound is measured in ``pg_stat_activity`` (each process
names its connections ``adamtune-<pid>``), and a full server is made with a role of this test whose
``CONNECTION LIMIT`` the test fills with its own connections, then frees while the search waits.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import psycopg
import pytest
from optuna.trial import TrialState

from adamtune.core.errors import ConfigError
from adamtune.storage.backends import engine_kwargs_for, open_storage
from adamtune.storage.connections import MAX_CONNECTIONS, PGBOUNCER_ENV, BoundedPool, refusal_reason
from tests.conftest import POSTGRES_ADMIN_URL, _admin_connection, postgres_admin

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
REFUSED_LINE = re.compile(r"database refused a connection \((.+)\); retrying in \d+s, for up to \d+s")


def search_command(storage: str, *, workers: int, n_trials: int) -> list[str]:
    return [
        sys.executable, "-m", "adamtune", "search", "--task", "synthetic", "--epochs", "1",
        "--n-trials", str(n_trials), "--workers", str(workers), "--devices", "cpu",
        "--no-tracking", "--no-confirm", "--storage", storage,
    ]  # fmt: skip


def search_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "ADAMTUNE_HEARTBEAT_SECONDS": "1", "ADAMTUNE_GRACE_SECONDS": "5", "PYTHONUNBUFFERED": "1"}
    env["ADAMTUNE_TRAINER"] = "inline"  # a one-worker search trains in its own process: no trainer process
    for name in ("ADAMTUNE_STORAGE", "MLFLOW_TRACKING_URI", "ADAMTUNE_STUDY", "ADAMTUNE_N_TRIALS", PGBOUNCER_ENV):
        env.pop(name, None)
    return {**env, **extra}


def states(storage: str) -> collections.Counter[TrialState]:
    trials = optuna.load_study(study_name="synthetic", storage=storage).get_trials(deepcopy=False)
    return collections.Counter(trial.state for trial in trials)


class ActivitySampler:
    """Samples ``pg_stat_activity`` for one database every few milliseconds: the most connections seen per
    ``application_name``, and every name seen."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.peak: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with _admin_connection() as admin:
            while not self._stop.wait(0.005):
                rows = admin.execute(
                    "SELECT application_name, count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND backend_type = 'client backend' GROUP BY application_name",
                    (self.database,),
                ).fetchall()
                for name, count in rows:
                    self.peak[name] = max(self.peak[name], count)
                self.samples += 1

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- without a server


@pytest.mark.parametrize(
    "message",
    [
        'connection to server at "127.0.0.1", port 5432 failed: FATAL:  sorry, too many clients already',
        "FATAL:  remaining connection slots are reserved for non-replication superuser connections",
        'FATAL:  too many connections for role "adamtune"',
        'FATAL:  too many connections for database "studies"',
        "FATAL:  no more connections allowed (max_client_conn)",
        "FATAL:  the database system is starting up",
    ],
)
def test_refusals_are_recognised_with_the_servers_words(message: str) -> None:
    reason = refusal_reason(psycopg.OperationalError(message))
    assert reason is not None and reason == message.split("FATAL:")[1].strip()


@pytest.mark.parametrize(
    "message",
    ['FATAL:  password authentication failed for user "x"', 'FATAL:  database "x" does not exist', "timeout expired"],
)
def test_other_connection_errors_are_not_refusals(message: str) -> None:
    assert refusal_reason(psycopg.OperationalError(message)) is None


def test_server_engines_are_bounded_and_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PGBOUNCER_ENV, raising=False)
    kwargs = engine_kwargs_for("postgresql+psycopg://u@db/studies")
    assert kwargs["poolclass"] is BoundedPool and kwargs["pool_size"] + kwargs["max_overflow"] == MAX_CONNECTIONS == 2
    assert kwargs["connect_args"]["application_name"] == f"adamtune-{os.getpid()}"
    assert "prepare_threshold" not in kwargs["connect_args"]  # psycopg's default: prepared after 5 executions
    named = engine_kwargs_for("postgresql+psycopg://u@db/studies?application_name=mine")
    assert "application_name" not in named["connect_args"]  # the URL's own name is kept
    monkeypatch.setenv(PGBOUNCER_ENV, "1")
    assert engine_kwargs_for("postgresql+psycopg://u@db/studies")["connect_args"]["prepare_threshold"] is None
    assert "prepare_threshold" not in engine_kwargs_for("postgresql+psycopg2://u@db/studies")["connect_args"]
    monkeypatch.setenv(PGBOUNCER_ENV, "transaction")
    with pytest.raises(ConfigError, match=PGBOUNCER_ENV):
        engine_kwargs_for("postgresql+psycopg://u@db/studies")


# --------------------------------------------------------------------------- on the server


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.postgres
def test_a_third_user_waits_for_one_of_the_two_connections(postgres_url: str) -> None:
    """Two connections checked out of a study storage: a third checkout waits until one comes back, and the
    server never sees more than two connections of this process."""
    engine = open_storage(postgres_url).engine
    first, second = engine.connect(), engine.connect()
    got = threading.Event()

    def third() -> None:
        with engine.connect():
            got.set()

    thread = threading.Thread(target=third)
    thread.start()
    assert not got.wait(0.5)
    with _admin_connection() as admin:
        named = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database_of(postgres_url), f"adamtune-{os.getpid()}"),
        ).fetchone()[0]
    assert named == 2
    first.close()
    assert got.wait(10)
    thread.join()
    second.close()
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_each_process_of_a_search_holds_at_most_two_connections(postgres_url: str, workdir: Path) -> None:
    """A 2-worker search (the search process and 2 worker processes, 1 s heartbeats): pg_stat_activity,
    sampled every few milliseconds, never shows more than 2 connections of one process, and every
    connection to the study database is named after its process."""
    with ActivitySampler(database_of(postgres_url)) as sampler:
        done = subprocess.run(
            search_command(postgres_url, workers=2, n_trials=8),
            cwd=workdir, env=search_env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert sampler.samples > 50
    assert all(re.fullmatch(r"adamtune-\d+", name) for name in sampler.peak), sampler.peak
    assert len(sampler.peak) >= 3, sampler.peak  # the search process and its two workers
    assert max(sampler.peak.values()) <= MAX_CONNECTIONS, sampler.peak
    counted = states(postgres_url)
    assert sum(counted[state] for state in FINISHED) == 8 and sum(counted.values()) == 8, counted


@pytest.fixture
def limited_role_url() -> Iterator[tuple[str, str]]:
    """A database owned by a role of this test with ``CONNECTION LIMIT 3``: its SQLAlchemy URL and the role."""
    role = f"adamtune_limited_{uuid.uuid4().hex[:10]}"
    database = f"adamtune_test_{uuid.uuid4().hex[:12]}"
    admin = postgres_admin()
    with admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 3')
        try:
            admin.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
            host = POSTGRES_ADMIN_URL.split("@", 1)[1].rsplit("/", 1)[0]
            yield f"postgresql+psycopg://{role}@{host}/{database}", role
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def connections_of(database: str, pid: int) -> int:
    """How many connections process ``pid`` holds to ``database`` (by their name, ``adamtune-<pid>``)."""
    with _admin_connection() as admin:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (database, f"adamtune-{pid}"),
        ).fetchone()[0]


@pytest.mark.postgres
@pytest.mark.slow
def test_refused_connections_are_waited_out(limited_role_url: tuple[str, str], workdir: Path) -> None:
    """A full server (the 3 slots of the search's role held by this test) refuses connections; the search
    says so in one line and waits, and no trial fails for it:

    1. all 3 slots held: the search's first connection is refused (the line);
    2. one slot freed: it opens one, and waits for its second (Optuna's schema check while opening);
    3. a second slot freed: the trials run;
    4. once trials are done, the test takes a slot back while the search holds one connection: its next
       admission waits for its second connection, between trials, until the slot is freed again.

    The search then finishes all 20 trials, none failed or left running. Later waits of the same minute
    print no line of their own."""
    url, role = limited_role_url
    connect, database = url.replace("+psycopg", ""), database_of(url)
    held = [psycopg.connect(connect, autocommit=True) for _ in range(3)]
    lines: list[str] = []
    process = subprocess.Popen(
        search_command(url, workers=1, n_trials=20),
        cwd=workdir, env=search_env(ADAMTUNE_DB_RETRY_SECONDS="120"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
    reader.start()

    def refusals() -> list[str]:
        return [line for line in list(lines) if REFUSED_LINE.search(line)]

    def wait_until(condition: Callable[[], object], what: str) -> None:
        deadline = time.monotonic() + 120
        while not condition():
            assert process.poll() is None, f"the search ended before {what}:\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"no {what}:\n{''.join(lines)}"
            time.sleep(0.05)

    def waits_with_one_connection(seconds: float) -> None:
        """For ``seconds``: the search runs on, holding its one connection (the role has no slot left)."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert process.poll() is None, "".join(lines)
            assert connections_of(database, process.pid) <= 1
            time.sleep(0.1)

    def take_a_slot() -> bool:
        try:
            held.append(psycopg.connect(connect, autocommit=True))
        except psycopg.OperationalError:  # the search holds two connections at this moment
            return False
        return True

    try:
        wait_until(refusals, "refusal")
        time.sleep(2)  # a retry or two
        held.pop().close()
        wait_until(lambda: connections_of(database, process.pid) == 1, "first connection")
        waits_with_one_connection(2)
        assert not any("trial 0" in line for line in list(lines)), "".join(lines)
        held.pop().close()
        wait_until(lambda: any(re.search(r"\btrial 2:", line) for line in list(lines)), "third trial")
        wait_until(take_a_slot, "free slot")
        waits_with_one_connection(3)
        finished = sum(states(url.replace(role, "postgres"))[state] for state in FINISHED)
        assert finished < 20, "".join(lines)
        held.pop().close()
        process.wait(timeout=300)
        reader.join(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        for connection in held:
            connection.close()
    stderr = "".join(lines)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(refusals()) <= 3, stderr  # one a minute at most
    assert all(f'too many connections for role "{role}"' in line for line in refusals()), stderr
    counted = states(url.replace(role, "postgres"))
    assert sum(counted[state] for state in FINISHED) == 20, counted
    assert counted[TrialState.FAIL] == 0 and counted[TrialState.RUNNING] == 0, counted
