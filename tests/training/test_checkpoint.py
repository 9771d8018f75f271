"""Checkpoints in-process: an interrupted-and-resumed run equals an uninterrupted one, bad checkpoints.

Real pieces: Optuna's ``FileSystemArtifactStore`` in a temporary directory, the built-in trainer, a user
loop with a ``DataLoader`` that shuffles with torch's global RNG. The interruption is an exception raised
from the epoch hook (what a kill does to the process, minus the process).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from adamtune.core.space import AdamParams
from adamtune.tasks import resolve_task
from adamtune.tasks.base import Task
from adamtune.tasks.loop import LoopTask
from adamtune.training.checkpoint import TrialCheckpoints, default_location, lineage_of, open_store
from adamtune.training.context import TrialContext
from adamtune.training.runner import run_in_context

SYNTHETIC = resolve_task("synthetic")
DATA = SYNTHETIC.load_data(None)


class Interrupted(BaseException):
    """Stands for the worker being killed: not an Exception, so nothing in the trial catches it."""


def noisy_task() -> Task:
    """The synthetic task with dropout (global RNG) and an augmentation drawing from the trainer's generator."""

    def make_model() -> nn.Module:
        return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 4))

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return x + 0.1 * torch.randn(x.shape, generator=generator)

    return Task(
        name="noisy",
        description="test task",
        load_data=SYNTHETIC.load_data,
        make_model=make_model,
        default_epochs=6,
        default_batch_size=100,
        augment=augment,
    )


class Harness:
    """Contexts for one lineage sharing a real artifact store; pointers kept like the trial attributes."""

    def __init__(self, root: Path, fingerprint: dict | None = None) -> None:  # type: ignore[type-arg]
        self.store, self.prefix = open_store(str(root / "store"))
        self.pointers: list[dict] = []  # type: ignore[type-arg]
        self.fingerprint = fingerprint or {"seed": 3}
        self.resumed: list[tuple[int, int]] = []

    def context(self, *, n_epochs: int = 6, every: int | None = 1, stop_at: int | None = None, **kw) -> TrialContext:  # type: ignore[no-untyped-def]
        checkpoints = TrialCheckpoints(
            self.store, self.prefix, "study", 0, self.fingerprint, self.pointers.append, pointers=list(self.pointers)
        )

        def on_epoch(epoch: int, metrics: object, diverged: bool) -> bool:
            if epoch == stop_at:
                raise Interrupted
            return False

        return TrialContext(
            params=kw.pop("params", AdamParams(lr=1e-2)),
            n_epochs=n_epochs,
            batch_size=100,
            seed=3,
            device="cpu",
            objective=kw.pop("objective", "loss"),
            checkpoints=checkpoints,
            checkpoint_every=every,
            on_epoch=on_epoch,
            on_resume=lambda epoch, history: self.resumed.append((epoch, len(history))),
        )


def run(task: object, data: object, context: TrialContext) -> TrialContext:
    with contextlib.suppress(Interrupted):
        run_in_context(task, data, context)
    return context


@pytest.mark.parametrize("stop_at", [2, 5])
def test_the_built_in_trainer_resumed_gives_the_uninterrupted_curve_exactly(tmp_path: Path, stop_at: int) -> None:
    task = noisy_task()
    harness = Harness(tmp_path)
    whole = run(task, DATA, harness.context(every=0))
    cut = run(task, DATA, harness.context(stop_at=stop_at))
    assert [e for e, _ in cut.history] == list(range(1, stop_at + 1))
    assert harness.pointers[-1]["epoch"] == stop_at - 1  # the interrupted epoch reported, never saved

    resumed = run(task, DATA, harness.context())

    assert resumed.resumed_from_epoch == stop_at - 1
    assert harness.resumed == [(stop_at - 1, stop_at - 1)]  # the restored curve is re-reported
    assert resumed.history == whole.history  # every metric of every epoch, bit for bit
    assert resumed.result() == whole.result()


LOOP_SOURCE = """
def fit(trial):
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1))
    optimizer, scheduler = trial.make_optimizer(model.parameters())
    trial.checkpoint(model=model, optimizer=optimizer, scheduler=scheduler)
    loader = DataLoader(trial.data["train"], batch_size=16, shuffle=True)  # shuffles with torch's RNG
    for epoch in trial.epochs():
        model.train()
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        with torch.no_grad():
            x, y = trial.data["val"].tensors
            trial.report(loss=nn.functional.mse_loss(model(x), y), mae=(model(x) - y).abs().mean())
"""


def loop_task() -> tuple[LoopTask, dict]:  # type: ignore[type-arg]
    namespace: dict = {"nn": nn, "torch": torch, "DataLoader": DataLoader}  # type: ignore[type-arg]
    exec(LOOP_SOURCE, namespace)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g)
    data = {"train": TensorDataset(x[:150], y[:150]), "val": TensorDataset(x[150:], y[150:])}
    task = LoopTask(name="loop", fit=namespace["fit"], data=lambda _: data, objective="mae", metrics=("loss",))
    return task, data


def test_a_user_loop_that_registers_its_objects_resumes_after_the_last_saved_epoch(tmp_path: Path) -> None:
    task, data = loop_task()
    harness = Harness(tmp_path)

    def context(**kw) -> TrialContext:  # type: ignore[no-untyped-def]
        made = harness.context(objective="mae", **kw)
        made.data = data
        return made

    whole = run(task, data, context(every=0))
    run(task, data, context(stop_at=4, every=2))  # saves after epochs 2 (and would after 4, 6)
    assert harness.pointers[-1]["epoch"] == 2

    resumed = run(task, data, context(every=2))

    assert resumed.resumed_from_epoch == 2
    assert [e for e, _ in resumed.history] == [1, 2, 3, 4, 5, 6]
    for (_, a), (_, b) in zip(resumed.history, whole.history, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_a_corrupt_checkpoint_is_reported_once_and_the_trial_trains_from_epoch_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path)
    run(SYNTHETIC, DATA, harness.context(stop_at=4))
    (tmp_path / "store" / harness.pointers[-1]["artifact"]).write_bytes(b"not a checkpoint at all")

    with caplog.at_level(logging.WARNING, logger="adamtune"):
        again = run(SYNTHETIC, DATA, harness.context())

    assert again.resumed_from_epoch is None
    assert [e for e, _ in again.history] == [1, 2, 3, 4, 5, 6]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "training from epoch 1" in warnings[0], warnings


def test_another_model_s_or_other_settings_checkpoint_is_not_used(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    harness = Harness(tmp_path)
    run(noisy_task(), DATA, harness.context(stop_at=3))  # another model, same lineage and fingerprint
    with caplog.at_level(logging.WARNING, logger="adamtune"):
        other_model = run(SYNTHETIC, DATA, harness.context())
    assert other_model.resumed_from_epoch is None and len(other_model.history) == 6

    other_settings = Harness(tmp_path, fingerprint={"seed": 4})
    other_settings.pointers = list(harness.pointers)
    with caplog.at_level(logging.WARNING, logger="adamtune"):
        again = run(SYNTHETIC, DATA, other_settings.context())
    assert again.resumed_from_epoch is None and len(again.history) == 6
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(messages) == 2 and "other settings" in messages[1], messages


def test_automatic_interval_saves_nothing_for_a_trial_of_seconds(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    context = run(SYNTHETIC, DATA, harness.context(every=None))
    assert context.checkpoint_every == 0 and harness.pointers == []
    assert not (tmp_path / "store").exists()  # made at the first save only


def test_two_slots_at_most_and_remove_all_empties_the_lineage(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    run(SYNTHETIC, DATA, harness.context(stop_at=6))
    assert len(list((tmp_path / "store").iterdir())) == 2
    TrialCheckpoints(harness.store, "", "study", 0, {}, lambda _: None).remove_all()
    assert not list((tmp_path / "store").iterdir())


def test_lineage_and_default_location() -> None:
    assert lineage_of(7, {}) == 7
    assert lineage_of(9, {"failed_trial": 3, "retry_history": [3, 7]}) == 3
    assert default_location("sqlite:////data/runs/adamtune.db") == "/data/runs/adamtune-checkpoints"
    assert default_location("postgresql+psycopg://db/x").endswith("adamtune-checkpoints")


def test_checkpoint_refuses_objects_without_state(tmp_path: Path) -> None:
    context = Harness(tmp_path).context()
    with pytest.raises(TypeError, match="state_dict"):
        context.checkpoint(model=object())
    context.epochs()
    with pytest.raises(RuntimeError, match=r"before trial\.epochs"):
        context.checkpoint(model=nn.Linear(1, 1))


def test_keep_best_checkpoint_leaves_only_the_best_complete_trial_s_final_state(workdir: Path) -> None:
    import optuna

    from adamtune.training.checkpoint import BEST_ATTR
    from tests.trials.test_parallel import finish, start

    args = ("search", "--task", "synthetic", "--n-trials", "4", "--epochs", "3", "--pruner", "none", "--seed", "0")
    code, stderr = finish(
        start(*args, "--keep-best-checkpoint", "--checkpoint-every", "1", "--no-tracking", cwd=workdir)
    )

    assert code == 0, stderr
    assert [p.name for p in (workdir / "adamtune-checkpoints").iterdir()] == ["synthetic.best"]
    trials = optuna.load_study(study_name="synthetic", storage=f"sqlite:///{workdir}/adamtune.db").get_trials()
    best = min(trials, key=lambda t: t.value)
    writers = [t for t in trials if BEST_ATTR in t.user_attrs]
    assert writers[-1].number == best.number and best.user_attrs[BEST_ATTR]["epoch"] == 3
    state = torch.load(workdir / "adamtune-checkpoints" / "synthetic.best", weights_only=True)
    model = SYNTHETIC.make_model()
    model.load_state_dict(state["objects"]["model"]["state_dict"])  # a usable model
    assert [e for e, _ in state["history"]] == [1, 2, 3]
