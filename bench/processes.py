"""What the trainer process buys, side by side, end to end.

A one-worker search runs its training in a *trainer process* (``ADAMTUNE_TRAINER``, default ``process``;
``inline`` trains in the command's own process). This script times the whole command (fresh directory,
tracking to the local MLflow store, 1 torch thread) both ways, alternating their order from round to
round, on two workloads:

* ``readme``: the README's command, ``search --task digits --n-trials 30`` (sub-second trials, Hyperband,
  the confirmation stage);
* ``long``: ``search --task digits --epochs 120 --n-trials 6 --pruner none --no-confirm`` (trials of
  several seconds each).

It prints the median wall time of each and the trainer process's gain: the median time without it divided
by the median with it (> 1: the process pays). A process whose gain is under ~3% on both workloads is a
candidate for removal. The MLflow helper process that adamtune once had was measured by this script at
0.967x (readme) and 1.000x (long) on the 2-core VM on 2026-12-05, and removed.

Usage: ``python bench/processes.py [--rounds 3] [--workloads readme,long]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOADS = {
    "readme": ["--task", "digits", "--n-trials", "30"],
    "long": ["--task", "digits", "--epochs", "120", "--n-trials", "6", "--pruner", "none", "--no-confirm"],
}
#: trainer -> the environment that selects it.
COMBINATIONS = {
    "process": {"ADAMTUNE_TRAINER": "process"},
    "inline": {"ADAMTUNE_TRAINER": "inline"},
}


def timed(workload: str, combination: str, seed: int) -> float:
    env = {**os.environ, **COMBINATIONS[combination], "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    for name in ("ADAMTUNE_STORAGE", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="adamtune-processes-") as tmp:
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "adamtune", "search", *WORKLOADS[workload], "--seed", str(seed)],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{workload} {combination} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from {', '.join(WORKLOADS)}"
    )
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch threads 1")
    combinations = list(COMBINATIONS)
    for workload in args.workloads.split(","):
        times: dict[str, list[float]] = {c: [] for c in combinations}
        for round_ in range(args.rounds):
            order = combinations if round_ % 2 == 0 else combinations[::-1]
            for combination in order:
                times[combination].append(timed(workload, combination, seed=round_))
                print(
                    f"{workload} round {round_}: trainer {combination}: {times[combination][-1]:.1f} s",
                    flush=True,
                )
        median = {c: statistics.median(v) for c, v in times.items()}
        print(f"\n{workload}: median wall time (s), {args.rounds} rounds")
        for combination in combinations:
            values = ", ".join(f"{v:.1f}" for v in times[combination])
            print(f"  trainer {combination:7}: {median[combination]:6.1f}  ({values})")
        trainer_gain = median["inline"] / median["process"]
        print(f"  trainer process gain: {trainer_gain:.3f}x (inline / process)\n")


if __name__ == "__main__":
    main()
