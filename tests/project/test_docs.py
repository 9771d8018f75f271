"""The README's and the documentation's examples run as written.

Every ``python`` block in README.md and docs/ is run by a test here, or is marked as a fragment with an
HTML comment ``<!-- fragment: why -->`` on the line before it; every ``toml`` block parses; every
``adamtune ...`` command line in a ``bash`` block parses against the real command line (its commands and
options exist and its values convert).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from adamtune.cli.main import cli
from adamtune.core.config import build_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FRAGMENT = re.compile(r"<!-- fragment: .+ -->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page."""

    page: Path
    line: int
    language: str
    code: str
    marked_fragment: bool

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        line = text[: match.start()].count("\n") + 1
        found.append(Block(page, line, match.group(1), match.group(2), bool(FRAGMENT.match(before))))
    return found


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def page_block(page: str, language: str, first_line: str) -> str:
    """The code of the ``language`` block of ``page`` whose first line starts with ``first_line``."""
    for block in ALL_BLOCKS:
        if block.page == ROOT / page and block.language == language and block.code.startswith(first_line):
            return block.code
    raise AssertionError(f"no {language} block starting with {first_line!r} in {page}")


# The python blocks the tests below run, by (page, first line).
RUN = {
    ("README.md", "import adamtune"),
    ("docs/getting-started.md", "import adamtune"),
    ("docs/guides/own-loop.md", "# myloop.py"),
    ("docs/guides/lightning.md", "# mylightning.py"),
    ("docs/guides/own-task.md", "# mytask.py"),
    ("docs/guides/budgets.md", "import adamtune"),
}


def test_every_python_block_is_run_here_or_marked_as_a_fragment() -> None:
    unrun = [
        block.where
        for block in ALL_BLOCKS
        if block.language == "python"
        and not block.marked_fragment
        and (str(block.page.relative_to(ROOT)), block.code.splitlines()[0]) not in RUN
    ]
    assert not unrun, f"python blocks neither run by tests/project/test_docs.py nor marked as fragments: {unrun}"


def test_every_toml_block_parses() -> None:
    tomls = [block for block in ALL_BLOCKS if block.language == "toml"]
    assert tomls
    for block in tomls:
        tomllib.loads(block.code)


def command_lines() -> list[tuple[str, list[str]]]:
    """Every ``adamtune ...`` command in the bash blocks, as (where, arguments after ``adamtune``)."""
    found = []
    for block in ALL_BLOCKS:
        if block.language != "bash":
            continue
        for raw in block.code.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|;|\|", raw.split(" #", 1)[0]):
                words = shlex.split(part.strip())
                if len(words) > 1 and words[0] == "adamtune":
                    found.append((block.where, [w for w in words[1:] if not w.startswith(">")]))
    return found


def test_every_documented_command_line_parses() -> None:
    lines = command_lines()
    assert len(lines) > 10
    for where, args in lines:
        assert args[0] in cli.commands, f"{where}: unknown command {args[0]!r}"
        command = cli.commands[args[0]]
        try:
            command.make_context(args[0], list(args[1:]))
        except Exception as exc:  # click's usage errors
            raise AssertionError(f"{where}: 'adamtune {shlex.join(args)}' does not parse: {exc}") from exc


def search_summary_verify(task: str, *search: str) -> dict:
    """Run the guide's three commands on ``task`` (short); return verify's JSON."""
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
    (workdir / "myloop.py").write_text(page_block("docs/guides/own-loop.md", "python", "# myloop.py"))
    record = search_summary_verify("myloop:task", "--epochs", "2")
    assert record["metric"] == "test_mae" and set(record["recommended"]) == {"test_mae", "test_loss", "diverged"}


def test_lightning_example_runs_to_a_summary_and_a_verify(workdir: Path) -> None:
    (workdir / "mylightning.py").write_text(page_block("docs/guides/lightning.md", "python", "# mylightning.py"))
    record = search_summary_verify("mylightning:task", "--epochs", "2")
    assert record["metric"] == "test_mae" and set(record["recommended"]) == {"test_mae", "test_loss", "diverged"}


def test_custom_task_example_runs(workdir: Path) -> None:
    (workdir / "mytask.py").write_text(page_block("docs/guides/own-task.md", "python", "# mytask.py"))
    result = CliRunner().invoke(
        cli, ["search", "--task", "mytask:make_task", "--n-trials", "2", "--epochs", "1", "--no-tracking"]
    )
    assert result.exit_code == 0, result.output
    summary = CliRunner().invoke(cli, ["summary", "--task", "mytask:make_task", "--json"])
    assert summary.exit_code == 0, summary.output
    assert '"task": "mytask:make_task"' in summary.output


def test_study_file_example_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "example.toml"
    path.write_text(page_block("docs/guides/search-space.md", "toml", "[study]"))
    spec = build_spec(None, path)
    assert spec.task == "digits" and spec.seed == 0
    assert spec.space["beta2"].value == 0.999 and spec.space["decay"].value == 0.0
    assert spec.space.extra_dimensions() == ["weight_decay", "amsgrad"]


def run_printing(code: str, name: str) -> list[str]:
    printed: list[str] = []
    exec(compile(code, name, "exec"), {"print": lambda *a: printed.append(" ".join(map(str, a)))})
    return printed


def test_readme_python_example_runs_without_a_subprocess(workdir: Path) -> None:
    """The README's Python block, on a smaller budget (4 two-epoch trials, 2 verify seeds, no MLflow):
    the only edits are to those numbers and to tracking."""
    code = page_block("README.md", "python", "import adamtune")
    code = code.replace("n_trials=30)", "n_trials=4, epochs=2, tracking=False)").replace("seeds=5", "seeds=2")
    assert "n_trials=4" in code and "seeds=2" in code
    printed = run_printing(code, "README-python-example")
    assert len(printed) == 4 and "torch.optim" in printed[-1]


def test_getting_started_python_example_runs_as_written(workdir: Path) -> None:
    printed = run_printing(page_block("docs/getting-started.md", "python", "import adamtune"), "getting-started")
    assert len(printed) == 3
    counts = eval(printed[1])  # the summary's trial counts, a dict
    assert sum(counts[k] for k in ("complete", "pruned", "diverged")) == 6
    assert '"lr"' in printed[2]


def test_budgets_python_example_runs_as_written(workdir: Path) -> None:
    printed = run_printing(page_block("docs/guides/budgets.md", "python", "import adamtune"), "budgets")
    assert printed[0] == "time" and len(printed) == 2


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 15 * 1024
