"""Opening the MLflow tracking store a :class:`~adamtune.tracking.tracker.Tracker` writes to, and the study's
experiment in it (``adamtune/<study>``, tag ``adamtune.study``).

Part of the MLflow boundary. :func:`open_store` imports MLflow, quiets its loggers, creates a new local
store (``preflight.create_local_store``) and finds or makes the study's experiment; the tracker calls it
synchronously, or on its writer thread when its open is deferred (see ``tracker.py``).

HTTP stores: MLflow itself retries each HTTP request up to 7 times over minutes and waits 120 s for an
answer. Since the writer retries on its own, a :class:`Tracker` for an ``http(s)://`` URI lowers those
defaults (:func:`use_http_defaults`: 1 retry, 10 s timeout) unless ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` /
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` / ``MLFLOW_HTTP_REQUEST_TIMEOUT`` are set, so that an
unreachable server is noticed in seconds; it also sets ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``
(unless set), or MLflow would print two "View run" lines per trial.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from adamtune.core.errors import TrackingError
from adamtune.tracking.client import LocalClient
from adamtune.tracking.preflight import create_local_store

EXPERIMENT_PREFIX = "adamtune/"
#: MLflow HTTP client defaults for a Tracker on an http(s) URI (env var name -> value), see module doc.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # set_terminated would print two "View run/experiment at" lines per trial and fetch the run for them
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}


def experiment_name(study_name: str) -> str:
    """The MLflow experiment that holds a study's runs."""
    return EXPERIMENT_PREFIX + study_name


def use_http_defaults(tracking_uri: str | None) -> None:
    """For an ``http(s)://`` store, set :data:`HTTP_DEFAULTS` in the environment where unset (see module doc)."""
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)


def quiet_mlflow_logs() -> None:
    """Keep MLflow's (and alembic's) loggers to warnings; call it after importing MLflow, which sets their levels."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The system-metrics monitor logs a warning per failed sample when the store is down; the writer
    # already tells the user once.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.CRITICAL)


def open_store(tracking_uri: str | None, study_name: str) -> tuple[LocalClient, str]:
    """Open (create) the store and find or make the study's experiment: the client and the experiment's id.

    Raises:
        TrackingError: the study's experiment is deleted. Anything MLflow raises when the store fails.
    """
    import mlflow  # noqa: F401

    quiet_mlflow_logs()  # after the import: importing MLflow sets its loggers' levels
    create_local_store(tracking_uri)
    client = LocalClient(tracking_uri)
    return client, study_experiment_id(client, study_name)


def study_experiment_id(client: Any, study_name: str) -> str:
    """The id of the study's experiment in ``client``'s store, made if missing (by this or another worker).

    Raises:
        TrackingError: the experiment is deleted.
    """
    name = experiment_name(study_name)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted; restore it or use another --study")
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(name, tags={"adamtune.study": study_name}))
    except Exception:  # another worker created it first
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return str(experiment.experiment_id)
