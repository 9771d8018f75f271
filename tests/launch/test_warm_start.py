"""Warm starts (``launch/warm_start.py``): reading earlier studies' settings, read-only, and queueing them.

Source studies are real: one real search (the ``synthetic`` task, 4 trials of 2 epochs, no pruner, a real
SQLite file) and one study with a stored confirmation stage built with ``create_trial`` (real Optuna
trials in a real SQLite file, nothing mocked); a PostgreSQL copy where the server is reachable. The
``studies --task`` and ``tasks`` listings run through click's ``CliRunner``.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from click.testing import CliRunner, Result
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

import adamtune
from adamtune.cli.main import cli
from adamtune.confirm.ranking import rank_trials
from adamtune.core.config import StudySpec
from adamtune.core.confirm_rule import ARM_ATTR, BASELINE_ARM, FOLD_ATTR, confirm_seeds, confirm_study_name
from adamtune.core.errors import ConfigError, StorageError
from adamtune.core.folds import Fold
from adamtune.core.space import BASELINE, AdamParams, parse_space
from adamtune.launch.warm_start import (
    WarmStart,
    enqueue_warm_starts,
    parse_sources,
    read_warm_starts,
    related_studies,
    studies_by_task,
)
from adamtune.report.summary import summarize
from adamtune.storage.attr_keys import CURVES_ATTR, PARAMS_ATTR, SEED_ATTR, STATE_ATTR, WARM_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume, spec_from_study
from tests.conftest import copy_storage

SEEDS = confirm_seeds([], 5)


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def fingerprint(path: Path) -> tuple[bytes, int]:
    """A file's bytes and modification time: equal before and after means nothing was written."""
    return path.read_bytes(), path.stat().st_mtime_ns


def build_confirmed(storage: str) -> None:
    """Study 'rule': baseline (trial 0), trials 1-3 (search scores 0.5, 0.6, 0.7); the stored stage confirms
    trial 2 (not the search's best) better than the defaults on 3 seeds and validation folds."""
    spec = StudySpec(task="synthetic", study_name="rule", epochs=3, batch_size=100, n_trials=4)
    study = create_or_resume(spec, open_storage(storage))
    for number, value in {0: 1.0, 1: 0.5, 2: 0.6, 3: 0.7}.items():
        params = BASELINE.as_dict() if number == 0 else {**BASELINE.as_dict(), "lr": 10.0 ** -(number + 1)}
        attrs = {CURVES_ATTR: {"val_loss": [value] * 3}, STATE_ATTR: "complete", PARAMS_ATTR: params, SEED_ATTR: number}
        if number == 0:
            baseline = study.ask()  # the enqueued baseline
            for key, item in attrs.items():
                baseline.set_user_attr(key, item)
            study.tell(baseline, value)
            continue
        distributions = {"lr": FloatDistribution(1e-9, 1.0, log=True)}
        study.add_trial(
            create_trial(value=value, params={"lr": params["lr"]}, distributions=distributions, user_attrs=attrs)
        )
    for _ in range(30):  # pruned search trials: enough epochs that the stage's budget pays for 3 seeds each
        pruned = {CURVES_ATTR: {"val_loss": [2.0] * 3}, STATE_ATTR: "pruned"}
        study.add_trial(create_trial(state=TrialState.PRUNED, intermediate_values={3: 2.0}, user_attrs=pruned))
    confirm = optuna.create_study(storage=open_storage(storage), study_name=confirm_study_name("rule"))
    arms = {BASELINE_ARM: [1.0, 1.1, 0.9], "trial-1": [1.0, 1.1, 0.9], "trial-2": [0.5, 0.6, 0.4], "trial-3": [2.0] * 3}
    for arm, values in arms.items():
        for seed, value in zip(SEEDS, values, strict=False):
            fold = Fold(SEEDS.index(seed), len(SEEDS), seed).as_dict()
            confirm.add_trial(create_trial(value=value, user_attrs={ARM_ATTR: arm, SEED_ATTR: seed, FOLD_ATTR: fold}))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``old.db``: a real 4-trial search ('syn-old'); ``built.db``: the confirmed study 'rule'."""
    root = tmp_path_factory.mktemp("warm")
    old = f"sqlite:///{root / 'old.db'}"
    adamtune.search(
        "synthetic",
        study="syn-old",
        n_trials=4,
        epochs=2,
        pruner="none",
        storage=old,
        tracking=False,
        seed=1,
        confirm_top=1,
        confirm_seeds=2,
    )
    built = f"sqlite:///{root / 'built.db'}"
    build_confirmed(built)
    return {"root": root, "old": old, "built": built}


def top_params(storage: str, name: str, top: int) -> list[tuple[int, AdamParams]]:
    """The study's best complete non-baseline trials by the ranking rule, with the settings they trained."""
    study = optuna.load_study(study_name=name, storage=storage)
    ranked = [c for c in rank_trials(study.get_trials(), spec_from_study(study)) if not c.baseline]
    for candidate in ranked:  # the settings the objective recorded on the trial, exactly
        assert candidate.params == AdamParams.from_dict(study.trials[candidate.trial].user_attrs[PARAMS_ATTR])
    return [(c.trial, c.params) for c in ranked[:top]]


# --------------------------------------------------------------------------- sources


def test_parse_sources() -> None:
    assert parse_sources("a,b") == ("a", "b")
    assert parse_sources(["a", "b, c"]) == ("a", "b", "c")
    assert parse_sources(["a", "a"]) == ("a",)
    assert parse_sources("sqlite:///old.db#digits,new") == ("sqlite:///old.db#digits", "new")
    assert parse_sources([]) == ()
    for bad in ("a,,b", "a,", "", ["a", " "]):
        with pytest.raises(ConfigError, match="has an empty entry; pass STUDY"):
            parse_sources(bad)


# --------------------------------------------------------------------------- reading


def expected_starts(storage: str, name: str, label: str, top: int) -> list[WarmStart]:
    """What the warm starts of a study must be, from its summary's rule and its ranking, whatever its real
    confirmation stage decided: a confirmed finalist first, then the best trials not already taken."""
    summary = summarize(optuna.load_study(study_name=name, storage=storage), importance=False)
    starts = []
    if summary.rule == "confirmed":
        assert summary.recommended is not None
        starts.append(WarmStart(summary.recommended.params, f"{label} trial {summary.recommended.trial} (confirmed)"))
    for number, params in top_params(storage, name, top):
        if params not in [s.params for s in starts]:
            starts.append(WarmStart(params, f"{label} trial {number}"))
    return starts


def test_reads_the_best_trials_of_a_study_in_the_same_storage(sources: dict) -> None:
    path = sources["root"] / "old.db"
    before = fingerprint(path)
    starts = read_warm_starts(["syn-old"], sources["old"], top=2)
    assert len(starts) >= 2 and starts == expected_starts(sources["old"], "syn-old", "syn-old", 2)
    assert fingerprint(path) == before  # read only


def test_the_confirmed_recommendation_comes_first(sources: dict) -> None:
    assert (
        summarize(optuna.load_study(study_name="rule", storage=sources["built"]), importance=False).rule == "confirmed"
    )
    starts = read_warm_starts(["rule"], sources["built"])
    lr = {start.origin: start.params.lr for start in starts}
    # trial 2 once (its search-time copy de-duplicated), then the other best trials by search score
    assert lr == {"rule trial 2 (confirmed)": 1e-3, "rule trial 1": 1e-2, "rule trial 3": 1e-4}
    assert list(lr) == ["rule trial 2 (confirmed)", "rule trial 1", "rule trial 3"]
    assert read_warm_starts(["rule"], sources["built"], top=0) == starts[:1]


def test_reads_another_database_by_url_and_removes_duplicates(sources: dict, tmp_path: Path) -> None:
    new = tmp_path / "new.db"
    copy = copy_storage(sources["old"], tmp_path / "copy.db")
    starts = read_warm_starts([f"{sources['old']}#syn-old"], f"sqlite:///{new}", top=3)
    assert starts == expected_starts(sources["old"], "syn-old", f"{sources['old']}#syn-old", 3)
    assert not new.exists()  # the new study's database is not opened for URL#NAME sources
    # the same settings from a copy of the database add nothing; a second study's new settings follow
    both = read_warm_starts(["syn-old", f"{copy}#syn-old", f"{sources['built']}#rule"], sources["old"], top=3)
    assert [s.params for s in both[: len(starts)]] == [s.params for s in starts]
    assert all(s.origin.startswith("syn-old trial") for s in both[: len(starts)])
    assert [s.origin.rpartition("#")[2] for s in both[len(starts) :]] == [
        "rule trial 2 (confirmed)",
        "rule trial 1",
        "rule trial 3",
    ]
    assert len({s.params for s in both}) == len(both)


def test_an_unknown_study_lists_the_studies_and_writes_nothing(sources: dict) -> None:
    path = sources["root"] / "old.db"
    before = fingerprint(path)
    with pytest.raises(StorageError) as caught:
        read_warm_starts(["nope"], sources["old"])
    message = str(caught.value)
    assert "no study named 'nope' in this storage (studies: syn-old)" in message and "URL#STUDY" in message
    assert "\n" not in message
    with pytest.raises(
        StorageError, match=r"no study named 'nope' in database sqlite:///.*old\.db \(studies: syn-old\)"
    ):
        read_warm_starts([f"{sources['old']}#nope"], sources["built"])
    assert fingerprint(path) == before


def test_a_missing_or_broken_database_is_an_error_and_nothing_is_created(sources: dict, tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    with pytest.raises(StorageError, match=f"study database {missing} does not exist; check the path"):
        read_warm_starts([f"sqlite:///{missing}#digits"], sources["old"])
    with pytest.raises(StorageError, match=r"no study named 'digits': the study database .* holds no studies yet"):
        read_warm_starts(["digits"], f"sqlite:///{missing}")
    assert (
        related_studies(f"sqlite:///{missing}", "synthetic") == [] and studies_by_task(f"sqlite:///{missing}") is None
    )
    assert not missing.exists()
    (tmp_path / "empty.db").touch()
    with pytest.raises(StorageError, match=r"empty\.db is empty"):
        read_warm_starts([f"sqlite:///{tmp_path / 'empty.db'}#x"], sources["old"])
    assert (tmp_path / "empty.db").stat().st_size == 0
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    with pytest.raises(StorageError, match="is not a SQLite database"):
        read_warm_starts([f"sqlite:///{tmp_path / 'junk.db'}#x"], sources["old"])
    with pytest.raises(ConfigError, match="names no study after '#'"):
        read_warm_starts([f"{sources['old']}#"], sources["old"])
    with pytest.raises(ConfigError, match="top must be >= 0"):
        read_warm_starts(["syn-old"], sources["old"], top=-1)


def test_a_study_not_made_by_adamtune_is_refused(sources: dict, tmp_path: Path) -> None:
    storage = copy_storage(sources["old"], tmp_path / "copy.db")
    optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(ConfigError, match="study 'foreign' was not created by adamtune"):
        read_warm_starts(["foreign"], storage)


def test_reads_a_study_in_postgresql(sources: dict, postgres_url: str) -> None:
    with pytest.raises(StorageError, match="holds no studies"):  # an empty database: no tables created
        read_warm_starts([f"{postgres_url}#syn-old"], sources["old"])
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        assert not sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()
    optuna.copy_study(from_study_name="syn-old", from_storage=sources["old"], to_storage=postgres_url)
    starts = read_warm_starts([f"{postgres_url}#syn-old"], sources["old"], top=3)
    # the copy has no confirmation stage (copy_study copies one study): the best trials, in order
    assert [s.params for s in starts] == [p for _, p in top_params(sources["old"], "syn-old", 3)]
    assert related_studies(postgres_url, "synthetic") == ["syn-old"]
    with pytest.raises(
        StorageError, match=r"no study named 'nope' in database postgresql\+psycopg://.*\(studies: syn-old\)"
    ):
        read_warm_starts([f"{postgres_url}#nope"], sources["old"])


# --------------------------------------------------------------------------- queueing


def test_enqueue_queues_waiting_trials_with_clipped_params_once(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'new.db'}"
    space = parse_space(
        {"lr": {"low": 1e-4, "high": 1e-2}, "warmup": {"low": 1, "high": 100}, "amsgrad": [False, True]}, "test"
    )
    spec = StudySpec(task="synthetic", study_name="new", epochs=2, batch_size=100, space=space)
    study = create_or_resume(spec, open_storage(storage))
    wild = AdamParams(lr=0.5, beta1=0.3, beta2=0.999, epsilon=1e-8, decay=0.0, warmup=0, amsgrad=True)
    tame = AdamParams(lr=1e-3, beta1=0.95, beta2=0.99, epsilon=1e-6, decay=1e-4, warmup=7)
    starts = [WarmStart(wild, "old trial 3 (confirmed)"), WarmStart(tame, "old trial 5")]
    assert enqueue_warm_starts(study, space, starts) == 2
    waiting = [t for t in study.get_trials() if t.state == TrialState.WAITING and WARM_ATTR in t.user_attrs]
    assert [t.user_attrs[WARM_ATTR] for t in waiting] == [
        {"params": wild.as_dict(), "origin": "old trial 3 (confirmed)"},
        {"params": tame.as_dict(), "origin": "old trial 5"},
    ]
    # clipped into the sampling bounds: lr to 1e-2, 1 - beta1 = 0.7 to 0.5, decay 0 to 1e-6, warmup 0 to 1
    assert waiting[0].system_attrs["fixed_params"] == {
        "lr": 1e-2,
        "one_minus_beta1": 0.5,
        "one_minus_beta2": pytest.approx(1e-3),
        "epsilon": 1e-8,
        "decay": 1e-6,
        "warmup": 1,
        "amsgrad": True,
    }
    tame_params = waiting[1].system_attrs["fixed_params"]
    assert tame_params == {
        "lr": 1e-3,
        "one_minus_beta1": pytest.approx(0.05),
        "one_minus_beta2": pytest.approx(0.01),
        "epsilon": 1e-6,
        "decay": 1e-4,
        "warmup": 7,
        "amsgrad": False,
    }
    # resuming with the same warm starts queues nothing more; a new origin is queued
    assert enqueue_warm_starts(study, space, starts) == 0
    assert enqueue_warm_starts(study, space, [*starts, WarmStart(tame, "other trial 1")]) == 1
    origins = [t.user_attrs[WARM_ATTR]["origin"] for t in study.get_trials() if WARM_ATTR in t.user_attrs]
    assert origins == ["old trial 3 (confirmed)", "old trial 5", "other trial 1"]
    trial = study.ask()  # Optuna hands out the queue in order: the baseline, then the warm starts
    trial = study.ask()
    assert trial.user_attrs[WARM_ATTR]["origin"] == "old trial 3 (confirmed)" and trial.params == {}
    assert trial.suggest_float("lr", 1e-4, 1e-2, log=True) == 1e-2


def test_warm_starts_read_and_queued_into_a_new_study_of_the_same_database(sources: dict, tmp_path: Path) -> None:
    storage = copy_storage(sources["old"], tmp_path / "shared.db")
    starts = read_warm_starts(parse_sources("syn-old"), storage)
    spec = StudySpec(task="synthetic", study_name="syn-new", epochs=2, batch_size=100)
    study = create_or_resume(spec, open_storage(storage))
    assert enqueue_warm_starts(study, spec.space, starts) == len(starts) >= 1
    assert enqueue_warm_starts(study, spec.space, read_warm_starts(["syn-old"], storage)) == 0
    marks = [
        t.user_attrs[WARM_ATTR]
        for t in study.get_trials()
        if t.state == TrialState.WAITING and WARM_ATTR in t.user_attrs
    ]
    assert [AdamParams.from_dict(m["params"]) for m in marks] == [s.params for s in starts]
    assert related_studies(storage, "synthetic") == ["syn-new", "syn-old"] and related_studies(storage, "digits") == []


# --------------------------------------------------------------------------- listings


def test_studies_task_lists_only_that_tasks_studies(sources: dict, tmp_path: Path) -> None:
    storage = copy_storage(sources["old"], tmp_path / "copy.db")
    create_or_resume(StudySpec(task="digits", study_name="digits-a", epochs=2, batch_size=64), open_storage(storage))
    rows = json.loads(invoke("studies", "--storage", storage, "--json").output)
    assert {row["study"] for row in rows} == {"digits-a", "syn-old"}
    result = invoke("studies", "--storage", storage, "--task", "synthetic", "--json")
    assert result.exit_code == 0, result.output
    assert [row for row in json.loads(result.output)] == [row for row in rows if row["study"] == "syn-old"]
    text = invoke("studies", "--storage", storage, "--task", "digits")
    assert text.exit_code == 0 and "digits-a: task digits" in text.output and "syn-old" not in text.output
    assert "adamtune search --task digits --warm-start digits-a" in text.output
    none = invoke("studies", "--storage", storage, "--task", "mnist-mlp")
    assert none.exit_code == 0 and "no study of task mnist-mlp in this storage" in none.output
    assert json.loads(invoke("studies", "--storage", storage, "--task", "mnist-mlp", "--json").output) == []


def test_tasks_counts_the_studies_of_each_task(sources: dict, workdir: Path) -> None:
    plain = invoke("tasks", "--json")  # no database here: the rows as before, and none is created
    assert plain.exit_code == 0 and all("studies" not in row for row in json.loads(plain.output))
    assert "studies:" not in invoke("tasks").output and not (workdir / "adamtune.db").exists()
    storage = copy_storage(sources["built"], workdir / "other.db")
    rows = {row["name"]: row for row in json.loads(invoke("tasks", "--json", "--storage", storage).output)}
    assert rows["synthetic"]["studies"] == ["rule"] and rows["digits"]["studies"] == []
    copy_storage(sources["old"], workdir / "adamtune.db")  # the default storage, when present
    create_or_resume(
        StudySpec(task="synthetic", study_name="synthetic", epochs=2, batch_size=100),
        open_storage("sqlite:///adamtune.db"),
    )
    text = invoke("tasks")
    assert text.exit_code == 0, text.output
    assert (
        "    studies: 2 (syn-old, synthetic); start from them: "
        "adamtune search --task synthetic --study synthetic-2 --warm-start syn-old,synthetic" in text.output
    )
    assert text.output.count("studies: ") == 1
    bad = invoke("tasks", "--storage", f"sqlite:///{workdir / 'junk.db'}")  # missing: no studies, no file
    assert bad.exit_code == 0 and "studies:" not in bad.output and not (workdir / "junk.db").exists()
    (workdir / "junk.db").write_bytes(b"not a database at all" * 10)  # unreadable: a warning, the tasks listed
    junk = invoke("tasks", "--storage", f"sqlite:///{workdir / 'junk.db'}")
    assert junk.exit_code == 0 and "synthetic: " in junk.output
    assert junk.stderr.startswith("Warning: cannot count the studies of each task: ") and "not a SQLite" in junk.stderr
