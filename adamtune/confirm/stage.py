"""Running the confirmation stage inside a worker, after the study reached its trial target.

Every worker of a study (``search``'s own, its worker processes, ``adamtune worker`` on other machines)
runs :func:`run_stage` when :meth:`Worker.run <adamtune.worker.Worker.run>` finds the trial target
reached, so the stage is shared like the trials are. The rule (what to run, what it means) is in
``core/confirm_rule.py``; this module only runs it.

One step, under the confirmation study's admission lock (``admission.admission_lock``, as for trials):
fail stale confirmation runs of dead workers, read the stage (:func:`~adamtune.core.confirm_rule.read_stage`),
and either create the next needed run that no one is running (an Optuna trial of ``<study>.confirm``,
RUNNING with its arm, seed and settings recorded before the lock is released, so no two workers take
the same run), or wait while every needed run is in flight elsewhere, or stop when the plan is decided.
A run trains through :func:`adamtune.training.runner.train_once` on the validation split, under a heartbeat: on
the seed's fresh validation fold (:class:`~adamtune.core.folds.Fold`, recorded as ``FOLD_ATTR``) when the
study's task declares folds, else on the task's own validation rows.

Nothing is lost or repeated: a finished run is kept and never run again (resuming an interrupted stage
does only what is missing); an interrupted run is recorded FAIL and planned again (not re-queued: the
plan re-creates whatever is missing); a run whose worker died is failed as stale by the next worker's
step. A run that fails with an error :data:`~adamtune.core.confirm_rule.MAX_RUN_FAILURES` times stops the stage
with :class:`~adamtune.trials.failures.TooManyFailures`. If a later ``search`` raises the trial target while the
stage runs, the step says so and the worker goes back to running trials; the stage is planned again
for the finalists of the larger study.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from adamtune.confirm.stored import StageState, read_stage
from adamtune.core.confirm_rule import (
    ARM_ATTR,
    BASELINE_ARM,
    CONFIRMS_ATTR,
    ERROR_ATTR,
    FOLD_ATTR,
    MAX_RUN_FAILURES,
    METRICS_ATTR,
    SECONDS_ATTR,
    arm_trial,
    confirm_study_name,
)
from adamtune.core.folds import Fold
from adamtune.core.space import AdamParams, baseline_for
from adamtune.storage.admission import admission_lock
from adamtune.storage.attr_keys import (
    CURVES_ATTR,
    DEVICE_ATTR,
    HOST_ATTR,
    PARAMS_ATTR,
    RUN_ID_ATTR,
    SEED_ATTR,
    SETTINGS_ATTR,
    STATE_ATTR,
    WORKER_ATTR,
)
from adamtune.storage.db_errors import with_db_retry
from adamtune.storage.optuna_adapter import backend_of, storage_of, trial_id_of
from adamtune.storage.outcomes import count_trials

if TYPE_CHECKING:
    from adamtune.core.signals import Interrupts
    from adamtune.trials.worker import Worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfirmRun:
    """One finished confirmation run, for progress lines: its arm, seed, value (None: failed)."""

    arm: str
    seed: int
    value: float | None
    metric: str
    diverged: bool = False
    worker: str = ""
    device: str = ""


@dataclass(frozen=True)
class _Step:
    kind: str  # "run", "wait", "done", "raised"
    trial: optuna.Trial | None = None
    arm: str = ""
    seed: int = 0
    params: AdamParams | None = None
    state: StageState | None = None
    fold: Fold | None = None


def open_confirm_study(study: optuna.Study) -> optuna.Study:
    """Create (or load) the confirmation study of ``study`` in the same storage."""
    from adamtune.storage.study import quiet_optuna

    backend = backend_of(storage_of(study))
    with quiet_optuna():
        confirm = optuna.create_study(
            storage=backend,
            study_name=confirm_study_name(study.study_name),
            direction=study.direction.name.lower(),
            sampler=optuna.samplers.RandomSampler(),
            load_if_exists=True,
        )
    if CONFIRMS_ATTR not in confirm.user_attrs:
        confirm.set_user_attr(CONFIRMS_ATTR, study.study_name)
    return confirm


def run_stage(worker: Worker, interrupts: Interrupts, on_run: Callable[[ConfirmRun], None] | None = None) -> bool:
    """Run confirmation runs of ``worker.study`` until the plan is decided; True when it is.

    False means the trial target was raised meanwhile (run trials first, then come back). A study whose
    confirmation is off returns True at once.

    Raises:
        TooManyFailures: one run failed with an error ``MAX_RUN_FAILURES`` times.
        StorageError: the database stayed unreachable for longer than the retry budget.
        KeyboardInterrupt: SIGTERM/Ctrl-C, after the running confirmation run was recorded as failed.
    """
    from adamtune.confirm.stored import study_settings
    from adamtune.trials.waiting import WaitPauses

    if not study_settings(worker.study).enabled:
        return True
    confirm = with_db_retry(lambda: open_confirm_study(worker.study), "opening the confirmation study")
    pauses = WaitPauses(float(storage_of(worker.study).get_heartbeat_interval() or 5))
    announced = False
    held: list[optuna.Trial] = []  # the run admitted and not yet ended: failed here if interrupted before _run
    try:
        while True:
            interrupts.raise_pending()
            step = with_db_retry(lambda: _admit(worker, confirm, interrupts, held), "starting a confirmation run")
            _close_stale_runs(worker, confirm)
            if step.kind in ("done", "raised"):
                return step.kind == "done"
            if step.kind == "wait":
                interrupts.raise_pending()
                time.sleep(pauses.next())
                continue
            pauses.reset()
            if not announced and step.state is not None:
                announced = True
                log.info(
                    "confirming %d finalist(s) against Adam's defaults on up to %d fresh seeds",
                    sum(arm.dropped_after != 0 for arm in step.state.plan.arms),
                    len(step.state.seeds),
                )
            result = _run(worker, confirm, step, interrupts)
            held.clear()
            if on_run is not None:
                on_run(result)
    except KeyboardInterrupt:
        with interrupts.critical():  # an interrupt between a run's admission and its start: it ends FAIL
            for trial in held:
                fail = lambda t=trial: confirm.tell(t, state=TrialState.FAIL, skip_if_finished=True)  # noqa: E731
                with_db_retry(fail, "recording an interrupted confirmation run")
        raise


def _admit(worker: Worker, confirm: optuna.Study, interrupts: Interrupts, held: list[optuna.Trial]) -> _Step:
    """Under the confirmation study's lock: fail stale runs, read the plan, start the next needed run."""
    from adamtune.trials.failures import TooManyFailures

    study = worker.study
    with interrupts.critical(), admission_lock(storage_of(confirm), confirm.study_name):
        optuna.storages.fail_stale_trials(confirm)
        target = int((study.user_attrs.get(SETTINGS_ATTR) or {}).get("n_trials") or worker.n_trials)
        if count_trials(study.get_trials(deepcopy=False)).finished < target:
            return _Step("raised")
        state = read_stage(study, confirm)
        if not state.settings.enabled or state.plan.decided:
            return _Step("done", state=state)
        for key in state.plan.needed:
            if state.errors.get(key, 0) >= MAX_RUN_FAILURES:
                raise TooManyFailures(
                    f"confirmation run {key[0]} seed {key[1]} failed {state.errors[key]} times with errors "
                    f"(see the log above); check task {worker.objective.spec.task!r} and its data"
                )
        free = [key for key in state.plan.needed if key not in state.running]
        if not free:
            return _Step("wait", state=state)
        arm, seed = free[0]
        params = _arm_params(state, arm, baseline_for(worker.objective.spec.space))
        # Every arm of one seed gets that seed's fold: the same fresh split, so the comparison stays paired.
        fold = Fold(state.seeds.index(seed), len(state.seeds), seed) if state.settings.folds else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = confirm.ask()
        held[:] = [trial]
        # The heartbeat first: should the next writes fail (and the step be retried), this trial carries no
        # arm, is ignored by the plan, and is failed as stale after the grace period.
        with_db_retry(lambda: storage_of(confirm).record_heartbeat(trial_id_of(trial)), "recording a heartbeat")
        objective = worker.objective
        _set_attrs(
            trial,
            {
                ARM_ATTR: arm,
                SEED_ATTR: seed,
                PARAMS_ATTR: params.as_dict(),
                DEVICE_ATTR: objective.device,
                HOST_ATTR: socket.gethostname(),
                WORKER_ATTR: objective.worker,
                **({FOLD_ATTR: fold.as_dict()} if fold is not None else {}),
            },
        )
        return _Step("run", trial, arm, seed, params, state, fold)


def _set_attrs(trial: optuna.Trial, attrs: dict[str, Any]) -> None:
    """Write user attributes in one transaction, retrying while the database is briefly away (idempotent)."""
    from adamtune.storage.reporting import write_trial

    if not attrs:
        return
    with_db_retry(lambda: write_trial(trial, user_attrs=attrs), "recording a confirmation run")


def _arm_params(state: StageState, arm: str, defaults: AdamParams) -> AdamParams:
    """The settings an arm trains with: a finalist's, or the study's defaults (``space.baseline_for``)."""
    number = arm_trial(arm)
    if number is None:
        return defaults
    finalist = next(f for f in state.finalists if f.trial == number)
    return AdamParams.from_dict(finalist.params)


def _run(worker: Worker, confirm: optuna.Study, step: _Step, interrupts: Interrupts) -> ConfirmRun:
    """Train one confirmation run under a heartbeat and record it (FAIL on an error or an interrupt)."""
    from adamtune.storage.heartbeat import Heartbeat
    from adamtune.training.runner import split_metric
    from adamtune.training.trainer import describe_failure

    assert step.trial is not None and step.params is not None
    trial, objective, spec = step.trial, worker.objective, worker.objective.spec
    assert spec.epochs is not None and spec.batch_size is not None
    metric = split_metric(spec.objective, "val")
    mlflow_run = _start_mlflow_run(worker, step)

    epochs_seen = [0]

    def on_epoch(metrics: Any) -> None:
        epochs_seen[0] += 1
        if mlflow_run is not None:  # EpochMetrics from the built-in trainer; a mapping from other loops
            values = metrics.as_dict() if hasattr(metrics, "as_dict") else dict(metrics)
            epoch = int(getattr(metrics, "epoch", None) or epochs_seen[0])
            mlflow_run.log_epoch(epoch, {k: float(v) for k, v in values.items() if k != "epoch"})
            run_id = mlflow_run.take_new_run_id()
            if run_id is not None:  # stored early, so a worker that dies leaves a run that can be closed
                with contextlib.suppress(Exception):  # best effort: it is stored again when the run ends
                    trial.set_user_attr(RUN_ID_ATTR, run_id)

    interval = storage_of(confirm).get_heartbeat_interval() or 10
    started = time.monotonic()
    with Heartbeat(storage_of(confirm), trial_id_of(trial), interval):
        try:
            interrupts.raise_pending()
            outcome = objective.training().train_once(
                step.params,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                seed=step.seed,
                split="val",
                on_epoch=on_epoch,
                objective=spec.objective,
                fold=step.fold,
            )
        except KeyboardInterrupt:
            with interrupts.critical():
                _set_attrs(trial, _finish_mlflow(mlflow_run, trial, "failed", {}, None))
                with_db_retry(lambda: confirm.tell(trial, state=TrialState.FAIL, skip_if_finished=True), "recording")
            log.warning("confirmation run %s seed %d: interrupted; it runs again on resume", step.arm, step.seed)
            raise
        except Exception as exc:
            kind = describe_failure(exc)[0]
            log.warning("confirmation run %s seed %d failed: %s: %s", step.arm, step.seed, kind, exc)
            with interrupts.critical():
                _set_attrs(
                    trial, {ERROR_ATTR: f"{kind}: {exc}"[:500], **_finish_mlflow(mlflow_run, trial, "failed", {}, None)}
                )
                with_db_retry(lambda: confirm.tell(trial, state=TrialState.FAIL, skip_if_finished=True), "recording")
            return ConfirmRun(step.arm, step.seed, None, metric, worker=objective.worker, device=objective.device)
        value = float(outcome.metrics[metric])
        state = "diverged" if outcome.diverged else "complete"
        with interrupts.critical():
            attrs = {METRICS_ATTR: outcome.metrics, STATE_ATTR: state, SECONDS_ATTR: time.monotonic() - started}
            history = getattr(outcome.curves, "history", None)
            if callable(history):
                attrs[CURVES_ATTR] = history()
            _set_attrs(trial, {**attrs, **_finish_mlflow(mlflow_run, trial, state, outcome.metrics, value)})
            if math.isfinite(value):
                finished = with_db_retry(lambda: confirm.tell(trial, value, skip_if_finished=True), "recording")
            else:  # a metric that is not finite even for the untrained model: no result
                finished = with_db_retry(
                    lambda: confirm.tell(trial, state=TrialState.FAIL, skip_if_finished=True), "recording"
                )
    if finished.state != TrialState.COMPLETE:
        log.warning("confirmation run %s seed %d was not recorded as complete", step.arm, step.seed)
    return ConfirmRun(
        step.arm, step.seed, value, metric, outcome.diverged, worker=objective.worker, device=objective.device
    )


def _start_mlflow_run(worker: Worker, step: _Step) -> Any:
    tracker = worker.objective.tracker
    if tracker is None:
        return None
    spec, objective = worker.objective.spec, worker.objective
    assert step.params is not None
    logged = {k: v for k, v in step.params.as_dict().items() if k in {"lr", "beta1", "beta2", "epsilon", "decay"}}
    logged.update({k: v for k, v in step.params.as_dict().items() if k in spec.space.extra_dimensions()})
    finalist = arm_trial(step.arm)
    return tracker.start_trial(
        run_name=f"confirm-{step.arm}-seed{step.seed}",
        params={**logged, "seed": step.seed, "epochs": spec.epochs, "batch_size": spec.batch_size},
        tags={
            "adamtune.study": spec.study_name,
            "adamtune.task": spec.task,
            "adamtune.role": "confirmation",
            "adamtune.confirm.arm": step.arm,
            "adamtune.confirm.finalist": "baseline" if finalist is None else finalist,
            "adamtune.baseline": str(step.arm == BASELINE_ARM).lower(),
            "adamtune.seed": step.seed,
            "adamtune.confirm.validation": f"fold {step.fold.index}" if step.fold is not None else "fixed",
            "adamtune.device": objective.device,
            "adamtune.worker": objective.worker,
            "adamtune.state": "running",
        },
    )


def _finish_mlflow(
    run: Any, trial: optuna.Trial, state: str, metrics: dict[str, float], value: float | None
) -> dict[str, Any]:
    """Queue the end of a confirmation run's MLflow run; the trial attribute of its id, when already known
    (else it is stored once the run is made: ``mlflow_run.link_run_late``)."""
    from adamtune.trials.mlflow_run import link_run_late

    if run is None:
        return {}
    run_id = run.take_new_run_id()  # not waited for: the MLflow writer may create the run later
    if run_id is None and not run.noted:
        link_run_late(run, trial)
    run.finish(state, dict(metrics), {"adamtune.role": "confirmation"}, value=value)
    return {} if run_id is None else {RUN_ID_ATTR: run_id}


def _close_stale_runs(worker: Worker, confirm: optuna.Study) -> None:
    """Close the MLflow runs of confirmation runs this worker just failed as stale (by run id only)."""
    from adamtune.storage.stale_trials import RetryStaleTrial
    from adamtune.tracking.stale import end_stale_trial

    callback = storage_of(confirm).get_heartbeat_stale_trial_callback()
    if not isinstance(callback, RetryStaleTrial):
        return
    tracker = worker.objective.tracker
    for trial in callback.drain():
        run_id = trial.user_attrs.get(RUN_ID_ATTR)
        if tracker is not None and run_id:
            end_stale_trial(tracker, -1, run_id)
