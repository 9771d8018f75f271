"""The optimizer against an independent, hand-written Adam (float64) over 150 steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adamtune.optim import decayed_lr, make_optimizer
from adamtune.space import AdamParams

STEPS = 150


def reference_adam(theta: np.ndarray, grads, p: AdamParams) -> np.ndarray:
    """Kingma & Ba's Algorithm 1 with decoupled weight decay and lr_t = lr / (1 + decay * t)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t in range(1, STEPS + 1):
        g = grads(theta)
        lr_t = p.lr / (1.0 + p.decay * (t - 1))
        theta = theta * (1.0 - lr_t * p.weight_decay)
        m = p.beta1 * m + (1 - p.beta1) * g
        v = p.beta2 * v + (1 - p.beta2) * g * g
        m_hat = m / (1 - p.beta1**t)
        v_hat = v / (1 - p.beta2**t)
        theta = theta - lr_t * m_hat / (np.sqrt(v_hat) + p.epsilon)
    return theta


def quadratic_grad(theta: np.ndarray) -> np.ndarray:
    """Gradient of sum(c * theta^2 + sin(theta)): non-trivial, curvature differs per coordinate."""
    c = np.linspace(0.5, 3.0, theta.size)
    return 2 * c * theta + np.cos(theta)


@pytest.mark.parametrize(
    "params",
    [
        AdamParams(),
        AdamParams(lr=0.05, beta1=0.7, beta2=0.99, epsilon=1e-3, decay=0.02),
        AdamParams(lr=0.01, beta1=0.95, beta2=0.9999, epsilon=1e-8, decay=1e-3, weight_decay=0.05),
    ],
)
def test_matches_hand_computed_adam(params: AdamParams) -> None:
    start = np.linspace(-2.0, 2.0, 7)
    expected = reference_adam(start.copy(), quadratic_grad, params)
    theta = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer, scheduler = make_optimizer([theta], params)
    for _ in range(STEPS):
        optimizer.zero_grad()
        c = torch.linspace(0.5, 3.0, theta.numel(), dtype=torch.float64)
        (c * theta**2 + torch.sin(theta)).sum().backward()
        optimizer.step()
        scheduler.step()
    np.testing.assert_allclose(theta.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
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
