"""The tracker's MLflow client: ``MlflowClient`` taking adamtune's light entities.

Part of the MLflow boundary. The trial and study runs build their metrics, params and tags as the light
entities below (same fields and order as MLflow's :class:`mlflow.entities.Metric`, ``Param`` and
``RunTag``), so that the code that builds them never imports MLflow; :class:`LocalClient` turns them into
MLflow's on the tracker's writer thread, where MLflow is imported.

Until December 2026 the client could also run in a helper process. ``bench/processes.py`` measured what
that bought on top of the trainer process: 0.967x on the quick-start command and 1.000x on trials of several
seconds (2-core VM, 2026-12-05), under the 3% that would justify a second process protocol; it was removed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

#: How much lower than the command's the scheduling priority of the threads that draw the study's plots
#: is (``os.setpriority``): where cores are short, training and the trial loop run first.
NICENESS = 10


class Metric(NamedTuple):
    key: str
    value: float
    timestamp: int
    step: int


class Param(NamedTuple):
    key: str
    value: str


class RunTag(NamedTuple):
    key: str
    value: str


def to_mlflow(value: Any) -> Any:
    """``value`` with this module's light entities (also inside lists, tuples, dicts) made MLflow's."""
    if isinstance(value, Metric | Param | RunTag):
        from mlflow import entities

        return getattr(entities, type(value).__name__)(*value)
    if isinstance(value, list | tuple):
        return type(value)(to_mlflow(v) for v in value)
    if isinstance(value, dict):
        return {k: to_mlflow(v) for k, v in value.items()}
    return value


class LocalClient:
    """``MlflowClient`` in this process, taking the light entities too (see the module's contract)."""

    def __init__(self, tracking_uri: str | None) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=tracking_uri)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: attribute(*to_mlflow(args), **to_mlflow(kwargs))

    def close(self) -> None:
        """Nothing to release."""
