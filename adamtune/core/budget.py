"""Budgets: a time budget's deadline, when the trial phase must end, and what an auto space searches.

A study's budget is a trial target (``n_trials``), a time budget (``timeout``, seconds), or both; the first
reached ends the search. Pure functions of plain numbers (no Optuna): the workers' admission step
(``trials/budget_check.py``) feeds them the study's trials.

**Time.** ``search --timeout 2h`` stores a deadline (wall-clock seconds since the epoch) on the study,
so every worker of the study, on any machine, stops at the same time. The deadline bounds the whole
search, confirmation included: new trials stop being started once the time left is what the
confirmation stage needs (:func:`confirm_reserve`, estimated from the trials so far), and trials still
running at that point are pruned at their next epoch.

**Auto space.** With ``space = "auto"`` (the default for a study without a ``[space]`` table) the
dimensions searched depend on the budget, in the order of the Deep Learning Tuning Playbook (Godbole et
al., 2023: below ~10 trials tune the learning rate alone, add β1 at 10-25, ε above 25, β2 only with
substantially more), which matches what adamtune measures (on digits the importance of lr is 0.52, of β2
0.32, of the rest at most 0.07). :data:`AUTO_ORDER` gives the smallest budget at which each dimension joins;
the others stay at Adam's defaults. With a time budget, the budget is the number of trials the time left is
expected to pay for (:func:`expected_trials`), so the space grows as the estimate does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from adamtune.core.errors import ConfigError

#: The smallest trial budget at which each core dimension is searched by an auto space (Playbook order).
AUTO_ORDER: tuple[tuple[str, int], ...] = (("lr", 0), ("beta1", 10), ("epsilon", 25), ("beta2", 60), ("decay", 120))
#: The trial target of a search given only a time budget: a cap that a time budget does not reach in practice.
TIMED_TRIAL_CAP = 100_000
#: Head-room on the confirmation stage's estimated time (its runs vary, and it may wait for running trials).
RESERVE_MARGIN = 1.3

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd])")


def parse_duration(text: str | float, where: str = "--timeout") -> float:
    """Seconds in a duration such as ``90``, ``60s``, ``15m``, ``2h``, ``1h30m`` or ``1.5d``.

    Raises:
        ConfigError: not a positive duration; the message names ``where`` and shows the accepted forms.
    """
    seconds: float | None = None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    elif isinstance(text, str):
        compact = text.strip().lower().replace(" ", "")
        try:
            seconds = float(compact)
        except ValueError:
            parts = _PART.findall(compact)
            if parts and "".join(n + u for n, u in parts) == compact:
                seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(
            f"{where} must be a duration such as 90s, 15m, 2h or 1h30m (a number is seconds), got {text!r}"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``2h03m``: a duration as people read it."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m{rest:02d}s"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"{hours}h{rest:02d}m"


def auto_dimensions(budget: int | None, sampled: Sequence[str]) -> tuple[str, ...]:
    """The dimensions of ``sampled`` an auto space searches for a budget of ``budget`` trials.

    Core dimensions join in :data:`AUTO_ORDER` as the budget reaches their threshold; the extra ones a study
    file names (warmup, weight decay, amsgrad) are always searched: the user asked for them. ``budget`` None
    (not known yet: a time budget before any trial finished) searches the learning rate alone.
    """
    order = dict(AUTO_ORDER)
    budget = budget or 0
    return tuple(name for name in sampled if name not in order or budget >= order[name])


def auto_reason(budget: int | None, searched: Sequence[str], sampled: Sequence[str]) -> str:
    """Why an auto space fixed the dimensions of ``sampled`` it did not search, for ``summary``."""
    fixed = [name for name in sampled if name not in searched]
    if not fixed:
        return f"all {len(searched)} dimensions searched (a budget of {budget} trials)"
    thresholds = dict(AUTO_ORDER)
    joins = ", ".join(f"{name} at {thresholds[name]}" for name in sorted(fixed, key=lambda n: thresholds.get(n, 0)))
    about = f"a budget of about {budget} trials" if budget else "a budget not known yet"
    return f"{', '.join(fixed)} fixed at the defaults for {about}; they join the search at a budget of: {joins} trials"


def mean_trial_seconds(durations: Sequence[float]) -> float | None:
    """The mean wall time of the finished trials (pruned ones included: they are part of the cost)."""
    usable = [d for d in durations if d > 0 and math.isfinite(d)]
    return sum(usable) / len(usable) if usable else None


def confirm_reserve(
    epoch_seconds: float | None,
    epochs: int,
    runs: int,
    workers: int,
) -> float:
    """Seconds the confirmation stage needs: ``runs`` runs of ``epochs`` epochs, shared by ``workers`` workers.

    The stage races in rounds (2, 3, 5, ... seeds), each waiting for its slowest run, so the runs are
    rounded up to whole waves of ``workers``; :data:`RESERVE_MARGIN` covers the rest. 0 when nothing is
    known about the speed yet (no trial finished).
    """
    if epoch_seconds is None or runs <= 0:
        return 0.0
    waves = math.ceil(runs / max(1, workers))
    return RESERVE_MARGIN * waves * epochs * epoch_seconds


def expected_trials(
    finished: int,
    running: int,
    now: float,
    phase_end: float,
    trial_seconds: float | None,
    workers: int,
    target: int,
) -> int | None:
    """How many trials the study will hold when its trial phase ends: the trial target, or fewer when the
    time left pays for fewer (``trial_seconds`` per trial on each of ``workers`` workers). None when a time
    budget's trials cannot be estimated yet (no trial finished) and the target is the time-only cap."""
    if trial_seconds is None:
        return None if target >= TIMED_TRIAL_CAP else target
    more = max(0.0, phase_end - now) / trial_seconds * max(1, workers)
    return min(target, finished + running + int(more))
