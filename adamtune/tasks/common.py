"""Pieces the built-in dataset tasks share: the validation split, image normalisation, augmentation.

All of it is batched tensor code that runs on whatever device its input lives on; nothing here loops
over samples in Python.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from adamtune.core.folds import Fold, validation_size
from adamtune.tasks.base import Split, TaskData

SPLIT_SEED = 0  # fixed: every process, every run, carves the same validation set


def split_train_val(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor
) -> TaskData:
    """Carve a validation split from the training set with :data:`SPLIT_SEED`; keep the test set apart.

    Deterministic: a seeded ``randperm`` picks the validation indices (see :func:`validation_size`);
    both parts keep the original order of their samples.
    """
    n = len(train_y)
    n_val = validation_size(n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    val_index, train_index = order[:n_val].sort().values, order[n_val:].sort().values
    return TaskData(
        train=Split(train_x[train_index], train_y[train_index]),
        val=Split(train_x[val_index], train_y[val_index]),
        test=Split(test_x, test_y),
    )


def on_fold(data: TaskData, fold: Fold) -> TaskData:
    """``data`` with its training and validation rows pooled and split again as ``fold`` draws them.

    The validation part keeps the size of ``data.val``; it is stratified by label when the labels are one
    integer class per row (classification), a plain seeded split otherwise; the test split is ``data.test``
    itself, untouched. The pooled rows are indexed where they live (on the device), nothing per sample.
    """
    x = torch.cat([data.train.x, data.val.x])
    y = torch.cat([data.train.y, data.val.y])
    classes = y.dim() == 1 and not y.is_floating_point() and not y.is_complex()
    train_index, val_index = fold.split(len(y), val_size=len(data.val), labels=y.cpu().numpy() if classes else None)
    train_index_t = torch.tensor(train_index, device=y.device)
    val_index_t = torch.tensor(val_index, device=y.device)
    return TaskData(
        train=Split(x[train_index_t], y[train_index_t]), val=Split(x[val_index_t], y[val_index_t]), test=data.test
    )


class Normalize:
    """``prepare`` for uint8 images: to float32 in [0, 1], then ``(x - mean) / std`` per channel.

    Input is (B, C, H, W) uint8 with ``len(mean) == C``, or (B, H, W) for one channel (a channel axis is
    added). With ``flatten=True`` the output is (B, C*H*W), for fully connected models. The per-channel
    constants are cached per device, so a batch costs no host-to-device copy.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], *, flatten: bool = False) -> None:
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError("mean and std need one entry per channel, std > 0")
        self.mean, self.std, self.flatten = tuple(mean), tuple(std), flatten
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:
            shape = (1, len(self.mean), 1, 1)
            scale = torch.tensor([1 / (255 * s) for s in self.std], device=device).view(shape)
            shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)], device=device).view(shape)
            self._constants[device] = scale, shift
        return self._constants[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        scale, shift = self._on(x.device)
        out = x.float().mul_(scale).sub_(shift)
        return out.flatten(1) if self.flatten else out

    def __getstate__(self) -> dict:
        return {"mean": self.mean, "std": self.std, "flatten": self.flatten, "_constants": {}}


def crop_flip(x: torch.Tensor, generator: torch.Generator, *, padding: int = 4, mode: str = "reflect") -> torch.Tensor:
    """Random crop with ``padding`` + random horizontal flip of a (B, C, H, W) float batch, batched.

    Each image is padded by ``padding`` pixels (``mode``: ``"reflect"`` or ``"constant"`` for zeros),
    a random H x W window is cut out of it (shifts uniform in ``[0, 2*padding]`` per axis, one draw per
    image), and it is mirrored left-right with probability 1/2. This is torchvision's
    ``RandomCrop(H, padding)`` + ``RandomHorizontalFlip()``, done with one indexed copy for the whole batch.
    All randomness comes from ``generator`` (drawn on its device); the output has ``x``'s shape, dtype,
    device and memory format (channels_last is kept). An empty batch is returned unchanged.
    """
    b, c, h, w = x.shape
    if b == 0:
        return x
    draws = 2 * padding + 1
    dy = torch.randint(0, draws, (b,), generator=generator, device=generator.device).to(x.device)
    dx = torch.randint(0, draws, (b,), generator=generator, device=generator.device).to(x.device)
    flip = (torch.rand(b, generator=generator, device=generator.device) < 0.5).to(x.device)
    padded = F.pad(x, (padding,) * 4, mode=mode) if padding else x
    # Mirroring the padded image mirrors the window and its horizontal shift: the same distribution.
    padded = torch.where(flip[:, None, None, None], padded.flip(3), padded)
    # A strided view of every window of every image, (B, dy, dx, C, H, W); one index picks each image's.
    s_b, s_c, s_h, s_w = padded.stride()
    windows = padded.as_strided((b, draws, draws, c, h, w), (s_b, s_h, s_w, s_c, s_h, s_w))
    out = windows[torch.arange(b, device=x.device), dy, dx]
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out
