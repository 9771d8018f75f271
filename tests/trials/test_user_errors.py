"""What a user sees when their own ``fit`` is wrong (issue 27).

A ``fit`` that raises: its traceback once per search (the first failure), then one line per failure.
A ``fit`` that breaks its contract (never reports, or reports without the objective): adamtune's own
one-line error naming the fix, no traceback, and the search stops there with that trial FAIL.

Real parts: the search runs as a user runs it (``python -m adamtune`` in a subprocess, for the true
stderr), on a real SQLite study, with the user's module a file in the test's working directory. The
log relay of a multi-worker search is checked on real log records of a worker's format.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from adamtune.core.errors import ContractError
from adamtune.storage.outcomes import count_trials
from adamtune.trials.failures import FailureLog, FailureStreak
from adamtune.trials.objective import ERROR_ATTR

_NAMES = itertools.count()

MODULE = """
from torch import nn

import adamtune


def fit(trial):
    model = nn.Linear(2, 1)
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    for epoch in trial.epochs():
        {body}


task = adamtune.LoopTask(name="myloop", fit=fit, objective="mae", metrics=("loss",), default_epochs=1)
"""

BODIES = {
    "raises": 'raise ValueError("boom")',
    "silent": "pass  # trains, never reports",
    "no objective": "trial.report(loss=1.0)",
}


def write_module(directory: Path, behaviour: str) -> str:
    """A user's loop-task module whose ``fit`` does ``behaviour``; its ``module:task`` reference."""
    name = f"user_errors_{next(_NAMES)}"
    (directory / f"{name}.py").write_text(MODULE.format(body=BODIES[behaviour]))
    return f"{name}:task"


def search(directory: Path, task: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = ["search", "--task", task, "--n-trials", "3", "--epochs", "1", "--no-tracking", *extra]
    return subprocess.run(
        [sys.executable, "-m", "adamtune", *command], cwd=directory, capture_output=True, text=True, timeout=300
    )


def trials_of(directory: Path, task: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=task, storage=f"sqlite:///{directory}/adamtune.db").trials


def test_a_raising_fit_shows_its_traceback_once_then_one_line_per_failure(workdir: Path) -> None:
    task = write_module(workdir, "raises")
    result = search(workdir, task)
    assert result.returncode != 0
    stderr = result.stderr
    assert stderr.count("Traceback (most recent call last)") == 1, stderr
    first = stderr.split("trial 0 failed: ValueError: boom\nTraceback (most recent call last):\n", 1)[1]
    assert first.splitlines()[0].startswith(f'  File "{workdir}')  # the user's own frame, not adamtune's plumbing
    assert "trainer_server.py" not in stderr and "runner.py" not in stderr
    for number in (1, 2):
        assert f"trial {number} failed: ValueError: boom (traceback shown above for trial 0)\n" in stderr
    assert "3 trials in a row failed with errors" in stderr.splitlines()[-1]
    trials = trials_of(workdir, task)
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # nothing left RUNNING
    assert count_trials(trials).failed == 3 and count_trials(trials).running == 0
    assert all("ValueError: boom" in t.user_attrs[ERROR_ATTR] for t in trials)  # each keeps its own traceback


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "silent",
            "fit() returned without reporting any epoch: call trial.report(mae=...) once per epoch, "
            "in the loop over trial.epochs()",
        ),
        (
            "no objective",
            "trial.report(loss=...) must include the objective 'mae' (stored as val_mae): report it every "
            "epoch, e.g. trial.report(mae=..., loss=...)",
        ),
    ],
)
def test_a_broken_contract_is_one_line_and_stops_the_search(workdir: Path, behaviour: str, message: str) -> None:
    task = write_module(workdir, behaviour)
    result = search(workdir, task)
    assert result.returncode == ContractError.exit_code == 2
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert errors == [f"Error: task {task!r}: {message}"], result.stderr
    trials = trials_of(workdir, task)
    assert [t.state for t in trials] == [TrialState.FAIL]  # stopped at the first: the same code breaks every trial
    assert trials[0].user_attrs[ERROR_ATTR] == f"ContractError: task {task!r}: {message}"


@pytest.mark.slow
def test_a_multi_worker_search_with_a_broken_contract_ends_as_that_one_line(workdir: Path) -> None:
    task = write_module(workdir, "no objective")
    result = search(workdir, task, "--workers", "2", "--devices", "cpu,cpu", "--no-confirm")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "Error" in line or "ERROR" in line]
    assert len(errors) == 1 and errors[0].startswith(f"Error: task {task!r}: trial.report(loss=...)"), result.stderr
    trials = trials_of(workdir, task)
    assert {t.state for t in trials} == {TrialState.FAIL} and len(trials) <= 2  # one per worker at most


def worker_record(log: FailureLog, label: str, what: str, exc: BaseException) -> logging.LogRecord:
    """What a worker process puts on the pool's queue for a failure (``pool._process_main``'s format)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            record.msg, record.args = f"[{label} cpu] WARNING: {self.format(record)}", None
            records.append(record)

    logger = logging.getLogger("adamtune.trials.failures")
    handler = Keep()
    logger.addHandler(handler)
    try:
        log.log(what, exc)
    finally:
        logger.removeHandler(handler)
    (record,) = records
    return record


def raised(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_the_pool_prints_one_traceback_for_all_its_workers() -> None:
    w0, w1, parent = FailureLog(), FailureLog(), FailureLog()
    lines = [
        parent.relay(worker_record(w1, "w1", "trial 1", raised("boom"))),
        parent.relay(worker_record(w0, "w0", "trial 0", raised("boom"))),  # w0's own first traceback
        parent.relay(worker_record(w0, "w0", "trial 2", raised("bang"))),
    ]
    text = "\n".join(lines)
    assert text.count("Traceback (most recent call last)") == 1 and lines[0].startswith("[w1 cpu] WARNING: trial 1")
    assert lines[1] == "[w0 cpu] WARNING: trial 0 failed: ValueError: boom (traceback shown above for trial 1)"
    assert lines[2] == "[w0 cpu] WARNING: trial 2 failed: ValueError: bang (traceback shown above for trial 1)"


def test_a_contract_error_stops_the_worker_at_once_and_other_failures_count_to_three() -> None:
    failed = optuna.trial.create_trial(state=TrialState.FAIL)
    streak = FailureStreak()
    streak.note(failed, raised("boom"), "t")
    assert streak.count == 1
    with pytest.raises(ContractError, match="reported nothing"):
        streak.note(failed, ContractError("task 't': reported nothing"), "t")
