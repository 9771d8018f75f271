"""Budgets (pure): durations, the auto space's dimensions, the confirmation's reserve, and the study file keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from adamtune.core.budget import (
    AUTO_ORDER,
    TIMED_TRIAL_CAP,
    auto_dimensions,
    auto_reason,
    confirm_reserve,
    expected_trials,
    format_duration,
    parse_duration,
)
from adamtune.core.config import build_spec
from adamtune.core.errors import ConfigError
from adamtune.core.space import BASELINE, parse_space

CORE = ("lr", "beta1", "beta2", "epsilon", "decay")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), (90, 90), ("60s", 60), ("15m", 900), ("2h", 7200), ("1h30m", 5400), ("1.5d", 129600), (" 2 m ", 120)],
)
def test_durations_in_the_forms_people_write(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5", "0", "5x", "1h-3m", "nan", True, "inf"])
def test_a_bad_duration_is_one_line_naming_the_option_and_the_forms(text: object) -> None:
    with pytest.raises(ConfigError, match=r"--timeout must be a duration such as 90s, 15m, 2h"):
        parse_duration(text)  # type: ignore[arg-type]


def test_durations_read_back_as_people_read_them() -> None:
    assert [format_duration(s) for s in (45, 60, 725, 7380)] == ["45s", "1m00s", "12m05s", "2h03m"]


@pytest.mark.parametrize(
    ("budget", "searched"),
    [
        (None, ("lr",)),
        (8, ("lr",)),
        (10, ("lr", "beta1")),
        (24, ("lr", "beta1")),
        (25, ("lr", "beta1", "epsilon")),
        (60, ("lr", "beta1", "beta2", "epsilon")),
        (120, CORE),
    ],
)
def test_the_auto_space_grows_in_the_playbooks_order(budget: int | None, searched: tuple[str, ...]) -> None:
    assert set(auto_dimensions(budget, CORE)) == set(searched)


def test_the_auto_space_keeps_what_the_user_named_and_fixed() -> None:
    # beta1 fixed by the user is not among the sampled ones; weight decay named by the user is always searched
    assert auto_dimensions(30, ("lr", "epsilon", "weight_decay")) == ("lr", "epsilon", "weight_decay")
    assert [name for name, _ in AUTO_ORDER] == ["lr", "beta1", "epsilon", "beta2", "decay"]


def test_the_reason_names_the_fixed_dimensions_and_when_they_join() -> None:
    reason = auto_reason(16, ("lr", "beta1"), CORE)
    assert "beta2, epsilon, decay fixed at the defaults for a budget of about 16 trials" in reason
    assert "epsilon at 25" in reason and "beta2 at 60" in reason and "decay at 120" in reason
    assert "all 5 dimensions searched" in auto_reason(150, CORE, CORE)


def test_a_searching_space_fixes_the_rest_at_the_defaults() -> None:
    space = parse_space({}, "test").searching(["lr"])
    assert [d.name for d in space.sampled()] == ["lr"]
    assert space["beta2"].value == BASELINE.beta2 and space["epsilon"].value == BASELINE.epsilon
    assert space["decay"].value == 0.0


def test_the_confirmation_reserve_counts_waves_of_runs() -> None:
    assert confirm_reserve(None, 20, 6, 1) == 0.0  # nothing known about the speed yet
    one = confirm_reserve(0.1, 20, 6, 1)
    assert one == pytest.approx(1.3 * 6 * 20 * 0.1)
    assert confirm_reserve(0.1, 20, 6, 4) == pytest.approx(one / 3)  # 2 waves of 4 instead of 6 of 1
    assert confirm_reserve(0.1, 20, 0, 1) == 0.0  # confirmation off


def test_expected_trials_are_what_the_time_left_pays_for_within_the_target() -> None:
    assert expected_trials(4, 1, 100.0, 130.0, 3.0, 1, 30) == 15
    assert expected_trials(4, 1, 100.0, 130.0, 3.0, 2, 30) == 25
    assert expected_trials(4, 1, 100.0, 1000.0, 3.0, 1, 30) == 30
    assert expected_trials(0, 1, 100.0, 130.0, None, 1, TIMED_TRIAL_CAP) is None
    assert expected_trials(0, 1, 100.0, 130.0, None, 1, 12) == 12


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(text)
    return path


def test_a_study_without_a_space_table_is_auto_and_an_explicit_one_is_kept(tmp_path: Path) -> None:
    assert build_spec("synthetic", write(tmp_path, '[study]\ntask = "synthetic"\n')).space.auto
    given = write(tmp_path, '[study]\ntask = "synthetic"\n[space]\nlr = { low = 1e-4, high = 1e-2 }\n')
    assert not build_spec("synthetic", given).space.auto
    assert build_spec("synthetic", given, overrides={"space": "auto"}).space.auto
    auto = write(tmp_path, '[study]\ntask = "synthetic"\nspace = "auto"\n[space]\nlr = { low = 1e-4, high = 1e-2 }\n')
    assert build_spec("synthetic", auto).space.auto
    assert not build_spec("synthetic", auto, overrides={"space": "full"}).space.auto
    assert build_spec("digits").space.auto and not build_spec("cifar10-paper").space.auto


def test_a_time_budget_alone_on_the_command_line_replaces_the_files_trial_target(tmp_path: Path) -> None:
    spec = build_spec("digits", overrides={"timeout": "2h"})
    assert (spec.timeout, spec.n_trials) == (7200.0, TIMED_TRIAL_CAP)
    both = build_spec("digits", overrides={"timeout": "2h", "n_trials": 12})
    assert (both.timeout, both.n_trials) == (7200.0, 12)
    in_file = write(tmp_path, '[study]\ntask = "synthetic"\nn_trials = 7\ntimeout = "10m"\n')
    assert (build_spec(None, in_file).timeout, build_spec(None, in_file).n_trials) == (600.0, 7)
    assert build_spec("digits").timeout is None and build_spec("digits").n_trials == 30


def test_the_new_study_file_keys_are_validated(tmp_path: Path) -> None:
    keys = '[study]\ntask = "synthetic"\nwarm_start = ["a", "b,c"]\nstop_when_converged = true\n'
    spec = build_spec(None, write(tmp_path, keys))
    assert spec.warm_start == ("a", "b", "c") and spec.stop_when_converged
    for bad, message in [
        ('timeout = "soon"', "timeout in \\[study\\] of .* must be a duration"),
        ('space = "some"', "space in \\[study\\] of .* must be one of auto, full"),
        ('warm_start = ["a", ""]', "warm_start in .* has an empty study name"),
        ("warm_start = 3", "warm_start in .* must be study names"),
        ('stop_when_converged = "yes"', "stop_when_converged in .* must be true or false"),
    ]:
        with pytest.raises(ConfigError, match=message):
            build_spec(None, write(tmp_path, f'[study]\ntask = "synthetic"\n{bad}\n'))


def test_an_auto_space_survives_its_stored_form() -> None:
    spec = build_spec("digits")
    stored = spec.space.to_dict()
    assert stored["auto"] is True
    assert parse_space(stored, "stored") == spec.space
    assert "auto" not in build_spec("cifar10-paper").space.to_dict()
