"""``adamtune recommend``: every format, executed or parsed.

The recommendation comes from one real ``synthetic`` search (module fixture). The AdamW/amsgrad variants
of the snippets are checked on a summary built directly, so that they are exercised whatever the search
happens to recommend.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from adamtune.cli.main import cli
from adamtune.confirm.ranking import Candidate
from adamtune.core.space import AdamParams
from adamtune.report.export import format_keras, format_toml, format_torch
from adamtune.report.summary import StudySummary
from adamtune.storage.outcomes import Counts
from adamtune.training.optim import decayed_lr, make_optimizer, scheduled_lr

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SETTINGS = ["lr", "beta1", "beta2", "epsilon", "decay"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A finished 4-trial ``synthetic`` study (2 epochs, no pruner, seeded)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('recommend')}/adamtune.db"
    args = ["--task", "synthetic", "--n-trials", "4", "--epochs", "2", "--pruner", "none", "--seed", "5"]
    result = invoke("search", *args, "--no-tracking", "--storage", url)
    assert result.exit_code == 0, result.output
    return url


def recommend(storage: str, fmt: str) -> str:
    result = invoke("recommend", "--task", "synthetic", "--storage", storage, "--format", fmt)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def settings(storage: str) -> dict:
    return json.loads(recommend(storage, "json"))


def test_json_is_the_settings_of_the_summary(storage: str, settings: dict) -> None:
    assert list(settings) == SETTINGS
    row = json.loads(invoke("summary", "--storage", storage, "--json").output)[0]
    assert settings == row["recommended"]


def test_toml_holds_the_exact_settings(storage: str, settings: dict) -> None:
    text = recommend(storage, "toml")
    assert text.startswith("# Adam settings recommended by adamtune for study 'synthetic'")
    assert tomllib.loads(text) == settings


def test_torch_snippet_builds_and_steps_a_real_optimizer_and_scheduler(storage: str, settings: dict) -> None:
    snippet = recommend(storage, "torch")
    model = torch.nn.Linear(2, 2)
    namespace: dict = {"model": model}
    exec(snippet, namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    assert type(optimizer) is torch.optim.Adam
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    group = optimizer.param_groups[0]
    assert group["lr"] == pytest.approx(settings["lr"], rel=1e-7)
    assert group["betas"][0] == pytest.approx(settings["beta1"], rel=1e-7)
    assert 1 - group["betas"][1] == pytest.approx(1 - settings["beta2"], rel=1e-5)
    assert group["eps"] == pytest.approx(settings["epsilon"], rel=1e-7)
    assert group["weight_decay"] == 0 and group["amsgrad"] is False
    before = model.weight.detach().clone()
    for step in range(1, 4):
        optimizer.zero_grad()
        model(torch.ones(4, 2)).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
        expected = decayed_lr(settings["lr"], settings["decay"], step)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-6)
    assert not torch.equal(before, model.weight)


def test_keras_snippet_parses_with_its_schedule_and_epsilon_note(storage: str, settings: dict) -> None:
    snippet = recommend(storage, "keras")
    calls = _calls(snippet)
    schedule = calls["keras.optimizers.schedules.InverseTimeDecay"]
    assert schedule["decay_steps"] == 1
    assert schedule["initial_learning_rate"] == pytest.approx(settings["lr"], rel=1e-7)
    assert schedule["decay_rate"] == pytest.approx(settings["decay"], rel=1e-7)
    adam = calls["keras.optimizers.Adam"]
    assert adam["beta_1"] == pytest.approx(settings["beta1"], rel=1e-7)
    assert adam["epsilon"] == pytest.approx(settings["epsilon"], rel=1e-7)
    assert "epsilon hat" in snippet and "import keras" in snippet


def test_table_lists_settings_next_to_the_defaults(storage: str) -> None:
    text = recommend(storage, "table")
    assert all(name in text for name in SETTINGS) and "Adam default" in text


def test_format_is_case_insensitive(storage: str, settings: dict) -> None:
    assert json.loads(recommend(storage, "JSON")) == settings


def _calls(snippet: str) -> dict[str, dict]:
    """Dotted callee name -> its literal keyword arguments, for every call in ``snippet``."""
    found: dict[str, dict] = {}
    for node in ast.walk(ast.parse(snippet)):
        if isinstance(node, ast.Call):
            kwargs = {}
            for keyword in node.keywords:
                try:
                    kwargs[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    kwargs[keyword.arg] = ast.unparse(keyword.value)
            found[ast.unparse(node.func)] = kwargs
    return found


def _summary(params: AdamParams, extras: tuple[str, ...]) -> StudySummary:
    return StudySummary(
        study="s",
        task="t",
        objective="val_loss",
        direction="minimize",
        epochs=3,
        batch_size=10,
        counts=Counts(complete=1),
        recommended=Candidate(trial=7, params=params, score=0.5, value=0.5),
        baseline=None,
        extra_dimensions=extras,
    )


def test_weight_decay_selects_adamw_and_amsgrad_is_passed(tmp_path: Path) -> None:
    params = AdamParams(lr=3e-3, beta1=0.8, beta2=0.99990123, epsilon=1e-6, decay=1e-3, weight_decay=0.05, amsgrad=True)
    summary = _summary(params, ("weight_decay", "amsgrad"))
    namespace: dict = {"model": torch.nn.Linear(2, 2)}
    exec(format_torch(summary), namespace)
    optimizer = namespace["optimizer"]
    assert type(optimizer) is torch.optim.AdamW
    group = optimizer.param_groups[0]
    assert group["weight_decay"] == pytest.approx(0.05) and group["amsgrad"] is True
    assert 1 - group["betas"][1] == pytest.approx(1 - 0.99990123, rel=1e-6)
    adamw = _calls(format_keras(summary))["keras.optimizers.AdamW"]
    assert adamw["weight_decay"] == pytest.approx(0.05) and adamw["amsgrad"] is True
    assert adamw["learning_rate"] == "learning_rate"
    assert tomllib.loads(format_toml(summary)) == {k: v for k, v in params.as_dict().items() if k != "warmup"}


def test_zero_decay_gives_a_constant_schedule() -> None:
    namespace: dict = {"model": torch.nn.Linear(2, 2)}
    exec(format_torch(_summary(AdamParams(), ())), namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    for _ in range(3):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)


class SmallNet(torch.nn.Module):
    """Embedding, LayerNorm, Linear with bias: both sides of the grouping rule."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 3)
        self.norm = torch.nn.LayerNorm(3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(x)))


def _run(optimizer: torch.optim.Optimizer, scheduler, model: SmallNet, steps: int) -> list[list[float]]:
    """Train a few steps on a fixed batch; the learning rate of every group at every step."""
    rates = []
    x = torch.tensor([0, 1, 2, 3, 4])
    for _ in range(steps):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.zero_grad()
        model(x).pow(2).sum().backward()
        optimizer.step()
        scheduler.step()
    return rates


def test_torch_snippet_rebuilds_make_optimizers_groups_and_warmup_schedule() -> None:
    params = AdamParams(lr=3e-3, beta1=0.9, beta2=0.95, epsilon=1e-8, decay=2e-3, warmup=7, weight_decay=0.1)
    snippet = format_torch(_summary(params, ("warmup", "weight_decay")))
    assert "warmup = 7 steps" in snippet
    torch.manual_seed(0)
    ours = SmallNet()
    theirs = SmallNet()
    theirs.load_state_dict(ours.state_dict())
    expected_opt, expected_sched = make_optimizer(ours, params)
    namespace: dict = {"model": theirs}
    exec(snippet, namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    assert type(optimizer) is type(expected_opt) is torch.optim.AdamW
    names = {id(p): n for n, p in theirs.named_parameters()}
    our_names = {id(p): n for n, p in ours.named_parameters()}
    assert [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups] == [
        [our_names[id(p)] for p in g["params"]] for g in expected_opt.param_groups
    ]
    assert [names[id(p)] for p in optimizer.param_groups[0]["params"]] == ["embed.weight", "head.weight"]
    for got, want in zip(optimizer.param_groups, expected_opt.param_groups, strict=True):
        for key in ("lr", "eps", "weight_decay"):
            assert got[key] == pytest.approx(want[key], rel=1e-7), key
        assert got["betas"] == pytest.approx(want["betas"], rel=1e-7) and got["amsgrad"] is want["amsgrad"]
    got_rates = _run(optimizer, scheduler, theirs, 12)
    want_rates = _run(expected_opt, expected_sched, ours, 12)
    assert [r for rs in got_rates for r in rs] == pytest.approx([r for rs in want_rates for r in rs], rel=1e-7)
    assert [r[0] for r in got_rates] == pytest.approx([scheduled_lr(params, t) for t in range(12)], rel=1e-7)
    for (name, a), b in zip(theirs.named_parameters(), ours.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_warmup_is_emitted_in_every_format() -> None:
    params = AdamParams(lr=1e-3, beta2=0.98, decay=1e-4, warmup=250, weight_decay=0.05)
    summary = _summary(params, ("warmup", "weight_decay"))
    assert tomllib.loads(format_toml(summary))["warmup"] == 250
    from adamtune.report.export import format_json

    assert json.loads(format_json(summary))["warmup"] == 250
    keras = format_keras(summary)
    assert "class WarmupInverseTimeDecay" in keras and "/ 250)" in keras
    assert "exclude_from_weight_decay" in keras and "len(v.shape) < 2" in keras
    assert _calls(keras)["keras.optimizers.AdamW"]["weight_decay"] == pytest.approx(0.05)
    ns: dict = {}
    exec(keras.split("import keras")[1].split("learning_rate = WarmupInverseTimeDecay()")[0], _fake_keras(ns))
    schedule = ns["WarmupInverseTimeDecay"]()
    assert [float(schedule(t)) for t in (0, 124, 249, 1000)] == pytest.approx(
        [scheduled_lr(params, t) for t in (0, 124, 249, 1000)], rel=1e-6
    )


def _fake_keras(namespace: dict) -> dict:
    """Just enough of ``keras`` (not installed here) to evaluate the schedule class with Python floats."""
    import types

    keras = types.SimpleNamespace(
        optimizers=types.SimpleNamespace(schedules=types.SimpleNamespace(LearningRateSchedule=object)),
        ops=types.SimpleNamespace(cast=lambda x, dtype: float(x), minimum=min),
    )
    namespace["keras"] = keras
    return namespace
