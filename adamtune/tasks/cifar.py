"""CIFAR-10 tasks: ``cifar10`` (a fast airbench-style CNN) and ``cifar10-paper`` (Kingma & Ba's c64-c64-c128-1000).

Both load the images once as uint8 (N, 3, 32, 32) tensors (about 150 MB for the full training set, cheap
to keep on a GPU) and normalise per batch in ``prepare``. ``cifar10`` augments per batch on the device
with a random 4-pixel reflect-padded crop and a horizontal flip; ``cifar10-paper`` does not augment, as
in the paper. Validation: 5,000 training images picked with a fixed
seed (10% of the training set for smaller copies); the 10,000 test images are held out.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from adamtune.data.datasets import CIFAR10, CIFAR10_FOLDER, load_cifar10
from adamtune.tasks.base import Task, TaskData
from adamtune.tasks.common import Normalize, crop_flip, split_train_val

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_DATASET = "CIFAR-10: 45,000 train / 5,000 val (seeded) / 10,000 test, 32x32 RGB uint8, 10 classes"


def load_data(data_dir: Path) -> TaskData:
    """CIFAR-10 from ``data_dir`` (downloaded on first use), split into train/val/test."""
    raw = load_cifar10(data_dir)
    return split_train_val(raw.train_x, raw.train_y, raw.test_x, raw.test_y)


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop (4-pixel reflect padding) and horizontal flip, batched on ``x``'s device."""
    return crop_flip(x, generator, padding=4, mode="reflect")


# ------------------------------------------------------------------------------------------ cifar10 (fast)


class ConvGroup(nn.Module):
    """airbench's block: conv3x3 -> maxpool 2 -> BN -> GELU -> conv3x3 -> BN -> GELU (halves H and W)."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding="same", bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding="same", bias=False)
        self.norm2 = nn.BatchNorm2d(channels_out)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


class FastCifarNet(nn.Module):
    """An airbench94-style CNN: a 32-channel conv stem, groups of 64, 256, 256 channels, max pool, linear.

    Differences from airbench94: a learned 3x3 stem instead of the data-dependent 2x2 whitening layer (so
    ``make_model`` needs no data), plain BatchNorm with learnable scale, and no output scaling. About 2.0 M
    parameters; only convolutions, BatchNorm and pooling, so channels_last runs end to end.
    """

    def __init__(self, widths: tuple[int, int, int] = (64, 256, 256), stem: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem, 3, padding="same", bias=False), nn.BatchNorm2d(stem), nn.GELU())
        self.groups = nn.Sequential(
            ConvGroup(stem, widths[0]), ConvGroup(widths[0], widths[1]), ConvGroup(widths[1], widths[2])
        )
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(widths[2], classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.groups(self.stem(x))).flatten(1))


def make_task() -> Task:
    """The ``cifar10`` task: FastCifarNet, 10 epochs of batch 512."""
    return Task(
        name="cifar10",
        description="CIFAR-10 with a fast airbench-style CNN (BatchNorm + GELU): many short trials on a GPU",
        load_data=load_data,
        make_model=FastCifarNet,
        default_epochs=10,
        default_batch_size=512,
        prepare=Normalize(CIFAR10_MEAN, CIFAR10_STD),
        augment=augment,
        dataset=_DATASET,
        model="conv32 stem, 3 x [conv-pool-BN-GELU-conv-BN-GELU] 64-256-256, global max pool, linear (2.0 M params)",
        extra={
            "source": CIFAR10.url,
            "md5": CIFAR10.md5,
            "layout": f"<data-dir>/{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch}} or <data-dir>/{CIFAR10.filename}",
            "augmentation": "random crop, 4px reflect padding + horizontal flip (batched, on device)",
        },
    )


# --------------------------------------------------------------------------------- cifar10-paper (Adam §6.3)


class PaperCifarNet(nn.Module):
    """Kingma & Ba (2015), section 6.3: c64-c64-c128-1000.

    Three stages of 5x5 convolution + ReLU + 3x3 max pooling with stride 2 (64, 64, 128 channels;
    32 -> 16 -> 8 -> 4 pixels), a fully connected layer of 1000 ReLUs, and a linear classifier. The paper
    applies dropout to the input and to the fully connected layer without giving rates; we use 0.2 and
    0.5. The paper's ZCA whitening is replaced by per-channel normalisation.
    """

    def __init__(self, input_dropout: float = 0.2, hidden_dropout: float = 0.5, classes: int = 10) -> None:
        super().__init__()

        def stage(channels_in: int, channels_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )

        self.features = nn.Sequential(nn.Dropout(input_dropout), stage(3, 64), stage(64, 64), stage(64, 128))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 4 * 4, 1000),
            nn.ReLU(),
            nn.Dropout(hidden_dropout),
            nn.Linear(1000, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def make_paper_task() -> Task:
    """The ``cifar10-paper`` task: the Adam paper's CNN, 10 epochs of batch 128 (the paper's batch size)."""
    return Task(
        name="cifar10-paper",
        description="CIFAR-10 with the Adam paper's CNN c64-c64-c128-1000 (Kingma & Ba 2015, section 6.3)",
        load_data=load_data,
        make_model=PaperCifarNet,
        default_epochs=10,
        default_batch_size=128,
        prepare=Normalize(CIFAR10_MEAN, CIFAR10_STD),
        dataset=_DATASET,
        model="3 x [conv5x5-ReLU-maxpool3/2] 64-64-128, FC 1000 ReLU, linear; dropout 0.2 input, 0.5 FC (2.4 M params)",
        extra={
            "source": CIFAR10.url,
            "md5": CIFAR10.md5,
            "layout": f"<data-dir>/{CIFAR10_FOLDER}/{{data_batch_1..5,test_batch}} or <data-dir>/{CIFAR10.filename}",
            "augmentation": "none (as in the paper; dropout regularises)",
            "paper": "Adam: A Method for Stochastic Optimization, Kingma & Ba, ICLR 2015, figure 3",
        },
    )
