"""Do adamtune's recommendations hold on held-out data? Independent searches, each checked by ``verify``.

For each task, runs ``--searches`` independent seeded searches (``adamtune search --seed S``, a fresh
SQLite file each, the confirmation stage on as by default: fresh validation folds where the task allows),
then ``adamtune verify --seeds 5`` on each (the recommendation against Adam's defaults on 5 fresh seeds,
**test** split, paired t-test at 0.05). Each search's trials are then confirmed again by the other rules
(``RULES``): a copy of its database is searched again with ``--no-confirm-folds`` (``seeds``: the task's
own validation rows, the same budget) and with ``--no-confirm-folds --confirm-budget 1000`` (``before``:
the stage as it was before validation folds and budgets, 3 finalists raced up to 5 seeds); that keeps
the trials and re-runs only the stage, and its recommendation is verified the same way. It prints per
task and rule:

* how often the recommendation was a confirmed finalist, and how often Adam's defaults were kept;
* the share of searches whose recommendation is **significantly worse** than the defaults on the test
  split (goal: 0 on every task) and **significantly better** (goal: at least 80% on the beatable task);
* the mean test gain (the paired difference, positive = better, relative to the defaults' mean);
* the confirmation stage's cost as a share of the search (the folds rule only, goal: at most half in
  every search): wall time (the stage against the search before it, start-up included, as ``search``
  prints it) and the runs' time against the trials' (start to end as Optuna records them).

Tasks:

* ``digits`` — the README's command 1 (``--n-trials 30``, 20 epochs, hyperband). Adam's defaults are
  good here: an honest tuner must not claim a gain it cannot show.
* ``diabetes`` — the bundled loop-task regression (88 validation rows, objective ``val_mae``).
* ``synthetic-2ep`` — the bundled ``synthetic`` task with ``--epochs 2``: 24 Adam steps, far too few for
  lr 1e-3 to fit the MLP, so the defaults are clearly beatable (the *beatable task*).
* ``cancer`` — a small user ``Task`` (``bench/small_tasks.py``): breast cancer, 91 validation rows.
* ``wine`` — a small user ``LoopTask`` that honours ``trial.fold``: 3 classes, 36 validation rows.

Tracking is off (``--no-tracking``) to keep the bench short; torch runs with ``--threads`` threads.
Usage: ``python bench/quality.py [--searches 8] [--tasks digits,cancer] [--rules folds,seeds]``.
``python bench/quality.py --budget [options]`` runs ``bench/budget.py`` instead (auto vs full space by budget).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS: dict[str, list[str]] = {
    "digits": ["--task", "digits", "--n-trials", "30"],
    "diabetes": ["--task", "diabetes", "--n-trials", "20"],
    "synthetic-2ep": ["--task", "synthetic", "--epochs", "2", "--n-trials", "20"],
    "cancer": ["--task", "small_tasks:cancer", "--n-trials", "20"],
    "wine": ["--task", "small_tasks:wine", "--n-trials", "20"],
}
BEATABLE = "synthetic-2ep"
#: How each rule re-confirms a search's trials (the first runs with the search itself).
RULES = {
    "folds": ("fresh seeds and validation folds, budget 40% (the stage now)", ()),
    "seeds": ("fresh seeds only, validation rows fixed, budget 40%", ("--no-confirm-folds",)),
    "before": (
        "fresh seeds only, validation rows fixed, no budget (the stage before this change)",
        ("--no-confirm-folds", "--confirm-budget", "1000"),
    ),
}


@dataclass
class Outcome:
    task: str
    seed: int
    rule: str  # "folds" or "seeds": how the stage confirmed
    decision: str  # "confirmed" or "defaults"
    trial: int | None
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


def checked(
    task: str,
    seed: int,
    rule: str,
    search_stderr: str,
    cwd: Path,
    env: dict[str, str],
    started: float,
    verified: dict[int | None, dict],
) -> Outcome:
    """Read the study in ``cwd`` back and verify its recommendation (reusing a verification of the same trial)."""
    row = json.loads(adamtune("summary", "--json", cwd=cwd, env=env).stdout)[0]
    trial = row["confirmation"]["recommended_trial"]
    if trial not in verified:
        verified[trial] = json.loads(
            adamtune("verify", "--seeds", "5", "--json", "--no-tracking", cwd=cwd, env=env).stdout
        )
    result = verified[trial]
    default_mean = result["default"][result["metric"]]["mean"]
    difference = result["difference"]["mean"]
    return Outcome(
        task,
        seed,
        rule,
        row["rule"],
        trial,
        result["outcome"],
        difference,
        difference / abs(default_mean) if default_mean else None,
        row["confirmation"]["cost_share"],
        _wall_share(search_stderr),
        time.perf_counter() - started,
    )


def one_search(task: str, seed: int, rules: list[str], env: dict[str, str]) -> list[Outcome]:
    """One seeded search (the stage as it is now), then the same trials confirmed by the other rules."""
    outcomes = []
    verified: dict[int | None, dict] = {}  # verify is deterministic: one run per recommended trial
    with tempfile.TemporaryDirectory(prefix="adamtune-quality-") as tmp:
        searched = Path(tmp) / "search"
        searched.mkdir()
        started = time.perf_counter()
        search = adamtune("search", *TASKS[task], "--seed", str(seed), "--no-tracking", cwd=searched, env=env)
        for rule in rules:
            if rule == "folds":
                outcomes.append(checked(task, seed, rule, search.stderr, searched, env, started, verified))
                continue
            again_dir = Path(tmp) / rule
            shutil.copytree(searched, again_dir)  # the same trials; the search below runs only the stage
            started = time.perf_counter()
            flags = ("--seed", str(seed), "--no-tracking", *RULES[rule][1])
            again = adamtune("search", *TASKS[task], *flags, cwd=again_dir, env=env)
            outcome = checked(task, seed, rule, again.stderr, again_dir, env, started, verified)
            outcome.wall_share = None  # only the stage ran: no search to compare with
            outcomes.append(outcome)
    return outcomes


def _wall_share(stderr: str) -> float | None:
    """The stage's wall time as a share of the search's, from the line ``search`` ends with."""
    found = re.search(r"confirmation: \d+ runs, [\d.]+ s = (\d+)% of the search's", stderr)
    return int(found.group(1)) / 100 if found else None


def table(outcomes: list[Outcome], tasks: list[str], rule: str) -> list[str]:
    lines = [
        f"confirmation on {RULES[rule][0]}:",
        "",
        "| task | searches | confirmed / defaults kept | significantly worse | significantly better "
        "| mean test gain | stage cost: wall (median, max) | runs vs trials (median, max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        rows = [o for o in outcomes if o.task == task and o.rule == rule]
        if not rows:
            continue
        n = len(rows)
        confirmed = sum(o.decision == "confirmed" for o in rows)
        kept = sum(o.decision == "defaults" for o in rows)
        worse = sum(o.verify == "worse" for o in rows)
        better = sum(o.verify == "better" for o in rows)
        gains = [o.relative for o in rows if o.relative is not None]
        gain = f"{statistics.fmean(gains):+.1%}" if gains else "-"
        wall = _median_max([o.wall_share for o in rows if o.wall_share is not None])
        cost = _median_max([o.cost_share for o in rows if o.cost_share is not None]) if rule == "folds" else "-"
        lines.append(
            f"| {task} | {n} | {confirmed} / {kept} | {worse} ({worse / n:.0%}) | {better} ({better / n:.0%}) "
            f"| {gain} | {wall} | {cost} |"
        )
    return lines


def goals(outcomes: list[Outcome]) -> list[str]:
    mine = [o for o in outcomes if o.rule == "folds"]
    if not mine:
        return []
    worse = [o for o in mine if o.verify == "worse"]
    beatable = [o for o in mine if o.task == BEATABLE]
    walls = [o.wall_share for o in mine if o.wall_share is not None]
    missing = sum(o.wall_share is None for o in mine)
    lines = [f"goal 0 significantly worse on test, every task: {len(worse)} -> {'met' if not worse else 'NOT met'}"]
    if beatable:
        share = sum(o.verify == "better" for o in beatable) / len(beatable)
        lines.append(
            f"goal >= 80% significantly better on {BEATABLE}: {share:.0%} -> {'met' if share >= 0.8 else 'NOT met'}"
        )
    top = max(walls) if walls else float("nan")
    ok = bool(walls) and top <= 0.5 and not missing
    lines.append(
        f"goal stage <= 50% of the search's wall time in every search: max {top:.0%}"
        + (f" ({missing} searches printed no share)" if missing else "")
        + f" -> {'met' if ok else 'NOT met'}"
    )
    return lines


def _median_max(shares: list[float]) -> str:
    return f"{statistics.median(shares):.0%}, {max(shares):.0%}" if shares else "-"


def main() -> None:
    if "--budget" in sys.argv[1:]:  # the budget bench (bench/budget.py) with its own options
        from budget import main as budget_main

        budget_main([arg for arg in sys.argv[1:] if arg != "--budget"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", action="store_true", help="run bench/budget.py instead (its options: bench/budget.py --help)"
    )
    parser.add_argument("--searches", type=int, default=8, help="independent searches per task")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--rules", default=",".join(RULES), help=f"comma-separated, from {', '.join(RULES)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--first-seed", type=int, default=100, help="seed of the first search")
    args = parser.parse_args()
    tasks, rules = args.tasks.split(","), args.rules.split(",")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), str(HERE), env.get("PYTHONPATH")]))
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, python {platform.python_version()}, torch threads {args.threads}")
    outcomes: list[Outcome] = []
    began = time.perf_counter()
    for task in tasks:
        for i in range(args.searches):
            for outcome in one_search(task, args.first_seed + i, rules, env):
                outcomes.append(outcome)
                share = f"{outcome.cost_share:.0%}" if outcome.cost_share is not None else "-"
                wall = f"{outcome.wall_share:.0%}" if outcome.wall_share is not None else "-"
                relative = f"{outcome.relative:+.1%}" if outcome.relative is not None else "-"
                print(
                    f"{task} seed {outcome.seed} [{outcome.rule}]: {outcome.decision}"
                    f"{f' trial {outcome.trial}' if outcome.trial is not None else ''}, verify {outcome.verify}, "
                    f"test gain {outcome.difference:+.4g} ({relative}), stage {wall} of the search's wall "
                    f"time, {share} of its trials' time; {outcome.seconds:.0f} s",
                    flush=True,
                )
    print(f"\n{time.perf_counter() - began:.0f} s in all\n")
    for rule in rules:
        print("\n".join(table(outcomes, tasks, rule)), end="\n\n")
    print("\n".join(goals(outcomes)))


if __name__ == "__main__":
    main()
