"""``adamtune verify`` on ``digits``: a real short study, real training, a real MLflow store; plus the statistics.

One 3-trial search with 2 epochs per trial (module fixture), then one verification with 2 seeds; the
verdict logic is tested on hand-made results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pytest
import torch
from click.testing import CliRunner, Result
from mlflow import MlflowClient

from adamtune.cli.main import cli
from adamtune.core.space import BASELINE
from adamtune.report.summary import VERIFY_ATTR
from adamtune.report.verify import FIRST_SEED, fresh_seeds
from adamtune.report.verify_result import ALPHA, RunResult, VerifyResult
from adamtune.storage.attr_keys import SEED_ATTR
from adamtune.tasks import resolve_task
from adamtune.tracking.store import experiment_name
from adamtune.training.train import evaluate, train

VERIFY_KEYS = {
    "study",
    "task",
    "trial",
    "params",
    "metric",
    "direction",
    "split",
    "epochs",
    "batch_size",
    "device",
    "seeds",
    "recommended",
    "default",
    "difference",
    "bootstrap",
    "probability_of_improvement",
    "p_value",
    "alpha",
    "outcome",
    "verdict",
    "created",
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 3-trial ``digits`` study (2 epochs) verified with 2 seeds, logged to a real MLflow store."""
    root = tmp_path_factory.mktemp("verify")
    storage, tracking = f"sqlite:///{root}/adamtune.db", f"sqlite:///{root}/mlflow.db"
    args = ["--task", "digits", "--n-trials", "3", "--epochs", "2", "--pruner", "none", "--seed", "4"]
    searched = invoke("search", *args, "--no-tracking", "--storage", storage)
    assert searched.exit_code == 0, searched.output
    common = ["--task", "digits", "--seeds", "2", "--device", "cpu", "--storage", storage, "--tracking-uri", tracking]
    result = invoke("verify", *common, "--json")
    return {"storage": storage, "tracking": tracking, "result": result}


def test_verify_json_shape_and_runs(verified: dict) -> None:
    result = verified["result"]
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert set(record) == VERIFY_KEYS
    assert record["split"] == "test" and record["metric"] == "test_loss" and record["epochs"] == 2
    assert record["seeds"] == [FIRST_SEED, FIRST_SEED + 1]
    for arm in ("recommended", "default"):
        for metric in ("test_loss", "test_accuracy"):
            stats = record[arm][metric]
            assert len(stats["values"]) == 2 and stats["mean"] == pytest.approx(sum(stats["values"]) / 2)
            assert stats["std"] == pytest.approx(abs(stats["values"][0] - stats["values"][1]) / math.sqrt(2))
        assert 0 <= record[arm]["test_accuracy"]["mean"] <= 1 and record[arm]["diverged"] == 0
    differences = [
        d - r
        for r, d in zip(
            record["recommended"]["test_loss"]["values"], record["default"]["test_loss"]["values"], strict=True
        )
    ]
    assert record["difference"]["mean"] == pytest.approx(sum(differences) / 2)
    assert record["outcome"] in ("better", "worse", "not significant", "same")
    assert record["alpha"] == ALPHA and "test split" in record["verdict"]
    assert result.stderr.count("seed ") == 4  # one progress line per run


def test_verify_trains_the_recommendation(verified: dict) -> None:
    record = json.loads(verified["result"].stdout)
    summary = json.loads(invoke("summary", "--storage", verified["storage"], "--json").output)[0]
    assert record["trial"] == summary["recommended_trial"] and record["params"] == summary["recommended"]


def test_default_arm_matches_a_direct_training_run(verified: dict) -> None:
    """The default arm is Adam's defaults trained for the study's epochs, evaluated on the test split."""
    record = json.loads(verified["result"].stdout)
    task = resolve_task("digits")
    data = task.load_data(Path("."))
    trained: list[torch.nn.Module] = []
    train(
        task,
        data,
        BASELINE,
        device="cpu",
        epochs=2,
        batch_size=record["batch_size"],
        seed=FIRST_SEED,
        on_trained=trained.append,
    )
    test_loss, _ = evaluate(task, trained[0], data.test, torch.device("cpu"))
    assert record["default"]["test_loss"]["values"][0] == pytest.approx(test_loss, rel=1e-5)


def test_result_is_stored_on_the_study_and_shown_by_summary(verified: dict) -> None:
    study = optuna.load_study(study_name="digits", storage=verified["storage"])
    stored = study.user_attrs[VERIFY_ATTR]
    assert stored == json.loads(verified["result"].stdout)
    row = json.loads(invoke("summary", "--storage", verified["storage"], "--json").output)[0]
    assert row["verify"] == {**stored, "current": True}
    text = invoke("summary", "--storage", verified["storage"])
    assert "verify: " + stored["verdict"][:30] in " ".join(text.output.split())
    listed = json.loads(invoke("studies", "--storage", verified["storage"], "--json").output)[0]
    assert listed["verified"] is True


def test_result_is_logged_to_mlflow(verified: dict) -> None:
    client = MlflowClient(tracking_uri=verified["tracking"])
    experiment = client.get_experiment_by_name(experiment_name("digits"))
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`adamtune.kind` = 'verify'")
    assert len(runs) == 1
    run = runs[0]
    record = json.loads(verified["result"].stdout)
    assert run.info.run_name == "verify" and run.info.status == "FINISHED"
    metrics = run.data.metrics
    assert metrics["recommended_test_loss_mean"] == pytest.approx(record["recommended"]["test_loss"]["mean"])
    assert metrics["default_test_accuracy_std"] == pytest.approx(record["default"]["test_accuracy"]["std"])
    assert metrics["difference_mean"] == pytest.approx(record["difference"]["mean"])
    if record["p_value"]["paired"] is not None:
        assert metrics["p_paired"] == pytest.approx(record["p_value"]["paired"])
    assert run.data.params["seeds"] == f"{FIRST_SEED},{FIRST_SEED + 1}"
    assert run.data.tags["mlflow.note.content"] == record["verdict"]
    steps = client.get_metric_history(run.info.run_id, "default_test_loss")
    assert sorted(m.step for m in steps) == [0, 1]


def test_text_output(verified: dict, tmp_path: Path) -> None:
    # a second, untracked verification of the same study: same seeds, so the same numbers (CPU is deterministic)
    copy = tmp_path / "copy.db"
    import sqlite3

    source, target = sqlite3.connect(verified["storage"].removeprefix("sqlite:///")), sqlite3.connect(copy)
    with source, target:
        source.backup(target)
    result = invoke(
        "verify",
        "--task",
        "digits",
        "--seeds",
        "2",
        "--device",
        "cpu",
        "--no-tracking",
        "--storage",
        f"sqlite:///{copy}",
    )
    assert result.exit_code == 0, result.output
    assert "test_loss" in result.stdout and "Adam default" in result.stdout and "verdict: " in result.stdout
    first = json.loads(verified["result"].stdout)
    again = optuna.load_study(study_name="digits", storage=f"sqlite:///{copy}").user_attrs[VERIFY_ATTR]
    assert again["recommended"]["test_loss"]["values"] == first["recommended"]["test_loss"]["values"]


# --------------------------------------------------------------------------- seeds and the on_trained hook


def test_fresh_seeds_skip_the_seeds_trials_used(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    study.add_trial(optuna.trial.create_trial(value=1.0, user_attrs={SEED_ATTR: FIRST_SEED + 1}))
    assert fresh_seeds(study, 3) == [FIRST_SEED, FIRST_SEED + 2, FIRST_SEED + 3]


def test_on_trained_gets_the_final_model_in_eval_mode() -> None:
    task = resolve_task("synthetic")
    data = task.load_data(Path("."))
    trained: list[torch.nn.Module] = []
    curves = train(task, data, BASELINE, device="cpu", epochs=2, batch_size=100, seed=3, on_trained=trained.append)
    (model,) = trained
    assert not model.training
    val_loss, val_accuracy = evaluate(task, model, data.val, torch.device("cpu"))
    assert curves.last is not None
    assert val_loss == pytest.approx(curves.last.val_loss) and val_accuracy == pytest.approx(curves.last.val_accuracy)


# --------------------------------------------------------------------------- the statistics and the verdict


def result_of(recommended: list[float], default: list[float], direction: str = "minimize") -> VerifyResult:
    metric = "test_loss" if direction == "minimize" else "test_accuracy"
    result = VerifyResult("s", "t", 3, {}, metric, direction, 5, 32, "cpu")
    for seed, (r, d) in enumerate(zip(recommended, default, strict=True)):
        result.recommended.append(RunResult(seed, {"test_loss": r, "test_accuracy": r}, False))
        result.default.append(RunResult(seed, {"test_loss": d, "test_accuracy": d}, False))
    return result


def test_a_consistent_improvement_is_significant() -> None:
    result = result_of([0.10, 0.11, 0.12, 0.10, 0.11], [0.20, 0.22, 0.21, 0.20, 0.23])
    record = result.as_dict()
    assert record["outcome"] == "better" and record["p_value"]["paired"] < ALPHA
    assert record["difference"]["mean"] == pytest.approx(0.104)
    assert record["verdict"].startswith("the recommendation beats Adam's defaults on the test split by 0.104 ± ")
    assert "over 5 seeds; paired t-test p = " in record["verdict"] and "Welch p = " in record["verdict"]


def test_worse_and_maximised_directions() -> None:
    worse = result_of([0.90, 0.91, 0.92], [0.95, 0.97, 0.96], direction="maximize")  # accuracy: higher is better
    assert worse.outcome() == "worse" and worse.verdict().startswith("Adam's defaults beat the recommendation")
    assert worse.as_dict()["difference"]["mean"] == pytest.approx(-0.05)


def test_noise_is_not_significant() -> None:
    result = result_of([0.10, 0.30, 0.12], [0.20, 0.11, 0.25])
    assert result.outcome() == "not significant"
    assert result.verdict().startswith("no significant difference on the test split")


def test_identical_runs_have_no_p_value() -> None:
    result = result_of([0.1, 0.2], [0.1, 0.2])
    assert result.p_values() == {"paired": None, "welch": 1.0}  # no paired difference to test at all
    assert result.outcome() == "same" and "identical results on 2 seeds" in result.verdict()
    json.dumps(result.as_dict(), allow_nan=False)  # JSON-safe: no NaN anywhere


def test_bootstrap_interval_and_probability_of_improvement() -> None:
    better = result_of([0.10, 0.11, 0.12, 0.10, 0.11], [0.20, 0.22, 0.21, 0.20, 0.23]).as_dict()
    boot = better["bootstrap"]
    assert set(boot) == {"low", "high", "confidence", "resamples", "probability_of_improvement"}
    assert 0 < boot["low"] <= better["difference"]["mean"] <= boot["high"] and boot["confidence"] == 0.95
    assert better["probability_of_improvement"] == 1.0
    mixed = result_of([0.10, 0.30, 0.12], [0.20, 0.11, 0.25])
    assert mixed.bootstrap() == mixed.bootstrap()  # deterministic
    assert mixed.bootstrap()["low"] < 0 < mixed.bootstrap()["high"]
    assert 0 < mixed.as_dict()["probability_of_improvement"] < 1
    same = result_of([0.1, 0.2], [0.1, 0.2]).as_dict()
    assert same["probability_of_improvement"] == 0.5 and same["bootstrap"]["low"] == same["bootstrap"]["high"] == 0
