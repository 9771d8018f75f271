"""How long ``adamtune search`` takes to start and finish a tiny search, against the imports it needs.

Two figures, each a ratio over a bare interpreter that only imports the heavy libraries:

* end to end: the wall time of ``adamtune search --task digits --n-trials 1 --epochs 1`` in a fresh
  temporary directory (so the Optuna study database and MLflow's default store ``sqlite:///mlflow.db``
  are both created by the command), over ``python -c "import torch, optuna, mlflow"`` (goal: at most 1.3);
* first trial: from a wall-clock timestamp taken just before the command is launched to trial 0's
  ``datetime_start`` as Optuna stored it (read from the study database after the run), over
  ``python -c "import torch"`` (goal: at most 2.0).

Both sides run with the same interpreter (``sys.executable``; the command as ``python -m adamtune``,
with this checkout first on ``PYTHONPATH``) and the same ``OMP_NUM_THREADS``. Timing on a shared 2-core
VM drifts between minutes, so the sides alternate within each round (import baselines, then the search)
and each figure is the median of the per-round ratios; the medians of the raw times are shown too.

MLflow's new local store is a copy of a schema template cached per MLflow version (``tracking_template.py``):
the machine's first search makes it. Each round therefore times the search twice, alternating: *warm*
(a template made before the rounds, untimed, as for every search after a machine's first) and *cold* (an
empty template directory: MLflow creates the store with its migrations). Neither touches the user's cache.

Usage: ``python bench/startup.py [--rounds 5] [--threads 1] [--keep]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
END_TO_END_GOAL = 1.3
FIRST_TRIAL_GOAL = 2.0
COMMAND = ["search", "--task", "digits", "--n-trials", "1", "--epochs", "1"]


def environment(threads: int) -> dict[str, str]:
    """The environment of every timed process: this checkout first on the path, fixed torch threads."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads)}


def time_python(code: str, env: dict[str, str]) -> float:
    """Wall seconds of ``python -c code``."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
    return time.perf_counter() - started


def time_search(env: dict[str, str], keep: bool) -> tuple[float, float]:
    """One search in a fresh directory: (wall seconds, seconds from launch to trial 0's start)."""
    import optuna

    workdir = Path(tempfile.mkdtemp(prefix="adamtune-startup-"))
    try:
        launched = time.time()
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "adamtune", *COMMAND], cwd=workdir, check=True, capture_output=True, env=env
        )
        wall = time.perf_counter() - started
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name="digits", storage=f"sqlite:///{workdir}/adamtune.db")
        first = study.trials[0].datetime_start
        assert first is not None
        # Optuna stores naive local times (datetime.now())
        to_first = first.timestamp() - launched
        if not (workdir / "mlflow.db").exists():
            raise SystemExit(f"the search created no MLflow store in {workdir}")
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return wall, to_first


def verdict(ratio: float, goal: float) -> str:
    return "MET" if ratio <= goal else "NOT MET"


def with_templates(env: dict[str, str], directory: Path) -> dict[str, str]:
    return {**env, "ADAMTUNE_STORE_TEMPLATE_DIR": str(directory)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every timed process")
    parser.add_argument("--keep", action="store_true", help="keep each round's working directory")
    args = parser.parse_args()
    env = environment(args.threads)
    check = subprocess.run(
        [sys.executable, "-c", "import adamtune; print(adamtune.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    if not Path(check).resolve().is_relative_to(ROOT):
        raise SystemExit(f"the timed processes would import adamtune from {check}, not from {ROOT}")
    time_python("import torch, optuna, mlflow", env)  # warm the file cache once, untimed
    templates = Path(tempfile.mkdtemp(prefix="adamtune-bench-templates-"))
    warm_env = with_templates(env, templates)
    time_search(warm_env, False)  # makes the template, untimed
    rows, cold_walls = [], []
    for _ in range(args.rounds):
        imports_all = time_python("import torch, optuna, mlflow", env)
        imports_torch = time_python("import torch", env)
        wall, to_first = time_search(warm_env, args.keep)
        rows.append((imports_all, wall, imports_torch, to_first))
        empty = Path(tempfile.mkdtemp(prefix="adamtune-bench-no-template-"))
        cold_walls.append(time_search(with_templates(env, empty), False)[0] / imports_all)
        shutil.rmtree(empty, ignore_errors=True)
    shutil.rmtree(templates, ignore_errors=True)
    import torch

    print(
        f"machine: {platform.platform()}, {platform.machine()}, {os.cpu_count()} cores, python "
        f"{platform.python_version()}, torch {torch.__version__}, OMP_NUM_THREADS={args.threads}"
    )
    print(f"command: python -m adamtune {' '.join(COMMAND)} (fresh directory, both stores created)")
    print("round  import all (s)  search (s)  ratio  import torch (s)  to trial 0 (s)  ratio")
    for i, (imports_all, wall, imports_torch, to_first) in enumerate(rows):
        print(
            f"{i:5d}  {imports_all:14.2f}  {wall:10.2f}  {wall / imports_all:5.2f}  {imports_torch:16.2f}  "
            f"{to_first:14.2f}  {to_first / imports_torch:5.2f}"
        )
    end_ratio = statistics.median(wall / imports_all for imports_all, wall, _, _ in rows)
    first_ratio = statistics.median(to_first / imports_torch for _, _, imports_torch, to_first in rows)
    medians = [statistics.median(column) for column in zip(*rows, strict=True)]
    print(
        f"end to end, warm: median {end_ratio:.2f}x (search {medians[1]:.2f} s vs import torch, optuna, mlflow "
        f"{medians[0]:.2f} s), goal <= {END_TO_END_GOAL}x: {verdict(end_ratio, END_TO_END_GOAL)}"
    )
    print(
        f"end to end, cold (the machine's first search: no MLflow schema template yet): median "
        f"{statistics.median(cold_walls):.2f}x, goal <= {END_TO_END_GOAL}x: "
        f"{verdict(statistics.median(cold_walls), END_TO_END_GOAL)}"
    )
    print(
        f"first trial: median {first_ratio:.2f}x (launch to trial 0 {medians[3]:.2f} s vs import torch "
        f"{medians[2]:.2f} s), goal <= {FIRST_TRIAL_GOAL}x: {verdict(first_ratio, FIRST_TRIAL_GOAL)}"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
