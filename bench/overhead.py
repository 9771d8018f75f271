"""What adamtune costs on top of training: ``adamtune search`` against a bare PyTorch loop.

Runs ``adamtune search --task digits --n-trials N --pruner none`` (Optuna + SQLite + MLflow's default
store, one worker) in a fresh directory, then retrains exactly the same configurations (the settings,
seeds and epochs each trial recorded) in a plain PyTorch loop with no Optuna or MLflow, and prints:

* steady-state ratio: sum of the search's trial durations (from Optuna's timestamps, which cover
  sampling, MLflow logging and storage writes inside each trial) plus the gaps between trials,
  i.e. first trial start to last trial end, over the bare loop's time (goal: at most 1.10);
* end-to-end ratio: the whole command's wall time, including interpreter start, imports and creating
  the two databases, over the bare loop's time.

Timing on a shared 2-core VM drifts by up to 1.7x between minutes, so the bench alternates: each round
runs a search (fresh directory, seed = round) and then the bare loop on that round's configurations, and
the median of the per-round ratios is the result. Both sides use the same number of torch threads
(``--threads``, default 1: on 2 cores, a second OpenMP thread fights the search's bookkeeping threads and
turns the measurement into noise).

Usage: ``python bench/overhead.py [--trials 10] [--rounds 3] [--threads 1]``.
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

import optuna
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from adamtune.space import AdamParams
from adamtune.study import CURVES_ATTR, PARAMS_ATTR, SEED_ATTR
from adamtune.tasks import digits


def bare_training(params: AdamParams, seed: int, epochs: int, batch_size: int, data) -> float:  # type: ignore[no-untyped-def]
    """The plainest loop that does the same work as adamtune's trainer; returns seconds."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = digits.make_model()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2), eps=params.epsilon
    )
    scheduler = LambdaLR(optimizer, lambda step: 1.0 / (1.0 + params.decay * step))
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    with torch.no_grad():
        F.cross_entropy(model(data.val.x), data.val.y).item()  # the trainer's untrained evaluation
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.val.x)
            F.cross_entropy(logits, data.val.y).item()
            (logits.argmax(1) == data.val.y).float().mean().item()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits.load_data(None)
    bare_training(AdamParams(), 0, 1, 32, data)  # warm-up: first-call imports inside torch.optim
    rows = [measure_round(args.trials, seed, args.threads, data) for seed in range(args.rounds)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)")
    print(f"digits, {args.trials} trials per round, pruner none, one worker, tracking to MLflow's default store")
    print("round  bare (s)  search steady (s)  ratio  search end to end (s)  ratio")
    for i, (bare, steady, end_to_end) in enumerate(rows):
        print(
            f"{i:5d}  {bare:8.2f}  {steady:17.2f}  {steady / bare:5.3f}  {end_to_end:21.2f}  {end_to_end / bare:5.3f}"
        )
    steady_ratio = statistics.median(steady / bare for bare, steady, _ in rows)
    end_ratio = statistics.median(end / bare for bare, _, end in rows)
    print(f"median steady-state ratio {steady_ratio:.3f} (goal <= 1.10); end to end {end_ratio:.3f} (incl. start-up)")
    sys.stdout.flush()


def measure_round(n_trials: int, seed: int, threads: int, data) -> tuple[float, float, float]:  # type: ignore[no-untyped-def]
    """One search of ``n_trials`` then the bare loop on its configurations: (bare, steady, end to end) seconds."""
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-bench-"))
    try:
        command = [
            shutil.which("adamtune") or "adamtune",
            "search",
            "--task",
            "digits",
            "--n-trials",
            str(n_trials),
            "--pruner",
            "none",
            "--seed",
            str(seed),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        started = time.perf_counter()
        subprocess.run(command, cwd=workdir, check=True, capture_output=True, env=env)
        end_to_end = time.perf_counter() - started
        study = optuna.load_study(study_name="digits", storage=f"sqlite:///{workdir}/adamtune.db")
        trials = study.trials
        steady = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds()
        bare = 0.0
        for trial in trials:
            epochs = len(trial.user_attrs[CURVES_ATTR]["val_loss"])
            params = AdamParams.from_dict(trial.user_attrs[PARAMS_ATTR])
            bare += bare_training(params, trial.user_attrs[SEED_ATTR], epochs, 32, data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return bare, steady, end_to_end


if __name__ == "__main__":
    main()
