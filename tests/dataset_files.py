"""Tiny datasets in the exact on-disk formats of CIFAR-10, MNIST and IMDB, for tests.

Each writer produces files byte-compatible with the published ones (pickled CIFAR batches, big-endian
IDX files, the aclImdb folder tree), only with a few samples. Sample ``i`` of a CIFAR or MNIST split has
every pixel of its first row set to ``i % 256`` and ``i // 256``, so tests can tell samples apart.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import pickle
import struct
import tarfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

CIFAR_TOP = "cifar-10-batches-py"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _marked_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Random uint8 images whose first pixels encode their index."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(n) % 256
    flat[:, 1] = np.arange(n) // 256
    return images


def image_ids(x: np.ndarray) -> np.ndarray:
    """The sample indices encoded by :func:`_marked_images` (works on (N, ...) uint8 arrays)."""
    flat = np.asarray(x).reshape(len(x), -1).astype(np.int64)
    return flat[:, 0] + 256 * flat[:, 1]


# ---------------------------------------------------------------------------------------------- CIFAR-10


def _py2_string(data: bytes) -> bytes:
    """A Python 2 ``str`` as pickle protocol 2 writes it (SHORT_BINSTRING / BINSTRING)."""
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if 0 <= value < 256 else b"J" + struct.pack("<i", value)


def _py2_value(value: object) -> bytes:
    if isinstance(value, bool | int):
        return _py2_int(int(value))
    if isinstance(value, bytes):
        return _py2_string(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    if isinstance(value, np.ndarray):
        assert value.dtype == np.uint8 and value.ndim == 2
        shape = _py2_int(value.shape[0]) + _py2_int(value.shape[1]) + b"\x86"
        dtype = (
            b"cnumpy\ndtype\n" + _py2_string(b"u1") + b"K\x00K\x01\x87R"
            b"(K\x03" + _py2_string(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        )
        return (
            b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            + _py2_string(b"b")
            + b"\x87R(K\x01"
            + shape
            + dtype
            + b"\x89"
            + _py2_string(value.tobytes())
            + b"tb"
        )
    raise TypeError(type(value))


def py2_pickle(batch: dict[bytes, object]) -> bytes:
    """What Python 2's ``cPickle.dump(batch, f, 2)`` wrote for CIFAR-10 (str keys, numpy arrays)."""
    items = b"".join(_py2_string(k) + _py2_value(v) for k, v in batch.items())
    return b"\x80\x02}(" + items + b"u."


def write_cifar_folder(root: Path, per_batch: int = 60, *, python2: bool = False, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with 5 training batches, a test batch and ``batches.meta``.

    Training sample ``i`` (over all five batches, in order) has id ``i``; test sample ``j`` has id ``j``.
    Labels are ``id % 10``. ``python2`` writes the batches as the original Python 2 pickles; otherwise
    as Python 3 protocol-2 pickles with bytes keys.
    """
    folder = root / CIFAR_TOP
    folder.mkdir(parents=True)
    train = _marked_images(5 * per_batch, (3072,), seed)
    test = _marked_images(per_batch, (3072,), seed + 1)
    for name in CIFAR_BATCHES:
        if name == "test_batch":
            data, first = test, 0
        else:
            k = int(name[-1]) - 1
            data, first = train[k * per_batch : (k + 1) * per_batch], k * per_batch
        batch = {
            b"batch_label": f"{name} of 5".encode(),
            b"labels": [(first + i) % 10 for i in range(len(data))],
            b"data": np.ascontiguousarray(data),
            b"filenames": [f"img_{first + i}.png".encode() for i in range(len(data))],
        }
        blob = py2_pickle(batch) if python2 else pickle.dumps(batch, protocol=2)
        (folder / name).write_bytes(blob)
    meta = {
        b"num_cases_per_batch": per_batch,
        b"label_names": [name.encode() for name in CIFAR_CLASSES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(py2_pickle(meta) if python2 else pickle.dumps(meta, protocol=2))
    return folder


def write_tarball(archive: Path, source_root: Path, top: str) -> Path:
    """``archive`` (.tar.gz) holding ``source_root/top`` as ``top/...``, like the published archives."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source_root / top, arcname=top)
    return archive


# ------------------------------------------------------------------------------------------------- MNIST

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x0000 08 <ndim>, big-endian dimensions, then the data."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 300, n_test: int = 50, *, gz: bool = True, seed: int = 0) -> Path:
    """The four MNIST IDX files (gzipped as published, or raw) in ``folder``; labels are ``id % 10``."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": _marked_images(n_train, (28, 28), seed),
        "train_labels": np.arange(n_train) % 10,
        "test_images": _marked_images(n_test, (28, 28), seed + 1),
        "test_labels": np.arange(n_test) % 10,
    }
    for key, name in MNIST_NAMES.items():
        blob = idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (folder / name).write_bytes(blob)
    return folder


# -------------------------------------------------------------------------------------------------- IMDB

POSITIVE = ("great", "wonderful", "loved", "brilliant", "superb")
NEGATIVE = ("awful", "boring", "hated", "terrible", "dull")
NEUTRAL = ("the", "movie", "film", "plot", "actor", "scene", "it's", "and", "a", "was")


def write_imdb_folder(root: Path, per_class: int = 40, *, seed: int = 0) -> Path:
    """``root/aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` with ``per_class`` reviews each.

    Positive reviews use words from :data:`POSITIVE`, negative ones from :data:`NEGATIVE`, both mixed
    with :data:`NEUTRAL`; every review contains a ``<br /><br />`` break, like the real ones.
    """
    rng = np.random.default_rng(seed)
    top = root / "aclImdb"
    for split in ("train", "test"):
        for sentiment, words, ratings in (("pos", POSITIVE, (7, 8, 9, 10)), ("neg", NEGATIVE, (1, 2, 3, 4))):
            folder = top / split / sentiment
            folder.mkdir(parents=True)
            for i in range(per_class):
                body = " ".join(rng.choice([*words, *NEUTRAL], size=12))
                text = f"{body.capitalize()}.<br /><br />{rng.choice(words).upper()}!"
                (folder / f"{i}_{rng.choice(ratings)}.txt").write_text(text, encoding="utf-8")
    return top


# ------------------------------------------------------------------------------------ a local HTTP server


@contextmanager
def serve_directory(folder: Path) -> Iterator[tuple[str, list[str]]]:
    """Serve ``folder`` over HTTP on 127.0.0.1; yields (base URL, list of requested paths).

    This stands in for the internet, which the tests cannot reach: downloads go through a real socket
    and a real HTTP server.
    """
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(folder), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial entries (``*.part``, ``*.extracting``) anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".part", ".extracting")))
