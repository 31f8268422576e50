"""method='scipy_solver': exact solutions through every scipy solver, options, the
gradient error, dense output and the missing-scipy error."""

from __future__ import annotations

import math
import sys

import pytest
import torch

import neurode
from neurode.errors import GradientUnavailableError, NeurodeInputError, UnknownOptionError
from neurode.integrate.scipy_solver import SCIPY_SOLVERS

pytest.importorskip("scipy")

F64 = torch.float64


def _oscillator(t, y):
    return torch.stack([y[1], -y[0]])


@pytest.mark.parametrize("solver", SCIPY_SOLVERS)
def test_every_solver_reproduces_the_harmonic_oscillator(solver):
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    ys = neurode.odeint(
        _oscillator,
        y0,
        t,
        method="scipy_solver",
        rtol=1e-10,
        atol=1e-12,
        options=dict(solver=solver),
    )
    exact = torch.stack([torch.cos(t), -torch.sin(t)], dim=-1)
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-7)


@pytest.mark.parametrize("solver", ["Radau", "BDF", "LSODA"])
def test_stiff_linear_system_matches_the_matrix_exponential(solver):
    # Eigenvalues -1 and -10⁴: an explicit method would need ~10⁴ steps.
    a = torch.tensor([[-1.0, 0.0], [9999.0, -10000.0]], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    sol = neurode.solve(
        lambda t, y: a @ y,
        y0,
        t,
        method="scipy_solver",
        rtol=1e-8,
        atol=1e-10,
        options=dict(solver=solver),
    )
    exact = torch.stack([torch.linalg.matrix_exp(a * ti) @ y0 for ti in t])
    torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=1e-9)
    assert sol.stats["steps"] < 1000


def test_default_solver_is_lsoda_like_torchdiffeq():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    y0 = torch.tensor([0.3, -0.2], dtype=F64)

    # Autonomous on purpose: torchdiffeq's wrapper rounds t through float32 before
    # calling func, neurode hands func the float64 time scipy asked for.
    def f(t, y):
        return torch.stack([y[1], -torch.sin(y[0])])

    ours = neurode.odeint(f, y0, t, method="scipy_solver", rtol=1e-6, atol=1e-8)
    theirs = torchdiffeq.odeint(f, y0, t, method="scipy_solver", rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_backwards_in_time():
    t = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    y2 = torch.tensor([1.0, 2.0], dtype=F64)
    ys = neurode.odeint(
        lambda t, y: -y,
        y2,
        t,
        method="scipy_solver",
        rtol=1e-10,
        atol=1e-12,
        options=dict(solver="DOP853"),
    )
    torch.testing.assert_close(ys, torch.exp(2.0 - t)[:, None] * y2, rtol=1e-8, atol=0)


def test_time_dependent_field_tuple_state_and_float32():
    # x' = v, v' = cos t from (0, 0): v = sin t, x = 1 - cos t.
    def f(t, state):
        x, v = state
        return v, torch.cos(t) * torch.ones_like(v)

    t = torch.linspace(0.0, 2.0, 5)
    x, v = neurode.odeint(
        f,
        (torch.zeros(3), torch.zeros(3)),
        t,
        method="scipy_solver",
        rtol=1e-9,
        atol=1e-10,
        options=dict(solver="RK45"),
    )
    assert x.dtype == torch.float32 and x.shape == (5, 3)
    torch.testing.assert_close(x, (1 - torch.cos(t))[:, None].expand(5, 3))
    torch.testing.assert_close(v, torch.sin(t)[:, None].expand(5, 3))


def test_single_time_returns_the_initial_state_without_evaluating():
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    y0 = torch.tensor([1.0, 2.0])
    ys = neurode.odeint(f, y0, torch.tensor([0.5]), method="scipy_solver")
    torch.testing.assert_close(ys, y0[None])
    assert calls == []


def test_stats_count_every_evaluation():
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    sol = neurode.solve(
        f,
        torch.ones(2, dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64),
        method="scipy_solver",
        options=dict(solver="RK45"),
    )
    assert sol.stats["nfe"] == len(calls)
    assert sol.stats["steps"] == sol.stats["accepted"] > 0
    # RK45 (FSAL) costs 6 evaluations per step plus 2 to choose the first step.
    assert len(calls) >= 6 * sol.stats["steps"] + 2


def test_dense_output_is_scipys_interpolant():
    t = torch.tensor([0.0, 3.0], dtype=F64)
    sol = neurode.solve(
        _oscillator,
        torch.tensor([1.0, 0.0], dtype=F64),
        t,
        method="scipy_solver",
        rtol=1e-10,
        atol=1e-12,
        options=dict(solver="DOP853"),
        dense=True,
    )
    probe = torch.linspace(0.0, 3.0, 13, dtype=F64)
    exact = torch.stack([torch.cos(probe), -torch.sin(probe)], dim=-1)
    torch.testing.assert_close(sol.evaluate(probe), exact, rtol=0, atol=1e-8)


def test_options_are_passed_to_scipy():
    # max_step bounds scipy's steps: 3 / 0.1 = 30 steps at least.
    t = torch.tensor([0.0, 3.0], dtype=F64)
    sol = neurode.solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        t,
        method="scipy_solver",
        options=dict(solver="RK45", max_step=0.1, first_step=0.01),
    )
    assert sol.stats["steps"] >= 30
    torch.testing.assert_close(sol.ys[-1], torch.full((1,), math.exp(-3.0), dtype=F64))


# ---------------------------------------------------------------------------- errors
def test_inputs_requiring_grad_solve_forward_and_only_backward_raises():
    """torchdiffeq's semantics: the forward solve works, a backward through it cannot."""
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    ys = neurode.odeint(lambda t, y: -y, y0, t, method="scipy_solver", rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ys[-1].detach(), torch.full((2,), math.exp(-1.0), dtype=ys.dtype))
    assert ys.requires_grad
    with pytest.raises(GradientUnavailableError, match="scipy_solver.*dopri5"):
        ys.sum().backward()
    assert issubclass(GradientUnavailableError, NeurodeInputError)


class _LinearField(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, t, y):
        return self.layer(y)


def test_module_parameters_and_times_requiring_grad_only_fail_on_backward():
    module = _LinearField(torch.nn.Linear(2, 2))
    y0 = torch.ones(1, 2)
    t = torch.tensor([0.0, 1.0], requires_grad=True)
    ys = neurode.odeint(module, y0, t, method="scipy_solver")
    assert ys.shape == (2, 1, 2)
    with pytest.raises(GradientUnavailableError):
        ys.sum().backward()
    with torch.no_grad():
        assert not neurode.odeint(module, y0, t, method="scipy_solver").requires_grad


def test_the_adjoint_solves_its_backward_system_with_scipy_too():
    torch.manual_seed(0)
    module = _LinearField(torch.nn.Linear(2, 2).double())
    y0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    options = {"solver": "DOP853"}
    ys = neurode.odeint_adjoint(
        module, y0, t, method="scipy_solver", options=options, rtol=1e-10, atol=1e-12
    )
    got = torch.autograd.grad(ys.pow(2).sum(), tuple(module.parameters()))
    ys = neurode.odeint(module, y0, t, rtol=1e-10, atol=1e-12)
    expected = torch.autograd.grad(ys.pow(2).sum(), tuple(module.parameters()))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "options",
    [
        {"solver": "Euler"},
        {"solver": 3},
        {"min_step": 1.0, "max_step": 0.5},
        {"first_step": -1.0},
        {"step_size": 0.1},
    ],
)
def test_bad_options_are_typed_errors(options):
    with pytest.raises(UnknownOptionError):
        neurode.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            method="scipy_solver",
            options=options,
        )


def test_missing_scipy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    with pytest.raises(ModuleNotFoundError, match="pip install neurode\\[scipy\\]"):
        neurode.odeint(
            lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), method="scipy_solver"
        )
