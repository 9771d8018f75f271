"""``summary``, ``studies``, ``tasks --json`` and ``report``: the robust recommendation rule and the JSON shapes.

One real search per module (the ``synthetic`` task, a real SQLite file, no pruning so that enough trials
complete for importance and ranges); the rule itself is tested on trials built with
``optuna.trial.create_trial`` (real Optuna objects, nothing mocked).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from adamtune.cli.main import cli
from adamtune.confirm.ranking import LATE_EPOCHS, late_score, rank_trials
from adamtune.core.config import StudySpec
from adamtune.report.importance import MIN_IMPORTANCE_TRIALS, robust_range
from adamtune.report.summary import VERIFY_ATTR, summarize
from adamtune.storage.attr_keys import BASELINE_ATTR, CURVES_ATTR, DEVICE_ATTR, PARAMS_ATTR, STATE_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume
from tests.conftest import copy_storage

N_TRIALS = 8
SUMMARY_KEYS = {
    "auto_space",
    "convergence",
    "ended",
    "study",
    "task",
    "objective",
    "direction",
    "epochs",
    "batch_size",
    "score_rule",
    "recommended",
    "recommended_trial",
    "score",
    "value",
    "baseline_trial",
    "baseline_score",
    "baseline_value",
    "gain",
    "relative_gain",
    "trials",
    "devices",
    "importance",
    "importance_note",
    "robust_range",
    "verify",
    "rule",
    "rule_text",
    "confirmation",
}
COUNT_KEYS = {"complete", "pruned", "diverged", "failed", "running", "waiting"}
SETTINGS = {"lr", "beta1", "beta2", "epsilon", "decay"}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A finished 8-trial ``synthetic`` study (3 epochs, no pruner, seeded, every dimension searched) plus an
    empty study beside it."""
    root = tmp_path_factory.mktemp("report")
    storage = f"sqlite:///{root}/adamtune.db"
    args = ["--task", "synthetic", "--n-trials", str(N_TRIALS), "--epochs", "3", "--pruner", "none", "--space", "full"]
    result = invoke("search", *args, "--seed", "1", "--no-tracking", "--storage", storage)
    assert result.exit_code == 0, result.output
    empty = StudySpec(task="synthetic", study_name="empty", epochs=3, batch_size=100)
    create_or_resume(empty, open_storage(storage))  # holds only the waiting baseline trial
    return {"root": root, "storage": storage}


# --------------------------------------------------------------------------- the rule on built trials

SPEC = StudySpec(task="synthetic", study_name="rule", epochs=5, batch_size=100)


def built(
    number: int, curve: list[float | None], *, state: str = "complete", **attrs: object
) -> optuna.trial.FrozenTrial:
    """A COMPLETE (or PRUNED) Optuna trial with ``curve`` as its val_loss curve and last value as its value."""
    trial = create_trial(
        state=TrialState.PRUNED if state == "pruned" else TrialState.COMPLETE,
        value=None if state == "pruned" else (curve[-1] if curve[-1] is not None else 9.0),
        params={"lr": 10.0 ** -(number + 1)},
        distributions={"lr": FloatDistribution(1e-9, 1.0, log=True)},
        user_attrs={CURVES_ATTR: {"val_loss": curve}, STATE_ATTR: state, PARAMS_ATTR: {"lr": 10.0 ** -(number + 1)}}
        | dict(attrs),
    )
    trial.number = number
    return trial


def test_late_score_is_the_mean_of_the_last_three_epochs() -> None:
    assert LATE_EPOCHS == 3
    assert late_score(built(0, [9.0, 1.0, 2.0, 3.0]), "val_loss") == pytest.approx(2.0)
    assert late_score(built(0, [4.0, 2.0]), "val_loss") == pytest.approx(3.0)  # fewer epochs: all of them
    assert late_score(built(0, [1.0, None, 2.0, 3.0]), "val_loss") is None  # a non-finite late value
    assert late_score(built(0, [None, 1.0, 2.0, 3.0]), "val_loss") == pytest.approx(2.0)  # early NaN is fine


def test_late_score_falls_back_to_intermediate_values() -> None:
    trial = create_trial(state=TrialState.COMPLETE, value=0.5, intermediate_values={1: 3.0, 3: 1.0, 2: 2.0, 4: 0.5})
    assert late_score(trial, "val_loss") == pytest.approx((2.0 + 1.0 + 0.5) / 3)


def test_the_luckiest_final_epoch_is_not_recommended() -> None:
    lucky = built(1, [0.9, 0.6, 0.5, 0.8, 0.30])  # best final value, noisy: late mean 0.533
    steady = built(2, [0.9, 0.6, 0.40, 0.40, 0.40])  # late mean 0.40
    ranked = rank_trials([lucky, steady], SPEC)
    assert [c.trial for c in ranked] == [2, 1]
    assert ranked[0].score == pytest.approx(0.4) and ranked[0].value == pytest.approx(0.4)


def test_pruned_diverged_and_unscored_trials_are_never_candidates() -> None:
    trials = [
        built(0, [0.5, 0.5, 0.5]),
        built(1, [0.1, 0.1], state="pruned"),
        built(2, [0.1, 0.1, 0.05], state="diverged"),
        built(3, [0.2, 0.2, None]),
    ]
    assert [c.trial for c in rank_trials(trials, SPEC)] == [0]


def test_ties_go_to_the_better_final_value_then_the_lower_number() -> None:
    a, b, c = built(5, [0.3, 0.2, 0.1]), built(4, [0.1, 0.2, 0.3]), built(6, [0.3, 0.2, 0.1])
    assert [x.trial for x in rank_trials([a, b, c], SPEC)] == [5, 6, 4]


def test_maximised_objectives_rank_highest_first() -> None:
    spec = StudySpec(task="synthetic", study_name="acc", objective="val_accuracy")
    low = built(0, [0.1])
    low.user_attrs[CURVES_ATTR] = {"val_accuracy": [0.5, 0.6, 0.7]}
    high = built(1, [0.1])
    high.user_attrs[CURVES_ATTR] = {"val_accuracy": [0.8, 0.8, 0.8]}
    assert [c.trial for c in rank_trials([low, high], spec)] == [1, 0]


def test_robust_range_spans_at_least_three_top_trials() -> None:
    trials = [built(n, [0.1 * (n + 1)] * 3) for n in range(5)]
    ranked = rank_trials(trials, SPEC)
    top = robust_range(ranked, SPEC)
    assert top is not None and top.trials == (0, 1, 2)
    assert top.params["lr"] == {"low": pytest.approx(1e-3), "high": pytest.approx(1e-1)}
    assert top.best_score == pytest.approx(0.1) and top.worst_score == pytest.approx(0.3)
    assert robust_range(ranked[:2], SPEC) is None


# --------------------------------------------------------------------------- summary of a real study


def test_summary_json_shape_and_consistency(searched: dict) -> None:
    result = invoke("summary", "--storage", searched["storage"], "--json")
    assert result.exit_code == 0, result.output
    rows = {row["study"]: row for row in json.loads(result.output)}
    assert set(rows) == {"synthetic", "empty"}
    row = rows["synthetic"]
    assert set(row) == SUMMARY_KEYS
    assert set(row["trials"]) == COUNT_KEYS and sum(row["trials"].values()) == N_TRIALS
    assert row["trials"]["complete"] + row["trials"]["diverged"] == N_TRIALS  # no pruner
    assert row["devices"] == {"cpu": row["trials"]}
    assert set(row["recommended"]) == SETTINGS
    assert row["baseline_trial"] == 0 and row["epochs"] == 3 and row["direction"] == "minimize"
    study = optuna.load_study(study_name="synthetic", storage=searched["storage"])
    recommended = study.trials[row["recommended_trial"]]
    assert recommended.user_attrs[PARAMS_ATTR] == {**recommended.user_attrs[PARAMS_ATTR], **row["recommended"]}
    assert row["score"] == pytest.approx(sum(recommended.user_attrs[CURVES_ATTR]["val_loss"][-3:]) / 3)
    assert row["value"] == pytest.approx(recommended.value)
    assert row["gain"] == pytest.approx(row["baseline_score"] - row["score"])
    assert row["relative_gain"] == pytest.approx(row["gain"] / row["baseline_score"])
    scores = [late_score(t, "val_loss") for t in study.trials if t.user_attrs.get(STATE_ATTR) == "complete"]
    if row["rule"] == "search":  # unconfirmed: the best search-time score
        assert row["score"] == pytest.approx(min(s for s in scores if s is not None))
    elif row["rule"] == "confirmed":  # the finalist the confirmation stage chose
        assert row["recommended_trial"] == row["confirmation"]["recommended_trial"]
    else:  # Adam's defaults: the baseline trial
        assert row["recommended_trial"] == row["baseline_trial"] and row["gain"] == 0


def test_summary_importance_and_ranges(searched: dict) -> None:
    row = {r["study"]: r for r in json.loads(invoke("summary", "--storage", searched["storage"], "--json").output)}[
        "synthetic"
    ]
    importance = row["importance"]
    assert importance is not None and row["importance_note"] is None
    assert set(importance) == SETTINGS  # betas named as settings, not one_minus_beta*
    assert math.isclose(sum(importance.values()), 1.0, rel_tol=1e-6) and min(importance.values()) >= 0
    top = row["robust_range"]
    best = row["confirmation"]["finalists"][0]  # the best search-time score (the range is search-time too)
    assert len(top["trials"]) >= 3 and top["trials"][0] == best["trial"]
    assert top["score"]["best"] == pytest.approx(best["search_score"]) and top["score"]["worst"] >= top["score"]["best"]
    for name in SETTINGS:
        assert top["params"][name]["low"] <= best["params"][name] <= top["params"][name]["high"]


def test_summary_of_a_study_without_finished_trials(searched: dict) -> None:
    result = invoke("summary", "--storage", searched["storage"], "--task", "empty", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["recommended"] is None and row["gain"] is None and row["robust_range"] is None
    assert row["importance"] is None and f"at least {MIN_IMPORTANCE_TRIALS} complete trials" in row["importance_note"]
    assert row["trials"]["waiting"] == 1 and row["devices"] == {}
    text = invoke("summary", "--storage", searched["storage"], "--task", "empty")
    assert text.exit_code == 0 and "no complete trial yet" in text.output


def test_summary_table(searched: dict) -> None:
    result = invoke("summary", "--storage", searched["storage"], "--task", "synthetic")
    assert result.exit_code == 0, result.output
    for fragment in ("recommended", "top-trial range", "importance", "recommendation:", "trials per device: cpu"):
        assert fragment in result.output
    assert "verify: not run yet" in result.output


def test_summary_shows_a_stored_verification(searched: dict, tmp_path: Path) -> None:
    storage = copy_storage(searched["storage"], tmp_path / "copy.db")
    study = optuna.load_study(study_name="synthetic", storage=storage)
    best = summarize(study).recommended
    assert best is not None
    study.set_user_attr(VERIFY_ATTR, {"trial": best.trial, "verdict": "the recommendation beats it", "outcome": "x"})
    row = next(r for r in json.loads(invoke("summary", "--storage", storage, "--json").output) if r["verify"])
    assert row["verify"]["verdict"] == "the recommendation beats it" and row["verify"]["current"] is True
    assert (
        "verify: the recommendation beats it" in invoke("summary", "--storage", storage, "--task", "synthetic").output
    )


def test_devices_come_from_the_trial_attribute(searched: dict, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/devices.db"
    spec = StudySpec(task="synthetic", study_name="devices", epochs=1, batch_size=100)
    study = create_or_resume(spec, open_storage(storage))
    curve = {CURVES_ATTR: {"val_loss": [0.5]}, STATE_ATTR: "complete"}
    for device in ("cuda:0", "cuda:1", "cuda:1"):
        study.add_trial(create_trial(value=0.5, user_attrs={**curve, DEVICE_ATTR: device}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={DEVICE_ATTR: "cuda:0"}))
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["devices"]["cuda:0"]["complete"] == 1 and row["devices"]["cuda:0"]["failed"] == 1
    assert row["devices"]["cuda:1"]["complete"] == 2 and "cpu" not in row["devices"]
    assert row["trials"]["waiting"] == 1  # the enqueued baseline, never started: in no device's count


def test_summary_reads_only_the_study_no_torch_or_mlflow(searched: dict) -> None:
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from adamtune.cli.main import cli\n"
        f"r = CliRunner().invoke(cli, ['summary', '--storage', {searched['storage']!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(cli, ['recommend', '--task', 'synthetic', '--storage', {searched['storage']!r}])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in ('torch', 'mlflow') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- studies, tasks


def test_studies_lists_every_study_with_counts(searched: dict, tmp_path: Path) -> None:
    storage = copy_storage(searched["storage"], tmp_path / "copy.db")
    optuna.create_study(study_name="foreign", storage=storage)
    result = invoke("studies", "--storage", storage, "--json")
    assert result.exit_code == 0, result.output
    rows = {row["study"]: row for row in json.loads(result.output)}
    assert set(rows) == {"empty", "foreign", "synthetic"}
    keys = {
        "study",
        "adamtune",
        "task",
        "objective",
        "direction",
        "epochs",
        "n_trials",
        "trials",
        "best_score",
        "verified",
    }
    assert all(set(row) == keys for row in rows.values())
    assert rows["synthetic"]["adamtune"] and rows["synthetic"]["trials"]["complete"] >= 1
    assert rows["synthetic"]["n_trials"] == N_TRIALS and rows["synthetic"]["best_score"] is not None
    assert rows["foreign"] == {**rows["foreign"], "adamtune": False, "task": None, "best_score": None}
    assert rows["empty"]["trials"]["waiting"] == 1 and rows["empty"]["best_score"] is None
    text = invoke("studies", "--storage", storage)
    assert (
        text.exit_code == 0
        and "foreign: not an adamtune study" in text.output
        and "synthetic: task synthetic" in text.output
    )


def test_tasks_json_shape(workdir: Path) -> None:
    result = invoke("tasks", "--json")  # in an empty directory: no study database to count studies in
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    keys = {"name", "description", "dataset", "model", "default_epochs", "default_batch_size", "extra"}
    assert all(set(row) == keys and isinstance(row["extra"], dict) for row in rows)
    assert {"digits", "synthetic"} <= {row["name"] for row in rows}


# --------------------------------------------------------------------------- report


def test_report_writes_plots_and_one_page(searched: dict, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = invoke("report", "--task", "synthetic", "--storage", searched["storage"], "--out", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out / "index.html")
    names = ("optimization_history", "param_importances", "contour_lr_beta1", "contour_lr_beta2", "slice")
    page = (out / "index.html").read_text()
    for name in (*names, "learning_curves"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (out / f"{name}.html").stat().st_size > 0
        assert f"src='{name}.png'" in page
    assert (out / "plotly.min.js").is_file()  # one shared copy for every interactive plot
    assert "gain over default" in page and "PED-ANOVA" in page and "Recommendation: " in page


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["summary", "--task", "nope"], 3, "no adamtune study for task 'nope'"),
        (["recommend", "--task", "nope"], 3, "no adamtune study for task 'nope'"),
        (["recommend", "--task", "empty"], 3, "study 'empty' has no complete trial yet"),
        (["recommend", "--task", "synthetic", "--format", "yaml"], 2, "unknown format 'yaml'; valid formats: table"),
        (["recommend"], 3, "several studies match (empty, synthetic); pass --task or pass --study NAME"),
        (["recommend", "--study", "nope"], 3, "no study named 'nope' in this storage (studies: empty, synthetic)"),
        (["verify", "--task", "synthetic", "--seeds", "0"], 2, "--seeds must be at least 2"),
        (["verify", "--task", "synthetic", "--seeds", "1"], 2, "--seeds must be at least 2"),
        (["verify", "--task", "empty", "--no-tracking"], 3, "study 'empty' has no complete trial yet"),
        (["report", "--task", "empty", "--out", "r"], 3, "study 'empty' has no complete trial yet"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(
    searched: dict, workdir: Path, args: list[str], code: int, fragment: str
) -> None:
    result = invoke(*args, "--storage", searched["storage"])
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("Error: ") and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_storage_is_one_line(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path}/none.db"
    for command in ("summary", "studies", "recommend", "report"):
        extra = ["--out", str(tmp_path / "r")] if command == "report" else []
        result = invoke(command, "--storage", storage, *extra)
        assert result.exit_code == 3 and "does not exist; run 'adamtune search' first" in result.stderr, command
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "r").exists()


def test_report_out_must_be_a_directory(searched: dict, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke("report", "--task", "synthetic", "--storage", searched["storage"], "--out", str(tmp_path / "file"))
    assert result.exit_code == 2 and "exists and is not a directory" in result.stderr


def test_baseline_attribute_marks_the_baseline(searched: dict) -> None:
    study = optuna.load_study(study_name="synthetic", storage=searched["storage"])
    assert study.trials[0].user_attrs[BASELINE_ATTR] is True
    assert summarize(study).baseline is not None and summarize(study).baseline.trial == 0
