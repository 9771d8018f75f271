"""Every use of MLflow's non-public names in adamtune, in one place.

Nothing else in adamtune imports a private MLflow module or touches a private attribute of an MLflow
object (``tests/project/test_architecture.py`` greps for it). Each use says what it is for and why no public way
exists. Checked on MLflow **3.7.0** (the lowest version ``pyproject.toml`` allows, CI's floor job) and
the newest installed by CI's main job (3.x), 2026-12-05. Every caller treats a failure here as "not
available" and does without (a store created by MLflow's own migrations; metrics logged as MLflow logs
them).

* :func:`store_schema` -- ``mlflow.store.db.utils._get_latest_schema_revision`` and the tables of
  ``mlflow.store.db.base_sql_model.Base``: the schema revision and tables a new SQL store must have, which
  names the cached empty store a new local store is copied from (``template.py``; copying it is ~60x
  faster than MLflow's ~60 migrations). MLflow offers no public way to ask for its schema's revision.
* :func:`system_metrics_monitor` -- ``mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor``:
  sampling CPU/GPU/memory into a run the tracker created itself (MLflow's public switch samples only
  runs started with ``mlflow.start_run`` in this process).
* :func:`sampled_nothing_yet` -- ``SystemMetricsMonitor._logging_step``: whether the monitor has logged
  any sample, so that a trial shorter than one sampling interval still gets its ``system/*`` metrics.
"""

from __future__ import annotations

from typing import Any


def store_schema() -> tuple[str, frozenset[str]]:
    """``(alembic head revision, table names)`` of the installed MLflow's SQL tracking store. Imports MLflow."""
    import mlflow.store.tracking.dbmodels.models  # noqa: F401  (its tables join Base, as MLflow's store does)
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    return str(_get_latest_schema_revision()), frozenset(Base.metadata.tables)


def system_metrics_monitor(run_id: str, sampling_interval: float, tracking_uri: str) -> Any:
    """A (not yet started) MLflow system-metrics monitor logging into run ``run_id``."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    return SystemMetricsMonitor(run_id, sampling_interval=sampling_interval, tracking_uri=tracking_uri)


def sampled_nothing_yet(monitor: Any) -> bool:
    """True when ``monitor`` has logged no sample yet (its run was shorter than one sampling interval)."""
    return getattr(monitor, "_logging_step", 1) == 0
