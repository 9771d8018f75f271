"""The README's examples run as written: the custom task, and the study file format."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from adamtune.cli import cli
from adamtune.config import build_spec

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def code_block(after_heading: str, language: str) -> str:
    """The first ``language`` code block after ``after_heading`` in the README."""
    section = README[README.index(after_heading) :]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


def test_custom_task_example_runs(workdir: Path) -> None:
    (workdir / "mytask.py").write_text(code_block("## Your own task", "python"))
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
