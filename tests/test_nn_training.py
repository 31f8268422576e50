"""Small training runs whose outcome mathematics predicts.

g(x) = -x on points of [-1, 1]: the flow of a 1-D ODE is an increasing
homeomorphism φ, so the plain neural ODE's outputs keep the inputs' order.
The best non-decreasing fit to the decreasing targets y_i = -x_i is their
mean (isotonic regression pools every point), so for any such φ

    MSE(φ) = mean (φ(x_i) + x_i)² ≥ Var(y) = mean(x²)   (x symmetric about 0).

One augmented dimension removes the obstruction: a rotation by π of the plane
maps (x, 0) to (-x, 0).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurode.api import solve
from neurode.nn import Augmented, MLPDynamics, NeuralODE, ODEBlock, SecondOrder

F64 = torch.float64
FIXED_RK4 = dict(method="rk4", options=dict(step_size=0.1), gradient="direct")


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float) -> float:
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        (model(x) - y).square().mean().backward()
        optimiser.step()
    with torch.no_grad():
        return (model(x) - y).square().mean().item()


@pytest.mark.slow
def test_plain_neural_ode_cannot_fit_negation_but_augmented_can():
    x = torch.linspace(-1.0, 1.0, 16, dtype=F64)[:, None]
    y = -x
    lower_bound = x.square().mean().item()  # Var(y); x is symmetric about 0

    torch.manual_seed(0)
    plain = ODEBlock(MLPDynamics(1, hidden=16, depth=1).to(F64), **FIXED_RK4)
    plain_mse = _fit(plain, x, y, steps=200, lr=3e-2)
    with torch.no_grad():
        plain_out = plain(x).squeeze(1)
    assert torch.all(plain_out.diff() > 0), "the flow of a 1-D ODE must preserve order"
    assert plain_mse >= 0.999 * lower_bound

    torch.manual_seed(0)
    augmented = Augmented(
        MLPDynamics(2, hidden=16, depth=1).to(F64), 1, projection="slice", **FIXED_RK4
    )
    augmented_mse = _fit(augmented, x, y, steps=200, lr=3e-2)
    assert augmented_mse < 1e-2
    assert augmented_mse < 0.03 * lower_bound


class _PendulumAcceleration(nn.Module):
    def forward(self, t, x, v):
        return -torch.sin(x)


class _LearnedAcceleration(nn.Module):
    """a(x) by a small MLP: a conservative force, as gravity is."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def forward(self, t, x, v):
        return self.net(x)


@pytest.mark.slow
def test_second_order_model_fits_a_pendulum_segment_and_learns_its_force():
    # θ'' = -sin θ from θ = 1, θ' = 0, observed at 31 times on [0, 3].
    t = torch.linspace(0.0, 3.0, 31, dtype=F64)
    z0 = torch.tensor([[1.0, 0.0]], dtype=F64)
    truth = solve(SecondOrder(_PendulumAcceleration()), z0, t, rtol=1e-10, atol=1e-12).ys
    observed_angle = truth[..., :1]

    torch.manual_seed(0)
    acceleration = _LearnedAcceleration(16).to(F64)
    model = NeuralODE(SecondOrder(acceleration), **FIXED_RK4)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(200):
        optimiser.zero_grad()
        (model(z0, t)[..., :1] - observed_angle).square().mean().backward()
        optimiser.step()
    with torch.no_grad():
        mse = (model(z0, t)[..., :1] - observed_angle).square().mean().item()
        angles = torch.linspace(-0.9, 0.9, 7, dtype=F64)[:, None]
        force_error = acceleration(None, angles, torch.zeros_like(angles)) + torch.sin(angles)
    assert mse < 1e-3 * observed_angle.var().item()
    # The swing covers [-0.95, 1], so the force is identified there.
    assert force_error.abs().max().item() < 0.2
