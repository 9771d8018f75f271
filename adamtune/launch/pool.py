"""Local worker processes: ``search --workers N`` runs N workers, restarts killed ones, stops them on Ctrl-C.

:func:`run_pool` starts one process per plan (:func:`plan_workers`: a device and a share of the CPU
cores each), forked from a fork server that imported torch, optuna, MLflow and adamtune once
(:func:`worker_context`; never a fork of this process, whose threads and databases are open), so a worker
starts without re-paying those imports. Each process joins the study by name (``worker.join_study``) and
runs the worker loop; its log lines come back through a queue (a failed trial's traceback is printed
once for the whole search, ``failures.FailureLog.relay``; a task's broken contract ends the search as
that one error, :attr:`PoolResult.contract_error`). A process killed by a signal is started
again (at most ``MAX_WORKER_RESTARTS`` times); Ctrl-C or SIGTERM here is forwarded as SIGTERM, and the
workers fail and re-queue their running trials before exiting.
"""

from __future__ import annotations

import logging
import logging.handlers
import multiprocessing
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from adamtune.core.errors import AdamtuneError, ContractError
from adamtune.core.signals import Interrupts
from adamtune.launch.worker_setup import join_study
from adamtune.storage.optuna_adapter import RDB_MODELS_MODULE
from adamtune.training.devices import cpu_cores
from adamtune.trials.failures import FailureLog
from adamtune.trials.worker import INTERRUPTED_EXIT, Worker, WorkerOptions

log = logging.getLogger(__name__)


#: How many killed worker processes one local search starts again (beyond that it goes on narrower).
MAX_WORKER_RESTARTS = 3

#: The log record attribute of a worker's ContractError (the parent raises it instead of printing it).
CONTRACT_RECORD_KEY = "adamtune_contract"


class WorkerFailed(AdamtuneError):
    """A worker process of a multi-worker search exited with an error or was killed."""


def plan_workers(base: WorkerOptions, devices: list[str], cores: int | None = None) -> list[WorkerOptions]:
    """Options for each worker process of a local multi-worker search, one per entry of ``devices``.

    Workers are named ``<host>-w<i>`` (label ``w<i>``). CPU workers split the cores:
    ``max(1, cores // cpu_workers)`` torch threads each, so that they do not oversubscribe; GPU workers
    get ``max(1, cores // workers)`` for their host-side work.
    """
    cores = cores or cpu_cores()
    host = socket.gethostname()
    cpu_workers = sum(1 for device in devices if device == "cpu")
    plans = []
    for index, device in enumerate(devices):
        share = cpu_workers if device == "cpu" else len(devices)
        plans.append(
            replace(
                base,
                device=device,
                name=f"{host}-w{index}",
                label=f"w{index}",
                index=index,
                threads=max(1, cores // share),
            )
        )
    return plans


def _process_main(options: WorkerOptions, log_queue: Any) -> None:
    """Entry point of a spawned worker process: join the study, run, exit with a meaningful code.

    Log records go to ``log_queue`` (the parent prints them above its progress display). SIGINT is
    ignored (the parent forwards SIGTERM on Ctrl-C). Exit codes: 0 done, an
    ``AdamtuneError``'s code, 130 interrupted, 1 anything else.
    """
    # Ctrl-C reaches the whole process group; the parent answers it by sending SIGTERM, which the worker
    # handles outside its critical sections. (A fork server's child starts with the fork server's
    # handlers, not the parent's, so this must be set here.)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    handler = logging.handlers.QueueHandler(log_queue)
    handler.setFormatter(logging.Formatter(f"[{options.label} {options.device}] %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("adamtune").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    code = 0
    worker: Worker | None = None
    try:
        worker = join_study(options)
        worker.handle_sigint = False
        worker.run()
    except AdamtuneError as exc:
        log.error("%s", exc, extra={CONTRACT_RECORD_KEY: str(exc)} if isinstance(exc, ContractError) else None)
        code = exc.exit_code
    except KeyboardInterrupt:
        code = INTERRUPTED_EXIT
    except BaseException:
        log.exception("worker crashed")
        code = 1
    finally:
        if worker is not None and worker.objective.tracker is not None:
            worker.objective.tracker.close()  # send the MLflow calls still queued
    logging.shutdown()
    sys.exit(code)


@dataclass(frozen=True)
class PoolResult:
    """Exit codes of a pool's workers, in the order of their plans, and the message of the first
    :class:`ContractError` that stopped one (not printed: the caller raises it, one line for the search)."""

    plans: list[WorkerOptions]
    exit_codes: list[int | None]
    contract_error: str | None = None

    def failures(self) -> list[str]:
        """One description per worker that did not exit 0."""
        return [
            f"worker {plan.label} ({plan.device}) "
            + (f"exited with code {code}" if code >= 0 else f"killed by signal {-code}")
            for plan, code in zip(self.plans, self.exit_codes, strict=True)
            if code is not None and code != 0
        ]


#: Imported once by the fork server, before any worker: each worker process is a fork of it and starts
#: with these loaded instead of importing them again (about 4-8 s of CPU per worker on a laptop core).
#: ``torch._dynamo`` is what the first ``torch.optim`` step imports; SQLAlchemy, alembic and Optuna's
#: table models are what opening the study database imports (Optuna imports them lazily). The fork
#: server's own exit (after the search) skips the collector's last passes (``fastexit.py``, first so
#: that its hook runs last).
PRELOAD = [
    "adamtune.cli.fastexit",
    "torch",
    "torch._dynamo",
    "optuna",
    "sqlalchemy.orm",
    "alembic.command",
    "alembic.config",
    "alembic.migration",
    "alembic.script",
    RDB_MODELS_MODULE,
    "mlflow",
    "adamtune.launch.pool",
    "adamtune.trials.objective",
    "adamtune.tracking.tracker",
]


def worker_context(preload: list[str] | None = None) -> Any:
    """The multiprocessing context of worker processes: a fork server with :data:`PRELOAD` imported.

    A fork server is a fresh interpreter (nothing of this process's threads or open databases), so it is
    as safe as ``spawn``; its children are forks of it, so they do not re-pay the imports. CUDA is never
    initialised in the server (importing torch does not), so GPU workers start as with ``spawn``.
    Platforms without ``fork`` (Windows, and macOS where forking is unsafe) get ``spawn``.
    """
    if sys.platform != "linux":
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD if preload is None else preload)
    return context


def start_fork_server(*, tracking: bool = True) -> None:
    """Start the workers' fork server now, so its imports overlap with this process's own start-up.

    Without tracking, MLflow is left out of the preload (its import is a second of CPU nobody needs).
    """
    if sys.platform == "linux":
        worker_context(
            PRELOAD if tracking else [name for name in PRELOAD if name not in ("mlflow", "adamtune.tracking.tracker")]
        )
        from multiprocessing import forkserver

        forkserver.ensure_running()


def run_pool(
    plans: list[WorkerOptions],
    on_poll: Callable[[], None] | None = None,
    on_log: Callable[[str], None] | None = None,
    poll_seconds: float = 1.0,
    stop_seconds: float = 120.0,
) -> PoolResult:
    """Start one worker process per plan (see :func:`worker_context`); call ``on_poll`` about every
    ``poll_seconds`` until all exit.

    Args:
        plans: the options of each worker (see :func:`plan_workers`); the study must already exist.
        on_poll: called in this process between waits, e.g. to update a progress display from the
            storage; its exceptions are logged and ignored.
        on_log: receives each log line of the workers (default: printed to stderr).
        stop_seconds: after a Ctrl-C, how long to wait for the workers to finish failing their trials
            before killing them.

    A worker process killed by a signal (SIGKILL, the OOM killer) is started again, at most
    ``MAX_WORKER_RESTARTS`` times per call, so the search finishes at full width; its trial goes stale and
    is retried by whichever worker starts a trial after the grace period.

    Returns:
        The workers' exit codes, of the last process of each slot (a negative code: killed by that signal).

    Raises:
        KeyboardInterrupt: Ctrl-C or SIGTERM here; SIGTERM was forwarded to every worker and they have
            exited (their running trials are FAIL, their MLflow runs closed). A second Ctrl-C kills them
            at once; their trials are then failed by the heartbeat check of the next worker.
    """
    from multiprocessing.connection import wait

    emit = on_log or (lambda line: print(line, file=sys.stderr))
    context = worker_context()
    log_queue = context.Queue()

    def make_process(plan: WorkerOptions) -> Any:
        return context.Process(target=_process_main, args=(plan, log_queue), name=f"adamtune-{plan.label}")

    processes = [make_process(plan) for plan in plans]
    restarts = [0]
    failure_log = FailureLog()  # one traceback for the whole search, whichever worker's trial failed first
    contract: list[str] = []

    def replace_killed() -> None:
        """Start a new process for each worker killed by a signal (SIGKILL, the OOM killer, a crash).

        Its trial goes stale and is retried by a live worker; the new process joins the study as the old
        one did. A worker that exited by itself (done, an error, SIGTERM) is not replaced, and at most
        ``MAX_WORKER_RESTARTS`` processes are started again per search.
        """
        for index, process in enumerate(processes):
            code = process.exitcode
            if code is None or code >= 0 or restarts[0] >= MAX_WORKER_RESTARTS:
                continue
            restarts[0] += 1
            plan = plans[index]
            emit(
                f"worker {plan.label} ({plan.device}) was killed by signal {-code}; starting a new one "
                f"(restart {restarts[0]} of at most {MAX_WORKER_RESTARTS})"
            )
            processes[index] = make_process(plan)
            processes[index].start()

    def drain() -> None:
        while True:
            try:
                record = log_queue.get_nowait()
            except Exception:  # queue.Empty, or a closed queue
                return
            broken = getattr(record, CONTRACT_RECORD_KEY, None)
            if broken is not None:
                contract.append(broken)
                continue
            emit(failure_log.relay(record))

    display_failing = [False]

    def poll() -> None:
        drain()
        if on_poll is None:
            return
        try:
            on_poll()
            display_failing[0] = False
        except Exception as exc:  # the display must never stop the search; say so once per outage
            if not display_failing[0]:
                emit(f"progress display: cannot read the study ({str(exc).splitlines()[0][:200]}); retrying")
            display_failing[0] = True

    with Interrupts((signal.SIGTERM,)):
        try:
            for process in processes:  # a Ctrl-C meanwhile stops those already started
                process.start()
            while True:
                replace_killed()
                alive = [process for process in processes if process.is_alive()]
                if not alive:
                    break
                wait([process.sentinel for process in alive], timeout=poll_seconds)
                poll()
        except KeyboardInterrupt:
            _stop(processes, drain, stop_seconds)
            raise
        finally:
            poll()
            log_queue.close()
    return PoolResult(plans, [process.exitcode for process in processes], contract[0] if contract else None)


def _stop(processes: list[Any], drain: Callable[[], None], stop_seconds: float) -> None:
    """SIGTERM every live worker and wait for them to exit; a second Ctrl-C (or the deadline) kills them."""
    from multiprocessing.connection import wait

    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + stop_seconds
    try:
        while any(process.is_alive() for process in processes) and time.monotonic() < deadline:
            wait([process.sentinel for process in processes if process.is_alive()], timeout=1.0)
            drain()
    except KeyboardInterrupt:
        pass
    for process in processes:
        if process.is_alive():
            process.kill()
            process.join()
