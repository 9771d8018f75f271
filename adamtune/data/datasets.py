"""The datasets of the Adam paper: where they are published, how they lie on disk, how their files read.

Each ``load_*`` function takes the data directory and returns whole tensors (never per-sample objects).
A dataset already on disk in its standard layout is used as is, with no download and no checksum (its
files are validated by structure instead: magic numbers, shapes, label ranges). Otherwise the published
archive or files are fetched by :mod:`adamtune.data.download` (MD5-verified, atomic, safely extracted).

Standard layouts under ``data_dir``:

* CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the python version's pickled
  batches), from :data:`CIFAR10` (``cifar-10-python.tar.gz``).
* MNIST: the four IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, gzipped or raw, in
  ``MNIST/raw/`` (as torchvision leaves them) or directly in ``data_dir``; fetched into ``MNIST/raw/``
  from :data:`MNIST_FILES`.
* IMDB: ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, from :data:`IMDB`
  (``aclImdb_v1.tar.gz``). The bag-of-words features are cached in ``imdb-bow-<vocab_size>.pt``.

Readers accept any number of samples, so tiny files in the real formats load as well as the real data.
"""

from __future__ import annotations

import gzip
import re
import warnings
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adamtune.core.errors import DataError
from adamtune.data.archives import ensure_writable_dir, load_restricted_pickle, numpy_array_globals
from adamtune.data.download import (
    Remote,
    atomic_write,
    dataset_lock,
    fetch,
    fetch_and_extract,
    new_dirs_removed_on_failure,
)

CIFAR10 = Remote(
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    filename="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
)
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"

MNIST_MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # the mirror torchvision downloads from
MNIST_FILES: dict[str, Remote] = {
    "train_images": Remote(
        MNIST_MIRROR + "train-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    ),
    "train_labels": Remote(
        MNIST_MIRROR + "train-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"
    ),
    "test_images": Remote(
        MNIST_MIRROR + "t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"
    ),
    "test_labels": Remote(
        MNIST_MIRROR + "t10k-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"
    ),
}
MNIST_RAW = Path("MNIST", "raw")  # torchvision's layout, relative to the data directory
IDX_IMAGES_MAGIC = 2051  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # unsigned bytes, 1 dimension

IMDB = Remote(
    url="https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    filename="aclImdb_v1.tar.gz",
    md5="7c2ac02c03563afcf9b574c7e56c153a",
)
IMDB_FOLDER = "aclImdb"
IMDB_CACHE_FORMAT = 1  # bump when the tokenizer or the cache layout changes
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


@dataclass(frozen=True)
class RawSplits:
    """A dataset's published train and test splits as whole tensors (labels are int64 class indices)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


# ---------------------------------------------------------------------------------------------- CIFAR-10


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one pickled CIFAR-10 batch."""
    if not path.is_file():
        raise DataError(f"{path} is missing; delete {path.parent} to download CIFAR-10 again")
    batch = load_restricted_pickle(path, numpy_array_globals(), "CIFAR-10 batches")
    if not isinstance(batch, dict):
        raise DataError(f"{path} is not a CIFAR-10 batch (holds a {type(batch).__name__}, not a dict)")
    batch = {k.decode("latin-1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path} is not a CIFAR-10 batch ('data' must be a uint8 array of shape N x 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path} is not a CIFAR-10 batch ('labels' must be a list of ints)") from exc
    if labels.shape != (len(data),) or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path} is not a CIFAR-10 batch ('labels' must be {len(data)} ints in 0..9)")
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: Path) -> RawSplits:
    """CIFAR-10's 50,000 training and 10,000 test images as uint8 (N, 3, 32, 32) tensors.

    Uses ``data_dir/cifar-10-batches-py/`` if present, else downloads and extracts :data:`CIFAR10`.

    Raises:
        DataError: download, checksum, extraction or unpickling failed, or a batch is malformed.
    """
    folder = fetch_and_extract(CIFAR10, data_dir, CIFAR10_FOLDER)
    train = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    return RawSplits(
        train_x=torch.from_numpy(np.concatenate([x for x, _ in train])),
        train_y=torch.from_numpy(np.concatenate([y for _, y in train])),
        test_x=torch.from_numpy(np.ascontiguousarray(test_x)),
        test_y=torch.from_numpy(test_y),
    )


# ------------------------------------------------------------------------------------------------- MNIST


def _find_mnist_file(data_dir: Path, gz_name: str) -> Path | None:
    """The first of ``MNIST/raw/<name>``, ``MNIST/raw/<name>.gz``, ``<name>``, ``<name>.gz`` that exists."""
    raw_name = gz_name.removesuffix(".gz")
    for folder in (data_dir / MNIST_RAW, data_dir):
        for name in (raw_name, gz_name):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (gzipped if ``path`` ends in ``.gz``) with the given magic number.

    Raises:
        DataError: the file is unreadable, not gzip when named ``.gz``, truncated, or has the wrong magic
            number or a size that does not match its header. The message names the file.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is corrupted or truncated ({exc}); delete it to download it again") from exc
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(f"{path} is not an IDX file with magic number {magic} (found {found}); delete it")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != int(np.prod(dims)):
        raise DataError(f"{path} is truncated ({len(raw) - header} bytes of data, header says {dims}); delete it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(data_dir: Path) -> RawSplits:
    """MNIST's 60,000 training and 10,000 test digits as uint8 (N, 28, 28) tensors.

    Each IDX file found in a standard place (see :func:`_find_mnist_file`) is used as is; missing ones
    are downloaded into ``data_dir/MNIST/raw/``.

    Raises:
        DataError: a download failed, or a file is corrupted or inconsistent (image and label counts).
    """
    paths: dict[str, Path] = {}
    missing = {k: remote for k, remote in MNIST_FILES.items() if _find_mnist_file(data_dir, remote.filename) is None}
    if missing:
        raw_dir = data_dir / MNIST_RAW
        with new_dirs_removed_on_failure(raw_dir), dataset_lock(ensure_writable_dir(raw_dir)):
            for key, remote in missing.items():
                paths[key] = _find_mnist_file(data_dir, remote.filename) or fetch(remote, raw_dir)
    for key, remote in MNIST_FILES.items():
        paths.setdefault(key, _find_mnist_file(data_dir, remote.filename))  # type: ignore[arg-type]
    arrays = {
        key: read_idx(path, IDX_IMAGES_MAGIC if key.endswith("images") else IDX_LABELS_MAGIC)
        for key, path in paths.items()
    }
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (28, 28) or len(images) != len(labels) or (len(labels) and labels.max() > 9):
            raise DataError(
                f"MNIST {split} files {paths[f'{split}_images']} and {paths[f'{split}_labels']} do not match "
                f"({images.shape} images, {labels.shape} labels; expected N x 28 x 28 and N labels in 0..9)"
            )
    tensor = lambda a: torch.from_numpy(a.copy())  # noqa: E731  (frombuffer arrays are read-only)
    return RawSplits(
        train_x=tensor(arrays["train_images"]),
        train_y=tensor(arrays["train_labels"]).long(),
        test_x=tensor(arrays["test_images"]),
        test_y=tensor(arrays["test_labels"]).long(),
    )


# -------------------------------------------------------------------------------------------------- IMDB


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens of a review: ``<br />`` tags removed, words of letters/digits with an
    optional ``'s``-style suffix (``"don't"`` stays one token). Punctuation is dropped."""
    return _TOKEN.findall(_BREAK.sub(" ", text).lower())


@dataclass(frozen=True)
class BagOfWords:
    """Binary bag-of-words features in a compact padded form.

    ``train_x``/``test_x`` are (N, L) integer tensors: row ``i`` lists the distinct vocabulary indices
    present in document ``i``, padded with ``vocab_size`` (one past the last word). L is the largest
    number of distinct vocabulary words in one document. :func:`densify` turns a batch of rows into the
    dense (B, vocab_size) 0/1 float matrix. ``vocab`` may be shorter than ``vocab_size`` when the corpus
    has fewer distinct words; the dense width is always ``vocab_size``.
    """

    vocab: tuple[str, ...]
    vocab_size: int
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def densify(rows: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Dense (B, vocab_size) float32 0/1 matrix from padded index rows (pad value ``vocab_size``)."""
    dense = torch.zeros(len(rows), vocab_size + 1, device=rows.device)
    dense.scatter_(1, rows.long(), 1.0)
    return dense[:, :vocab_size]


def _read_reviews(folder: Path, split: str) -> tuple[list[str], list[int]]:
    """Texts and labels (neg 0, pos 1) of ``aclImdb/<split>``, in sorted file-name order."""
    texts: list[str] = []
    labels: list[int] = []
    for label, sentiment in ((0, "neg"), (1, "pos")):
        sub = folder / split / sentiment
        files = sorted(sub.glob("*.txt")) if sub.is_dir() else []
        if not files:
            raise DataError(f"{sub} holds no reviews (*.txt); delete {folder} to download IMDB again")
        for path in files:
            try:
                texts.append(path.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                raise DataError(f"cannot read {path} ({exc})") from exc
            labels.append(label)
    return texts, labels


def build_vocab(token_lists: list[list[str]], vocab_size: int) -> tuple[str, ...]:
    """The ``vocab_size`` most frequent tokens (total occurrences), ties broken alphabetically."""
    counts: Counter[str] = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return tuple(word for word, _ in ranked[:vocab_size])


def _encode(token_lists: list[list[str]], index: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR form of the binary bag-of-words: flat sorted word indices and row offsets (int64).

    The indices are int16 when the vocabulary fits (10,000 words do), else int32.
    """
    rows = [sorted({index[t] for t in tokens if t in index}) for tokens in token_lists]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    dtype = np.int16 if len(index) <= np.iinfo(np.int16).max else np.int32
    flat = np.fromiter((i for r in rows for i in r), dtype=dtype, count=int(offsets[-1]))
    return torch.from_numpy(flat), torch.from_numpy(offsets)


def _pad(flat: torch.Tensor, offsets: torch.Tensor, pad: int) -> torch.Tensor:
    """Padded (N, L) rows from CSR ``flat``/``offsets``; int16 when ``pad`` fits, else int32."""
    lengths = offsets[1:] - offsets[:-1]
    n, width = len(lengths), int(lengths.max()) if len(lengths) else 0
    dtype = torch.int16 if pad <= torch.iinfo(torch.int16).max else torch.int32
    out = torch.full((n, max(width, 1)), pad, dtype=dtype)
    row = torch.repeat_interleave(torch.arange(n), lengths)
    col = torch.arange(len(flat)) - offsets[:-1][row]
    out[row, col] = flat.to(dtype)
    return out


def _load_cache(path: Path, vocab_size: int) -> dict | None:
    """The cached features at ``path``, or None when absent, unreadable or of another format."""
    if not path.is_file():
        return None
    try:
        cache = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a damaged cache is rebuilt, never trusted
        return None
    if not isinstance(cache, dict) or cache.get("format") != IMDB_CACHE_FORMAT or cache.get("vocab_size") != vocab_size:
        return None
    return cache


def _build_cache(data_dir: Path, vocab_size: int) -> dict:
    """Tokenize aclImdb (fetched if needed), build the vocabulary from train, encode both splits."""
    folder = fetch_and_extract(IMDB, data_dir, IMDB_FOLDER)
    train_texts, train_labels = _read_reviews(folder, "train")
    test_texts, test_labels = _read_reviews(folder, "test")
    train_tokens = [tokenize(t) for t in train_texts]
    vocab = build_vocab(train_tokens, vocab_size)
    index = {word: i for i, word in enumerate(vocab)}
    train_flat, train_offsets = _encode(train_tokens, index)
    test_flat, test_offsets = _encode([tokenize(t) for t in test_texts], index)
    return {
        "format": IMDB_CACHE_FORMAT,
        "vocab_size": vocab_size,
        "vocab": list(vocab),
        "train_flat": train_flat,
        "train_offsets": train_offsets,
        "train_labels": torch.tensor(train_labels, dtype=torch.long),
        "test_flat": test_flat,
        "test_offsets": test_offsets,
        "test_labels": torch.tensor(test_labels, dtype=torch.long),
    }


def imdb_cache_path(data_dir: Path, vocab_size: int) -> Path:
    """Where the bag-of-words features for ``vocab_size`` are cached."""
    return data_dir / f"imdb-bow-{vocab_size}.pt"


def load_imdb_bow(data_dir: Path, vocab_size: int = 10_000) -> BagOfWords:
    """IMDB's 25,000 train and 25,000 test reviews as binary bag-of-words over the top ``vocab_size`` words.

    The vocabulary is the ``vocab_size`` most frequent tokens (see :func:`tokenize`) of the train split.
    The first call reads ``aclImdb/`` (downloading it if absent; 10-30 s to tokenize) and writes the
    features to :func:`imdb_cache_path` atomically (CSR form with int16 word indices, about 15 MB for the
    real data); later calls read only that file (under a second). A cache of another format is rebuilt;
    delete it to force a rebuild. If the cache cannot be written (a read-only data directory holding
    ``aclImdb/``), the features are built in memory with a warning.

    Raises:
        DataError: aclImdb cannot be downloaded or extracted, or a split folder holds no reviews.
    """
    if not 1 <= vocab_size < 2**31 - 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    path = imdb_cache_path(data_dir, vocab_size)
    cache = _load_cache(path, vocab_size)
    if cache is None:
        try:
            ensure_writable_dir(data_dir)
        except DataError as exc:
            if not (data_dir / IMDB_FOLDER).is_dir():
                raise
            warnings.warn(f"IMDB features will not be cached: {exc}", stacklevel=2)
            cache = _build_cache(data_dir, vocab_size)
        else:
            with dataset_lock(data_dir):  # concurrent workers: one builds, the others then read its cache
                cache = _load_cache(path, vocab_size)
                if cache is None:
                    cache = _build_cache(data_dir, vocab_size)
                    atomic_write(path, lambda f: torch.save(cache, f))
    return BagOfWords(
        vocab=tuple(cache["vocab"]),
        vocab_size=vocab_size,
        train_x=_pad(cache["train_flat"], cache["train_offsets"], vocab_size),
        train_y=cache["train_labels"],
        test_x=_pad(cache["test_flat"], cache["test_offsets"], vocab_size),
        test_y=cache["test_labels"],
    )
