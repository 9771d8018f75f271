"""Many workers through PgBouncer in transaction mode: a real ``pgbouncer`` process in front of this
machine's PostgreSQL server, 16 worker processes on one study.

The fixture starts PgBouncer with its own ini (transaction pooling, 20 server connections per database,
up to 200 clients) on a free port; it skips when the ``pgbouncer`` binary is missing (``apt-get install
pgbouncer``), unless ``ADAMTUNE_REQUIRE_POSTGRES=1`` (CI), which turns the skip into a failure.
"""

from __future__ import annotations

import collections
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from optuna.trial import TrialState

from adamtune.storage.connections import MAX_CONNECTIONS, PGBOUNCER_ENV
from tests.conftest import _admin_connection
from tests.storage.test_connections import FINISHED, search_command, search_env, states

pytestmark = pytest.mark.postgres

POOL_SIZE = 20  # PgBouncer's server connections per database and user


def pgbouncer_binary() -> str | None:
    """The ``pgbouncer`` program (Debian installs it in /usr/sbin, often not on a user's PATH)."""
    found = shutil.which("pgbouncer")
    if found is None and os.access("/usr/sbin/pgbouncer", os.X_OK):
        found = "/usr/sbin/pgbouncer"
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Bouncer:
    url: str  # the test database, through PgBouncer (SQLAlchemy URL)
    admin: str  # PgBouncer's admin console (psycopg conninfo)
    log: Path


def _run_as() -> list[str]:
    """PgBouncer refuses to run as root: as root, start it as the server's user (or nobody)."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["-u", user]
    return []


@pytest.fixture
def pgbouncer(postgres_url: str) -> Iterator[Bouncer]:
    """A PgBouncer in transaction mode in front of the test database, stopped afterwards."""
    binary = pgbouncer_binary()
    if binary is None:
        if os.environ.get("ADAMTUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail("pgbouncer is required (ADAMTUNE_REQUIRE_POSTGRES=1) but missing: apt-get install pgbouncer")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    folder = Path(tempfile.mkdtemp(prefix="adamtune-pgbouncer-"))
    folder.chmod(0o755)  # read by the user PgBouncer runs as
    port = free_port()
    (folder / "userlist.txt").write_text('"postgres" ""\n')
    ini = folder / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        "* = host=127.0.0.1 port=5432\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {folder / 'userlist.txt'}\nadmin_users = postgres\n"
        f"pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = {POOL_SIZE}\n"
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    log = folder / "pgbouncer.log"
    with open(log, "w") as output:
        process = subprocess.Popen([binary, *_run_as(), str(ini)], stdout=output, stderr=subprocess.STDOUT)
    admin = f"postgresql://postgres@127.0.0.1:{port}/pgbouncer"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                psycopg.connect(admin, autocommit=True, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"pgbouncer did not start:\n{log.read_text()}")
                time.sleep(0.1)
        yield Bouncer(postgres_url.replace("127.0.0.1:5432", f"127.0.0.1:{port}"), admin, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(folder, ignore_errors=True)


class ConnectionCounts:
    """Samples, every 20 ms: PgBouncer's clients per ``application_name`` (``SHOW CLIENTS``) and the server
    connections to the test database (``pg_stat_activity``)."""

    def __init__(self, bouncer: Bouncer, database: str) -> None:
        self.bouncer, self.database = bouncer, database
        self.client_peak: collections.Counter[str] = collections.Counter()
        self.clients_peak = 0
        self.server_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        console = psycopg.connect(self.bouncer.admin, autocommit=True, cursor_factory=psycopg.ClientCursor)
        with console, _admin_connection() as server:
            while not self._stop.wait(0.02):
                cursor = console.cursor()
                cursor.execute("SHOW CLIENTS")
                names = [column.name for column in cursor.description or []]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                ours = [row for row in rows if row["database"] == self.database]
                self.clients_peak = max(self.clients_peak, len(ours))
                for name, count in collections.Counter(row.get("application_name", "") for row in ours).items():
                    self.client_peak[name] = max(self.client_peak[name], count)
                count = server.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (self.database,),
                ).fetchone()[0]
                self.server_peak = max(self.server_peak, count)

    def __enter__(self) -> ConnectionCounts:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.slow
def test_sixteen_workers_through_pgbouncer_finish_exactly(pgbouncer: Bouncer, postgres_url: str, workdir: Path) -> None:
    """16 worker processes on one study through PgBouncer in transaction mode (``ADAMTUNE_PGBOUNCER=1``):
    exactly 32 finished trials, none failed or left running; each process held at most 2 client connections
    to PgBouncer, and the server saw at most PgBouncer's pool of connections.

    What transaction pooling could break, and why it does not here: psycopg's prepared statements (off with
    the setting; without it this search fails with ``prepared statement "_pg3_1" does not exist``), the
    admission lock (``pg_advisory_xact_lock``, held by the transaction), the study row's ``FOR UPDATE``
    (inside the transaction that creates the trial)."""
    database = postgres_url.rsplit("/", 1)[1]
    with ConnectionCounts(pgbouncer, database) as counts:
        done = subprocess.run(
            search_command(pgbouncer.url, workers=16, n_trials=32),
            cwd=workdir, env={**search_env(), PGBOUNCER_ENV: "1"}, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
        # the default heartbeat (10 s beat, 30 s grace): 17 processes on a small CI machine must not go stale
    assert done.returncode == 0, done.stderr + pgbouncer.log.read_text()
    assert "Traceback" not in done.stderr, done.stderr
    counted = states(postgres_url)  # read directly from the server
    assert sum(counted[state] for state in FINISHED) == 32, counted
    assert counted[TrialState.FAIL] == 0 and counted[TrialState.RUNNING] == 0, counted
    assert sum(counted.values()) == 32, counted
    assert counts.clients_peak > 16, (counts.clients_peak, counts.client_peak)  # the sampler saw the workers
    assert len(counts.client_peak) >= 17, counts.client_peak  # the search process and its 16 workers, by name
    assert max(counts.client_peak.values()) <= MAX_CONNECTIONS, counts.client_peak
    assert counts.server_peak <= POOL_SIZE, counts.server_peak
