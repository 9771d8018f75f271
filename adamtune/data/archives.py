"""Reading downloaded archives safely, and the file-system checks downloads share.

Tar extraction refuses paths leaving the target; unpickling builds only the types a dataset format needs
(CIFAR-10's python pickles); a data directory is checked writable before anything is written there.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, BinaryIO

from adamtune.core.errors import DataError

DATA_DIR_ENV = "ADAMTUNE_DATA_DIR"


def one_line(reason: object) -> str:
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
            f"data directory {path} is not writable ({one_line(exc)}); "
            f"pass --data-dir or set {DATA_DIR_ENV} to a writable directory"
        ) from exc
    return path


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
                f"{archive} is corrupted or truncated ({one_line(exc)}); delete it to download it again"
            ) from exc
        extracted = tmp / top
        if not extracted.is_dir():
            raise DataError(f"{archive} holds no {top}/ folder; delete it to download it again")
        try:
            os.rename(extracted, target)
        except OSError as exc:
            if not target.is_dir():
                raise DataError(f"could not move extracted {top}/ into {dest_dir} ({one_line(exc)})") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


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
        raise DataError(f"{path} is corrupted or not a pickle ({one_line(exc)}); delete it to download again") from exc


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
