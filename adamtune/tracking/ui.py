"""``adamtune ui`` and the study's address in the MLflow UI: where the UI is served and what opens there.

Part of the MLflow boundary. Contract: nothing here writes to a tracking store. :func:`ui_plan` says
what ``adamtune ui`` should exec (``mlflow ui`` on a local store) or print (a server's own address);
:func:`study_ui_url` is the address ``search`` prints at its end. The study's experiment is found by
its name (``adamtune/<study>``, see ``tracking/tracker.py``); a store that cannot be read only loses that
shortcut, never the command. Errors are :class:`~adamtune.core.errors.TrackingError`.

Heavy imports (mlflow, sqlalchemy) happen inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adamtune.core.errors import TrackingError
from adamtune.tracking.store import EXPERIMENT_PREFIX, quiet_mlflow_logs


@dataclass(frozen=True)
class UiPlan:
    """What ``adamtune ui`` does: exec ``argv`` (None: nothing to start) after printing ``message``."""

    argv: list[str] | None
    message: str
    warning: str | None = None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


#: The UI's view of an experiment's runs. ``workflowType=machine_learning`` opens the "Model training"
#: view: MLflow 3.x otherwise opens an experiment on its GenAI overview (traces), where no trial shows.
RUNS_VIEW = "#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """The UI address of an experiment's runs (training view), e.g. ``http://127.0.0.1:5000/#/experiments/1/runs?…``."""
    return f"{base_url.rstrip('/')}/{RUNS_VIEW.format(experiment_id=experiment_id)}"


def ui_base_url(tracking_uri: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """Where the UI for ``tracking_uri`` is served: the server itself, or ``adamtune ui``'s ``host``:``port``."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def find_study_experiment(tracking_uri: str, study: str | None) -> tuple[str | None, str | None]:
    """``(experiment id, study name)`` of ``study``'s experiment in the store; with ``study`` None, of the store's
    only adamtune study. ``(None, None)`` when there is none, several, or the store cannot be read.

    Raises:
        TrackingError: ``study`` was named but the store holds no experiment for it (the message lists those it has).
    """
    try:
        by_study = _study_experiments(tracking_uri)
    except Exception:  # the UI works without the shortcut; the user picks the experiment there
        return None, None
    if study is not None:
        if study not in by_study:
            known = ", ".join(sorted(by_study)) or "none"
            raise TrackingError(f"no MLflow experiment for study {study!r} in {tracking_uri} (studies there: {known})")
        return by_study[study], study
    if len(by_study) == 1:
        ((name, experiment_id),) = by_study.items()
        return experiment_id, name
    return None, None


#: How long looking up a study's experiment on a tracking server may take before the plain address is shown.
LOOKUP_TIMEOUT_SECONDS = 5.0


def _study_experiments(tracking_uri: str) -> dict[str, str]:
    """Study name -> experiment id of the store's live adamtune experiments.

    A server is asked once over its REST API with a short timeout (MLflow's client would retry for
    minutes while it is down); a local store is read with ``MlflowClient``.
    """
    filter_string = f"name LIKE '{EXPERIMENT_PREFIX}%'"
    if tracking_uri.startswith(("http://", "https://")):
        import json
        import urllib.request

        request = urllib.request.Request(
            f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/search",
            data=json.dumps({"max_results": 1000, "filter": filter_string}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=LOOKUP_TIMEOUT_SECONDS) as response:
            found = [(e["name"], e["experiment_id"]) for e in json.load(response).get("experiments", [])]
    else:
        from mlflow import MlflowClient

        quiet_mlflow_logs()
        client = MlflowClient(tracking_uri=tracking_uri)
        experiments = client.search_experiments(max_results=1000, filter_string=filter_string)
        found = [(e.name, e.experiment_id) for e in experiments]
    return {name[len(EXPERIMENT_PREFIX) :]: experiment_id for name, experiment_id in found}


def study_ui_url(tracking_uri: str | None, study: str, host: str = "127.0.0.1", port: int = 5000) -> str | None:
    """The UI address of ``study``'s runs (what ``search`` prints at its end); None if it cannot be found."""
    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    try:
        experiment_id, _ = find_study_experiment(str(tracking_uri), study)
    except TrackingError:
        return None
    return experiment_url(ui_base_url(str(tracking_uri), host, port), experiment_id) if experiment_id else None


def ui_plan(tracking_uri: str | None, host: str = "127.0.0.1", port: int = 5000, study: str | None = None) -> UiPlan:
    """How to show the MLflow UI for the store at ``tracking_uri`` (None: MLflow's default store).

    * ``http(s)://`` — a tracking server already serves its UI: nothing to start, the message is its URL.
    * a local store (``sqlite:///…``, a ``file:`` URI or a directory) — ``python -m mlflow ui`` on it,
      bound to ``host``:``port``. The message says where to point the browser; ``warning`` is set when
      ``host`` is not a loopback address (the UI has no login: anyone who reaches it can read and edit).
    * another database URL (``postgresql://…``) — ``mlflow ui`` on it, unchecked.

    The address shown opens ``study``'s experiment on its runs (:func:`experiment_url`); with ``study``
    None, the store's only adamtune study, else the UI's experiment list.

    Raises:
        TrackingError: a local store that does not exist (nothing was tracked there yet), or a ``study``
            the store has no experiment for.
    """
    import sys

    if tracking_uri is None:
        import mlflow

        tracking_uri = mlflow.get_tracking_uri()
    uri = str(tracking_uri)
    local = _local_store_path(uri) if not uri.startswith(("http://", "https://")) else None
    if local is not None and not local.exists():
        raise TrackingError(
            f"no MLflow store at {local}: nothing was tracked there yet; run 'adamtune search' in this "
            "directory first, or pass --tracking-uri (the URI that search used)"
        )
    base = ui_base_url(uri, host, port)
    experiment_id, found = find_study_experiment(uri, study)
    address = experiment_url(base, experiment_id) if experiment_id else base
    what = f" (study {found})" if found else ""
    if uri.startswith(("http://", "https://")):
        return UiPlan(None, f"{uri} is an MLflow tracking server: open {address} in a browser for its UI{what}")
    argv = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    message = f"MLflow UI for {uri} at {address}{what} (Ctrl-C stops it)"
    warning = None
    if host not in LOOPBACK_HOSTS:
        warning = (
            f"the MLflow UI has no login: anyone who can reach {host}:{port} can read and change these runs; "
            "use --host 127.0.0.1 and an SSH tunnel unless the network is trusted"
        )
    return UiPlan(argv, message, warning)


def _local_store_path(uri: str) -> Path | None:
    """The file or directory of a local MLflow store URI (SQLite file, ``file:`` URI, plain path), else None."""
    from urllib.parse import unquote, urlparse

    if uri.startswith("sqlite:"):
        from sqlalchemy.engine import make_url

        database = make_url(uri).database
        return Path(database) if database and database != ":memory:" else None
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        return Path(uri)
    return None
