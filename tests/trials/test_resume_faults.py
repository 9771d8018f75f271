"""Long trials survive their workers: kill, interrupt or cut the database, and the retry resumes from the
last checkpoint. Real ``adamtune`` processes, SQLite files, this machine's PostgreSQL server (connections
cut with ``ConnectionKiller``; the server itself is never restarted), a local MLflow store, Optuna's
file-system artifact store. Heartbeats are 1 s beat / 3 s grace. Outcomes are asserted, never timings.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from adamtune.core.config import build_spec
from adamtune.core.space import AdamParams
from adamtune.storage.attr_keys import PARAMS_ATTR, RUN_ID_ATTR, SEED_ATTR, WORKER_ATTR
from adamtune.storage.backends import open_storage
from adamtune.storage.study import create_or_resume
from adamtune.tasks import resolve_task
from adamtune.training.checkpoint import CHECKPOINT_ATTR, RESUMED_ATTR
from adamtune.training.train import train
from tests.trials.test_parallel import ConnectionKiller, finish, start, trials, wait_for

pytestmark = pytest.mark.slow

# Trials of ~4 s (synthetic, 100 epochs): the tests poll the study for a trial that is running and has a
# checkpoint, then kill or interrupt it; with ~1 s trials (30 epochs) a slow poll could miss the window.
EPOCHS, BATCH = 100, 32
LONG_EPOCHS = 150


def create_study(storage: str, n_trials: int, epochs: int = EPOCHS) -> None:
    overrides = {"n_trials": n_trials, "epochs": epochs, "batch_size": BATCH, "pruner": "none", "checkpoint_every": 1}
    spec = build_spec("synthetic", None, None, overrides)
    create_or_resume(spec.with_task_defaults(epochs, BATCH), open_storage(storage))


def drain(process: subprocess.Popen[str]) -> list[threading.Thread]:
    """Read ``process``'s stdout and stderr until they close, each on a background thread (kept nowhere)."""

    def read(stream: Any) -> None:
        for _line in stream:
            pass

    threads = [threading.Thread(target=read, args=(s,), daemon=True) for s in (process.stdout, process.stderr) if s]
    for thread in threads:
        thread.start()
    return threads


def checkpointed(storage: str, worker: str | None = None, epoch: int = 3) -> list:  # type: ignore[type-arg]
    """Running trials (of ``worker``) whose latest checkpoint is at ``epoch`` or later."""
    return [
        t
        for t in trials(storage)
        if t.state == TrialState.RUNNING
        and (worker is None or t.user_attrs.get(WORKER_ATTR) == worker)
        and t.user_attrs.get(CHECKPOINT_ATTR, {}).get("epoch", 0) >= epoch
    ]


def uninterrupted_val_losses(trial, epochs: int = EPOCHS) -> list[float]:  # type: ignore[no-untyped-def]
    """The per-epoch val_loss the trial's settings and seed give when nothing interrupts them (in-process)."""
    task = resolve_task("synthetic")
    params = AdamParams(**trial.user_attrs[PARAMS_ATTR])
    curves = train(
        task,
        task.load_data(None),
        params,
        device="cpu",
        epochs=epochs,
        batch_size=BATCH,
        seed=trial.user_attrs[SEED_ATTR],
    )
    return [e.val_loss for e in curves.epochs]


def assert_resumed(done: list, killed, last_saved: int, epochs: int = EPOCHS) -> object:  # type: ignore[no-untyped-def, type-arg]
    """The killed trial's one retry resumed from its last checkpoint and its curve is the uninterrupted one."""
    retries = [t for t in done if killed.number in t.system_attrs.get("retry_history", [])]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE, [(t.number, t.state) for t in done]
    retry = retries[0]
    assert retry.user_attrs[RESUMED_ATTR] == last_saved > 0
    assert retry.params == killed.params and retry.user_attrs[SEED_ATTR] == killed.user_attrs[SEED_ATTR]
    values = [retry.intermediate_values[e] for e in range(1, epochs + 1)]  # re-reported: the whole curve
    assert values == pytest.approx(uninterrupted_val_losses(retry, epochs), rel=1e-5)
    return retry


def assert_one_curve_per_trial(done: list, tracking: str) -> None:  # type: ignore[type-arg]
    from mlflow import MlflowClient

    from adamtune.storage.outcomes import trial_state
    from adamtune.tracking.trial_run import RUN_STATUS

    client = MlflowClient(tracking_uri=tracking)
    for trial in done:
        if trial.state == TrialState.COMPLETE:
            run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
            # A trial of random settings (not the retried baseline) may have diverged: COMPLETE in Optuna, its
            # run FAILED, its curve perhaps cut short.
            state = trial_state(trial)
            assert run.info.status == RUN_STATUS[state], (trial.number, state)
            if state == "diverged":
                continue
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), (trial.number, steps)
        elif RUN_ID_ATTR in trial.user_attrs:
            assert client.get_run(trial.user_attrs[RUN_ID_ATTR]).info.status != "RUNNING"


def test_sigkill_mid_trial_the_retry_resumes_from_the_checkpoint(workdir: Path) -> None:
    storage, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    create_study(storage, n_trials=2)
    common = ("--study", "synthetic", "--storage", storage, "--tracking-uri", tracking, "--device", "cpu")
    victim = start("worker", *common, "--name", "victim", cwd=workdir)
    wait_for(lambda: checkpointed(storage, "victim"), "a checkpointed trial of the victim", 180)
    victim.kill()
    victim.communicate()
    (killed,) = [t for t in trials(storage) if t.state == TrialState.RUNNING]
    last_saved = killed.user_attrs[CHECKPOINT_ATTR]["epoch"]

    code, stderr = finish(start("worker", *common, "--name", "survivor", cwd=workdir))

    assert code == 0, stderr
    done = trials(storage)
    states = Counter(t.state for t in done)
    assert states[TrialState.COMPLETE] == 2 and states[TrialState.RUNNING] == 0, states
    assert_resumed(done, killed, last_saved)
    assert_one_curve_per_trial(done, tracking)
    assert not list((workdir / "adamtune-checkpoints").iterdir())  # finished trials' checkpoints removed


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "ctrl-c"])
def test_an_interrupted_search_rerun_resumes_the_trial_losing_no_saved_epoch(workdir: Path, signum: int) -> None:
    storage, tracking = f"sqlite:///{workdir}/adamtune.db", f"sqlite:///{workdir}/mlflow.db"
    args = ("search", "--task", "synthetic", "--n-trials", "1", "--epochs", str(EPOCHS), "--batch-size", str(BATCH))
    args = (*args, "--pruner", "none", "--checkpoint-every", "1", "--tracking-uri", tracking)
    process = start(*args, cwd=workdir)
    wait_for(lambda: checkpointed(storage), "a checkpointed trial", 180)
    process.send_signal(signum)
    code, stderr = finish(process)
    assert code == 130, stderr
    (interrupted,) = [t for t in trials(storage) if t.state == TrialState.FAIL]
    last_saved = interrupted.user_attrs[CHECKPOINT_ATTR]["epoch"]

    code, stderr = finish(start(*args, cwd=workdir))

    assert code == 0, stderr
    done = trials(storage)
    assert Counter(t.state for t in done) == {TrialState.FAIL: 1, TrialState.COMPLETE: 1}
    assert_resumed(done, interrupted, last_saved)
    assert_one_curve_per_trial(done, tracking)


def test_kills_at_random_moments_leave_no_trial_running_once_the_grace_period_passed(workdir: Path) -> None:
    storage = f"sqlite:///{workdir}/adamtune.db"
    args = ("search", "--task", "synthetic", "--n-trials", "40", "--epochs", "2", "--pruner", "none")
    args = (*args, "--checkpoint-every", "1", "--no-tracking")
    chance = random.Random(13)
    for _ in range(6):  # each kill lands anywhere: between trials, right after one was created, mid-epoch
        process = start(*args, cwd=workdir)
        wait_for(lambda: trials(storage), "the study", 120)
        time.sleep(chance.uniform(0.0, 2.5))
        process.kill()
        process.communicate()
    time.sleep(3.5)  # the grace period
    code, stderr = finish(start("cleanup", "--study", "synthetic", "--storage", storage, cwd=workdir))
    assert code == 0, stderr
    assert not [t for t in trials(storage) if t.state == TrialState.RUNNING]

    code, stderr = finish(start(*args, cwd=workdir), timeout=400)
    assert code == 0, stderr
    states = Counter(t.state for t in trials(storage))
    assert states[TrialState.COMPLETE] == 40 and states[TrialState.RUNNING] == 0, states


@pytest.mark.postgres
def test_a_worker_on_another_machine_resumes_a_dead_worker_s_trial_through_the_shared_store(
    workdir: Path, postgres_url: str
) -> None:
    """Two "machines" (separate working directories, so separate local defaults) share only the database
    and the checkpoint store; connections are cut under the first, then it dies mid-trial."""
    shared = workdir / "shared-store"
    machine_a, machine_b = workdir / "a", workdir / "b"
    machine_a.mkdir(), machine_b.mkdir()
    # Trials long enough (~6 s) that the victim is still mid-trial when the killer has cut 10 connections
    # (~3 s): with the file's 30 epochs (~1.2 s) both trials could end before, leaving none to resume.
    create_study(postgres_url, n_trials=2, epochs=LONG_EPOCHS)
    common = ("--study", "synthetic", "--storage", postgres_url, "--no-tracking", "--device", "cpu")
    common = (*common, "--checkpoint-store", str(shared))
    victim = start("worker", *common, "--name", "victim", cwd=machine_a)
    # Its output is read as it comes: the database errors it reports under the killer could otherwise fill
    # the pipe and block the victim on a write (the test would then wait for a checkpoint that never comes).
    drained = drain(victim)
    wait_for(lambda: checkpointed(postgres_url, "victim", epoch=1), "the victim's first checkpoint", 180)
    with ConnectionKiller(postgres_url, every=0.3) as killer:
        wait_for(lambda: killer.killed >= 10, "10 killed connections", 120)
    wait_for(lambda: checkpointed(postgres_url, "victim", epoch=4), "a later checkpoint of the victim", 180)
    victim.kill()
    victim.wait()
    for thread in drained:
        thread.join(10)
    (killed,) = [t for t in trials(postgres_url) if t.state == TrialState.RUNNING]
    last_saved = killed.user_attrs[CHECKPOINT_ATTR]["epoch"]

    code, stderr = finish(start("worker", *common, "--name", "other-machine", cwd=machine_b))

    assert code == 0, stderr
    done = trials(postgres_url)
    states = Counter(t.state for t in done)
    assert states[TrialState.COMPLETE] == 2 and states[TrialState.RUNNING] == 0, states
    retry = assert_resumed(done, killed, last_saved, LONG_EPOCHS)
    assert retry.user_attrs[WORKER_ATTR] == "other-machine"
    assert not (machine_b / "adamtune-checkpoints").exists()  # it used the shared store, not a local default
    assert not list(shared.iterdir())
