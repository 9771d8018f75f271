"""Trial outcomes: adamtune's name for how a trial ended, and a study's trials counted by outcome.

adamtune's view of a trial's outcome is the user attribute ``adamtune.state``:

* ``complete`` — trained to the end of its budget; its value is the objective.
* ``pruned`` — stopped early by the pruner (Optuna state PRUNED).
* ``diverged`` — a loss became non-finite. The trial is COMPLETE in Optuna with the value of the
  untrained model, so the sampler learns that the region is bad; summaries count it separately and
  never recommend it.
* ``failed`` — an exception or an interruption (Optuna state FAIL); a stale trial of a dead worker
  also ends FAIL and is re-queued by the heartbeat callback (``stale_trials.RetryStaleTrial``).

The number of *finished* trials (complete + pruned + diverged) is what ``--n-trials`` asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

from optuna.trial import FrozenTrial, TrialState

from adamtune.storage.attr_keys import STATE_ATTR

FINISHED_STATES = ("complete", "pruned", "diverged")


def trial_state(trial: FrozenTrial) -> str:
    """adamtune's outcome name for ``trial`` (see the module docstring); ``running``/``waiting`` too."""
    if trial.state == TrialState.COMPLETE:
        return trial.user_attrs.get(STATE_ATTR, "complete")
    return {
        TrialState.PRUNED: "pruned",
        TrialState.FAIL: "failed",
        TrialState.RUNNING: "running",
        TrialState.WAITING: "waiting",
    }[trial.state]


@dataclass(frozen=True)
class Counts:
    """Trials of a study by adamtune outcome."""

    complete: int = 0
    pruned: int = 0
    diverged: int = 0
    failed: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.diverged

    def as_dict(self) -> dict[str, int]:
        return {
            "complete": self.complete,
            "pruned": self.pruned,
            "diverged": self.diverged,
            "failed": self.failed,
            "running": self.running,
            "waiting": self.waiting,
        }


def count_trials(trials: list[FrozenTrial]) -> Counts:
    tally: dict[str, int] = {}
    for trial in trials:
        state = trial_state(trial)
        tally[state] = tally.get(state, 0) + 1
    return Counts(**tally)
