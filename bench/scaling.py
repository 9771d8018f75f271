"""Parallel search: trials per minute with 1 and 2 CPU workers, and the storage cost of one trial.

Usage::

    python bench/scaling.py                      # all parts, about 4-6 minutes on 2 cores
    python bench/scaling.py --trials 24 --epochs 5   # shorter trials: start-up weighs more
    python bench/scaling.py --skip-throughput    # storage part only
    python bench/scaling.py --skip-storage       # throughput part only

Part 1 runs ``adamtune search --task digits --pruner none --no-tracking`` as a user would, with
``--workers 1`` (the trial loop in the command, the training in a trainer process, see ``trainer.py``)
and ``--workers 2 --devices cpu`` (two processes forked from the preloaded fork server, see ``pool.py``,
each training in its own process), on a fresh SQLite study each (the confirmation stage included, as a user
gets it). Every worker trains with one torch thread (``OMP_NUM_THREADS=1``; the 2-worker run gets
``cores // 2`` = 1 anyway), so that the ratio measures processes, not torch's intra-op threads. It
reports trials per minute two ways: *wall* (the whole command, start-up, data loading and the
confirmation stage included) and *steady* (finished trials over the span from the first trial's start to
the last one's end, read from the study). Goals on 2 cores: steady >= 1.85x, wall >= 1.6x. The two runs
alternate ``--repeats`` times (so that a change in the machine's load hits both) and the median of the
per-pair ratios is reported.

Part 2 measures what the study database costs per trial, without training: a real ``Worker`` runs a
user loop (``LoopTask``) that reports a deterministic curve, so everything but the training happens
(admission, TPE sampling, the objective's attributes, the reports and Hyperband's decisions, tell). The
time this thread spends inside the storage's methods is summed per trial (goal: <= 30 ms on SQLite,
<= 60 ms on a local PostgreSQL), with the methods that cost most.

Part 3 runs one SQLite study of ``--growth-trials`` (500) such trials and compares the bookkeeping per
trial at its end (trials 481-500) with trials 11-30 (goal: at most 2x).

The numbers depend on the machine and on what else runs on it: the script prints the CPU count and load.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from adamtune.core.config import build_spec
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

ROOT = Path(__file__).resolve().parent.parent


# --- part 1: throughput ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Throughput:
    workers: int
    trials: int
    wall_seconds: float
    steady_seconds: float

    @property
    def wall_per_minute(self) -> float:
        return 60 * self.trials / self.wall_seconds

    @property
    def steady_per_minute(self) -> float:
        return 60 * self.trials / self.steady_seconds


def run_search(workers: int, trials: int, epochs: int, workdir: Path, tag: str) -> Throughput:
    """One ``adamtune search`` on a fresh SQLite study; the rates come from the clock and the study."""
    storage = f"sqlite:///{workdir}/scaling-{workers}-{tag}.db"
    command = [sys.executable, "-m", "adamtune", "search", "--task", "digits", "--study", f"scaling-{workers}"]
    command += ["--n-trials", str(trials), "--epochs", str(epochs), "--pruner", "none", "--no-tracking"]
    command += ["--workers", str(workers), "--devices", "cpu", "--storage", storage]
    started = time.perf_counter()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this checkout's code
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"search with {workers} worker(s) failed:\n{result.stderr}")
    done = [
        t
        for t in optuna.load_study(study_name=f"scaling-{workers}", storage=storage).trials
        if t.state.is_finished() and t.state != optuna.trial.TrialState.FAIL
    ]
    first = min(t.datetime_start for t in done if t.datetime_start is not None)
    last = max(t.datetime_complete for t in done if t.datetime_complete is not None)
    return Throughput(workers, len(done), wall, (last - first).total_seconds())


# --- part 2: study-database time and bookkeeping per trial --------------------------------------------


def synthetic_fit(trial: Any) -> None:
    """A user loop that trains nothing: a deterministic learning curve from the settings, one report per epoch.

    Everything a trial does besides training still happens (sampling, the objective's attributes, the
    reports the pruner needs, pruning, tell), through the real worker, objective and trial context.
    """
    import math

    quality = abs(math.log10(trial.params.lr) + 2.5) + 0.1 * trial.seed % 7 / 7
    trial.report_initial(loss=3.0)
    for epoch in trial.epochs():
        trial.report(loss=0.2 + quality + 2.0 / epoch)


class _DatabaseClock:
    """Wraps the methods of an ``RDBStorage`` to sum the time this thread spends in them (the SQL).

    Private methods count too (Optuna's cache reads trials through ``_get_trials``); a call made inside
    another timed call is counted once, as part of the outer one.
    """

    def __init__(self, backend: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self.by_name: dict[str, list[float]] = {}
        owner, depth = threading.get_ident(), [0]
        for name in dir(type(backend)):
            method = getattr(backend, name, None)
            if name.startswith("__") or not callable(method) or name in ("engine", "scoped_session"):
                continue

            def timed(*args: Any, _method: Any = method, _name: str = name, **kwargs: Any) -> Any:
                if threading.get_ident() != owner or depth[0]:  # the heartbeat thread; nested calls
                    return _method(*args, **kwargs)
                depth[0] += 1
                started = time.perf_counter()
                try:
                    return _method(*args, **kwargs)
                finally:
                    depth[0] -= 1
                    spent = time.perf_counter() - started
                    self.seconds += spent
                    self.calls += 1
                    self.by_name.setdefault(_name, [0, 0.0])
                    self.by_name[_name][0] += 1
                    self.by_name[_name][1] += spent

            setattr(backend, name, timed)


@dataclass
class Bookkeeping:
    """Per-trial figures of one storage run: database seconds, database calls, whole trial seconds."""

    backend: str
    database: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    by_name: dict[str, tuple[float, float]] = field(default_factory=dict)  # method -> (calls, ms) per trial

    def window(self, first: int, last: int) -> tuple[float, float, float]:
        """Medians over trials ``first``..``last`` (0-based, inclusive): (database ms, calls, total ms)."""
        pick = slice(first, last + 1)
        return (
            1000 * statistics.median(self.database[pick]),
            statistics.median(self.calls[pick]),
            1000 * statistics.median(self.total[pick]),
        )


def bookkeeping(backend: str, url: str, trials: int, epochs: int) -> Bookkeeping:
    """Run ``trials`` synthetic trials of ``epochs`` epochs (hyperband, the default pruner) through a real worker."""
    from adamtune.launch.worker_setup import make_worker
    from adamtune.tasks.loop import LoopData, LoopTask
    from adamtune.trials.worker import WorkerOptions

    name = f"bookkeeping-{backend}"
    spec = build_spec("digits", None, name, {"n_trials": trials, "epochs": epochs, "confirm": False})
    spec = spec.with_task_defaults(epochs, 32)
    study = create_or_resume(spec, open_storage(url), seed=0)
    task = LoopTask(name="synthetic", fit=synthetic_fit)
    options = WorkerOptions(storage_url=url, study_name=name, tracking=False, seed=0)
    worker = make_worker(study, spec, task, LoopData(None), options, None)
    clock = _DatabaseClock(study._storage._backend)
    result = Bookkeeping(backend)
    mark = [time.perf_counter(), 0.0, 0]

    def on_trial(_study: Any, _trial: Any) -> None:
        now = time.perf_counter()
        result.total.append(now - mark[0])
        result.database.append(clock.seconds - mark[1])
        result.calls.append(clock.calls - mark[2])
        mark[:] = [now, clock.seconds, clock.calls]

    worker.run(on_trial=on_trial)
    result.by_name = {name: (calls / trials, 1000 * spent / trials) for name, (calls, spent) in clock.by_name.items()}
    return result


def print_profile(run: Bookkeeping, top: int = 8) -> None:
    """Where one backend's database time went: the storage methods with the most time, per trial."""
    ranked = sorted(run.by_name.items(), key=lambda item: -item[1][1])[:top]
    print("    " + ", ".join(f"{name} {calls:.1f}x {ms:.1f} ms" for name, (calls, ms) in ranked))


def postgres_database() -> tuple[str, Any] | None:
    """A throw-away PostgreSQL database (URL, admin connection), or None when the server is unreachable."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except Exception as exc:
        print(f"PostgreSQL skipped: {exc}")
        return None
    name = f"adamtune_bench_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", admin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24, help="trials per throughput run")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per digits trial (20: the task's default)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating 1-worker/2-worker pairs")
    parser.add_argument("--storage-trials", type=int, default=40, help="trials per storage-cost run")
    parser.add_argument("--storage-epochs", type=int, default=20, help="epochs per storage-cost trial")
    parser.add_argument("--growth-trials", type=int, default=500, help="trials of the growth run (0: skip it)")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-storage", action="store_true", help="part 1 only")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cores} CPU cores, load average {load:.1f} at start; torch threads per CPU worker: cores/workers")
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-bench-"))
    try:
        if not args.skip_throughput:
            print(f"\n1. digits, {args.epochs} epochs/trial, no pruning, {args.trials} trials per run, SQLite")
            print(f"{'pair':>4} {'workers':>7} {'wall trials/min':>16} {'steady trials/min':>18} {'load':>5}")
            steady, wall = [], []
            for pair in range(1, args.repeats + 1):
                one, two = (run_search(w, args.trials, args.epochs, workdir, str(pair)) for w in (1, 2))
                for result in (one, two):
                    print(
                        f"{pair:>4} {result.workers:>7} {result.wall_per_minute:>16.1f} "
                        f"{result.steady_per_minute:>18.1f} {os.getloadavg()[0]:>5.1f}"
                    )
                steady.append(two.steady_per_minute / one.steady_per_minute)
                wall.append(two.wall_per_minute / one.wall_per_minute)
            print(
                f"speed-up with 2 workers (median of {args.repeats} pairs): steady {statistics.median(steady):.2f}x "
                f"(pairs: {', '.join(f'{r:.2f}' for r in steady)}), wall {statistics.median(wall):.2f}x "
                "(goals on 2 cores: steady >= 1.85x, wall >= 1.6x)"
            )
            met = statistics.median(steady) >= 1.85, statistics.median(wall) >= 1.6
            print(f"steady {'MET' if met[0] else 'NOT MET'}, wall {'MET' if met[1] else 'NOT MET'}")
        if args.skip_storage:
            return

        print(
            f"\n2. study-database time per trial: {args.storage_trials} synthetic trials of {args.storage_epochs} "
            "epochs, hyperband (the default pruner), TPE, tracking off; median of trials 11 onwards"
        )
        print(f"{'backend':<11} {'db ms':>7} {'db calls':>9} {'bookkeeping ms':>15}")
        last = args.storage_trials - 1
        sqlite_run = bookkeeping("sqlite", f"sqlite:///{workdir}/storage.db", args.storage_trials, args.storage_epochs)
        print(f"{'sqlite':<11} " + "{:7.1f} {:9.0f} {:15.1f}".format(*sqlite_run.window(10, last)))
        print_profile(sqlite_run)
        postgres = postgres_database()
        if postgres is not None:
            url, admin = postgres
            try:
                pg_run = bookkeeping("postgresql", url, args.storage_trials, args.storage_epochs)
                print(f"{'postgresql':<11} " + "{:7.1f} {:9.0f} {:15.1f}".format(*pg_run.window(10, last)))
                print_profile(pg_run)
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
                admin.close()
        print("goal: at most 30 ms (SQLite) / 60 ms (PostgreSQL) of database time per trial")

        if args.growth_trials:
            n = args.growth_trials
            print(f"\n3. bookkeeping as the study grows: one SQLite study of {n} synthetic trials")
            run = bookkeeping("growth", f"sqlite:///{workdir}/growth.db", n, args.storage_epochs)
            early, late = run.window(10, 29), run.window(n - 20, n - 1)
            print(f"{'trials':<11} {'db ms':>7} {'db calls':>9} {'bookkeeping ms':>15}")
            print(f"{'11-30':<11} " + "{:7.1f} {:9.0f} {:15.1f}".format(*early))
            print(f"{f'{n - 19}-{n}':<11} " + "{:7.1f} {:9.0f} {:15.1f}".format(*late))
            print(f"bookkeeping at trial {n} / at trial 20: {late[2] / early[2]:.2f}x (goal: at most 2x)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
