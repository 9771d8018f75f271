"""The optimizer against an independent, hand-written Adam/AdamW (float64) over 150 steps, and its groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamtune.core.space import AdamParams
from adamtune.training.optim import decayed_lr, lr_factor, make_optimizer, param_groups, scheduled_lr

STEPS = 150


def reference_lr(p: AdamParams, t: int) -> float:
    """Written out independently of optim.py: linear warmup to lr, times Keras inverse-time decay."""
    ramp = (t + 1) / p.warmup if p.warmup and t + 1 < p.warmup else 1.0
    return p.lr * ramp / (1.0 + p.decay * t)


def reference_adam(theta: np.ndarray, grads, p: AdamParams, decayed: np.ndarray) -> np.ndarray:
    """Kingma & Ba's Algorithm 1 with decoupled weight decay (only where ``decayed``) and the schedule."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t in range(1, STEPS + 1):
        g = grads(theta)
        lr_t = reference_lr(p, t - 1)
        theta = np.where(decayed, theta * (1.0 - lr_t * p.weight_decay), theta)
        m = p.beta1 * m + (1 - p.beta1) * g
        v = p.beta2 * v + (1 - p.beta2) * g * g
        m_hat = m / (1 - p.beta1**t)
        v_hat = v / (1 - p.beta2**t)
        theta = theta - lr_t * m_hat / (np.sqrt(v_hat) + p.epsilon)
    return theta


C = np.linspace(0.5, 3.0, 10)


def quadratic_grad(theta: np.ndarray) -> np.ndarray:
    """Gradient of sum(c * theta^2 + sin(theta)): non-trivial, curvature differs per coordinate."""
    return 2 * C * theta + np.cos(theta)


@pytest.mark.parametrize(
    "params",
    [
        AdamParams(),
        AdamParams(lr=0.05, beta1=0.7, beta2=0.99, epsilon=1e-3, decay=0.02),
        AdamParams(lr=0.01, beta1=0.95, beta2=0.9999, epsilon=1e-8, decay=1e-3, weight_decay=0.05),
        AdamParams(lr=0.02, beta1=0.9, beta2=0.95, epsilon=1e-8, warmup=40),
        AdamParams(lr=0.03, beta1=0.8, beta2=0.98, epsilon=1e-6, decay=5e-3, warmup=25, weight_decay=0.1),
        AdamParams(lr=0.01, warmup=1, weight_decay=0.01),  # warmup 1 = none
    ],
)
def test_matches_hand_computed_adam(params: AdamParams) -> None:
    """A 2x3 weight (decayed under AdamW) and a 4-element bias (never decayed), as one model would hold."""
    start = np.linspace(-2.0, 2.0, 10)
    decayed = np.arange(10) < 6  # the first six coordinates are the weight matrix
    expected = reference_adam(start.copy(), quadratic_grad, params, decayed)
    model = torch.nn.Module()
    model.weight = torch.nn.Parameter(torch.tensor(start[:6], dtype=torch.float64).reshape(2, 3))
    model.bias = torch.nn.Parameter(torch.tensor(start[6:], dtype=torch.float64))
    optimizer, scheduler = make_optimizer(model, params)
    c = torch.tensor(C, dtype=torch.float64)
    for t in range(STEPS):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(reference_lr(params, t), rel=1e-12)
        optimizer.zero_grad()
        theta = torch.cat([model.weight.reshape(-1), model.bias])
        (c * theta**2 + torch.sin(theta)).sum().backward()
        optimizer.step()
        scheduler.step()
    got = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()]).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert isinstance(optimizer, torch.optim.AdamW if params.weight_decay else torch.optim.Adam)


def test_schedule_is_keras_inverse_time_decay() -> None:
    theta = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = make_optimizer([theta], AdamParams(lr=0.1, decay=0.5))
    seen = []
    for _ in range(5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([decayed_lr(0.1, 0.5, t) for t in range(5)])
    assert seen == pytest.approx([0.1, 0.1 / 1.5, 0.1 / 2, 0.1 / 2.5, 0.1 / 3])


def test_warmup_ramps_linearly_then_decays_from_step_zero() -> None:
    params = AdamParams(lr=0.1, decay=0.5, warmup=4)
    assert [lr_factor(t, warmup=4, decay=0.5) for t in range(6)] == pytest.approx(
        [0.25, 0.5 / 1.5, 0.75 / 2, 1 / 2.5, 1 / 3, 1 / 3.5]
    )
    theta = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler = make_optimizer([theta], params)
    seen = []
    for _ in range(6):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([scheduled_lr(params, t) for t in range(6)])
    # warmup 0 and 1 are the same schedule: no warmup
    no_warmup = [lr_factor(t, warmup=0, decay=0.1) for t in range(5)]
    assert no_warmup == [lr_factor(t, warmup=1, decay=0.1) for t in range(5)]


class Tiny(torch.nn.Module):
    """Every kind of parameter the grouping rule distinguishes."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.conv = torch.nn.Conv1d(4, 4, 3)
        self.bn = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4, 2)
        self.scale = torch.nn.Parameter(torch.ones(()))


def _names(model: torch.nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_skips_biases_norms_and_scalars() -> None:
    model = Tiny()
    optimizer, _ = make_optimizer(model, AdamParams(weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert _names(model, decay) == {"embed.weight", "conv.weight", "head.weight"}
    one_dim = {"norm.weight", "norm.bias", "conv.bias", "bn.weight", "bn.bias", "head.bias", "scale"}
    assert _names(model, no_decay) == one_dim
    # model.parameters() (what the trainer passes) groups the same way
    from_iterable, _ = make_optimizer(model.parameters(), AdamParams(weight_decay=0.1))
    assert [_names(model, g) for g in from_iterable.param_groups] == [_names(model, g) for g in optimizer.param_groups]


def test_without_weight_decay_one_group_holds_everything() -> None:
    model = Tiny()
    optimizer, _ = make_optimizer(model, AdamParams())
    assert type(optimizer) is torch.optim.Adam and len(optimizer.param_groups) == 1
    assert optimizer.param_groups[0]["params"] == list(model.parameters())
    assert param_groups(model, 0.0) == [{"params": list(model.parameters())}]


def test_explicit_groups_and_a_task_hook_override_the_rule() -> None:
    model = Tiny()
    wd = AdamParams(weight_decay=0.2)
    explicit = [{"params": [model.head.weight, model.head.bias]}, {"params": [model.embed.weight], "weight_decay": 0.0}]
    optimizer, _ = make_optimizer(explicit, wd)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.2, 0.0]  # missing key: the tuned value
    assert _names(model, optimizer.param_groups[0]) == {"head.weight", "head.bias"}

    def only_head(m: Tiny) -> list[dict]:
        return [{"params": list(m.head.parameters())}]

    generator_group, _ = make_optimizer([{"params": model.head.parameters()}], wd)  # a generator is read once
    assert len(generator_group.param_groups[0]["params"]) == 2
    with pytest.raises(ValueError, match="no parameters"):
        make_optimizer([], wd)
    hooked, _ = make_optimizer(model, wd, groups=only_head)
    assert len(hooked.param_groups) == 1 and _names(model, hooked.param_groups[0]) == {"head.weight", "head.bias"}
    assert hooked.param_groups[0]["weight_decay"] == 0.2


def test_the_schedule_applies_to_every_group() -> None:
    model = Tiny()
    params = AdamParams(lr=0.01, warmup=3, decay=0.1, weight_decay=0.1)
    optimizer, scheduler = make_optimizer(model, params)
    for t in range(5):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([scheduled_lr(params, t)] * 2)
        optimizer.step()
        scheduler.step()


def test_the_trainers_lr_curve_shows_the_warmup() -> None:
    """The built-in trainer's per-epoch ``lr`` (what MLflow plots) is the schedule after that epoch's steps."""
    from adamtune.tasks.synthetic import load_data, make_task
    from adamtune.training.train import train

    params = AdamParams(lr=0.01, warmup=30, decay=1e-3, weight_decay=0.01)
    data = load_data()
    steps = -(-len(data.train) // 100)  # batches per epoch at batch size 100
    curves = train(make_task(), data, params, device="cpu", epochs=4, batch_size=100, seed=0)
    assert [e.lr for e in curves.epochs] == pytest.approx([scheduled_lr(params, steps * k) for k in (1, 2, 3, 4)])
    assert curves.epochs[0].lr < curves.epochs[-1].lr  # still warming up after the first epoch
