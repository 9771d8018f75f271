"""Batched ÷ sequential trials per second: K trials trained as one vectorised model vs one after another.

For each workload and each K, every round trains the same K configurations (K different Adam settings,
seeds 0..K-1, ``--epochs`` epochs) twice, side by side: once with ``batched.train_batched`` (one model of
K stacked copies) and once as K ``train.train`` calls; which goes first alternates between rounds. The
result is the median over rounds of the per-round ratio (timing on a shared machine drifts between
minutes, so a ratio of neighbours is steadier than a ratio of medians). It measures the trainer only:
no Optuna, no MLflow (their per-trial cost is the same either way).

Workloads:

* ``digits``: the built-in task (1,077 training images, MLP 64-256-256-10, batch 32);
* ``mnist-mlp``: the paper's MLP (784-1000-1000-10, dropout 0.5, batch 128) on ``--mnist-train``
  generated 28×28 uint8 images (MNIST-sized model and inputs; generated, since MNIST cannot be
  downloaded on the benchmark machines; the speed does not depend on the pixels).

Usage: ``python bench/batched.py [--k 4,16] [--rounds 3] [--epochs 1] [--threads 1] [--device cpu]
[--mnist-train 4000] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from adamtune.core.space import AdamParams
from adamtune.tasks import resolve_task
from adamtune.tasks.base import Split, Task, TaskData
from adamtune.training.batched import BatchTrial, train_batched
from adamtune.training.train import train


def workloads(mnist_train: int, device: str) -> dict[str, tuple[Task, TaskData, int]]:
    digits = resolve_task("digits")
    mlp = resolve_task("mnist-mlp")
    generator = torch.Generator().manual_seed(0)

    def images(n: int) -> Split:
        x = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=generator)
        return Split(x, torch.randint(0, 10, (n,), generator=generator))

    mnist = TaskData(images(mnist_train), images(1000), images(1000))
    return {
        "digits": (digits, digits.load_data(None).to(device), digits.default_batch_size),
        "mnist-mlp": (mlp, mnist.to(device), mlp.default_batch_size),
    }


def settings(k: int) -> list[AdamParams]:
    """K different, sane Adam settings (the first is Adam's defaults)."""
    return [AdamParams(lr=1e-3 * (1.5 ** (i % 5)), beta1=0.9 - 0.02 * (i % 3), decay=1e-4 * (i % 2)) for i in range(k)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_batched(task: Task, data: TaskData, k: int, epochs: int, batch: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    trials = [BatchTrial(s, seed) for seed, s in enumerate(settings(k))]
    train_batched(task, data, trials, device=device, epochs=epochs, batch_size=batch)
    sync(device)
    return time.perf_counter() - started


def time_sequential(task: Task, data: TaskData, k: int, epochs: int, batch: int, device: str) -> float:
    sync(device)
    started = time.perf_counter()
    for seed, s in enumerate(settings(k)):
        train(task, data, s, device=device, epochs=epochs, batch_size=batch, seed=seed)
    sync(device)
    return time.perf_counter() - started


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="4,16", help="batch sizes K, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both sides)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mnist-train", type=int, default=4000, help="generated MNIST-sized training images")
    parser.add_argument("--workloads", default="digits,mnist-mlp")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = [int(k) for k in args.k.split(",")]
    print(f"machine: {machine(args.device)}; device {args.device}, {args.threads} torch thread(s)")
    print(f"{args.epochs} epoch(s) per trial, {args.rounds} rounds, median of per-round ratios\n")
    print(f"{'workload':<10} {'K':>3} {'batched trials/s':>17} {'sequential trials/s':>20} {'ratio':>7}")
    results = []
    loads = workloads(args.mnist_train, args.device)
    for name in args.workloads.split(","):
        task, data, batch = loads[name]
        time_batched(task, data, 2, 1, batch, args.device)  # warm-up (allocator, kernels, lazy imports)
        time_sequential(task, data, 1, 1, batch, args.device)
        for k in ks:
            ratios, batched_s, sequential_s = [], [], []
            for r in range(args.rounds):
                order = (time_batched, time_sequential) if r % 2 == 0 else (time_sequential, time_batched)
                seconds = {fn: fn(task, data, k, args.epochs, batch, args.device) for fn in order}
                batched_s.append(seconds[time_batched])
                sequential_s.append(seconds[time_sequential])
                ratios.append(seconds[time_sequential] / seconds[time_batched])
            row = {
                "workload": name,
                "k": k,
                "batched_trials_per_s": k / statistics.median(batched_s),
                "sequential_trials_per_s": k / statistics.median(sequential_s),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
            results.append(row)
            print(
                f"{name:<10} {k:>3} {row['batched_trials_per_s']:>17.2f} {row['sequential_trials_per_s']:>20.2f} "
                f"{row['ratio']:>6.2f}x",
                flush=True,
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": machine(args.device), "args": vars(args) | {"json": str(args.json)}, "results": results},
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
