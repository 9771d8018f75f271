"""``tinylm``: a small decoder-only byte-level transformer on the Python standard library's own source.

Text
----
Every machine with Python has the same text offline: the ``.py`` files directly in
``sysconfig.get_paths()["stdlib"]`` (top-level modules only: no packages, no test suites, no
``site-packages``), read as bytes, in sorted order of file name. The text therefore depends on the
Python version (3.11.7 has 168 such files, 4.7 MB); :func:`corpus_digest` fingerprints the bytes used
so two machines can check they train on the same data.

Split, by file, with a fixed rule: the first 8 bytes of ``sha256(file name)`` as a big-endian integer,
mod 10, is 0 → test, 1 → validation, else train (:func:`split_of`). From each file the first
:data:`FILE_BYTES` bytes are used (so that no long file dominates a split), followed by a ``\\0``
separator byte; a split is its files' bytes concatenated in sorted order (3.11.7: train 973 KB from 137
files, validation 120 KB from 16, test 90 KB from 15). Each split is then cut into non-overlapping
windows of ``CONTEXT + 1`` bytes: the first ``CONTEXT`` are the input, the last ``CONTEXT`` (shifted by
one) the next-byte targets. Vocabulary: the 256 byte values.

Model
-----
GPT-2-shaped (nanoGPT's ``model.py``): learned token and position embeddings, ``LAYERS`` pre-LayerNorm
blocks of causal self-attention and a 4x GELU MLP, a final LayerNorm, and an output head tied to the
token embedding; biases in every Linear and LayerNorm; no dropout; init ``N(0, 0.02)`` with the residual
projections scaled by ``1/sqrt(2 * LAYERS)``. The loss is the mean next-byte cross-entropy in nats per
byte (= per token); perplexity is ``exp(loss)``.

Training (:func:`fit`, a :class:`~adamtune.tasks.loop.LoopTask`)
----------------------------------------------------------------
An epoch is a fixed amount of text, :data:`WINDOWS_PER_EPOCH` windows (262,144 tokens) whatever the
batch size, taken in order from an endless sequence of seeded permutations of the training windows
(:func:`epoch_batches`); 5 epochs see the 7,600 training windows about 1.3 times. After each epoch the
model is evaluated on ``trial.split`` (validation during the search, test during ``verify``) and
``loss`` (nats/token) and ``perplexity`` are reported, with ``train_loss`` and ``lr`` logged; the
untrained model's metrics are reported first (``ln 256 ≈ 5.55`` nats), the reference of the blow-up
rule and the score of a diverged trial. The optimizer comes from ``trial.make_optimizer(model)``, so
AdamW's weight decay skips biases and LayerNorm parameters (:func:`adamtune.training.optim.param_groups`).
"""

from __future__ import annotations

import hashlib
import math
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from adamtune.core.errors import DataError
from adamtune.tasks.loop import LoopTask

if TYPE_CHECKING:
    from adamtune.training.context import TrialContext

#: Tokens of context the model sees (and predicts) per window.
CONTEXT = 128
#: Bytes read from the start of each file.
FILE_BYTES = 8192
#: Model width, depth, heads.
WIDTH = 96
LAYERS = 3
HEADS = 3
VOCAB = 256
#: Separator written after each file, so no window spans two files unannounced.
SEPARATOR = b"\0"


def stdlib_dir() -> Path:
    """Where this Python's standard library lives (``sysconfig.get_paths()["stdlib"]``)."""
    return Path(sysconfig.get_paths()["stdlib"])


def source_files(root: Path | None = None) -> list[Path]:
    """The top-level ``*.py`` files of the standard library, sorted by name."""
    root = stdlib_dir() if root is None else root
    return sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: p.name)


def split_of(name: str) -> str:
    """The split a file belongs to: ``sha256(name) mod 10`` → 0 test, 1 val, otherwise train."""
    bucket = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % 10
    return {0: "test", 1: "val"}.get(bucket, "train")


def split_bytes(files: list[Path], file_bytes: int = FILE_BYTES) -> dict[str, bytes]:
    """The text of each split: the first ``file_bytes`` of each of its files, in order, each + :data:`SEPARATOR`."""
    parts: dict[str, list[bytes]] = {"train": [], "val": [], "test": []}
    for path in files:
        with open(path, "rb") as handle:
            parts[split_of(path.name)].append(handle.read(file_bytes) + SEPARATOR)
    return {name: b"".join(chunks) for name, chunks in parts.items()}


def corpus_digest(texts: dict[str, bytes]) -> str:
    """A short fingerprint of the bytes of every split (first 12 hex digits of their sha256)."""
    digest = hashlib.sha256()
    for name in sorted(texts):
        digest.update(name.encode() + b":" + texts[name])
    return digest.hexdigest()[:12]


def windows(text: bytes, context: int = CONTEXT) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping ``(inputs, targets)`` windows, both ``(n, context)`` int64; a short tail is dropped."""
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = (len(data) - 1) // context
    if n < 1:
        raise ValueError(f"{len(text)} bytes is less than one window of {context + 1}")
    x = data[: n * context].view(n, context)
    y = data[1 : n * context + 1].view(n, context)
    return x, y


@dataclass(frozen=True)
class LMData:
    """The windows of every split, as whole tensors, and the fingerprint of the text."""

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    digest: str

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return {"train": self.train, "val": self.val, "test": self.test}[name]

    def to(self, device: torch.device | str) -> LMData:
        move = lambda pair: (pair[0].to(device), pair[1].to(device))  # noqa: E731
        return LMData(move(self.train), move(self.val), move(self.test), self.digest)


def load_text_data(root: Path | None = None, file_bytes: int = FILE_BYTES, context: int = CONTEXT) -> LMData:
    """Read, split and window the corpus (deterministic: the same files give the same tensors).

    ``root`` defaults to this Python's standard library; ``file_bytes`` to :data:`FILE_BYTES`.

    Raises:
        DataError: a split has less than one window of text (``root`` holds too few ``.py`` files).
    """
    texts = split_bytes(source_files(root), file_bytes)
    short = [name for name, text in texts.items() if len(text) <= context]
    if short:
        where = root if root is not None else stdlib_dir()
        raise DataError(
            f"tinylm needs the Python standard library's source; {where} gives too little text for the "
            f"{', '.join(short)} split (is this a Python without its .py files?)"
        )
    train, val, test = (windows(texts[name], context) for name in ("train", "val", "test"))
    return LMData(train, val, test, corpus_digest(texts))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: causal self-attention, then a 4x GELU MLP, each residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    """Byte-level decoder-only transformer; ``forward(x)`` maps ``(B, T)`` bytes to ``(B, T, 256)`` logits."""

    def __init__(self, width: int = WIDTH, layers: int = LAYERS, heads: int = HEADS, context: int = CONTEXT) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB, bias=False)
        self.head.weight = self.embed.weight  # weight tying, as GPT-2 and nanoGPT
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            elif param.dim() >= 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(param, 0.0, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.embed(x) + self.position(torch.arange(t, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h))


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy in nats per token; ``logits`` ``(B, T, V)``, ``targets`` ``(B, T)``."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Mean loss (nats/token) of ``model`` over all windows ``(x, y)``, in eval mode."""
    model.eval()
    total = torch.zeros((), device=x.device, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        total += lm_loss(model(xb), yb).double() * len(xb)
    return (total / max(len(x), 1)).item()


#: Windows per epoch (a fixed amount of text, whatever the batch size): 2048 x 128 = 262,144 tokens.
WINDOWS_PER_EPOCH = 2048
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 32


def epoch_batches(
    n_windows: int, epoch: int, batch_size: int, seed: int, per_epoch: int = WINDOWS_PER_EPOCH
) -> list[torch.Tensor]:
    """The window indices of each step of ``epoch`` (1-based), a pure function of its arguments.

    The windows are visited in passes: pass ``k`` is ``randperm(n_windows)`` seeded by ``(seed, k)``,
    and epoch ``e`` takes the next ``per_epoch`` windows of that endless sequence (so epochs 1..4 of a
    8191-window train split cover it once, almost). Resuming at an epoch gives the same batches.
    """
    start = (epoch - 1) * per_epoch
    chunks: list[torch.Tensor] = []
    taken = 0
    while taken < per_epoch:
        index, offset = divmod(start + taken, n_windows)
        order = torch.randperm(n_windows, generator=torch.Generator().manual_seed(seed * 1_000_003 + index))
        chunk = order[offset : offset + per_epoch - taken]
        chunks.append(chunk)
        taken += len(chunk)
    order = torch.cat(chunks)
    return list(order.split(batch_size))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train: tuple[torch.Tensor, torch.Tensor],
    batches: list[torch.Tensor],
) -> float:
    """One epoch of next-byte training; the mean training loss (nats/token) over its windows."""
    model.train()
    x, y = train
    total = torch.zeros((), device=x.device)
    count = 0
    for index in batches:
        index = index.to(x.device)
        loss = lm_loss(model(x[index]), y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.detach() * len(index)
        count += len(index)
    return (total / max(count, 1)).item()


def perplexity(loss: float) -> float:
    """``exp(loss)``; ``inf`` where that overflows (a blown-up loss)."""
    return math.exp(loss) if loss < 700 else math.inf


@dataclass(frozen=True)
class TinyLMConfig:
    """The task's sizes; the defaults are ``tinylm``'s (tests build smaller ones with :func:`make_task`)."""

    width: int = WIDTH
    layers: int = LAYERS
    heads: int = HEADS
    context: int = CONTEXT
    file_bytes: int = FILE_BYTES
    windows_per_epoch: int = WINDOWS_PER_EPOCH

    def fit(self, trial: TrialContext) -> None:
        """Train one :class:`TinyGPT` for ``trial.epochs()``; report ``loss``/``perplexity`` on ``trial.split``."""
        device = torch.device(trial.device)
        data: LMData = trial.data.to(device)
        train, held_out = data.train, data.split(trial.split)
        model = TinyGPT(self.width, self.layers, self.heads, self.context).to(device)  # trial.seed is applied
        optimizer, scheduler = trial.make_optimizer(model)
        initial = evaluate(model, *held_out)
        trial.report_initial(loss=initial, perplexity=perplexity(initial))
        for epoch in trial.epochs():
            batches = epoch_batches(len(train[0]), epoch, trial.batch_size, trial.seed, self.windows_per_epoch)
            train_loss = train_epoch(model, optimizer, scheduler, train, batches)
            loss = evaluate(model, *held_out)
            trial.log(train_loss=train_loss, lr=scheduler.get_last_lr()[0])
            trial.report(loss=loss, perplexity=perplexity(loss))

    def load(self, data_dir: Path) -> LMData:
        """The task's ``data`` function: this Python's corpus (``data_dir`` is unused: nothing to download)."""
        return load_text_data(file_bytes=self.file_bytes, context=self.context)


def make_task(config: TinyLMConfig | None = None) -> LoopTask:
    """The ``tinylm`` task (see the module docstring); ``config`` changes its sizes."""
    c = TinyLMConfig() if config is None else config
    python = sys.version.split()[0]
    n_params = sum(p.numel() for p in TinyGPT(c.width, c.layers, c.heads, c.context).parameters())
    return LoopTask(
        name="tinylm",
        fit=c.fit,
        data=c.load,
        objective="loss",
        direction="minimize",
        metrics=("perplexity",),
        default_epochs=DEFAULT_EPOCHS,
        default_batch_size=DEFAULT_BATCH_SIZE,
        description=(
            f"byte-level GPT ({c.layers} layers, width {c.width}, {c.heads} heads, context {c.context}) on the "
            f"first {c.file_bytes} bytes of each top-level module of Python {python}'s standard library"
        ),
        dataset=f"Python {python} standard library source (top-level .py files), split by file name hash",
        model=f"TinyGPT {c.layers}x{c.width}, {c.heads} heads, context {c.context}, tied head, {n_params:,} parameters",
    )
