"""Kinetic and Jacobian-norm regularisers against closed forms and quadrature.

For the linear field f(h) = A h the exact solution is h(t) = expm(A t) h0, so

    K = ∫_0^T |A expm(A t) h0|² dt     and     ‖∂f/∂h‖_F² = ‖A‖_F²  ⇒  B = T ‖A‖_F².

For A = -a I + w R (R the rotation by π/2) A is a scaled rotation, so
|A expm(A t) h0|² = (a² + w²) e^{-2 a t} |h0|² and
K = (a² + w²) |h0|² (1 - e^{-2 a T}) / (2 a).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from neurode.api import solve
from neurode.errors import NeurodeInputError
from neurode.nn import ODEBlock, RegularisedDynamics, regularised_solve, sample_probe

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
GRADIENTS = ["direct", "backsolve", "checkpoint", "reversible", "forward"]


class LinearField(nn.Module):
    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())

    def forward(self, t, h):
        return h @ self.A.T


class TanhField(nn.Module):
    """f(h) = tanh(h W^T + b): its Jacobian varies along the trajectory."""

    def __init__(self, n: int = 2, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(n, n, generator=g, dtype=F64))
        self.b = nn.Parameter(torch.randn(n, generator=g, dtype=F64))

    def forward(self, t, h):
        return torch.tanh(h @ self.W.T + self.b)


def _scaled_rotation(a: float, w: float) -> torch.Tensor:
    return torch.tensor([[-a, -w], [w, -a]], dtype=F64)


def _rows(batch: int, n: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, n, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _gauss_legendre(T: float, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    nodes, weights = np.polynomial.legendre.leggauss(n)
    return (
        torch.tensor((nodes + 1) * T / 2, dtype=F64),
        torch.tensor(weights * T / 2, dtype=F64),
    )


def _basis_sum_jacobian_term(field, h0, t, **solve_kwargs) -> torch.Tensor:
    """Σ_i ∫ |e_iᵀ J|² dt = ∫ ‖J‖_F² dt exactly, one solve per basis vector."""
    total = 0.0
    for i in range(h0.shape[-1]):
        probe = torch.zeros_like(h0)
        probe[..., i] = 1.0
        dynamics = RegularisedDynamics(field, kinetic=False, jacobian=True)
        dynamics.set_noise(probe)
        _, _, jacobian = solve(dynamics, dynamics.initial_state(h0), t, **solve_kwargs).ys
        total = total + jacobian
    return total


# -------------------------------------------------------------------- single evaluations
def test_regularised_dynamics_rates_on_linear_field():
    A = _rows(3, 3, 0)
    h = _rows(4, 3, 1)
    dynamics = RegularisedDynamics(LinearField(A), noise="rademacher")
    probe = sample_probe(h, "rademacher", torch.Generator().manual_seed(2))
    dynamics.set_noise(probe)
    f, kinetic_rate, jacobian_rate = dynamics(
        torch.tensor(0.0, dtype=F64), dynamics.initial_state(h)
    )
    torch.testing.assert_close(f, h @ A.T)
    torch.testing.assert_close(kinetic_rate, (h @ A.T).square().sum(1))
    # εᵀ J for J = A, per sample (row) b: ε_b A.
    torch.testing.assert_close(jacobian_rate, (probe @ A).square().sum(1))


def test_probe_is_drawn_once_and_kept_until_resampled():
    h = _rows(5, 2, 0)
    dynamics = RegularisedDynamics(TanhField(), generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.0, dtype=F64)
    dynamics(t, dynamics.initial_state(h))
    first = dynamics.noise
    dynamics(t, dynamics.initial_state(h * 2))
    assert dynamics.noise is first
    dynamics.resample_noise(h)
    assert not torch.equal(dynamics.noise, first)


def test_probe_distributions_have_identity_second_moment():
    like = torch.zeros(20000, 3, dtype=F64)
    g = torch.Generator().manual_seed(0)
    rademacher = sample_probe(like, "rademacher", g)
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0}
    for probe in (rademacher, sample_probe(like, "gaussian", g)):
        second_moment = probe.T @ probe / probe.shape[0]
        # Entries of the empirical second moment have standard error ≤ sqrt(3/n) ≈ 0.012.
        torch.testing.assert_close(second_moment, torch.eye(3, dtype=F64), rtol=0, atol=0.05)


# ------------------------------------------------------------------------- kinetic energy
def test_kinetic_energy_of_scaled_rotation_matches_closed_form():
    a, w, T = 0.4, 2.0, 1.5
    h0 = _rows(3, 2, 0)
    result = regularised_solve(
        LinearField(_scaled_rotation(a, w)),
        h0,
        torch.tensor([0.0, T], dtype=F64),
        {"kinetic": 1.0},
        **TIGHT,
    )
    expected = (a**2 + w**2) * h0.square().sum(1) * (1 - math.exp(-2 * a * T)) / (2 * a)
    torch.testing.assert_close(result.kinetic[-1], expected, rtol=1e-8, atol=0)
    torch.testing.assert_close(result.loss, expected.mean(), rtol=1e-8, atol=0)


def test_kinetic_energy_matches_quadrature_of_exact_solution_at_every_save_time():
    A = _rows(3, 3, 4) / math.sqrt(3)
    h0 = _rows(2, 3, 5)
    t = torch.tensor([0.0, 0.3, 0.8, 1.2], dtype=F64)
    result = regularised_solve(LinearField(A), h0, t, {"kinetic": 1.0}, **TIGHT)
    assert result.kinetic.shape == (4, 2)
    assert result.jacobian.abs().max() == 0  # disabled term stays at zero
    for i in range(1, len(t)):
        nodes, weights = _gauss_legendre(t[i].item())
        speeds = torch.stack(
            [(h0 @ torch.linalg.matrix_exp(A * s).T @ A.T).square().sum(1) for s in nodes]
        )
        expected = (weights[:, None] * speeds).sum(0)
        torch.testing.assert_close(result.kinetic[i], expected, rtol=1e-8, atol=0)
    # The state itself is unaffected by the extra components.
    torch.testing.assert_close(
        result.ys[-1], h0 @ torch.linalg.matrix_exp(1.2 * A).T, rtol=1e-8, atol=1e-9
    )


def test_regularisation_loss_is_positive_on_a_decreasing_span():
    a, w = 0.4, 2.0
    h0 = _rows(3, 2, 0)
    result = regularised_solve(
        LinearField(_scaled_rotation(a, w)),
        h0,
        torch.tensor([1.0, 0.0], dtype=F64),
        {"kinetic": 1.0},
        **TIGHT,
    )
    # Backwards from h(1) = h0: |f(h(s))|² = (a² + w²) e^{2 a (1 - s)} |h0|², s ∈ [0, 1].
    expected = (a**2 + w**2) * h0.square().sum(1) * (math.exp(2 * a) - 1) / (2 * a)
    torch.testing.assert_close(result.kinetic[-1], -expected, rtol=1e-8, atol=0)
    torch.testing.assert_close(result.loss, expected.mean(), rtol=1e-8, atol=0)


# ------------------------------------------------------------------------ Jacobian term
def test_exact_jacobian_term_of_linear_field_is_time_times_frobenius_norm():
    A = _rows(3, 3, 7)
    h0 = _rows(4, 3, 8)
    T = 0.9
    total = _basis_sum_jacobian_term(LinearField(A), h0, torch.tensor([0.0, T], dtype=F64), **TIGHT)
    expected = T * A.square().sum()
    torch.testing.assert_close(total[-1], expected.expand(4), rtol=1e-9, atol=0)


def test_exact_jacobian_term_of_nonlinear_field_matches_quadrature():
    field = TanhField(n=2, seed=3)
    h0 = _rows(3, 2, 9)
    T = 1.3
    total = _basis_sum_jacobian_term(field, h0, torch.tensor([0.0, T], dtype=F64), **TIGHT)
    nodes, weights = _gauss_legendre(T)
    states = solve(field, h0, torch.cat([torch.zeros(1, dtype=F64), nodes]), **TIGHT).ys[1:]
    norms = torch.stack(
        [
            torch.stack(
                [
                    torch.autograd.functional.jacobian(lambda x: field(None, x), h).square().sum()
                    for h in states_at_node
                ]
            )
            for states_at_node in states
        ]
    )
    expected = (weights[:, None] * norms).sum(0)
    torch.testing.assert_close(total[-1], expected, rtol=1e-7, atol=0)


def test_probe_stays_fixed_for_the_whole_solve():
    # With one probe ε, B = ∫ |εᵀ J(h(t))|² dt, which quadrature with the same ε reproduces.
    field = TanhField(n=2, seed=1)
    h0 = _rows(3, 2, 2)
    T = 1.0
    result = regularised_solve(
        field,
        h0,
        torch.tensor([0.0, T], dtype=F64),
        {"jacobian": 1.0},
        generator=torch.Generator().manual_seed(11),
        **TIGHT,
    )
    probe = sample_probe(h0, "gaussian", torch.Generator().manual_seed(11))
    nodes, weights = _gauss_legendre(T)
    states = solve(field, h0, torch.cat([torch.zeros(1, dtype=F64), nodes]), **TIGHT).ys[1:]
    rates = []
    for h in states:
        jacobians = torch.stack(
            [torch.autograd.functional.jacobian(lambda x: field(None, x), row) for row in h]
        )
        rates.append(torch.einsum("bi,bij->bj", probe, jacobians).square().sum(1))
    expected = (weights[:, None] * torch.stack(rates)).sum(0)
    torch.testing.assert_close(result.jacobian[-1], expected, rtol=1e-7, atol=0)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_estimate_is_unbiased_with_the_right_variance(noise):
    # Per sample B = T εᵀ M ε with M = A Aᵀ: mean T tr M = T ‖A‖_F², and variance
    # T² · 2 ‖M‖_F² (Gaussian) or T² · 2 Σ_{i≠j} M_ij² (Rademacher).
    A = _rows(3, 3, 12)
    T, n = 0.7, 4000
    h0 = _rows(n, 3, 13)
    result = regularised_solve(
        LinearField(A),
        h0,
        torch.tensor([0.0, T], dtype=F64),
        {"jacobian": 1.0},
        noise=noise,
        generator=torch.Generator().manual_seed(14),
        rtol=1e-8,
        atol=1e-10,
    )
    estimates = result.jacobian[-1]
    exact_mean = T * A.square().sum().item()
    standard_error = estimates.std().item() / math.sqrt(n)
    assert abs(estimates.mean().item() - exact_mean) < 4 * standard_error
    M = A @ A.T
    off_diagonal = M - torch.diag(torch.diag(M))
    squared = M.square().sum() if noise == "gaussian" else off_diagonal.square().sum()
    assert estimates.var().item() == pytest.approx(T**2 * 2 * squared.item(), rel=0.15)
    torch.testing.assert_close(result.loss, estimates.mean())


# -------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("gradient", GRADIENTS)
def test_regularisation_loss_gradient_matches_finite_differences(gradient):
    field = TanhField(n=2, seed=5)
    h0 = _rows(3, 2, 6)
    t = torch.tensor([0.0, 0.8], dtype=F64)
    weights = {"kinetic": 0.5, "jacobian": 0.25}

    def loss_fn():
        result = regularised_solve(
            field,
            h0,
            t,
            weights,
            generator=torch.Generator().manual_seed(0),
            gradient=gradient,
            **TIGHT,
        )
        return result.loss + result.ys[-1].sum()

    loss_fn().backward()
    eps = 1e-6
    for tensor, index in [(field.W, (0, 1)), (field.W, (1, 0)), (field.b, (1,))]:
        with torch.no_grad():
            tensor[index] += eps
            plus = loss_fn().item()
            tensor[index] -= 2 * eps
            minus = loss_fn().item()
            tensor[index] += eps
        expected = (plus - minus) / (2 * eps)
        assert tensor.grad[index].item() == pytest.approx(expected, rel=1e-5, abs=1e-8)


# ------------------------------------------------------------------------ ODEBlock option
def test_odeblock_regularisation_option_stores_weighted_loss():
    a, w, T = 0.3, 1.5, 1.2
    A = _scaled_rotation(a, w)
    h0 = _rows(4, 2, 3)
    seed = 21
    block = ODEBlock(
        LinearField(A),
        t1=T,
        gradient="direct",
        regularisation={"kinetic": 0.3, "jacobian": 0.2},
        generator=torch.Generator().manual_seed(seed),
        **TIGHT,
    )
    assert block.regularisation_loss is None
    out = block(h0)
    torch.testing.assert_close(out, h0 @ torch.linalg.matrix_exp(A * T).T, rtol=1e-8, atol=1e-9)
    kinetic = (a**2 + w**2) * h0.square().sum(1) * (1 - math.exp(-2 * a * T)) / (2 * a)
    probe = sample_probe(h0, "gaussian", torch.Generator().manual_seed(seed))
    jacobian = T * (probe @ A).square().sum(1)
    expected = 0.3 * kinetic.mean() + 0.2 * jacobian.mean()
    torch.testing.assert_close(block.regularisation_loss, expected, rtol=1e-8, atol=0)
    assert block.nfe_forward == block.stats["nfe"] > 0


def test_odeblock_regularisation_gradient_flows_to_parameters_with_backsolve():
    field = TanhField(n=2, seed=8)
    block = ODEBlock(field, gradient="backsolve", regularisation={"kinetic": 1.0}, **TIGHT)
    h0 = _rows(3, 2, 1)
    block(h0)
    block.regularisation_loss.backward()
    direct = ODEBlock(field, gradient="direct", regularisation={"kinetic": 1.0}, **TIGHT)
    grads_backsolve = [p.grad.clone() for p in field.parameters()]
    field.zero_grad()
    direct(h0)
    direct.regularisation_loss.backward()
    for g_backsolve, p in zip(grads_backsolve, field.parameters(), strict=True):
        torch.testing.assert_close(g_backsolve, p.grad, rtol=1e-6, atol=1e-9)
    assert block.nfe_backward > 0


def test_regularisation_arguments_are_validated():
    field = LinearField(torch.eye(2, dtype=F64))
    h0 = _rows(2, 2, 0)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(NeurodeInputError):
        regularised_solve(field, h0, t, {"kinetic": -1.0})
    with pytest.raises(NeurodeInputError):
        regularised_solve(field, h0, t, {"curvature": 1.0})
    with pytest.raises(NeurodeInputError):
        regularised_solve(field, h0, t, {"jacobian": 1.0}, noise="cauchy")
    with pytest.raises(NeurodeInputError):
        regularised_solve(field, (h0, h0), t, {"kinetic": 1.0})
    dynamics = RegularisedDynamics(field)
    dynamics.set_noise(torch.zeros(3, 2, dtype=F64))
    with pytest.raises(NeurodeInputError):
        dynamics(torch.tensor(0.0, dtype=F64), dynamics.initial_state(h0))
