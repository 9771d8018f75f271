"""The Adam search space: ranges, log scales, fixed values and the baseline.

Every continuous dimension is sampled on a log scale. The betas are sampled as ``1 - beta`` on a log
scale, so the sampler spends as much effort between 0.99 and 0.999 as between 0.9 and 0.99; in Optuna
they are stored as the parameters ``one_minus_beta1`` and ``one_minus_beta2``. Everything a user reads
(summaries, MLflow params, exports) goes through :class:`AdamParams`, which holds beta1 and beta2
themselves.

Ranges are written in the units users know: ``beta1 = { low = 0.5, high = 0.99 }`` means
``1 - beta1`` is sampled log-uniformly in ``[0.01, 0.5]``.

``warmup`` is the one integer dimension: a number of optimizer steps, sampled log-uniformly over the
integers (``suggest_int(..., log=True)``), off (fixed 0) unless a study file names it. A warmup of 1 is
the same schedule as 0 (see :func:`adamtune.training.optim.lr_factor`), so a range starting at 1 includes "none".

The baseline a study is compared against is :func:`baseline_for` its space: Adam's defaults, or AdamW's
(weight decay 0.01) when the space turns weight decay on.

This module does not import optuna at module level; :func:`suggest` takes any object with Optuna's
``suggest_float`` / ``suggest_categorical`` methods (a real trial or ``optuna.trial.FixedTrial``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from adamtune.core.errors import ConfigError

#: The continuous dimensions, in display order.
CONTINUOUS = ("lr", "beta1", "beta2", "epsilon", "decay", "weight_decay")
#: Integer dimensions (a count of optimizer steps), sampled log-uniformly over the integers.
INTEGER = ("warmup",)
#: Every dimension a study file's ``[space]`` table may name, in display order.
DIMENSIONS = ("lr", "beta1", "beta2", "epsilon", "decay", "warmup", "weight_decay", "amsgrad")
#: Dimensions sampled as log(1 - value).
BETAS = ("beta1", "beta2")


@dataclass(frozen=True)
class AdamParams:
    """Concrete Adam settings, as passed to ``torch.optim.Adam`` / ``AdamW``.

    ``decay`` is the Keras-style learning-rate decay and ``warmup`` a linear warmup over that many
    optimizer steps: at step ``t`` (0-based) the learning rate is
    ``lr * min(1, (t + 1) / warmup) / (1 + decay * t)`` (warmup 0 or 1: no warmup); see
    :func:`adamtune.training.optim.lr_factor`. ``weight_decay > 0`` selects decoupled weight decay (AdamW),
    applied to parameters of two or more dimensions only (:func:`adamtune.training.optim.param_groups`).
    """

    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    decay: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    amsgrad: bool = False

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdamParams:
        """Build from a mapping with a subset of the field names; missing ones take Adam's defaults."""
        known = {k: values[k] for k in cls.__dataclass_fields__ if k in values}
        return cls(**known)


#: Adam's defaults (``torch.optim.Adam``): the baseline of a study whose space has no weight decay.
BASELINE = AdamParams()
#: AdamW's defaults (``torch.optim.AdamW``: weight decay 0.01, no warmup): the baseline when the space
#: samples weight decay or fixes it above 0.
ADAMW_BASELINE = AdamParams(weight_decay=0.01)


@dataclass(frozen=True)
class Dimension:
    """One dimension of the space: a log-uniform range, a fixed value, or (for amsgrad) a choice.

    Exactly one of ``(low, high)``, ``value`` or ``choices`` is set. For the betas, ``low``/``high`` are
    beta values; sampling happens on ``1 - beta``. For ``warmup`` (:data:`INTEGER`) they are ints.
    """

    name: str
    low: float | None = None
    high: float | None = None
    value: float | bool | None = None
    choices: tuple[bool, ...] = ()

    @property
    def is_sampled(self) -> bool:
        return self.value is None

    @property
    def is_integer(self) -> bool:
        return self.name in INTEGER

    @property
    def optuna_name(self) -> str:
        """The parameter name in Optuna's storage: ``one_minus_beta1`` for beta1, else the name."""
        return f"one_minus_{self.name}" if self.name in BETAS else self.name

    def sampling_bounds(self) -> tuple[float, float]:
        """The (low, high) bounds of the sampled quantity: ``1 - beta`` for the betas."""
        assert self.low is not None and self.high is not None
        if self.name in BETAS:
            return 1.0 - self.high, 1.0 - self.low
        return self.low, self.high

    def to_internal(self, value: float) -> float:
        """Map a user-facing value (a beta) to the sampled quantity (``1 - beta``)."""
        return 1.0 - value if self.name in BETAS else value

    def describe(self) -> str:
        if self.value is not None:
            return f"fixed {self.value}"
        if self.choices:
            return "choice of " + ", ".join(str(c).lower() for c in self.choices)
        scale = "log(1-β)" if self.name in BETAS else "log"
        return f"[{self.low:g}, {self.high:g}] {scale}"


def _default_dimensions() -> dict[str, Dimension]:
    return {
        "lr": Dimension("lr", 1e-5, 1e-1),
        "beta1": Dimension("beta1", 0.5, 0.99),
        "beta2": Dimension("beta2", 0.9, 0.9999),
        "epsilon": Dimension("epsilon", 1e-10, 1.0),
        "decay": Dimension("decay", 1e-6, 1e-2),
        "warmup": Dimension("warmup", value=0),
        "weight_decay": Dimension("weight_decay", value=0.0),
        "amsgrad": Dimension("amsgrad", value=False),
    }


@dataclass(frozen=True)
class SearchSpace:
    """The dimensions of an Adam search, keyed by name (all of :data:`DIMENSIONS`).

    ``auto`` True: the space grows with the budget (``space = "auto"``): each trial searches the
    dimensions :func:`adamtune.core.budget.auto_dimensions` picks for the study's budget
    (:meth:`searching`), the other sampled ones stay at the defaults.
    """

    dimensions: dict[str, Dimension] = field(default_factory=_default_dimensions)
    auto: bool = False

    def __getitem__(self, name: str) -> Dimension:
        return self.dimensions[name]

    def sampled(self) -> list[Dimension]:
        return [d for d in (self.dimensions[n] for n in DIMENSIONS) if d.is_sampled]

    def extra_dimensions(self) -> list[str]:
        """Names beyond the five core ones that this space turns on (warmup, weight_decay, amsgrad).

        A dimension is on when it is sampled or fixed at a non-zero/true value; display order.
        """
        return [n for n in ("warmup", "weight_decay", "amsgrad") if self[n].is_sampled or self[n].value]

    def has_weight_decay(self) -> bool:
        """True when weight decay is sampled or fixed above 0 (an AdamW study)."""
        return "weight_decay" in self.extra_dimensions()

    def searching(self, names: tuple[str, ...] | list[str]) -> SearchSpace:
        """This space with only ``names`` sampled: every other sampled dimension fixed at the baseline's value."""
        baseline = baseline_for(self)
        dims = {
            name: dim if not dim.is_sampled or name in names else Dimension(name, value=getattr(baseline, name))
            for name, dim in self.dimensions.items()
        }
        return SearchSpace(dims)

    def to_dict(self) -> dict[str, Any]:
        """A TOML/JSON-ready form that :func:`parse_space` reads back to an equal space."""
        out: dict[str, Any] = {"auto": True} if self.auto else {}
        for name in DIMENSIONS:
            dim = self.dimensions[name]
            if dim.value is not None:
                out[name] = dim.value
            elif dim.choices:
                out[name] = list(dim.choices)
            else:
                out[name] = {"low": dim.low, "high": dim.high}
        return out


class TrialLike(Protocol):
    def suggest_float(self, name: str, low: float, high: float, *, log: bool = ...) -> float: ...

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = ...) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def suggest(trial: TrialLike, space: SearchSpace) -> AdamParams:
    """Sample one set of Adam settings from ``space`` through ``trial``.

    Fixed dimensions are not suggested (they do not appear among the trial's Optuna params).
    """
    values: dict[str, Any] = {}
    for name in DIMENSIONS:
        dim = space[name]
        if dim.value is not None:
            values[name] = dim.value
        elif dim.choices:
            values[name] = bool(trial.suggest_categorical(name, list(dim.choices)))
        elif dim.is_integer:
            assert dim.low is not None and dim.high is not None
            values[name] = int(trial.suggest_int(name, int(dim.low), int(dim.high), log=True))
        else:
            low, high = dim.sampling_bounds()
            sampled = trial.suggest_float(dim.optuna_name, low, high, log=True)
            values[name] = 1.0 - sampled if name in BETAS else sampled
    return AdamParams(**values)


def baseline_for(space: SearchSpace) -> AdamParams:
    """The defaults a study over ``space`` is compared against (its baseline trial, ``verify``).

    :data:`ADAMW_BASELINE` (lr 1e-3, betas 0.9/0.999, eps 1e-8, weight decay 0.01, no warmup, no decay)
    when the space samples weight decay or fixes it above 0 -- the user trains with AdamW, so AdamW's
    defaults are what they would use untuned -- else :data:`BASELINE` (Adam's defaults). The baseline
    never has warmup or decay, whatever the space says.
    """
    return ADAMW_BASELINE if space.has_weight_decay() else BASELINE


def defaults_label(weight_decay: bool) -> str:
    """How messages name the baseline: ``"AdamW's defaults"`` for a weight-decay study, else ``"Adam's defaults"``."""
    return "AdamW's defaults" if weight_decay else "Adam's defaults"


def baseline_optuna_params(space: SearchSpace) -> dict[str, Any]:
    """Optuna params that make a trial train with :func:`baseline_for` ``(space)``.

    Used to enqueue the baseline as a new study's first trial. A default that a log scale cannot
    represent (decay, warmup and Adam's weight decay are 0) or that lies outside the range is recorded
    at the nearest point of the range (the lower bound for 0); the objective trains the baseline with
    the exact defaults regardless, and records the exact values it used.
    """
    return optuna_params_of(space, baseline_for(space))


def optuna_params_of(space: SearchSpace, params: AdamParams) -> dict[str, Any]:
    """The Optuna params of ``space``'s sampled dimensions for ``params`` (inverse of :func:`params_from_optuna`),
    e.g. to enqueue them: betas as ``one_minus_beta*``, each value clipped into the sampling bounds (a 0 that a
    log scale cannot hold takes the lower bound), ``warmup`` in whole steps, a choice outside the choices the
    first one."""
    values: dict[str, Any] = {}
    for dim in space.sampled():
        value = getattr(params, dim.name)
        if dim.choices:
            values[dim.name] = value if value in dim.choices else dim.choices[0]
            continue
        low, high = dim.sampling_bounds()
        internal = min(max(dim.to_internal(float(value)), low), high)
        values[dim.optuna_name] = round(internal) if dim.is_integer else internal
    return values


def params_from_optuna(optuna_params: Mapping[str, Any], space: SearchSpace) -> AdamParams:
    """Rebuild user-facing settings from a trial's stored Optuna params (inverse of :func:`suggest`)."""
    values: dict[str, Any] = {}
    for name in DIMENSIONS:
        dim = space[name]
        if dim.value is not None:
            values[name] = dim.value
        elif dim.optuna_name in optuna_params:
            raw = optuna_params[dim.optuna_name]
            values[name] = 1.0 - raw if name in BETAS else raw
    return AdamParams.from_dict(values)


def parse_space(table: Mapping[str, Any], source: str) -> SearchSpace:
    """Validate a study file's ``[space]`` table and merge it over the defaults.

    Each entry is a range ``{ low = …, high = … }``, a number (fixed value) or, for ``amsgrad``, a
    boolean (fixed) or a list of booleans (a choice). Omitted dimensions keep their defaults;
    ``warmup``, ``weight_decay`` and ``amsgrad`` are off unless named. ``warmup`` takes whole numbers of
    steps: a fixed value >= 0, or a range with ``1 <= low < high``.

    Raises:
        ConfigError: an unknown dimension, a malformed entry, a beta outside (0, 1), low >= high, a
            non-positive bound on a log scale, or a warmup that is not a whole number. The message
            names the key and ``source``.
    """
    dims = _default_dimensions()
    auto = table.get("auto", False)
    if not isinstance(auto, bool):
        raise ConfigError(f"[space].auto in {source} must be true or false, got {auto!r}")
    for name, entry in table.items():
        if name == "auto":
            continue
        if name not in DIMENSIONS:
            raise ConfigError(f"unknown key [space].{name} in {source}; valid keys: {', '.join(DIMENSIONS)}")
        if name == "amsgrad":
            dims[name] = _parse_amsgrad(entry, f"[space].amsgrad in {source}")
        elif name in INTEGER:
            dims[name] = _parse_steps(name, entry, source)
        else:
            dims[name] = _parse_continuous(name, entry, source)
    return SearchSpace(dims, auto)


def _parse_amsgrad(entry: Any, where: str) -> Dimension:
    if isinstance(entry, bool):
        return Dimension("amsgrad", value=entry)
    if isinstance(entry, list) and entry and all(isinstance(c, bool) for c in entry):
        choices = tuple(dict.fromkeys(entry))
        return Dimension("amsgrad", choices=choices) if len(choices) > 1 else Dimension("amsgrad", value=choices[0])
    raise ConfigError(f"{where} must be true, false or a list such as [false, true]")


def _steps(value: Any, where: str) -> int:
    """A whole number of steps (an int, or a float such as 1e3 that is whole), >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a whole number of optimizer steps, got {value!r}")
    if value != int(value) or value < 0:
        raise ConfigError(f"{where} must be a whole number of optimizer steps >= 0, got {value!r}")
    return int(value)


def _parse_steps(name: str, entry: Any, source: str) -> Dimension:
    def where(suffix: str = "") -> str:
        return f"[space].{name}{suffix} in {source}"

    if not isinstance(entry, Mapping):
        return Dimension(name, value=_steps(entry, where()))
    unknown = set(entry) - {"low", "high"}
    if unknown or "low" not in entry or "high" not in entry:
        extra = f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""
        raise ConfigError(f"{where()} must be a whole number or {{ low = …, high = … }}{extra}")
    low, high = _steps(entry["low"], where(".low")), _steps(entry["high"], where(".high"))
    if low < 1:
        raise ConfigError(
            f"{where()}: the low bound of a log-scale range must be >= 1 step, got {low} "
            "(a warmup of 1 step is no warmup); use warmup = 0 to turn it off"
        )
    if low >= high:
        raise ConfigError(f"{where()}: low ({low}) must be below high ({high}); use a number to fix a value")
    return Dimension(name, low, high)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _check_value(name: str, value: float, where: str) -> None:
    if name in BETAS and not 0.0 < value < 1.0:
        raise ConfigError(f"{where}: {name} must lie strictly between 0 and 1, got {value:g}")
    if name in ("decay", "weight_decay"):
        if value < 0:
            raise ConfigError(f"{where}: {name} must be >= 0, got {value:g}")
    elif name not in BETAS and value <= 0:
        raise ConfigError(f"{where}: {name} must be > 0, got {value:g}")


def _parse_continuous(name: str, entry: Any, source: str) -> Dimension:
    def where(suffix: str = "") -> str:
        return f"[space].{name}{suffix} in {source}"

    if not isinstance(entry, Mapping):
        value = _number(entry, where())
        _check_value(name, value, where())
        return Dimension(name, value=value)
    unknown = set(entry) - {"low", "high"}
    if unknown or "low" not in entry or "high" not in entry:
        extra = f" (unknown: {', '.join(sorted(unknown))})" if unknown else ""
        raise ConfigError(f"{where()} must be a number or {{ low = …, high = … }}{extra}")
    low, high = _number(entry["low"], where(".low")), _number(entry["high"], where(".high"))
    if name in BETAS:
        _check_value(name, low, where(".low"))
        _check_value(name, high, where(".high"))
    elif low <= 0 or high <= 0:
        raise ConfigError(
            f"{where()}: bounds of a log-scale range must be > 0, got low={low:g} high={high:g}; "
            "fix the value (e.g. decay = 0) to turn a dimension off"
        )
    if low >= high:
        raise ConfigError(f"{where()}: low ({low:g}) must be below high ({high:g}); use a number to fix a value")
    return Dimension(name, low, high)
