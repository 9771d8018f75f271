"""Budgets end to end: a time budget, the auto space and the stop rule, on real SQLite studies.

Real parts: ``adamtune search`` / ``adamtune worker`` through the CLI, a real SQLite file, a user loop
task written into the test's directory (tests/loop_tasks.py). No assertion is on how long anything took:
the tests check what the study holds (states, epochs trained, when trials started against the deadline).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from adamtune.cli.main import cli
from adamtune.storage.attr_keys import BASELINE_ATTR, NOISE_PROBE_ATTR, SEARCHED_ATTR, SETTINGS_ATTR
from adamtune.storage.outcomes import count_trials
from tests.loop_tasks import write_task

FLAT_TASK = """
import torch

import adamtune


def data(data_dir):
    return {"train": [0], "val": [0], "test": [0]}


def fit(trial):
    # the settings do not matter: every trial scores 1 + U(0, 0.01) drawn from its seed
    noise = torch.rand(1, generator=torch.Generator().manual_seed(trial.seed)).item()
    for _ in trial.epochs():
        trial.report(loss=1.0 + 0.01 * noise)


task = adamtune.LoopTask(name="flat", fit=fit, data=data, objective="loss", direction="minimize",
                         default_epochs=2, default_batch_size=8)
"""


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def load(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage="sqlite:///adamtune.db")


def settings(study: optuna.Study) -> dict:
    return study.user_attrs[SETTINGS_ATTR]


def test_the_time_budget_prunes_the_running_trial_starts_nothing_after_and_a_resume_goes_on(workdir: Path) -> None:
    task = write_task(workdir, behaviour={1: "slow"}, epochs=40)  # trial 1: 40 epochs of 0.5 s
    result = invoke(
        "search", "--task", task, "--study", "timed", "--timeout", "6s", "--pruner", "none", "--no-confirm",
        "--no-tracking", "--seed", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "when the time budget ended the trials" in result.stderr
    study = load("timed")
    stored = settings(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert len(trials[0].intermediate_values) == 40  # the baseline is never cut short
    assert 0 < len(trials[1].intermediate_values) < 40  # pruned at the deadline, its curve kept
    assert stored["ended"] == {"reason": "time", "finished": 2, "asked": stored["ended"]["asked"]}
    assert stored["n_trials"] == 2 == count_trials(trials).finished
    assert all(t.datetime_start.timestamp() <= stored["deadline"] for t in trials)

    again = invoke("search", "--task", task, "--study", "timed", "--n-trials", "3", "--no-confirm", "--no-tracking")
    assert again.exit_code == 0, again.output
    study = load("timed")
    assert count_trials(study.get_trials()).finished == 3 and "ended" not in settings(study)


def test_with_confirmation_the_trials_leave_it_time_and_the_stage_decides(workdir: Path) -> None:
    task = write_task(workdir, epochs=3)
    result = invoke(
        "search", "--task", task, "--study", "timed", "--timeout", "8s", "--confirm-seeds", "3", "--no-tracking",
        "--seed", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load("timed")
    assert settings(study)["ended"]["reason"] == "time"
    assert all(t.state.is_finished() for t in study.get_trials())
    confirm = optuna.load_study(study_name="timed.confirm", storage="sqlite:///adamtune.db")
    assert confirm.get_trials() and all(t.state.is_finished() for t in confirm.get_trials())
    row = json.loads(invoke("summary", "--json").output)[0]
    assert row["rule"] in ("confirmed", "defaults")  # decided: a recommendation or the defaults, never unconfirmed


def test_a_worker_joining_after_the_deadline_starts_nothing(workdir: Path) -> None:
    task = write_task(workdir, epochs=2)
    assert invoke("search", "--task", task, "--study", "late", "--n-trials", "1", "--no-tracking").exit_code == 0
    study = load("late")
    study.set_user_attr(SETTINGS_ATTR, {**settings(study), "n_trials": 5, "deadline": time.time() - 1})
    result = invoke("worker", "--study", "late", "--no-tracking")
    assert result.exit_code == 0, result.output
    study = load("late")
    assert len(study.get_trials()) == 1
    assert settings(study)["ended"]["reason"] == "time" and settings(study)["n_trials"] == 1


def test_a_trial_target_and_a_time_budget_combine_the_first_reached_ends(workdir: Path) -> None:
    task = write_task(workdir, epochs=2)
    result = invoke(
        "search", "--task", task, "--study", "both", "--n-trials", "3", "--timeout", "1h", "--no-confirm",
        "--no-tracking",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load("both")
    assert count_trials(study.get_trials()).finished == 3 and "ended" not in settings(study)
    assert settings(study)["timeout"] == 3600


def test_the_auto_space_searches_lr_alone_on_a_small_budget_and_adds_beta1_at_ten(workdir: Path) -> None:
    task = write_task(workdir, epochs=1)
    for study_name, n_trials, space, searched in [
        ("small", "4", "auto", ["lr"]),
        ("ten", "10", "auto", ["lr", "beta1"]),
        ("full", "3", "full", ["lr", "beta1", "beta2", "epsilon", "decay"]),
    ]:
        result = invoke(
            "search", "--task", task, "--study", study_name, "--n-trials", n_trials, "--space", space, "--no-confirm",
            "--no-tracking", "--pruner", "none",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        for trial in load(study_name).get_trials()[1:]:
            assert trial.user_attrs[SEARCHED_ATTR] == searched
            names = {name.removeprefix("one_minus_") for name in trial.params}
            assert names == set(searched)
            if "beta2" not in searched:
                assert trial.user_attrs["adamtune.params"]["beta2"] == 0.999  # fixed at Adam's default


def test_stop_when_converged_measures_the_noise_and_ends_a_flat_search_early(workdir: Path) -> None:
    (workdir / "flat_task.py").write_text(FLAT_TASK)
    result = invoke(
        "search", "--task", "flat_task:task", "--study", "flat", "--n-trials", "40", "--stop-when-converged",
        "--no-confirm", "--no-tracking", "--seed", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load("flat")
    trials = study.get_trials()
    assert [bool(t.user_attrs.get(BASELINE_ATTR)) for t in trials[:4]] == [True, True, True, False]
    assert [bool(t.user_attrs.get(NOISE_PROBE_ATTR)) for t in trials[:3]] == [False, True, True]
    assert len({t.user_attrs["adamtune.seed"] for t in trials[:3]}) == 3  # three seeds: a noise estimate
    ended = settings(study)["ended"]
    assert ended["reason"] == "converged" and ended["finished"] < 40
    assert count_trials(trials).finished == ended["finished"]
    assert "when the search converged" in result.stderr


def test_a_study_resumes_with_another_space_mode_and_the_new_trials_follow_it(workdir: Path) -> None:
    task = write_task(workdir, epochs=1)
    common = ["--task", task, "--study", "mode", "--no-confirm", "--no-tracking", "--pruner", "none"]
    assert invoke("search", *common, "--n-trials", "2", "--space", "full").exit_code == 0
    result = invoke("search", *common, "--n-trials", "4", "--space", "auto")
    assert result.exit_code == 0, result.output
    study = load("mode")
    assert [t.user_attrs[SEARCHED_ATTR] for t in study.get_trials()[1:]] == [
        ["lr", "beta1", "beta2", "epsilon", "decay"],
        ["lr"],
        ["lr"],
    ]
    assert study.user_attrs["adamtune.spec"]["space"]["auto"] is True
    different = invoke("search", *common, "--n-trials", "5", "--epochs", "2")
    assert different.exit_code == 2 and "already exists with a different epochs" in different.output


def test_a_warm_started_search_runs_the_earlier_studys_settings_first_and_says_so(workdir: Path) -> None:
    task = write_task(workdir, epochs=2)
    common = ["--task", task, "--no-tracking", "--pruner", "none", "--confirm-seeds", "2"]
    assert invoke("search", *common, "--study", "old", "--n-trials", "5", "--space", "full").exit_code == 0
    result = invoke("search", *common, "--study", "new", "--n-trials", "3", "--warm-start", "old")
    assert result.exit_code == 0, result.output
    assert "warm start from old: their confirmed and best settings run first" in result.stderr
    assert "trial 1 (warm start: old trial" in result.stderr
    old = {t.number: t for t in load("old").get_trials()}
    first = load("new").get_trials()[1]
    origin = first.user_attrs["adamtune.warm_start"]["origin"]
    number = int(origin.split(" trial ")[1].split()[0])
    # the exact settings of the earlier trial, all five, though the new auto space searches lr alone
    assert first.user_attrs["adamtune.params"] == old[number].user_attrs["adamtune.params"]
    assert set(first.params) == {"lr"}
