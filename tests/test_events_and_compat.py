"""Events, tuple states and torchdiffeq drop-in behaviour."""

import math

import pytest
import torch

import neurode

F64 = torch.float64
G = 9.81


def _falling(t, state):
    velocity = state[..., 1]
    return torch.stack([velocity, torch.full_like(velocity, -G)], dim=-1)


def _ground(t, state):
    return state[..., 0]


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_falling_ball_impact_time_matches_closed_form(method):
    h0 = torch.tensor(10.0, dtype=F64, requires_grad=True)
    y0 = torch.stack([h0, torch.zeros((), dtype=F64)])
    t0 = torch.tensor(0.0, dtype=F64)
    event_t, solution = neurode.odeint_event(
        _falling, y0, t0, event_fn=_ground, method=method, rtol=1e-8, atol=1e-10
    )
    exact = math.sqrt(2 * 10.0 / G)
    assert abs(float(event_t) - exact) < 1e-9
    assert solution.shape == (2, 2)
    assert abs(float(solution[-1, 0])) < 1e-8
    assert abs(float(solution[-1, 1]) + G * exact) < 1e-7
    # d t_impact / d h0 = 1 / sqrt(2 g h0): through the implicit function theorem.
    (grad,) = torch.autograd.grad(event_t, h0)
    assert abs(float(grad) - 1 / math.sqrt(2 * G * 10.0)) < 1e-7


def test_event_in_reverse_time():
    y0 = torch.tensor([0.0, 5.0], dtype=F64)  # at ground level, moving up at t0 = 0
    event_t, _ = neurode.odeint_event(
        _falling,
        y0,
        torch.tensor(0.0, dtype=F64),
        event_fn=lambda t, y: y[0] + 1.0,
        reverse_time=True,
        rtol=1e-10,
        atol=1e-12,
    )
    # Backwards from (0, 5): h(t) = 5 t - G t² / 2 reaches -1 once, at the negative root.
    exact = (5 - math.sqrt(25 + 2 * G)) / G
    assert abs(float(event_t) - exact) < 1e-8


def test_odeint_with_event_fn_returns_torchdiffeq_shapes():
    y0 = torch.tensor([[3.0, 0.0], [5.0, 1.0]], dtype=F64)
    event_t, ys = neurode.odeint(
        _falling, y0, torch.tensor([0.0, 1.0], dtype=F64), event_fn=lambda t, y: y[:, 0].min()
    )
    assert ys.shape == (2, 2, 2)
    assert abs(float(event_t) - math.sqrt(2 * 3.0 / G)) < 1e-6


def test_tuple_state_solves_each_member_and_gradients_flow():
    a = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    b = torch.tensor([[0.5]], dtype=F64, requires_grad=True)

    def f(t, state):
        x, y = state
        return -x, 2 * y

    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    xs, ys = neurode.odeint(f, (a, b), t, rtol=1e-10, atol=1e-12)
    assert xs.shape == (3, 2) and ys.shape == (3, 1, 1)
    assert torch.allclose(xs[-1], a * math.exp(-1), rtol=1e-8)
    assert torch.allclose(ys[-1], b * math.exp(2), rtol=1e-8)
    grad_a, grad_b = torch.autograd.grad(xs[-1].sum() + ys[-1].sum(), (a, b))
    assert torch.allclose(grad_a, torch.full_like(a, math.exp(-1)), rtol=1e-8)
    assert torch.allclose(grad_b, torch.full_like(b, math.exp(2)), rtol=1e-8)


torchdiffeq = pytest.importorskip("torchdiffeq")


def _mlp_field():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return net.double()


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4", "heun3"])
def test_fixed_grid_results_equal_torchdiffeq(method):
    net = _mlp_field()
    y0 = torch.randn(4, 3, dtype=F64)
    t = torch.linspace(0, 1, 7, dtype=F64)
    with torch.no_grad():
        ours = neurode.odeint(
            lambda t, y: net(y), y0, t, method=method, options={"step_size": 0.05}
        )
        theirs = torchdiffeq.odeint(
            lambda t, y: net(y), y0, t, method=method, options={"step_size": 0.05}
        )
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)


def test_adaptive_results_agree_with_torchdiffeq_within_tolerance():
    net = _mlp_field()
    y0 = torch.randn(4, 3, dtype=F64)
    t = torch.linspace(0, 2, 5, dtype=F64)
    with torch.no_grad():
        reference = neurode.odeint(
            lambda t, y: net(y), y0, t, method="dopri8", rtol=1e-12, atol=1e-14
        )
        for method in ("dopri5", "bosh3", "dopri8", "adaptive_heun"):
            ours = neurode.odeint(lambda t, y: net(y), y0, t, method=method, rtol=1e-6, atol=1e-8)
            theirs = torchdiffeq.odeint(
                lambda t, y: net(y), y0, t, method=method, rtol=1e-6, atol=1e-8
            )
            our_error = float((ours - reference).abs().max())
            their_error = float((theirs - reference).abs().max())
            assert our_error < 1e-4
            assert our_error < 10 * their_error + 1e-9, method


def test_user_callbacks_are_called_like_torchdiffeq():
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps, self.accepted, self.rejected = [], 0, 0

        def forward(self, t, y):
            return torch.cos(10 * t) * y

        def callback_step(self, t0, y0, dt):
            self.steps.append(float(dt))

        def callback_accept_step(self, t0, y0, dt):
            self.accepted += 1

        def callback_reject_step(self, t0, y0, dt):
            self.rejected += 1

    field = Field()
    solution = neurode.solve(field, torch.ones(2, dtype=F64), torch.tensor([0.0, 3.0], dtype=F64))
    assert len(field.steps) == solution.stats["steps"]
    assert field.accepted == solution.stats["accepted"]
    assert field.rejected == solution.stats["rejected"]


def test_jump_t_places_steps_on_discontinuities_and_perturbs_evaluations():
    # f jumps at t = 1: with jump_t the solver never evaluates across it.
    def f(t, y):
        return torch.where(t < 1.0, torch.ones_like(y), -torch.ones_like(y))

    y0 = torch.zeros(1, dtype=F64)
    t = torch.tensor([0.0, 2.0], dtype=F64)
    with_jump = neurode.solve(f, y0, t, options={"jump_t": torch.tensor([1.0])})
    assert abs(float(with_jump.ys[-1])) < 1e-12
    without = neurode.solve(f, y0, t)
    assert with_jump.stats["nfe"] < without.stats["nfe"]


def test_step_t_clips_steps_to_given_points():
    seen = []

    def f(t, y):
        seen.append(float(t))
        return -y

    neurode.odeint(
        f,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 5.0], dtype=F64),
        options={"step_t": [0.123, 3.21]},
    )
    assert 0.123 in seen and 3.21 in seen


def test_grid_constructor_and_perturb_options():
    calls = []

    def f(t, y):
        calls.append(float(t))
        return torch.ones_like(y)

    grid = lambda func, y0, t: torch.linspace(float(t[0]), float(t[-1]), 5, dtype=F64)
    ys = neurode.odeint(
        f,
        torch.zeros(1, dtype=F64),
        torch.tensor([0.0, 1.0], dtype=F64),
        method="euler",
        options={"grid_constructor": grid, "perturb": True},
    )
    assert abs(float(ys[-1]) - 1.0) < 1e-12
    assert len(calls) == 4
    assert calls[0] > 0.0 and calls[0] == math.nextafter(0.0, 1.0)


def test_odeint_adjoint_signature_matches_torchdiffeq():
    import inspect

    ours = inspect.signature(neurode.odeint_adjoint).parameters
    theirs = inspect.signature(torchdiffeq.odeint_adjoint).parameters
    assert set(theirs) <= set(ours)
    ours = inspect.signature(neurode.odeint).parameters
    theirs = inspect.signature(torchdiffeq.odeint).parameters
    assert set(theirs) <= set(ours)
    assert all(ours[name].default == theirs[name].default for name in theirs if name != "method")
