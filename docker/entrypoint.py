#!/usr/bin/env python3
"""Entrypoint of the `study` and `worker` services in docker-compose.yml: ``adamtune-entrypoint ARGS...``.

It ends by exec-ing ``adamtune ARGS...``; before that it does the two things that only a container
needs:

1. ``worker``: wait until the study exists. The `study` service creates it (``adamtune search``), but
   Compose starts the scaled workers at the same time, and ``adamtune worker`` only joins an existing
   study. So a worker polls the storage (``$ADAMTUNE_STORAGE``, read-only) every
   ``$ADAMTUNE_WAIT_POLL`` seconds (5) until the study named by ``--study`` (or ``$ADAMTUNE_STUDY``)
   is there, for at most ``$ADAMTUNE_WAIT_TIMEOUT`` seconds (900; 0 = forever), then exits 3.
   ``ADAMTUNE_WAIT_FOR_STUDY=0`` skips this.

2. ``worker`` and ``search`` with ``--device(s) auto`` (or none): claim one GPU. Docker does not share
   GPUs out among replicas (a reservation with ``count: 1`` gives every replica GPU 0), so the services
   reserve ``count: all`` and each container takes the first free slot among the GPUs it sees, with
   an ``flock`` on ``$ADAMTUNE_LOCK_DIR/gpuI.slotS.lock`` in a volume that all containers of the host
   share, and sets ``CUDA_VISIBLE_DEVICES=I``. The locked descriptor is inherited by ``adamtune``
   across exec, so the claim lasts exactly as long as that process: the kernel drops it when the
   process or its container dies, leaving nothing stale. ``$ADAMTUNE_WORKERS_PER_GPU`` (1) slots per
   GPU; with every slot taken, the container waits for one to free. It claims nothing when the
   container sees no GPU, when ``CUDA_VISIBLE_DEVICES`` is already set, when a device other than
   ``auto`` is given, or with ``ADAMTUNE_GPU_CLAIM=0``.

Standard library only, except for the wait, which imports optuna and its sqlalchemy and alembic (installed in
the image).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PROG = "adamtune-entrypoint"
CLAIMING_COMMANDS = ("worker", "search")
EXIT_NO_STUDY = 3
EXIT_USAGE = 2

# Descriptors holding GPU claims. They must stay open (and inheritable) through the exec of adamtune.
held_locks: list[int] = []


def log(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


def option_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``--name VALUE`` or ``--name=VALUE`` among ``args``, else None."""
    value = None
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(name + "="):
                value = arg[len(name) + 1 :]
    return value


def env_number(environ: Mapping[str, str], name: str, default: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{PROG}: {name} must be a number, not {raw!r}") from None
    if value < 0:
        raise SystemExit(f"{PROG}: {name} must be >= 0, not {raw!r}")
    return value


# ---- 1. wait for the study -------------------------------------------------------------------------


def study_exists(storage_url: str, study_name: str) -> bool:
    """Whether ``study_name`` is in the Optuna RDB storage at ``storage_url``.

    Read-only, so that a worker never races the `study` service while it sets up a new database. Even
    with ``skip_table_creation``, opening an ``RDBStorage`` writes Optuna's version row and alembic
    stamp where they are missing, as they are between the study service creating the tables and
    stamping them; a poll landing there made the study service fail ("duplicate key value violates
    unique constraint" on PostgreSQL). So the storage is opened only once the schema is stamped (the
    last step of setting it up); before, the study counts as "not yet". Missing tables or an
    unreachable database count as "not yet" too.
    """
    import optuna
    import sqlalchemy
    from alembic.migration import MigrationContext

    engine = storage = None
    try:
        engine = sqlalchemy.create_engine(storage_url)
        with engine.connect() as connection:
            if MigrationContext.configure(connection).get_current_revision() is None:
                return False
        storage = optuna.storages.RDBStorage(storage_url, skip_table_creation=True, skip_compatibility_check=True)
        return any(s.study_name == study_name for s in storage.get_all_studies())
    except Exception:  # every failure here means "not there yet": the database may still be starting
        return False
    finally:
        for opened in (engine, storage.engine if storage is not None else None):
            if opened is not None:
                with contextlib.suppress(Exception):
                    opened.dispose()


def wait_for_study(
    storage_url: str,
    study_name: str,
    timeout: float,
    poll: float,
    exists: Callable[[str, str], bool] = study_exists,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """Poll until the study exists (True) or ``timeout`` seconds have passed (False); 0 waits forever."""
    deadline = clock() + timeout
    announced = False
    while True:
        if exists(storage_url, study_name):
            if announced:
                log(f"study {study_name!r} found")
            return True
        if timeout and clock() >= deadline:
            return False
        if not announced:
            log(f"waiting for study {study_name!r} to be created (by the study service) ...")
            announced = True
        sleep(poll)


# ---- 2. claim a GPU ---------------------------------------------------------------------------------


def visible_gpu_count(dev_dir: Path = Path("/dev")) -> int:
    """How many NVIDIA GPUs this container sees: the ``/dev/nvidiaN`` device nodes the toolkit mounted."""
    try:
        return sum(1 for entry in os.listdir(dev_dir) if re.fullmatch(r"nvidia[0-9]+", entry))
    except OSError:
        return 0


def try_claim_gpu(lock_dir: Path, n_gpus: int, slots_per_gpu: int) -> tuple[int, int] | None:
    """Lock the first free ``(slot, gpu)``, slot-major so that claims spread over the GPUs first.

    Returns ``(gpu_index, fd)`` with ``fd`` holding the flock (inheritable across exec), or None when
    every slot is taken.
    """
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(slots_per_gpu):
        for gpu in range(n_gpus):
            fd = os.open(lock_dir / f"gpu{gpu}.slot{slot}.lock", os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            os.set_inheritable(fd, True)
            return gpu, fd
    return None


def claim_gpu(
    lock_dir: Path, n_gpus: int, slots_per_gpu: int, poll: float, sleep: Callable[[float], None] = time.sleep
) -> tuple[int, int]:
    """Like :func:`try_claim_gpu`, but wait until a slot frees."""
    announced = False
    while (claim := try_claim_gpu(lock_dir, n_gpus, slots_per_gpu)) is None:
        if not announced:
            log(f"all {n_gpus * slots_per_gpu} GPU slots ({n_gpus} GPUs x {slots_per_gpu}) are taken; waiting")
            announced = True
        sleep(poll)
    return claim


def wants_gpu_claim(args: Sequence[str], environ: Mapping[str, str], n_gpus: int) -> bool:
    if not args or args[0] not in CLAIMING_COMMANDS or n_gpus == 0:
        return False
    if environ.get("ADAMTUNE_GPU_CLAIM", "1").strip() == "0" or "CUDA_VISIBLE_DEVICES" in environ:
        return False
    device = option_value(args, "--device", "--devices")
    return device is None or device == "auto"


# ---- main -------------------------------------------------------------------------------------------


def prepare(
    args: Sequence[str],
    environ: dict[str, str],
    dev_dir: Path = Path("/dev"),
    sleep: Callable[[float], None] = time.sleep,
) -> int | None:
    """Wait and claim as described above, updating ``environ``; an exit code when adamtune must not run."""
    poll = env_number(environ, "ADAMTUNE_WAIT_POLL", 5.0)
    if args and args[0] == "worker" and environ.get("ADAMTUNE_WAIT_FOR_STUDY", "1").strip() != "0":
        study = option_value(args, "--study") or environ.get("ADAMTUNE_STUDY", "")
        storage = option_value(args, "--storage") or environ.get("ADAMTUNE_STORAGE", "")
        if not study or not storage:
            log("worker needs --study (or ADAMTUNE_STUDY) and ADAMTUNE_STORAGE (or --storage)")
            return EXIT_USAGE
        timeout = env_number(environ, "ADAMTUNE_WAIT_TIMEOUT", 900.0)
        if not wait_for_study(storage, study, timeout, poll, sleep=sleep):
            log(f"study {study!r} did not appear within {timeout:g} s; start it with the study service")
            return EXIT_NO_STUDY

    n_gpus = visible_gpu_count(dev_dir)
    if wants_gpu_claim(args, environ, n_gpus):
        slots = int(env_number(environ, "ADAMTUNE_WORKERS_PER_GPU", 1)) or 1
        lock_dir = Path(environ.get("ADAMTUNE_LOCK_DIR") or "/var/lib/adamtune/locks")
        gpu, fd = claim_gpu(lock_dir, n_gpus, slots, poll, sleep=sleep)
        held_locks.append(fd)
        environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
        environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        log(f"claimed GPU {gpu} of {n_gpus} (CUDA_VISIBLE_DEVICES={gpu})")
    return None


def main(argv: Sequence[str] | None = None, dev_dir: Path = Path("/dev")) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ)
    code = prepare(args, environ, dev_dir)
    if code is not None:
        return code
    try:
        os.execvpe("adamtune", ["adamtune", *args], environ)
    except OSError as exc:
        log(f"cannot run adamtune: {exc}")
        return 127


if __name__ == "__main__":
    sys.exit(main())
