"""Stale trials: the heartbeat settings that decide when a trial is stale, and re-queueing failed trials.

A trial whose worker stops beating for the grace period is failed by the next worker that looks for stale
trials and re-queued by :class:`RetryStaleTrial` (the heartbeat callback of every storage
``backends.open_storage`` opens); :func:`requeue_trial` also retries trials that were interrupted.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from adamtune.core.errors import ConfigError
from adamtune.storage.attr_keys import BASELINE_ATTR, CONFIRM_ARM_ATTR

# Heartbeats and their retry callback are "experimental" in Optuna since v2.8 yet stable in practice;
# adamtune relies on them deliberately, so their warnings would only be noise for users.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 30
#: Environment overrides of the two above (whole seconds), e.g. 1 and 3 in tests.
HEARTBEAT_ENV = "ADAMTUNE_HEARTBEAT_SECONDS"
GRACE_ENV = "ADAMTUNE_GRACE_SECONDS"
MAX_RETRIES = 2

log = logging.getLogger(__name__)


def heartbeat_settings() -> tuple[int, int]:
    """The heartbeat interval and grace period in seconds: ``HEARTBEAT_SECONDS``/``GRACE_SECONDS``, or the
    whole numbers in ``ADAMTUNE_HEARTBEAT_SECONDS``/``ADAMTUNE_GRACE_SECONDS``.

    Every worker of a study should use the same values: a worker with a shorter grace period than another's
    heartbeat interval would fail that worker's live trials as stale.

    Raises:
        ConfigError: a value is not a whole number >= 1, or the grace period is not longer than the interval.
    """
    values = []
    for env, default in ((HEARTBEAT_ENV, HEARTBEAT_SECONDS), (GRACE_ENV, GRACE_SECONDS)):
        text = os.environ.get(env, "").strip()
        if not text:
            values.append(default)
            continue
        if not text.isdigit() or int(text) < 1:
            raise ConfigError(f"{env} must be a whole number of seconds >= 1, got {text!r}")
        values.append(int(text))
    heartbeat, grace = values
    if grace <= heartbeat:
        raise ConfigError(
            f"the grace period ({grace}s, {GRACE_ENV}) must be longer than the heartbeat interval "
            f"({heartbeat}s, {HEARTBEAT_ENV})"
        )
    return heartbeat, grace


def requeue_trial(study: optuna.Study, trial: FrozenTrial, max_retry: int | None = MAX_RETRIES) -> bool:
    """Queue a new WAITING trial that retries the failed ``trial`` with the same settings; False if it has
    been retried ``max_retry`` times already (None: no limit). The baseline trial has no limit: a study must
    always end up with a complete baseline. See :class:`RetryStaleTrial` for what is copied.

    Used for trials that failed for reasons that say nothing about their settings: a dead worker (stale
    heartbeat) or an interruption (Ctrl-C/SIGTERM).
    """
    if trial.user_attrs.get(CONFIRM_ARM_ATTR) is not None:
        return False  # a confirmation run: the stage's plan creates it again (see confirm_stage.py)
    system_attrs: dict[str, Any] = {"failed_trial": trial.number, "retry_history": [], **trial.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], trial.number]
    is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR))
    if not is_baseline and max_retry is not None and len(system_attrs["retry_history"]) > max_retry:
        return False  # the baseline is always retried: every gain is measured against it
    user_attrs = {BASELINE_ATTR: True} if is_baseline else {}
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )
    return True


class RetryStaleTrial:
    """Heartbeat-stale trial callback: re-queue the trial of a dead worker with the same settings.

    Called (through ``optuna.storages.fail_stale_trials``) by whichever live worker notices that a trial has
    not beaten for the grace period, after Optuna marked it FAIL. The retry is a new WAITING trial that the
    next worker to start a trial picks up first.

    Unlike Optuna's ``RetryHeartbeatStaleTrialCallback`` (which copies *every* user attribute, so a retry
    would carry the dead run's MLflow id, host and partial curves), this copies the params and their
    distributions (the same Adam settings are tried again), Optuna's system attributes (``fixed_params`` of
    an enqueued trial, and ``failed_trial``/``retry_history`` in Optuna's format so
    ``RetryHeartbeatStaleTrialCallback.retried_trial_number`` works), and of the user attributes only
    ``adamtune.baseline``: a retried baseline must still train with Adam's defaults and never be pruned.

    A trial is retried at most ``max_retry`` times (None: always). Every stale trial this process failed is
    also kept until :meth:`drain` so that the worker can close its MLflow run.
    """

    def __init__(self, max_retry: int | None = MAX_RETRIES) -> None:
        self.max_retry = max_retry
        self._stale: list[FrozenTrial] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # the storage that holds this callback is pickled (Optuna's storage contract); the lock and the
        # trials noted in this process stay behind
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state["_stale"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        with self._lock:
            self._stale.append(trial)
        if trial.user_attrs.get(CONFIRM_ARM_ATTR) is not None:
            log.warning("confirmation run %d was stale (its worker stopped beating): failed it", trial.number)
            return
        if not requeue_trial(study, trial, self.max_retry):
            log.warning("trial %d was stale (its worker died) and has been retried enough; not retrying", trial.number)
            return
        log.warning("trial %d was stale (its worker stopped beating): failed it and queued a retry", trial.number)

    def drain(self) -> list[FrozenTrial]:
        """The stale trials failed by this process since the last call."""
        with self._lock:
            stale, self._stale = self._stale, []
        return stale
