"""Parallel search: trials per minute with 1 and 2 CPU workers, and the storage cost of one trial.

Usage::

    python bench/scaling.py                      # both parts, about 2-3 minutes on 2 cores
    python bench/scaling.py --trials 20 --epochs 5
    python bench/scaling.py --skip-throughput    # storage part only

Part 1 runs ``adamtune search --task digits --pruner none --no-tracking`` as a user would, with
``--workers 1`` (in-process) and ``--workers 2 --devices cpu`` (two spawned processes), on a fresh
SQLite study each. Every worker trains with one torch thread (``OMP_NUM_THREADS=1``; the 2-worker run
gets ``cores // 2`` = 1 anyway), so that the ratio measures processes, not torch's intra-op threads,
which do not help this small MLP and collapse when other programs load the cores. It reports trials per minute two ways:
*wall* (the whole command, process start-up and data loading included) and *steady* (finished trials
over the span from the first trial's start to the last one's end, read from the study). The goal is a
steady ratio of at least 1.8x on 2 cores. Every trial trains the same number of epochs (no pruning).
The two runs alternate ``--repeats`` times (so that a change in the machine's load hits both) and the
median of the per-pair ratios is reported.

Part 2 measures what the database costs per trial, without training: a real ``Worker`` runs a storage-only
objective that makes the same storage calls as the real one (suggest the 5 Adam settings, 7 user
attributes, ``report`` + ``should_prune`` per epoch), on SQLite and on PostgreSQL (a throw-away database
on ``--postgres``, skipped if unreachable). Reported per trial: *admit* (admission lock, stale check,
count, ``ask`` with TPE sampling, first heartbeat), *attrs* (the objective's storage calls) and *tell*.

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
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from adamtune.config import build_spec
from adamtune.space import suggest
from adamtune.study import create_or_resume, open_storage
from adamtune.worker import Interrupts, Worker

POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
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


# --- part 2: storage cost per trial ------------------------------------------------------------------


@dataclass
class StorageOnlyObjective:
    """Makes the real objective's storage calls and trains nothing."""

    spec: Any
    epochs: int
    tracker: None = None

    def __call__(self, trial: optuna.Trial) -> float:
        started = time.perf_counter()
        params = suggest(trial, self.spec.space)
        for key, value in {
            "adamtune.seed": 1,
            "adamtune.params": params.as_dict(),
            "adamtune.device": "cpu",
            "adamtune.host": "bench",
            "adamtune.worker": "bench-w0",
        }.items():
            trial.set_user_attr(key, value)
        for epoch in range(1, self.epochs + 1):
            trial.report(1.0 / epoch + params.lr, epoch)
            trial.should_prune()
        trial.set_user_attr("adamtune.curves", {"val_loss": [1.0] * self.epochs})
        trial.set_user_attr("adamtune.state", "complete")
        TimedWorker.attrs.append(time.perf_counter() - started)
        return 1.0 + params.lr


class TimedWorker(Worker):
    """A ``Worker`` that records how long admission and tell take."""

    admit: list[float] = []  # noqa: RUF012 - shared lists, reset per backend
    attrs: list[float] = []  # noqa: RUF012
    tell: list[float] = []  # noqa: RUF012

    def _admit(self, interrupts: Interrupts) -> Any:
        started = time.perf_counter()
        admission = super()._admit(interrupts)
        if admission.trial is not None:
            TimedWorker.admit.append(time.perf_counter() - started)
        return admission

    def _tell(self, trial: optuna.Trial, state: Any, value: float | None) -> Any:
        started = time.perf_counter()
        frozen = super()._tell(trial, state, value)
        TimedWorker.tell.append(time.perf_counter() - started)
        return frozen


@dataclass
class StorageCost:
    backend: str
    trials: int
    admit: list[float] = field(default_factory=list)
    attrs: list[float] = field(default_factory=list)
    tell: list[float] = field(default_factory=list)

    def row(self) -> str:
        ms = lambda values: f"{1000 * statistics.median(values):7.1f}"  # noqa: E731
        total = [a + b + c for a, b, c in zip(self.admit, self.attrs, self.tell, strict=True)]
        return f"{self.backend:<11} {self.trials:>6} {ms(self.admit)} {ms(self.attrs)} {ms(self.tell)} {ms(total)}"


def storage_cost(backend: str, url: str, trials: int, epochs: int) -> StorageCost:
    spec = build_spec("digits", None, f"storage-{backend}", {"n_trials": trials, "epochs": epochs})
    spec = spec.with_task_defaults(epochs, 32)
    study = create_or_resume(spec, open_storage(url))
    TimedWorker.admit, TimedWorker.attrs, TimedWorker.tell = [], [], []
    TimedWorker(study, StorageOnlyObjective(spec, epochs), trials).run()  # type: ignore[arg-type]
    return StorageCost(backend, trials, TimedWorker.admit, TimedWorker.attrs, TimedWorker.tell)


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
    parser.add_argument("--trials", type=int, default=16, help="trials per throughput run")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per digits trial")
    parser.add_argument("--repeats", type=int, default=3, help="alternating 1-worker/2-worker pairs")
    parser.add_argument("--storage-trials", type=int, default=40, help="trials per storage-cost run")
    parser.add_argument("--storage-epochs", type=int, default=20, help="reports per storage-cost trial")
    parser.add_argument("--skip-throughput", action="store_true")
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
                "(goal: steady >= 1.8x on 2 cores)"
            )

        print(f"\n2. storage cost per trial (median ms; {args.storage_epochs} report+should_prune per trial)")
        print(f"{'backend':<11} {'trials':>6} {'admit':>7} {'attrs':>7} {'tell':>7} {'total':>7}")
        costs = [storage_cost("sqlite", f"sqlite:///{workdir}/storage.db", args.storage_trials, args.storage_epochs)]
        print(costs[-1].row())
        postgres = postgres_database()
        if postgres is not None:
            url, admin = postgres
            try:
                costs.append(storage_cost("postgresql", url, args.storage_trials, args.storage_epochs))
                print(costs[-1].row())
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
                admin.close()
        if len(costs) == 2:
            ratio = lambda values_a, values_b: statistics.median(values_b) / statistics.median(values_a)  # noqa: E731
            sqlite_total = [a + b + c for a, b, c in zip(costs[0].admit, costs[0].attrs, costs[0].tell, strict=True)]
            pg_total = [a + b + c for a, b, c in zip(costs[1].admit, costs[1].attrs, costs[1].tell, strict=True)]
            print(f"postgresql / sqlite per-trial storage time: {ratio(sqlite_total, pg_total):.2f}x")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
