"""adamtune.data (downloads, archives, dataset formats) on small files in the real formats.

The internet cannot be reached from the tests: downloads are served by a local ``http.server`` on
127.0.0.1 (:func:`dataset_files.serve_directory`), and only the URL/checksum constants are patched to
point at it. Everything else (HTTP, gzip, tar, pickle, IDX parsing, caching) runs for real.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import pickle
import socket
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dataset_files import (
    CIFAR_TOP,
    MNIST_NAMES,
    image_ids,
    leftovers,
    md5_of,
    serve_directory,
    write_cifar_folder,
    write_imdb_folder,
    write_mnist,
    write_tarball,
)

from adamtune.core.errors import DataError
from adamtune.data import archives, datasets
from adamtune.data import download as data


def one_line(exc: pytest.ExceptionInfo[DataError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def closed_port_url(name: str) -> str:
    """A URL on 127.0.0.1 where nothing listens: the download fails like an unreachable internet."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


@pytest.fixture(scope="module")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cifar-10-python.tar.gz with 60 images per batch, served from its own folder."""
    root = tmp_path_factory.mktemp("cifar-src")
    write_cifar_folder(root, per_batch=60, python2=True)
    served = root / "served"
    served.mkdir()
    return write_tarball(served / "cifar-10-python.tar.gz", root, CIFAR_TOP)


def patch_remote(monkeypatch: pytest.MonkeyPatch, name: str, url: str, md5: str) -> None:
    remote = getattr(datasets, name)
    monkeypatch.setattr(datasets, name, dataclasses.replace(remote, url=url, md5=md5))


# ------------------------------------------------------------------------------------------ data dir


def test_default_data_dir_reads_env_then_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAMTUNE_DATA_DIR", str(tmp_path / "mine"))
    assert data.default_data_dir() == tmp_path / "mine"
    monkeypatch.setenv("ADAMTUNE_DATA_DIR", "")
    default = data.default_data_dir()
    assert default.name == "data" and "adamtune" in default.parts
    assert not (tmp_path / "mine").exists()  # resolving creates nothing


def test_data_dir_under_a_regular_file_is_not_writable(tmp_path: Path) -> None:
    # Tests run as root, where permission bits do not stop writes. A path whose parent is a regular
    # file cannot be created by anyone (ENOTDIR), so it is a real unwritable data directory.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    data_dir = blocker / "data"
    with pytest.raises(DataError) as exc:
        datasets.load_cifar10(data_dir)
    assert str(data_dir) in one_line(exc) and "not writable" in str(exc.value)
    assert blocker.read_text() == "x"


# ---------------------------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("python2", [True, False], ids=["python2-pickles", "python3-pickles"])
def test_cifar_folder_on_disk_is_used_without_download(tmp_path: Path, python2: bool) -> None:
    write_cifar_folder(tmp_path, per_batch=20, python2=python2)
    raw = datasets.load_cifar10(tmp_path)
    assert raw.train_x.shape == (100, 3, 32, 32) and raw.train_x.dtype == torch.uint8
    assert raw.test_x.shape == (20, 3, 32, 32)
    assert raw.train_y.dtype == torch.long and raw.train_y.tolist() == [i % 10 for i in range(100)]
    assert image_ids(raw.train_x.numpy()).tolist() == list(range(100))  # batches concatenated in order
    assert sorted(p.name for p in tmp_path.iterdir()) == [CIFAR_TOP]  # nothing downloaded or written


def test_cifar_downloads_verifies_extracts_once(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_directory(cifar_archive.parent) as (base, requests):
        patch_remote(monkeypatch, "CIFAR10", base + cifar_archive.name, md5_of(cifar_archive))
        first = datasets.load_cifar10(tmp_path / "data")
        second = datasets.load_cifar10(tmp_path / "data")
    assert requests == ["/cifar-10-python.tar.gz"]
    assert first.train_x.shape == (300, 3, 32, 32) and torch.equal(first.train_x, second.train_x)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [CIFAR_TOP, "cifar-10-python.tar.gz"]
    assert md5_of(tmp_path / "data" / "cifar-10-python.tar.gz") == md5_of(cifar_archive)


def test_archive_already_in_data_dir_is_extracted_without_download(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / cifar_archive.name).write_bytes(cifar_archive.read_bytes())
    patch_remote(monkeypatch, "CIFAR10", closed_port_url(cifar_archive.name), md5_of(cifar_archive))
    assert len(datasets.load_cifar10(tmp_path).train_y) == 300


def test_failed_download_names_url_and_destination(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url("cifar-10-python.tar.gz")
    patch_remote(monkeypatch, "CIFAR10", url, "0" * 32)
    with pytest.raises(DataError) as exc:
        datasets.load_cifar10(tmp_path)
    message = one_line(exc)
    assert url in message and str(tmp_path / "cifar-10-python.tar.gz") in message
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_a_data_error(tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_directory(cifar_archive.parent) as (base, _):
        patch_remote(monkeypatch, "CIFAR10", base + "missing.tar.gz", md5_of(cifar_archive))
        with pytest.raises(DataError, match="404") as exc:
            datasets.load_cifar10(tmp_path)
    assert base + "missing.tar.gz" in one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_downloaded_checksum_mismatch_keeps_nothing(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with serve_directory(cifar_archive.parent) as (base, _):
        patch_remote(monkeypatch, "CIFAR10", base + cifar_archive.name, "f" * 32)
        with pytest.raises(DataError, match="MD5") as exc:
            datasets.load_cifar10(tmp_path)
    assert base + cifar_archive.name in one_line(exc)
    assert list(tmp_path.iterdir()) == []


def test_archive_on_disk_with_wrong_checksum_is_refused(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / cifar_archive.name
    archive.write_bytes(cifar_archive.read_bytes()[:-100])
    patch_remote(monkeypatch, "CIFAR10", closed_port_url(archive.name), md5_of(cifar_archive))
    with pytest.raises(DataError, match="corrupted or incomplete") as exc:
        datasets.load_cifar10(tmp_path)
    assert str(archive) in one_line(exc)
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]  # kept for inspection, nothing extracted


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupted_archive_with_matching_checksum_leaves_nothing(
    tmp_path: Path, cifar_archive: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    # A checksum only proves the bytes are the published ones; the extractor must still cope with an
    # archive that is damaged (here: the checksum constant is patched to the damaged file's MD5).
    blob = cifar_archive.read_bytes()
    archive = tmp_path / cifar_archive.name
    archive.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else os.urandom(4096))
    patch_remote(monkeypatch, "CIFAR10", closed_port_url(archive.name), md5_of(archive))
    with pytest.raises(DataError, match="corrupted or truncated") as exc:
        datasets.load_cifar10(tmp_path)
    assert str(archive) in one_line(exc)
    assert [p.name for p in tmp_path.iterdir()] == [archive.name]


def _tar_with(tmp_path: Path, member: tarfile.TarInfo, payload: bytes = b"pwned") -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        ok = tarfile.TarInfo(f"{CIFAR_TOP}/readme")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return archive


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (tarfile.TarInfo(f"{CIFAR_TOP}/../../escaped"), "'..'"),
        (tarfile.TarInfo("../escaped"), "'..'"),
        (tarfile.TarInfo("/tmp/adamtune-test-escaped"), "absolute path"),
        (tarfile.TarInfo("elsewhere/file"), "outside the expected folder"),
        (_symlink(f"{CIFAR_TOP}/link", "../../escaped"), "points outside"),
        (_symlink(f"{CIFAR_TOP}/link", "/etc/passwd"), "absolute path"),
        (_hardlink(f"{CIFAR_TOP}/link", "etc/passwd"), "points outside"),
    ],
    ids=["dotdot-inside", "dotdot", "absolute", "other-folder", "symlink-out", "symlink-abs", "hardlink-out"],
)
def test_unsafe_tar_members_are_refused(
    tmp_path: Path, member: tarfile.TarInfo, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = _tar_with(src, member)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    target = data_dir / "cifar-10-python.tar.gz"
    target.write_bytes(archive.read_bytes())
    patch_remote(monkeypatch, "CIFAR10", closed_port_url(target.name), md5_of(target))
    with pytest.raises(DataError, match="refusing to extract") as exc:
        datasets.load_cifar10(data_dir)
    message = one_line(exc)
    assert str(target) in message and repr(member.name) in message and reason in message
    assert [p.name for p in data_dir.iterdir()] == [target.name]
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/adamtune-test-escaped").exists()


def test_symlink_inside_the_top_folder_is_allowed(tmp_path: Path) -> None:
    archive = _tar_with(tmp_path, _symlink(f"{CIFAR_TOP}/alias", "readme"))
    folder = archives.extract_tar(archive, tmp_path / "out", CIFAR_TOP)
    assert (folder / "alias").read_text() == "ok" and leftovers(tmp_path) == []


def test_forbidden_pickle_global_is_refused_and_never_run(tmp_path: Path) -> None:
    write_cifar_folder(tmp_path, per_batch=10)
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    batch = tmp_path / CIFAR_TOP / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle global") as exc:
        datasets.load_cifar10(tmp_path)
    message = one_line(exc)
    assert str(batch) in message and f"{os.system.__module__}.system" in message
    assert not marker.exists()


def test_codecs_encode_is_admitted_only_for_latin1(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    # protocol 2 pickles of bytes call _codecs.encode(text, "latin1"); any other codec is refused
    path.write_bytes(pickle.dumps(b"\xff\x00abc", protocol=2))
    assert archives.load_restricted_pickle(path, archives.numpy_array_globals(), "test") == b"\xff\x00abc"
    path.write_bytes(pickle.dumps(b"abc", protocol=2).replace(b"latin1", b"rot_13"))
    with pytest.raises(DataError, match=str(path)):
        archives.load_restricted_pickle(path, archives.numpy_array_globals(), "test")


def test_truncated_or_malformed_cifar_batch(tmp_path: Path) -> None:
    folder = write_cifar_folder(tmp_path, per_batch=10)
    good = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="corrupted") as exc:
        datasets.load_cifar10(tmp_path)
    assert str(folder / "test_batch") in one_line(exc)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": np.zeros((3, 100), np.uint8), b"labels": [0, 1, 2]}))
    with pytest.raises(DataError, match="N x 3072"):
        datasets.load_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch is missing"):
        datasets.load_cifar10(tmp_path)


# ---------------------------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize(("where", "gz"), [("MNIST/raw", True), ("MNIST/raw", False), (".", True), (".", False)])
def test_mnist_standard_layouts(tmp_path: Path, where: str, gz: bool) -> None:
    write_mnist(tmp_path / where, n_train=120, n_test=30, gz=gz)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    raw = datasets.load_mnist(tmp_path)
    assert raw.train_x.shape == (120, 28, 28) and raw.train_x.dtype == torch.uint8
    assert raw.test_x.shape == (30, 28, 28)
    assert raw.train_y.tolist() == [i % 10 for i in range(120)]
    assert image_ids(raw.test_x.numpy()).tolist() == list(range(30))
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no download


def test_mnist_downloads_missing_files_into_torchvision_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served = write_mnist(tmp_path / "served", n_train=100, n_test=20)
    files = {
        key: datasets.Remote(url="", filename=f"{name}.gz", md5=md5_of(served / f"{name}.gz"))
        for key, name in MNIST_NAMES.items()
    }
    with serve_directory(served) as (base, requests):
        monkeypatch.setattr(
            datasets, "MNIST_FILES", {k: dataclasses.replace(r, url=base + r.filename) for k, r in files.items()}
        )
        raw = datasets.load_mnist(tmp_path / "data")
        datasets.load_mnist(tmp_path / "data")
    assert len(requests) == 4
    assert raw.train_x.shape == (100, 28, 28)
    assert sorted(p.name for p in (tmp_path / "data" / "MNIST" / "raw").iterdir()) == sorted(
        f"{n}.gz" for n in MNIST_NAMES.values()
    )


def test_mnist_download_failure_says_where_to_put_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = closed_port_url("train-images-idx3-ubyte.gz")
    files = dict(datasets.MNIST_FILES)
    files["train_images"] = dataclasses.replace(files["train_images"], url=url)
    monkeypatch.setattr(datasets, "MNIST_FILES", files)
    with pytest.raises(DataError) as exc:
        datasets.load_mnist(tmp_path)
    assert url in one_line(exc) and str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in str(exc.value)
    assert leftovers(tmp_path) == [] and not (tmp_path / "MNIST").exists()  # the folders it made are gone too


@pytest.mark.parametrize("damage", ["truncated-gz", "not-gz", "wrong-magic", "short-data"])
def test_damaged_mnist_file_is_named(tmp_path: Path, damage: str) -> None:
    folder = write_mnist(tmp_path, n_train=50, n_test=10)
    path = folder / "train-images-idx3-ubyte.gz"
    blob = gzip.decompress(path.read_bytes())
    if damage == "truncated-gz":
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "not-gz":
        path.write_bytes(blob)
    elif damage == "wrong-magic":
        path.write_bytes(gzip.compress((2049).to_bytes(4, "big") + blob[4:]))
    else:
        path.write_bytes(gzip.compress(blob[:-28]))
    with pytest.raises(DataError) as exc:
        datasets.load_mnist(tmp_path)
    assert str(path) in one_line(exc)


def test_mnist_image_and_label_counts_must_match(tmp_path: Path) -> None:
    folder = write_mnist(tmp_path, n_train=50, n_test=10)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes([0x00, 0x00, 0x08, 0x01, 0, 0, 0, 1, 3])))
    with pytest.raises(DataError, match="do not match"):
        datasets.load_mnist(tmp_path)


# ----------------------------------------------------------------------------------------------- IMDB


def test_tokenizer_lowercases_and_strips_line_breaks() -> None:
    assert datasets.tokenize("Great film!<br /><br />It's GREAT, isn't it?") == [
        "great",
        "film",
        "it's",
        "great",
        "isn't",
        "it",
    ]


def test_vocabulary_is_by_frequency_then_alphabetical() -> None:
    tokens = [["b", "a", "c", "c"], ["a", "d", "c"]]
    assert datasets.build_vocab(tokens, 3) == ("c", "a", "b")


def test_imdb_bag_of_words_is_built_once_then_read_from_cache(tmp_path: Path) -> None:
    write_imdb_folder(tmp_path, per_class=30)
    bow = datasets.load_imdb_bow(tmp_path, vocab_size=12)
    cache = datasets.imdb_cache_path(tmp_path, 12)
    assert cache.is_file() and leftovers(tmp_path) == []
    assert len(bow.vocab) == 12 and "br" not in bow.vocab
    assert bow.train_x.shape[0] == 60 and bow.test_x.shape[0] == 60
    assert bow.train_y.tolist() == [0] * 30 + [1] * 30  # neg then pos
    dense = datasets.densify(bow.train_x, 12)
    assert dense.shape == (60, 12) and set(dense.unique().tolist()) <= {0.0, 1.0}
    # each row marks exactly the vocabulary words of its review
    review = sorted((tmp_path / "aclImdb" / "train" / "neg").glob("*.txt"))[0].read_text()
    words = set(datasets.tokenize(review))
    assert {bow.vocab[i] for i in dense[0].nonzero().flatten().tolist()} == words & set(bow.vocab)
    # the second load reads only the cache: the reviews can be gone
    (tmp_path / "aclImdb").rename(tmp_path / "moved")
    again = datasets.load_imdb_bow(tmp_path, vocab_size=12)
    assert again.vocab == bow.vocab
    assert torch.equal(again.train_x, bow.train_x) and torch.equal(again.test_y, bow.test_y)


def test_imdb_cache_is_keyed_by_vocab_size_and_rebuilt_when_damaged(tmp_path: Path) -> None:
    write_imdb_folder(tmp_path, per_class=10)
    small = datasets.load_imdb_bow(tmp_path, vocab_size=5)
    large = datasets.load_imdb_bow(tmp_path, vocab_size=10_000)
    assert len(small.vocab) == 5 and len(large.vocab) < 10_000 and large.vocab[:5] == small.vocab
    assert datasets.densify(large.train_x, 10_000).shape == (20, 10_000)
    cache = datasets.imdb_cache_path(tmp_path, 5)
    cache.write_bytes(b"not a torch file")
    assert datasets.load_imdb_bow(tmp_path, vocab_size=5).vocab == small.vocab
    assert cache.read_bytes() != b"not a torch file"


def test_imdb_downloads_the_archive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    write_imdb_folder(src, per_class=8)
    served = tmp_path / "served"
    served.mkdir()
    archive = write_tarball(served / "aclImdb_v1.tar.gz", src, "aclImdb")
    with serve_directory(served) as (base, requests):
        patch_remote(monkeypatch, "IMDB", base + archive.name, md5_of(archive))
        bow = datasets.load_imdb_bow(tmp_path / "data", vocab_size=50)
    assert requests == ["/aclImdb_v1.tar.gz"] and len(bow.train_y) == 16
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["aclImdb", "aclImdb_v1.tar.gz", "imdb-bow-50.pt"]


def test_imdb_split_without_reviews_is_named(tmp_path: Path) -> None:
    top = write_imdb_folder(tmp_path, per_class=3)
    for review in (top / "test" / "pos").iterdir():
        review.unlink()
    with pytest.raises(DataError, match="holds no reviews") as exc:
        datasets.load_imdb_bow(tmp_path, vocab_size=10)
    assert str(top / "test" / "pos") in one_line(exc)
    assert not datasets.imdb_cache_path(tmp_path, 10).exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- building blocks


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"old")

    def fail(f: io.BufferedWriter) -> None:
        f.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        data.atomic_write(dest, fail)
    assert dest.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_dataset_lock_is_reentrant(tmp_path: Path) -> None:
    with data.dataset_lock(tmp_path), data.dataset_lock(tmp_path):
        pass
    with data.dataset_lock(tmp_path):  # released: can be taken again
        pass
