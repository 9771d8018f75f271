"""Do adamtune's recommendations hold on held-out data? Independent searches, each checked by ``verify``.

For each task, runs ``--searches`` independent seeded searches (``adamtune search --seed S``, a fresh
SQLite file each, the confirmation stage on as by default), then ``adamtune verify --seeds 5`` on each
(the recommendation against Adam's defaults on 5 fresh seeds, **test** split, paired t-test at 0.05),
and prints per task:

* how often the recommendation was a confirmed finalist, and how often Adam's defaults were kept;
* the share of searches whose recommendation is **significantly worse** than the defaults on the test
  split (goal: 0) and **significantly better** (goal: at least 80% on the beatable task);
* the mean test gain (the paired difference, positive = better, relative to the defaults' mean);
* the confirmation stage's cost as a share of the search, as ``search`` prints it: wall time (the stage
  against the search before it, start-up included) and the runs' time against the trials' (start to
  end as Optuna records them, summed over workers).

Tasks:

* ``digits`` — the README's command 1 (``--n-trials 30``, 20 epochs, hyperband). Adam's defaults are
  good here: an honest tuner must not claim a gain it cannot show.
* ``synthetic-2ep`` — the bundled ``synthetic`` task with ``--epochs 2``: 1,200 samples at batch 100 are
  24 Adam steps, far too few for lr 1e-3 to fit the MLP (measured: test loss 0.73-0.83 with the
  defaults, 0.11-0.12 with lr 1e-2, on 3 seeds), so the defaults are clearly beatable within the
  budget; a tuner that cannot find and confirm that is broken.

Tracking is off (``--no-tracking``) to keep the bench short; torch runs with ``--threads`` threads.
Usage: ``python bench/quality.py [--searches 4] [--tasks digits,synthetic-2ep] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TASKS: dict[str, list[str]] = {
    "digits": ["--task", "digits", "--n-trials", "30"],
    "synthetic-2ep": ["--task", "synthetic", "--epochs", "2", "--n-trials", "20"],
}


@dataclass
class Outcome:
    task: str
    seed: int
    rule: str
    verify: str
    difference: float
    relative: float | None
    cost_share: float | None
    wall_share: float | None
    seconds: float


def adamtune(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "adamtune", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"adamtune {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done


def one_search(task: str, seed: int, env: dict[str, str]) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="adamtune-quality-") as tmp:
        cwd = Path(tmp)
        started = time.perf_counter()
        search = adamtune("search", *TASKS[task], "--seed", str(seed), "--no-tracking", cwd=cwd, env=env)
        row = json.loads(adamtune("summary", "--json", cwd=cwd, env=env).stdout)[0]
        verify = adamtune("verify", "--seeds", "5", "--json", "--no-tracking", cwd=cwd, env=env)
        result = json.loads(verify.stdout)
        seconds = time.perf_counter() - started
    default_mean = result["default"][result["metric"]]["mean"]
    difference = result["difference"]["mean"]
    return Outcome(
        task,
        seed,
        row["rule"],
        result["outcome"],
        difference,
        difference / abs(default_mean) if default_mean else None,
        row["confirmation"]["cost_share"],
        _wall_share(search.stderr),
        seconds,
    )


def _wall_share(stderr: str) -> float | None:
    """The stage's wall time as a share of the search's, from the line ``search`` ends with."""
    found = re.search(r"confirmation: \d+ runs, [\d.]+ s = (\d+)% of the search's", stderr)
    return int(found.group(1)) / 100 if found else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=4, help="independent searches per task")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--first-seed", type=int, default=100, help="seed of the first search")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parent.parent), env.get("PYTHONPATH")])
    )
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch threads {args.threads}")
    outcomes: list[Outcome] = []
    for task in args.tasks.split(","):
        for i in range(args.searches):
            outcome = one_search(task, args.first_seed + i, env)
            outcomes.append(outcome)
            share = f"{outcome.cost_share:.0%}" if outcome.cost_share is not None else "-"
            wall = f"{outcome.wall_share:.0%}" if outcome.wall_share is not None else "-"
            relative = f"{outcome.relative:+.1%}" if outcome.relative is not None else "-"
            print(
                f"{task} seed {outcome.seed}: rule {outcome.rule}, verify {outcome.verify}, "
                f"test gain {outcome.difference:+.4g} ({relative}), confirmation cost {wall} of the search's wall "
                f"time, {share} of its trials' time; {outcome.seconds:.0f} s",
                flush=True,
            )
    print()
    print(
        "| task | searches | confirmed / defaults kept | significantly worse | significantly better "
        "| mean test gain | confirmation cost: wall (median, max) | trials' time (median, max) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        rows = [o for o in outcomes if o.task == task]
        n = len(rows)
        confirmed = sum(o.rule == "confirmed" for o in rows)
        kept = sum(o.rule == "defaults" for o in rows)
        worse = sum(o.verify == "worse" for o in rows) / n
        better = sum(o.verify == "better" for o in rows) / n
        gains = [o.relative for o in rows if o.relative is not None]
        cost = _median_max([o.cost_share for o in rows if o.cost_share is not None])
        wall = _median_max([o.wall_share for o in rows if o.wall_share is not None])
        gain = f"{statistics.fmean(gains):+.1%}" if gains else "-"
        print(f"| {task} | {n} | {confirmed} / {kept} | {worse:.0%} | {better:.0%} | {gain} | {wall} | {cost} |")


def _median_max(shares: list[float]) -> str:
    return f"{statistics.median(shares):.0%}, {max(shares):.0%}" if shares else "-"


if __name__ == "__main__":
    main()
