"""What MLflow tracking adds to a trial: the same trials with tracking on and off.

Runs a fixed list of Adam settings on the ``digits`` task (its default 20 epochs, batch size 32), each
(``--rounds`` times) with tracking off and with tracking on (a local MLflow SQLite store by default, as
``adamtune search`` uses; or ``--tracking-uri``), with the same trial numbers and seeds, so both
modes train exactly the same models. Each mode has its own Optuna study in SQLite; the tracked one has
its MLflow parent run, so every tracked trial does all that a search's trial does (child run, params,
per-epoch metrics, final metrics and tags, the parent's progress metrics).

Trial time is the objective's wall time (``Objective.__call__``: sampling, training, Optuna attributes,
MLflow calls made or queued). The writer thread's work overlaps the trials and competes with them for
the CPU, so it is inside the measured time; what is still queued after the last trial is flushed at
the end and reported separately (``flush at the end``). The modes alternate (off/on, then on/off) to
spread drift evenly.

Prints the total trial time per mode and their ratio (goal: tracking on / off <= 1.01), the median of
the per-setting ratios (less sensitive to a burst of load), the ratio of the process's CPU time during
the trials (all threads; writer work done between trials is not in it), and an account of the tracking
work itself, which depends little on the load: the wall time the training thread spent in tracking
calls, and the CPU time of the writer thread, per trial.

Usage: ``python bench/tracking.py [--configs 8] [--rounds 1] [--threads N] [--tracking-uri URI]``. Run
it on an otherwise idle machine: a busy one makes the noise larger than the effect. On a busy machine,
``--threads 1`` helps: torch's two intra-op threads on two contended cores make digits' tiny trials
10-30 times slower and erratic.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import optuna
import torch

from adamtune.core.config import build_spec
from adamtune.core.space import AdamParams
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume
from adamtune.tasks import resolve_task
from adamtune.tracking.tracker import Tracker
from adamtune.tracking.trial_run import TrialRun
from adamtune.tracking.writer import Writer, _Op
from adamtune.trials import mlflow_run
from adamtune.trials.objective import Objective

#: Adam settings inside digits' search space, from tame to aggressive.
CONFIGS = [
    AdamParams(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, decay=1e-6),
    AdamParams(lr=3e-3, beta1=0.8, beta2=0.99, epsilon=1e-6, decay=1e-4),
    AdamParams(lr=1e-2, beta1=0.95, beta2=0.9995, epsilon=1e-9, decay=1e-3),
    AdamParams(lr=3e-4, beta1=0.7, beta2=0.995, epsilon=1e-7, decay=1e-5),
    AdamParams(lr=2e-2, beta1=0.6, beta2=0.95, epsilon=1e-4, decay=5e-3),
    AdamParams(lr=5e-4, beta1=0.98, beta2=0.9999, epsilon=1e-10, decay=1e-6),
    AdamParams(lr=6e-3, beta1=0.85, beta2=0.98, epsilon=1e-3, decay=2e-4),
    AdamParams(lr=1e-4, beta1=0.5, beta2=0.9, epsilon=1e-8, decay=1e-2),
]
SEED = 2024


def optuna_params(params: AdamParams, space) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The Optuna parameters that make ``suggest`` return ``params`` (betas stored as 1 - beta)."""
    return {dim.optuna_name: dim.to_internal(getattr(params, dim.name)) for dim in space.sampled()}


class Account:
    """Seconds spent in tracking: wall time on the training thread, CPU time on the writer thread."""

    def __init__(self) -> None:
        self.main = 0.0
        self.writer_cpu = 0.0
        self.calls = 0

    def install(self) -> None:
        """Wrap the tracking entry points the objective calls, and the writer's per-call work."""

        def on_main(owner, name):  # type: ignore[no-untyped-def]
            original = getattr(owner, name)

            def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
                started = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.main += time.perf_counter() - started

            setattr(owner, name, wrapped)

        for owner, name in [
            (Tracker, "start_trial"),
            (TrialRun, "log_epoch"),
            (TrialRun, "finish"),
            (TrialRun, "wait_for_run_id"),
            (mlflow_run, "_note_run_id"),
        ]:
            on_main(owner, name)
        run = Writer._run

        def timed_run(writer: Writer, op: _Op) -> bool:
            started = time.thread_time()
            try:
                return run(writer, op)
            finally:
                self.writer_cpu += time.thread_time() - started
                self.calls += 1

        Writer._run = timed_run  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=len(CONFIGS), help="how many of the fixed settings to run")
    parser.add_argument("--tracking-uri", help="MLflow store (default: a fresh local SQLite store)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--rounds", type=int, default=1, help="run every setting this many times per mode")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = CONFIGS[: args.configs]
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-bench-tracking-"))
    os.chdir(workdir)
    try:
        task = resolve_task("digits")
        data = task.load_data(None)
        objectives: dict[str, Objective] = {}
        studies: dict[str, optuna.Study] = {}
        tracker: Tracker | None = None
        for mode in ("off", "on"):
            spec = build_spec("digits", None, f"bench-{mode}", {"pruner": "none", "n_trials": 10_000})
            spec = spec.with_task_defaults(task.default_epochs, task.default_batch_size)
            study = create_or_resume(spec, open_storage(f"sqlite:///{workdir}/{mode}.db"), seed=SEED)
            if mode == "on":
                tracker = Tracker(spec.study_name, args.tracking_uri or f"sqlite:///{workdir}/mlflow.db")
                tracker.attach(study)
            objectives[mode] = Objective(spec, task, data, "cpu", tracker, base_seed=SEED, worker="bench")
            studies[mode] = study

        seconds: dict[str, list[float]] = {"off": [], "on": []}
        cpu: dict[str, float] = {"off": 0.0, "on": 0.0}
        account = Account()
        account.install()

        def timed(mode: str):  # type: ignore[no-untyped-def]
            def call(trial: optuna.Trial) -> float:
                started, cpu_started = time.perf_counter(), time.process_time()
                try:
                    return objectives[mode](trial)
                finally:
                    seconds[mode].append(time.perf_counter() - started)
                    cpu[mode] += time.process_time() - cpu_started

            return call

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # Warm-up, not measured: each study's first trial is the baseline (Adam's defaults) that
        # create_or_resume enqueued; it pays for first-call allocations and lazy imports.
        for mode in ("off", "on"):
            studies[mode].optimize(objectives[mode], n_trials=1)
        account.main = account.writer_cpu = 0.0
        account.calls = 0
        for i, params in enumerate(configs * args.rounds):
            for mode in ("off", "on") if i % 2 == 0 else ("on", "off"):
                studies[mode].enqueue_trial(optuna_params(params, objectives[mode].spec.space))
                studies[mode].optimize(timed(mode), n_trials=1)
        flush_started = time.perf_counter()
        dropped = tracker.close() if tracker is not None else 0
        flush = time.perf_counter() - flush_started

        off, on = sum(seconds["off"]), sum(seconds["on"])
        paired = sorted(b / a for a, b in zip(seconds["off"], seconds["on"], strict=True))
        n = len(configs) * args.rounds
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        )
        print(
            f"task digits: {task.default_epochs} epochs, batch size {task.default_batch_size}, cpu, "
            f"{torch.get_num_threads()} torch thread(s)"
        )
        print(
            f"trials per mode: {len(configs)} fixed settings x {args.rounds} round(s), same seeds "
            "(after one unmeasured warm-up trial)"
        )
        print(f"tracking off: {off:8.2f} s  ({off / len(seconds['off']):.3f} s per trial)")
        print(f"tracking on:  {on:8.2f} s  ({on / len(seconds['on']):.3f} s per trial)")
        pairs = zip(seconds["off"], seconds["on"], strict=True)
        print("seconds per setting (off/on):", " ".join(f"{a:.2f}/{b:.2f}" for a, b in pairs))
        print(f"flush at the end: {flush:.2f} s, tracking calls dropped: {dropped}")
        print(f"ratio on/off: {on / off:.4f}  (goal <= 1.01); median per setting: {paired[n // 2]:.4f}")
        print(
            f"process CPU time (all threads) on/off: {cpu['on']:.2f} s / {cpu['off']:.2f} s "
            f"= {cpu['on'] / cpu['off']:.4f}"
        )
        print(
            f"tracking work per trial: {1000 * account.main / n:.1f} ms on the training thread, "
            f"{1000 * account.writer_cpu / n:.1f} ms CPU on the writer thread ({account.calls / n:.1f} calls), "
            f"= {100 * (account.main + account.writer_cpu) / off:.2f}% of the untracked trial time"
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
