"""Adaptive solves against closed-form solutions, forwards and backwards in time."""

import math

import pytest
import torch

import neurode
from neurode.solvers.tableaus import TABLEAUS

ADAPTIVE = sorted(n for n, t in TABLEAUS.items() if t.adaptive)
F64 = torch.float64

# Global error over tolerance. Local error control bounds the error per step, not the
# global error; the low-order pairs with local extrapolation (their error estimate is
# of order 1 while the propagated solution is of order 2) lag far behind.
ERROR_OVER_TOLERANCE = {"fehlberg2": 1e4, "adaptive_heun": 1e3}

# Second-order pairs need ~tol^(-1/2) steps: test them at looser tolerances.
TOLERANCES = {"fehlberg2": (1e-3, 1e-5), "adaptive_heun": (1e-3, 1e-5)}


def _linear_problem():
    generator = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=generator, dtype=F64) * 0.5 - 0.5 * torch.eye(4, dtype=F64)
    y0 = torch.randn(4, generator=generator, dtype=F64)
    return A, y0


@pytest.mark.parametrize("method", ADAPTIVE)
def test_linear_system_matches_matrix_exponential_and_error_shrinks_with_tolerance(method):
    A, y0 = _linear_problem()
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    exact = torch.stack([torch.linalg.matrix_exp(A * ti) @ y0 for ti in t])
    errors = []
    tolerances = TOLERANCES.get(method, (1e-4, 1e-7))
    for tol in tolerances:
        ys = neurode.odeint(lambda t, y: A @ y, y0, t, method=method, rtol=tol, atol=tol)
        errors.append(float((ys - exact).abs().max()))
    bound = ERROR_OVER_TOLERANCE.get(method, 100)
    assert errors[0] < tolerances[0] * bound
    assert errors[1] < tolerances[1] * bound
    assert errors[1] < errors[0] / 10


@pytest.mark.parametrize("method", ADAPTIVE)
def test_harmonic_oscillator_backwards_in_time(method):
    omega = 2.0
    t = torch.linspace(2.0, -1.0, 9, dtype=F64)
    y0 = torch.tensor([math.cos(omega * 2.0), -omega * math.sin(omega * 2.0)], dtype=F64)

    def f(t, y):
        return torch.stack([y[1], -(omega**2) * y[0]])

    tol = TOLERANCES.get(method, (None, 1e-8))[1]
    ys = neurode.odeint(f, y0, t, method=method, rtol=tol, atol=tol)
    exact = torch.stack([torch.cos(omega * t), -omega * torch.sin(omega * t)], dim=-1)
    assert float((ys - exact).abs().max()) < tol * 1e3 * ERROR_OVER_TOLERANCE.get(method, 1)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "dopri8", "bosh3"])
def test_exponential_decay_nonautonomous_batch(method):
    # y' = -t y  =>  y(t) = y0 exp(-t²/2); a (3, 2) state of independent rows.
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0], [4.0, 0.1]], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.7, 2.5], dtype=F64)
    ys = neurode.odeint(lambda t, y: -t * y, y0, t, method=method, rtol=1e-9, atol=1e-12)
    exact = y0 * torch.exp(-(t**2) / 2).view(-1, 1, 1)
    assert ys.shape == (4, 3, 2)
    assert torch.allclose(ys, exact, rtol=1e-6, atol=1e-9)


def test_tolerance_tightening_lowers_error_monotonically_dopri5():
    A, y0 = _linear_problem()
    t = torch.tensor([0.0, 5.0], dtype=F64)
    exact = torch.linalg.matrix_exp(A * 5.0) @ y0
    errors = [
        float(
            (neurode.odeint(lambda t, y: A @ y, y0, t, rtol=tol, atol=tol)[-1] - exact).abs().max()
        )
        for tol in (1e-3, 1e-5, 1e-7, 1e-9, 1e-11)
    ]
    assert all(b < a for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-9


def test_dense_output_between_steps_is_accurate():
    A, y0 = _linear_problem()
    t = torch.tensor([0.0, 4.0], dtype=F64)
    for method in ("dopri5", "tsit5", "bosh3", "dopri8"):
        solution = neurode.solve(
            lambda t, y: A @ y, y0, t, method=method, rtol=1e-9, atol=1e-11, dense=True
        )
        assert solution.stats["accepted"] > 3
        queries = torch.linspace(0.0, 4.0, 57, dtype=F64)
        dense = solution.evaluate(queries)
        exact = torch.stack([torch.linalg.matrix_exp(A * q) @ y0 for q in queries])
        assert float((dense - exact).abs().max()) < 1e-6, method


def test_dense_output_rejects_times_outside_span():
    solution = neurode.solve(
        lambda t, y: -y, torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64), dense=True
    )
    with pytest.raises(ValueError, match="outside"):
        solution.evaluate(1.5)


def test_float32_state_with_float64_times_keeps_state_dtype():
    y0 = torch.ones(3)
    t = torch.linspace(0, 1, 5, dtype=F64)
    ys = neurode.odeint(lambda t, y: -t * y, y0, t)
    assert ys.dtype == torch.float32
    assert torch.allclose(ys[-1], torch.full((3,), math.exp(-0.5)), atol=1e-6)


def test_stats_count_every_evaluation():
    calls = []

    def f(t, y):
        calls.append(float(t))
        return -y

    solution = neurode.solve(f, torch.ones(2, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64))
    stats = solution.stats
    assert stats["nfe"] == len(calls)
    assert stats["steps"] == stats["accepted"] + stats["rejected"]
    # FSAL dopri5: 6 new evaluations per attempted step, plus f(y0) and the initial-step probe.
    assert stats["nfe"] == 6 * stats["steps"] + 2
