"""One trial: ``trial -> AdamParams -> train -> report/prune -> objective value``.

What each outcome becomes (see ``study.py`` for the bookkeeping):

* complete: the value is the objective metric (``val_loss`` or ``val_accuracy``) after the last epoch.
* pruned: ``optuna.TrialPruned`` propagates; Optuna records the trial as PRUNED.
* diverged: a non-finite or exploded loss (see ``train.py``). The trial returns the *untrained*
  model's validation metric (training that blew up is worth no more than no training), so the sampler
  learns the region is bad; the state ``diverged`` and the epoch are recorded on the trial and in MLflow.
* failed: any other exception, or an interruption (KeyboardInterrupt/SIGTERM), propagates after the
  MLflow run is closed as failed; Optuna records the trial as FAIL.

The baseline trial (enqueued first in a new study) trains with exactly Adam's defaults and is never
pruned, so every result can be compared with a full-length baseline curve.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna

from adamtune.config import StudySpec
from adamtune.space import AdamParams, baseline_for, suggest
from adamtune.study import (
    BASELINE_ATTR,
    CURVES_ATTR,
    DEVICE_ATTR,
    DIVERGED_EPOCH_ATTR,
    HOST_ATTR,
    PARAMS_ATTR,
    RUN_ID_ATTR,
    SEED_ATTR,
    STATE_ATTR,
    WORKER_ATTR,
)
from adamtune.train import Curves, EpochMetrics, train

if TYPE_CHECKING:
    from adamtune.tasks.base import Task, TaskData
    from adamtune.tracking import Tracker, TrialRun


def trial_seed(base_seed: int | None, trial_number: int) -> int:
    """The training seed of a trial: derived from ``--seed`` when given, else from fresh entropy."""
    if base_seed is None:
        import secrets

        return secrets.randbelow(2**31)
    return (base_seed * 1_000_003 + trial_number) % 2**31


@dataclass
class Objective:
    """Callable objective for ``study.optimize``; holds what stays the same across a worker's trials."""

    spec: StudySpec
    task: Task
    data: TaskData
    device: str
    tracker: Tracker | None = None
    base_seed: int | None = None
    worker: str = "worker-0"

    def __call__(self, trial: optuna.Trial) -> float:
        spec = self.spec
        assert spec.epochs is not None and spec.batch_size is not None
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
        params = suggest(trial, spec.space)
        if is_baseline:
            params = baseline_for(spec.space)
        seed = trial_seed(self.base_seed, trial.number)
        host = socket.gethostname()
        for key, value in {
            SEED_ATTR: seed,
            PARAMS_ATTR: params.as_dict(),
            DEVICE_ATTR: self.device,
            HOST_ATTR: host,
            WORKER_ATTR: self.worker,
        }.items():
            trial.set_user_attr(key, value)
        run = self._start_run(trial, params, seed, is_baseline, host)

        seen: list[EpochMetrics] = []

        def on_epoch(metrics: EpochMetrics) -> None:
            seen.append(metrics)
            if run is not None:
                run.log_epoch(metrics.epoch, metrics.as_dict())
                _note_run_id(trial, run)
            trial.report(getattr(metrics, spec.objective), metrics.epoch)
            if not is_baseline and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {metrics.epoch}")

        curves: Curves | None = None
        try:
            curves = train(
                self.task,
                self.data,
                params,
                device=self.device,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                seed=seed,
                on_epoch=on_epoch,
            )
        except optuna.TrialPruned:
            partial = Curves(epochs=seen)
            trial.set_user_attr(STATE_ATTR, "pruned")
            trial.set_user_attr(CURVES_ATTR, partial.history())
            self._finish(run, "pruned", partial, trial)
            raise
        except BaseException as exc:
            self._finish(run, "failed", Curves(epochs=seen), trial, error=exc)
            raise
        trial.set_user_attr(CURVES_ATTR, curves.history())
        if curves.diverged:
            trial.set_user_attr(STATE_ATTR, "diverged")
            trial.set_user_attr(DIVERGED_EPOCH_ATTR, curves.diverged_epoch)
            value = {"val_loss": curves.initial_val_loss, "val_accuracy": curves.initial_val_accuracy}[spec.objective]
            self._finish(run, "diverged", curves, trial, value=value)
            return value
        trial.set_user_attr(STATE_ATTR, "complete")
        assert curves.last is not None
        value = float(getattr(curves.last, spec.objective))
        self._finish(run, "complete", curves, trial, value=value)
        return value

    def _start_run(
        self, trial: optuna.Trial, params: AdamParams, seed: int, is_baseline: bool, host: str
    ) -> TrialRun | None:
        if self.tracker is None:
            return None
        logged = {k: v for k, v in params.as_dict().items() if k in _logged_param_names(self.spec)}
        return self.tracker.start_trial(
            run_name="baseline" if is_baseline else f"trial-{trial.number}",
            params={**logged, "seed": seed, "epochs": self.spec.epochs, "batch_size": self.spec.batch_size},
            tags={
                "adamtune.study": self.spec.study_name,
                "adamtune.task": self.spec.task,
                "adamtune.trial_number": trial.number,
                "adamtune.baseline": str(is_baseline).lower(),
                "adamtune.device": self.device,
                "adamtune.host": host,
                "adamtune.worker": self.worker,
                "adamtune.state": "running",
            },
        )

    def _finish(
        self,
        run: TrialRun | None,
        state: str,
        curves: Curves | None,
        trial: optuna.Trial,
        *,
        value: float | None = None,
        error: BaseException | None = None,
    ) -> None:
        """Close the trial's MLflow run as ``state`` (while the trial still runs, so its run id can be stored)."""
        if run is None:
            return
        run.wait_for_run_id()
        _note_run_id(trial, run)
        last = curves.last if curves is not None else None
        final = last.as_dict() if last is not None else {}
        tags: dict[str, object] = {"adamtune.trial_number": trial.number}
        if curves is not None:
            tags["adamtune.stopped_epoch"] = curves.diverged_epoch or (last.epoch if last is not None else 0)
            if curves.diverged:
                tags["adamtune.diverged_epoch"] = curves.diverged_epoch
            if curves.seconds:
                final["seconds"] = curves.seconds
        if error is not None:
            tags["adamtune.error"] = f"{type(error).__name__}: {error}"[:500]
        run.finish(state, final, tags, study=getattr(trial, "study", None), trial_number=trial.number, value=value)


def _note_run_id(trial: optuna.Trial, run: TrialRun) -> None:
    """Store the MLflow run id on the trial the first time it is known (the writer creates runs)."""
    run_id = run.take_new_run_id()
    if run_id is not None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)


def _logged_param_names(spec: StudySpec) -> set[str]:
    return {"lr", "beta1", "beta2", "epsilon", "decay", *spec.space.extra_dimensions()}
