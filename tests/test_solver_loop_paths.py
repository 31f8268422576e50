"""The fast paths of the solver loop against their definitions and against each other.

Without autograd the loop keeps the stages as rows of one matrix, forms every
combination with one BLAS call, writes the saved states into one tensor and
reuses its stage matrix across solves. These tests pin that down: a step is the
Runge–Kutta formula of its tableau (checked against a plain float
implementation), the fused and the autograd-safe paths agree bit for bit, the
dense output is the tableau's interpolant, the error norm is its formula, and
reuse never leaks one solve into another.
"""

import math

import pytest
import torch

import neurode
from _loop import adaptive, on_grid
from neurode.integrate.error_norm import ErrorNorm
from neurode.solvers.runge_kutta import (
    RungeKuttaStepper,
    can_fuse,
    dense_states,
    runge_kutta_step,
)
from neurode.solvers.tableaus import TABLEAUS

F64 = torch.float64
ALL = sorted(TABLEAUS)
WITH_DENSE = sorted(name for name, t in TABLEAUS.items() if t.dense is not None)


def _field(t: float, y: torch.Tensor, perturb: int = 0) -> torch.Tensor:
    """Non-autonomous and nonlinear, so every stage differs from the others."""
    return torch.sin(y).flip(-1) * (1.0 + 0.3 * t) - 0.2 * y * y


def _state() -> torch.Tensor:
    return torch.tensor([[0.3, -1.2, 0.7], [2.0, 0.1, -0.4]], dtype=F64)


def _reference_step(tableau, t: float, y0: list[float], h: float):
    """The Runge–Kutta formula in plain Python floats, one component at a time."""

    def f(time, y):
        state = torch.tensor(y, dtype=F64).reshape(2, 3)
        return _field(time, state).reshape(-1).tolist()

    stages = [f(t, y0)]
    for i in range(1, tableau.stages):
        y_i = [y0[n] + h * sum(a * k[n] for a, k in zip(tableau.a[i], stages)) for n in range(6)]
        stages.append(f(t + tableau.c[i] * h, y_i))
    y1 = [y0[n] + h * sum(b * k[n] for b, k in zip(tableau.b, stages)) for n in range(6)]
    error = None
    if tableau.b_error is not None:
        error = [h * sum(e * k[n] for e, k in zip(tableau.b_error, stages)) for n in range(6)]
    return y1, error


@pytest.mark.parametrize("name", ALL)
def test_fused_step_is_the_runge_kutta_formula_of_its_tableau(name):
    tableau = TABLEAUS[name]
    y0, t, h = _state(), 0.4, 0.15
    with torch.no_grad():
        stepper = RungeKuttaStepper(tableau, y0, fused=True)
        step = stepper.step(_field, t, y0, _field(t, y0), h)
    y1, error = _reference_step(tableau, t, y0.reshape(-1).tolist(), h)
    torch.testing.assert_close(step.y1.reshape(-1), torch.tensor(y1, dtype=F64), rtol=0, atol=1e-14)
    if error is not None:
        torch.testing.assert_close(
            step.error_estimate.reshape(-1), torch.tensor(error, dtype=F64), rtol=0, atol=1e-15
        )


@pytest.mark.parametrize("name", ALL)
def test_fused_and_autograd_safe_steps_agree_bit_for_bit(name):
    tableau = TABLEAUS[name]
    y0, t, h = _state(), 1.1, 0.3
    f0 = _field(t, y0)
    with torch.no_grad():
        stepper = RungeKuttaStepper(tableau, y0, fused=True)
        # A rejected attempt first: the stage matrix then holds stale rows.
        stepper.step(_field, t, y0, f0, 2 * h)
        fused = stepper.step(_field, t, y0, f0, h)
    plain = runge_kutta_step(tableau, _field, t, y0, f0, h)
    assert torch.equal(fused.y1, plain.y1)
    if tableau.b_error is not None:
        assert torch.equal(fused.error_estimate, plain.error_estimate)
    assert all(torch.equal(a, b) for a, b in zip(fused.stages, plain.stages))


@pytest.mark.parametrize("name", WITH_DENSE)
def test_dense_states_are_the_tableau_interpolant(name):
    tableau = TABLEAUS[name]
    y0, t, h = _state(), 0.0, 0.2
    thetas = [0.1, 0.35, 0.5, 0.9, 1.0]
    with torch.no_grad():
        stepper = RungeKuttaStepper(tableau, y0, fused=True)
        step = stepper.step(_field, t, y0, _field(t, y0), h)
        as_list = stepper.dense_states(step, y0, None, h, thetas)
        into = torch.empty(len(thetas), *y0.shape, dtype=F64)
        stepper.dense_states(step, y0, None, h, thetas, out=into)
    for theta, state, written in zip(thetas, as_list, into):
        (expected,) = dense_states(tableau, y0, step.y1, step.stages, None, h, [theta])
        if theta == 1.0:
            expected = step.y1  # b_i(1) = b_i: the interpolant ends on the step's solution
        torch.testing.assert_close(state, expected, rtol=1e-14, atol=1e-15)
        assert torch.equal(written, state)


def test_error_norm_is_the_scaled_rms_formula_with_cached_scales():
    generator = torch.Generator().manual_seed(3)
    y0, y1, y2 = (torch.randn(4, 5, generator=generator, dtype=F64) for _ in range(3))
    rtol, atol = 1e-3, torch.full((5,), 1e-6, dtype=F64)
    norm = ErrorNorm(y0, rtol, atol, None)

    def by_definition(error, a, b):
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        return math.sqrt(float(((error / scale) ** 2).mean()))

    # Accept y0 -> y1, reject y1 -> y2, retry y1 -> y2: scales of y1 are reused twice.
    for error, a, b in [(1e-3 * y2, y0, y1), (1e-2 * y0, y1, y2), (1e-4 * y1, y1, y2)]:
        assert norm.ratio(error, a, b) == pytest.approx(by_definition(error, a, b), rel=1e-13)
    custom = ErrorNorm(y0, rtol, atol, lambda x: x.abs().max())
    expected = float((1e-3 * y2 / (atol + rtol * torch.maximum(y0.abs(), y1.abs()))).abs().max())
    assert custom.ratio(1e-3 * y2, y0, y1) == pytest.approx(expected, rel=1e-14)


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        ).double()

    def forward(self, t, y):
        return self.net(y) * torch.cos(t)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "fehlberg2", "rk4"])
def test_solve_without_autograd_equals_solve_with_autograd_bit_for_bit(method):
    func = _MLP()
    y0 = _state()
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)
    options = {"step_size": 0.05} if method == "rk4" else None
    recorded = neurode.solve(func, y0, t, method=method, rtol=1e-6, atol=1e-9, options=options)
    assert recorded.ys.requires_grad
    with torch.no_grad():
        fast = neurode.solve(func, y0, t, method=method, rtol=1e-6, atol=1e-9, options=options)
    assert torch.equal(fast.ys, recorded.ys.detach())
    assert fast.stats == {k: v for k, v in recorded.stats.items() if k in fast.stats}


def test_saved_states_are_written_into_one_tensor_only_without_autograd():
    y0 = _state()
    t_eval = [0.0, 0.3, 0.9, 1.4]
    with torch.no_grad():
        fast = adaptive(_field, y0, t_eval, TABLEAUS["dopri5"], rtol=1e-6, atol=1e-9)
    assert fast.stacked is not None and fast.stacked.shape == (4, *y0.shape)
    assert all(row.data_ptr() == fast.stacked[i].data_ptr() for i, row in enumerate(fast.ys))
    leaf = y0.clone().requires_grad_(True)
    recorded = adaptive(_field, leaf, t_eval, TABLEAUS["dopri5"], rtol=1e-6, atol=1e-9)
    assert recorded.stacked is None
    assert torch.equal(recorded.stack().detach(), fast.stack())


def test_fixed_grid_paths_agree_bit_for_bit():
    y0 = _state()
    grid = [0.1 * i for i in range(21)]
    t_eval = [0.0, 0.55, 1.0, 2.0]
    with torch.no_grad():
        fast = on_grid(_field, y0, t_eval, TABLEAUS["rk4"], grid)
    recorded = on_grid(_field, y0.clone().requires_grad_(True), t_eval, TABLEAUS["rk4"], grid)
    assert torch.equal(fast.stack(), recorded.stack().detach())


def test_reused_stage_matrix_never_leaks_between_solves():
    func = _MLP()
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    first, other = _state(), _state()[:1] * 3.0
    with torch.no_grad():
        alone = neurode.odeint(func, first, t)
        neurode.odeint(func, other, t)  # a different shape in between
        again = neurode.odeint(func, first, t)
        inner_results = []

        def nested(s, y):
            # A solve of the same shape inside the vector field of the outer solve.
            inner_results.append(neurode.odeint(func, y, t[:2]))
            return func(s, y)

        nested_outer = neurode.odeint(nested, first, t)
        plain_outer = neurode.odeint(func, first, t)
    assert torch.equal(alone, again)
    assert torch.equal(nested_outer, plain_outer)
    assert inner_results and all(r.shape == (2, *first.shape) for r in inner_results)


def test_time_tensors_handed_to_func_keep_their_values():
    seen = []

    def func(t, y):
        seen.append((t, float(t)))
        return -y

    y0 = torch.ones(3, dtype=F64)
    with torch.no_grad():
        neurode.odeint(func, y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64))
    assert len(seen) > 10
    # Stages at equal times share one tensor; none is ever changed afterwards.
    assert all(float(t) == value for t, value in seen)
    assert seen[0][1] == 0.0 and 2.0 in {value for _, value in seen}


def test_fusing_only_where_nothing_records_gradients():
    y = torch.ones(2, dtype=F64)
    with torch.no_grad():
        assert can_fuse(y, y)
        assert not can_fuse(y.requires_grad_(False), torch.ones(2, dtype=F64, requires_grad=True))
    assert not can_fuse(y, y)  # autograd enabled
