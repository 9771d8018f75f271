"""The confirmation stage: the decision rule (pure), its summary (read-only), and the stage run by workers.

The rule is tested on hand-made results; the summary on real Optuna studies in a real SQLite file built
with ``create_trial`` (nothing mocked); the stage end to end with real searches on the ``synthetic`` task
(real SQLite file, real MLflow store): resuming an interrupted stage, two workers sharing it, a raised
target, and a study made before the stage existed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner, Result
from mlflow import MlflowClient
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from adamtune.cli.main import cli
from adamtune.core.config import StudySpec, build_spec
from adamtune.core.confirm_rule import (
    ARM_ATTR,
    BASELINE_ARM,
    FIRST_SEED,
    FOLD_ATTR,
    START_SEEDS,
    ConfirmSettings,
    Finalist,
    confirm_seeds,
    confirm_study_name,
    plan_stage,
    stage_budget,
)
from adamtune.core.errors import ConfigError
from adamtune.core.folds import Fold
from adamtune.core.space import BASELINE
from adamtune.core.stats import paired_gain, t_quantile
from adamtune.report.summary import summarize
from adamtune.storage.attr_keys import (
    BASELINE_ATTR,
    CURVES_ATTR,
    PARAMS_ATTR,
    SEED_ATTR,
    SETTINGS_ATTR,
    STATE_ATTR,
    WORKER_ATTR,
)
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume
from adamtune.tracking.store import experiment_name

SEEDS = confirm_seeds([], 5)


@pytest.mark.parametrize("confidence", [0.5, 0.9, 0.95, 0.99])
def test_the_t_critical_value_is_scipy_s(confidence: float) -> None:
    """The pure-Python Student-t quantile matches scipy's for every df a confirmation can meet (and far more)."""
    from scipy import stats

    for df in [*range(1, 60), 100, 250, 1000]:
        expected = float(stats.t.ppf(0.5 + confidence / 2, df))
        assert t_quantile(df, confidence) == pytest.approx(expected, rel=1e-10), df
    with pytest.raises(ValueError, match="df >= 1"):
        t_quantile(0)


CONFIRMATION_KEYS = {
    "status",
    "enabled",
    "validation",
    "note",
    "top",
    "max_seeds",
    "metric",
    "split",
    "interval",
    "seeds",
    "baseline",
    "finalists",
    "best_candidate",
    "recommended_trial",
    "runs",
    "budget",
    "seconds",
    "search_seconds",
    "cost_share",
}
FINALIST_KEYS = {
    "trial",
    "params",
    "search_score",
    "confirmed_score",
    "seeds",
    "gain",
    "relative_gain",
    "interval",
    "status",
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def finalist(number: int, score: float = 0.1) -> Finalist:
    return Finalist(number, {"lr": 10.0 ** -(number + 1)}, score)


def results_for(arms: dict[str, list[float]], seeds: list[int] = SEEDS) -> dict[tuple[str, int], float]:
    return {(arm, seed): value for arm, values in arms.items() for seed, value in zip(seeds, values, strict=False)}


# --------------------------------------------------------------------------- the rule


def test_seeds_are_fresh_and_disjoint_from_verify() -> None:
    from adamtune.report.verify import FIRST_SEED as VERIFY_FIRST

    assert [FIRST_SEED + i for i in range(5)] == SEEDS and FIRST_SEED - VERIFY_FIRST >= 1_000_000
    assert confirm_seeds([FIRST_SEED + 1], 3) == [FIRST_SEED, FIRST_SEED + 2, FIRST_SEED + 3]


def test_paired_gain_is_signed_so_positive_is_better() -> None:
    gain = paired_gain([0.9, 1.0, 1.1], [1.0, 1.2, 1.2], "minimize")
    assert gain.differences == pytest.approx((0.1, 0.2, 0.1))
    assert gain.mean == pytest.approx(0.4 / 3) and gain.low < gain.mean < gain.high
    up = paired_gain([0.9, 0.8, 0.7], [0.8, 0.8, 0.8], "maximize")
    assert up.mean == pytest.approx(0.0) and up.low < 0 < up.high
    flat = paired_gain([1.0, 1.0], [1.5, 1.5], "minimize")
    assert (flat.low, flat.mean, flat.high) == pytest.approx((0.5, 0.5, 0.5))  # sd 0: zero width


def test_round_one_runs_every_finalist_and_the_baseline_on_the_first_seeds() -> None:
    plan = plan_stage([finalist(3), finalist(5)], {}, SEEDS, "minimize")
    assert not plan.decided and plan.round_seeds == START_SEEDS
    expected = {(arm, s) for arm in (BASELINE_ARM, "trial-3", "trial-5") for s in SEEDS[:START_SEEDS]}
    assert set(plan.needed) == expected and len(plan.needed) == len(expected)
    done = results_for({BASELINE_ARM: [1.0, 1.0, 1.0]})
    assert set(plan_stage([finalist(3), finalist(5)], done, SEEDS, "minimize").needed) == expected - set(done)


def test_a_clear_winner_is_confirmed_without_more_seeds() -> None:
    results = results_for({BASELINE_ARM: [1.0, 1.1, 0.9], "trial-3": [0.5, 0.61, 0.4], "trial-5": [1.2, 1.3, 1.1]})
    plan = plan_stage([finalist(3), finalist(5)], results, SEEDS, "minimize")
    assert plan.decided and plan.round_seeds == 3
    assert plan.recommended is not None and plan.recommended.finalist.trial == 3
    assert plan.recommended.gain.low > 0  # type: ignore[union-attr]
    loser = plan.arms[1]
    assert loser.dropped_after == START_SEEDS and loser.gain.mean < 0  # type: ignore[union-attr]


def test_an_open_decision_adds_seeds_up_to_the_maximum() -> None:
    noisy = {BASELINE_ARM: [1.0, 1.0, 1.0], "trial-3": [0.9, 0.94, 0.97]}  # promising, not yet sure
    plan = plan_stage([finalist(3)], results_for(noisy), SEEDS, "minimize")
    assert not plan.decided and plan.round_seeds == 5
    assert set(plan.needed) == {(arm, s) for arm in (BASELINE_ARM, "trial-3") for s in SEEDS[3:5]}
    # while the round is open, the standings are those of the last complete round (3 seeds)
    assert plan.best is not None and plan.best.gain.n == 3  # type: ignore[union-attr]


def test_futile_finalists_end_the_stage_early_with_the_defaults() -> None:
    worse = {BASELINE_ARM: [1.0, 1.0], "trial-3": [0.9, 1.05], "trial-5": [1.1, 1.05]}  # even 3 is futile
    plan = plan_stage([finalist(3), finalist(5)], results_for(worse), SEEDS, "minimize")
    assert plan.decided and plan.round_seeds == START_SEEDS and plan.recommended is None
    assert plan.best is not None and plan.best.finalist.trial == 3  # the best candidate, with its interval
    assert plan.arms[1].dropped_after == START_SEEDS


def test_two_seeds_never_confirm_when_more_are_allowed() -> None:
    tight = {BASELINE_ARM: [1.0, 1.0], "trial-3": [0.5, 0.51]}  # lower bound > 0 already on 2 seeds
    plan = plan_stage([finalist(3)], results_for(tight), SEEDS, "minimize")
    assert not plan.decided and plan.round_seeds == 3
    assert plan_stage([finalist(3)], results_for(tight), SEEDS[:2], "minimize").recommended is not None


def test_keep_the_defaults_when_no_finalist_is_confirmed_better() -> None:
    noisy = {BASELINE_ARM: [1.0, 1.0, 1.0, 1.0, 1.0], "trial-3": [0.9, 0.94, 0.97, 1.08, 0.98]}
    plan = plan_stage([finalist(3)], results_for(noisy), SEEDS, "minimize")
    assert plan.decided and plan.round_seeds == 5
    assert plan.recommended is None  # Adam's defaults
    assert plan.best is not None and plan.best.finalist.trial == 3
    assert plan.best.gain.low <= 0 < plan.best.gain.mean  # type: ignore[union-attr]


def test_a_finalist_below_the_best_interval_is_dropped_and_a_confirmed_leader_ends_the_race() -> None:
    results = results_for(
        {
            BASELINE_ARM: [1.0, 1.0, 1.0],
            "trial-1": [0.7, 0.69, 0.71],
            "trial-2": [0.96, 0.97, 0.98],
            "trial-4": [0.65, 0.75, 0.8],
        }
    )
    plan = plan_stage([finalist(1), finalist(2), finalist(4)], results, SEEDS, "minimize")
    states = {a.finalist.trial: a for a in plan.arms}
    assert states[2].dropped_after == START_SEEDS  # its interval lies below trial 1's
    assert states[4].dropped_after is None  # a wider interval: it may still win
    # trial 1 is confirmed on 3 seeds: no seeds are spent ranking trial 4, which is also better
    assert plan.decided and plan.round_seeds == 3 and plan.recommended is not None
    assert plan.recommended.finalist.trial == 1 and states[4].gain.low > 0  # type: ignore[union-attr]


def test_a_budget_races_only_the_finalists_it_can_confirm_and_stops_adding_seeds() -> None:
    finalists = [finalist(1), finalist(2), finalist(4)]
    assert stage_budget(90, 3) == 12 and stage_budget(10, 3) == 6  # never below one finalist on 3 seeds
    plan = plan_stage(finalists, {}, SEEDS, "minimize", budget=7)  # pays for one finalist on 3 seeds
    assert [arm.dropped_after for arm in plan.arms] == [None, 0, 0] and plan.notes
    assert {arm for arm, _ in plan.needed} == {BASELINE_ARM, "trial-1"}
    noisy = {BASELINE_ARM: [1.0] * 5, "trial-1": [0.8, 0.7, 0.95, 0.75, 0.8]}
    unlimited = plan_stage(finalists[:1], results_for(noisy), SEEDS, "minimize")
    assert unlimited.decided and unlimited.round_seeds == 5  # without a budget it races on to 5 seeds
    capped = plan_stage(finalists[:1], results_for(noisy), SEEDS, "minimize", budget=8)
    assert capped.decided and capped.round_seeds == 4 and not capped.needed  # 4 seeds x 2 arms = 8 runs
    assert plan_stage(finalists, {}, SEEDS, "minimize", budget=12).notes == ()  # 3 finalists x 3 seeds fit


def test_no_finalist_means_nothing_to_run() -> None:
    plan = plan_stage([], {}, SEEDS, "minimize")
    assert plan.decided and plan.needed == () and plan.recommended is None


def test_settings_from_files_and_flags() -> None:
    spec = build_spec("synthetic", None, None, {"confirm_top": 2, "confirm_seeds": 4})
    assert spec.confirm == ConfirmSettings(True, 2, 4)
    assert build_spec("synthetic", None, None, {"confirm": False}).confirm.enabled is False
    # A study from before the stage: on, confirmed on seeds only with no budget (it predates both).
    assert ConfirmSettings.from_dict(None) == ConfirmSettings(folds=False, budget=None)
    assert build_spec("synthetic", None, None, {"confirm_folds": False}).confirm.folds is False
    assert build_spec("synthetic", None, None, {"confirm_budget": 2}).confirm.budget == 2.0
    stored = ConfirmSettings(top=2, folds=False, budget=0.25)
    assert ConfirmSettings.from_dict(stored.as_dict()) == stored
    with pytest.raises(ConfigError, match="confirm_seeds"):
        build_spec("synthetic", None, None, {"confirm_seeds": 1})
    with pytest.raises(ConfigError, match="confirm_budget"):
        build_spec("synthetic", None, None, {"confirm_budget": -0.5})
    with pytest.raises(ConfigError, match="confirm_folds"):
        build_spec("synthetic", None, None, {"confirm_folds": "yes"})


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--confirm-top", "0"], "--confirm-top"),
        (["--confirm-seeds", "1"], "--confirm-seeds"),
        (["--confirm-budget", "0"], "--confirm-budget"),
        (["--confirm-budget", "lots"], "--confirm-budget"),
    ],
)
def test_bad_flags_are_one_line_errors(workdir: Path, args: list[str], fragment: str) -> None:
    result = invoke("search", "--task", "synthetic", *args)
    assert result.exit_code == 2 and fragment in result.output and not list(workdir.iterdir())


def test_bad_study_file_key(workdir: Path) -> None:
    (workdir / "s.toml").write_text('[study]\ntask = "synthetic"\nconfirm = "yes"\n')
    result = invoke("search", "--config", "s.toml")
    assert result.exit_code == 2 and "confirm in [study]" in result.output and "true or false" in result.output


# --------------------------------------------------------------------------- the summary of built studies


def built_study(tmp_path: Path, confirm_values: dict[str, list[float]] | None, settings: bool = True) -> optuna.Study:
    """A finished 'rule' study: baseline (trial 0) and trials 1-3 with known curves; optional stored runs
    (confirmed on validation folds, the stage's default)."""
    storage = open_storage(f"sqlite:///{tmp_path}/built.db")
    spec = StudySpec(task="synthetic", study_name="rule", epochs=3, batch_size=100, n_trials=4)
    study = create_or_resume(spec, storage)
    if not settings:
        study.set_user_attr(SETTINGS_ATTR, {"n_trials": 4, "sampler": "tpe", "pruner": "hyperband"})
    curves = {0: 1.0, 1: 0.5, 2: 0.6, 3: 0.7}
    for number, value in curves.items():
        params = BASELINE.as_dict() if number == 0 else {**BASELINE.as_dict(), "lr": 10.0 ** -(number + 1)}
        attrs = {CURVES_ATTR: {"val_loss": [value] * 3}, STATE_ATTR: "complete", PARAMS_ATTR: params, SEED_ATTR: number}
        if number == 0:
            baseline = study.ask()  # the enqueued baseline
            for key, item in attrs.items():
                baseline.set_user_attr(key, item)
            study.tell(baseline, value)
            continue
        study.add_trial(
            create_trial(
                value=value,
                params={"lr": params["lr"]},
                distributions={"lr": FloatDistribution(1e-9, 1.0, log=True)},
                user_attrs=attrs,
            )
        )
    for _ in range(30):  # pruned trials: 90 epochs of search, a stage budget of 12 runs (3 finalists, 3 seeds)
        pruned = {CURVES_ATTR: {"val_loss": [2.0] * 3}, STATE_ATTR: "pruned"}
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={3: 2.0}, user_attrs=pruned))
    if confirm_values is not None:
        confirm = optuna.create_study(storage=storage, study_name=confirm_study_name("rule"))
        for arm, values in confirm_values.items():
            for seed, value in zip(SEEDS, values, strict=False):
                fold = Fold(SEEDS.index(seed), len(SEEDS), seed).as_dict()
                confirm.add_trial(
                    create_trial(value=value, user_attrs={ARM_ATTR: arm, SEED_ATTR: seed, FOLD_ATTR: fold})
                )
    return study


def test_summary_recommends_a_confirmed_finalist(tmp_path: Path) -> None:
    study = built_study(
        tmp_path,
        {
            BASELINE_ARM: [1.0, 1.1, 0.9],
            "trial-1": [0.5, 0.6, 0.4],
            "trial-2": [1.5, 1.6, 1.4],
            "trial-3": [2.0, 2.1, 2.2],
        },
    )
    row = summarize(study, importance=False)
    assert row.rule == "confirmed" and row.recommended is not None and row.recommended.trial == 1
    record = row.as_dict()
    conf = record["confirmation"]
    assert set(conf) == CONFIRMATION_KEYS and conf["status"] == "confirmed" and conf["recommended_trial"] == 1
    assert [set(f) for f in conf["finalists"]] == [FINALIST_KEYS] * 3
    first = conf["finalists"][0]
    assert first["search_score"] == pytest.approx(0.5) and first["confirmed_score"] == pytest.approx(0.5)
    assert first["gain"] == pytest.approx(0.5) and first["interval"][0] > 0 and first["seeds"] == 3
    assert conf["baseline"] == {"confirmed_score": pytest.approx(1.0), "seeds": 3}
    assert record["rule"] == "confirmed"
    assert "confirmed on fresh seeds and validation folds: trial 1" in record["rule_text"]


def test_summary_keeps_the_defaults_and_names_the_best_candidate(tmp_path: Path) -> None:
    noisy = {
        BASELINE_ARM: [1.0] * 5,
        "trial-1": [0.9, 1.05, 0.97, 1.02, 0.95],
        "trial-2": [1.3] * 5,
        "trial-3": [1.4] * 5,
    }
    study = built_study(tmp_path, noisy)
    row = summarize(study, importance=False)
    assert row.rule == "defaults" and row.recommended is not None
    assert row.recommended.params == BASELINE and row.recommended.trial == 0
    record = row.as_dict()
    assert record["recommended"] == {k: getattr(BASELINE, k) for k in ("lr", "beta1", "beta2", "epsilon", "decay")}
    assert record["confirmation"]["status"] == "defaults" and record["confirmation"]["best_candidate"] == 1
    assert record["confirmation"]["recommended_trial"] is None
    assert "Adam's defaults" in record["rule_text"] and "best candidate trial 1" in record["rule_text"]
    table = invoke("summary", "--storage", f"sqlite:///{tmp_path}/built.db")
    assert table.exit_code == 0 and "unconfirmed" in table.output and "Adam's defaults" in table.output
    recommend = invoke(
        "recommend", "--study", "rule", "--storage", f"sqlite:///{tmp_path}/built.db", "--format", "json"
    )
    assert json.loads(recommend.output)["lr"] == BASELINE.lr


def test_an_unconfirmed_study_says_so(tmp_path: Path) -> None:
    study = built_study(tmp_path, None, settings=False)  # made before the stage existed
    row = summarize(study, importance=False)
    assert row.rule == "search" and row.recommended is not None and row.recommended.trial == 1
    assert row.as_dict()["confirmation"]["status"] == "not run" and "UNCONFIRMED" in row.as_dict()["rule_text"]
    listing = json.loads(invoke("studies", "--storage", f"sqlite:///{tmp_path}/built.db", "--json").output)
    assert [r["study"] for r in listing] == ["rule"]  # the confirmation study is not listed


# --------------------------------------------------------------------------- the stage, end to end

ARGS = ("--task", "synthetic", "--epochs", "3", "--pruner", "none", "--seed", "2")


def confirm_trials(storage: str, name: str = "synthetic") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=confirm_study_name(name), storage=storage).trials


def complete_keys(storage: str) -> Counter:
    return Counter(
        (t.user_attrs[ARM_ATTR], t.user_attrs[SEED_ATTR])
        for t in confirm_trials(storage)
        if t.state == TrialState.COMPLETE
    )


def test_search_confirms_logs_to_mlflow_and_prints_the_cost(workdir: Path) -> None:
    storage, tracking = f"sqlite:///{workdir}/a.db", f"sqlite:///{workdir}/m.db"
    result = invoke("search", *ARGS, "--n-trials", "6", "--storage", storage, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert "confirm baseline seed 8000000" in result.output and "of the search's" in result.output
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    conf = row["confirmation"]
    assert conf["status"] in ("confirmed", "defaults") and row["rule"] == conf["status"]
    assert max(complete_keys(storage).values()) == 1  # no run twice
    assert conf["runs"]["finished"] == sum(complete_keys(storage).values()) and conf["cost_share"] > 0
    client = MlflowClient(tracking_uri=tracking)
    experiment = client.get_experiment_by_name(experiment_name("synthetic"))
    runs = client.search_runs([experiment.experiment_id], "tags.`adamtune.role` = 'confirmation'", max_results=100)
    parent = optuna.load_study(study_name="synthetic", storage=storage).user_attrs["mlflow.parent_run_id"]
    assert len(runs) == conf["runs"]["finished"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent and r.info.status == "FINISHED" for r in runs)
    history = client.get_metric_history(runs[0].info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]


def test_an_interrupted_stage_resumes_without_redoing_runs(workdir: Path) -> None:
    from adamtune.launch.search import run_search
    from adamtune.trials.worker import WorkerOptions

    storage = f"sqlite:///{workdir}/a.db"
    spec = build_spec("synthetic", None, None, {"n_trials": 5, "epochs": 3, "pruner": "none", "seed": 2})
    options = WorkerOptions(storage_url=storage, study_name="synthetic", tracking=False, seed=2)
    seen: list[object] = []

    def stop_after_two(run: object) -> None:
        seen.append(run)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_search(spec, options, on_confirm_run=stop_after_two)
    first = complete_keys(storage)
    assert sum(first.values()) == 2
    again = invoke("search", *ARGS, "--n-trials", "5", "--storage", storage, "--no-tracking")
    assert again.exit_code == 0, again.output
    assert "run now" in again.output and "(0 run now)" in again.output  # no new trial, only the stage
    after = complete_keys(storage)
    assert max(after.values()) == 1 and all(after[key] == 1 for key in first)  # the two runs were kept
    assert sum(after.values()) > 2
    assert json.loads(invoke("summary", "--storage", storage, "--json").output)[0]["confirmation"]["status"] in (
        "confirmed",
        "defaults",
    )


def test_two_workers_share_the_stage(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/a.db"
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "ADAMTUNE_HEARTBEAT_SECONDS": "1", "ADAMTUNE_GRACE_SECONDS": "5", "PYTHONPATH": root}
    # Runs of 40 epochs (~0.2 s each, a stage of several seconds): with ARGS' 3 the whole stage took
    # under a second, and one worker could run all of it before the other was scheduled on a busy VM.
    args = [*ARGS[:2], "--epochs", "40", *ARGS[4:]]
    command = [sys.executable, "-m", "adamtune", "search", *args, "--n-trials", "6", "--workers", "2"]
    command += ["--devices", "cpu", "--storage", storage, "--no-tracking", "--confirm-seeds", "5"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "confirm " in done.stderr
    trials = [t for t in confirm_trials(storage) if t.state == TrialState.COMPLETE]
    assert max(complete_keys(storage).values()) == 1
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) == 2  # both workers ran confirmation runs
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["confirmation"]["status"] in ("confirmed", "defaults")


def test_a_raised_target_confirms_the_new_finalists_and_reuses_runs(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/a.db"
    assert invoke("search", *ARGS, "--n-trials", "4", "--storage", storage, "--no-tracking").exit_code == 0
    result = invoke("search", *ARGS, "--n-trials", "8", "--storage", storage, "--no-tracking", "--confirm-top", "4")
    assert result.exit_code == 0, result.output
    assert max(complete_keys(storage).values()) == 1  # the baseline's runs were reused, not repeated
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    conf = row["confirmation"]
    assert conf["status"] in ("confirmed", "defaults") and conf["top"] == 4
    assert len(conf["finalists"]) == 4
    raced = [f for f in conf["finalists"] if f["status"] != "not raced"]
    # 8 trials of 3 epochs pay for the smallest budget (one finalist on 3 seeds); the rest are listed, not raced
    assert conf["budget"]["runs"] == 6 and len(raced) == 1 and conf["budget"]["notes"]
    assert all(f["seeds"] >= START_SEEDS for f in raced)


def test_an_old_study_summarises_and_search_runs_only_the_stage(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/a.db"
    assert (
        invoke("search", *ARGS, "--n-trials", "4", "--storage", storage, "--no-tracking", "--no-confirm").exit_code == 0
    )
    study = optuna.load_study(study_name="synthetic", storage=storage)
    study.set_user_attr(SETTINGS_ATTR, {"n_trials": 4, "sampler": "tpe", "pruner": "none"})  # as before the stage
    old = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert old["rule"] == "search" and old["confirmation"]["status"] == "not run"
    result = invoke("search", *ARGS, "--n-trials", "4", "--storage", storage, "--no-tracking")
    assert result.exit_code == 0 and "(0 run now)" in result.output
    assert len(optuna.load_study(study_name="synthetic", storage=storage).trials) == 4
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["confirmation"]["status"] in ("confirmed", "defaults") and sum(complete_keys(storage).values()) >= 6


def test_no_confirm_skips_the_stage(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/a.db"
    result = invoke("search", *ARGS, "--n-trials", "3", "--storage", storage, "--no-tracking", "--no-confirm")
    assert result.exit_code == 0 and "confirm baseline" not in result.output
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert row["rule"] == "search" and row["confirmation"]["status"] == "off"
    assert "UNCONFIRMED" in row["rule_text"]
    assert BASELINE_ATTR  # the baseline stays the reference of every rule
