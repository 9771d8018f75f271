"""``adamtune search --batch-trials K`` end to end: real SQLite study, real MLflow store, then ``verify``."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from loop_tasks import write_task
from mlflow import MlflowClient

from adamtune.cli.main import cli
from adamtune.core.space import BASELINE
from adamtune.launch.worker_setup import join_study
from adamtune.storage.attr_keys import BASELINE_ATTR, PARAMS_ATTR, SEED_ATTR
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.tasks import resolve_task
from adamtune.training.train import train
from adamtune.trials.batch_worker import BATCH_ATTR
from adamtune.trials.lineage import trial_seed
from adamtune.trials.worker import WorkerOptions
from tests.conftest import trial_run_id

EPOCHS = 3
N_TRIALS = 20


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    root = tmp_path_factory.mktemp("batch")
    storage, tracking = f"sqlite:///{root}/adamtune.db", f"sqlite:///{root}/mlflow.db"
    common = ("--storage", storage, "--tracking-uri", tracking)
    args = ("--task", "digits", "--n-trials", str(N_TRIALS), "--epochs", str(EPOCHS), "--seed", "5")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's artifacts (./mlruns) stay in the test's directory
        patch.delenv("ADAMTUNE_BATCH_TRIALS", raising=False)
        result = invoke("search", *args, "--batch-trials", "16", *common)
        yield {"root": root, "storage": storage, "tracking": tracking, "result": result, "common": common}


def test_batched_search_finishes_with_exactly_its_trials(searched: dict) -> None:
    assert searched["result"].exit_code == 0, searched["result"].output
    study = optuna.load_study(study_name="digits", storage=searched["storage"])
    assert len(study.trials) == N_TRIALS and count_trials(study.trials).finished == N_TRIALS
    assert all(trial_state(t) in ("complete", "pruned", "diverged") for t in study.trials)
    # The first 16 trials trained as one batch, the last 4 (the free places left) as another.
    assert [t.user_attrs[BATCH_ATTR] for t in study.trials] == [16] * 16 + [4] * 4


def test_every_batched_trial_has_its_curve_in_mlflow(searched: dict) -> None:
    study = optuna.load_study(study_name="digits", storage=searched["storage"])
    client = MlflowClient(tracking_uri=searched["tracking"])
    for trial in study.trials:
        run = client.get_run(trial_run_id(searched["tracking"], "digits", trial))
        assert run.data.tags["adamtune.state"] == trial_state(trial)
        stopped = int(run.data.tags["adamtune.stopped_epoch"])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == list(range(1, stopped + 1))
        assert trial_state(trial) != "complete" or stopped == EPOCHS
        train_loss = client.get_metric_history(run.info.run_id, "train_loss")
        assert len(train_loss) == stopped and all(math.isfinite(m.value) for m in train_loss)


def test_the_baseline_in_a_batch_trains_as_adams_defaults(searched: dict) -> None:
    """Its curve is that of a sequential run of Adam's defaults with the trial's seed."""
    study = optuna.load_study(study_name="digits", storage=searched["storage"])
    baseline = study.trials[0]
    assert baseline.user_attrs[BASELINE_ATTR] is True and baseline.user_attrs[PARAMS_ATTR] == BASELINE.as_dict()
    assert trial_state(baseline) == "complete"
    seed = baseline.user_attrs[SEED_ATTR]
    assert seed == trial_seed(5, 0)
    task = resolve_task("digits")
    data, batch = task.load_data(None), task.default_batch_size
    curves = train(task, data, BASELINE, device="cpu", epochs=EPOCHS, batch_size=batch, seed=seed)
    assert baseline.value == pytest.approx(curves.last.val_loss, rel=1e-4)
    assert baseline.intermediate_values == pytest.approx({e.epoch: e.val_loss for e in curves.epochs}, rel=1e-4)


def test_verify_after_a_batched_search(searched: dict) -> None:
    result = invoke("verify", "--task", "digits", "--seeds", "2", "--device", "cpu", *searched["common"])
    assert result.exit_code == 0, result.output
    assert "recommended: test_loss" in result.output and "default: test_loss" in result.output


def test_the_study_file_key_is_honoured_by_adamtune_worker(tmp_path: Path, workdir: Path) -> None:
    config = tmp_path / "study.toml"
    config.write_text('[study]\ntask = "synthetic"\nn_trials = 3\nepochs = 1\nbatch_trials = 4\n')
    storage = f"sqlite:///{tmp_path}/adamtune.db"
    result = invoke(
        "search", "--config", str(config), "--no-tracking", "--storage", storage, "--data-dir", str(tmp_path)
    )
    assert result.exit_code == 0, result.output
    worker = join_study(WorkerOptions(storage, "synthetic", tracking=False, data_dir=tmp_path))
    assert worker.batch_trials == 4
    study = optuna.load_study(study_name="synthetic", storage=storage)
    assert [t.user_attrs[BATCH_ATTR] for t in study.trials] == [3, 3, 3]  # never more than the free places


def test_a_task_that_cannot_batch_runs_one_trial_at_a_time(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    reference = write_task(tmp_path, epochs=2)
    storage = f"sqlite:///{tmp_path}/adamtune.db"
    result = CliRunner().invoke(
        cli,
        [
            "search",
            "--task",
            reference,
            "--n-trials",
            "2",
            "--batch-trials",
            "4",
            "--no-tracking",
            "--storage",
            storage,
        ],
    )
    assert result.exit_code == 0, result.output
    assert "trains one trial at a time: a loop task trains in its own fit(trial)" in caplog.text
    study = optuna.load_study(study_name=reference, storage=storage)
    assert count_trials(study.trials).finished == 2
    assert all(BATCH_ATTR not in t.user_attrs for t in study.trials)


BROKEN_TASK = """
from adamtune.tasks.base import cross_entropy
from adamtune.tasks.digits import make_task as digits

CALLS = [0]


def loss(logits, targets):
    CALLS[0] += 1
    if CALLS[0] > 3:  # the probe and the first steps pass, then training breaks
        raise RuntimeError("the task's loss broke")
    return cross_entropy(logits, targets)


def make_task():
    import dataclasses

    return dataclasses.replace(digits(), name="broken", loss=loss)
"""


def test_a_batch_that_breaks_fails_each_trial_and_leaves_none_running(
    tmp_path: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_batch_task.py").write_text(BROKEN_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    storage = f"sqlite:///{tmp_path}/adamtune.db"
    args = ["search", "--task", "broken_batch_task:make_task", "--n-trials", "4", "--epochs", "1"]
    result = CliRunner().invoke(cli, [*args, "--batch-trials", "4", "--no-tracking", "--storage", storage])
    assert result.exit_code != 0
    assert "trials in a row failed" in result.output
    study = optuna.load_study(study_name="broken_batch_task:make_task", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 4
    assert all("the task's loss broke" in t.user_attrs["adamtune.error"] for t in study.trials)
