"""Many workers on one PostgreSQL study: trials per minute, database time per trial, connections, errors.

Usage::

    python bench/load.py                          # N = 8, 16, 32, 64 workers; then N = 8, 16 with MLflow
    python bench/load.py --workers 8,16 --tracking-workers 0 --trials-per-worker 4
    python bench/load.py --workers 0 --tracking-workers 0 --growth 2000   # growth only: 16 workers, 2,000 trials

For each N it creates a fresh PostgreSQL database and one study, then starts N ``adamtune worker``
processes on it (the real command, run as ``python bench/load.py --as-worker ...``, which only adds a clock
around the study storage's methods) with a user loop whose trials sleep through 5 epochs of 0.2 s: about a
second each, and no CPU, so the database, not training, is the load. Each worker runs until the study holds
its trials (``--trials-per-worker`` x N). While they run, ``pg_stat_activity`` is sampled every 0.2 s.

It reports per N: trials per minute (finished trials over the span from the first trial's start to the last
one's end, read from the study), database time per trial (the trial loop's time inside the storage's
methods from one finished trial to the next in the same worker, each worker's first trial left out as it
also pays for the worker's start; median and p95 over those trials), the peak
number of connections to the study's database, the error lines on the workers' stderr and their exit codes,
and the exact count (finished trials against the target; FAIL and RUNNING trials left). The second table
repeats the smaller N with every trial tracked to a real ``mlflow server``.

``--growth T`` runs one study of T trials with 16 workers and compares the database time per trial of its
last 20 finished trials with that of trials 11-30 (goal: at most 2x).

Before each N it checks the memory left against the previous run's peak memory per worker (its unique
pages: USS, so the shared libraries count once), and stops (saying so) where N more would not fit.
"""

from __future__ import annotations

import argparse
import atexit
import inspect
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 5
SECONDS_PER_EPOCH = 0.2
TASK_MODULE = f'''"""A user loop whose trials last about a second and use no CPU: the load is the study database."""
import math
import time

import adamtune


def fit(trial):
    quality = abs(math.log10(trial.params.lr) + 2.5) + 0.1 * (trial.seed % 7) / 7
    trial.report_initial(loss=3.0)
    for epoch in trial.epochs():
        time.sleep({SECONDS_PER_EPOCH})
        trial.report(loss=0.2 + quality + 2.0 / epoch)


task = adamtune.LoopTask(name="load", fit=fit, default_epochs={EPOCHS})
'''
FINISHED = ("COMPLETE", "PRUNED", "FAIL")


# --- inside a worker process ------------------------------------------------------------------------------


def run_as_worker(argv: list[str]) -> None:
    """``adamtune worker ARGV``, with the trial loop's time in the study storage's methods written down."""
    from adamtune.cli.main import cli
    from adamtune.storage.rdb import StudyStorage

    timings: list[tuple[float, float]] = []  # (wall clock at the trial's end, database seconds of its cycle)
    spent, depth, owner = [0.0], [0], threading.main_thread().ident

    def clocked(name: str, method: Any) -> Any:
        def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != owner or depth[0]:  # the heartbeat thread; a nested call
                return method(self, *args, **kwargs)
            depth[0] += 1
            started = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                spent[0] += time.perf_counter() - started
                state = args[1] if len(args) > 1 else kwargs.get("state")
                if name == "set_trial_state_values" and getattr(state, "name", "") in FINISHED:
                    timings.append((time.time(), spent[0]))
                    spent[0] = 0.0

        return timed

    for name in dir(StudyStorage):
        method = inspect.getattr_static(StudyStorage, name)
        if not name.startswith("__") and isinstance(method, types.FunctionType):  # plain methods only
            setattr(StudyStorage, name, clocked(name, method))

    out = Path(os.environ["ADAMTUNE_LOAD_TIMINGS"])
    atexit.register(lambda: out.write_text(json.dumps(timings)))
    cli.main(args=["worker", *argv], prog_name="adamtune")


# --- the bench ----------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One N: what the study and the workers ended with."""

    workers: int
    target: int
    tracking: bool
    finished: int = 0
    failed: int = 0
    running: int = 0
    span_s: float = 0.0
    db_ms: list[float] = field(default_factory=list)  # per trial, in order of their end
    peak_connections: int = 0
    error_lines: list[str] = field(default_factory=list)
    exit_codes: list[int] = field(default_factory=list)
    peak_uss_mb: float = 0.0

    @property
    def per_minute(self) -> float:
        return 60 * self.finished / self.span_s if self.span_s else 0.0

    def row(self) -> str:
        db = sorted(self.db_ms)
        p95 = db[min(len(db) - 1, int(0.95 * len(db)))] if db else float("nan")
        exact = "yes" if self.finished == self.target and not self.failed and not self.running else "NO"
        bad_exits = sum(1 for code in self.exit_codes if code != 0)
        return (
            f"| {self.workers} | {self.per_minute:.0f} | {statistics.median(db) if db else float('nan'):.1f} "
            f"| {p95:.1f} | {self.peak_connections} | {len(self.error_lines)} lines, {bad_exits} exits != 0 "
            f"| {self.finished}/{self.target} finished, {self.failed} failed, {self.running} running: {exact} "
            f"| {self.peak_uss_mb / max(self.workers, 1):.0f} |"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sample_connections(admin: Any, database: str, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        count = admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()[0]
        peak[0] = max(peak[0], count)
        stop.wait(0.2)


def sample_memory(pids: list[int], stop: threading.Event, peak: list[float]) -> None:
    import psutil

    while not stop.is_set():
        total = 0.0
        for pid in pids:
            try:
                process = psutil.Process(pid)
                for member in (process, *process.children(True)):
                    total += member.memory_full_info().uss  # its own pages: shared libraries counted once
            except psutil.Error:
                pass
        peak[0] = max(peak[0], total / 2**20)
        stop.wait(1.0)


def create_study(url: str, name: str, trials: int, workdir: Path) -> None:
    """The study, as ``adamtune search`` creates it (no confirmation stage: the trials are the load)."""
    sys.path.insert(0, str(workdir))
    from adamtune.core.config import build_spec
    from adamtune.storage.backends import open_storage
    from adamtune.storage.study import create_or_resume
    from adamtune.tasks import resolve_task

    spec = build_spec("loadtask:task", None, name, {"n_trials": trials, "confirm": False})
    task = resolve_task(spec.task)
    spec = spec.with_task_defaults(task.default_epochs, task.default_batch_size)
    create_or_resume(spec, open_storage(url), seed=0)


def read_study(url: str, name: str, run: Run) -> None:
    import optuna

    from adamtune.storage.backends import open_storage

    trials = optuna.load_study(study_name=name, storage=open_storage(url, create=False)).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    run.finished = len(done)
    run.failed = sum(1 for t in trials if t.state.name == "FAIL")
    run.running = sum(1 for t in trials if t.state.name == "RUNNING")
    if done:
        first = min(t.datetime_start for t in done)
        last = max(t.datetime_complete for t in done)
        run.span_s = (last - first).total_seconds()


def run_load(workers: int, per_worker: int, workdir: Path, tracking_uri: str | None, total: int = 0) -> Run:
    import psycopg

    target = total or workers * per_worker
    run = Run(workers, target, tracking_uri is not None)
    database = f"adamtune_load_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    admin.execute(f'CREATE DATABASE "{database}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    name = f"load-{workers}"
    try:
        create_study(url, name, target, workdir)
        env = {**os.environ, "ADAMTUNE_STORAGE": url, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(workdir)}
        tracking = ["--tracking", "--tracking-uri", tracking_uri] if tracking_uri else ["--no-tracking"]
        processes = []
        for index in range(workers):
            env["ADAMTUNE_LOAD_TIMINGS"] = str(workdir / f"timings-{workers}-{index}.json")
            command = [sys.executable, __file__, "--as-worker", "--study", name, "--device", "cpu", *tracking]
            command += ["--name", f"w{index}"]
            stderr = (workdir / f"stderr-{workers}-{index}.txt").open("w")
            processes.append((subprocess.Popen(command, cwd=workdir, env=dict(env), stderr=stderr), stderr))
        stop, peak, memory = threading.Event(), [0], [0.0]
        monitor = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
        threads = [
            threading.Thread(target=sample_connections, args=(monitor, database, stop, peak), daemon=True),
            threading.Thread(target=sample_memory, args=([p.pid for p, _ in processes], stop, memory), daemon=True),
        ]
        for thread in threads:
            thread.start()
        for process, stderr in processes:
            run.exit_codes.append(process.wait())
            stderr.close()
        stop.set()
        for thread in threads:
            thread.join()
        monitor.close()
        run.peak_connections, run.peak_uss_mb = peak[0], memory[0]
        ends: list[tuple[float, float]] = []
        for index in range(workers):
            path = workdir / f"timings-{workers}-{index}.json"
            # a worker's first trial also pays for its start (loading the study): left out
            ends += [tuple(pair) for pair in json.loads(path.read_text())[1:]] if path.exists() else []
            text = (workdir / f"stderr-{workers}-{index}.txt").read_text()
            run.error_lines += [line for line in text.splitlines() if is_error(line)]
        run.db_ms = [1000 * seconds for _, seconds in sorted(ends)]
        read_study(url, name, run)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
    return run


def is_error(line: str) -> bool:
    lowered = line.lower()
    return any(word in lowered for word in ("error", "traceback", "fatal", "exception"))


def start_mlflow(workdir: Path) -> tuple[subprocess.Popen, str]:
    import urllib.request

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = ["mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    command += ["--backend-store-uri", f"sqlite:///{workdir}/mlflow.db"]
    command += ["--default-artifact-root", str(workdir / "art")]
    server = subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            return server, uri
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("mlflow server did not start in 120 s")


def fits_in_memory(workers: int, previous: Run | None) -> bool:
    import psutil

    if previous is None or not previous.peak_uss_mb:
        return True
    need = workers * previous.peak_uss_mb / previous.workers
    available = psutil.virtual_memory().available / 2**20
    if need > 0.8 * available:
        print(
            f"stopped before {workers} workers: they would need about {need:.0f} MiB "
            f"({previous.peak_uss_mb / previous.workers:.0f} MiB each), {available:.0f} MiB is available"
        )
        return False
    return True


HEADER = (
    "| workers | trials/min | DB ms/trial median | DB ms/trial p95 | peak connections | errors | exact count "
    "| MiB/worker |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="8,16,32,64", help="N values, comma-separated ('0': none)")
    parser.add_argument("--tracking-workers", default="8,16", help="N values of the MLflow run ('0': none)")
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--growth", type=int, default=0, help="trials of the 16-worker growth run (0: skip)")
    args = parser.parse_args()
    import psutil

    print(
        f"machine: {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"load {os.getloadavg()[0]:.1f}; trials: {EPOCHS} epochs x {SECONDS_PER_EPOCH} s of sleep"
    )
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-load-"))
    (workdir / "loadtask.py").write_text(TASK_MODULE)
    counts = [int(n) for n in args.workers.split(",") if int(n)]
    tracked = [int(n) for n in args.tracking_workers.split(",") if int(n)]
    if counts:
        print(f"\nPostgreSQL, no tracking, {args.trials_per_worker} trials per worker\n{HEADER}")
        previous = None
        for workers in counts:
            if not fits_in_memory(workers, previous):
                break
            previous = run_load(workers, args.trials_per_worker, workdir, None)
            print(previous.row(), flush=True)
            for line in previous.error_lines[:3]:
                print(f"    e.g. {line[:160]}")
    if tracked:
        server, uri = start_mlflow(workdir)
        try:
            print(f"\nPostgreSQL, every trial tracked to a real mlflow server ({uri})\n{HEADER}")
            for workers in tracked:
                run = run_load(workers, args.trials_per_worker, workdir, uri)
                print(run.row(), flush=True)
                for line in run.error_lines[:3]:
                    print(f"    e.g. {line[:160]}")
        finally:
            server.terminate()
            server.wait()
    if args.growth:
        run = run_load(16, 0, workdir, None, total=args.growth)
        print(f"\ngrowth, 16 workers, {args.growth} trials\n{HEADER}\n{run.row()}")
        early = statistics.median(run.db_ms[10:30])
        late = statistics.median(run.db_ms[-20:])
        print(
            f"DB time per trial: trials 11-30 {early:.1f} ms, last 20 {late:.1f} ms: {late / early:.2f}x (goal <= 2x)"
        )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--as-worker":
        run_as_worker(sys.argv[2:])
    else:
        main()
