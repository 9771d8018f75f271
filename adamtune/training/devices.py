"""Devices: which accelerators exist here, how N workers spread over them, how many cores each gets.

Pure checks, no torch at import: ``resolve_device`` imports torch only to look for a GPU, and raises
:class:`~adamtune.core.errors.DeviceError` (one line, with the fix) for a device that is not there.
"""

from __future__ import annotations

import os

from adamtune.core.errors import DeviceError


def resolve_device(device: str) -> str:
    """Check that ``device`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``) exists here; return its canonical name.

    Raises:
        DeviceError: the device is malformed or absent (e.g. ``cuda:3`` on a machine with two GPUs).
    """
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise DeviceError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        index = parsed.index or 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise DeviceError(f"device {device!r} is not available: this machine has {have}; use --devices cpu")
        return f"cuda:{index}"
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r} is not available on this machine; use --devices cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"unsupported device {device!r}; use cpu, cuda, cuda:N or mps")
    return parsed.type


def resolve_devices(devices: str, workers: int) -> list[str]:
    """The device of each of ``workers`` workers, assigned round-robin from ``devices``.

    ``devices`` is ``auto`` (every CUDA GPU, else the CPU) or a comma-separated list such as
    ``cuda:0,cuda:1`` or ``cpu``; each entry is checked with :func:`resolve_device`. More workers than
    devices share them (``--devices cuda:0,cuda:1 --workers 8``: four per GPU); fewer leave the last ones
    unused.

    Raises:
        DeviceError: an entry is malformed or not present on this machine, or the list is empty.
        ConfigError: ``workers`` < 1.
    """
    from adamtune.core.errors import ConfigError

    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    text = devices.strip()
    if text == "auto":
        import torch

        available = [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]
    else:
        entries = [entry.strip() for entry in text.split(",")]
        if not text or any(not entry for entry in entries):
            raise DeviceError(f"--devices {devices!r} has an empty entry; use auto, cpu or e.g. cuda:0,cuda:1")
        available = [resolve_device(entry) for entry in entries]
    return [available[i % len(available)] for i in range(workers)]


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)
