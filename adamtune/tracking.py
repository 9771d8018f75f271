"""The MLflow boundary: one experiment per study, one run per trial, metrics logged in batches.

Only :class:`~mlflow.MlflowClient` with explicit run ids is used, never the fluent "active run", so
several trials (and threads) never share hidden state.

Cost: per-epoch metrics are buffered in memory and sent with ``log_batch`` when the trial ends, or
earlier once ``flush_seconds`` have passed since the last send (so long trials show live curves in
the UI). A trial costs a handful of tracking calls whatever its number of epochs.

Failure: tracking never kills a trial. If the tracking store raises, the error is reported once per
run through ``on_error`` and the trial goes on; the study (Optuna) stays the source of truth.
"""

from __future__ import annotations

import logging
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adamtune.errors import TrackingError

log = logging.getLogger(__name__)

EXPERIMENT_PREFIX = "adamtune/"
#: MLflow's maximum number of entries in one log_batch call (metrics + params + tags).
BATCH_LIMIT = 1000
#: MLflow run status for each adamtune trial outcome.
RUN_STATUS = {"complete": "FINISHED", "pruned": "FINISHED", "diverged": "FAILED", "failed": "FAILED"}


def experiment_name(study_name: str) -> str:
    """The MLflow experiment that holds a study's runs."""
    return EXPERIMENT_PREFIX + study_name


def _quiet_mlflow_logs() -> None:
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class TrialRun:
    """An MLflow run for one trial. Create it with :meth:`Tracker.start_trial`."""

    tracker: Tracker
    run_id: str | None
    flush_seconds: float
    _pending: list[Any] = field(default_factory=list)
    _last_flush: float = field(default_factory=time.monotonic)
    _failed: bool = False

    def log_epoch(self, epoch: int, metrics: Mapping[str, float]) -> None:
        """Buffer one epoch's metrics (step = epoch); send them if ``flush_seconds`` have passed."""
        from mlflow.entities import Metric

        stamp = _now_ms()
        self._pending.extend(Metric(name, float(value), stamp, epoch) for name, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Send buffered metrics in as few ``log_batch`` calls as MLflow allows."""
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), BATCH_LIMIT):
            self._call(
                "log metrics",
                lambda c, chunk=pending[start : start + BATCH_LIMIT]: c.log_batch(self.run_id, metrics=chunk),
            )

    def finish(self, state: str, final_metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        """Flush, log final metrics and tags, and close the run with the status matching ``state``."""
        from mlflow.entities import Metric, RunTag

        stamp = _now_ms()
        self._pending.extend(
            Metric(f"final_{name}", float(v), stamp, 0) for name, v in final_metrics.items() if v is not None
        )
        self.flush()
        run_tags = [RunTag(k, str(v)) for k, v in {**tags, "adamtune.state": state}.items()]
        self._call("log tags", lambda c: c.log_batch(self.run_id, tags=run_tags))
        self._call("close run", lambda c: c.set_terminated(self.run_id, status=RUN_STATUS.get(state, "KILLED")))

    def _call(self, what: str, action: Callable[[Any], Any]) -> None:
        if self.run_id is None or self._failed:
            return
        try:
            action(self.tracker.client)
        except Exception as exc:  # the tracking store is down or refused: keep training
            self._failed = True
            self.tracker.report_error(f"MLflow: could not {what} for run {self.run_id}: {_first_line(exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Tracker:
    """Logs a study's trials to MLflow (``tracking_uri`` None means MLflow's own default store)."""

    def __init__(
        self,
        study_name: str,
        tracking_uri: str | None = None,
        *,
        flush_seconds: float = 15.0,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        from mlflow import MlflowClient

        _quiet_mlflow_logs()
        self.study_name = study_name
        self.flush_seconds = flush_seconds
        self.on_error = on_error or (lambda message: log.warning("%s", message))
        self.host = socket.gethostname()
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.tracking_uri = self.client.tracking_uri
            self.experiment_id = self._experiment_id()
        except TrackingError:
            raise
        except Exception as exc:
            raise TrackingError(
                f"cannot use MLflow tracking store {tracking_uri or 'default'}: {_first_line(exc)}; "
                "check --tracking-uri / MLFLOW_TRACKING_URI"
            ) from None

    def _experiment_id(self) -> str:
        name = experiment_name(self.study_name)
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or use another --study")
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, tags={"adamtune.study": self.study_name})
        except Exception:  # another worker created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def report_error(self, message: str) -> None:
        self.on_error(message)

    def start_trial(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> TrialRun:
        """Create the run for one trial and log its params and tags in one batch.

        If the store fails, the error is reported and a run that logs nothing is returned.
        """
        from mlflow.entities import Param, RunTag

        run = TrialRun(self, None, self.flush_seconds)
        try:
            created = self.client.create_run(self.experiment_id, run_name=run_name, tags={"adamtune.host": self.host})
            run.run_id = created.info.run_id
            self.client.log_batch(
                run.run_id,
                params=[Param(k, _param_text(v)) for k, v in params.items()],
                tags=[RunTag(k, str(v)) for k, v in tags.items()],
            )
        except Exception as exc:
            self.report_error(f"MLflow: could not start run {run_name!r}: {_first_line(exc)}")
            run._failed = True
        return run


def _param_text(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.6g}"
    return str(value)
