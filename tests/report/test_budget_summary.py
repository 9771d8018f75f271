"""What ``summary`` says about the budget: whether more search is likely to pay (the stop rule of
``core/convergence.py``), what an auto space searched and why, and why the trial phase ended early.

One real ``digits`` search (3 trials, SQLite) is copied into each test, which then adds the trials and
attributes its case needs through Optuna's public API (``add_trial``, ``set_user_attr``), as the search and
``--stop-when-converged`` would write them. The live display's verdict is read from the same studies.
"""

from __future__ import annotations

import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState, create_trial

import adamtune
from adamtune.cli.main import cli
from adamtune.core.budget import TIMED_TRIAL_CAP
from adamtune.core.confirm_rule import ARM_ATTR, BASELINE_ARM, FOLD_ATTR, confirm_study_name
from adamtune.launch.display import SearchDisplay
from adamtune.report.convergence import study_convergence
from adamtune.storage.attr_keys import (
    BASELINE_ATTR,
    NOISE_PROBE_ATTR,
    SEARCHED_ATTR,
    SEED_ATTR,
    SETTINGS_ATTR,
    SPEC_ATTR,
    STATE_ATTR,
)
from adamtune.storage.study import spec_from_study

PLATEAU = [0.05 + 0.001 * i for i in range(12)]  # far better than 2 epochs of digits reach; within 0.004 at the top


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The database of a real 3-trial digits search (auto space: a budget of 3 searches the learning rate alone)."""
    path = tmp_path_factory.mktemp("search") / "s.db"
    adamtune.search("digits", n_trials=3, epochs=2, tracking=False, storage=f"sqlite:///{path}", seed=1, confirm=False)
    return path


@pytest.fixture
def url(searched: Path, tmp_path: Path) -> str:
    """A copy of the search's database (with its write-ahead log) for one test to change."""
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{searched}{suffix}").exists():
            shutil.copy(f"{searched}{suffix}", tmp_path / f"s.db{suffix}")
    return f"sqlite:///{tmp_path / 's.db'}"


def study_of(url: str) -> optuna.Study:
    return optuna.load_study(study_name="digits", storage=url)


def add(study: optuna.Study, value: float | None, *, state: TrialState = TrialState.COMPLETE, **attrs: Any) -> None:
    """One more finished trial with the settings of trial 1 (the baseline's with ``baseline=True``)."""
    template = study.trials[0 if attrs.get(BASELINE_ATTR) else 1]
    attrs = {SEARCHED_ATTR: ["lr"], **attrs}
    study.add_trial(
        create_trial(
            params=template.params,
            distributions=template.distributions,
            value=value if state == TrialState.COMPLETE else None,
            state=state,
            user_attrs=attrs,
        )
    )


def add_probes(study: optuna.Study, *offsets: float) -> list[float]:
    """Noise probes (runs of the defaults on other seeds) around the baseline trial's value; all their values."""
    baseline = study.trials[0].value
    assert baseline is not None
    for offset in offsets:
        add(study, baseline + offset, **{BASELINE_ATTR: True, NOISE_PROBE_ATTR: True})
    return [baseline + offset for offset in (0.0, *offsets)]


def set_settings(study: optuna.Study, **changes: Any) -> None:
    study.set_user_attr(SETTINGS_ATTR, {**study.user_attrs[SETTINGS_ATTR], **changes})


def summary_of(url: str) -> dict[str, Any]:
    return adamtune.load(task="digits", storage=url).summary(importance=False)


def summary_text(url: str) -> str:
    """``adamtune summary`` at 80 columns: asserts no line is wider, returns the text with the wrapping undone."""
    result = CliRunner().invoke(cli, ["summary", "--storage", url], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(line.rstrip()) for line in result.output.splitlines()) <= 80, result.output
    return " ".join(line.strip() for line in result.output.splitlines())


def test_a_plain_search_has_no_noise_measured_and_says_what_its_auto_space_searched(url: str) -> None:
    data = summary_of(url)
    conv = data["convergence"]
    assert conv["converged"] is False and conv["noise"] is None and conv["trials"] == 2  # the baseline left out
    assert conv["text"].startswith("not known yet: the seed noise is not measured")
    assert data["auto_space"]["searched"] == ["lr"]
    assert data["auto_space"]["fixed"] == ["beta1", "beta2", "epsilon", "decay"]
    assert data["auto_space"]["budget"] == 3
    assert data["ended"] is None
    text = summary_text(url)
    assert (
        "space: auto — searched lr; beta1, beta2, epsilon, decay fixed at the defaults for a budget of about 3 "
        "trials; they join the search at a budget of:" in text
    )
    assert "convergence: not known yet: the seed noise is not measured" in text
    assert "ended the trial phase" not in text


def test_noise_probes_and_a_plateau_converge(url: str) -> None:
    study = study_of(url)
    noise = statistics.stdev(add_probes(study, 0.01, -0.01))
    for value in PLATEAU:
        add(study, value)
    conv = summary_of(url)["convergence"]
    assert conv["noise"] == pytest.approx(noise)
    assert conv["trials"] == 14 and conv["window"] == 8
    assert conv["spread"] == pytest.approx(0.004) and conv["recent_gain"] == 0.0
    assert conv["converged"] is True
    text = summary_text(url)
    assert "convergence: more search is unlikely to pay: the best did not improve over the last 8 trials" in text
    assert "the top 5 lie within 0.004" in text


def test_pruned_diverged_and_failed_trials_are_no_values(url: str) -> None:
    study = study_of(url)
    add_probes(study, 0.01, -0.01)
    for value in PLATEAU[:4]:
        add(study, value)
    add(study, None, state=TrialState.PRUNED)
    add(study, 0.01, **{STATE_ATTR: "diverged"})  # the value of an untrained model, never a best
    add(study, None, state=TrialState.FAIL)
    for value in PLATEAU[4:10]:
        add(study, value)
    conv = study_convergence(study_of(url))
    assert conv.trials == 2 + 4 + 3 + 6  # as the workers' stop check counts them: every finished trial
    assert conv.spread == pytest.approx(0.004) and conv.converged


def test_a_search_still_improving_may_pay(url: str) -> None:
    study = study_of(url)
    add_probes(study, 0.01, -0.01)
    for i in range(12):
        add(study, 0.1 - 0.005 * i)  # a new best each trial
    conv = summary_of(url)["convergence"]
    assert conv["converged"] is False
    assert conv["recent_gain"] == pytest.approx(0.04)  # 0.085 (the 4th added) before the last 8, 0.045 now
    assert conv["text"].startswith("more search may pay: the best improved by 0.04 over the last 8 trials")


def test_the_noise_falls_back_on_the_confirmation_stage_baseline_runs(url: str) -> None:
    study = study_of(url)
    for value in PLATEAU:
        add(study, value)
    assert study_convergence(study).noise is None  # one run of the defaults: no noise yet
    confirm = optuna.create_study(study_name=confirm_study_name("digits"), storage=url, direction="minimize")
    runs = [0.31, 0.30, 0.33]
    for seed, value in enumerate(runs, start=8_000_000):
        attrs = {ARM_ATTR: BASELINE_ARM, SEED_ATTR: seed, FOLD_ATTR: 0}
        confirm.add_trial(create_trial(value=value, user_attrs=attrs))
    confirm.add_trial(create_trial(value=9.0, user_attrs={ARM_ATTR: "trial-1", SEED_ATTR: 8_000_000, FOLD_ATTR: 0}))
    conv = study_convergence(study_of(url))
    assert conv.noise == pytest.approx(statistics.stdev(runs))
    assert conv.converged
    add_probes(study, 0.5)  # two runs of the defaults in the study itself: they win over the stage's
    assert study_convergence(study_of(url)).noise == pytest.approx(statistics.stdev([0.0, 0.5]))


def test_a_time_budget_that_ended_the_trial_phase(url: str) -> None:
    study = study_of(url)
    set_settings(study, n_trials=30, timeout=60, ended={"reason": "time", "finished": 14, "asked": 30})
    data = summary_of(url)
    assert data["ended"] == {"reason": "time", "finished": 14, "asked": 30, "timeout": 60}
    assert data["auto_space"]["budget"] == 14  # what the time paid for, not the target of 30
    text = summary_text(url)
    assert "the time budget (1m00s) ended the trial phase at 14 of 30 trials" in text
    assert "for a budget of about 14 trials" in text
    assert "convergence: not known yet" in text

    set_settings(study, n_trials=TIMED_TRIAL_CAP, ended={"reason": "time", "finished": 14, "asked": TIMED_TRIAL_CAP})
    assert "the time budget (1m00s) ended the trial phase at 14 trials" in summary_text(url)


def test_a_time_budget_still_running_has_no_trial_budget_yet(url: str) -> None:
    set_settings(study_of(url), n_trials=TIMED_TRIAL_CAP, timeout=3600)
    data = summary_of(url)
    assert data["ended"] is None and data["auto_space"]["budget"] is None
    assert "for a budget not known yet" in data["auto_space"]["reason"]


def test_stop_when_converged_that_ended_the_trial_phase(url: str) -> None:
    study = study_of(url)
    add_probes(study, 0.01, -0.01)
    for value in PLATEAU:
        add(study, value)
    set_settings(study, n_trials=60, ended={"reason": "converged", "finished": 14, "asked": 60})
    text = summary_text(url)
    assert (
        "--stop-when-converged ended the trial phase at 14 of 60 trials: more search is unlikely to pay: the best "
        "did not improve over the last 8 trials" in text
    )
    assert "convergence: " not in text  # said once, in the line of the end
    assert "for a budget of about 14 trials" in text


def test_a_fixed_space_has_no_space_line(url: str) -> None:
    study = study_of(url)
    spec = dict(study.user_attrs[SPEC_ATTR])
    spec["space"] = {k: v for k, v in spec["space"].items() if k != "auto"}
    study.set_user_attr(SPEC_ATTR, spec)
    assert summary_of(url)["auto_space"] is None
    assert "space: auto" not in summary_text(url)


def test_an_unknown_end_reason_is_not_shown(url: str) -> None:
    set_settings(study_of(url), ended={"reason": "target", "finished": 3, "asked": 3})
    assert summary_of(url)["ended"] is None


def displayed(study: optuna.Study, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The trial lines the live display prints when it is shown each of the study's finished trials."""
    display = SearchDisplay(True, None, None, None, None, None)
    display.start(spec_from_study(study), 0)
    try:
        for trial in study.get_trials(deepcopy=False):
            display.trial(study, trial)
    finally:
        display.close()
    return [line for line in capsys.readouterr().err.splitlines() if re.search(r"\btrial \d+\b", line)]


def test_the_live_display_shows_the_verdict_after_each_trial(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    study = study_of(url)
    lines = displayed(study, capsys)
    # the rule is off and the noise not measured: nothing to say on a trial's line
    assert len(lines) == 3 and not any("[" in line.split("decay=")[-1] for line in lines), lines

    add_probes(study, 0.01, -0.01)
    for value in PLATEAU:
        add(study, value)
    lines = displayed(study_of(url), capsys)
    assert len(lines) == 17, lines
    assert lines[-1].endswith("  [converged: top 5 within 0.004, gain 0 in 8 (σ 0.01)]"), lines
