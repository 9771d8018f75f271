"""MNIST tasks of the Adam paper: ``mnist-logreg`` (multiclass logistic regression) and ``mnist-mlp``.

The digits are loaded once as uint8 (N, 28, 28) tensors and normalised per batch in ``prepare`` to
flattened 784-dimensional float vectors. No augmentation, as in the paper. Validation: 5,000 training
digits picked with a fixed seed (10% for smaller copies); the 10,000 test digits are held out.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from adamtune.data.datasets import MNIST_FILES, MNIST_MIRROR, MNIST_RAW, load_mnist
from adamtune.tasks.base import Task, TaskData
from adamtune.tasks.common import Normalize, split_train_val

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
_DATASET = "MNIST: 55,000 train / 5,000 val (seeded) / 10,000 test, 28x28 grey uint8, 10 classes"
_EXTRA = {
    "source": f"{MNIST_MIRROR} ({', '.join(r.filename for r in MNIST_FILES.values())})",
    "layout": f"<data-dir>/{MNIST_RAW.as_posix()}/ or <data-dir>/: the 4 IDX files, gzipped or raw",
}


def load_data(data_dir: Path) -> TaskData:
    """MNIST from ``data_dir`` (downloaded on first use), split into train/val/test."""
    raw = load_mnist(data_dir)
    return split_train_val(raw.train_x, raw.train_y, raw.test_x, raw.test_y)


def make_logreg_model() -> nn.Module:
    """Multiclass logistic regression: one linear layer 784 -> 10 (softmax is in the loss)."""
    return nn.Linear(28 * 28, 10)


def make_mlp_model(hidden: int = 1000, dropout: float = 0.5) -> nn.Module:
    """The paper's MLP: two fully connected hidden layers of 1000 ReLUs, dropout 0.5 after each."""
    return nn.Sequential(
        nn.Linear(28 * 28, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, 10),
    )


def make_logreg_task() -> Task:
    """The ``mnist-logreg`` task (Kingma & Ba 2015, section 6.1, figure 1 left; without the L2 penalty)."""
    return Task(
        name="mnist-logreg",
        description="MNIST with multiclass logistic regression (Adam paper, section 6.1)",
        load_data=load_data,
        make_model=make_logreg_model,
        default_epochs=10,
        default_batch_size=128,
        prepare=Normalize(MNIST_MEAN, MNIST_STD, flatten=True),
        dataset=_DATASET,
        model="logistic regression: linear 784 -> 10 (7,850 params)",
        extra=dict(_EXTRA),
    )


def make_mlp_task() -> Task:
    """The ``mnist-mlp`` task (Kingma & Ba 2015, section 6.2, figure 2)."""
    return Task(
        name="mnist-mlp",
        description="MNIST with the Adam paper's MLP: two hidden layers of 1000 ReLUs, dropout (section 6.2)",
        load_data=load_data,
        make_model=make_mlp_model,
        default_epochs=10,
        default_batch_size=128,
        prepare=Normalize(MNIST_MEAN, MNIST_STD, flatten=True),
        dataset=_DATASET,
        model="MLP 784-1000-1000-10, ReLU, dropout 0.5 after each hidden layer (1.8 M params)",
        extra=dict(_EXTRA),
    )
