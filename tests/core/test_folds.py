"""Confirmation on fresh validation folds: the split itself, built-in tasks, loop tasks, resuming, old studies.

Real parts: searches run through the CLI on real SQLite files; the loop tasks are user modules written
into the test's directory (imported as ``module:task``), which append what each run saw (its seed,
``trial.fold`` and the rows it validated on) to a JSON-lines file, so the tests read what training saw.
Nothing is mocked.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner, Result

from adamtune.cli.main import cli
from adamtune.core.confirm_rule import ARM_ATTR, FIXED_ROWS_NOTE, FOLD_ATTR, confirm_study_name
from adamtune.core.folds import Fold, split_indices
from adamtune.core.space import BASELINE
from adamtune.storage.attr_keys import SEED_ATTR, SETTINGS_ATTR
from adamtune.tasks.base import Split, TaskData
from adamtune.tasks.common import on_fold
from adamtune.training.runner import train_once

ARGS = ("--n-trials", "5", "--epochs", "3", "--pruner", "none", "--seed", "3", "--no-tracking")


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


# --------------------------------------------------------------------------- the split


def test_a_fold_is_a_seeded_partition_of_the_pooled_rows() -> None:
    fold = Fold(index=0, count=5, seed=8_000_000)
    train, val = fold.split(100, val_size=20)
    assert len(val) == 20 and sorted(train + val) == list(range(100)) and not set(train) & set(val)
    assert train == sorted(train) and val == sorted(val)
    assert fold.split(100, val_size=20) == (train, val)  # the same seed, the same split, whoever draws it
    assert Fold(1, 5, 8_000_001).split(100, val_size=20)[1] != val  # another seed, another split
    assert len(fold.split(100, val_size=0.25)[1]) == 25
    assert len(fold.split(100)[1]) == 10  # default: the built-in tasks' 10% rule
    assert Fold.from_dict(fold.as_dict()) == fold


def test_a_stratified_fold_keeps_every_class_share() -> None:
    labels = [0] * 60 + [1] * 30 + [2] * 9 + [3] * 1  # imbalanced, one singleton class
    for seed in range(20):
        _, val = split_indices(100, 20, seed, labels)
        counts = Counter(labels[i] for i in val)
        assert sum(counts.values()) == 20
        for label, expected in ((0, 12), (1, 6), (2, 1.8), (3, 0.2)):
            assert abs(counts[label] - expected) < 1  # each class within one row of its share
    plain = [Counter(labels[i] for i in split_indices(100, 20, seed)[1])[0] for seed in range(20)]
    assert len(set(plain)) > 1  # unstratified, the share of class 0 varies from seed to seed


@pytest.mark.parametrize("size", [0, 100, -1])
def test_a_fold_needs_rows_on_both_sides(size: int) -> None:
    with pytest.raises(ValueError, match="validation rows"):
        split_indices(100, size, 0)
    with pytest.raises(ValueError, match="class labels"):
        split_indices(10, 2, 0, labels=[0, 1])


def marked_data() -> TaskData:
    """Train rows 0..79, validation 80..99 (x = the row's id), test rows marked -1; 2 balanced classes."""
    ids = torch.arange(100, dtype=torch.float32).unsqueeze(1)
    labels = torch.arange(100) % 2
    test = Split(torch.full((30, 1), -1.0), torch.zeros(30, dtype=torch.long))
    return TaskData(Split(ids[:80], labels[:80]), Split(ids[80:], labels[80:]), test)


def test_a_built_in_task_s_fold_resplits_train_and_val_and_never_touches_test() -> None:
    data = marked_data()
    folded = on_fold(data, Fold(0, 5, 8_000_000))
    assert folded.test is data.test  # the held-out split is the same object, untouched
    train_ids = set(folded.train.x.squeeze(1).tolist())
    val_ids = set(folded.val.x.squeeze(1).tolist())
    assert len(folded.val) == 20 and len(folded.train) == 80  # the task's own sizes
    assert train_ids | val_ids == set(map(float, range(100))) and not train_ids & val_ids
    assert -1.0 not in train_ids | val_ids  # no test row entered the fold
    assert val_ids != set(map(float, range(80, 100)))  # fresh rows, not the task's validation rows
    assert Counter(folded.val.y.tolist()) == {0: 10, 1: 10}  # stratified by label
    assert torch.equal(folded.train.y, (folded.train.x.squeeze(1) % 2).long())  # rows kept whole


def test_a_fold_is_refused_for_the_test_split() -> None:
    from adamtune.tasks import resolve_task

    task = resolve_task("synthetic")
    with pytest.raises(ValueError, match="never re-split"):
        train_once(task, None, BASELINE, device="cpu", epochs=1, batch_size=8, seed=1, split="test", fold=Fold(0, 1, 1))


# --------------------------------------------------------------------------- loop tasks, end to end

LOOP_TASK = """
import json
import torch
from torch import nn
import adamtune

SEEN = "seen.jsonl"


def data(data_dir):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x.sum(1) > 0).long()
    return {{"train": (x[:200], y[:200]), "val": (x[200:250], y[200:250]), "test": (x[250:] + 100, y[250:])}}


def fit(trial):
    (tx, ty), (vx, vy) = trial.data["train"], trial.data[trial.split]
    if trial.fold is not None and {honours}:
        px, py = torch.cat([tx, vx]), torch.cat([ty, vy])
        train_index, val_index = trial.fold.split(len(py), val_size=len(vy), labels=py.numpy())
        tx, ty, vx, vy = px[train_index], py[train_index], px[val_index], py[val_index]
    with open(SEEN, "a") as out:
        fold = trial.fold.as_dict() if trial.fold is not None else None
        rows = sorted(round(v, 5) for v in vx[:, 0].tolist())
        out.write(json.dumps({{"number": trial.number, "seed": trial.seed, "split": trial.split, "fold": fold,
                               "params": trial.params.as_dict(), "val_rows": rows, "max_x": float(vx.max())}}) + "\\n")
    model = nn.Linear(4, 2)
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    for _ in trial.epochs():
        loss = nn.functional.cross_entropy(model(tx), ty)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            trial.report(loss=nn.functional.cross_entropy(model(vx), vy).item())


task = adamtune.LoopTask(name="toy-folds", fit=fit, data=data, default_epochs=3, folds={honours})
"""


def write_loop_task(directory: Path, honours: bool) -> str:
    name = f"fold_task_{'honours' if honours else 'ignores'}_{abs(hash(str(directory))) % 10**8}"
    (directory / f"{name}.py").write_text(LOOP_TASK.format(honours=honours))
    return f"{name}:task"


def seen(directory: Path) -> list[dict]:
    return [json.loads(line) for line in (directory / "seen.jsonl").read_text().splitlines()]


def confirm_runs(storage: str, study: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=confirm_study_name(study), storage=storage).trials


def test_a_loop_task_that_honours_the_fold_is_confirmed_on_fresh_folds_paired_by_seed(workdir: Path) -> None:
    task = write_loop_task(workdir, honours=True)
    result = invoke("search", "--task", task, "--study", "honours", *ARGS)
    assert result.exit_code == 0, result.output
    assert "fresh seeds and validation folds" in result.output and FIXED_ROWS_NOTE not in result.output
    runs = seen(workdir)
    search, confirmation = [r for r in runs if r["number"] is not None], [r for r in runs if r["number"] is None]
    assert len(search) == 5 and all(r["fold"] is None for r in search)  # search trials: the task's own rows
    own_rows = search[0]["val_rows"]
    assert all(r["val_rows"] == own_rows for r in search)
    assert confirmation and all(r["fold"] is not None and r["split"] == "val" for r in confirmation)
    by_seed: dict[int, list[dict]] = defaultdict(list)
    for run in confirmation:
        by_seed[run["seed"]].append(run)
    for seed, arms in by_seed.items():
        assert len(arms) >= 2 and len({json.dumps(a["params"]) for a in arms}) == len(arms)  # baseline + finalists
        assert all(a["val_rows"] == arms[0]["val_rows"] for a in arms)  # every arm of a seed: the same split
        assert all(a["fold"]["seed"] == seed for a in arms)
    splits = [arms[0]["val_rows"] for arms in by_seed.values()]
    assert len({json.dumps(s) for s in splits}) == len(splits) and own_rows not in splits  # fresh per seed
    assert all(run["max_x"] < 50 for run in runs)  # the test rows (shifted by 100) never validated a run
    stored = [t for t in confirm_runs("sqlite:///adamtune.db", "honours") if t.user_attrs.get(ARM_ATTR)]
    assert all(t.user_attrs[FOLD_ATTR]["seed"] == t.user_attrs[SEED_ATTR] for t in stored)
    row = json.loads(invoke("summary", "--json").output)[0]
    assert row["confirmation"]["validation"] == "folds" and row["confirmation"]["note"] is None
    assert "validation folds" in row["rule_text"]
    verified = invoke("verify", "--seeds", "2", "--json", "--no-tracking")
    assert verified.exit_code == 0, verified.output
    tested = [r for r in seen(workdir) if r["split"] == "test"]
    assert len(tested) == 4 and all(r["fold"] is None for r in tested)  # verify: the test split, no fold


def test_a_loop_task_that_does_not_declare_folds_is_confirmed_on_seeds_only_and_says_so(workdir: Path) -> None:
    task = write_loop_task(workdir, honours=False)
    result = invoke("search", "--task", task, "--study", "fixed", *ARGS)
    assert result.exit_code == 0, result.output
    last = [line for line in result.output.splitlines() if line.startswith("recommendation:")]
    assert last and FIXED_ROWS_NOTE in last[0]  # the search's last lines say so
    runs = seen(workdir)
    assert all(r["fold"] is None for r in runs)  # never handed a fold
    assert all(r["val_rows"] == runs[0]["val_rows"] for r in runs)  # the same rows throughout
    assert not any(FOLD_ATTR in t.user_attrs for t in confirm_runs("sqlite:///adamtune.db", "fixed"))
    row = json.loads(invoke("summary", "--json").output)[0]
    assert row["confirmation"]["validation"] == "fixed" and row["confirmation"]["note"] == FIXED_ROWS_NOTE
    assert FIXED_ROWS_NOTE in row["rule_text"]
    table = invoke("summary")
    assert table.exit_code == 0 and "validation rows fixed" in " ".join(table.output.split())


# --------------------------------------------------------------------------- built-in tasks, resume, old studies


def test_a_built_in_task_is_confirmed_on_folds_and_an_interrupted_stage_resumes_on_the_same_folds(
    workdir: Path,
) -> None:
    from adamtune.core.config import build_spec
    from adamtune.launch.search import run_search
    from adamtune.trials.worker import WorkerOptions

    storage = f"sqlite:///{workdir}/a.db"
    spec = build_spec("synthetic", None, None, {"n_trials": 5, "epochs": 3, "pruner": "none", "seed": 2})
    options = WorkerOptions(storage_url=storage, study_name="synthetic", tracking=False, seed=2)
    done: list[object] = []

    def stop_after_three(run: object) -> None:
        done.append(run)
        if len(done) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(spec, options, on_confirm_run=stop_after_three)
    before = {t.number: dict(t.user_attrs) for t in confirm_runs(storage, "synthetic") if t.state.is_finished()}
    again = invoke("search", "--task", "synthetic", "--storage", storage, *ARGS[:-3], "--seed", "2", "--no-tracking")
    assert again.exit_code == 0 and "(0 run now)" in again.output, again.output
    runs = [t for t in confirm_runs(storage, "synthetic") if t.user_attrs.get(ARM_ATTR)]
    complete = [t for t in runs if t.state == optuna.trial.TrialState.COMPLETE]
    assert Counter((t.user_attrs[ARM_ATTR], t.user_attrs[SEED_ATTR]) for t in complete).most_common(1)[0][1] == 1
    for number, attrs in before.items():  # the runs finished before the interrupt were kept as they were
        kept = next(t for t in runs if t.number == number)
        assert kept.user_attrs[FOLD_ATTR] == attrs[FOLD_ATTR]
    folds_by_seed: dict[int, set[str]] = defaultdict(set)
    for t in runs:
        folds_by_seed[t.user_attrs[SEED_ATTR]].add(json.dumps(t.user_attrs[FOLD_ATTR]))
    assert all(len(folds) == 1 for folds in folds_by_seed.values())  # one fold per seed, resumed or not
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["confirmation"]["validation"] == "folds" and row["confirmation"]["status"] in ("confirmed", "defaults")


def test_a_study_confirmed_before_folds_still_summarises_and_says_so(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/a.db"
    args = ("--task", "synthetic", "--storage", storage, *ARGS)
    # The stage as it ran before folds and budgets: the task's own rows, no cap on the runs.
    assert invoke("search", *args, "--no-confirm-folds", "--confirm-budget", "1000").exit_code == 0
    study = optuna.load_study(study_name="synthetic", storage=storage)
    settings = study.user_attrs[SETTINGS_ATTR]
    settings["confirm"].pop("folds")  # as stored before folds and budgets existed
    settings["confirm"].pop("budget")
    study.set_user_attr(SETTINGS_ATTR, settings)
    old = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert old["confirmation"]["status"] in ("confirmed", "defaults")  # its seeds-only runs still count
    assert old["confirmation"]["budget"]["runs"] is None  # replayed without a budget, as it was decided
    assert old["confirmation"]["validation"] == "fixed" and FIXED_ROWS_NOTE in old["rule_text"]
    finished = old["confirmation"]["runs"]["finished"]
    again = invoke("search", *args)  # the current search confirms it again, on folds
    assert again.exit_code == 0 and "(0 run now)" in again.output, again.output
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["confirmation"]["validation"] == "folds" and row["confirmation"]["status"] in ("confirmed", "defaults")
    runs = [t for t in confirm_runs(storage, "synthetic") if t.state == optuna.trial.TrialState.COMPLETE]
    assert sum(FOLD_ATTR not in t.user_attrs for t in runs) == finished  # the old runs are kept, not reused
    assert row["confirmation"]["runs"]["finished"] == sum(FOLD_ATTR in t.user_attrs for t in runs)
