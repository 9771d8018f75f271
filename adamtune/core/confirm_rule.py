"""The confirmation stage's rule: finalists, fresh seeds, racing, and the decision (pure; no torch, no MLflow).

Why. Every search trial is one seed on one validation split, so the best of many trials is mostly luck
(the winner's curse). Before recommending, the stage trains the top finalists and Adam's defaults again,
for the study's full epochs without pruning, on the same fresh seeds, and scores them on validation
rows. Where the task allows (``ConfirmSettings.folds``), each seed also draws a fresh validation fold of
the pooled training + validation rows (``folds.py``), the same for every arm of that seed: the finalists
were selected on the task's own validation rows, and re-scoring them there would re-use the data that
selected them. The interval of the gain is then over seed-and-fold pairs. This module decides *what* to
run and *what it means*; ``confirm/stage.py`` runs it inside the workers, ``report/summary.py`` reads it
(read-only) for ``summary``/``recommend``.

Storage. Each confirmation run is a trial of a second Optuna study in the same storage,
``<study>.confirm`` (:func:`confirm_study_name`), whose user attributes name the arm
(:data:`ARM_ATTR`: ``"baseline"`` or ``"trial-<n>"``, the finalist's trial number in the search study),
the seed and the settings; its value is the objective on the validation split (a diverged run scores as
its untrained model, as in the search). A run is identified by ``(arm, seed)``: a finished run is never
repeated, and is reused by a later confirmation (the baseline's runs always are; a finalist's runs when
it is still a finalist after a later search raised the target).

The plan (:func:`plan_stage`), a deterministic function of the finalists and the runs finished so far,
so that every worker (and ``summary``) computes the same one:

1. **Finalists**: the top ``top`` (default 3) complete trials of the search by the recommendation rule
   of ``report/summary.py`` (late-epoch mean), the baseline trial excluded: it is the reference arm.
2. **Seeds**: ``seeds`` (default 5) seeds from :data:`FIRST_SEED` = 8,000,000 upwards, skipping any seed
   a search trial used; disjoint from ``verify``'s (7,000,000 upwards, at most a few hundred).
3. **Racing**: round one runs the baseline and every finalist on the first ``min(seeds, 2)`` seeds. After
   each round, every live finalist's *gain* is the per-seed paired difference with the baseline (signed
   so that positive is better than Adam's defaults), with a 95% paired-t interval. A finalist is dropped
   when it is *futile* — its *projected* lower bound, the one it would have on all ``seeds`` seeds with
   the mean and spread it shows now, ``mean - t(0.975, seeds-1) * sd / sqrt(seeds)``, is not above zero
   (this includes a mean gain <= 0) — or when its interval lies wholly below the interval of the live
   finalist with the highest lower bound. When even the leader (the highest mean gain) is futile, the
   stage is decided at once: Adam's defaults. Otherwise the
   decision is *open* while the leader's interval reaches down to zero, or fewer than
   :data:`MIN_CONFIRM_SEEDS` (3) seeds were run; then the next round adds seeds for the baseline and the
   live finalists (2 -> 3 -> 5 -> 7 ..., up to ``seeds``). Otherwise it is decided: once the leader is
   confirmed better than the defaults, seeds are not spent on ranking the other confirmed finalists.
   Dropping early can only lose a true winner (the defaults are kept), never recommend a false one.
   **Budget** (:func:`stage_budget`): the stage trains at most :data:`BUDGET_SHARE` of the epochs the
   search trials trained, but never less than one finalist and the baseline on 3 seeds. Only the
   finalists that can each reach 3 seeds within it race (the rest are ``not raced``), and a round adds
   only the seeds the rest of the budget pays for; when it pays for none the stage is decided as it is.
4. **Decision**: the best live finalist (highest mean gain on the seeds of the last round) is recommended
   **only if its interval's lower bound is above zero**; otherwise the recommendation is Adam's defaults,
   and the best finalist is reported as the best candidate, with its gain and interval.

The interval is the paired t interval ``mean ± t(0.975, n-1) · sd / sqrt(n)`` of the per-seed differences:
with 3-5 seeds it is wider, and so more cautious, than a bootstrap interval, which under-covers at such
small ``n``. Identical differences on every seed (sd = 0) give a zero-width interval.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from adamtune.core.stats import MIN_SEEDS, Gain, paired_gain, projected_low

#: Suffix of the study holding a study's confirmation runs.
CONFIRM_SUFFIX = ".confirm"
#: User attribute of the confirmation study naming the study it confirms (to hide it from listings).
CONFIRMS_ATTR = "adamtune.confirms"
#: User attributes of a confirmation run.
ARM_ATTR = "adamtune.confirm.arm"
ERROR_ATTR = "adamtune.confirm.error"
METRICS_ATTR = "adamtune.confirm.metrics"
SECONDS_ATTR = "adamtune.confirm.seconds"
#: The validation fold a run trained and scored on (``Fold.as_dict``); absent: the task's own rows.
FOLD_ATTR = "adamtune.confirm.fold"
#: The baseline arm's name; a finalist's is ``trial-<number>``.
BASELINE_ARM = "baseline"
#: First confirmation seed (verify starts at 7,000,000 and needs a handful).
FIRST_SEED = 8_000_000
DEFAULT_TOP = 3
DEFAULT_SEEDS = 5
#: Seeds of the first round, and seeds added per later round.
START_SEEDS = 2
SEED_STEP = 2
#: Fewest seeds a recommendation is confirmed on (when ``seeds`` allows as many).
MIN_CONFIRM_SEEDS = 3
#: The stage trains at most this share of the epochs the search trials trained (``stage_budget``).
BUDGET_SHARE = 0.4
#: A run (arm, seed) that failed with an error this many times stops the stage (the task is broken).
MAX_RUN_FAILURES = 3


@dataclass(frozen=True)
class ConfirmSettings:
    """How a study confirms: on/off, finalists, seeds, folds. Stored in the study's settings (``confirm``).

    ``folds`` is True when every seed's runs train and score on a fresh validation fold of the pooled
    training + validation rows, False when they use the task's own validation rows (seeds only). As set
    (``--confirm-folds``, default True) it asks for folds; ``StudySpec.with_task`` keeps it only where the
    task declares them (``Task.folds``, ``LoopTask(folds=True)``), and that is what the study stores. A
    stored form without the key (every study confirmed before folds existed) reads as False.

    ``budget`` is the share of the search trials' trained epochs the stage may train (``stage_budget``);
    None (every study stored before budgets existed) is no cap, so an old stage is replayed as decided.
    """

    enabled: bool = True
    top: int = DEFAULT_TOP
    seeds: int = DEFAULT_SEEDS
    folds: bool = True
    budget: float | None = BUDGET_SHARE

    def as_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "top": self.top,
            "seeds": self.seeds,
            "folds": self.folds,
            "budget": self.budget,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ConfirmSettings:
        """From the stored form; None (a study made before the stage existed) gives the defaults (on), and a
        study stored before folds existed confirms on seeds only."""
        values = values or {}
        return cls(
            enabled=bool(values.get("enabled", True)),
            top=int(values.get("top", DEFAULT_TOP)),
            seeds=int(values.get("seeds", DEFAULT_SEEDS)),
            folds=bool(values.get("folds", False)),
            budget=None if values.get("budget") is None else float(values["budget"]),
        )

    @property
    def validation(self) -> str:
        """``folds`` (fresh validation folds per seed) or ``fixed`` (the task's own validation rows)."""
        return "folds" if self.folds else "fixed"


#: What ``summary``, ``--json`` and the search's last line say of a stage confirmed on fixed rows.
FIXED_ROWS_NOTE = "validation rows fixed: the gain may not transfer"


def confirm_study_name(study_name: str) -> str:
    return study_name + CONFIRM_SUFFIX


def finalist_arm(trial_number: int) -> str:
    return f"trial-{trial_number}"


def arm_trial(arm: str) -> int | None:
    """The search trial number of a finalist arm; None for the baseline."""
    return None if arm == BASELINE_ARM else int(arm.removeprefix("trial-"))


def seeds_avoiding(first: int, used: Iterable[Any], n: int) -> list[int]:
    """``n`` seeds from ``first`` upwards, none of them in ``used`` (the search trials' seeds).

    Confirmation (from :data:`FIRST_SEED`) and ``verify`` (from its own first seed) draw their fresh
    seeds this way, so neither reuses a seed a trial trained with.
    """
    taken = set(used)
    seeds: list[int] = []
    candidate = first
    while len(seeds) < n:
        if candidate not in taken:
            seeds.append(candidate)
        candidate += 1
    return seeds


def confirm_seeds(used: Iterable[Any], n: int) -> list[int]:
    """``n`` seeds from :data:`FIRST_SEED` upwards, none of them in ``used`` (the search trials' seeds)."""
    return seeds_avoiding(FIRST_SEED, used, n)


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class Finalist:
    """A finalist of the search: its trial, settings (as a dict) and search-time score."""

    trial: int
    params: dict[str, Any]
    search_score: float

    @property
    def arm(self) -> str:
        return finalist_arm(self.trial)


@dataclass(frozen=True)
class ArmState:
    """One finalist's standing after the plan's last complete round."""

    finalist: Finalist
    seeds: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    gain: Gain | None = None
    dropped_after: int | None = None  # seeds it had when it was dropped (0: never raced); None while it lives

    @property
    def confirmed_score(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None


@dataclass(frozen=True)
class Plan:
    """What the stage still needs, and what it has shown so far.

    ``needed`` are the ``(arm, seed)`` runs of the current round that have no finished run yet; the
    stage is ``decided`` when no round is open. ``arms`` is every finalist's standing in rank order;
    ``recommended`` the finalist chosen by the rule (None: Adam's defaults, or not decided yet);
    ``best`` the best live finalist so far (the best candidate when the defaults are kept).
    """

    seeds: tuple[int, ...]
    round_seeds: int
    needed: tuple[tuple[str, int], ...]
    decided: bool
    arms: tuple[ArmState, ...]
    baseline_values: tuple[float, ...] = ()
    best: ArmState | None = None
    recommended: ArmState | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def budget_finalists(finalists: Sequence[Finalist], seeds: int, budget: int | None) -> int:
    """How many finalists the stage can race within ``budget`` runs: each, with the baseline, must be able to
    reach the fewest seeds a recommendation needs (:data:`MIN_CONFIRM_SEEDS`, or ``seeds`` when fewer)."""
    if budget is None:
        return len(finalists)
    return max(0, min(len(finalists), budget // min(MIN_CONFIRM_SEEDS, seeds) - 1))


def plan_stage(
    finalists: Sequence[Finalist],
    results: Mapping[tuple[str, int], float],
    seeds: Sequence[int],
    direction: str,
    budget: int | None = None,
    cut: bool = False,
) -> Plan:
    """Replay the racing rule (module docstring) over ``results`` ((arm, seed) -> objective on val).

    ``budget`` caps the runs the stage may train (None: no cap; see :func:`stage_budget`): only as many
    finalists race as can each reach :data:`MIN_CONFIRM_SEEDS` seeds with the baseline within it, and a
    round adds only the seeds the rest of the budget pays for; when it pays for none, the stage is decided
    on the seeds run so far.

    ``cut`` (the study's time budget ran out during the stage): an open round is not waited for; the stage
    is decided on the last round every arm finished, by the same rule (no recommendation before
    :data:`MIN_CONFIRM_SEEDS` seeds).

    Deterministic: the same finalists, results, seeds and budget give the same plan, whoever computes it.
    With no finalist (no complete trial besides the baseline, or a budget too small for one), the stage is
    decided at once and recommends nothing (the defaults).
    """
    seeds = tuple(seeds)
    raced = budget_finalists(finalists, len(seeds), budget)
    notes: tuple[str, ...] = ()
    unraced = tuple(ArmState(f, dropped_after=0) for f in finalists[raced:])  # outside the budget
    if unraced:
        notes = (f"budget of {budget} runs: {raced} of {len(finalists)} finalists raced",)
    finalists = tuple(finalists[:raced])
    if not finalists:
        return Plan(seeds, 0, (), True, unraced, notes=notes)
    n = min(len(seeds), START_SEEDS)
    alive = list(finalists)
    dropped: dict[str, ArmState] = {}
    done = 0  # seeds of the last complete round
    while True:
        used = seeds[:n]
        arms = [BASELINE_ARM] + [f.arm for f in alive]
        needed = tuple((arm, s) for arm in arms for s in used if (arm, s) not in results)
        if needed:
            states = _states(finalists, alive, dropped, results, seeds[:done], direction)
            if cut:
                return _cut_plan(seeds, done, states + unraced, results, notes)
            return Plan(seeds, n, needed, False, states + unraced, best=_best(states), notes=notes)
        baseline = [results[(BASELINE_ARM, s)] for s in used]
        standing = {f.arm: _arm_state(f, results, used, baseline, direction) for f in alive}
        best_low = max(standing[f.arm].gain.low for f in alive)  # type: ignore[union-attr]
        leader = max(alive, key=lambda f: standing[f.arm].gain.mean)  # type: ignore[union-attr]
        survivors = []
        for f in alive:
            gain = standing[f.arm].gain
            assert gain is not None
            if f is not leader and (projected_low(gain, len(seeds)) <= 0 or gain.high < best_low):
                dropped[f.arm] = ArmState(f, *_arm_fields(standing[f.arm]), dropped_after=n)
            else:
                survivors.append(f)
        alive = survivors
        lead_gain = standing[leader.arm].gain
        assert lead_gain is not None
        enough = n >= min(MIN_CONFIRM_SEEDS, len(seeds))
        futile = projected_low(lead_gain, len(seeds)) <= 0
        open_decision = not futile and (lead_gain.low <= 0 or not enough)
        following = min(len(seeds), n + 1 if n < MIN_CONFIRM_SEEDS else n + SEED_STEP)
        if budget is not None and open_decision:
            spent = n + sum(len(arm.values) for arm in dropped.values()) + n * len(alive)
            following = min(following, n + max(0, budget - spent) // (1 + len(alive)))
        if not open_decision or following <= n:
            states = tuple(dropped.get(f.arm) or standing[f.arm] for f in finalists)
            best = standing[leader.arm]
            recommended = best if lead_gain.low > 0 and enough else None
            return Plan(seeds, n, (), True, states + unraced, tuple(baseline), best, recommended, notes)
        done, n = n, following


def stage_budget(search_epochs: int, epochs: int, share: float | None = None) -> int:
    """The most confirmation runs (of ``epochs`` each) that cost ``share`` of the ``search_epochs`` the search
    trials trained (default :data:`BUDGET_SHARE`), but never fewer than one finalist and the baseline on
    :data:`MIN_CONFIRM_SEEDS` seeds: a search too short for that still gets one finalist confirmed."""
    share = BUDGET_SHARE if share is None else share
    return max(2 * MIN_CONFIRM_SEEDS, int(share * search_epochs / max(1, epochs)))


def _arm_fields(state: ArmState) -> tuple[tuple[int, ...], tuple[float, ...], Gain | None]:
    return state.seeds, state.values, state.gain


def _arm_state(
    finalist: Finalist,
    results: Mapping[tuple[str, int], float],
    used: Sequence[int],
    baseline: Sequence[float],
    direction: str,
) -> ArmState:
    values = [results[(finalist.arm, s)] for s in used]
    gain = paired_gain(values, baseline, direction) if len(values) >= MIN_SEEDS else None
    return ArmState(finalist, tuple(used), tuple(values), gain)


def _states(
    finalists: Sequence[Finalist],
    alive: Sequence[Finalist],
    dropped: Mapping[str, ArmState],
    results: Mapping[tuple[str, int], float],
    done_seeds: Sequence[int],
    direction: str,
) -> tuple[ArmState, ...]:
    """Standings while a round is open: the last complete round's numbers (none before round one ends)."""
    live = {f.arm for f in alive}
    states = []
    for f in finalists:
        if f.arm in dropped:
            states.append(dropped[f.arm])
        elif f.arm in live and done_seeds:
            baseline = [results[(BASELINE_ARM, s)] for s in done_seeds]
            states.append(_arm_state(f, results, done_seeds, baseline, direction))
        else:
            states.append(ArmState(f))
    return tuple(states)


def _best(states: Sequence[ArmState]) -> ArmState | None:
    scored = [s for s in states if s.gain is not None and s.dropped_after is None]
    return max(scored, key=lambda s: s.gain.mean) if scored else None  # type: ignore[union-attr]


def _cut_plan(
    seeds: tuple[int, ...],
    done: int,
    states: tuple[ArmState, ...],
    results: Mapping[tuple[str, int], float],
    notes: tuple[str, ...],
) -> Plan:
    """The plan decided on the ``done`` seeds of the last round every arm finished (the time ran out)."""
    best = _best(states)
    enough = done >= min(MIN_CONFIRM_SEEDS, len(seeds))
    confirmed = best is not None and best.gain is not None and best.gain.low > 0 and enough
    baseline = tuple(results[(BASELINE_ARM, s)] for s in seeds[:done])
    note = f"the time budget ended the stage: decided on the {done} seed(s) every arm finished"
    return Plan(seeds, done, (), True, states, baseline, best, best if confirmed else None, (*notes, note))
