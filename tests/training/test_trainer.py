"""The trainer process (trainer.py, trainer_process.py, trainer_client.py): the same trials as in one process.

Real parts: real trainer processes (``python -m adamtune.trainer_process``), real searches through the
CLI on real SQLite studies, real signals (SIGKILL to the trainer process). Nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import psutil
import pytest
from click.testing import CliRunner

from adamtune.cli.main import cli
from adamtune.core.errors import DataError, DeviceError, TaskError
from adamtune.core.space import AdamParams
from adamtune.storage.outcomes import count_trials, trial_state
from adamtune.training.context import TrialContext
from adamtune.training.stops import TrialPruned
from adamtune.training.trainer import TaskInfo, TrainingError, trainer_kind
from adamtune.training.trainer_client import ProcessTrainer
from adamtune.trials.objective import ERROR_ATTR
from tests.loop_tasks import write_task

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def search(workdir: Path, *args: str, trainer: str) -> optuna.Study:
    """``adamtune search`` in ``workdir`` with ``ADAMTUNE_TRAINER=trainer``; the study it made."""
    env = {**ENV, "ADAMTUNE_TRAINER": trainer}
    done = subprocess.run(
        [sys.executable, "-m", "adamtune", "search", *args, "--no-tracking"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return optuna.load_study(study_name="digits", storage=f"sqlite:///{workdir}/adamtune.db")


def test_a_trainer_process_searches_exactly_as_one_process(tmp_path: Path) -> None:
    """Same seeds, same settings sampled, same trials pruned at the same epochs, same curves (Hyperband,
    whose answers reach the built-in trainer late in a trainer process)."""
    runs = {}
    for kind in ("inline", "process"):
        (tmp_path / kind).mkdir()
        args = ("--task", "digits", "--n-trials", "14", "--epochs", "9", "--seed", "3", "--no-confirm")
        runs[kind] = search(tmp_path / kind, *args, trainer=kind).trials
    inline, process = runs["inline"], runs["process"]
    assert len(inline) == len(process) == 14
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in inline)  # the comparison covers pruning
    for a, b in zip(inline, process, strict=True):
        assert (a.state, a.params) == (b.state, b.params), a.number
        assert sorted(a.intermediate_values) == sorted(b.intermediate_values), a.number
        assert list(a.intermediate_values.values()) == pytest.approx(list(b.intermediate_values.values()), rel=1e-5)


def test_a_late_prune_answer_stops_the_built_in_trainer_at_its_epoch(tmp_path: Path) -> None:
    """The worker answers "prune" for epoch 2 a long while after the report: the trainer process trained on
    meanwhile, yet the run ends pruned with the curve of epochs 1-2 only."""
    trainer = ProcessTrainer("digits", tmp_path, "cpu")
    reported = []

    def on_epoch(epoch: int, metrics: object, diverged: bool) -> bool:
        reported.append(epoch)
        if epoch == 2:
            time.sleep(0.5)  # several epochs of digits
            return True
        return False

    try:
        trainer.wait_ready()
        context = TrialContext(
            params=AdamParams(),
            n_epochs=8,
            batch_size=32,
            seed=0,
            device="cpu",
            objective="loss",
            number=5,
            on_epoch=on_epoch,
        )
        context.prune_epochs = frozenset({2, 6})
        with pytest.raises(TrialPruned):
            trainer.run(context)
    finally:
        trainer.close()
    assert reported == [1, 2]
    assert context.state == "pruned" and [epoch for epoch, _ in context.history] == [1, 2]


def test_preparation_errors_are_the_same_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "broken_task.py"
    bad.write_text("raise ImportError('a module this task needs is missing')\n")
    cases = [
        ("no_such_module_here:task", "cpu", TaskError, "no_such_module_here"),
        ("digits", "cuda:7", DeviceError, "cuda:7"),
        ("mnist-logreg", "cpu", DataError, "MNIST"),
    ]
    for task, device, error, fragment in cases:
        trainer = ProcessTrainer(task, tmp_path / "data", device)
        try:
            with pytest.raises(error, match=fragment):
                trainer.wait_ready()
        finally:
            trainer.close()


def test_training_errors_arrive_with_their_type_and_traceback(workdir: Path) -> None:
    task = write_task(workdir, behaviour={4: "raise"})  # imported by the trainer process from its directory
    trainer = ProcessTrainer(task, None, "cpu")
    try:
        assert trainer.info.is_loop and trainer.info.objective == "mae"
        context = TrialContext(
            params=AdamParams(), n_epochs=3, batch_size=32, seed=1, device="cpu", objective="mae", number=4
        )
        with pytest.raises(TrainingError) as raised:
            trainer.run(context)
    finally:
        trainer.close()
    assert raised.value.kind == "RuntimeError" and "boom in the user's fit" in str(raised.value)
    assert (
        "in fit" in raised.value.traceback_text and "Traceback (most recent call last)" in raised.value.traceback_text
    )
    assert [epoch for epoch, _ in context.history] == [1]  # what it reported before it raised


def test_a_killed_trainer_process_fails_its_trial_and_a_new_one_trains_the_next(workdir: Path) -> None:
    task = write_task(workdir, behaviour={2: "slow"}, epochs=6)  # trial 2: ~3 s
    command = [sys.executable, "-m", "adamtune", "search", "--task", task, "--study", "kill", "--n-trials", "5"]
    command += ["--pruner", "none", "--no-confirm", "--no-tracking"]
    process = subprocess.Popen(command, cwd=workdir, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{workdir}/adamtune.db"
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        try:
            running = optuna.load_study(study_name="kill", storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)
            )
        except Exception:
            continue
        if any(t.number == 2 for t in running):
            time.sleep(0.5)
            children = psutil.Process(process.pid).children()
            trainer = next(c for c in children if "adamtune.training.trainer_server" in " ".join(c.cmdline()))
            trainer.send_signal(signal.SIGKILL)
            killed = trainer.pid
    _, stderr = process.communicate(timeout=300)
    assert killed is not None, stderr
    assert process.returncode == 0, stderr
    trials = optuna.load_study(study_name="kill", storage=storage).trials
    assert count_trials(trials).finished == 5 and not any(t.state.name == "RUNNING" for t in trials)
    lost = trials[2]
    assert trial_state(lost) == "failed" and "the trainer process exited (killed by signal SIGKILL)" in stderr
    assert "TrainerLost" in lost.user_attrs[ERROR_ATTR]
    assert stderr.count("Traceback") == 0  # adamtune's own plumbing is no traceback for the user


PROBE = """
import sys
from adamtune.cli.main import cli
try:
    cli(sys.argv[1:])
except SystemExit:
    print("torch imported here:", "torch" in sys.modules, file=sys.stderr)
    raise
"""


def test_the_command_process_never_imports_torch(workdir: Path) -> None:
    """With a trainer process the command keeps the study and MLflow's queue; torch lives in the trainer."""
    task = write_task(workdir)
    command = [sys.executable, "-c", PROBE, "search", "--task", task, "--study", "light", "--n-trials", "3"]
    env = {**ENV, "ADAMTUNE_TRAINER": "process", "PYTHONPATH": f"{workdir}{os.pathsep}{ENV['PYTHONPATH']}"}
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torch imported here: False" in done.stderr
    assert "confirm baseline seed" in done.stderr  # the confirmation stage trained there too


def test_prints_of_the_users_fit_reach_the_commands_output(workdir: Path) -> None:
    module = workdir / "printing_task.py"
    module.write_text(
        (workdir / write_task(workdir).split(":")[0])
        .with_suffix(".py")
        .read_text()
        .replace(
            "        trial.report(loss=mse, mae=mae)",
            "        print(f'epoch {epoch} of trial {trial.number}')\n        trial.report(loss=mse, mae=mae)",
        )
    )
    runner = CliRunner()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAMTUNE_TRAINER", "process")
        patch.syspath_prepend(str(workdir))
        result = runner.invoke(
            cli, ["search", "--task", "printing_task:task", "--study", "p", "--n-trials", "2", "--no-confirm"]
        )
    assert result.exit_code == 0, result.output
    assert "epoch 3 of trial 1" in result.output


def test_where_a_search_trains() -> None:
    assert trainer_kind(2) == "inline" and trainer_kind(1, batch_trials=4) == "inline"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADAMTUNE_TRAINER", "inline")
        assert trainer_kind(1) == "inline"
        patch.setenv("ADAMTUNE_TRAINER", "process")
        assert trainer_kind(1) == "process" and trainer_kind(3) == "inline"


def test_task_info_carries_what_the_study_needs() -> None:
    from adamtune.tasks import resolve_task

    info = TaskInfo.of(resolve_task("diabetes"))
    assert info.is_loop and info.objective == "mae" and info.direction_of("mae") == "minimize"
    assert info.default_epochs >= 1 and "loss" in info.metric_names


def test_interrupting_the_worker_stops_the_run_in_the_trainer_process(tmp_path: Path) -> None:
    """A KeyboardInterrupt in the worker while the trainer trains (Ctrl-C): the run stops there and the
    interrupt is raised here, with the context holding what was reported."""
    assert threading.current_thread() is threading.main_thread()  # where Python raises KeyboardInterrupt
    trainer = ProcessTrainer("digits", tmp_path, "cpu")

    def on_epoch(epoch: int, metrics: object, diverged: bool) -> bool:
        if epoch == 2:
            signal.raise_signal(signal.SIGINT)
        return False

    try:
        trainer.wait_ready()
        context = TrialContext(
            params=AdamParams(),
            n_epochs=200,
            batch_size=32,
            seed=0,
            device="cpu",
            objective="loss",
            number=1,
            on_epoch=on_epoch,
        )
        context.prune_epochs = frozenset()
        with pytest.raises(KeyboardInterrupt):
            trainer.run(context)
        assert context.state == "running" and 2 <= len(context.history) < 200
        again = TrialContext(params=AdamParams(), n_epochs=2, batch_size=32, seed=0, device="cpu", objective="loss")
        trainer.run(again)  # the same trainer process trains the next run
        assert [epoch for epoch, _ in again.history] == [1, 2]
    finally:
        trainer.close()


def test_the_trainer_process_dies_with_a_killed_command(workdir: Path) -> None:
    task = write_task(workdir, behaviour={1: "slow"}, epochs=20)  # trial 1: ~10 s
    command = [sys.executable, "-m", "adamtune", "search", "--task", task, "--study", "orphan", "--n-trials", "3"]
    command += ["--pruner", "none", "--no-confirm", "--no-tracking"]
    env = {**ENV, "ADAMTUNE_TRAINER": "process"}
    process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        trainers: list[psutil.Process] = []
        while not trainers and time.monotonic() < deadline:
            time.sleep(0.2)
            trainers = [
                c
                for c in psutil.Process(process.pid).children()
                if "adamtune.training.trainer_server" in " ".join(c.cmdline())
            ]
        assert trainers, "no trainer process started"
        time.sleep(1.0)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
        _, alive = psutil.wait_procs(trainers, timeout=15)
        assert not alive, "the trainer process outlived the command"
    finally:
        if process.poll() is None:
            process.kill()
