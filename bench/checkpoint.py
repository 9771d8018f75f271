"""What checkpoints cost: ``cifar10``'s model (FastCifarNet, 2.0 M parameters) trained on the CPU with and
without checkpointing, side by side in one run, on generated CIFAR-shaped data (uint8 32x32x3 images;
timing does not depend on what the pixels show).

Each round trains the same settings and seed twice through adamtune's own trial path (a
``TrialContext`` and the built-in trainer): once with no checkpoint store, once saving every epoch (the
automatic interval's choice for a trial expected to take over a minute, which every cifar10 trial on a
CPU does) to Optuna's ``FileSystemArtifactStore`` in a temporary directory; the order alternates between
rounds. It prints, per round and as medians:

* the time per save (capture the states, serialise, write, record the pointer: here a no-op; in a
  search one small SQL update more) and the checkpoint's size on disk;
* the share of trial time spent saving at the default interval, measured directly (saving time over the
  checkpointed run's time), and the side-by-side difference of the two runs' times (noisier: a shared
  2-core VM drifts);
* the same share projected for a real cifar10 epoch (45,000 training images, measured per-image time):
  what a search on this machine would pay. The goal is under 2%.

Usage: ``python bench/checkpoint.py [--images 1024] [--epochs 3] [--rounds 2] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from adamtune.core.space import AdamParams
from adamtune.tasks import resolve_task
from adamtune.tasks.base import Split, TaskData
from adamtune.training.checkpoint import TrialCheckpoints, open_store
from adamtune.training.context import TrialContext
from adamtune.training.runner import run_in_context

CIFAR10_TRAIN_IMAGES = 45_000
GOAL = 0.02


def generated(images: int) -> TaskData:
    g = torch.Generator().manual_seed(0)

    def split(n: int) -> Split:
        return Split(
            torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8),
            torch.randint(0, 10, (n,), generator=g),
        )

    return TaskData(train=split(images), val=split(max(images // 8, 64)), test=split(64))


def one_run(task, data: TaskData, epochs: int, store_dir: Path | None) -> tuple[float, TrialContext]:  # type: ignore[no-untyped-def]
    checkpoints = None
    if store_dir is not None:
        store, prefix = open_store(str(store_dir))
        checkpoints = TrialCheckpoints(store, prefix, "bench", 0, {"bench": 1}, lambda pointer: None)
    context = TrialContext(
        params=AdamParams(),
        n_epochs=epochs + 1,  # the last epoch is never saved: one more, so every measured epoch saves
        batch_size=task.default_batch_size,
        seed=0,
        device="cpu",
        objective="loss",
        checkpoints=checkpoints,
        checkpoint_every=1 if store_dir is not None else 0,
    )
    started = time.perf_counter()
    run_in_context(task, data, context)
    return time.perf_counter() - started, context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="generated training images per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task = resolve_task("cifar10")
    data = generated(args.images)
    rows = []
    for round_number in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            order = [None, Path(tmp)] if round_number % 2 == 0 else [Path(tmp), None]
            timed = {}
            for store_dir in order:
                seconds, context = one_run(task, data, args.epochs, store_dir)
                timed["with" if store_dir is not None else "without"] = (seconds, context)
                if store_dir is not None:
                    disk = sum(p.stat().st_size for p in Path(tmp).iterdir())
        plain, (saved_seconds, context) = timed["without"][0], timed["with"]
        per_save = context.checkpoint_seconds / context.checkpoints_saved
        per_epoch = (saved_seconds - context.checkpoint_seconds) / (args.epochs + 1)
        full_epoch = per_epoch * CIFAR10_TRAIN_IMAGES / args.images
        rows.append(
            {
                "per_save": per_save,
                "bytes": context.checkpoint_bytes,
                "disk": disk,
                "share": context.checkpoint_seconds / saved_seconds,
                "side_by_side": (saved_seconds - plain) / plain,
                "projected": per_save / (full_epoch + per_save),
                "per_epoch": per_epoch,
                "full_epoch": full_epoch,
            }
        )
        row = rows[-1]
        print(
            f"round {round_number + 1}: epoch of {args.images} images {row['per_epoch']:.2f} s, "
            f"save {per_save * 1000:.0f} ms "
            f"({row['bytes'] / 1e6:.1f} MB, {row['disk'] / 1e6:.1f} MB on disk for the lineage), "
            f"share {row['share']:.2%} measured, {row['side_by_side']:+.2%} side by side, "
            f"{row['projected']:.3%} projected for a 45,000-image epoch"
        )

    def median(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}, {args.threads} threads"
    )
    print(
        f"median: save {median('per_save') * 1000:.0f} ms, checkpoint {median('bytes') / 1e6:.1f} MB "
        f"(at most 2 per unfinished trial: {2 * median('bytes') / 1e6:.1f} MB), "
        f"share at every epoch on {args.images}-image epochs {median('share'):.2%} "
        f"(side by side {median('side_by_side'):+.2%}), projected for a real cifar10 epoch "
        f"({median('full_epoch'):.0f} s here) {median('projected'):.3%}"
    )
    met = median("projected") < GOAL
    print(f"goal: under {GOAL:.0%} of trial time at the default interval: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
