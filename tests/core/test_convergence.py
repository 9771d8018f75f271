"""The stop rule (``core/convergence.py``): stall, crowd, the trial minimum, unknown noise, both directions."""

from __future__ import annotations

import math

import pytest

from adamtune.core.convergence import Convergence, check_convergence, first_stop, seed_noise

NOISE = 0.01


def plateau(n: int, best: float = 0.30, step: float = 0.001) -> list[float | None]:
    """``n`` trials whose values climb from ``best`` in steps far below the noise, best first."""
    return [best + step * i for i in range(n)]


def test_seed_noise_is_the_sample_standard_deviation_of_the_finite_values() -> None:
    assert seed_noise([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))
    assert seed_noise([1.0, 2.0, 3.0, math.nan, math.inf]) == pytest.approx(1.0)
    assert seed_noise([1.0]) is None
    assert seed_noise([1.0, math.nan]) is None
    assert seed_noise([]) is None


def test_a_plateau_of_indistinguishable_values_converges() -> None:
    result = check_convergence(plateau(12), "minimize", NOISE)
    assert result.converged
    assert result.trials == 12 and result.window == 8
    assert result.spread == pytest.approx(0.004)  # the 5th best (0.304) minus the best (0.300)
    assert result.recent_gain == 0.0  # the best came first: nothing better in the last 8 trials
    assert result.describe().startswith("more search is unlikely to pay: the best did not improve over the last 8")
    assert "top 5 lie within 0.004" in result.describe()
    assert result.short().startswith("converged: top 5 within 0.004")


def test_fewer_than_min_trials_never_converge() -> None:
    result = check_convergence(plateau(11), "minimize", NOISE)
    assert not result.converged
    assert "11 of the 12 trials the rule needs have finished" in result.describe()
    assert check_convergence(plateau(10), "minimize", NOISE, min_trials=10).converged


def test_a_recent_gain_of_a_sigma_or_more_is_not_a_stall() -> None:
    values = [*plateau(11, best=0.30), 0.30 - NOISE]  # the last trial beats the best by exactly σ
    result = check_convergence(values, "minimize", NOISE)
    assert result.recent_gain == pytest.approx(NOISE)
    assert not result.converged
    assert "the best improved by 0.01 over the last 8 trials" in result.describe()
    slightly = [*plateau(11, best=0.30), 0.30 - NOISE / 2]  # half a σ: a stall, and the top 5 still crowd
    assert check_convergence(slightly, "minimize", NOISE).converged


def test_the_window_grows_with_the_trials() -> None:
    # 40 trials: the window is 10 (not 8). A new best, 1.5σ better, at index 30 is inside the last 10: no stall.
    def with_best_at(index: int) -> list[float | None]:
        values: list[float | None] = [0.50] * 40
        values[index] = 0.50 - 1.5 * NOISE
        return values

    inside = check_convergence(with_best_at(30), "minimize", NOISE)
    assert inside.window == 10 and inside.recent_gain == pytest.approx(1.5 * NOISE) and not inside.converged
    before = check_convergence(with_best_at(29), "minimize", NOISE)
    assert before.recent_gain == 0.0 and before.converged


def test_a_spread_top_is_not_a_crowd() -> None:
    values = [0.30, 0.33, 0.36, 0.39, 0.42, *([0.5] * 10)]  # the best came first (a stall) but spreads over 0.12
    result = check_convergence(values, "minimize", NOISE)
    assert result.recent_gain == 0.0
    assert result.spread == pytest.approx(0.12)
    assert not result.converged
    assert "the top 5 spread over 0.12, more than 2σ 0.02" in result.describe()
    assert check_convergence(values, "minimize", 0.06).converged  # 0.12 is exactly 2σ: within


def test_pruned_and_failed_trials_count_as_trials_but_not_values() -> None:
    values: list[float | None] = [0.30, 0.301, 0.302, 0.303, None, None, None, None, None, None, None, None]
    result = check_convergence(values, "minimize", NOISE)
    assert result.trials == 12 and result.spread is None and not result.converged
    assert "fewer than 5 trials have a value" in result.describe()
    assert not check_convergence([math.nan, *values[1:]], "minimize", NOISE).converged
    with_fifth = [*values[:4], 0.304, *values[5:]]
    assert check_convergence(with_fifth, "minimize", NOISE).converged


def test_unknown_noise_never_converges_and_says_so() -> None:
    for noise in (None, math.nan, -1.0):
        result = check_convergence(plateau(30), "minimize", noise)
        assert not result.converged and result.noise is None
        assert result.describe().startswith("not known yet: the seed noise is not measured")
        assert result.short() == "σ not measured"
    assert first_stop(plateau(30), "minimize", None) is None


def test_zero_noise_never_stalls() -> None:
    assert not check_convergence(plateau(30, step=0.0), "minimize", 0.0).converged


def test_maximize_measures_gains_and_spread_upwards() -> None:
    accuracies = [0.90 - 0.001 * i for i in range(12)]  # the best (highest) came first
    result = check_convergence(accuracies, "maximize", NOISE)
    assert result.converged
    assert result.spread == pytest.approx(0.004) and result.recent_gain == 0.0
    improving = [*accuracies[:11], 0.95]  # a new best, 0.05 above: no stall
    result = check_convergence(improving, "maximize", NOISE)
    assert result.recent_gain == pytest.approx(0.05) and not result.converged
    as_losses = check_convergence(accuracies, "minimize", NOISE)  # read the other way: 0.897 before, 0.889 in it
    assert as_losses.recent_gain == pytest.approx(0.008)


def test_first_stop_is_the_first_prefix_that_converges() -> None:
    values: list[float | None] = [0.5, 0.45, 0.40, *plateau(20, best=0.35, step=0.0005)]
    stop = first_stop(values, "minimize", NOISE)
    assert stop is not None
    assert check_convergence(values[:stop], "minimize", NOISE).converged
    assert not any(check_convergence(values[:n], "minimize", NOISE).converged for n in range(stop))
    assert stop == 12  # 12 trials, the last 8 after the 0.35 of trial 4: a stall, and the top 5 within 0.002
    assert first_stop(values, "minimize", NOISE, min_trials=20) == 20
    assert first_stop([0.5 - 0.05 * i for i in range(20)], "minimize", NOISE) is None  # always improving


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="direction"):
        check_convergence([1.0], "down", NOISE)
    with pytest.raises(ValueError, match="top"):
        check_convergence([1.0], "minimize", NOISE, top=0)


def test_as_dict_carries_the_numbers_and_the_line() -> None:
    result = check_convergence(plateau(12), "minimize", NOISE)
    data = result.as_dict()
    assert data["converged"] is True and data["window"] == 8 and data["noise"] == NOISE
    assert data["text"] == result.describe()
    assert isinstance(result, Convergence)
