"""What adamtune costs on top of training: the README's ``adamtune search`` against a bare PyTorch loop.

Runs the README's command, ``adamtune search --task digits --n-trials 30`` (the default Hyperband
pruner, TPE, SQLite, MLflow's default local store, the confirmation stage, one worker) in a fresh
directory, then retrains exactly the same trainings -- every search trial and every confirmation run,
with the settings, seed and number of epochs each one recorded -- in a plain PyTorch loop with no Optuna
or MLflow, and prints:

* steady-state ratio: first training's start to last training's end (Optuna's timestamps, which cover
  sampling, MLflow logging, storage writes and pruning between and inside the trainings) over the bare
  loop's time (goal: at most 1.05);
* end-to-end ratio: the whole command's wall time, including interpreter start, imports, creating the
  two databases, the plots and the exit, over the bare loop's time (goal: at most 1.25);
* the profile of the difference: launch to the first training, the gaps inside the steady part, and the
  last training's end to the command's exit.

Timing on a shared 2-core VM drifts by up to 1.7x between minutes, so the bench alternates: each round
runs a search (fresh directory, seed = round) and then the bare loop on that round's trainings, and the
median of the per-round ratios is the result. Both sides use the same number of torch threads
(``--threads``, default 1).

Usage: ``python bench/overhead.py [--trials 30] [--rounds 3] [--threads 1] [--compare NAME=VALUE]``
(``--compare ADAMTUNE_TRAINER=inline``: the same rounds with the training in the command's process).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from torch.nn import functional as F
from torch.optim.lr_scheduler import LambdaLR

from adamtune.core.confirm_rule import confirm_study_name
from adamtune.core.space import AdamParams
from adamtune.storage.attr_keys import CURVES_ATTR, PARAMS_ATTR, SEED_ATTR
from adamtune.tasks import digits

ROOT = Path(__file__).resolve().parent.parent


def bare_training(params: AdamParams, seed: int, epochs: int, batch_size: int, data) -> float:  # type: ignore[no-untyped-def]
    """The plainest loop that does the same work as adamtune's trainer; returns seconds."""
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = digits.make_model()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=params.lr, betas=(params.beta1, params.beta2), eps=params.epsilon
    )
    scheduler = LambdaLR(optimizer, lambda step: 1.0 / (1.0 + params.decay * step))
    generator = torch.Generator().manual_seed(seed)
    x, y = data.train.x, data.train.y
    with torch.no_grad():
        F.cross_entropy(model(data.val.x), data.val.y).item()  # the trainer's untrained evaluation
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            index = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            logits = model(data.val.x)
            F.cross_entropy(logits, data.val.y).item()
            (logits.argmax(1) == data.val.y).float().mean().item()
    return time.perf_counter() - started


@dataclass
class Round:
    """One round's seconds: bare loop, steady part, end to end, and the parts of the difference."""

    trainings: int
    pruned: int
    bare: float
    steady: float
    end_to_end: float
    to_first: float  # launch -> first training's start
    after_last: float  # last training's end -> the command's exit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--compare",
        metavar="NAME=VALUE",
        help="also run each round's search with this environment variable set, against the same bare loop "
        "(same-minute A/B; the two searches' order alternates between rounds)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = digits.load_data(None)
    bare_training(AdamParams(), 0, 1, 32, data)  # warm-up: first-call imports inside torch.optim
    if args.compare:
        compare(args, data)
        return
    rows = [measure_round(args.trials, seed, args.threads, data) for seed in range(args.rounds)]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)")
    print(
        f"adamtune search --task digits --n-trials {args.trials} (hyperband, TPE, SQLite, MLflow local store, "
        "confirmation stage, one worker)"
    )
    print("round  trainings  pruned  bare (s)  steady (s)  ratio  end to end (s)  ratio  to first (s)  after last (s)")
    for i, r in enumerate(rows):
        print(
            f"{i:5d}  {r.trainings:9d}  {r.pruned:6d}  {r.bare:8.2f}  {r.steady:10.2f}  {r.steady / r.bare:5.3f}  "
            f"{r.end_to_end:14.2f}  {r.end_to_end / r.bare:5.3f}  {r.to_first:12.2f}  {r.after_last:14.2f}"
        )
    steady_ratio = statistics.median(r.steady / r.bare for r in rows)
    end_ratio = statistics.median(r.end_to_end / r.bare for r in rows)
    print(
        f"median steady-state ratio {steady_ratio:.3f} (goal <= 1.05): {'MET' if steady_ratio <= 1.05 else 'NOT MET'}"
    )
    print(f"median end-to-end ratio {end_ratio:.3f} (goal <= 1.25): {'MET' if end_ratio <= 1.25 else 'NOT MET'}")
    sys.stdout.flush()


def compare(args: argparse.Namespace, data) -> None:  # type: ignore[no-untyped-def]
    """Per round: the search as is and with ``args.compare`` set (alternating order), one bare loop between."""
    name, _, value = args.compare.partition("=")
    print(f"A: as is; B: {name}={value}; {args.trials} trials, {args.threads} thread(s)")
    print("round  order  bare (s)  A steady  B steady  A e2e  B e2e  (ratios to bare)")
    pairs = []
    for seed in range(args.rounds):
        order = ["A", "B"] if seed % 2 == 0 else ["B", "A"]
        first = run_search(args.trials, seed, args.threads, {name: value} if order[0] == "B" else {})
        bare = bare_of(first.done, data)
        second = run_search(args.trials, seed, args.threads, {name: value} if order[1] == "B" else {})
        runs = dict(zip(order, (first.against(bare), second.against(bare)), strict=True))
        a, b = runs["A"], runs["B"]
        pairs.append((a, b))
        print(
            f"{seed:5d}  {''.join(order):5s}  {bare:8.2f}  {a.steady / bare:8.3f}  {b.steady / bare:8.3f}  "
            f"{a.end_to_end / bare:5.3f}  {b.end_to_end / bare:5.3f}"
        )
    for label, pick in (("steady", lambda r: r.steady), ("end to end", lambda r: r.end_to_end)):
        print(f"median {label}: A/B = {statistics.median(pick(a) / pick(b) for a, b in pairs):.3f}")
    sys.stdout.flush()


def trainings(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    """Every finished training of the search: its trials and its confirmation runs (oldest first)."""
    storage = f"sqlite:///{workdir}/adamtune.db"
    found = optuna.load_study(study_name="digits", storage=storage).trials
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if confirm_study_name("digits") in names:
        found += optuna.load_study(study_name=confirm_study_name("digits"), storage=storage).trials
    done = [t for t in found if t.datetime_complete is not None and CURVES_ATTR in t.user_attrs]
    return sorted(done, key=lambda t: t.datetime_start)


def measure_round(n_trials: int, seed: int, threads: int, data, extra_env: dict[str, str] | None = None) -> Round:  # type: ignore[no-untyped-def]
    """One search of ``n_trials`` (with ``extra_env`` set) then the bare loop on all its trainings."""
    searched = run_search(n_trials, seed, threads, extra_env or {})
    return searched.against(bare_of(searched.done, data))


@dataclass
class Searched:
    """One search's trainings and its timings (the Round, once the bare loop is known)."""

    done: list[optuna.trial.FrozenTrial]
    end_to_end: float
    launched: dt.datetime

    def against(self, bare: float) -> Round:
        first = min(t.datetime_start for t in self.done)
        last = max(t.datetime_complete for t in self.done)
        return Round(
            trainings=len(self.done),
            pruned=sum(t.state == optuna.trial.TrialState.PRUNED for t in self.done),
            bare=bare,
            steady=(last - first).total_seconds(),
            end_to_end=self.end_to_end,
            to_first=(first - self.launched).total_seconds(),
            after_last=self.end_to_end - (last - self.launched).total_seconds(),
        )


def run_search(n_trials: int, seed: int, threads: int, extra_env: dict[str, str]) -> Searched:
    """The README's search in a fresh directory, as a new process; its trainings read back."""
    workdir = Path(tempfile.mkdtemp(prefix="adamtune-bench-"))
    try:
        command = [sys.executable, "-m", "adamtune", "search", "--task", "digits"]  # the venv need not be active
        command += ["--n-trials", str(n_trials), "--seed", str(seed)]
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # this checkout's code
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(threads), **extra_env}
        launched = dt.datetime.now()
        started = time.perf_counter()
        subprocess.run(command, cwd=workdir, check=True, capture_output=True, env=env)
        return Searched(trainings(workdir), time.perf_counter() - started, launched)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def bare_of(done: list[optuna.trial.FrozenTrial], data) -> float:  # type: ignore[no-untyped-def]
    """Seconds of the bare loop over the same trainings (settings, seed, epochs)."""
    bare = 0.0
    for trial in done:
        epochs = sum(1 for v in trial.user_attrs[CURVES_ATTR]["val_loss"])
        params = AdamParams.from_dict(trial.user_attrs[PARAMS_ATTR])
        bare += bare_training(params, trial.user_attrs[SEED_ATTR], epochs, 32, data)
    return bare


if __name__ == "__main__":
    main()
