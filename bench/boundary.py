"""The serial bookkeeping of a worker's trial boundary, in CPU time and SQL statements per step.

Runs the study-database side of a one-worker search (``adamtune search --task digits``: TPE, Hyperband,
20 epochs) without training: for each trial the worker's own calls, in the worker's order:

* ``admit``: ``Worker._admit`` (admission lock, stale-trial check, count, ``study.ask``, first heartbeat;
  since issue 14 also the sampler's draw of the settings, which Optuna otherwise makes at ``suggest``);
* ``suggest``: ``space.suggest`` with the settings deferred (``TrialWriter.defer_params``);
* ``begin_flush``: the first ``TrialWriter.flush`` (settings, seed, device, ...);
* ``epochs``: 20 ``report``/``should_prune`` calls on a made-up curve (not on the serial path; shown for scale);
* ``conclude``: the concluding attributes (curves, state) handed over as ``Objective.conclude`` does
  (``flush_at_end`` where it exists: then they are written by ``tell``; ``flush`` before);
* ``tell``: ``Worker._tell``.

Reported per step, averaged over the steady-state trials (the first ``--warmup`` are left out): this
thread's CPU time (``time.thread_time``; SQLite runs in-process, PostgreSQL's server time is not in it),
the SQL statements sent and the transactions committed (SQLAlchemy events), and wall time for reference
only. Statement counts do not depend on machine load; CPU times do a little; wall times a lot.

    python bench/boundary.py --storage sqlite      # a fresh SQLite file in a temporary directory
    python bench/boundary.py --storage postgresql  # a throwaway database on 127.0.0.1:5432

To compare two versions, run this script from outside the checkout with ``PYTHONPATH`` naming the
checkout to measure (``cd /tmp && PYTHONPATH=/path/to/old python /path/to/bench/boundary.py``), the two
alternating; equal fingerprints mean the same sampling and pruning.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The PostgreSQL server for ``--storage postgresql`` (a database is created there and dropped after).
ADMIN = os.environ.get("ADAMTUNE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
STEPS = ("conclude", "tell", "admit", "suggest", "begin_flush", "epochs")


class Meter:
    """Per step: thread CPU seconds, wall seconds, statements and commits of this thread."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.thread = threading.get_ident()
        self.statements = 0
        self.commits = 0
        self.samples: dict[str, list[tuple[float, float, int, int]]] = defaultdict(list)
        self.log: list[str] | None = None
        self.fingerprint = ""
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if threading.get_ident() == self.thread:
            self.statements += 1
            if self.log is not None:
                self.log.append(" ".join(statement.split())[:160])

    def _commit(self, _conn: Any) -> None:
        if threading.get_ident() == self.thread:
            self.commits += 1

    @contextmanager
    def step(self, name: str, keep: bool) -> Iterator[None]:
        cpu, wall, statements, commits = time.thread_time(), time.perf_counter(), self.statements, self.commits
        if self.log is not None:
            self.log.append(f"--- {name}")
        yield
        if keep:
            self.samples[name].append(
                (
                    time.thread_time() - cpu,
                    time.perf_counter() - wall,
                    self.statements - statements,
                    self.commits - commits,
                )
            )


def curve(params: dict[str, float], epoch: int) -> float:
    """A made-up validation loss: best near lr 3e-3, with a per-trial wobble (some trials get pruned)."""
    quality = abs(math.log10(params["lr"]) + 2.5)
    return 0.1 + quality + 1.0 / epoch + 0.02 * math.sin(epoch * params["beta1"] * 7)


def run(url: str, n_trials: int, warmup: int, epochs: int, seed: int, show: bool) -> Meter:
    from optuna.trial import TrialState

    from adamtune.core.config import build_spec
    from adamtune.core.signals import Interrupts
    from adamtune.core.space import baseline_for, suggest
    from adamtune.storage.attr_keys import (
        BASELINE_ATTR,
        CURVES_ATTR,
        DEVICE_ATTR,
        HOST_ATTR,
        PARAMS_ATTR,
        SEED_ATTR,
        STATE_ATTR,
        WORKER_ATTR,
    )
    from adamtune.storage.backends import open_storage
    from adamtune.storage.reporting import TrialWriter
    from adamtune.storage.study import create_or_resume
    from adamtune.trials.worker import Worker

    spec = build_spec("digits", None, None, {"n_trials": n_trials, "epochs": epochs}).with_task_defaults(epochs, 32)
    storage = open_storage(url)
    study = create_or_resume(spec, storage, seed=seed)
    worker = Worker(study, objective=None, n_trials=n_trials)  # type: ignore[arg-type]  # only storage calls
    meter = Meter(storage.engine)
    with Interrupts() as interrupts:
        for index in range(n_trials):
            keep = index >= warmup
            if show and index == warmup:
                meter.log = []
            with meter.step("admit", keep):
                admission = worker._admit(interrupts)
            trial = admission.trial
            assert trial is not None, admission
            is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
            writer = TrialWriter(trial, epochs)
            writer.defer_params()
            with meter.step("suggest", keep), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
                params = suggest(trial, spec.space)
            if is_baseline:
                params = baseline_for(spec.space)
            writer.set_attrs(
                {
                    SEED_ATTR: index,
                    PARAMS_ATTR: params.as_dict(),
                    DEVICE_ATTR: "cpu",
                    HOST_ATTR: "host",
                    WORKER_ATTR: "worker-0",
                }
            )
            with meter.step("begin_flush", keep):
                writer.flush()
            history, pruned = [], False
            with meter.step("epochs", keep):
                for epoch in range(1, epochs + 1):
                    value = curve(params.as_dict(), epoch)
                    history.append({"epoch": epoch, "val_loss": value})
                    writer.report(value, epoch)
                    if not is_baseline and writer.should_prune(epoch):
                        pruned = True
                        break
            with meter.step("conclude", keep):
                writer.set_attrs({CURVES_ATTR: history, STATE_ATTR: "pruned" if pruned else "complete"})
                getattr(writer, "flush_at_end", writer.flush)()  # as Objective.conclude (flush before it existed)
            with meter.step("tell", keep):
                state = TrialState.PRUNED if pruned else TrialState.COMPLETE
                worker._tell(trial, state, None if pruned else history[-1]["val_loss"])
            if show and index == warmup:
                print("\n".join(meter.log or []))
                meter.log = None
    meter.fingerprint = fingerprint(study.get_trials(deepcopy=False))
    return meter


def fingerprint(trials: list[Any]) -> str:
    """A digest of every trial's number, state, settings, value and curve: equal digests of two runs with the
    same seed mean the same sampling and pruning decisions."""
    import hashlib

    rows = [
        (t.number, t.state.name, sorted(t.params.items()), t.value, sorted(t.intermediate_values.items()))
        for t in trials
    ]
    return hashlib.sha256(repr(rows).encode()).hexdigest()[:16]


def report(meter: Meter, label: str) -> None:
    print(f"{label}: per steady-state trial (mean over {len(meter.samples['tell'])})")
    print(f"  {'step':<12} {'cpu ms':>8} {'wall ms':>8} {'stmts':>6} {'commits':>7}")
    total = [0.0, 0.0, 0.0, 0.0]
    for name in STEPS:
        rows = meter.samples[name]
        cpu, wall = statistics.mean(r[0] for r in rows) * 1e3, statistics.mean(r[1] for r in rows) * 1e3
        statements, commits = statistics.mean(r[2] for r in rows), statistics.mean(r[3] for r in rows)
        print(f"  {name:<12} {cpu:8.2f} {wall:8.2f} {statements:6.1f} {commits:7.1f}")
        if name in ("conclude", "tell", "admit", "suggest"):
            for i, v in enumerate((cpu, wall, statements, commits)):
                total[i] += v
    print(f"  {'serial path':<12} {total[0]:8.2f} {total[1]:8.2f} {total[2]:6.1f} {total[3]:7.1f}")
    print(f"  study fingerprint {meter.fingerprint} (same seed and code paths: same settings, states and curves)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="sqlite", help="'sqlite' (a temporary file) or a database URL")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10, help="trials left out of the means")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--show", action="store_true", help="print the statements of the first measured trial")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory() as directory, _database(args.storage, Path(directory)) as url:
        meter = run(url, args.trials, args.warmup, args.epochs, args.seed, args.show)
        report(meter, url.split(":")[0])


@contextmanager
def _database(storage: str, directory: Path) -> Iterator[str]:
    """The URL to use: a SQLite file in ``directory``, a throwaway database on ``ADMIN`` for 'postgresql'
    (created and dropped here), else ``storage`` itself."""
    if storage == "sqlite":
        yield f"sqlite:///{directory / 'boundary.db'}"
        return
    if storage != "postgresql":
        yield storage
        return
    import uuid

    import psycopg

    name = f"adamtune_boundary_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql+psycopg://{ADMIN.split('://', 1)[1].rsplit('/', 1)[0]}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
