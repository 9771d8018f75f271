"""Getting dataset bytes onto disk safely: the only module of adamtune that touches the network.

What this module guarantees, for every dataset it fetches:

* **Atomic files.** A download is written to a temporary ``.<name>.*.part`` file in the destination
  directory and renamed into place only after its MD5 matched; an archive is extracted into a temporary
  ``.<top>.*.extracting`` directory and its top folder renamed into place. A download or extraction that
  fails or is interrupted removes its temporary and leaves nothing half-written under a final name.
* **Checksums before use.** An archive is used only when its MD5 matches the published one, whether
  this module downloaded it or a user copied it into the data directory.
* **Safe extraction.** Every tar member must lie inside the archive's expected top folder: absolute
  paths, ``..`` components, links pointing outside that folder and device files are refused with a
  :class:`DataError` before anything is written. ``tarfile``'s ``filter="data"`` is applied on top
  where Python has it (3.10.12+, 3.11.4+).
* **Restricted unpickling.** :func:`load_restricted_pickle` admits only the globals it is given (for
  CIFAR-10: numpy array reconstruction) and refuses any other with a :class:`DataError` naming the file
  and the global.
* **One-line errors.** Every failure a user can fix is a :class:`DataError` whose message says what went
  wrong, which file or URL is involved, and what to do (usually: which URL to fetch and where to put it).

Nothing here runs at import time, and nothing here imports torch, optuna or mlflow.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from adamtune.core.errors import DataError

DATA_DIR_ENV = "ADAMTUNE_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 60.0  # per socket operation, not for the whole download
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """A file published at ``url`` with MD5 ``md5``, saved locally as ``filename``."""

    url: str
    filename: str
    md5: str


def default_data_dir() -> Path:
    """The data directory when the caller was given none: ``$ADAMTUNE_DATA_DIR``, else the user cache.

    The default is ``platformdirs.user_cache_dir("adamtune")/data`` (``~/.cache/adamtune/data`` on
    Linux). An empty ``ADAMTUNE_DATA_DIR`` counts as unset. Nothing is created here.
    """
    value = os.environ.get(DATA_DIR_ENV, "").strip()
    if value:
        return Path(value).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("adamtune")) / "data"


def _one_line(reason: object) -> str:
    """``reason`` (an exception or a message) as one line of text."""
    text = str(reason) or type(reason).__name__
    return " ".join(text.split())


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` (with parents) if needed and check that files can be created in it.

    Raises:
        DataError: the directory cannot be created or written (for example, a parent is a regular file,
            the file system is read-only, or permissions forbid it). The message names ``path``.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise DataError(
            f"data directory {path} is not writable ({_one_line(exc)}); "
            f"pass --data-dir or set {DATA_DIR_ENV} to a writable directory"
        ) from exc
    return path


@contextlib.contextmanager
def new_dirs_removed_on_failure(path: Path) -> Iterator[None]:
    """If the block raises, remove ``path`` and those of its parents that did not exist before it, when empty.

    A failed download (offline, bad checksum) then leaves the data directory as it found it. Directories
    that are not empty (another worker's files) are kept.
    """
    new = [p for p in (path, *path.parents) if not p.exists()]
    try:
        yield
    except BaseException:
        for directory in new:  # deepest first
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


_HELD_LOCKS: dict[Path, int] = {}  # directories this process holds a dataset_lock on, with nesting depth


@contextlib.contextmanager
def dataset_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` so that concurrent workers download and extract once.

    Uses ``flock`` on the directory itself (no lock file is left behind). Re-entrant within a process:
    a nested lock on the same directory does not deadlock. Where ``fcntl`` is missing (Windows) this is
    a no-op: the atomic renames still keep every file whole, at the cost of duplicate downloads.
    ``directory`` must exist.
    """
    key = directory.resolve()
    if key in _HELD_LOCKS:
        _HELD_LOCKS[key] += 1
        try:
            yield
        finally:
            _HELD_LOCKS[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        _HELD_LOCKS[key] = 1
        try:
            yield
        finally:
            del _HELD_LOCKS[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def md5_of(path: Path) -> str:
    """Hex MD5 of the file at ``path`` (read in 1 MiB chunks)."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(path: Path, expected: str, url: str) -> None:
    """Raise :class:`DataError` unless the file at ``path`` has MD5 ``expected``.

    The file is left in place (the user may want to inspect it); the message says to delete it.
    """
    actual = md5_of(path)
    if actual != expected.lower():
        raise DataError(
            f"{path} is corrupted or incomplete (MD5 {actual}, expected {expected}); "
            f"delete it to download it again, or replace it with a good copy of {url}"
        )


@contextlib.contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich download progress bar on stderr; yields ``advance(n_bytes)``."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(file=sys.stderr)) as progress:
        task_id = progress.add_task(label, total=total)
        yield lambda n: progress.advance(task_id, n)


def download(remote: Remote, dest_dir: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Download ``remote`` into ``dest_dir/remote.filename``, verify its MD5, and return that path.

    The bytes go to a temporary file in ``dest_dir`` which is renamed into place only after the MD5
    matched, so the final path never holds a partial or corrupt download; on any failure (including
    Ctrl-C) the temporary file is removed. An existing file at the final path is replaced.

    Raises:
        DataError: ``dest_dir`` is not writable, the download failed (the message names the URL and the
            exact path to save it to by hand), or the downloaded bytes have the wrong MD5.
    """
    ensure_writable_dir(dest_dir)
    dest = dest_dir / remote.filename
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{remote.filename}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(remote.url, timeout=timeout) as response:
                    length = response.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    with _progress(f"downloading {remote.filename}", total) as advance:
                        while chunk := response.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            advance(len(chunk))
            except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason: object = f"HTTP {exc.code} {exc.reason}"
                elif isinstance(exc, urllib.error.URLError):
                    reason = exc.reason
                else:
                    reason = exc
                raise DataError(
                    f"could not download {remote.url} ({_one_line(reason)}); fetch it yourself and save it as {dest}"
                ) from exc
        if digest.hexdigest() != remote.md5.lower():
            raise DataError(
                f"downloaded {remote.url} but its MD5 is {digest.hexdigest()}, expected {remote.md5}; "
                f"the download was discarded: try again, or fetch it yourself and save it as {dest}"
            )
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def fetch(remote: Remote, dest_dir: Path) -> Path:
    """Return ``dest_dir/remote.filename``, downloading it first if absent; its MD5 is always verified.

    Raises:
        DataError: as :func:`download`, or the file already there has the wrong MD5.
    """
    path = dest_dir / remote.filename
    if path.is_file():
        verify_md5(path, remote.md5, remote.url)
        return path
    return download(remote, dest_dir)


def _unsafe_reason(member: tarfile.TarInfo, top: str) -> str | None:
    """Why ``member`` must not be extracted into a folder that should only receive ``top/``, or None."""
    name = member.name
    posix = PurePosixPath(name)
    if name.startswith(("/", "\\")) or posix.is_absolute() or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in posix.parts or ".." in PureWindowsPath(name).parts:
        return "path contains '..'"
    if not posix.parts or posix.parts[0] != top:
        return f"outside the expected folder {top}/"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        if link.is_absolute() or PureWindowsPath(member.linkname).drive:
            return f"link to absolute path {member.linkname!r}"
        # a symlink's target is relative to its own folder, a hard link's to the archive root
        base = posix.parent.parts if member.issym() else ()
        resolved: list[str] = []
        for part in (*base, *link.parts):
            if part == "..":
                if not resolved:
                    return f"link {member.linkname!r} points outside {top}/"
                resolved.pop()
            elif part != ".":
                resolved.append(part)
        if not resolved or resolved[0] != top:
            return f"link {member.linkname!r} points outside {top}/"
        return None
    if not (member.isfile() or member.isdir()):
        return "not a regular file or directory"
    return None


def extract_tar(archive: Path, dest_dir: Path, top: str) -> Path:
    """Extract the tar archive ``archive`` (any compression) whose contents all lie under ``top/``.

    Every member is checked first (see :func:`_unsafe_reason`); then the archive is extracted into a
    temporary directory inside ``dest_dir`` and ``top`` is renamed to ``dest_dir/top``. If another
    process finished the same extraction first, its result is kept. The temporary directory is always
    removed. Returns ``dest_dir/top``.

    Raises:
        DataError: ``dest_dir`` is not writable, the archive is corrupted or truncated, holds an unsafe
            member (named in the message), or has no ``top/`` folder.
    """
    ensure_writable_dir(dest_dir)
    target = dest_dir / top
    tmp = Path(tempfile.mkdtemp(dir=dest_dir, prefix=f".{top}.", suffix=".extracting"))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    reason = _unsafe_reason(member, top)
                    if reason is not None:
                        raise DataError(f"{archive}: refusing to extract member {member.name!r} ({reason})")
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python without extraction filters; our checks above still apply
                    tar.extractall(tmp, members=members)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise DataError(
                f"{archive} is corrupted or truncated ({_one_line(exc)}); delete it to download it again"
            ) from exc
        extracted = tmp / top
        if not extracted.is_dir():
            raise DataError(f"{archive} holds no {top}/ folder; delete it to download it again")
        try:
            os.rename(extracted, target)
        except OSError as exc:
            if not target.is_dir():
                raise DataError(f"could not move extracted {top}/ into {dest_dir} ({_one_line(exc)})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def fetch_and_extract(remote: Remote, dest_dir: Path, top: str) -> Path:
    """Make sure ``dest_dir/top`` exists, downloading and extracting ``remote`` if it does not.

    An existing ``dest_dir/top`` folder is used as is (no download, no checksum). Otherwise the archive
    at ``dest_dir/remote.filename`` is used if present (MD5 verified) or downloaded, then extracted. The
    archive is kept, so that deleting the extracted folder does not cost another download. Concurrent
    callers on one machine are serialised by :func:`dataset_lock`.

    Raises:
        DataError: see :func:`fetch` and :func:`extract_tar`.
    """
    target = dest_dir / top
    if target.is_dir():
        return target
    with new_dirs_removed_on_failure(dest_dir):
        ensure_writable_dir(dest_dir)
        with dataset_lock(dest_dir):
            if target.is_dir():  # another worker finished while we waited for the lock
                return target
            archive = fetch(remote, dest_dir)
            return extract_tar(archive, dest_dir, top)


def atomic_write(dest: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write ``dest`` by calling ``write(file)`` on a temporary file in the same folder, then renaming.

    Readers see either the old file or the complete new one; on failure the temporary file is removed.

    Raises:
        DataError: the folder is not writable or writing failed.
    """
    ensure_writable_dir(dest.parent)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"could not write {dest} ({_one_line(exc)})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed``; any other is a :class:`DataError`."""

    def __init__(self, file: BinaryIO, source: Path, allowed: Mapping[tuple[str, str], Any], what: str) -> None:
        super().__init__(file, encoding="latin1")  # latin1: Python 2 pickles of numpy arrays need it
        self._source = source
        self._allowed = allowed
        self._what = what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self._source}: refusing to unpickle global {module}.{name} (not allowed in {self._what}); "
                "the file is not genuine: delete it and download the dataset again"
            ) from None


def load_restricted_pickle(path: Path, allowed: Mapping[tuple[str, str], Any], what: str) -> Any:
    """Unpickle ``path``, resolving only the ``(module, name)`` globals in ``allowed``.

    ``what`` names the expected content for the error message (for example "CIFAR-10 batches"). Strings
    pickled by Python 2 come back as ``str`` (decoded as latin-1); bytes pickled by Python 3 stay bytes.

    Raises:
        DataError: the file names a global outside ``allowed`` (message names the file and the global),
            or it is truncated or not a pickle.
    """
    try:
        with path.open("rb") as f:
            return _RestrictedUnpickler(f, path, allowed, what).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise DataError(f"{path} is corrupted or not a pickle ({_one_line(exc)}); delete it to download again") from exc


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


def numpy_array_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled dict of plain numpy arrays, lists, ints and strings needs, and no others.

    Covers the original CIFAR-10 batches (Python 2, ``numpy.core.multiarray._reconstruct``), re-pickles
    by numpy 2 (``numpy._core.multiarray._reconstruct``), and Python 3 protocol-2 bytes
    (``_codecs.encode``, admitted only for latin-1).
    """
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
