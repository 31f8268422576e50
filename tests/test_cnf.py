"""Continuous normalizing flows: log-densities against closed forms, the trace estimators,
the RNODE integrals, toy densities and the ``neurode cnf`` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from neurode.cli import main
from neurode.data.toy_densities import (
    TOY_DENSITIES,
    eight_gaussians_log_density,
    sample_toy_density,
)
from neurode.errors import NeurodeInputError, ShapeMismatchError
from neurode.models.cnf import CNF, standard_normal_log_prob
from neurode.models.concatsquash import ConcatSquashLinear, ConcatSquashMLP
from neurode.models.divergence import exact_divergence, hutchinson_divergence, sample_probe

A = torch.tensor([[0.3, -1.0], [0.5, -0.2]], dtype=torch.float64)
T = 0.7


class _Linear(nn.Module):
    """f(t, z) = A z."""

    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = nn.Parameter(matrix.clone())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z @ self.matrix.T


def _push_forward_log_density(x: torch.Tensor, matrix: torch.Tensor, t1: float) -> torch.Tensor:
    """x = e^{A T} z0 with z0 ~ N(0, I): log p(x) = log N(e^{-A T} x; 0, I) - T tr A."""
    z0 = x @ torch.linalg.matrix_exp(-matrix * t1).T
    return standard_normal_log_prob(z0) - t1 * torch.trace(matrix)


def _linear_cnf(trace: str, **kwargs) -> CNF:
    return CNF(_Linear(A), 2, t1=T, trace=trace, rtol=1e-10, atol=1e-10, **kwargs)


def _random_points(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_linear_flow_log_density_equals_gaussian_push_forward():
    x = _random_points(16)
    log_prob = _linear_cnf("exact").log_prob(x)
    torch.testing.assert_close(log_prob, _push_forward_log_density(x, A, T), rtol=0, atol=1e-6)


def test_linear_flow_base_points_are_exact_inverse_images():
    x = _random_points(8)
    cnf = _linear_cnf("exact")
    expected = x @ torch.linalg.matrix_exp(-A * T).T
    torch.testing.assert_close(cnf(x).base, expected, rtol=0, atol=1e-8)
    torch.testing.assert_close(cnf.inverse(x), expected, rtol=0, atol=1e-8)


def test_log_density_gradient_matches_gradient_of_closed_form():
    x = _random_points(4)
    cnf = _linear_cnf("exact")
    cnf.log_prob(x).sum().backward()
    matrix = A.clone().requires_grad_(True)
    _push_forward_log_density(x, matrix, T).sum().backward()
    torch.testing.assert_close(cnf.dynamics.matrix.grad, matrix.grad, rtol=0, atol=1e-6)


@pytest.mark.parametrize("gradient", ["backsolve", "checkpoint"])
def test_adjoint_gradients_with_hutchinson_probes_equal_direct_backpropagation(gradient):
    # The adjoint re-evaluates the field backwards in time; it must see the same probes
    # and differentiate through the trace estimate, or the gradients differ.
    torch.manual_seed(0)
    dynamics = ConcatSquashMLP(2, (8, 8)).double()
    x = _random_points(6)
    gradients = {}
    for method in ("direct", gradient):
        cnf = CNF(
            dynamics,
            2,
            trace="hutchinson",
            rtol=1e-10,
            atol=1e-10,
            gradient=method,
            kinetic_weight=0.1,
            jacobian_weight=0.1,
        )
        dynamics.zero_grad()
        output = cnf(x, generator=torch.Generator().manual_seed(7))
        loss = -output.log_prob.mean() + 0.1 * (output.kinetic + output.jacobian).mean()
        loss.backward()
        gradients[method] = torch.cat([p.grad.reshape(-1) for p in dynamics.parameters()])
    assert gradients["direct"].abs().max() > 1e-3
    torch.testing.assert_close(gradients[gradient], gradients["direct"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_probe_is_fixed_for_the_whole_solve(noise):
    # For f = A z the integrand εᵀ A ε is constant in time only if ε is: each row's
    # estimate must equal exactly log N(e^{-AT} x) - T εᵀ A ε with that row's probe.
    x = _random_points(32)
    cnf = _linear_cnf("hutchinson", noise=noise)
    log_prob = cnf(x, generator=torch.Generator().manual_seed(3)).log_prob
    probe = sample_probe(x, noise, torch.Generator().manual_seed(3))
    quadratic_form = ((probe @ A.T) * probe).sum(-1)
    z0 = x @ torch.linalg.matrix_exp(-A * T).T
    expected = standard_normal_log_prob(z0) - T * quadratic_form
    torch.testing.assert_close(log_prob, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_log_density_is_unbiased(noise):
    n = 4000
    x = _random_points(1).expand(n, 2)
    torch.manual_seed(1)
    with torch.no_grad():
        estimates = _linear_cnf("hutchinson", noise=noise).log_prob(x)
    exact = _push_forward_log_density(x[:1], A, T)
    standard_error = estimates.std() / math.sqrt(n)
    assert standard_error > 0
    assert abs(estimates.mean() - exact) < 4 * standard_error


def _nonlinear_field(z: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([[1.0, -2.0, 0.5], [0.3, 0.8, -1.1], [2.0, 0.1, 0.4]], dtype=z.dtype)
    return torch.tanh(z @ w.T) * torch.sin(z).flip(-1) + z**2


def _exact_trace_by_jacobian(z: torch.Tensor) -> torch.Tensor:
    jacobians = [
        torch.autograd.functional.jacobian(_nonlinear_field, row[None])[0, :, 0] for row in z
    ]
    return torch.stack([torch.trace(j) for j in jacobians])


def test_exact_divergence_equals_trace_of_full_jacobian():
    z = _random_points(6).repeat(1, 2)[:, :3].requires_grad_(True)
    divergence = exact_divergence(_nonlinear_field(z), z)
    torch.testing.assert_close(divergence, _exact_trace_by_jacobian(z.detach()), rtol=0, atol=1e-12)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_divergence_mean_over_probes_is_the_exact_trace(distribution):
    n = 20000
    point = torch.tensor([[0.4, -0.9, 1.3]], dtype=torch.float64)
    z = point.expand(n, 3).clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(3)
    probe = sample_probe(z, distribution, generator)
    estimates = hutchinson_divergence(_nonlinear_field(z), z, probe)
    exact = _exact_trace_by_jacobian(point)[0]
    standard_error = estimates.std() / math.sqrt(n)
    assert abs(estimates.mean() - exact) < 4 * standard_error
    # The estimator is not exact per probe, so the test above is not vacuous.
    assert estimates.std() > 1e-3


def test_probe_moments_are_zero_mean_identity_covariance():
    like = torch.zeros(50000, 3, dtype=torch.float64)
    for distribution in ("rademacher", "gaussian"):
        probe = sample_probe(like, distribution, torch.Generator().manual_seed(0))
        covariance = probe.T @ probe / len(probe)
        torch.testing.assert_close(covariance, torch.eye(3, dtype=torch.float64), atol=0.03, rtol=0)
        assert probe.mean(0).abs().max() < 0.03
    rademacher = sample_probe(like, "rademacher")
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}


def test_sampling_then_log_prob_agree_and_inverse_recovers_base():
    torch.manual_seed(0)
    dynamics = ConcatSquashMLP(2, (16, 16), activation="tanh").double()
    cnf = CNF(dynamics, 2, t1=1.0, trace="exact", rtol=1e-9, atol=1e-9)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        samples, log_prob_along_flow = cnf.sample(
            64, generator=generator, return_log_prob=True, dtype=torch.float64
        )
        base = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        output = cnf(samples)
    torch.testing.assert_close(output.base, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.log_prob, log_prob_along_flow, rtol=0, atol=1e-6)
    # The flow is not the identity, so the checks above compare different densities.
    assert (log_prob_along_flow - standard_normal_log_prob(samples)).abs().max() > 1e-2


def test_flow_trajectory_starts_at_base_and_ends_at_samples():
    torch.manual_seed(0)
    cnf = CNF(ConcatSquashMLP(2, (8,)).double(), 2, t1=1.5, rtol=1e-9, atol=1e-9)
    z0 = _random_points(5)
    times = torch.linspace(0, 1.5, 4, dtype=torch.float64)
    with torch.no_grad():
        path = cnf.flow(z0, times)
        torch.testing.assert_close(path[0], z0)
        torch.testing.assert_close(cnf.inverse(path[-1]), z0, rtol=0, atol=1e-7)


def test_rnode_integrals_match_closed_forms_for_linear_flow():
    # z(t) = e^{-A (T - t)} x, so ∫_0^T ‖A z(t)‖² dt is a quadrature of a smooth function,
    # and ‖∂f/∂z‖_F² = ‖A‖_F² at all times.
    x = _random_points(3)
    output = _linear_cnf("exact", kinetic_weight=1.0, jacobian_weight=1.0)(x)
    times = torch.linspace(0, T, 2001, dtype=torch.float64)
    velocities = torch.stack([x @ (A @ torch.linalg.matrix_exp(-A * (T - t))).T for t in times])
    kinetic = torch.trapezoid((velocities**2).sum(-1), times, dim=0)
    torch.testing.assert_close(output.kinetic, kinetic, rtol=1e-6, atol=0)
    expected_jacobian = torch.full((3,), T * float((A**2).sum()), dtype=torch.float64)
    torch.testing.assert_close(output.jacobian, expected_jacobian, rtol=0, atol=1e-7)
    torch.testing.assert_close(
        output.log_prob, _push_forward_log_density(x, A, T), atol=1e-6, rtol=0
    )


def test_regularised_loss_adds_weighted_integrals():
    x = _random_points(4)
    cnf = _linear_cnf("exact", kinetic_weight=0.5, jacobian_weight=0.25)
    loss, output = cnf.loss(x)
    expected = -output.log_prob.mean() + 0.5 * output.kinetic.mean() + 0.25 * output.jacobian.mean()
    torch.testing.assert_close(loss, expected)


def test_concatsquash_layer_formula():
    torch.manual_seed(0)
    layer = ConcatSquashLinear(3, 4).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    gate = torch.sigmoid(layer.gate.weight[:, 0] * t + layer.gate.bias)
    expected = (x @ layer.linear.weight.T + layer.linear.bias) * gate + layer.shift.weight[:, 0] * t
    torch.testing.assert_close(layer(t, x), expected)


def test_bad_arguments_raise_typed_errors():
    with pytest.raises(NeurodeInputError):
        CNF(_Linear(A), 2, trace="approximate")
    with pytest.raises(NeurodeInputError):
        CNF(_Linear(A), 2, noise="uniform")
    with pytest.raises(NeurodeInputError):
        CNF(_Linear(A), 2, t1=0.0)
    with pytest.raises(ShapeMismatchError):
        _linear_cnf("exact").log_prob(torch.zeros(4, 3, dtype=torch.float64))
    with pytest.raises(NeurodeInputError):
        _linear_cnf("exact").sample(0)
    with pytest.raises(NeurodeInputError):
        ConcatSquashMLP(2, (8,), activation="swish")


@pytest.mark.parametrize("name", TOY_DENSITIES)
def test_toy_density_samples_are_reproducible_and_bounded(name):
    a = sample_toy_density(name, 500, generator=torch.Generator().manual_seed(0))
    b = sample_toy_density(name, 500, generator=torch.Generator().manual_seed(0))
    assert a.shape == (500, 2)
    torch.testing.assert_close(a, b)
    assert a.abs().max() < 6


def test_checkerboard_samples_lie_on_dark_squares():
    x = sample_toy_density("checkerboard", 2000, dtype=torch.float64)
    cells = torch.floor((x + 4) / 2).long()
    assert ((cells >= 0) & (cells <= 3)).all()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    # All 8 dark squares are used, with roughly equal shares.
    counts = torch.bincount(cells[:, 0] * 4 + cells[:, 1], minlength=16)
    dark = counts[counts > 0]
    assert len(dark) == 8 and dark.min() > 150


def test_rings_radii_cluster_at_ring_radii():
    x = sample_toy_density("rings", 4000, dtype=torch.float64)
    radius = x.norm(dim=-1)
    nearest = torch.tensor([0.75, 1.5, 2.25, 3.0], dtype=torch.float64)
    distance = (radius[:, None] - nearest).abs().min(-1).values
    assert distance.std() < 0.1


def test_eight_gaussians_density_integrates_to_one_and_matches_samples():
    grid = torch.linspace(-6, 6, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = eight_gaussians_log_density(torch.stack([xx, yy], -1)).exp()
    total = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert abs(float(total) - 1) < 1e-6
    samples = sample_toy_density("8gaussians", 20000, dtype=torch.float64)
    # E[-log p(x)] is the entropy; the sample mean and the quadrature must agree.
    entropy = -torch.trapezoid(torch.trapezoid(density * density.log(), grid, dim=1), grid)
    sample_entropy = -eight_gaussians_log_density(samples).mean()
    assert abs(float(sample_entropy - entropy)) < 0.03


def test_unknown_toy_density_is_an_input_error():
    with pytest.raises(NeurodeInputError):
        sample_toy_density("spiral", 10)


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    assert main(["cnf", "--dataset", "moons", "--epochs", "0", "--out", str(tmp_path)]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["cnf", "--dataset", "moons", "--tol", "-1", "--out", str(tmp_path)]) == 2
    with pytest.raises(SystemExit):
        main(["cnf", "--dataset", "swissroll", "--out", str(tmp_path)])


def test_cli_smoke_run_writes_finite_metrics_and_plots(tmp_path):
    code = main(
        [
            "cnf",
            "--dataset",
            "8gaussians",
            "--epochs",
            "1",
            "--train-size",
            "256",
            "--test-size",
            "128",
            "--batch-size",
            "128",
            "--hidden",
            "16",
            "16",
            "--tol",
            "1e-3",
            "--grid",
            "20",
            "--no-progress",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert math.isfinite(metrics["test_log_likelihood"])
    assert math.isfinite(metrics["reference_log_likelihood"])
    assert metrics["nfe_forward"] > 0
    assert all(math.isfinite(value) for value in metrics["history"]["loss"])
    for name in ("density.png", "samples.png", "flow.png"):
        assert (tmp_path / name).stat().st_size > 0
