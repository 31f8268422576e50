"""batch='per_sample': each row of y0 is its own problem with its own steps.

Checked against the same row solved alone in joint mode, exact solutions, per-row
save times, finite differences, and the typed errors of the mode."""

from __future__ import annotations

import math

import pytest
import torch

import neurode
from neurode.errors import (
    InvalidTimesError,
    InvalidToleranceError,
    MaxStepsExceededError,
    NonFiniteStateError,
    StepSizeTooSmallError,
    StructureMismatchError,
    UnknownMethodError,
    UnknownOptionError,
)

F64 = torch.float64
RATES = torch.tensor([0.1, 10.0, 1.0], dtype=F64)


def _decay(t, y):
    """y_b' = -k_b y_b with k = RATES: row b decays at its own rate."""
    return -RATES.reshape(-1, *([1] * (y.ndim - 1))) * y


def _nonlinear(t, y):
    """A pendulum with a time-dependent forcing: each row is a (θ, ω) pair."""
    theta, omega = y[..., 0], y[..., 1]
    return torch.stack([omega, -torch.sin(theta) + 0.3 * torch.cos(t) * torch.ones_like(theta)], -1)


# ------------------------------------------------------------- agreement with joint
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "adaptive_heun", "dopri8"])
def test_each_row_takes_the_steps_it_takes_alone(method):
    y0 = torch.tensor([[0.1, 0.0], [1.0, 0.5], [2.5, -1.0]], dtype=F64)
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    # Looser for the second-order pair, which would otherwise need thousands of steps.
    tolerances = (
        dict(rtol=1e-4, atol=1e-6) if method == "adaptive_heun" else dict(rtol=1e-6, atol=1e-8)
    )
    batched = neurode.solve(_nonlinear, y0, t, method=method, batch="per_sample", **tolerances)
    for b in range(3):
        alone = neurode.solve(
            lambda t, y: _nonlinear(t, y[None])[0], y0[b], t, method=method, **tolerances
        )
        # The same algorithm row by row: the same number of steps and an answer within
        # the tolerance (rounding alone separates them; through the step-size controller
        # it can move a step size slightly when an error ratio is at rounding level).
        torch.testing.assert_close(batched.ys[:, b], alone.ys, **tolerances)
        assert int(batched.stats["steps"][b]) == alone.stats["steps"]
        assert int(batched.stats["rejected"][b]) == alone.stats["rejected"]


def test_rows_of_different_stiffness_take_different_numbers_of_steps():
    y0 = torch.ones(3, 2, dtype=F64)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    per_sample = neurode.solve(_decay, y0, t, rtol=1e-8, atol=1e-10, batch="per_sample")
    joint = neurode.solve(_decay, y0, t, rtol=1e-8, atol=1e-10)
    steps = per_sample.stats["steps"]
    assert steps.shape == (3,) and steps.dtype == torch.long
    # The slow row (rate 0.1) needs a handful of steps, the fast one (rate 10) dozens;
    # jointly every row takes the fast row's steps.
    assert int(steps[0]) * 5 < int(steps[1])
    assert int(steps[0]) < int(steps[2]) < int(steps[1])
    assert joint.stats["steps"] >= int(steps[1])
    # One batched call per stage: the total is set by the row needing most steps.
    assert per_sample.stats["nfe"] == 6 * int(per_sample.stats["steps"].max()) + 2
    exact = torch.exp(-RATES * 5.0)[:, None].expand(3, 2)
    torch.testing.assert_close(per_sample.ys[-1], exact, rtol=1e-6, atol=1e-10)


def test_per_row_tolerances():
    # Row 0 asks for 1e-3, row 1 for 1e-9: same dynamics, different work.
    y0 = torch.ones(2, 1, dtype=F64)
    rtol = torch.tensor([[1e-3], [1e-9]], dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    f = lambda t, y: torch.cos(t)[:, None] * y
    sol = neurode.solve(f, y0, t, rtol=rtol, atol=1e-12, batch="per_sample")
    assert int(sol.stats["steps"][0]) < int(sol.stats["steps"][1])
    exact = math.exp(math.sin(2.0))
    assert abs(float(sol.ys[-1, 1, 0]) - exact) < 1e-7
    for b, tolerance in enumerate((1e-3, 1e-9)):
        alone = neurode.solve(lambda t, y: torch.cos(t) * y, y0[b], t, rtol=tolerance, atol=1e-12)
        assert int(sol.stats["steps"][b]) == alone.stats["steps"]


# ------------------------------------------------------------------- exact solutions
def test_exact_solution_of_a_time_dependent_field_per_row_start():
    # y' = cos(t) y from y(t0_b) = 1: y(t) = exp(sin t - sin t0_b), each row its own span.
    t = torch.tensor(
        [[0.0, 0.5, 1.0, 2.0], [1.0, 1.1, 1.7, 4.0], [-2.0, -1.0, 0.0, 0.3]], dtype=F64
    )
    y0 = torch.ones(3, 1, dtype=F64)
    sol = neurode.solve(
        lambda t, y: torch.cos(t)[:, None] * y, y0, t, rtol=1e-9, atol=1e-12, batch="per_sample"
    )
    assert sol.ys.shape == (4, 3, 1)
    exact = torch.exp(torch.sin(t) - torch.sin(t[:, :1])).T[..., None]
    torch.testing.assert_close(sol.ys, exact, rtol=1e-7, atol=1e-10)
    assert sol.ts is t


def test_saving_several_times_inside_one_step():
    # Tight save times on a slow row: many saves fall inside one accepted step and
    # come from the dense output.
    t = torch.tensor([[0.0, 0.01, 0.02, 0.03, 4.0], [0.0, 1.0, 2.0, 3.0, 4.0]], dtype=F64)
    y0 = torch.ones(2, dtype=F64)
    rates = torch.tensor([0.2, 0.5], dtype=F64)
    sol = neurode.solve(lambda t, y: -rates * y, y0, t, rtol=1e-9, atol=1e-12, batch="per_sample")
    torch.testing.assert_close(sol.ys, torch.exp(-rates[:, None] * t).T, rtol=1e-8, atol=0)
    assert int(sol.stats["steps"][0]) < 20


def test_backwards_in_time_per_row():
    t = torch.tensor([[1.0, 0.5, 0.0], [3.0, 2.0, -1.0]], dtype=F64)
    y1 = torch.tensor([[1.0, 2.0], [3.0, -1.0]], dtype=F64)
    sol = neurode.solve(
        lambda t, y: -0.7 * y, y1, t, rtol=1e-10, atol=1e-12, method="tsit5", batch="per_sample"
    )
    exact = torch.exp(-0.7 * (t - t[:, :1])).T[..., None] * y1
    torch.testing.assert_close(sol.ys, exact, rtol=1e-8, atol=0)


def test_func_sees_each_rows_own_time():
    seen = []

    def f(t, y):
        seen.append(t.clone())
        return torch.zeros_like(y)

    t = torch.tensor([[0.0, 1.0], [5.0, 7.0]], dtype=F64)
    neurode.solve(f, torch.zeros(2, 3, dtype=F64), t, batch="per_sample")
    assert all(s.shape == (2,) for s in seen)
    assert float(seen[0][0]) == 0.0 and float(seen[0][1]) == 5.0
    assert all(0.0 <= float(s[0]) <= 1.0 and 5.0 <= float(s[1]) <= 7.0 for s in seen)


def test_rejected_rows_keep_their_state():
    # A first step of 1 is fine for the slow row and far too long for the fast one,
    # which must reject (without moving) and still end on the exact solution.
    y0 = torch.ones(3, 1, dtype=F64)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    sol = neurode.solve(
        _decay, y0, t, rtol=1e-8, atol=1e-10, options=dict(first_step=1.0), batch="per_sample"
    )
    assert int(sol.stats["rejected"][0]) == 0
    assert int(sol.stats["rejected"][1]) > 0
    steps = sol.stats["steps"]
    assert torch.equal(steps, sol.stats["accepted"] + sol.stats["rejected"])
    torch.testing.assert_close(sol.ys[-1], torch.exp(-RATES)[:, None], rtol=1e-7, atol=1e-10)


def test_single_time_returns_y0():
    y0 = torch.randn(3, 2)
    sol = neurode.solve(_decay, y0, torch.tensor([0.3]), batch="per_sample")
    torch.testing.assert_close(sol.ys, y0[None])
    assert torch.equal(sol.stats["steps"], torch.zeros(3, dtype=torch.long))


def test_float32_state_keeps_its_dtype():
    y0 = torch.ones(3, 2)
    t = torch.linspace(0.0, 1.0, 3)
    sol = neurode.solve(_decay, y0, t, rtol=1e-5, atol=1e-7, batch="per_sample")
    assert sol.ys.dtype == torch.float32
    exact = torch.exp(-RATES.float()[None, :, None] * t[:, None, None]).expand(3, 3, 2)
    torch.testing.assert_close(sol.ys, exact, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------- gradients
class _Damped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor([0.4, 1.3], dtype=F64))

    def forward(self, t, y):
        return torch.stack(
            [y[:, 1], -self.k[0] * torch.sin(y[:, 0]) - self.k[1] * y[:, 1] + torch.cos(t)], -1
        )


def _finite_difference(loss, tensor, eps=1e-6):
    grad = torch.zeros_like(tensor)
    with torch.no_grad():
        flat, out = tensor.view(-1), grad.view(-1)
        for i in range(flat.numel()):
            flat[i] += eps
            up = float(loss())
            flat[i] -= 2 * eps
            down = float(loss())
            flat[i] += eps
            out[i] = (up - down) / (2 * eps)
    return grad


def test_direct_gradients_match_finite_differences():
    field = _Damped()
    y0 = torch.tensor([[0.5, 0.0], [1.0, -0.3]], dtype=F64, requires_grad=True)
    t = torch.tensor([[0.0, 0.7, 1.5], [0.2, 1.0, 1.8]], dtype=F64, requires_grad=True)
    weights = torch.randn(3, 2, 2, dtype=F64, generator=torch.Generator().manual_seed(0))

    def loss():
        # Tight tolerances: finite differences also see the step sizes move with the inputs.
        sol = neurode.solve(field, y0, t, rtol=1e-10, atol=1e-10, batch="per_sample")
        return (sol.ys * weights).sum()

    grads = torch.autograd.grad(loss(), (y0, field.k, t))
    for tensor, grad in zip((y0, field.k, t), grads):
        torch.testing.assert_close(grad, _finite_difference(loss, tensor), rtol=1e-5, atol=1e-7)


def test_gradient_of_a_row_does_not_depend_on_the_other_rows():
    # d(loss of row 0)/d(y0) is zero on every other row.
    y0 = torch.ones(3, 2, dtype=F64, requires_grad=True)
    sol = neurode.solve(_decay, y0, torch.tensor([0.0, 1.0], dtype=F64), batch="per_sample")
    (grad,) = torch.autograd.grad(sol.ys[-1, 0].sum(), y0)
    torch.testing.assert_close(grad[0], torch.full((2,), math.exp(-0.1), dtype=F64))
    assert torch.equal(grad[1:], torch.zeros(2, 2, dtype=F64))


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        (dict(gradient="backsolve"), UnknownOptionError),
        (dict(gradient="checkpoint"), UnknownOptionError),
        (dict(dense=True), UnknownOptionError),
        (dict(method="rk4"), UnknownMethodError),
        (dict(method="implicit_adams"), UnknownMethodError),
        (dict(method="no_such_method"), UnknownMethodError),
        (dict(options=dict(jump_t=[0.5])), UnknownOptionError),
        (dict(options=dict(norm=lambda x: x.abs().max())), UnknownOptionError),
        (dict(options=dict(no_such_option=1)), UnknownOptionError),
        (dict(rtol=-1.0), InvalidToleranceError),
        (dict(atol=torch.ones(5)), InvalidToleranceError),
    ],
)
def test_bad_arguments_are_typed_errors_before_any_evaluation(kwargs, error):
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    with pytest.raises(error):
        neurode.solve(f, torch.ones(3, 2), torch.tensor([0.0, 1.0]), batch="per_sample", **kwargs)
    assert calls == []


@pytest.mark.parametrize(
    ("y0", "t", "error"),
    [
        ((torch.ones(3), torch.ones(3)), torch.tensor([0.0, 1.0]), StructureMismatchError),
        (torch.tensor(1.0), torch.tensor([0.0, 1.0]), StructureMismatchError),
        (torch.ones(3, 2), torch.zeros(2, 4), InvalidTimesError),  # batch of 2, not 3
        (torch.ones(3, 2), torch.tensor([0.0, 1.0, 1.0]), InvalidTimesError),
        (torch.ones(2, 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]), InvalidTimesError),
        (torch.ones(2, 2), torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), InvalidTimesError),
        (torch.ones(2, 2), torch.zeros(2, 2, 2), InvalidTimesError),
    ],
)
def test_bad_shapes_and_times_are_typed_errors(y0, t, error):
    with pytest.raises(error):
        neurode.solve(lambda t, y: -y, y0, t, batch="per_sample")


def test_unknown_batch_mode():
    with pytest.raises(UnknownOptionError, match="per_sample"):
        neurode.solve(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), batch="rows")


def test_max_num_steps_names_the_row():
    with pytest.raises(MaxStepsExceededError, match="row 1"):
        neurode.solve(
            _decay,
            torch.ones(3, 1, dtype=F64),
            torch.tensor([0.0, 10.0], dtype=F64),
            options=dict(max_num_steps=20),
            batch="per_sample",
        )


def test_a_row_that_blows_up_is_named():
    # y' = y² from y(0) = 1 blows up at t = 1; the row from 0.1 would be fine until t = 10.
    with pytest.raises(StepSizeTooSmallError, match="row 1") as raised:
        neurode.solve(
            lambda t, y: y**2,
            torch.tensor([[0.1], [1.0]], dtype=F64),
            torch.tensor([0.0, 2.0], dtype=F64),
            batch="per_sample",
        )
    assert raised.value.t == pytest.approx(1.0, abs=1e-6)


def test_a_row_leaving_the_domain_of_func_is_named():
    # f = sqrt(c_b - t) is NaN past t = c_b: row 1 cannot pass t = 0.5.
    c = torch.tensor([5.0, 0.5], dtype=F64)
    with pytest.raises(NonFiniteStateError, match="row 1") as raised:
        neurode.solve(
            lambda t, y: torch.sqrt(c - t)[:, None] * torch.ones_like(y),
            torch.zeros(2, 1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            batch="per_sample",
        )
    assert raised.value.t == pytest.approx(0.5, abs=1e-9)
