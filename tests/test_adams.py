"""Adams–Bashforth and Adams–Bashforth–Moulton: weights, convergence order, exact
solutions, agreement with torchdiffeq, gradients, options."""

from __future__ import annotations

import math
import random
import warnings
from fractions import Fraction

import pytest
import torch

import neurode
from neurode.errors import NeurodeInputError, UnknownOptionError
from neurode.solvers.adams import (
    MAX_ORDER,
    adams_bashforth_weights,
    adams_moulton_weights,
    bashforth_weights_on_grid,
    integrated_lagrange_weights,
    moulton_weights_on_grid,
)

F64 = torch.float64
ADAMS = ("explicit_adams", "implicit_adams", "fixed_adams")


# ---------------------------------------------------------------------------- weights
def test_uniform_weights_are_the_textbook_ones():
    # HNW I, Tables III.1.1 and III.1.2.
    assert [w * 24 for w in adams_bashforth_weights(4)] == pytest.approx([55, -59, 37, -9])
    assert [w * 720 for w in adams_bashforth_weights(5)] == pytest.approx(
        [1901, -2774, 2616, -1274, 251]
    )
    assert [w * 2 for w in adams_bashforth_weights(2)] == pytest.approx([3, -1])
    assert adams_bashforth_weights(1) == (1.0,)
    assert adams_moulton_weights(1) == (1.0,)  # backward Euler
    assert [w * 2 for w in adams_moulton_weights(2)] == pytest.approx([1, 1])  # trapezoid
    assert [w * 24 for w in adams_moulton_weights(4)] == pytest.approx([9, 19, -5, 1])
    assert [w * 720 for w in adams_moulton_weights(5)] == pytest.approx([251, 646, -264, 106, -19])


# Order 1 is left out: torchdiffeq never uses it and its table divides it by 11.
@pytest.mark.parametrize("order", range(2, MAX_ORDER + 1))
def test_uniform_weights_match_torchdiffeq_tables_up_to_order_12(order):
    fixed_adams = pytest.importorskip("torchdiffeq._impl.fixed_adams")
    bashforth = fixed_adams._BASHFORTH_DIVISOR[order].tolist()
    moulton = fixed_adams._MOULTON_DIVISOR[order].tolist()
    assert adams_bashforth_weights(order) == pytest.approx(bashforth, rel=1e-13, abs=1e-13)
    assert adams_moulton_weights(order) == pytest.approx(moulton, rel=1e-13, abs=1e-13)


def test_exact_weights_integrate_polynomials_exactly():
    nodes = [Fraction(1), Fraction(0), Fraction(-1, 2), Fraction(-7, 4), Fraction(-3)]
    weights = integrated_lagrange_weights(nodes)
    for degree in range(len(nodes)):
        quadrature = sum(w * x**degree for w, x in zip(weights, nodes))
        assert quadrature == Fraction(1, degree + 1)


def test_weights_on_a_non_uniform_grid_integrate_polynomials():
    rng = random.Random(0)
    past = [0.0]
    for _ in range(5):
        past.append(past[-1] - rng.uniform(0.05, 0.2))
    t_next = 0.13
    h = t_next
    for weights, nodes in (
        (bashforth_weights_on_grid(past, t_next), past),
        (moulton_weights_on_grid(past[:5], t_next), [t_next, *past[:5]]),
    ):
        for degree in range(len(nodes)):
            quadrature = h * sum(w * x**degree for w, x in zip(weights, nodes))
            assert quadrature == pytest.approx(t_next ** (degree + 1) / (degree + 1), rel=1e-10)


def test_weights_on_a_uniform_grid_are_the_uniform_ones():
    past = [1.0 - 0.1 * j for j in range(4)]
    assert bashforth_weights_on_grid(past, 1.1) == pytest.approx(adams_bashforth_weights(4))
    assert moulton_weights_on_grid(past[:3], 1.1) == pytest.approx(adams_moulton_weights(4))


# -------------------------------------------------------------------- convergence order
def _riccati(t, y):
    """y' = -y² + cos t · y: a nonlinear scalar ODE with a closed-form solution."""
    return -(y**2) + torch.cos(t) * y


def _riccati_exact(t: float) -> float:
    # Bernoulli equation: with u = 1/y, u' + cos t · u = 1, u(0) = 1.
    # u(t) = e^{-sin t} (1 + ∫_0^t e^{sin s} ds); the integral by Simpson's rule on a fine grid.
    n = 4000
    s = torch.linspace(0.0, t, n + 1, dtype=F64)
    g = torch.exp(torch.sin(s))
    weights = torch.ones(n + 1, dtype=F64)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    integral = float((weights * g).sum()) * (t / n) / 3.0
    return 1.0 / (math.exp(-math.sin(t)) * (1.0 + integral))


def _final_error(method: str, step_size: float, **options) -> float:
    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0], dtype=F64)
    ys = neurode.odeint(
        _riccati, y0, t, method=method, options=dict(step_size=step_size, **options)
    )
    return abs(float(ys[-1, 0]) - _riccati_exact(2.0))


def _slope(errors: list[float], steps: list[float]) -> float:
    """Least-squares slope of log(error) against log(step size)."""
    xs = [math.log(h) for h in steps]
    ys = [math.log(e) for e in errors]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


# Fine enough that ABM4 on the Riccati equation is in its asymptotic regime.
STEPS = [0.05, 0.025, 0.0125, 0.00625]


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("explicit_adams", {}),
        ("implicit_adams", {"max_iters": 1}),  # PECE
        ("implicit_adams", {}),  # corrector iterated to convergence
        ("fixed_adams", {"max_iters": 1}),
    ],
)
def test_fourth_order_by_default(method, options):
    errors = [_final_error(method, h, **options) for h in STEPS]
    assert _slope(errors, STEPS) == pytest.approx(4.0, abs=0.2)


@pytest.mark.parametrize("order", [1, 2, 3, 5, 6])
@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_max_order_sets_the_convergence_order(method, order):
    # The harmonic oscillator x'' = -x from (1, 0): exactly (cos t, -sin t).
    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    exact = torch.tensor([math.cos(2.0), -math.sin(2.0)], dtype=F64)
    steps = [0.1, 0.05, 0.025, 0.0125]
    errors = []
    for h in steps:
        ys = neurode.odeint(
            lambda t, y: torch.stack([y[1], -y[0]]),
            y0,
            t,
            method=method,
            options=dict(step_size=h, max_order=order, max_iters=1),
        )
        errors.append(float((ys[-1] - exact).abs().max()))
    assert _slope(errors, steps) == pytest.approx(float(order), abs=0.2)


def test_fourth_order_on_a_non_uniform_grid():
    # t = 2 (s + s²) / 2 on a uniform s-grid: step sizes vary by a factor 3 along the span.
    def grid_for(n):
        def constructor(func, y0, t):
            s = torch.linspace(0.0, 1.0, n + 1, dtype=F64)
            return 2.0 * (s + s**2) / 2.0

        return constructor

    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0], dtype=F64)
    counts = [20, 40, 80, 160]
    for method in ("explicit_adams", "implicit_adams"):
        errors = []
        for n in counts:
            ys = neurode.odeint(
                _riccati, y0, t, method=method, options=dict(grid_constructor=grid_for(n))
            )
            errors.append(abs(float(ys[-1, 0]) - _riccati_exact(2.0)))
        assert _slope(errors, [1.0 / n for n in counts]) == pytest.approx(4.0, abs=0.2)


# ---------------------------------------------------------------------- exact solutions
@pytest.mark.parametrize("method", ADAMS)
def test_polynomial_right_hand_side_is_integrated_exactly(method):
    # y' = 4t³ - 3t² + 1: a fourth-order method integrates cubics in t without error.
    def f(t, y):
        return (4 * t**3 - 3 * t**2 + 1) * torch.ones_like(y)

    t = torch.linspace(0.0, 1.5, 7, dtype=F64)
    y0 = torch.tensor([0.5, -1.0], dtype=F64)
    ys = neurode.odeint(f, y0, t, method=method, options=dict(step_size=0.25))
    exact = y0 + (t**4 - t**3 + t)[:, None]
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ADAMS)
def test_linear_system_matches_the_matrix_exponential(method):
    a = torch.tensor([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.0, 0.0, -1.0]], dtype=F64)
    y0 = torch.tensor([1.0, 0.0, 2.0], dtype=F64)
    t = torch.linspace(0.0, 3.0, 7, dtype=F64)
    ys = neurode.odeint(lambda t, y: a @ y, y0, t, method=method, options=dict(step_size=0.005))
    exact = torch.stack([torch.linalg.matrix_exp(a * ti) @ y0 for ti in t])
    # Global error of the order-4 formulas at h = 0.005: a few 1e-9.
    torch.testing.assert_close(ys, exact, rtol=0, atol=1e-8)


def test_backwards_in_time_and_batched_state():
    # y' = -k y for a batch of rates, integrated from t = 2 down to t = 0.
    k = torch.tensor([[0.5], [1.0], [2.0]], dtype=F64)
    y2 = torch.ones(3, 2, dtype=F64)
    t = torch.tensor([2.0, 1.0, 0.0], dtype=F64)
    ys = neurode.odeint(
        lambda t, y: -k * y, y2, t, method="implicit_adams", options=dict(step_size=0.01)
    )
    exact = torch.exp(k * (2.0 - t)[:, None, None]) * y2
    torch.testing.assert_close(ys, exact, rtol=1e-7, atol=0)


def test_tuple_state():
    def f(t, state):
        x, v = state
        return v, -x

    x0 = torch.tensor([1.0], dtype=F64)
    v0 = torch.tensor([0.0], dtype=F64)
    t = torch.linspace(0.0, 2.0, 5, dtype=F64)
    xs, vs = neurode.odeint(f, (x0, v0), t, method="explicit_adams", options=dict(step_size=0.01))
    torch.testing.assert_close(xs[:, 0], torch.cos(t), rtol=0, atol=1e-8)
    torch.testing.assert_close(vs[:, 0], -torch.sin(t), rtol=0, atol=1e-8)


def test_saving_between_grid_points_interpolates_linearly_or_cubically():
    t = torch.tensor([0.0, 0.33, 0.71, 1.0], dtype=F64)  # midway between grid points
    y0 = torch.tensor([1.0], dtype=F64)
    exact = torch.exp(-t)[:, None]
    f = lambda t, y: -y
    options = dict(step_size=0.02)
    linear = neurode.odeint(f, y0, t, method="explicit_adams", options=options)
    cubic = neurode.odeint(f, y0, t, method="explicit_adams", options=dict(options, interp="cubic"))
    linear_error = float((linear - exact).abs().max())
    cubic_error = float((cubic - exact).abs().max())
    # At the midpoint linear interpolation errs by h² |y''| / 8 = 5e-5 e^{-t}; cubic
    # Hermite by h⁴ |y''''| / 384 ≈ 4e-10, below the method's own error (~1e-8).
    assert linear_error == pytest.approx(5e-5 * math.exp(-0.33), rel=0.05)
    assert cubic_error < 5e-8


def test_dense_output_reproduces_the_grid_values():
    t = torch.linspace(0.0, 1.0, 11, dtype=F64)
    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    sol = neurode.solve(
        lambda t, y: -y, y0, t, method="implicit_adams", options=dict(step_size=0.1), dense=True
    )
    torch.testing.assert_close(sol.evaluate(t), sol.ys, rtol=0, atol=1e-15)
    middle = sol.evaluate(torch.tensor(0.55, dtype=F64))
    torch.testing.assert_close(middle, 0.5 * (sol.ys[5] + sol.ys[6]), rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------ costs
@pytest.mark.parametrize(
    ("method", "options", "per_step"),
    [("explicit_adams", {}, 1), ("implicit_adams", {"max_iters": 1}, 2)],
)
def test_evaluations_per_step(method, options, per_step):
    # 20 steps: 3 start-up RK4 steps of 4 evaluations, then `per_step` per Adams step.
    t = torch.tensor([0.0, 2.0], dtype=F64)
    sol = neurode.solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        t,
        method=method,
        options=dict(step_size=0.1, **options),
    )
    assert sol.stats["steps"] == 20
    assert sol.stats["nfe"] == 3 * 4 + 17 * per_step


# ------------------------------------------------------------------------- torchdiffeq
def test_explicit_adams_equals_torchdiffeq_with_the_same_start_up():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    # torchdiffeq's max_order=4 takes two RK4 (3/8 rule) steps then Adams–Bashforth of
    # order 3: the same scheme as neurode's max_order=3.
    a = torch.tensor([[0.0, 1.0], [-1.0, -0.1]], dtype=F64)

    def f(t, y):
        return a @ y + 0.5 * torch.sin(t) * torch.tanh(y)

    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    t = torch.linspace(0.0, 2.0, 9, dtype=F64)
    ours = neurode.odeint(
        f, y0, t, method="explicit_adams", options=dict(step_size=0.05, max_order=3)
    )
    theirs = torchdiffeq.odeint(
        f, y0, t, method="explicit_adams", options=dict(step_size=0.05, max_order=4)
    )
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-13)


@pytest.mark.parametrize("method", ["explicit_adams", "implicit_adams"])
def test_fourth_order_agrees_with_torchdiffeq_up_to_the_discretisation_error(method):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    # torchdiffeq's max_order=5 uses order 4 formulas after an RK4 step and an order-3
    # step (its corrector is one order higher); neurode's order 4 takes three RK4 steps.
    # The two differ by O(h⁴): the difference must shrink ~16x per halving of h.
    t = torch.tensor([0.0, 2.0], dtype=F64)
    y0 = torch.tensor([1.0], dtype=F64)
    differences = []
    for h in (0.05, 0.025):
        ours = neurode.odeint(_riccati, y0, t, method=method, options=dict(step_size=h))
        theirs = torchdiffeq.odeint(
            _riccati, y0, t, method=method, options=dict(step_size=h, max_order=5)
        )
        difference = float((ours - theirs).abs().max())
        assert difference < 1e-5
        differences.append(difference)
    assert math.log2(differences[0] / differences[1]) > 3.5


# -------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("method", ADAMS)
def test_direct_gradient_matches_finite_differences(method):
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k = torch.nn.Parameter(torch.tensor([0.7, -0.3], dtype=F64))

        def forward(self, t, y):
            return torch.stack([y[1], -self.k[0] * torch.sin(y[0]) + self.k[1] * y[1]])

    field = Field()
    y0 = torch.tensor([0.4, 0.1], dtype=F64, requires_grad=True)
    t = torch.linspace(0.0, 1.5, 4, dtype=F64)
    weights = torch.tensor([[0.0, 0.0], [1.0, -1.0], [0.5, 2.0], [-1.0, 0.3]], dtype=F64)
    options = dict(step_size=0.05)

    def loss():
        return (neurode.odeint(field, y0, t, method=method, options=options) * weights).sum()

    grad_y0, grad_k = torch.autograd.grad(loss(), (y0, field.k))
    eps = 1e-6
    with torch.no_grad():
        for tensor, grad in ((y0, grad_y0), (field.k, grad_k)):
            for i in range(2):
                tensor[i] += eps
                up = float(loss())
                tensor[i] -= 2 * eps
                down = float(loss())
                tensor[i] += eps
                assert grad[i].item() == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-9)


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    "options",
    [
        {"max_order": 0},
        {"max_order": MAX_ORDER + 1},
        {"max_order": 2.5},
        {"max_iters": 0},
        {"step_size": -0.1},
        {"step_size": 0.1, "grid_constructor": lambda f, y, t: t},
        {"interp": "quadratic"},
        {"rtol": 1e-3},
    ],
)
def test_bad_options_raise_before_any_evaluation(options):
    calls = []

    def f(t, y):
        calls.append(t)
        return -y

    with pytest.raises(UnknownOptionError):
        neurode.odeint(
            f, torch.ones(1), torch.tensor([0.0, 1.0]), method="implicit_adams", options=options
        )
    assert calls == []
    assert issubclass(UnknownOptionError, NeurodeInputError)


def test_grid_constructor_must_span_the_times():
    with pytest.raises(UnknownOptionError, match="grid_constructor"):
        neurode.odeint(
            lambda t, y: -y,
            torch.ones(1),
            torch.tensor([0.0, 1.0]),
            method="explicit_adams",
            options=dict(grid_constructor=lambda f, y, t: torch.linspace(0.0, 0.5, 3)),
        )


def test_corrector_that_cannot_converge_warns():
    # y' = -50 y with h = 0.1: h |λ| β_0 = 1.875 > 1, the fixed-point iteration diverges.
    with pytest.warns(RuntimeWarning, match="did not converge"):
        neurode.odeint(
            lambda t, y: -50.0 * y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="implicit_adams",
            options=dict(step_size=0.1, max_iters=3),
        )


def test_converging_corrector_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neurode.odeint(
            lambda t, y: -y,
            torch.ones(1, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="implicit_adams",
            options=dict(step_size=0.05),
        )


def test_perturb_evaluates_just_after_grid_points():
    # f jumps from +1 to -1 just after t = 1 (f(1) = +1). With perturb, the Euler step
    # from t = 1 evaluates f just after 1, so the jump costs no accuracy: y(2) = 0.
    def f(t, y):
        return torch.where(t <= 1.0, torch.ones_like(y), -torch.ones_like(y))

    t = torch.tensor([0.0, 2.0], dtype=F64)
    ys = neurode.odeint(
        f,
        torch.zeros(1, dtype=F64),
        t,
        method="explicit_adams",
        options=dict(step_size=0.25, perturb=True, max_order=1),
    )
    torch.testing.assert_close(ys[-1], torch.zeros(1, dtype=F64), rtol=0, atol=1e-14)
    unperturbed = neurode.odeint(
        f,
        torch.zeros(1, dtype=F64),
        t,
        method="explicit_adams",
        options=dict(step_size=0.25, max_order=1),
    )
    torch.testing.assert_close(unperturbed[-1], torch.full((1,), 0.5, dtype=F64))
