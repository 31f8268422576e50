"""Physics-prior pendulum models: their vector fields, and recovery of mu and g/L from data."""

from __future__ import annotations

import math

import pytest
import torch

from neurode import solve
from neurode.data import PendulumParams, make_pendulum_dataset, pendulum_vector_field
from neurode.errors import NeurodeInputError, ShapeMismatchError
from neurode.models.hybrid import HybridODE, PendulumPhysics, linear_friction_fit
from neurode.train import TrainConfig, Trajectories, TrajectoryModel, TrajectoryObjective, fit
from neurode.train.trajectories import rollout_mse

TRUE = PendulumParams(mu=0.15, g_over_l=4.0)


def _phase_grid() -> torch.Tensor:
    theta, omega = torch.meshgrid(
        torch.linspace(-2.5, 2.5, 9, dtype=torch.float64),
        torch.linspace(-3.0, 3.0, 7, dtype=torch.float64),
        indexing="ij",
    )
    return torch.stack([theta, omega], dim=-1)


def test_physics_field_matches_the_independent_pendulum_field():
    states = _phase_grid()
    model = PendulumPhysics(g_over_l=TRUE.g_over_l, mu=TRUE.mu)
    rates = model(torch.tensor(0.0), states)
    expected = pendulum_vector_field(TRUE, states[..., 0], states[..., 1])
    assert torch.allclose(rates[..., 0], expected[0], rtol=1e-14, atol=1e-14)
    assert torch.allclose(rates[..., 1], expected[1], rtol=1e-14, atol=1e-14)
    assert float(model.g_over_l.detach()) == pytest.approx(4.0, rel=1e-14)
    assert float(model.mu.detach()) == pytest.approx(0.15, rel=1e-12)


def test_hybrid_with_a_constant_friction_network_is_the_physical_pendulum():
    model = HybridODE(g_over_l=TRUE.g_over_l)
    with torch.no_grad():
        model.friction_net[-1].bias.fill_(-TRUE.mu)  # n = -mu, so omega * n = -mu * omega
    states = _phase_grid()
    physics = PendulumPhysics(g_over_l=TRUE.g_over_l, mu=TRUE.mu)
    assert torch.allclose(model(None, states), physics(None, states), rtol=1e-13, atol=1e-13)
    assert float(model.friction_coefficient(states)) == pytest.approx(TRUE.mu, rel=1e-12)


def test_untrained_hybrid_is_frictionless_and_conserves_energy():
    model = HybridODE(g_over_l=TRUE.g_over_l)
    y0 = torch.tensor([[1.2, 0.3], [-0.5, 1.0]], dtype=torch.float64)
    t = torch.linspace(0.0, 10.0, 21, dtype=torch.float64)
    with torch.no_grad():
        ys = solve(model, y0, t, rtol=1e-10, atol=1e-12).ys
    energy = 0.5 * ys[..., 1] ** 2 + TRUE.g_over_l * (1 - torch.cos(ys[..., 0]))
    assert torch.allclose(energy, energy[0].expand_as(energy), rtol=1e-8)


def test_learned_friction_vanishes_at_rest_whatever_the_weights():
    torch.manual_seed(0)
    model = HybridODE(g_over_l=2.0)
    for parameter in model.friction_net.parameters():
        torch.nn.init.normal_(parameter)
    theta = torch.linspace(-3, 3, 13, dtype=torch.float64)
    assert torch.equal(model.correction(theta, torch.zeros_like(theta)), torch.zeros_like(theta))
    free = HybridODE(g_over_l=2.0, vanishes_at_rest=False)
    with torch.no_grad():
        free.friction_net[-1].bias.fill_(0.5)
    assert torch.equal(free.correction(theta, torch.zeros_like(theta)), torch.full_like(theta, 0.5))


def test_linear_friction_fit_is_the_least_squares_coefficient():
    omega = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    acceleration = -0.3 * omega + torch.tensor([0.01, 0.0, -0.02], dtype=torch.float64)
    # d/dmu sum (a + mu w)^2 = 0  =>  mu = -sum(w a) / sum(w^2)
    expected = -float((omega * acceleration).sum() / (omega**2).sum())
    assert float(linear_friction_fit(omega, acceleration)) == pytest.approx(expected, rel=1e-14)
    with pytest.raises(NeurodeInputError, match="non-zero velocity"):
        linear_friction_fit(torch.zeros(3), torch.ones(3))


def test_constants_stay_positive_and_bad_arguments_are_typed_errors():
    model = PendulumPhysics(g_over_l=1.0, mu=0.1)
    with torch.no_grad():
        model.log_g_over_l.fill_(-50.0)
        model.raw_mu.fill_(-50.0)
    assert float(model.g_over_l.detach()) > 0 and float(model.mu.detach()) > 0
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(NeurodeInputError):
            PendulumPhysics(g_over_l=bad)
        with pytest.raises(NeurodeInputError):
            HybridODE(g_over_l=bad)
    with pytest.raises(NeurodeInputError):
        HybridODE(hidden=0)
    with pytest.raises(ShapeMismatchError):
        PendulumPhysics()(None, torch.zeros(4, 3, dtype=torch.float64))


# ----------------------------------------------------------------------------- recovery


def _noisy_pendulum() -> Trajectories:
    """8 trajectories over 10 s with noise of 1% of the largest angle (0.015 rad on 1.5 rad)."""
    dataset = make_pendulum_dataset(
        8, t_end=10.0, n_points=50, noise_std=0.015, theta0_max=1.5, params=TRUE, seed=1
    )
    return Trajectories.from_tensors(dataset.times, dataset.noisy)


def _fit_two_stages(dynamics, data: Trajectories, constants: tuple[str, ...]) -> None:
    """Short segments from an uninformed start, then whole trajectories to pin the constants.

    The whole-trajectory stage also learns each trajectory's initial state: a
    noisy first observation would otherwise bias the constants. Its rates
    follow the loss's curvature: a small change of g/L shifts the phase of a
    long rollout, a change of mu only its slow decay.
    """
    model = TrajectoryModel(dynamics, data, rtol=1e-6, atol=1e-8, learn_initial_state=True)
    segments = TrajectoryObjective(
        model, data, segment_points=10, segments_per_step=4, autonomous=True
    )
    fit(
        model,
        segments,
        len(data),
        TrainConfig(epochs=120, lr=0.01, lr_final=0.0005),
        lr_scales={f"ode.dynamics.{name}": 10.0 for name in constants},
    )
    scales = {"ode.dynamics.log_g_over_l": 1.0, "initial_correction": 5.0}
    if "raw_mu" in constants:
        scales["ode.dynamics.raw_mu"] = 10.0
    fit(
        model,
        TrajectoryObjective(model, data),
        len(data),
        TrainConfig(epochs=20, lr=0.002, lr_final=0.0002, patience=8, restore_best=True),
        lr_scales=scales,
        validation=lambda m: rollout_mse(m, data),
    )


@pytest.mark.slow
def test_physics_model_recovers_mu_and_g_over_l_within_two_percent_from_noisy_data():
    data = _noisy_pendulum()
    model = PendulumPhysics(g_over_l=1.0, mu=0.05)  # a quarter and a third of the truth
    _fit_two_stages(model, data, ("log_g_over_l", "raw_mu"))
    assert float(model.g_over_l.detach()) == pytest.approx(TRUE.g_over_l, rel=0.02)
    assert float(model.mu.detach()) == pytest.approx(TRUE.mu, rel=0.02)


@pytest.mark.slow
def test_hybrid_model_recovers_g_over_l_and_the_friction_within_two_percent():
    data = _noisy_pendulum()
    torch.manual_seed(0)
    model = HybridODE(g_over_l=1.0)
    _fit_two_stages(model, data, ("log_g_over_l",))
    assert float(model.g_over_l.detach()) == pytest.approx(TRUE.g_over_l, rel=0.02)
    states = torch.cat(data.values)  # the observed (theta, omega), where the network was trained
    assert float(model.friction_coefficient(states)) == pytest.approx(TRUE.mu, rel=0.02)


def test_hybrid_jacobians_equal_automatic_differentiation():
    """The state Jacobian and the columns for log(g/L) and the friction network's output bias."""
    torch.manual_seed(1)
    model = HybridODE(g_over_l=3.0, state_scale=(0.5, 2.0), friction=0.2)
    for parameter in model.friction_net.parameters():
        torch.nn.init.normal_(parameter, std=0.5)
    states = torch.randn(5, 2, dtype=torch.float64)
    d_state, d_params = model.jacobians(states)
    for i in range(states.shape[0]):
        expected = torch.autograd.functional.jacobian(lambda s: model(None, s), states[i])
        torch.testing.assert_close(d_state[i], expected, rtol=1e-12, atol=1e-12)
        out = model(None, states[i])
        for k, parameter in enumerate((model.log_g_over_l, model.friction_net[-1].bias)):
            rows = [
                torch.autograd.grad(out[j], parameter, retain_graph=True)[0].reshape(())
                for j in range(2)
            ]
            torch.testing.assert_close(d_params[i, :, k], torch.stack(rows), rtol=1e-12, atol=1e-12)


def test_hybrid_starts_at_the_given_friction_with_inputs_in_units_of_the_scale():
    states = _phase_grid()
    model = HybridODE(g_over_l=TRUE.g_over_l, friction=TRUE.mu, state_scale=(2.0, 3.0))
    physics = PendulumPhysics(g_over_l=TRUE.g_over_l, mu=TRUE.mu)
    assert torch.allclose(model(None, states), physics(None, states), rtol=1e-13, atol=1e-13)
    with torch.no_grad():
        model.friction_net[0].weight.copy_(torch.eye(2).repeat(8, 1)[:16])
        model.friction_net[-1].weight.fill_(1.0)
    unscaled = HybridODE(g_over_l=TRUE.g_over_l, friction=TRUE.mu)
    unscaled.load_state_dict(
        {**model.state_dict(), "state_scale": torch.ones(2, dtype=torch.float64)}
    )
    scaled_states = states * torch.tensor([2.0, 3.0], dtype=torch.float64)
    # n sees (theta / 2, omega / 3): at scaled states it is the unscaled n at the states.
    torch.testing.assert_close(
        model.correction(scaled_states[..., 0], scaled_states[..., 1]) / 3.0,
        unscaled.correction(states[..., 0], states[..., 1]),
    )
    with pytest.raises(NeurodeInputError, match="friction"):
        HybridODE(friction=-0.1)
    with pytest.raises(NeurodeInputError, match="state_scale"):
        HybridODE(state_scale=(1.0, 0.0))
