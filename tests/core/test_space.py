"""The Adam search space: defaults, log-scale sampling, fixed values, the baseline, validation."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import FixedTrial

from adamtune.core.errors import ConfigError
from adamtune.core.space import (
    ADAMW_BASELINE,
    BASELINE,
    AdamParams,
    SearchSpace,
    baseline_for,
    baseline_optuna_params,
    params_from_optuna,
    parse_space,
)
from adamtune.core.space import suggest as suggest_params


def sample(space: SearchSpace, n: int) -> list[tuple[AdamParams, dict]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((suggest_params(trial, space), trial.params))
        study.tell(trial, 0.0)
    return out


def test_defaults_are_the_documented_ranges() -> None:
    space = SearchSpace()
    assert (space["lr"].low, space["lr"].high) == (1e-5, 1e-1)
    assert space["beta1"].sampling_bounds() == pytest.approx((1e-2, 0.5))
    assert space["beta2"].sampling_bounds() == pytest.approx((1e-4, 1e-1))
    assert (space["epsilon"].low, space["epsilon"].high) == (1e-10, 1.0)
    assert (space["decay"].low, space["decay"].high) == (1e-6, 1e-2)
    assert space["weight_decay"].value == 0.0 and space["amsgrad"].value is False
    assert space["warmup"].value == 0 and space.extra_dimensions() == []
    assert AdamParams(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, decay=0.0, warmup=0) == BASELINE


def test_samples_stay_in_range_and_are_log_scaled() -> None:
    samples = sample(SearchSpace(), 400)
    for params, _ in samples:
        assert 1e-5 <= params.lr <= 1e-1
        assert 0.5 <= params.beta1 <= 0.99
        assert 0.9 <= params.beta2 <= 0.9999
        assert 1e-10 <= params.epsilon <= 1.0
        assert 1e-6 <= params.decay <= 1e-2
        assert params.weight_decay == 0.0 and params.amsgrad is False
    # On a log scale, half the samples fall below the geometric midpoint; uniformly, ~1% would.
    below = sum(p.lr < 1e-3 for p, _ in samples) / len(samples)
    assert 0.4 < below < 0.6
    one_minus_beta2_mid = math.sqrt(1e-4 * 1e-1)
    above = sum(1 - p.beta2 < one_minus_beta2_mid for p, _ in samples) / len(samples)
    assert 0.4 < above < 0.6


def test_betas_are_sampled_as_one_minus_beta_but_reported_as_beta() -> None:
    params, optuna_params = sample(SearchSpace(), 1)[0]
    assert set(optuna_params) == {"lr", "one_minus_beta1", "one_minus_beta2", "epsilon", "decay"}
    assert params.beta1 == pytest.approx(1 - optuna_params["one_minus_beta1"])
    assert params_from_optuna(optuna_params, SearchSpace()) == params


def test_fixed_trial_gives_beta_values() -> None:
    trial = FixedTrial({"lr": 0.01, "one_minus_beta1": 0.05, "one_minus_beta2": 0.002, "epsilon": 1e-6, "decay": 1e-4})
    params = suggest_params(trial, SearchSpace())
    assert params == AdamParams(lr=0.01, beta1=0.95, beta2=0.998, epsilon=1e-6, decay=1e-4)


def test_fixed_dimensions_are_not_sampled_and_extras_turn_on() -> None:
    space = parse_space(
        {"beta1": 0.9, "decay": 0, "weight_decay": {"low": 1e-5, "high": 1e-2}, "amsgrad": [False, True]}, "t.toml"
    )
    for params, optuna_params in sample(space, 30):
        assert params.beta1 == 0.9 and params.decay == 0.0
        assert "one_minus_beta1" not in optuna_params and "decay" not in optuna_params
        assert 1e-5 <= params.weight_decay <= 1e-2
        assert isinstance(params.amsgrad, bool)
    assert space.extra_dimensions() == ["weight_decay", "amsgrad"]
    assert parse_space(space.to_dict(), "round trip") == space


def test_baseline_params_reproduce_the_defaults_where_the_scale_allows() -> None:
    params = baseline_optuna_params(SearchSpace())
    assert params["lr"] == 1e-3 and params["epsilon"] == 1e-8
    assert params["one_minus_beta1"] == pytest.approx(0.1) and params["one_minus_beta2"] == pytest.approx(1e-3)
    assert params["decay"] == 1e-6  # 0 has no place on a log scale: the nearest point, the lower bound


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ({"beta1": {"low": 0.5, "high": 1.0}}, "strictly between 0 and 1"),
        ({"beta2": 1.2}, "strictly between 0 and 1"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "must be below high"),
        ({"epsilon": {"low": 0, "high": 1}}, "must be > 0"),
        ({"decay": {"low": -1, "high": 1}}, "must be > 0"),
        ({"lr": -0.1}, "must be > 0"),
        ({"learning_rate": 0.1}, "unknown key [space].learning_rate"),
        ({"lr": {"low": 1e-4, "hi": 1}}, "unknown: hi"),
        ({"lr": "fast"}, "finite number"),
        ({"amsgrad": "yes"}, "true, false or a list"),
        ({"warmup": 10.5}, "whole number of optimizer steps"),
        ({"warmup": -1}, "whole number of optimizer steps >= 0"),
        ({"warmup": {"low": 0, "high": 100}}, "must be >= 1 step"),
        ({"warmup": {"low": 100, "high": 10}}, "must be below high"),
        ({"warmup": {"low": 1, "high": "many"}}, "whole number of optimizer steps"),
        ({"warmup": {"low": 1}}, "whole number or { low"),
    ],
)
def test_bad_ranges_name_the_key_and_file(table: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_space(table, "my.toml")
    assert fragment in str(error.value)
    assert "my.toml" in str(error.value)


def test_warmup_is_an_integer_log_scale_dimension_off_by_default() -> None:
    space = parse_space({"warmup": {"low": 1, "high": 1000}}, "t.toml")
    assert space.extra_dimensions() == ["warmup"]
    samples = sample(space, 300)
    for params, optuna_params in samples:
        assert isinstance(params.warmup, int) and 1 <= params.warmup <= 1000
        assert optuna_params["warmup"] == params.warmup
    below = sum(p.warmup < 32 for p, _ in samples) / len(samples)  # geometric midpoint of [1, 1000]
    assert 0.4 < below < 0.6
    assert params_from_optuna(samples[0][1], space) == samples[0][0]
    assert parse_space(space.to_dict(), "round trip") == space
    assert parse_space({"warmup": 1e3}, "t.toml")["warmup"].value == 1000  # a whole float is fine
    assert baseline_optuna_params(space)["warmup"] == 1  # 0 is off the log scale; 1 is the same schedule
    assert "warmup" not in sample(SearchSpace(), 1)[0][1]


def test_baseline_is_adamw_defaults_when_the_space_turns_weight_decay_on() -> None:
    assert baseline_for(SearchSpace()) is BASELINE
    assert AdamParams(lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-8, weight_decay=0.01) == ADAMW_BASELINE
    sampled = parse_space({"weight_decay": {"low": 1e-3, "high": 0.3}, "warmup": {"low": 1, "high": 500}}, "t")
    assert baseline_for(sampled) == ADAMW_BASELINE and sampled.has_weight_decay()
    assert baseline_for(parse_space({"weight_decay": 0.1}, "t")) == ADAMW_BASELINE
    assert baseline_for(parse_space({"weight_decay": 0}, "t")) == BASELINE
    params = baseline_optuna_params(sampled)
    assert params["weight_decay"] == 0.01 and params["warmup"] == 1
    # a default outside the range is recorded at the nearest bound
    narrow = parse_space({"weight_decay": {"low": 0.05, "high": 0.3}, "lr": {"low": 1e-2, "high": 1e-1}}, "t")
    assert baseline_optuna_params(narrow)["weight_decay"] == 0.05 and baseline_optuna_params(narrow)["lr"] == 1e-2
