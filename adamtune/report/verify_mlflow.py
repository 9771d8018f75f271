"""Recording a verification in MLflow: a finished run named ``verify`` in the study's experiment.

Written through the tracker's client (:mod:`adamtune.tracking`), never by importing MLflow here. The
result is stored on the study first (:mod:`adamtune.report.verify`); this is a copy.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from adamtune.report.verify_result import VerifyResult

#: MLflow's maximum number of metrics in one log_batch call.
MLFLOW_BATCH = 1000


def log_to_mlflow(tracker: Any, result: VerifyResult, on_error: Callable[[str], None] | None = None) -> str | None:
    """Log ``result`` as a finished run named ``verify`` in the study's experiment; return its run id.

    ``tracker`` is an :class:`adamtune.tracking.tracker.Tracker` (it finds or makes the study's experiment); the
    run is written synchronously through its ``client``, so it is complete when this returns.

    Metrics: ``{recommended,default}_<metric>_{mean,std}`` for each test metric (``test_loss``,
    ``test_mae``…), ``{recommended,default}_diverged``,
    ``difference_mean``, ``difference_std``, ``difference_bootstrap_{low,high}``,
    ``probability_of_improvement``, ``p_paired``, ``p_welch`` (undefined p-values are left out),
    and per-seed values ``{recommended,default}_<metric>`` with step = the seed's index. Params: the
    verified settings, trial, seeds, epochs, batch size, device, metric. Tags: ``adamtune.kind = verify``,
    the outcome, and the verdict as the run's description. Errors are reported through ``on_error`` (or
    the tracker's ``notify``) and return None: the result is already stored on the study.
    """
    from adamtune.tracking.client import Metric, Param, RunTag

    stamp = int(datetime.now(timezone.utc).timestamp() * 1000)
    record = result.as_dict()
    metrics = []
    for arm in ("recommended", "default"):
        for metric in result.metric_names:
            stats = record[arm][metric]
            metrics.append(Metric(f"{arm}_{metric}_mean", stats["mean"], stamp, 0))
            metrics.append(Metric(f"{arm}_{metric}_std", stats["std"], stamp, 0))
            metrics.extend(Metric(f"{arm}_{metric}", v, stamp, i) for i, v in enumerate(stats["values"]))
        metrics.append(Metric(f"{arm}_diverged", float(record[arm]["diverged"]), stamp, 0))
    metrics.append(Metric("difference_mean", record["difference"]["mean"], stamp, 0))
    metrics.append(Metric("difference_std", record["difference"]["std"], stamp, 0))
    metrics.append(Metric("difference_bootstrap_low", record["bootstrap"]["low"], stamp, 0))
    metrics.append(Metric("difference_bootstrap_high", record["bootstrap"]["high"], stamp, 0))
    metrics.append(Metric("probability_of_improvement", record["probability_of_improvement"], stamp, 0))
    for name, p in record["p_value"].items():
        if p is not None:
            metrics.append(Metric(f"p_{name}", p, stamp, 0))
    params = [Param(k, str(v)) for k, v in result.params.items()]
    params += [
        Param("trial", str(result.trial)),
        Param("seeds", ",".join(map(str, result.seeds))),
        Param("epochs", str(result.epochs)),
        Param("batch_size", str(result.batch_size)),
        Param("device", result.device),
        Param("metric", result.metric),
    ]
    tags = [
        RunTag("adamtune.study", result.study),
        RunTag("adamtune.task", result.task),
        RunTag("adamtune.kind", "verify"),
        RunTag("adamtune.outcome", record["outcome"]),
        RunTag("mlflow.note.content", record["verdict"]),
    ]
    report = on_error or tracker.notify
    try:
        client = tracker.client
        run_id = client.create_run(tracker.experiment_id, run_name="verify").info.run_id
        client.log_batch(run_id, params=params, tags=tags)
        for start in range(0, len(metrics), MLFLOW_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + MLFLOW_BATCH])
        client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # the study holds the result; tracking is a copy
        text = str(exc).strip()
        report(f"MLflow: could not log the verify run: {text.splitlines()[0] if text else type(exc).__name__}")
        return None
    return run_id
