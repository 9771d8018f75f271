"""Faults found by killing things, each with its regression test: real ``adamtune`` processes, a SQLite
study file, short heartbeats (1 s beat, 3 s grace). Outcomes are asserted, never timings."""

from __future__ import annotations

import json
import signal
from collections import Counter
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from adamtune.cli.main import cli
from adamtune.storage.attr_keys import BASELINE_ATTR
from tests.trials.test_parallel import ConnectionKiller, finish, start, trials, wait_for

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def running_with_epochs(storage: str, baseline: bool | None = None) -> list:  # type: ignore[type-arg]
    """Running trials that have reported at least one epoch (so a signal lands mid-training)."""
    return [
        t
        for t in trials(storage)
        if t.state == TrialState.RUNNING
        and t.intermediate_values
        and (baseline is None or bool(t.user_attrs.get(BASELINE_ATTR)) == baseline)
    ]


def test_an_interrupted_baseline_is_retried_every_time_and_summary_finds_its_retry(workdir: Path) -> None:
    """SIGTERM during the baseline three times (once more than other trials are retried), then finish."""
    storage = f"sqlite:///{workdir}/adamtune.db"
    args = ("search", "--task", "synthetic", "--n-trials", "2", "--epochs", "15", "--batch-size", "4", "--no-tracking")
    for _ in range(3):
        process = start(*args, cwd=workdir)
        wait_for(lambda: running_with_epochs(storage, baseline=True), "the baseline training", 180)
        process.send_signal(signal.SIGTERM)
        code, stderr = finish(process)
        assert code == 130, stderr
    code, stderr = finish(start(*args, cwd=workdir), timeout=400)
    assert code == 0, stderr

    done = trials(storage)
    baselines = [t for t in done if t.user_attrs.get(BASELINE_ATTR)]
    assert [t.state for t in baselines] == [TrialState.FAIL] * 3 + [TrialState.COMPLETE]
    summary = json.loads(CliRunner().invoke(cli, ["summary", "--json"], catch_exceptions=False).output)
    assert summary[0]["baseline_trial"] == baselines[-1].number
    assert summary[0]["baseline_score"] is not None


def test_a_killed_worker_process_is_replaced_and_the_search_finishes_at_full_width(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/adamtune.db"
    args = ("search", "--task", "synthetic", "--n-trials", "4", "--epochs", "20", "--batch-size", "8")
    args = (*args, "--pruner", "none")
    process = start(*args, "--workers", "2", "--devices", "cpu", "--no-tracking", cwd=workdir)
    wait_for(lambda: len(running_with_epochs(storage)) == 2, "both workers training", 180)
    # The worker processes are forks of the search's fork server (pool.worker_context), its children.
    servers = [c for c in psutil.Process(process.pid).children() if "forkserver" in " ".join(c.cmdline())]
    assert len(servers) == 1
    workers = servers[0].children()
    assert len(workers) == 2
    workers[0].kill()
    code, stderr = finish(process, timeout=400)

    assert code == 0, stderr
    assert "was killed by signal 9; starting a new one" in stderr
    states = Counter(t.state for t in trials(storage))
    assert sum(states[s] for s in FINISHED) == 4 and states[TrialState.RUNNING] == 0, states
    assert states[TrialState.FAIL] == 1, states  # the killed worker's trial, failed as stale and retried


def test_sigint_stops_a_two_worker_search_started_in_the_background(workdir: Path) -> None:
    """A job started in the background from a script inherits SIGINT as ignored; kill -INT must still work."""
    storage = f"sqlite:///{workdir}/adamtune.db"
    args = ("search", "--task", "synthetic", "--n-trials", "30", "--epochs", "30", "--pruner", "none")
    process = start(
        *args,
        "--workers",
        "2",
        "--devices",
        "cpu",
        "--no-tracking",
        cwd=workdir,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    wait_for(lambda: running_with_epochs(storage), "a running trial", 180)
    process.send_signal(signal.SIGINT)
    code, stderr = finish(process, timeout=120)  # before the fix the search ran all 30 trials
    assert code == 130, stderr
    states = Counter(t.state for t in trials(storage))
    assert states[TrialState.RUNNING] == 0 and sum(states[s] for s in FINISHED) < 30, states


@pytest.mark.postgres
def test_the_database_going_away_mid_trial_requeues_the_trial_without_a_traceback(
    workdir: Path, postgres_url: str
) -> None:
    """Connections cut under running trials (as a PostgreSQL restart does): retried or re-queued, one line each."""
    args = ("search", "--task", "synthetic", "--n-trials", "5", "--epochs", "10", "--batch-size", "16")
    process = start(*args, "--pruner", "none", "--no-tracking", "--storage", postgres_url, cwd=workdir)
    wait_for(lambda: running_with_epochs(postgres_url), "a running trial")
    with ConnectionKiller(postgres_url, every=0.2) as killer:
        wait_for(lambda: process.poll() is not None or killer.killed >= 25, "25 killed connections", 300)
    code, stderr = finish(process, timeout=400)

    assert code == 0, stderr
    assert "Traceback" not in stderr and "AdminShutdown" not in stderr, stderr
    done = trials(postgres_url)
    states = Counter(t.state for t in done)
    assert sum(states[s] for s in FINISHED) == 5 and states[TrialState.RUNNING] == 0, states
    retried = {number for t in done for number in t.system_attrs.get("retry_history", [])}
    for trial in done:
        if trial.state == TrialState.FAIL:
            assert trial.number in retried, (trial.number, stderr)
