"""Nothing stuck RUNNING: a trial whose worker died before its first heartbeat is stale too, and
``adamtune cleanup`` ends what dead workers left (trials and MLflow runs). Real SQLite files, the
PostgreSQL server and a real MLflow store."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient
from optuna.trial import TrialState

from adamtune.cli.main import cli
from adamtune.core.config import build_spec
from adamtune.core.space import suggest
from adamtune.storage.attr_keys import BASELINE_ATTR, RUN_ID_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.study import load_study
from adamtune.tracking.store import experiment_name

GRACE = 2


@pytest.fixture(autouse=True)
def short_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAMTUNE_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("ADAMTUNE_GRACE_SECONDS", str(GRACE))


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def ask_without_heartbeat(url: str) -> optuna.trial.Trial:
    """What a worker killed between creating its trial and its first heartbeat leaves: a RUNNING trial."""
    study = load_study("synthetic", open_storage(url, create=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Heartbeat of storage is supposed to be used with Study.optimize"
        trial = study.ask()
    suggest(trial, build_spec("synthetic").space)  # the worker had sampled its settings
    return trial


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_a_trial_that_never_beat_is_retried_and_the_study_reaches_its_count(
    backend: str, workdir: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{workdir}/adamtune.db" if backend == "sqlite" else request.getfixturevalue("postgres_url")
    common = ("--task", "synthetic", "--epochs", "2", "--storage", url, "--no-tracking")
    assert invoke("search", *common, "--n-trials", "1").exit_code == 0  # the baseline
    orphan = ask_without_heartbeat(url)
    params = orphan.params

    # Within the grace period the trial might still be starting up: nobody touches it.
    assert (
        "no stale trial; still running with a live heartbeat: 1"
        in invoke("cleanup", "--study", "synthetic", "--storage", url, "--no-tracking").output
    )
    time.sleep(GRACE + 1)

    # Before this fix the worker waited forever at "1/3 trials (1 running)".
    result = invoke("search", *common, "--n-trials", "3")
    assert result.exit_code == 0, result.output
    trials = load_study("synthetic", open_storage(url, create=False)).get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert states[orphan.number] == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == orphan.number)
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED) and retry.params == params
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == 3


def test_cleanup_fails_stale_trials_and_closes_their_runs_and_orphan_runs(workdir: Path) -> None:
    url, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    common = ("--storage", url, "--tracking-uri", tracking)
    assert invoke("search", "--task", "synthetic", "--epochs", "2", "--n-trials", "2", *common).exit_code == 0
    study = load_study("synthetic", open_storage(url, create=False))
    client = MlflowClient(tracking)
    finished = study.trials[1]
    orphan_run = finished.user_attrs[RUN_ID_ATTR]
    client.update_run(orphan_run, status="RUNNING")  # as a worker killed right after telling the trial leaves it

    stuck = ask_without_heartbeat(url)  # a dead worker's trial, with a run that is still RUNNING
    experiment = client.get_experiment_by_name(experiment_name("synthetic"))
    stuck_run = client.create_run(
        experiment.experiment_id, tags={"adamtune.study": "synthetic", "adamtune.trial_number": str(stuck.number)}
    ).info.run_id
    stuck.set_user_attr(RUN_ID_ATTR, stuck_run)
    time.sleep(GRACE + 1)

    result = invoke("cleanup", "--study", "synthetic", *common)
    assert result.exit_code == 0, result.output
    assert f"failed 1 stale trial(s) ({stuck.number}); 1 queued again" in result.output
    trials = load_study("synthetic", open_storage(url, create=False)).get_trials()
    assert trials[stuck.number].state == TrialState.FAIL
    assert [t.state for t in trials if t.number > stuck.number] == [TrialState.WAITING]
    assert not trials[-1].user_attrs.get(BASELINE_ATTR)
    closed = client.get_run(stuck_run)
    assert closed.info.status == "FAILED" and closed.data.tags["adamtune.stale"] == "true"
    orphan = client.get_run(orphan_run)
    assert orphan.info.status == "FINISHED" and orphan.data.tags["adamtune.orphan"] == "true"

    again = invoke("cleanup", "--study", "synthetic", *common)
    assert "no stale trial" in again.output


def test_cleanup_of_an_unknown_study_is_one_line(workdir: Path) -> None:
    invoke("search", "--task", "synthetic", "--epochs", "1", "--n-trials", "1", "--no-tracking")
    result = CliRunner().invoke(cli, ["cleanup", "--study", "nope", "--no-tracking"])
    assert result.exit_code == 3 and "nope" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
