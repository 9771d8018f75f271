"""The Python API: ``adamtune.search`` runs the same study as ``adamtune search`` and returns a result that
answers what ``summary``, ``recommend`` and ``verify`` answer, with no subprocess of the user's own.

Real parts: SQLite study files, the ``synthetic`` task trained for real, the CLI run in-process through
click's CliRunner for the comparison. Nothing is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import adamtune
from adamtune.cli.main import cli
from adamtune.core.errors import AdamtuneError, ConfigError, StorageError


def test_a_notebook_style_search_reads_its_recommendation_verifies_and_prints_a_snippet(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/api.db"
    lines: list[str] = []
    result = adamtune.search(
        "synthetic", n_trials=6, epochs=2, pruner="none", storage=storage, tracking=False, on_log=lines.append
    )
    assert isinstance(result, adamtune.SearchResult) and result.study_name == "synthetic"
    assert result.outcome is not None and result.outcome.finished == 6 and result.outcome.target == 6
    summary = result.summary()
    cli_rows = json.loads(CliRunner().invoke(cli, ["summary", "--json", "--storage", storage]).output)
    assert [summary] == cli_rows  # the same data as `adamtune summary --json`
    assert result.confirmation == summary["confirmation"] and result.confirmation is not None
    if summary["rule"] == "defaults":
        assert result.recommendation is None
    else:
        assert result.recommendation == summary["recommended"]
    snippet = result.snippet("torch")
    assert "torch.optim" in snippet and "betas=" in snippet
    assert json.loads(result.snippet("json")) == json.loads(
        CliRunner().invoke(cli, ["recommend", "--format", "json", "--storage", storage]).output
    )
    verified = result.verify(seeds=2, device="cpu")
    assert verified["seeds"] and len(verified["seeds"]) == 2 and "verdict" in verified
    assert result.summary()["verify"]["verdict"] == verified["verdict"]  # stored on the study, as the CLI does
    frame = result.trials_dataframe()
    assert len(frame) >= 6 and "params_lr" in frame.columns

    again = adamtune.load(storage=storage)  # the storage's only study
    assert again.study_name == "synthetic" and again.outcome is None
    assert again.summary(importance=False)["recommended"] == result.summary(importance=False)["recommended"]


def test_a_second_call_resumes_the_same_study(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/api.db"
    common = {"epochs": 1, "pruner": "none", "storage": storage, "tracking": False, "confirm": False}
    first = adamtune.search("synthetic", n_trials=2, **common)
    second = adamtune.search("synthetic", n_trials=3, **common)
    assert first.outcome is not None and first.outcome.ran == 2
    assert second.outcome is not None and second.outcome.ran == 1 and second.outcome.finished == 3


def test_bad_input_raises_adamtune_errors_and_writes_nothing(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/api.db"
    with pytest.raises(AdamtuneError, match="unknown task"):
        adamtune.search("no-such-task", storage=storage)
    with pytest.raises(ConfigError, match="workers"):
        adamtune.search("synthetic", workers=0, storage=storage)
    with pytest.raises(ConfigError, match="n_trials"):
        adamtune.search("synthetic", n_trials=0, storage=storage)
    assert not (workdir / "api.db").exists()
    with pytest.raises(StorageError):
        adamtune.load("synthetic", storage=storage)
    assert not (workdir / "api.db").exists()


def test_the_public_names_are_exported_lazily_from_the_package() -> None:
    """``import adamtune`` stays light; each public name resolves to its module's object on first use."""
    import subprocess
    import sys

    code = (
        "import sys, adamtune; light = not any(m in sys.modules for m in ('torch', 'mlflow', 'optuna')); "
        "from adamtune.training import lightning; from adamtune import api; "
        "assert adamtune.AdamtuneCallback is lightning.AdamtuneCallback; "
        "assert adamtune.trainer_options is lightning.trainer_options; "
        "assert adamtune.search is api.search and adamtune.load is api.load; "
        "assert adamtune.SearchResult is api.SearchResult; "
        "assert {'Task', 'LoopTask', 'TrialContext', 'Fold', 'search', 'load'} <= set(dir(adamtune)); print(light)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
