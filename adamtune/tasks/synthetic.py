"""``synthetic``: a small generated classification problem for fast tests and smoke runs.

Gaussian clusters in 20 dimensions, 4 classes, 2,000 samples, generated from a fixed seed, so the
data and the split are identical on every call. A one-hidden-layer MLP learns it in a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adamtune.tasks.base import Split, Task, TaskData

N_FEATURES, N_CLASSES, N_SAMPLES = 20, 4, 2000


def load_data(data_dir: Path | None = None) -> TaskData:
    """Generate the data deterministically (``data_dir`` is unused: nothing is downloaded)."""
    generator = torch.Generator().manual_seed(1234)
    centers = torch.randn(N_CLASSES, N_FEATURES, generator=generator) * 1.5
    y = torch.randint(0, N_CLASSES, (N_SAMPLES,), generator=generator)
    x = centers[y] + torch.randn(N_SAMPLES, N_FEATURES, generator=generator) * 2.0
    n_train, n_val = int(N_SAMPLES * 0.6), int(N_SAMPLES * 0.2)
    return TaskData(
        train=Split(x[:n_train], y[:n_train]),
        val=Split(x[n_train : n_train + n_val], y[n_train : n_train + n_val]),
        test=Split(x[n_train + n_val :], y[n_train + n_val :]),
    )


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(N_FEATURES, 64), nn.ReLU(), nn.Linear(64, N_CLASSES))


def make_task() -> Task:
    return Task(
        name="synthetic",
        description="Generated Gaussian clusters (20 features, 4 classes) with a small MLP; for tests",
        load_data=load_data,
        make_model=make_model,
        default_epochs=5,
        default_batch_size=100,
        dataset="generated: 1,200 train / 400 val / 400 test, 20 features, 4 classes",
        model="MLP 20-64-4 (ReLU)",
        extra={"data": "generated in memory; nothing to download"},
    )
