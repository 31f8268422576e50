"""The core loops of torchdiffeq's example scripts, with neurode in place of torchdiffeq.

Written anew here (the scripts themselves are not copied): a bouncing ball whose
collision times are differentiated through chained events and checked against finite
differences, a learned-physics model whose events and instantaneous updates are
differentiated the same way, and a CNF step with a float32 state and float64 times.
Plus the torchdiffeq semantics the scripts rely on: events with every method, event
times differentiable in ``t0``, the initial state and the event function's parameters
(also through ``odeint_adjoint``), vector event functions, tuple states with 0-dim
members, the time dtype ``func`` sees, ``odeint_dense``, ``scipy_solver`` on inputs
requiring grad, and the callback warnings.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import neurode
from neurode import errors

F64 = torch.float64


# ----------------------------------------------------------------------- bouncing ball
class _Ball(nn.Module):
    """A ball falling under gravity onto a floor at height ``exp(log_radius)``."""

    def __init__(self, interface):
        super().__init__()
        self.gravity = nn.Parameter(torch.tensor([9.8], dtype=F64))
        self.log_radius = nn.Parameter(torch.tensor([math.log(0.2)], dtype=F64))
        self.t0 = nn.Parameter(torch.tensor([0.0], dtype=F64))
        self.height = nn.Parameter(torch.tensor([10.0], dtype=F64))
        self.velocity = nn.Parameter(torch.tensor([0.0], dtype=F64))
        self.absorption = nn.Parameter(torch.tensor([0.2], dtype=F64))
        self.interface = interface

    def forward(self, t, state):
        position, velocity, log_radius = state
        return velocity, -self.gravity.expand_as(velocity), torch.zeros_like(log_radius)

    def hits_floor(self, t, state):
        position, _, log_radius = state
        return position - torch.exp(log_radius)

    def collision_times(self, bounces: int) -> list[torch.Tensor]:
        t0, state = self.t0, (self.height, self.velocity, self.log_radius)
        times = []
        for _ in range(bounces):
            event_t, solution = neurode.odeint_event(
                self,
                state,
                t0,
                event_fn=self.hits_floor,
                rtol=1e-10,
                atol=1e-10,
                odeint_interface=self.interface,
            )
            times.append(event_t)
            position, velocity, log_radius = (s[-1] for s in solution)
            # Bounce: keep the position (a hair above the floor), reverse and damp the speed.
            state = (position + 1e-7, -velocity * (1 - self.absorption), log_radius)
            t0 = event_t
        return times


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("bounces", [1, 3])
def test_bouncing_ball_collision_times_and_their_gradients_match_finite_differences(
    interface, bounces
):
    ball = _Ball(getattr(neurode, interface))
    last = ball.collision_times(bounces)[-1]
    # The first fall in closed form: t = sqrt(2 (h - r) / g).
    if bounces == 1:
        drop = 10.0 - 0.2
        assert abs(float(last) - math.sqrt(2 * drop / 9.8)) < 1e-8
    last.sum().backward()
    eps = 1e-5
    for name, parameter in ball.named_parameters():
        if name == "absorption" and bounces == 1:
            assert parameter.grad is None or float(parameter.grad.abs().sum()) == 0.0
            continue
        with torch.no_grad():
            parameter += eps
            plus = float(ball.collision_times(bounces)[-1])
            parameter -= 2 * eps
            minus = float(ball.collision_times(bounces)[-1])
            parameter += eps
        central = (plus - minus) / (2 * eps)
        assert float(parameter.grad) == pytest.approx(central, rel=1e-5, abs=1e-7), name


# ------------------------------------------------------------------ learned physics
class _LearnedPhysics(nn.Module):
    """A learned gravity, a learned floor (the event's own parameter) and a learned bounce."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.force = nn.Linear(1, 1).double()
        self.floor = nn.Parameter(torch.tensor([0.7], dtype=F64))
        self.restitution = nn.Linear(1, 1).double()
        self.height = nn.Parameter(torch.tensor([5.0], dtype=F64))

    def dynamics(self, t, state):
        position, velocity = state
        acceleration = -5.0 - torch.tanh(self.force(torch.ones_like(velocity)))
        return velocity, acceleration

    def event(self, t, state):
        position, _ = state
        return position - self.floor**2

    def simulate(self, end: float) -> torch.Tensor:
        t0 = torch.tensor(0.0, dtype=F64)
        state = (self.height, torch.zeros(1, dtype=F64))
        positions = []
        for _ in range(3):
            event_t, solution = neurode.odeint_event(
                self.dynamics, state, t0, event_fn=self.event, rtol=1e-10, atol=1e-10
            )
            position, velocity = (s[-1] for s in solution)
            factor = torch.sigmoid(self.restitution(torch.ones_like(velocity)))
            state = (position + 1e-9, -factor * velocity)
            t0 = event_t
            positions.append(position)
        later = neurode.odeint(
            self.dynamics, state, torch.stack([t0, torch.as_tensor(end, dtype=F64)])
        )
        return torch.cat([*positions, later[0][-1], t0.reshape(1)])


def test_learned_physics_gradients_through_events_and_updates_match_finite_differences():
    model = _LearnedPhysics()
    loss = model.simulate(4.0).pow(2).sum()
    loss.backward()
    eps = 1e-6
    for name, parameter in model.named_parameters():
        flat = parameter.data.view(-1)
        for k in range(flat.numel()):
            with torch.no_grad():
                flat[k] += eps
                plus = float(model.simulate(4.0).pow(2).sum())
                flat[k] -= 2 * eps
                minus = float(model.simulate(4.0).pow(2).sum())
                flat[k] += eps
            central = (plus - minus) / (2 * eps)
            got = float(parameter.grad.view(-1)[k])
            assert got == pytest.approx(central, rel=1e-4, abs=1e-6), f"{name}[{k}]"


# ----------------------------------------------------------------------------- CNF
def test_a_cnf_step_with_a_float32_state_and_float64_times():
    """torchdiffeq's CNF example: float32 hypernetwork that reads t, float64 time grid."""
    torch.manual_seed(0)
    hyper = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 4))
    seen = []

    def dynamics(t, state):
        z, log_p = state
        seen.append(t.dtype)
        weights = hyper(t.reshape(1, 1)).view(2, 2)  # needs t in the model's dtype
        dz = torch.tanh(z @ weights)
        trace = (1 - dz.pow(2)) @ torch.diagonal(weights)
        return dz, -trace.unsqueeze(-1)

    z0 = torch.randn(32, 2)
    log_p0 = torch.zeros(32, 1)
    times = torch.tensor([0.0, 1.0], dtype=F64)
    z1, log_p1 = neurode.odeint_adjoint(
        dynamics,
        (z0, log_p0),
        times,
        atol=1e-5,
        rtol=1e-5,
        adjoint_params=tuple(hyper.parameters()),
    )
    assert set(seen) == {torch.float32} and z1.dtype == torch.float32
    loss = -(log_p1[-1] - 0.5 * z1[-1].pow(2).sum(-1, keepdim=True)).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in hyper.parameters())


# ------------------------------------------------------------------ event semantics
def _drop(t, y):
    return torch.stack([y[1], torch.full_like(y[1], -9.81)])


@pytest.mark.parametrize(
    "method, options",
    [
        ("euler", {"step_size": 1e-3}),
        ("rk4", {"step_size": 1e-2}),
        ("explicit_adams", {"step_size": 1e-2}),
        ("implicit_adams", {"step_size": 1e-2}),
        ("dopri5", None),
    ],
)
def test_events_with_every_method_stop_at_the_crossing(method, options):
    y0 = torch.tensor([10.0, 0.0], dtype=F64)
    event_t, ys = neurode.odeint(
        _drop,
        y0,
        torch.tensor([0.0, 1.0], dtype=F64),
        event_fn=lambda t, y: y[0],
        method=method,
        options=options,
    )
    exact = math.sqrt(2 * 10.0 / 9.81)
    # Fixed grids locate the event on linear interpolation between grid points (as
    # torchdiffeq does): O(h²) in time.
    tolerance = {"euler": 1e-2, "dopri5": 1e-6}.get(method, 5e-5)
    assert abs(float(event_t) - exact) < tolerance
    assert abs(float(ys[-1, 0])) < tolerance * 20


def test_fixed_grid_events_need_a_step_size():
    with pytest.raises(errors.InvalidOptionError, match="step_size"):
        neurode.odeint(
            _drop,
            torch.tensor([10.0, 0.0], dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            event_fn=lambda t, y: y[0],
            method="rk4",
        )


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("reverse", [False, True])
def test_event_time_gradients_in_t0_y0_and_the_event_functions_parameters(interface, reverse):
    """y' = -1 from y0 at t0; g = y - c (c an event parameter): t_e = t0 ± (y0 - c)."""
    t0 = torch.tensor(0.5, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    level = torch.tensor(0.5, dtype=F64, requires_grad=True)
    sign = -1.0 if reverse else 1.0

    class Field(nn.Module):
        def forward(self, t, y):
            return torch.full_like(y, -sign)

    event_t, _ = neurode.odeint_event(
        Field(),
        y0,
        t0,
        event_fn=lambda t, y: y[0] - level,
        reverse_time=reverse,
        odeint_interface=getattr(neurode, interface),
        rtol=1e-10,
        atol=1e-10,
    )
    assert float(event_t) == pytest.approx(0.5 + sign * 1.5, abs=1e-9)
    grads = torch.autograd.grad(event_t, (t0, y0, level))
    assert [float(g) for g in grads] == pytest.approx([1.0, sign, -sign], abs=1e-8)


def test_a_vector_event_function_is_differentiated_through_the_component_that_fired():
    y0 = torch.zeros(2, dtype=F64, requires_grad=True)
    event_t, _ = neurode.odeint_event(
        lambda t, y: torch.tensor([1.0, 2.0], dtype=F64) + 0 * y,
        y0,
        torch.tensor(0.0, dtype=F64),
        event_fn=lambda t, y: torch.stack([y[0] - 3, y[1] - 100]),
    )
    assert float(event_t) == pytest.approx(3.0)
    assert torch.autograd.grad(event_t, y0)[0].tolist() == pytest.approx([-1.0, 0.0])


def test_an_event_at_the_start_returns_the_start():
    event_t, ys = neurode.odeint(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64),
        event_fn=lambda t, y: y[0] - 1.0,
    )
    assert float(event_t) == 0.0 and torch.equal(ys[-1], torch.ones(1, dtype=F64))


# --------------------------------------------------------------- other drop-in rules
def test_tuple_states_with_0_dim_members():
    y0 = (torch.tensor(1.0, dtype=F64), torch.full((2, 2), 0.5, dtype=F64))
    xs, ys = neurode.odeint(
        lambda t, s: (-s[0], -2 * s[1]), y0, torch.tensor([0.0, 1.0], dtype=F64), rtol=1e-10
    )
    assert xs.shape == (2,) and ys.shape == (2, 2, 2)
    assert float(xs[-1]) == pytest.approx(math.exp(-1.0), rel=1e-8)


def test_func_sees_t_in_the_states_dtype_whatever_the_dtype_of_t():
    seen = []

    def func(t, y):
        seen.append(t.dtype)
        return -y

    neurode.odeint(func, torch.ones(2), torch.tensor([0.0, 1.0], dtype=F64))
    neurode.odeint(func, torch.ones(2), torch.tensor([0.0, 1.0]), options={"dtype": F64})
    assert set(seen) == {torch.float32}


def test_odeint_dense_evaluates_the_solution_anywhere_in_the_span():
    dense = neurode.odeint_dense(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor(0.0, dtype=F64),
        torch.tensor(2.0, dtype=F64),
        rtol=1e-10,
        atol=1e-12,
    )
    times = torch.tensor([0.3, 1.0, 1.9], dtype=F64)
    torch.testing.assert_close(dense(times)[:, 0], torch.exp(-times), rtol=1e-7, atol=1e-9)


def test_fixed_grid_methods_warn_about_the_callbacks_they_cannot_call():
    class Field(nn.Module):
        def forward(self, t, y):
            return -y

    for name in ("callback_accept_step", "callback_reject_step"):
        field = Field()
        setattr(field, name, lambda t, y, h: None)
        with pytest.warns(UserWarning, match=name):
            neurode.odeint(field, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4")
    field = Field()
    steps = []
    field.callback_step = lambda t, y, h: steps.append(float(t))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        neurode.odeint(
            field,
            torch.ones(2),
            torch.tensor([0.0, 1.0]),
            method="rk4",
            options={"step_size": 0.25},
        )
    assert steps == pytest.approx([0.0, 0.25, 0.5, 0.75])


def test_the_adjoint_norm_can_be_replaced_on_the_autograd_node_before_backward():
    """torchdiffeq keeps it at ``grad_fn.adjoint_options['norm']``; its tests spy on it there."""

    class Field(nn.Module):
        def __init__(self):
            super().__init__()
            self.rate = nn.Parameter(torch.tensor(-0.5))

        def forward(self, t, y):
            return self.rate * y

    calls = []
    ys = neurode.odeint_adjoint(Field(), torch.ones(3), torch.tensor([0.0, 1.0]))
    default = ys.grad_fn.adjoint_options["norm"]

    def spy(values):
        a_t, z, a, rate = values
        assert z.shape == a.shape == (3,) and rate.shape == ()
        calls.append(1)
        return default(values)

    ys.grad_fn.adjoint_options["norm"] = spy
    ys.sum().backward()
    assert calls


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "explicit_adams", "implicit_adams"])
@pytest.mark.parametrize(
    "options", [None, {"step_size": 0.07}, {"step_size": 0.07, "interp": "cubic"}]
)
def test_fixed_grid_time_gradients_are_the_derivative_of_the_computed_output(method, options):
    """The steps and interpolation depend on t through the grid times; autograd through
    them, as torchdiffeq's grids are tensors built from t. (Save times on grid points
    are kinks of the output: the grid here avoids them.)"""

    def func(t, y):
        return -y * torch.cos(t)

    y0 = torch.tensor([1.0, 2.0], dtype=F64)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    neurode.odeint(func, y0, t, method=method, options=options).sum().backward()
    eps = 1e-6
    for i in range(3):
        step = torch.zeros(3, dtype=F64)
        step[i] = eps
        with torch.no_grad():
            plus = neurode.odeint(func, y0, t + step, method=method, options=options).sum()
            minus = neurode.odeint(func, y0, t - step, method=method, options=options).sum()
        assert float(t.grad[i]) == pytest.approx(float(plus - minus) / (2 * eps), abs=1e-7)


def test_time_gradients_with_perturb_never_evaluate_on_a_grid_point():
    grid_hits = []

    def func(t, y):
        if float(t) in (0.0, 0.5, 1.0):
            grid_hits.append(float(t))
        return -y

    t = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
    ys = neurode.odeint(
        func,
        torch.ones(2, dtype=F64),
        t,
        method="euler",
        options={"step_size": 0.5, "perturb": True},
    )
    ys.sum().backward()
    assert grid_hits == []
    # Euler on the grid t0, t0 + 0.5, t1: L = 2 (1 - 0.5)(1 - (t1 - t0 - 0.5)).
    assert t.grad.tolist() == pytest.approx([1.0, -1.0])
