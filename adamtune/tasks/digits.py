"""``digits``: scikit-learn's bundled 8×8 handwritten digits (real data, works offline) with an MLP.

1,797 images of 10 classes ship inside scikit-learn, so this task needs no download. The split is a
stratified, seeded shuffle: 60% train, 20% validation, 20% test (held out). Pixels (0..16) are scaled
to [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adamtune.tasks.base import Split, Task, TaskData

SPLIT_SEED = 0


def load_data(data_dir: Path | None = None) -> TaskData:
    """Load the digits from scikit-learn (``data_dir`` is unused: the data ships with the library)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    index = torch.arange(len(y)).numpy()
    rest, test = train_test_split(index, test_size=0.2, random_state=SPLIT_SEED, stratify=digits.target)
    train, val = train_test_split(rest, test_size=0.25, random_state=SPLIT_SEED, stratify=digits.target[rest])
    pick = lambda idx: Split(x[idx], y[idx])  # noqa: E731
    return TaskData(train=pick(train), val=pick(val), test=pick(test))


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


def make_task() -> Task:
    return Task(
        name="digits",
        description="scikit-learn's 8x8 handwritten digits with a two-hidden-layer MLP (offline, real data)",
        load_data=load_data,
        make_model=make_model,
        default_epochs=20,
        default_batch_size=32,
        dataset="sklearn digits: 1,077 train / 360 val / 360 test, 8x8 grey, 10 classes",
        model="MLP 64-256-256-10 (ReLU)",
        extra={"data": "bundled with scikit-learn; nothing to download"},
    )
