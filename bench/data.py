"""Benchmark: adamtune's in-memory batching + batched augmentation vs a torchvision-style per-sample pipeline.

Two modes:

``throughput`` (default; runs anywhere)
    Random uint8 CIFAR-shaped data (no real data needed). The same number of steps of the same model is
    run through two input pipelines:

    * **adamtune**: the whole split is one uint8 tensor on the device; a step slices a ``randperm``
      permutation, then applies the ``cifar10`` task's ``prepare`` (normalise) and ``augment`` (random
      crop with 4-pixel padding + horizontal flip) to the whole batch at once.
    * **per-sample**: a ``torch.utils.data.Dataset`` whose ``__getitem__`` does what torchvision's
      ``ToTensor() -> RandomCrop(32, padding=4) -> RandomHorizontalFlip() -> Normalize(mean, std)``
      does, one image at a time, batched by a ``DataLoader`` (``shuffle=True``, ``num_workers=0``).
      torchvision is not installed here, so the transforms are written out by hand, op for op.

    It prints images/second for the input pipeline alone (best of ``--repeats``; by wall clock and per
    CPU-second, the latter robust to other load on a shared machine) and end to end (pipeline + forward,
    backward and an Adam step of the ``cifar10`` model), and the ratios.

``epoch`` (meant for CUDA)
    Seconds per CIFAR-10 epoch (45,000 training images, validation on 5,000) of the ``cifar10`` task
    with ``adamtune.training.train.train`` at the task's defaults, on random data of the real shapes. The first
    epoch includes warm-up (cuDNN autotuning, allocator); later epochs are steady state.

Usage::

    python bench/data.py                       # throughput on CPU (about a minute on 2 cores)
    python bench/data.py --mode epoch --device cuda --epochs 3
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable, Iterator

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from adamtune.core.space import AdamParams
from adamtune.tasks.base import Split, Task, TaskData
from adamtune.tasks.cifar import CIFAR10_MEAN, CIFAR10_STD
from adamtune.tasks.cifar import make_task as make_cifar10_task
from adamtune.training.optim import make_optimizer
from adamtune.training.train import train


def random_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 images (N, 3, 32, 32) and labels in 0..9."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8), torch.randint(
        0, 10, (n,), generator=g
    )


class PerSampleCifar(Dataset):
    """torchvision-style CIFAR-10 dataset: images stored HWC uint8, transformed one at a time.

    ``__getitem__`` mirrors ``ToTensor()``, ``RandomCrop(32, padding=4)`` (zero padding, torchvision's
    default), ``RandomHorizontalFlip()`` and ``Normalize(CIFAR10_MEAN, CIFAR10_STD)`` on tensors.
    """

    def __init__(self, images_nchw: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images_nchw.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, like CIFAR10.data
        self.labels = labels.tolist()
        self.mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self.std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1).float().div(255)  # ToTensor
        image = F.pad(image, (4, 4, 4, 4))  # RandomCrop(32, padding=4)
        top = int(torch.randint(0, 9, (1,)).item())
        left = int(torch.randint(0, 9, (1,)).item())
        image = image[:, top : top + 32, left : left + 32]
        if torch.rand(1).item() < 0.5:  # RandomHorizontalFlip
            image = image.flip(-1)
        return (image - self.mean) / self.std, self.labels[index]  # Normalize


def adamtune_batches(
    task: Task, x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """adamtune's loop: randperm slices of device tensors, then batched prepare + augment."""
    generator = torch.Generator(device=x.device).manual_seed(seed)
    order = torch.randperm(len(y), device=x.device, generator=generator)
    assert task.prepare is not None and task.augment is not None
    for step in range(steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        yield task.augment(task.prepare(x[index]), generator), y[index]


def per_sample_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, steps: int, seed: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The per-sample pipeline: Dataset + DataLoader (num_workers=0), copied to ``device`` per batch."""
    torch.manual_seed(seed)
    loader = DataLoader(PerSampleCifar(x, y), batch_size=batch_size, shuffle=True, num_workers=0, drop_last=True)
    for step, (images, labels) in enumerate(loader):
        if step == steps:
            break
        yield images.to(device), labels.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    step: Callable[[torch.Tensor, torch.Tensor], None] | None,
) -> tuple[int, float, float]:
    """Images consumed, wall seconds and process CPU seconds of iterating ``batches`` (running ``step``).

    CPU seconds are what a pipeline costs regardless of other load on the machine (with one thread;
    with more, idle-waiting threads may count too).
    """
    sync(device)
    started, cpu_started = time.perf_counter(), time.process_time()
    images = 0
    for x, y in batches:
        if step is not None:
            step(x, y)
        images += len(y)
    sync(device)
    return images, time.perf_counter() - started, time.process_time() - cpu_started


def make_step(task: Task, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """Forward, backward and an Adam step of a fresh ``task`` model (channels_last on CUDA, like train)."""
    torch.manual_seed(0)
    model = task.make_model().to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer, _ = make_optimizer(model.parameters(), AdamParams())

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = task.loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def throughput(args: argparse.Namespace, device: torch.device) -> None:
    task = make_cifar10_task()
    print(
        f"throughput on {describe(device)}: input only: batch {args.pipeline_batch_size}, "
        f"best of {args.repeats} x {args.pipeline_steps} steps; with model: batch {args.batch_size}, "
        f"{args.steps} steps after 1 warm-up step"
    )
    results: dict[str, dict[str, float]] = {}
    for name in ("adamtune (batched, in memory)", "per-sample Dataset+DataLoader"):
        rates = {}
        for key, batch_size, steps in (
            ("pipeline", args.pipeline_batch_size, args.pipeline_steps),
            ("end_to_end", args.batch_size, args.steps),
        ):
            x, y = random_cifar(batch_size * steps)
            x_dev, y_dev = x.to(device), y.to(device)
            if name.startswith("adamtune"):
                batches = lambda n, x=x_dev, y=y_dev, b=batch_size: adamtune_batches(task, x, y, b, n, 0)  # noqa: E731
            else:
                batches = lambda n, x=x, y=y, b=batch_size: per_sample_batches(x, y, b, n, 0, device)  # noqa: E731
            step = make_step(task, device) if key == "end_to_end" else None
            timed(batches(1), device, step)  # warm-up (allocator, cuDNN, lazy init)
            # best of several repeats: a shared machine adds noise (one repeat with the model: it dominates)
            runs = [timed(batches(steps), device, step) for _ in range(args.repeats if step is None else 1)]
            rates[key] = max(images / wall for images, wall, _ in runs)
            rates[key + "_cpu"] = max(images / max(cpu, 1e-9) for images, _, cpu in runs)
        results[name] = rates
    header = ("input only (img/s)", "input (img/CPU-s)", "with model (img/s)")
    print(f"{'pipeline':32s} " + " ".join(f"{h:>20s}" for h in header))
    for name, r in results.items():
        print(f"{name:32s} {r['pipeline']:20,.0f} {r['pipeline_cpu']:20,.0f} {r['end_to_end']:20,.1f}")
    ours, theirs = results.values()
    print(
        f"ratio adamtune / per-sample: input only {ours['pipeline'] / theirs['pipeline']:.1f}x wall, "
        f"{ours['pipeline_cpu'] / theirs['pipeline_cpu']:.1f}x CPU; "
        f"end to end {ours['end_to_end'] / theirs['end_to_end']:.2f}x"
    )


def epoch_time(args: argparse.Namespace, device: torch.device) -> None:
    task = make_cifar10_task()
    train_x, train_y = random_cifar(args.train_size, seed=1)
    val_x, val_y = random_cifar(max(args.train_size // 9, 1), seed=2)
    data = TaskData(Split(train_x, train_y), Split(val_x, val_y), Split(val_x[:0], val_y[:0])).to(device)
    stamps: list[float] = []
    started = time.perf_counter()
    train(
        task,
        data,
        AdamParams(),
        device=device,
        epochs=args.epochs,
        batch_size=task.default_batch_size,
        seed=0,
        on_epoch=lambda _: stamps.append(time.perf_counter()),  # after validation's .item(): synchronised
    )
    durations = [b - a for a, b in zip([started, *stamps], stamps, strict=False)]
    print(
        f"cifar10 epoch on {describe(device)}: {args.train_size:,} train + {len(val_y):,} val images, "
        f"batch {task.default_batch_size}"
    )
    for i, seconds in enumerate(durations, 1):
        print(f"  epoch {i}: {seconds:.2f} s ({args.train_size / seconds:,.0f} train img/s)")
    if len(durations) > 1:
        steady = sum(durations[1:]) / len(durations[1:])
        print(f"steady state: {steady:.2f} s/epoch; a default 10-epoch trial is about {10 * steady:.0f} s")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("throughput", "epoch"), default="throughput")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="throughput mode, with the model")
    parser.add_argument("--pipeline-batch-size", type=int, default=512, help="throughput mode, input only")
    parser.add_argument("--steps", type=int, default=6, help="end-to-end steps per pipeline (throughput mode)")
    parser.add_argument("--pipeline-steps", type=int, default=20, help="input-only steps per pipeline")
    parser.add_argument("--repeats", type=int, default=5, help="input-only timings: best of this many")
    parser.add_argument("--epochs", type=int, default=3, help="epoch mode: epochs to time")
    parser.add_argument("--train-size", type=int, default=45_000, help="epoch mode: training images")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}")
    if args.mode == "throughput":
        throughput(args, device)
    else:
        epoch_time(args, device)


if __name__ == "__main__":
    main()
