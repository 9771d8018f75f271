"""System metrics of a trial's run: CPU/GPU/memory/disk/network use as ``system/*`` metrics, sampled by
MLflow's ``SystemMetricsMonitor`` while the trial trains (GPU figures need ``nvidia-ml-py``).

Part of the MLflow boundary. A :class:`~adamtune.tracking.tracker.Tracker` made with ``system_metrics=True``
starts a monitor on each trial's run as the writer creates it (:func:`start_monitor`) and stops it when the
run ends (:func:`stop_monitor`); MLflow is imported inside them.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adamtune.tracking.writer import RunHandle

#: Sampling interval of system metrics (seconds); MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SYSTEM_METRICS_INTERVAL = 2.0


def start_monitor(handle: RunHandle, tracking_uri: str) -> None:
    """Start sampling system metrics into ``handle``'s run (kept on ``handle.monitor``).

    Raises:
        Exception: psutil is missing, or the monitor cannot start.
    """
    from adamtune.tracking.mlflow_adapter import system_metrics_monitor

    monitor = system_metrics_monitor(handle.run_id, SYSTEM_METRICS_INTERVAL, tracking_uri)
    monitor.start()
    handle.monitor = monitor


def stop_monitor(handle: RunHandle) -> None:
    """Stop the run's system-metrics monitor (if any) and send its last samples.

    MLflow's monitor logs only after a full sampling interval; for a shorter trial, the samples it
    took are logged here (step 0), so every trial has its ``system/*`` metrics.
    """
    monitor, handle.monitor = handle.monitor, None
    if monitor is None:
        return
    from adamtune.tracking.mlflow_adapter import sampled_nothing_yet

    with contextlib.suppress(Exception):
        monitor.finish()
        if sampled_nothing_yet(monitor):  # a trial shorter than one sampling interval
            metrics = monitor.aggregate_metrics()  # what was sampled so far, logged at step 0
            if metrics:
                monitor.publish_metrics(metrics)
                monitor.mlflow_logger.flush()
