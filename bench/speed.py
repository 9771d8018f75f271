"""Five speed figures of two source trees side by side, in one run: a baseline tree and the current one.

Each figure comes from an existing bench script, run *from its own tree* (``python DIR/bench/X.py``, in a
fresh temporary directory, with ``PYTHONPATH=DIR``). ``PYTHONPATH`` comes before site-packages on
``sys.path``, hence before the path entry of the venv's editable install, so ``import adamtune`` and
``python -m adamtune`` -- in the script and in every process it starts -- load that tree's package; a
directory first on ``PATH`` holds an ``adamtune`` shim running ``python -m adamtune`` for anything that
calls the console script. The figures, the script that measures each, and this benchmark's goals:

1. The README command (``adamtune search --task digits --n-trials 30``: Hyperband, TPE, SQLite, MLflow's
   local store, the confirmation stage) end to end ÷ a bare PyTorch loop doing the same trainings --
   ``bench/overhead.py --trials 30 --rounds 1``. Goal: <= 1.30.
2. A fresh 1-trial search (``--n-trials 1 --epochs 1``, both stores created, MLflow's schema template
   cached) ÷ ``python -c "import torch, optuna, mlflow"`` -- ``bench/startup.py --rounds 1``. Goal: <= 1.5.
3. Launch to trial 0's start (Optuna's ``datetime_start``) ÷ ``python -c "import torch"`` -- the same run
   of ``bench/startup.py``. Goal: <= 2.0.
4. Study-database time per 20-epoch trial (a real worker running synthetic trials, no training; the time
   spent in the storage's methods, median of trials 11 on), on SQLite and on PostgreSQL at
   127.0.0.1:5432 (the script creates a throw-away database and drops it) -- ``bench/scaling.py
   --skip-throughput --storage-trials 40 --growth-trials 0``. Goals: <= 30 ms and <= 60 ms.
5. Steady-state trials per minute with 2 CPU workers ÷ with 1 worker (24 trials of 20 epochs, no
   pruning, SQLite) -- ``bench/scaling.py --skip-storage --repeats 1``. Goal: >= 1.8.

A few by-products are shown as ``(info)`` rows: overhead.py's steady-state ratio, startup.py's *cold*
end-to-end ratio (no MLflow schema template yet) and scaling.py's wall-clock speed-up.

How: every round runs every script once per side with one internal round (``--rounds 1`` /
``--repeats 1``), the two sides back to back for each script, and the order of the sides alternates from
round to round (baseline first in even rounds), so that the drift of a shared 2-core machine hits both
sides alike. Nothing runs in parallel. Each figure is parsed from the script's printed summary line (the
scripts have no machine-readable output); a line that is missing or cannot be parsed stops the run with
a message naming the script, the tree and the line. The final table shows, per side, the median over the
rounds with the min and max, the ratio current ÷ baseline of the medians, and whether the current tree
meets the goal. Before the rounds each side is checked (``adamtune.__file__`` must lie in its tree) and
warmed up, untimed, by one tiny search (byte-code compiled, MLflow's schema template cached).

The goals above are this benchmark's; the scripts print their own (sometimes stricter) goals, which
are ignored here.

Usage::

    python bench/speed.py --baseline /tmp/base-main                  # 3 rounds, ~15 minutes on 2 cores
    python bench/speed.py --baseline /tmp/base-main --rounds 5       # ~25 minutes
    python bench/speed.py --baseline /tmp/base-main --quick          # smoke run, 1 round, ~2-3 minutes
    python bench/speed.py --baseline A --current B --only startup,storage --logs /tmp/speed-logs

``--current`` defaults to the tree that holds this script. Run it with the interpreter of the
environment to measure (the scripts and the searches all use ``sys.executable``). A baseline tree is
made with ``git worktree add /tmp/base-main <commit>``.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
NUMBER = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
SIDES = ("baseline", "current")
#: per (job, metric): the most decimals a script printed for it (the table shows no more)
DECIMALS: dict[tuple[str, str], int] = {}
#: figures a script skipped (e.g. PostgreSQL unreachable), repeated under the final table
NOTES: dict[str, None] = {}


class BenchError(Exception):
    """A script failed, or its output could not be parsed: the message says which and where."""


@dataclass(frozen=True)
class Metric:
    """One figure printed by a script: the line is found by ``anchor`` and its number read by ``pattern``."""

    key: str
    label: str
    unit: str  # "x" (a ratio) or "ms"
    goal: float | None  # None: an (info) row
    higher_is_better: bool
    anchor: str  # regex that picks the line out (case-insensitive, searched)
    pattern: str  # regex with one group, the number (case-insensitive, searched in that line)
    skipped: str | None = None  # regex: a line saying the figure was skipped (its first group: why)

    def met(self, value: float) -> bool:
        assert self.goal is not None
        return value >= self.goal if self.higher_is_better else value <= self.goal

    def goal_text(self) -> str:
        if self.goal is None:
            return "(info)"
        sign = ">=" if self.higher_is_better else "<="
        return f"{sign} {self.goal:.0f} ms" if self.unit == "ms" else f"{sign} {self.goal:.2f}x"


@dataclass(frozen=True)
class Job:
    """One invocation of one bench script per side and round, and the figures it prints."""

    name: str
    script: str  # relative to the tree
    full: tuple[str, ...]
    quick: tuple[str, ...]
    metrics: tuple[Metric, ...]


JOBS: tuple[Job, ...] = (
    Job(
        name="overhead",
        script="bench/overhead.py",
        full=("--trials", "30", "--rounds", "1", "--threads", "1"),
        quick=("--trials", "1", "--rounds", "1", "--threads", "1"),
        metrics=(
            Metric(
                "e2e",
                "1. README command end to end ÷ bare loop",
                "x",
                1.30,
                False,
                anchor=r"median end[- ]to[- ]end ratio",
                pattern=r"median end[- ]to[- ]end ratio\s*[:=]?\s*" + NUMBER,
            ),
            Metric(
                "steady",
                "   README command steady state ÷ bare loop",
                "x",
                None,
                False,
                anchor=r"median steady[- ]state ratio",
                pattern=r"median steady[- ]state ratio\s*[:=]?\s*" + NUMBER,
            ),
        ),
    ),
    Job(
        name="startup",
        script="bench/startup.py",
        full=("--rounds", "1", "--threads", "1"),
        quick=("--rounds", "1", "--threads", "1"),
        metrics=(
            Metric(
                "warm",
                "2. fresh 1-trial search ÷ its imports",
                "x",
                1.5,
                False,
                anchor=r"end to end, warm",
                pattern=r"end to end, warm\b.*?\bmedian\s*[:=]?\s*" + NUMBER + r"\s*x",
            ),
            Metric(
                "cold",
                "   same, no MLflow schema template yet",
                "x",
                None,
                False,
                anchor=r"end to end, cold",
                pattern=r"end to end, cold\b.*?\bmedian\s*[:=]?\s*" + NUMBER + r"\s*x",
            ),
            Metric(
                "first",
                "3. first trial start ÷ import torch",
                "x",
                2.0,
                False,
                anchor=r"^\s*first trial\b",
                pattern=r"first trial\b.*?\bmedian\s*[:=]?\s*" + NUMBER + r"\s*x",
            ),
        ),
    ),
    Job(
        name="storage",
        script="bench/scaling.py",
        full=("--skip-throughput", "--storage-trials", "40", "--storage-epochs", "20", "--growth-trials", "0"),
        quick=("--skip-throughput", "--storage-trials", "11", "--storage-epochs", "20", "--growth-trials", "0"),
        metrics=(
            Metric(
                "sqlite",
                "4. database time per trial, SQLite",
                "ms",
                30.0,
                False,
                anchor=r"^\s*sqlite\s+\S",
                pattern=r"^\s*sqlite\s+" + NUMBER + r"(?:\s|$)",
            ),
            Metric(
                "postgresql",
                "4. database time per trial, PostgreSQL",
                "ms",
                60.0,
                False,
                anchor=r"^\s*postgres(?:ql)?\s+\S",
                pattern=r"^\s*postgres(?:ql)?\s+" + NUMBER + r"(?:\s|$)",
                skipped=r"PostgreSQL skipped:?\s*(.*)",
            ),
        ),
    ),
    Job(
        name="scaling",
        script="bench/scaling.py",
        full=("--skip-storage", "--trials", "24", "--epochs", "20", "--repeats", "1"),
        quick=("--skip-storage", "--trials", "2", "--epochs", "1", "--repeats", "1"),
        metrics=(
            Metric(
                "steady",
                "5. 2 workers ÷ 1 worker, steady state",
                "x",
                1.8,
                True,
                anchor=r"speed-?up with 2 workers",
                pattern=r"speed-?up with 2 workers.*?\bsteady\s*[:=]?\s*" + NUMBER + r"\s*x",
            ),
            Metric(
                "wall",
                "   2 workers ÷ 1 worker, wall clock",
                "x",
                None,
                True,
                anchor=r"speed-?up with 2 workers",
                pattern=r"speed-?up with 2 workers.*?\bwall\s*[:=]?\s*" + NUMBER + r"\s*x",
            ),
        ),
    ),
)

#: the untimed warm-up search of each side (the command startup.py times)
WARM_UP = ("search", "--task", "digits", "--n-trials", "1", "--epochs", "1")


@dataclass
class Side:
    """One source tree and the environment its scripts run in."""

    name: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)
    described: str = ""


@dataclass
class Results:
    """Per (job, metric, side): the value of each round; None where the figure was skipped."""

    values: dict[tuple[str, str, str], list[float | None]] = field(default_factory=dict)

    def add(self, job: Job, metric: Metric, side: str, value: float | None) -> None:
        self.values.setdefault((job.name, metric.key, side), []).append(value)


def parse(output: str, job: Job, side: Side) -> dict[str, float | None]:
    """The figures of ``job`` in one run's ``output``; BenchError names the script and the bad line."""
    lines = output.splitlines()
    found: dict[str, float | None] = {}
    where = f"{job.script} (the {side.name} tree, {side.root})"
    for metric in job.metrics:
        if metric.skipped:
            skipped = [m for line in lines if (m := re.search(metric.skipped, line, re.IGNORECASE))]
            if skipped:
                found[metric.key] = None
                why = skipped[-1].group(1).strip() or "no reason given"
                note = f"{metric.label.strip()}: skipped by {job.script} on the {side.name} side: {why}"
                print(f"    {note}")
                NOTES[note] = None
                continue
        candidates = [line for line in lines if re.search(metric.anchor, line, re.IGNORECASE)]
        if not candidates:
            tail = "\n".join("      | " + line for line in lines[-15:])
            raise BenchError(
                f"{where}: no line matching /{metric.anchor}/ (for '{metric.label.strip()}') in its output; "
                f"its last lines:\n{tail}"
            )
        line = candidates[-1]
        match = re.search(metric.pattern, line, re.IGNORECASE)
        if match is None:
            raise BenchError(
                f"{where}: could not parse '{metric.label.strip()}' from the line\n      | {line}\n"
                f"    (expected /{metric.pattern}/)"
            )
        value = float(match.group(1))
        decimals = len(match.group(1).partition(".")[2].split("e")[0].split("E")[0])
        DECIMALS[(job.name, metric.key)] = max(DECIMALS.get((job.name, metric.key), 0), decimals)
        if not math.isfinite(value):
            raise BenchError(f"{where}: '{metric.label.strip()}' is {value} in the line\n      | {line}")
        found[metric.key] = value
    return found


def prepare(side: Side, python: str, shims: Path) -> None:
    """Sets ``side.env``, checks that the side's processes import its own adamtune, and warms it up."""
    root = side.root
    side.env = {
        **os.environ,
        "PYTHONPATH": str(root),  # before site-packages, so before the editable install's path entry
        "PATH": os.pathsep.join([str(shims), os.environ.get("PATH", "")]),
    }
    side.env.pop("PYTHONHOME", None)
    for job in JOBS:
        if not (root / job.script).is_file():
            raise BenchError(f"the {side.name} tree {root} has no {job.script}")
    with tempfile.TemporaryDirectory(prefix="adamtune-speed-check-") as workdir:
        probe = "import adamtune, adamtune.__main__; print(adamtune.__file__); print(adamtune.__version__)"
        result = subprocess.run(
            [python, "-c", probe], cwd=workdir, env=side.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"the {side.name} tree {root}: 'import adamtune' failed:\n{result.stderr[-3000:]}")
        where, version = [*result.stdout.strip().splitlines(), "?", "?"][:2]
        if not Path(where).resolve().is_relative_to(root):
            raise BenchError(f"the {side.name} side imports adamtune from {where}, not from its tree {root}")
        shim = shutil.which("adamtune", path=side.env["PATH"])
        if shim is None or Path(shim).parent != shims:
            raise BenchError(f"the {side.name} side's `adamtune` resolves to {shim}, not to the shim in {shims}")
        side.described = f"{root} ({git_describe(root)}), adamtune {version} from {where}"
        print(f"{side.name:>8}: {side.described}")
        started = time.perf_counter()
        warm = subprocess.run([shim, *WARM_UP], cwd=workdir, env=side.env, capture_output=True, text=True, check=False)
        if warm.returncode != 0:
            raise BenchError(
                f"the {side.name} tree's warm-up `adamtune {' '.join(WARM_UP)}` failed "
                f"(exit {warm.returncode}):\n{(warm.stdout + warm.stderr)[-3000:]}"
            )
        print(f"{'':>8}  warm-up search (untimed) {time.perf_counter() - started:.1f} s")


def git_describe(root: Path) -> str:
    """The tree's commit and whether it has uncommitted changes (read-only git calls, no index refresh)."""
    git = ["git", "--no-optional-locks", "-C", str(root)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    if head.returncode != 0:
        return "not a git tree"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=False
    )
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def make_shims(python: str) -> Path:
    """A directory holding an ``adamtune`` executable that runs ``python -m adamtune`` (put first on PATH)."""
    shims = Path(tempfile.mkdtemp(prefix="adamtune-speed-shims-"))
    shim = shims / "adamtune"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(python)} -m adamtune "$@"\n')
    shim.chmod(0o755)
    return shims


def run_job(job: Job, side: Side, args: argparse.Namespace, round_index: int) -> dict[str, float | None]:
    """One run of ``job``'s script from ``side``'s tree in a fresh directory; its parsed figures."""
    command = [args.python, str(side.root / job.script), *(job.quick if args.quick else job.full)]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adamtune-speed-") as workdir:
        try:
            result = subprocess.run(
                command,
                cwd=workdir,
                env=side.env,
                capture_output=True,
                text=True,
                check=False,
                timeout=args.timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchError(
                f"{job.script} ({side.name} tree) ran past {args.timeout} s: {shlex.join(command)}"
            ) from exc
    seconds = time.perf_counter() - started
    output = result.stdout + ("\n" + result.stderr if result.stderr else "")
    if args.logs is not None:
        args.logs.mkdir(parents=True, exist_ok=True)
        (args.logs / f"round{round_index}-{job.name}-{side.name}.txt").write_text(f"$ {shlex.join(command)}\n{output}")
    if result.returncode != 0:
        tail = "\n".join("      | " + line for line in output.splitlines()[-25:])
        raise BenchError(
            f"{job.script} ({side.name} tree, {side.root}) exited with {result.returncode}: "
            f"{shlex.join(command)}\n{tail}"
        )
    found = parse(result.stdout, job, side)
    shown = ", ".join(
        f"{m.key} {value:.{DECIMALS.get((job.name, m.key), 3)}f}{' ms' if m.unit == 'ms' else 'x'}"
        if (value := found[m.key]) is not None
        else f"{m.key} skipped"
        for m in job.metrics
    )
    print(f"    {job.name:<8} {side.name:<8} {seconds:6.1f} s  {shown}", flush=True)
    return found


def summary(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    """(median, min, max) of the values measured, or None if none was."""
    measured = [v for v in values if v is not None]
    if not measured:
        return None
    return statistics.median(measured), min(measured), max(measured)


def cell(stats: tuple[float, float, float] | None, unit: str, rounds: int, digits: int) -> str:
    if stats is None:
        return "n/a"
    median, low, high = stats
    suffix = " ms" if unit == "ms" else "x"
    text = f"{median:.{digits}f}{suffix}"
    return text + (f" ({low:.{digits}f}..{high:.{digits}f})" if rounds > 1 else "")


def table(results: Results, jobs: Sequence[Job], rounds_done: int) -> str:
    """The final table: figure | goal | baseline | current | current ÷ baseline | met?"""
    header = (
        "figure",
        "goal",
        "baseline median (min..max)",
        "current median (min..max)",
        "current÷baseline",
        "met? (current)",
    )
    rows = [header]
    for job in jobs:
        for metric in job.metrics:
            base = summary(results.values.get((job.name, metric.key, "baseline"), []))
            cur = summary(results.values.get((job.name, metric.key, "current"), []))
            digits = DECIMALS.get((job.name, metric.key), 3)
            ratio = f"{cur[0] / base[0]:.3f}" if base and cur and base[0] else "n/a"
            if metric.goal is None:
                met = ""
            elif cur is None:
                met = "n/a"
            else:
                met = "yes" if metric.met(cur[0]) else "NO"
                if base is not None:
                    met += f" (baseline {'yes' if metric.met(base[0]) else 'no'})"
            rows.append(
                (
                    metric.label,
                    metric.goal_text(),
                    cell(base, metric.unit, rounds_done, digits),
                    cell(cur, metric.unit, rounds_done, digits),
                    ratio,
                    met,
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [" | ".join(text.ljust(width) for text, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)


def arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline source tree (e.g. a git worktree)")
    parser.add_argument("--current", type=Path, default=HERE, help=f"the tree to compare (default: {HERE})")
    parser.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="smoke run: the smallest settings the scripts accept")
    parser.add_argument(
        "--only",
        default=",".join(job.name for job in JOBS),
        help=f"comma-separated subset of: {', '.join(job.name for job in JOBS)} (default: all)",
    )
    parser.add_argument("--logs", type=Path, default=None, help="save each script run's output in this directory")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed to one script run")
    parser.add_argument("--python", default=sys.executable, help="interpreter of every run (default: this one)")
    args = parser.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(names) - {job.name for job in JOBS})
    if unknown or not names:
        parser.error(
            f"--only: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(j.name for j in JOBS)}"
        )
    args.jobs = [job for job in JOBS if job.name in names]
    for name in ("baseline", "current"):
        root = getattr(args, name).resolve()
        if not (root / "adamtune" / "__init__.py").is_file():
            parser.error(f"--{name} {root}: no adamtune/__init__.py there")
        setattr(args, name, root)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = arguments(argv)
    jobs: list[Job] = args.jobs
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"speed: {args.rounds} round(s){' (quick settings)' if args.quick else ''}, {os.cpu_count()} cores, "
        f"load {load:.1f}, python {args.python}"
    )
    shims = make_shims(args.python)
    sides = {"baseline": Side("baseline", args.baseline), "current": Side("current", args.current)}
    results = Results()
    rounds_done = 0
    started = time.perf_counter()
    try:
        for side in sides.values():
            prepare(side, args.python, shims)
        for round_index in range(args.rounds):
            order = SIDES if round_index % 2 == 0 else SIDES[::-1]
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
            print(f"round {round_index + 1}/{args.rounds}: {' then '.join(order)} (load {load:.1f})", flush=True)
            for job in jobs:
                for name in order:
                    found = run_job(job, sides[name], args, round_index)
                    for metric in job.metrics:
                        results.add(job, metric, name, found[metric.key])
            rounds_done += 1
            if rounds_done < args.rounds:
                per_round = (time.perf_counter() - started) / rounds_done
                print(f"    about {per_round * (args.rounds - rounds_done) / 60:.1f} min to go", flush=True)
    except (BenchError, KeyboardInterrupt) as exc:
        message = str(exc) or "interrupted"
        if rounds_done or results.values:
            print(f"\npartial results (the figures measured before the failure):\n{table(results, jobs, rounds_done)}")
        print(f"\nspeed.py failed: {message}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(shims, ignore_errors=True)
    print(f"\nbaseline: {sides['baseline'].described}")
    print(f"current:  {sides['current'].described}")
    print(
        f"{args.rounds} round(s), sides alternating, {(time.perf_counter() - started) / 60:.1f} min"
        + (" (quick settings: smoke run, figures not representative)" if args.quick else "")
    )
    print(table(results, jobs, rounds_done))
    for note in NOTES:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
