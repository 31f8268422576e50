"""Least squares through the solver: Jacobians, Levenberg–Marquardt, Laplace intervals, coverage."""

from __future__ import annotations

import math

import pytest
import torch

from neurode.data import PendulumParams, simulate_pendulum
from neurode.errors import NeurodeInputError
from neurode.models.hybrid import PendulumPhysics
from neurode.train.least_squares import (
    _CountingField,
    _layout,
    _residuals_and_jacobian,
    interval_95,
    least_squares_fit,
    softplus,
)
from neurode.train.trajectories import Trajectories

TRUE = PendulumParams(mu=0.3, g_over_l=5.0)
Y0 = torch.tensor([[1.0, 0.0], [-0.6, 1.2], [0.4, -0.8]], dtype=torch.float64)


def _angle_data(noise: float, seed: int, *, irregular: bool = True, points: int = 41):
    """Three trajectories of angles only, each at its own times (or a shared grid)."""
    generator = torch.Generator().manual_seed(seed)
    times, values = [], []
    for i in range(Y0.shape[0]):
        if irregular:
            inner = torch.rand(points - 2, generator=generator, dtype=torch.float64).sort().values
            t = torch.cat([torch.zeros(1), 6.0 * inner, torch.full((1,), 6.0)]).double()
        else:
            t = torch.linspace(0.0, 6.0, points, dtype=torch.float64)
        theta = simulate_pendulum(TRUE, Y0[i, 0], Y0[i, 1], t)[:, 0, 0]
        noisy = theta + noise * torch.randn(theta.shape, generator=generator, dtype=torch.float64)
        times.append(t)
        values.append(noisy.unsqueeze(-1))
    return Trajectories(tuple(times), tuple(values), (0,), 2)


def test_analytic_pendulum_jacobians_equal_automatic_differentiation():
    model = PendulumPhysics(g_over_l=3.0, mu=0.4)
    y = torch.tensor([[0.7, -1.1], [2.0, 0.3]], dtype=torch.float64)
    d_state, d_params = model.jacobians(y)
    for i in range(y.shape[0]):
        expected = torch.autograd.functional.jacobian(lambda s: model(None, s), y[i])
        torch.testing.assert_close(d_state[i], expected, rtol=1e-14, atol=1e-14)
        out = model(None, y[i])
        for k, parameter in enumerate((model.log_g_over_l, model.raw_mu)):
            rows = [torch.autograd.grad(out[j], parameter, retain_graph=True)[0] for j in range(2)]
            torch.testing.assert_close(d_params[i, :, k], torch.stack(rows), rtol=1e-14, atol=1e-14)


def test_augmented_sensitivities_equal_the_forward_gradient_method():
    """The residual Jacobian from the hand-built sensitivity ODE and from neurode.sensitivities."""
    data = _angle_data(0.0, 0)
    model = PendulumPhysics(g_over_l=4.0, mu=0.2)
    parameters = [model.log_g_over_l, model.raw_mu]
    layout = _layout(data)
    solver = {"method": "dopri5", "rtol": 1e-10, "atol": 1e-12}
    start = Y0 + 0.05
    args = (_CountingField(model), parameters, start, layout, data.observed)
    r1, j1 = _residuals_and_jacobian(*args, jacobians=model.jacobians, jacobian=True, solver=solver)
    r2, j2 = _residuals_and_jacobian(*args, jacobians=None, jacobian=True, solver=solver)
    torch.testing.assert_close(r1, r2, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(j1, j2, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_residual_jacobian_matches_central_finite_differences():
    data = _angle_data(0.0, 1)
    model = PendulumPhysics(g_over_l=4.5, mu=0.25)
    parameters = [model.log_g_over_l, model.raw_mu]
    layout = _layout(data)
    solver = {"method": "dopri5", "rtol": 1e-11, "atol": 1e-13}
    field = _CountingField(model)
    residuals = lambda y0: _residuals_and_jacobian(
        field, parameters, y0, layout, data.observed, jacobians=None, jacobian=False, solver=solver
    )[0]
    _, jac = _residuals_and_jacobian(
        field, parameters, Y0, layout, data.observed, jacobians=model.jacobians, jacobian=True,
        solver=solver,
    )  # fmt: skip
    h = 1e-6
    for k, parameter in enumerate(parameters):
        with torch.no_grad():
            parameter += h
            plus = residuals(Y0)
            parameter -= 2 * h
            minus = residuals(Y0)
            parameter += h
        torch.testing.assert_close(jac[:, k], (plus - minus) / (2 * h), rtol=1e-5, atol=1e-6)
    for column in range(Y0.numel()):
        step = torch.zeros(Y0.numel(), dtype=torch.float64)
        step[column] = h
        difference = (residuals(Y0 + step.view_as(Y0)) - residuals(Y0 - step.view_as(Y0))) / (2 * h)
        torch.testing.assert_close(jac[:, 2 + column], difference, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("irregular", [True, False])
def test_noise_free_data_are_fitted_exactly_from_a_distant_start(irregular):
    data = _angle_data(0.0, 2, irregular=irregular)
    model = PendulumPhysics(g_over_l=4.2, mu=0.15)
    start = Y0 + torch.tensor([0.05, -0.2], dtype=torch.float64)
    fit = least_squares_fit(
        model, [model.log_g_over_l, model.raw_mu], data, start, rtol=1e-10, atol=1e-12,
        jacobians=model.jacobians, tolerance=1e-12,
    )  # fmt: skip
    assert fit.converged
    assert model.g_over_l.item() == pytest.approx(TRUE.g_over_l, rel=1e-6)
    assert model.mu.item() == pytest.approx(TRUE.mu, rel=1e-5)
    torch.testing.assert_close(fit.initial_states, Y0, rtol=1e-5, atol=1e-6)
    assert fit.cost < 1e-12


@pytest.mark.slow
def test_laplace_standard_errors_match_a_finite_difference_gauss_newton():
    """sigma^2 (J^T J)^-1 with J from finite differences of the solve: the same standard errors."""
    data = _angle_data(0.02, 3)
    model = PendulumPhysics(g_over_l=5.0, mu=0.3)
    parameters = [model.log_g_over_l, model.raw_mu]
    fit = least_squares_fit(model, parameters, data, Y0, jacobians=model.jacobians)
    errors = fit.standard_errors()
    layout = _layout(data)
    solver = {"method": "dopri5", "rtol": 1e-11, "atol": 1e-13}
    field = _CountingField(model)
    point = torch.cat(
        [torch.stack([p.detach() for p in parameters]), fit.initial_states.reshape(-1)]
    )

    def residuals(vector):
        with torch.no_grad():
            model.log_g_over_l.fill_(vector[0])
            model.raw_mu.fill_(vector[1])
        return _residuals_and_jacobian(
            field, parameters, vector[2:].view(-1, 2), layout, data.observed,
            jacobians=None, jacobian=False, solver=solver,
        )[0]  # fmt: skip

    h = 1e-6
    columns = []
    for k in range(point.numel()):
        step = torch.zeros_like(point)
        step[k] = h
        columns.append((residuals(point + step) - residuals(point - step)) / (2 * h))
    jac = torch.stack(columns, dim=1)
    sigma2 = float(residuals(point).pow(2).sum()) / (jac.shape[0] - jac.shape[1])
    reference = (sigma2 * torch.linalg.inv(jac.T @ jac)).diagonal()[:2].sqrt()
    torch.testing.assert_close(errors, reference, rtol=1e-3, atol=0)
    assert math.sqrt(fit.noise_variance) == pytest.approx(0.02, rel=0.15)


def test_bad_arguments_are_typed_errors():
    data = _angle_data(0.0, 4)
    model = PendulumPhysics()
    with pytest.raises(NeurodeInputError, match="scalar"):
        least_squares_fit(model, [], data, Y0)
    with pytest.raises(NeurodeInputError, match="initial_states"):
        least_squares_fit(model, [model.log_g_over_l], data, Y0[:2])


def _coverage(replicates: int) -> tuple[float, float]:
    covered = {"g_over_l": 0, "mu": 0}
    for seed in range(replicates):
        data = _angle_data(0.05, 100 + seed, points=31)
        model = PendulumPhysics(g_over_l=TRUE.g_over_l, mu=TRUE.mu)
        parameters = [model.log_g_over_l, model.raw_mu]
        fit = least_squares_fit(model, parameters, data, Y0, jacobians=model.jacobians)
        se_a, se_b = fit.standard_errors().tolist()
        a, b = float(model.log_g_over_l.detach()), float(model.raw_mu.detach())
        low, high = interval_95(a, se_a, math.exp)
        covered["g_over_l"] += low <= TRUE.g_over_l <= high
        low, high = interval_95(b, se_b, softplus)
        covered["mu"] += low <= TRUE.mu <= high
    return covered["g_over_l"] / replicates, covered["mu"] / replicates


@pytest.mark.slow
def test_95_percent_intervals_cover_the_truth_at_their_nominal_rate():
    """Over 300 noisy datasets (noise 0.05 rad, 3 x 31 angles), each interval covers ~95%.

    The count of covering intervals is Binomial(300, 0.95): standard deviation
    sqrt(300 * 0.95 * 0.05) = 3.8, i.e. 1.3 points of coverage. The band
    [0.91, 0.99] is three standard deviations wide on each side: a correct
    method fails it about once in 400 runs (for two independent checks), while
    standard errors off by a factor 1.5 (coverage 80% or 99.8%) fail it surely.
    """
    g_over_l, mu = _coverage(300)
    assert 0.91 <= g_over_l <= 0.99, g_over_l
    assert 0.91 <= mu <= 0.99, mu


@pytest.mark.slow
def test_intervals_cover_the_truth_in_most_of_a_few_repetitions():
    """A shorter coverage test: 30 datasets; Binomial(30, 0.95) >= 25 with p > 0.98."""
    g_over_l, mu = _coverage(30)
    assert g_over_l >= 25 / 30 and mu >= 25 / 30
