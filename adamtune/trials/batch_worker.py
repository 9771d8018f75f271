"""A worker's batch of K trials: one context per trial, trained together by ``batched.train_batched``.

:func:`run_batch` is what a :class:`~adamtune.trials.worker.Worker` with ``batch_trials > 1`` does with the
trials its admission step created (all RUNNING, at most the free places): for every trial
:meth:`Objective.begin <adamtune.objective.Objective.begin>` (its settings, seed, MLflow run and
:class:`~adamtune.training.context.TrialContext`), then :func:`fit_batched` trains the K models as one, reporting
each trial's epochs to its own context, so pruning, divergence, MLflow curves and Optuna's
intermediate values go through the same code as a single trial's; then each trial is concluded and told
on its own. One heartbeat thread beats for all K trials.

A trial that is pruned, diverges or whose reporting fails leaves the batch (the stacked state shrinks;
its slot is not refilled). An interruption (SIGTERM/Ctrl-C) fails every trial of the batch, re-queues
each with the same settings and propagates, as for one trial.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.storage.db_errors import db_error_text, is_transient_db_error, with_db_retry
from adamtune.storage.heartbeat import Heartbeat
from adamtune.storage.optuna_adapter import storage_of, trial_id_of
from adamtune.storage.stale_trials import requeue_trial
from adamtune.training.context import TrialContext
from adamtune.training.stops import StopTrial

if TYPE_CHECKING:
    from adamtune.core.signals import Interrupts
    from adamtune.trials.objective import StartedTrial
    from adamtune.trials.worker import Worker

log = logging.getLogger(__name__)

#: Trial attribute: how many trials were admitted (and started training) together with this one.
BATCH_ATTR = "adamtune.batch"


class Heartbeats(Heartbeat):
    """One thread recording the heartbeats of several running trials (see :class:`Heartbeat`)."""

    def __init__(self, storage: Any, trial_ids: list[int], interval: float) -> None:
        super().__init__(storage, trial_ids[0], interval)
        self.trial_ids = trial_ids

    def _beat(self) -> None:
        failing = False
        while not self._stop.wait(self.interval):
            try:
                for trial_id in self.trial_ids:
                    self.storage.record_heartbeat(trial_id)
                failing = False
            except Exception as exc:
                if not failing:
                    log.warning("could not record the trials' heartbeats (%s); retrying", db_error_text(exc))
                failing = True


def fit_batched(task: Any, data: Any, contexts: list[TrialContext]) -> list[Exception | None]:
    """Train ``task`` for every context at once: ``runner._fit_builtin`` for K contexts.

    Each context gets the untrained metrics (``report_initial``), then per epoch ``train_loss``/``lr``
    (logged) and the validation metrics (reported). All contexts must share ``n_epochs``, ``batch_size``
    and ``device`` (those of one study and worker).

    Returns:
        Per context: None when it trained to its end or adamtune stopped it (pruned/diverged: see
        ``context.state``), else the exception its reporting raised (its MLflow logging, say).
    """
    from adamtune.training.batched import BatchTrial, train_batched

    first = contexts[0]
    if any((c.n_epochs, c.batch_size, c.device) != (first.n_epochs, first.batch_size, first.device) for c in contexts):
        raise ValueError("a batch's trials must share epochs, batch size and device")

    def hooks(context: TrialContext) -> BatchTrial:
        def on_epoch(metrics: Any) -> None:
            values = metrics.as_dict()
            context.log(**{k: v for k, v in values.items() if not k.startswith("val_")})
            context.report_epoch(metrics.epoch, {k[4:]: v for k, v in values.items() if k.startswith("val_")})

        def on_initial(initial: dict[str, float]) -> None:
            context.report_initial(**initial)

        return BatchTrial(context.params, context.seed, on_epoch=on_epoch, on_initial=on_initial)

    trials = [hooks(c) for c in contexts]
    train_batched(task, data, trials, device=first.device, epochs=first.n_epochs, batch_size=first.batch_size)
    errors: list[Exception | None] = []
    for trial, context in zip(trials, contexts, strict=True):
        error = trial.error
        if isinstance(error, StopTrial) or context.stopped:
            errors.append(None)
            continue
        if error is None and trial.curves.diverged and trial.curves.last is not None:
            try:  # train_batched stops at divergence without on_epoch; the context applies the same rule
                assert trial.on_epoch is not None
                trial.on_epoch(trial.curves.last)
                context.mark_diverged(trial.curves.last.epoch, "the trainer detected it")
            except StopTrial:
                pass
            except Exception as exc:  # this trial's own failure
                error = exc
        errors.append(error if isinstance(error, Exception) else None)
    return errors


def run_batch(
    worker: Worker, trials: list[optuna.Trial], interrupts: Interrupts
) -> list[tuple[FrozenTrial, Exception | None]]:
    """Run ``trials`` (admitted by ``worker``) as one batch and tell each outcome; see the module docstring."""
    objective = worker.objective
    storage = storage_of(worker.study)
    interval = storage.get_heartbeat_interval() or 10
    started: list[StartedTrial] = []
    results: list[tuple[FrozenTrial, Exception | None]] = []
    with Heartbeats(storage, [trial_id_of(t) for t in trials], interval):
        try:
            interrupts.raise_pending()
            for trial in trials:
                try:
                    trial.set_user_attr(BATCH_ATTR, len(trials))
                    started.append(objective.begin(trial))
                except Exception as exc:  # its settings or run could not be recorded: it fails alone
                    log.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
                    results.append((_tell_failed(worker, trial, exc, interrupts), exc))
            try:
                errors = fit_batched(objective.task, objective.data, [s.context for s in started]) if started else []
            except Exception as exc:  # the batch itself broke (out of memory, a task error): each trial fails
                errors = [exc] * len(started)
        except KeyboardInterrupt as exc:
            with interrupts.critical():
                for s in started:
                    objective.fail(s, exc)
                for trial in trials:
                    failed = worker._tell(trial, TrialState.FAIL, None)
                    if failed.state == TrialState.FAIL:
                        requeue = lambda f=failed: requeue_trial(worker.study, f)  # noqa: E731
                        with_db_retry(requeue, f"re-queueing trial {trial.number}")
                worker.release(trials)  # ended here: not again by the worker's own interrupt handler
            numbers = [t.number for t in trials]
            log.warning("trials %s: interrupted; recorded as failed and queued to run again", numbers)
            raise
        for s, error in zip(started, errors, strict=True):
            results.append(_conclude(worker, s, error, interrupts))
    return results


def _conclude(
    worker: Worker, started: StartedTrial, error: Exception | None, interrupts: Interrupts
) -> tuple[FrozenTrial, Exception | None]:
    trial = started.trial
    state, value = TrialState.FAIL, None
    if error is None:
        try:
            value = worker.objective.conclude(started)
            state = TrialState.COMPLETE
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except Exception as exc:
            error = exc
    else:
        worker.objective.fail(started, error)
    if error is not None and not is_transient_db_error(error):
        log.warning("trial %d failed: %s: %s", trial.number, type(error).__name__, error)
    with interrupts.critical():
        frozen = worker._tell(trial, state, value)
        if error is not None and is_transient_db_error(error) and frozen.state == TrialState.FAIL:
            with_db_retry(lambda: requeue_trial(worker.study, frozen), f"re-queueing trial {trial.number}")
    if state == TrialState.COMPLETE and value is not None and not math.isfinite(value):
        log.warning("trial %d: the objective returned %s; recorded as failed", trial.number, value)
    return frozen, error


def _tell_failed(worker: Worker, trial: optuna.Trial, error: Exception, interrupts: Interrupts) -> FrozenTrial:
    with interrupts.critical():
        return worker._tell(trial, TrialState.FAIL, None)
