"""``adamtune summary`` on an 80-column terminal: no word or number is broken across lines (issue 27).

The worst case is a summary built directly (long scores, a negative gain, an interval of tiny numbers,
12 seeds, every status), drawn by Rich at 80 columns; then the CLI on a real ``synthetic`` search with
``COLUMNS=80``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from adamtune.cli.main import cli
from adamtune.confirm.ranking import Candidate
from adamtune.core.space import AdamParams
from adamtune.report.render import STATUSES, render_summary
from adamtune.report.summary import StudySummary
from adamtune.storage.outcomes import Counts

PARAMS = AdamParams(lr=1.23456e-05, beta1=0.8, beta2=0.99990123, epsilon=3.456e-09, decay=1e-3)


def finalist(trial: int, status: str, seeds: int = 12) -> dict:
    return {
        "trial": trial,
        "params": {},
        "search_score": 0.00030261234,
        "confirmed_score": 1.2345e-05,
        "seeds": seeds,
        "gain": -0.0001234,
        "relative_gain": -0.5,
        "interval": [-0.00123, 0.000345],
        "status": status,
    }


def worst_case(rule: str) -> StudySummary:
    confirmation = {
        "status": "confirmed",
        "validation": "folds",
        "metric": "val_loss",
        "interval": "paired t, 95%",
        "cost_share": 0.86,
        "baseline": {"confirmed_score": 0.000123456, "seeds": 12},
        "finalists": [finalist(5, "kept"), finalist(4, "dropped"), finalist(6, "racing"), finalist(7, "not raced", 0)],
        "recommended_trial": 5 if rule == "confirmed" else None,
        "best_candidate": 4,
    }
    return StudySummary(
        study="a-study-name",
        task="synthetic",
        objective="val_loss",
        direction="minimize",
        epochs=3,
        batch_size=100,
        counts=Counts(complete=8),
        recommended=Candidate(trial=5, params=PARAMS, score=1.23456e-05, value=1.2e-05),
        baseline=Candidate(trial=0, params=PARAMS, score=0.7235, value=0.7235, baseline=True),
        confirmation=confirmation,
        rule=rule,
    )


def drawn(row: StudySummary) -> str:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render_summary(row))
    return console.export_text()


def test_no_status_header_or_number_is_broken_at_80_columns() -> None:
    for rule, statuses in (("confirmed", ["recommended", "dropped"]), ("defaults", ["kept", "unconfirmed"])):
        text = drawn(worst_case(rule))
        lines = text.splitlines()
        assert max(len(line.rstrip()) for line in lines) <= 80, text
        rows = {line.split()[0]: line for line in lines if line.startswith(("  #", "  defaults"))}
        assert rows["defaults"].rstrip().endswith(" baseline"), text
        for trial, status in zip(("#5", "#4"), statuses, strict=True):
            assert rows[trial].rstrip().endswith(f" {status}"), text
            assert "0.0003026" in rows[trial] and "1.234e-05" in rows[trial] and "-0.000123" in rows[trial], text
        assert rows["#6"].rstrip().endswith(" racing") and rows["#7"].rstrip().endswith(" not raced"), text
        header = next(line for line in lines if line.lstrip().startswith("arm "))
        assert header.split() == ["arm", "search", "confirmed", "gain", "95%", "CI", "n", "status"], text
        assert "-0.0012 to" in text and "+0.00034" in text  # a long interval wraps at its " to ", whole


def test_summary_through_the_cli_at_80_columns(workdir: Path) -> None:
    runner = CliRunner()
    args = ["--task", "synthetic", "--n-trials", "4", "--epochs", "2", "--pruner", "none", "--seed", "3"]
    assert runner.invoke(cli, ["search", *args, "--no-tracking"]).exit_code == 0
    result = runner.invoke(cli, ["summary", "--task", "synthetic"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, result.output
    finalists = json.loads(runner.invoke(cli, ["summary", "--task", "synthetic", "--json"]).output)[0]
    trials = [f["trial"] for f in finalists["confirmation"]["finalists"]]
    rows = [line for line in lines if line.startswith(("  defaults", *(f"  #{t} " for t in trials)))]
    assert len(rows) == len(trials) + 1, result.output
    for row in rows:  # each row ends with a whole status word
        assert any(row.rstrip().endswith(f" {status}") for status in STATUSES), result.output
