"""Does the auto space pay at small budgets, does a warm start pay, and does the stop rule stop too early?

Run as ``python bench/quality.py --budget`` (or ``python bench/budget.py``). Three measurements:

1. **The budget table.** Per task and trial budget (8, 16, 30), ``--repeats`` independent seeded searches
   with the **auto** space (``space="auto"``: lr alone below 10 trials, beta1 from 10, epsilon from 25,
   beta2 from 60, decay from 120) and as many with the **full** space (all five dimensions), the same
   seeds for both, the confirmation stage on. The final recommendation (the confirmed finalist, or Adam's
   defaults when none is confirmed) is trained on the training split and scored on the **test** split over
   the same ``--seeds`` fresh seeds for every setting of a task (each (setting, seed) trained once). Printed:
   the mean test gain against Adam's defaults and the mean regret against the recommendation of one 10x
   larger search (``--reference-trials``, full space, fixed seed); both relative to the defaults' test
   score, regret positive = worse than the reference.
2. **Warm start.** An earlier related study (the same task at half the epochs, 30 trials) exists; a
   10-trial search warm-started from it against a cold 30-trial search (both auto space), over the same
   seeds: confirmed validation scores (what the confirmation stage measured for the recommendation) and
   test scores.
3. **The stop rule's false stops.** ``core.convergence.first_stop`` applied post hoc to the trial
   sequence of every search of 30 trials or more and of the references, with the seed noise sigma of the
   confirmation stage's runs of the defaults; a stop at n is false when the best of the whole sequence
   beats the best of the first n by more than sigma.

Default tasks: ``digits`` (20 epochs), ``synthetic --epochs 2`` and ``small_tasks:wine``: the fast tasks whose
recommendations differ between settings (``cancer`` and ``diabetes`` keep Adam's defaults in every search of
``bench/quality.py``, so auto and full cannot differ there; ``--tasks`` adds them).

Goals: auto >= full on the test split at 8, 16 and 30 trials (mean relative test gain over the tasks);
warm 10 >= cold 30 on the test split. A goal that is missed is printed as missed, with the numbers.
Tracking is off, each search has its own SQLite file in a temporary directory, torch runs on 1 thread.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: Bench name -> the arguments of ``adamtune.search`` that define the task.
TASKS: dict[str, dict[str, Any]] = {
    "digits": {"task": "digits"},
    "diabetes": {"task": "diabetes"},
    "cancer": {"task": "small_tasks:cancer"},
    "wine": {"task": "small_tasks:wine"},
    "synthetic-2ep": {"task": "synthetic", "epochs": 2},
}
DEFAULT_TASKS = "digits,synthetic-2ep,wine"  # the fast tasks whose recommendations differ from the defaults
FIRST_TEST_SEED = 7_000_000  # as ``adamtune verify``: far from the seeds searches train with
REFERENCE_SEED = 999


@dataclass
class Found:
    """One search: what it recommends and what its trials did."""

    task: str
    kind: str  # "auto", "full", "reference", "warm", "cold", "earlier"
    budget: int
    seed: int
    params: Any  # AdamParams: the confirmed finalist, else Adam's defaults
    defaults: Any
    rule: str
    confirmed: float | None  # the confirmation stage's validation score of the recommendation
    values: list[float | None]  # finished non-baseline trials' objectives, trial order (None: pruned)
    noise: float | None  # sigma of the stage's runs of the defaults
    direction: str
    run: tuple[str, str, int, int]  # (task, objective, epochs, batch size): how to train it for the test
    seconds: float
    test: float | None = None
    scores: dict[str, float] = field(default_factory=dict)


def search(tmp: Path, name: str, kind: str, budget: int, seed: int, **extra: Any) -> Found:
    """One search in a fresh SQLite file, read back into a :class:`Found`."""
    import adamtune
    from adamtune.confirm.stored import read_stage
    from adamtune.report.convergence import confirm_baseline_values, search_values
    from adamtune.report.summary import summarize

    label = f"{name}-{kind}-{budget}-s{seed}"
    started = time.perf_counter()
    args = {**TASKS[name], **extra}
    result = adamtune.search(
        n_trials=budget, seed=seed, study=label, storage=f"sqlite:///{tmp / label}.db", tracking=False, **args
    )
    seconds = time.perf_counter() - started
    study = result.study
    summary = summarize(study, importance=False)
    conf = summary.confirmation or {}
    confirmed = summary.rule == "confirmed" and summary.recommended is not None
    if confirmed:
        arm = next(f for f in conf["finalists"] if f["trial"] == conf["recommended_trial"])
        score = arm["confirmed_score"]
    else:
        score = (conf.get("baseline") or {}).get("confirmed_score")
    stage = read_stage(study)
    found = Found(
        task=name,
        kind=kind,
        budget=budget,
        seed=seed,
        params=summary.recommended.params if confirmed else summary.defaults,
        defaults=summary.defaults,
        rule=summary.rule,
        confirmed=score,
        values=search_values(study.get_trials(deepcopy=False)),
        noise=_noise(confirm_baseline_values(stage)),
        direction=summary.direction,
        run=(summary.task, summary.objective, summary.epochs, summary.batch_size),
        seconds=seconds,
    )
    print(f"  {label}: {found.rule}, {len(found.values)} trials, {seconds:.0f} s", flush=True)
    return found


def _noise(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) >= 2 else None


class TestScores:
    """Test-split scores of settings, each (setting, seed) trained once (as ``verify`` trains them)."""

    def __init__(self, seeds: int) -> None:
        self.seeds = [FIRST_TEST_SEED + i for i in range(seeds)]
        self.data: dict[str, tuple[Any, Any]] = {}
        self.cache: dict[tuple[Any, ...], float] = {}
        self.trained = 0

    def mean(self, run: tuple[str, str, int, int], params: Any) -> float:
        from adamtune.data.download import default_data_dir
        from adamtune.tasks import resolve_task
        from adamtune.training.runner import split_metric, train_once

        task_name, objective, epochs, batch_size = run
        if task_name not in self.data:
            task = resolve_task(task_name)
            self.data[task_name] = (task, task.load_data(default_data_dir()).to("cpu"))
        task, data = self.data[task_name]
        values = []
        for seed in self.seeds:
            key = (run, params, seed)
            if key not in self.cache:
                outcome = train_once(
                    task, data, params, device="cpu", epochs=epochs, batch_size=batch_size, seed=seed,
                    split="test", objective=objective,
                )  # fmt: skip
                self.cache[key] = float(outcome.metrics[split_metric(objective, "test")])
                self.trained += 1
            values.append(self.cache[key])
        return statistics.fmean(values)

    def score(self, found: Found) -> None:
        """Fill ``found.test`` and ``found.scores['defaults']``."""
        found.test = self.mean(found.run, found.params)
        found.scores["defaults"] = self.mean(found.run, found.defaults)


def signed(found: Found, better: float, worse: float) -> float:
    """``worse - better`` in the task's direction, relative to the defaults' test score: > 0 when
    ``better`` really is better."""
    sign = 1.0 if found.direction == "minimize" else -1.0
    scale = abs(found.scores["defaults"]) or 1.0
    return sign * (worse - better) / scale


def pct(values: list[float]) -> str:
    return f"{statistics.fmean(values):+.1%}" if values else "-"


def budget_table(runs: list[Found], tasks: list[str], budgets: list[int]) -> tuple[list[str], list[str]]:
    """The Markdown budget table and the goal lines."""
    lines = [
        "| task | trials | test gain auto | test gain full | regret auto | regret full "
        "| confirmed auto / full | auto >= full |",
        "|---|---|---|---|---|---|---|---|",
    ]
    per_budget: dict[int, dict[str, list[float]]] = {b: {"auto": [], "full": []} for b in budgets}
    for task in tasks:
        ref = next(f for f in runs if f.task == task and f.kind == "reference")
        for budget in budgets:
            cells: dict[str, tuple[list[float], list[float], int, int]] = {}
            for kind in ("auto", "full"):
                rows = [f for f in runs if f.task == task and f.kind == kind and f.budget == budget]
                assert ref.test is not None
                gains = [signed(f, f.test, f.scores["defaults"]) for f in rows if f.test is not None]
                regrets = [signed(f, ref.test, f.test) for f in rows if f.test is not None]
                cells[kind] = (gains, regrets, sum(f.rule == "confirmed" for f in rows), len(rows))
                per_budget[budget][kind].append(statistics.fmean(gains))
            (ga, ra, ca, na), (gf, rf, cf, nf) = cells["auto"], cells["full"]
            ok = statistics.fmean(ga) >= statistics.fmean(gf)
            lines.append(
                f"| {task} | {budget} | {pct(ga)} | {pct(gf)} | {pct(ra)} | {pct(rf)} | {ca}/{na} / {cf}/{nf} "
                f"| {'yes' if ok else 'no'} |"
            )
    goals = []
    for budget, kinds in per_budget.items():
        auto, full = statistics.fmean(kinds["auto"]), statistics.fmean(kinds["full"])
        verdict = "met" if auto >= full else "MISSED"
        goals.append(f"goal auto >= full at {budget} trials (mean over tasks): {auto:+.1%} vs {full:+.1%} -> {verdict}")
    return lines, goals


def reference_table(runs: list[Found], tasks: list[str]) -> list[str]:
    lines = [
        "| task | reference | rule | defaults' test score | reference test score | gain |",
        "|---|---|---|---|---|---|",
    ]
    for task in tasks:
        ref = next(f for f in runs if f.task == task and f.kind == "reference")
        assert ref.test is not None
        gain = signed(ref, ref.test, ref.scores["defaults"])
        lines.append(
            f"| {task} | {ref.budget} trials, full, seed {ref.seed} | {ref.rule} | {ref.scores['defaults']:.4g} "
            f"| {ref.test:.4g} | {gain:+.1%} |"
        )
    return lines


def warm_section(tmp: Path, task: str, args: argparse.Namespace, runs: list[Found], scores: TestScores) -> list[str]:
    """Warm 10 against cold 30 over the repeats; the earlier study is the task at half its epochs."""
    from adamtune.core.errors import AdamtuneError

    epochs = int(TASKS[task].get("epochs") or _task_epochs(task))
    earlier = search(tmp, task, "earlier", 30, REFERENCE_SEED, space="auto", epochs=max(1, epochs // 2))
    source = f"sqlite:///{tmp / earlier_label(earlier)}.db#{earlier_label(earlier)}"
    warm, cold = [], []
    for r in range(args.repeats):
        seed = args.first_seed + r
        try:
            warm.append(search(tmp, task, "warm", 10, seed, space="auto", warm_start=source))
        except (TypeError, AdamtuneError) as error:
            return [f"warm start SKIPPED: adamtune.search(warm_start=...) is not usable yet ({error})"]
        reuse = [f for f in runs if f.task == task and f.kind == "auto" and f.budget == 30 and f.seed == seed]
        cold.append(reuse[0] if reuse else search(tmp, task, "cold", 30, seed, space="auto"))
        if not reuse:
            runs.append(cold[-1])
    for f in [*warm, *cold]:
        scores.score(f)
    lines = [
        f"earlier study: {task}, {earlier.run[2]} epochs, 30 trials, seed {earlier.seed} ({earlier.rule}); "
        f"warm start from {source.split('/')[-1]}",
        "",
        "| search | searches | confirmed | confirmed val score | test score | test gain |",
        "|---|---|---|---|---|---|",
    ]
    for label, rows in (("warm 10", warm), ("cold 30", cold)):
        vals = [f.confirmed for f in rows if f.confirmed is not None]
        lines.append(
            f"| {label} | {len(rows)} | {sum(f.rule == 'confirmed' for f in rows)} "
            f"| {statistics.fmean(vals):.4g} | {statistics.fmean(f.test for f in rows):.4g} "
            f"| {pct([signed(f, f.test, f.scores['defaults']) for f in rows])} |"
        )
    sign = 1.0 if warm[0].direction == "minimize" else -1.0
    w, c = statistics.fmean(f.test for f in warm), statistics.fmean(f.test for f in cold)
    verdict = "met" if sign * (c - w) >= 0 else "MISSED"
    lines += ["", f"goal warm 10 >= cold 30 on test: {w:.4g} vs {c:.4g} ({warm[0].direction}) -> {verdict}"]
    runs.append(earlier)
    return lines


def earlier_label(found: Found) -> str:
    return f"{found.task}-{found.kind}-{found.budget}-s{found.seed}"


def _task_epochs(task: str) -> int:
    from adamtune.tasks import resolve_task

    return int(resolve_task(TASKS[task]["task"]).default_epochs)


def stop_table(runs: list[Found], tasks: list[str]) -> list[str]:
    """The stop rule post hoc on every search of 30 trials or more and on the references."""
    from adamtune.core.convergence import first_stop

    lines = [
        "| task | trials | searches | stops | false stops (rate) | mean trials saved per stop |",
        "|---|---|---|---|---|---|",
    ]
    for task in tasks:
        rows = [f for f in runs if f.task == task and (f.budget >= 30 or f.kind == "reference")]
        for budget in sorted({f.budget for f in rows}):
            group = [f for f in rows if f.budget == budget]
            stops, false, saved = 0, 0, []
            for f in group:
                at = first_stop(f.values, f.direction, f.noise)
                if at is None or f.noise is None:
                    continue
                stops += 1
                saved.append(len(f.values) - at)
                sign = 1.0 if f.direction == "minimize" else -1.0
                losses = [sign * v for v in f.values if v is not None]
                early = [sign * v for v in f.values[:at] if v is not None]
                false += bool(early) and min(early) - min(losses) > f.noise
            rate = f"{false / stops:.0%}" if stops else "-"
            mean_saved = f"{statistics.fmean(saved):.1f}" if saved else "-"
            lines.append(f"| {task} | {budget} | {len(group)} | {stops} | {false} ({rate}) | {mean_saved} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--budgets", default="8,16,30", help="trial budgets, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="independent seeded searches per setting (R)")
    parser.add_argument("--seeds", type=int, default=5, help="test seeds per setting (S, at least 1)")
    parser.add_argument("--reference-trials", type=int, default=None, help="default: 10x the largest budget")
    parser.add_argument("--warm-task", default="digits", help="task of the warm-start section ('none': skip it)")
    parser.add_argument("--first-seed", type=int, default=100, help="seed of the first repeat")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    budgets = sorted(int(b) for b in args.budgets.split(","))
    unknown = [t for t in [*tasks, args.warm_task] if t not in TASKS and t != "none"]
    if unknown:
        parser.error(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    reference = args.reference_trials or 10 * max(budgets)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH")])
    )
    sys.path[:0] = [str(HERE.parent), str(HERE)]
    import torch

    torch.set_num_threads(1)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, "
          f"python {platform.python_version()}, torch {torch.__version__} (1 thread)")  # fmt: skip
    print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(
        f"settings: tasks {', '.join(tasks)}; budgets {', '.join(map(str, budgets))}; R={args.repeats} searches "
        f"(seeds {args.first_seed}..{args.first_seed + args.repeats - 1}); S={args.seeds} test seeds; reference "
        f"{reference} trials, full space, seed {REFERENCE_SEED}; warm-start task {args.warm_task}; confirmation on"
    )
    scores, runs, walls = TestScores(args.seeds), [], {}
    with tempfile.TemporaryDirectory(prefix="adamtune-budget-") as name:
        tmp = Path(name)
        began = time.perf_counter()
        for task in tasks:
            print(f"{task}:", flush=True)
            runs.append(search(tmp, task, "reference", reference, REFERENCE_SEED, space="full"))
            for budget in budgets:
                for r in range(args.repeats):
                    for kind in ("auto", "full"):
                        runs.append(search(tmp, task, kind, budget, args.first_seed + r, space=kind))
            for f in runs:
                if f.task == task and f.test is None:
                    scores.score(f)
        walls["budget table"] = time.perf_counter() - began
        began = time.perf_counter()
        warm = warm_section(tmp, args.warm_task, args, runs, scores) if args.warm_task != "none" else ["skipped"]
        walls["warm start"] = time.perf_counter() - began
    began = time.perf_counter()
    stops = stop_table(runs, tasks + ([args.warm_task] if args.warm_task not in ("none", *tasks) else []))
    walls["stop rule"] = time.perf_counter() - began
    table, goals = budget_table(runs, tasks, budgets)
    print(f"\n{sum(walls.values()):.0f} s in all: " + ", ".join(f"{k} {v:.0f} s" for k, v in walls.items()))
    print(f"{scores.trained} test trainings ({args.seeds} seeds per setting)\n")
    print("## Budget table: auto vs full space, test split\n")
    print("gain = the recommendation against Adam's defaults; regret = its shortfall from the reference "
          "search's recommendation (> 0: worse); both relative to the defaults' test score, mean over the "
          "repeats\n")  # fmt: skip
    print("\n".join([*table, "", *reference_table(runs, tasks), "", *goals]), end="\n\n")
    print("## Warm start\n\n" + "\n".join(warm) + "\n")
    print("## Stop rule: false stops (post hoc, sigma = sd of the confirmation's runs of the defaults)\n")
    print("\n".join(stops))


if __name__ == "__main__":
    main()
