"""What adamtune costs on top of training: ``adamtune search`` against a bare PyTorch loop.

Runs ``adamtune search --task digits --n-trials N --pruner none`` (Optuna + SQLite + MLflow's default
store, one worker) in a fresh directory, then retrains exactly the same configurations (the settings,
seeds and epochs each trial recorded) in a plain PyTorch loop with no Optuna or MLflow, and prints:

* steady-state ratio: sum of the search's trial durations (from Optuna's timestamps, which cover
  sampling, MLflow logging and storage writes inside each trial) plus the gaps between trials,
  i.e. first trial start to last trial end, over the bare loop's time (goal: at most 1.10);
* end-to-end ratio: the whole command's wall time, including interpreter start, imports and creating
  the two databases, over the bare loop's time.

Usage: ``python bench/overhead.py [--trials 20]``. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-bench-"))
    try:
        command = [
            shutil.which("adamtune") or "adamtune",
            "search",
            "--task",
            "digits",
            "--n-trials",
            str(args.trials),
            "--pruner",
            "none",
            "--seed",
            "0",
        ]
        started = time.perf_counter()
        subprocess.run(command, cwd=workdir, check=True, capture_output=True)
        end_to_end = time.perf_counter() - started
        study = optuna.load_study(study_name="digits", storage=f"sqlite:///{workdir}/adamtune.db")
        trials = study.trials
        steady = (trials[-1].datetime_complete - trials[0].datetime_start).total_seconds()
        data = digits.load_data(None)
        bare = 0.0
        for trial in trials:
            epochs = len(trial.user_attrs[CURVES_ATTR]["val_loss"])
            params = AdamParams.from_dict(trial.user_attrs[PARAMS_ATTR])
            bare += bare_training(params, trial.user_attrs[SEED_ATTR], epochs, 32, data)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"digits, {len(trials)} trials, pruner none, one worker, tracking to MLflow's default store")
    print(f"bare PyTorch loop:            {bare:7.2f} s")
    print(f"adamtune search, steady state: {steady:7.2f} s   ratio {steady / bare:.3f}  (goal <= 1.10)")
    print(f"adamtune search, end to end:   {end_to_end:7.2f} s   ratio {end_to_end / bare:.3f}  (incl. start-up)")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
