"""The README's examples run as written: the loop task, the Lightning task, the custom task, the study file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from adamtune.cli.main import cli
from adamtune.core.config import build_spec

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def code_block(after_heading: str, language: str) -> str:
    """The first ``language`` code block after ``after_heading`` in the README."""
    section = README[README.index(after_heading) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def search_summary_verify(task: str, *search: str) -> dict:
    """Run the README's three commands on ``task`` (short); return verify's JSON."""
    runner = CliRunner()
    result = runner.invoke(cli, ["search", "--task", task, "--n-trials", "3", "--no-tracking", *search])
    assert result.exit_code == 0, result.output
    summary = runner.invoke(cli, ["summary", "--task", task, "--json"])
    assert summary.exit_code == 0, summary.output
    assert json.loads(summary.output)[0]["objective"] == "val_mae"
    confirmation = json.loads(summary.output)[0]["confirmation"]
    assert confirmation["validation"] == ("folds" if task.startswith("mylightning") else "fixed")
    verified = runner.invoke(
        cli, ["verify", "--task", task, "--seeds", "2", "--device", "cpu", "--json", "--no-tracking"]
    )
    assert verified.exit_code == 0, verified.output
    return json.loads(verified.stdout)


def test_loop_task_example_runs_to_a_summary_and_a_verify(workdir: Path) -> None:
    (workdir / "myloop.py").write_text(code_block("### Your own training loop", "python"))
    record = search_summary_verify("myloop:task", "--epochs", "2")
    assert record["metric"] == "test_mae" and set(record["recommended"]) == {"test_mae", "test_loss", "diverged"}


def test_lightning_example_runs_to_a_summary_and_a_verify(workdir: Path) -> None:
    pytest.importorskip("lightning")
    (workdir / "mylightning.py").write_text(code_block("### PyTorch Lightning", "python"))
    record = search_summary_verify("mylightning:task", "--epochs", "2")
    assert record["metric"] == "test_mae" and set(record["recommended"]) == {"test_mae", "test_loss", "diverged"}


def test_custom_task_example_runs(workdir: Path) -> None:
    (workdir / "mytask.py").write_text(code_block("### Or let adamtune train", "python"))
    result = CliRunner().invoke(
        cli, ["search", "--task", "mytask:make_task", "--n-trials", "2", "--epochs", "1", "--no-tracking"]
    )
    assert result.exit_code == 0, result.output
    summary = CliRunner().invoke(cli, ["summary", "--task", "mytask:make_task", "--json"])
    assert summary.exit_code == 0, summary.output
    assert '"task": "mytask:make_task"' in summary.output


def test_study_file_example_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(code_block("## Study files", "toml"))
    spec = build_spec(None, path)
    assert spec.task == "digits" and spec.seed == 0
    assert spec.space["beta2"].value == 0.999 and spec.space["decay"].value == 0.0
    assert spec.space.extra_dimensions() == ["weight_decay", "amsgrad"]


def test_python_example_runs_without_a_subprocess(workdir: Path) -> None:
    """The Quick start's Python block, on a smaller budget (4 two-epoch trials, 2 verify seeds, no MLflow):
    the only edits are to those numbers and to tracking."""
    code = code_block("**From Python**", "python")
    code = code.replace("n_trials=30)", "n_trials=4, epochs=2, tracking=False)").replace("seeds=5", "seeds=2")
    assert "n_trials=4" in code and "seeds=2" in code
    printed: list[str] = []
    exec(compile(code, "README-python-example", "exec"), {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    assert len(printed) == 4 and "torch.optim" in printed[-1]
