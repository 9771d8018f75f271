"""A run is made once, however often the writer tries to make it (``trial_run.RunMaker``).

The store is real (an MLflow SQLite store, and an Optuna SQLite study for the parent run). What fails is
a test double around the tracker's real client: its ``create_run`` makes the run in the real store and
*then* raises the error MLflow raises when a server's answer is lost (a connection reset while the server
goes down), which the writer treats as retryable and tries again. Before ``RunMaker``, that retry made a
second run of the same trial (``test_mlflow_server.py``'s outage test saw it on a busy machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR

from adamtune.core.config import build_spec
from adamtune.storage.study import create_or_resume
from adamtune.tracking.parent_run import PARENT_RUN_ATTR, open_parent_run
from adamtune.tracking.store import experiment_name
from adamtune.tracking.tracker import Tracker
from adamtune.tracking.trial_run import RUN_KEY_TAG, RunMaker

#: What MLflow raises when the connection drops before the server's answer arrives.
ANSWER_LOST = (
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
    "ConnectionError(ProtocolError('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer')))"
)
CONNECTION_REFUSED = (
    "API request to http://127.0.0.1:5000/api/2.0/mlflow/runs/create failed with exception "
    "NewConnectionError(Connection refused)"
)


class LossyCreate:
    """Test double for a client's ``create_run``: the first try of each run name in ``lose`` makes the run
    in the real store and then raises ``ANSWER_LOST``; the first try of each in ``refuse`` makes nothing and
    raises ``CONNECTION_REFUSED``; every other try is the real call. ``search_runs`` is counted."""

    def __init__(self, client: Any, lose: set[str], refuse: frozenset[str] = frozenset()) -> None:
        self.real_create, self.real_search = client.create_run, client.search_runs
        self.lose, self.refuse = set(lose), set(refuse)
        self.searches = 0
        client.create_run, client.search_runs = self.create_run, self.search_runs

    def create_run(self, *args: Any, run_name: str | None = None, **kwargs: Any) -> Any:
        if run_name in self.refuse:
            self.refuse.discard(run_name)
            raise MlflowException(CONNECTION_REFUSED, error_code=INTERNAL_ERROR)
        run = self.real_create(*args, run_name=run_name, **kwargs)
        if run_name in self.lose:
            self.lose.discard(run_name)
            raise MlflowException(ANSWER_LOST, error_code=INTERNAL_ERROR)
        return run

    def search_runs(self, *args: Any, **kwargs: Any) -> Any:
        self.searches += 1
        return self.real_search(*args, **kwargs)


def runs_by_name(uri: str, study: str) -> dict[str, list[Any]]:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(experiment_name(study))
    found: dict[str, list[Any]] = {}
    for run in client.search_runs([experiment.experiment_id], max_results=100):
        found.setdefault(run.info.run_name, []).append(run)
    return found


def test_a_trial_run_whose_create_answer_is_lost_is_made_once(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    notices: list[str] = []
    tracker = Tracker("lost", uri, notify=notices.append)
    tracker.writer.initial_backoff = 0.01
    # trial-0 and trial-2: made, answer lost; trial-1: refused (nothing made); trial-3: no failure at all
    double = LossyCreate(tracker.client, lose={"trial-0", "trial-2"}, refuse=frozenset({"trial-1"}))
    trials = []
    for number in range(4):
        trial = tracker.start_trial(f"trial-{number}", {"lr": 0.001}, {"adamtune.trial_number": number})
        trial.log_epoch(1, {"val_loss": 1.0 / (number + 1)})
        trial.finish("complete", {"val_loss": 1.0 / (number + 1)}, {})
        trials.append(trial)
    assert tracker.close(timeout=30) == 0
    assert not double.lose and not double.refuse  # every failure happened

    runs = runs_by_name(uri, "lost")
    assert sorted(runs) == ["trial-0", "trial-1", "trial-2", "trial-3"]
    for number, trial in enumerate(trials):
        (run,) = runs[f"trial-{number}"]  # exactly one run per trial, the one the trial got
        assert run.info.run_id == trial.run_id
        assert run.info.status == "FINISHED" and run.data.tags["adamtune.state"] == "complete"
        assert run.data.params["lr"] == "0.001" and run.data.metrics["val_loss"] == pytest.approx(1 / (number + 1))
        assert len(run.data.tags[RUN_KEY_TAG]) == 32
    assert len({r.data.tags[RUN_KEY_TAG] for (r,) in runs.values()}) == 4
    assert double.searches == 3  # a look-up on each retry only: a run made at the first try costs no more


def test_a_parent_run_whose_create_answer_is_lost_is_made_once(tmp_path: Path) -> None:
    """The deferred attach (``Tracker.attach`` on a server) retries ``open_parent_run`` with one maker."""
    spec = build_spec("synthetic", None, "parent", {"n_trials": 1, "epochs": 1})
    study = create_or_resume(spec, optuna.storages.RDBStorage(f"sqlite:///{tmp_path}/adamtune.db"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker("parent", uri)
    LossyCreate(tracker.client, lose={"parent"})
    maker = RunMaker()
    try:
        with pytest.raises(MlflowException, match="Connection reset"):
            open_parent_run(tracker, study, spec, None, False, maker)
        parent_id = open_parent_run(tracker, study, spec, None, False, maker)  # the writer's next try
    finally:
        tracker.close()
    (run,) = runs_by_name(uri, "parent")["parent"]
    assert run.info.run_id == parent_id == study.user_attrs[PARENT_RUN_ATTR]
    assert run.data.tags["adamtune.role"] == "study" and run.data.params["task"] == "synthetic"
