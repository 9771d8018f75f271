"""The lines a search prints as it goes: a finished trial, a confirmation run, the outcome at the end.

Plain text from what the study records; no torch, Optuna or MLflow imports.
"""

from __future__ import annotations

from typing import Any


def describe_trial(trial: Any) -> str:
    """One log line for a finished trial: worker and device, number, outcome, value and settings."""
    from adamtune.storage.attr_keys import PARAMS_ATTR
    from adamtune.storage.outcomes import trial_state
    from adamtune.trials.worker import worker_label

    state = trial_state(trial)
    params = trial.user_attrs.get(PARAMS_ATTR, {})
    shown = ("lr", "beta1", "beta2", "epsilon", "decay", "warmup", "weight_decay")  # the last two when on
    settings = " ".join(f"{k}={_fmt(params[k])}" for k in shown if k in params and (params[k] or k in shown[:5]))
    value = f" value={trial.value:.4g}" if trial.value is not None and state == "complete" else ""
    notes = ["baseline"] if trial.user_attrs.get("adamtune.baseline") else []
    warm = trial.user_attrs.get("adamtune.warm_start")
    if isinstance(warm, dict) and warm.get("origin"):
        notes.append(f"warm start: {warm['origin']}")
    if "failed_trial" in trial.system_attrs:
        notes.append(f"retry of {trial.system_attrs['failed_trial']}")
    if trial.user_attrs.get("adamtune.resumed_from_epoch"):
        notes.append(f"resumed after epoch {trial.user_attrs['adamtune.resumed_from_epoch']}")
    note = f" ({', '.join(notes)})" if notes else ""
    prefix = worker_label(trial)
    return f"{prefix + ' ' if prefix else ''}trial {trial.number}{note}: {state}{value}  {settings}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def describe_confirm_run(run: Any) -> str:
    """One log line for a finished confirmation run: worker and device, arm, seed, value."""
    host = __import__("socket").gethostname()
    worker = run.worker.removeprefix(f"{host}-")
    prefix = f"[{' '.join(p for p in (worker, run.device) if p)}] " if worker or run.device else ""
    if run.value is None:
        return f"{prefix}confirm {run.arm} seed {run.seed}: failed"
    note = " (diverged)" if run.diverged else ""
    return f"{prefix}confirm {run.arm} seed {run.seed}: {run.metric} {run.value:.4g}{note}"


def outcome_lines(row: Any, search_seconds: float | None = None, stage_seconds: float | None = None) -> list[str]:
    """What a search ends with: the recommendation, the rule that chose it, and the stage's cost.

    The cost is given as wall time of this command (the stage against the search before it) when the
    stage ran here, and always as the confirmation runs' time against the trials' (start to end as Optuna
    records them, summed over workers).
    """
    conf = row.confirmation or {}
    lines = [f"recommendation: {row.rule_text_line()}"]
    if conf.get("status") in ("confirmed", "defaults", "in progress"):
        share, runs = conf.get("cost_share"), conf["runs"]["finished"]
        training = f"runs {conf['seconds']:.1f} s vs trials {conf['search_seconds']:.1f} s"
        training += f" ({share:.0%})" if share is not None else ""
        if search_seconds and stage_seconds:
            lines.append(
                f"confirmation: {runs} runs, {stage_seconds:.1f} s = {stage_seconds / search_seconds:.0%} of the "
                f"search's {search_seconds:.1f} s (wall time); {training}, summed over workers"
            )
        else:
            lines.append(f"confirmation: {runs} runs; {training}, summed over workers")
    return lines
