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
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from adamtune.core.errors import DataError
from adamtune.data.archives import DATA_DIR_ENV, ensure_writable_dir, extract_tar, one_line

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
                    f"could not download {remote.url} ({one_line(reason)}); fetch it yourself and save it as {dest}"
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
        raise DataError(f"could not write {dest} ({one_line(exc)})") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
