"""Which rule chose a study's recommendation (confirmed, defaults or search), and that rule in one sentence.

The decision rule (docs/guides/recommendation.md): :func:`choose` picks the recommendation from the ranked
candidates, the baseline and the confirmation stage; :func:`rule_text` says which rule chose it (summaries, the HTML
report, ``adamtune search``'s closing lines). The candidates and their scores are in
:mod:`adamtune.confirm.ranking`.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from adamtune.confirm.ranking import Candidate
from adamtune.core.confirm_rule import FIXED_ROWS_NOTE
from adamtune.core.space import BASELINE, AdamParams

if TYPE_CHECKING:
    from adamtune.confirm.stored import StageState
    from adamtune.report.summary import StudySummary


def choose(
    ranked: list[Candidate], baseline: Candidate | None, stage: StageState, defaults: AdamParams = BASELINE
) -> tuple[str, Candidate | None]:
    """The recommendation and the rule that chose it (docs/guides/recommendation.md).

    * ``confirmed``: the confirmation stage is decided and its best finalist's gain interval lies above
      zero: that finalist.
    * ``defaults``: the stage is decided and no finalist was confirmed better: the defaults (the baseline
      trial; settings ``defaults``, i.e. ``space.baseline_for`` the study's space: Adam's, or AdamW's with
      weight decay; scored with the baseline's values).
    * ``search``: no decided stage (confirmation off, not run yet, in progress, or no finalist): the best
      search-time score, which summaries flag as unconfirmed.

    A study that holds its trials with no finalist (no trial but the baseline completed, e.g. a time budget
    too short for more) keeps the defaults: there is nothing to confirm.
    """
    plan = stage.plan
    if stage.settings.enabled and stage.trials_done and not stage.finalists and baseline is not None:
        return "defaults", replace(baseline, params=defaults)
    if stage.settings.enabled and stage.finalists and plan.decided:
        if plan.recommended is not None:
            number = plan.recommended.finalist.trial
            return "confirmed", next(c for c in ranked if c.trial == number)
        if baseline is not None:
            return "defaults", replace(baseline, params=defaults)
        mean = math.fsum(plan.baseline_values) / len(plan.baseline_values)
        return "defaults", Candidate(-1, defaults, mean, mean, baseline=True)
    return "search", ranked[0] if ranked else None


def rule_text(row: StudySummary) -> str:
    """One sentence saying which rule chose the recommendation, with the confirmed gain and interval."""
    conf = row.confirmation or {}
    metric = conf.get("metric", row.objective)
    if row.rule == "defaults" and not conf.get("finalists"):
        return "Adam's defaults: no trial besides the defaults completed, so there was nothing to confirm"
    if row.rule in ("confirmed", "defaults"):
        best = next((f for f in conf["finalists"] if f["trial"] == conf["best_candidate"]), None)
        folds = conf.get("validation") == "folds"
        fresh = "fresh seeds and validation folds" if folds else "fresh seeds"
        detail = ""
        if best is not None:
            relative = f" ({best['relative_gain']:+.1%})" if best.get("relative_gain") is not None else ""
            low, high = best["interval"]
            detail = (
                f"trial {best['trial']}: {metric} {best['confirmed_score']:.4g} "
                f"vs {conf['baseline']['confirmed_score']:.4g} "
                f"for Adam's defaults, gain {best['gain']:+.3g}{relative}, 95% CI {low:+.3g} to {high:+.3g} "
                f"over {best['seeds']} {fresh}"
            )
        caveat = "" if folds else f" ({conf.get('note') or FIXED_ROWS_NOTE})"
        if row.rule == "confirmed":
            return f"confirmed on {fresh}{caveat}: {detail}"
        return (
            f"Adam's defaults: no finalist was confirmed better on {fresh}{caveat} (the interval of the gain "
            f"must lie above 0); best candidate {detail}"
        )
    why = {
        "off": "confirmation is off for this study",
        "not run": "confirmation has not run yet",
        "in progress": "confirmation is in progress",
    }.get(conf.get("status", "not run"), "confirmation has not run yet")
    hint = (
        "search again with --confirm to confirm it"
        if conf.get("status") == "off"
        else "run 'adamtune search' again with the same --n-trials to confirm it"
    )
    return f"the best search-time score (one seed each), UNCONFIRMED: {why}; {hint}"
