"""The backsolve and checkpointed adjoints, and odeint_adjoint.

References: closed forms (linear systems through ``torch.linalg.matrix_exp``),
central finite differences, direct backpropagation through the same steps, and
torchdiffeq's adjoint as an independent implementation.
"""

import math

import pytest
import torch

import neurode
from neurode import errors
from neurode.errors import (
    InvalidToleranceError,
    NeurodeInputError,
    UnknownMethodError,
    UnknownOptionError,
)

F64 = torch.float64
TIGHT = dict(rtol=1e-10, atol=1e-12)
ADJOINTS = ["backsolve", "checkpoint"]


# ------------------------------------------------------------------------------ helpers
class TimeMLP(torch.nn.Module):
    """``f(t, y) = W2 tanh(W1 y + t c + b1) + b2``: nonlinear, time-dependent, float64."""

    def __init__(self, dim: int = 2, hidden: int = 8, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=generator, dtype=F64))
        self.c = torch.nn.Parameter(torch.randn(hidden, generator=generator, dtype=F64))
        self.b1 = torch.nn.Parameter(0.1 * torch.randn(hidden, generator=generator, dtype=F64))
        self.w2 = torch.nn.Parameter(
            torch.randn(dim, hidden, generator=generator, dtype=F64) / math.sqrt(hidden)
        )
        self.b2 = torch.nn.Parameter(0.1 * torch.randn(dim, generator=generator, dtype=F64))
        self.calls = 0

    def forward(self, t, y):
        self.calls += 1
        return torch.tanh(y @ self.w1.T + t * self.c + self.b1) @ self.w2.T + self.b2


class Linear(torch.nn.Module):
    """``f(t, y) = A y`` for a vector or a batch of row vectors; exact flow ``expm(A t)``."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = torch.nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.A.T


def _random(shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _weighted_loss(ys, weights):
    return sum((w * y).sum() for w, y in zip(weights, ys))


def _grads(func, y0, t, gradient, loss_fn, **kwargs):
    """(dL/dy0, dL/dt, [dL/dθ]) and the solution."""
    y0 = y0.detach().clone().requires_grad_(True)
    t = t.detach().clone().requires_grad_(True)
    params = list(func.parameters())
    solution = neurode.solve(func, y0, t, gradient=gradient, **kwargs)
    loss = loss_fn(solution.ys)
    grads = torch.autograd.grad(loss, [y0, t, *params])
    return grads[0], grads[1], list(grads[2:]), solution


def _rel(a, b):
    return float((a - b).norm() / b.norm())


# ----------------------------------------------------------------- closed form: linear
@pytest.mark.parametrize("gradient", ADJOINTS)
@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing_t", "decreasing_t"])
def test_linear_system_gradients_match_matrix_exponential(gradient, decreasing):
    # y(t_i) = y0 expm(A (t_i - t_0))^T; every gradient by autograd through matrix_exp.
    A = 0.5 * _random((3, 3), 1) - 0.3 * torch.eye(3, dtype=F64)
    y0 = _random((2, 3), 2)
    times = [0.0, 0.4, 1.1, 1.6]
    t = torch.tensor(times[::-1] if decreasing else times, dtype=F64)
    weights = _random((4, 2, 3), 3)

    A_ref = A.clone().requires_grad_(True)
    y0_ref = y0.clone().requires_grad_(True)
    t_ref = t.clone().requires_grad_(True)
    exact = [y0_ref @ torch.linalg.matrix_exp(A_ref * (ti - t_ref[0])).T for ti in t_ref]
    reference = torch.autograd.grad(_weighted_loss(exact, weights), [y0_ref, t_ref, A_ref])

    func = Linear(A)
    g_y0, g_t, (g_A,), solution = _grads(
        func, y0, t, gradient, lambda ys: _weighted_loss(ys, weights), **TIGHT
    )
    assert _rel(g_y0, reference[0]) < 1e-7
    assert _rel(g_A, reference[2]) < 1e-7
    assert float((g_t - reference[1]).abs().max()) < 1e-7 * float(reference[1].abs().max())
    assert solution.stats["nfe_backward"] > 0


# ------------------------------------------------------------- finite differences: MLP
def _central_difference(loss_of, x, direction, eps):
    return (loss_of(x + eps * direction) - loss_of(x - eps * direction)) / (2 * eps)


@pytest.mark.parametrize("gradient", ADJOINTS)
def test_mlp_gradients_match_central_finite_differences(gradient):
    # FD on a tighter solve than the gradient's, so that a change of the step
    # sequence between the perturbed solves stays far below the FD error.
    func = TimeMLP()
    y0 = _random((3, 2), 4)
    t = torch.tensor([0.0, 0.5, 1.3], dtype=F64)
    weights = _random((3, 3, 2), 5)

    def loss(ys):
        return _weighted_loss(ys, weights) + (ys[-1] ** 2).sum()

    g_y0, g_t, g_params, _ = _grads(func, y0, t, gradient, loss, **TIGHT)
    fd_tol = dict(rtol=1e-13, atol=1e-15)

    def loss_at(y0_=y0, t_=t):
        with torch.no_grad():
            return float(loss(neurode.odeint(func, y0_, t_, **fd_tol)))

    eps = 1e-5
    v = _random(y0.shape, 6)
    fd = _central_difference(lambda y: loss_at(y0_=y), y0, v, eps)
    assert abs(float((g_y0 * v).sum()) - fd) < 1e-5 * abs(fd)

    for index in (0, 2):  # start and end times
        e = torch.zeros(3, dtype=F64)
        e[index] = 1.0
        fd = _central_difference(lambda s: loss_at(t_=s), t, e, eps)
        assert abs(float(g_t[index]) - fd) < 1e-5 * abs(fd)

    params = list(func.parameters())
    directions = [_random(p.shape, 7 + k) for k, p in enumerate(params)]
    originals = [p.detach().clone() for p in params]

    def loss_at_params(scale):
        with torch.no_grad():
            for p, p0, d in zip(params, originals, directions):
                p.copy_(p0 + scale * d)
        return loss_at()

    fd = (loss_at_params(eps) - loss_at_params(-eps)) / (2 * eps)
    loss_at_params(0.0)
    analytic = sum(float((g * d).sum()) for g, d in zip(g_params, directions))
    assert abs(analytic - fd) < 1e-5 * abs(fd)


def test_start_time_gradient_ignores_the_loss_on_the_initial_state():
    # y(t_0) = y0 whatever t_0 is, so a loss on ys[0] alone has dL/dt_0 = 0.
    func = TimeMLP()
    y0 = _random((2,), 8)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    for gradient in ADJOINTS:
        _, g_t, _, _ = _grads(func, y0, t, gradient, lambda ys: (ys[0] ** 2).sum(), **TIGHT)
        assert float(g_t.abs().max()) == 0.0


# ----------------------------------------------------------- agreement between methods
def _compare_with_direct(func, y0, t, loss, backsolve_tol, **kwargs):
    reference = _grads(func, y0, t, "direct", loss, **kwargs)
    checkpoint = _grads(func, y0, t, "checkpoint", loss, **kwargs)
    backsolve = _grads(func, y0, t, "backsolve", loss, **kwargs)
    for got, tolerance in ((checkpoint, 1e-12), (backsolve, backsolve_tol)):
        assert _rel(got[0], reference[0]) < tolerance
        for g, r in zip(got[2], reference[2]):
            assert _rel(g, r) < tolerance
        assert _rel(got[1], reference[1]) < tolerance
    return reference, checkpoint, backsolve


@pytest.mark.parametrize("decreasing", [False, True], ids=["increasing_t", "decreasing_t"])
def test_adjoints_agree_with_direct_at_many_save_times(decreasing):
    func = TimeMLP(seed=1)
    y0 = _random((4, 2), 9)
    times = torch.linspace(0.0, 2.0, 9, dtype=F64)
    t = times.flip(0) if decreasing else times
    weights = _random((9, 4, 2), 10)
    _compare_with_direct(func, y0, t, lambda ys: _weighted_loss(ys, weights), 1e-7, **TIGHT)


def test_checkpoint_equals_direct_to_rounding_with_dense_output_saves_and_few_checkpoints():
    # Loose tolerances: many save times fall inside steps, so the replay must
    # reproduce the dense output too. Two checkpoints force several intervals.
    func = TimeMLP(seed=2)
    y0 = _random((3, 2), 11)
    t = torch.linspace(0.0, 3.0, 17, dtype=F64)
    weights = _random((17, 3, 2), 12)

    def loss(ys):
        return _weighted_loss(ys[1:], weights[1:])

    kwargs = dict(rtol=1e-5, atol=1e-7)
    reference = _grads(func, y0, t, "direct", loss, **kwargs)
    for checkpoints in (1, 2, 5):
        got = _grads(
            func,
            y0,
            t,
            "checkpoint",
            loss,
            gradient_options={"checkpoints": checkpoints},
            **kwargs,
        )
        assert 1 <= got[3].stats["checkpoints"] <= checkpoints
        assert _rel(got[0], reference[0]) < 1e-12
        for g, r in zip(got[2], reference[2]):
            assert _rel(g, r) < 1e-12
        assert got[3].stats["steps_backward"] == reference[3].stats["accepted"]


@pytest.mark.parametrize("method", ["bosh3", "tsit5", "dopri8", "fehlberg2"])
def test_checkpoint_equals_direct_for_other_adaptive_tableaus(method):
    # bosh3 and fehlberg2 interpolate by Hermite (f1 needed), the others by their own dense output.
    func = TimeMLP(seed=3)
    y0 = _random((2, 2), 13)
    t = torch.linspace(0.0, 1.5, 6, dtype=F64)
    weights = _random((6, 2, 2), 14)

    def loss(ys):
        return _weighted_loss(ys, weights)

    kwargs = dict(method=method, rtol=1e-6, atol=1e-8)
    reference = _grads(func, y0, t, "direct", loss, **kwargs)
    got = _grads(func, y0, t, "checkpoint", loss, gradient_options={"checkpoints": 3}, **kwargs)
    assert _rel(got[0], reference[0]) < 1e-12
    for g, r in zip(got[2], reference[2]):
        assert _rel(g, r) < 1e-12


@pytest.mark.parametrize("checkpoints", [1, 1000], ids=["one_interval", "every_step"])
def test_checkpoint_replays_breakpoints_and_jumps_exactly(checkpoints):
    # A vector field with a jump at t = 0.7: jump_t makes the loop evaluate f one-sided
    # there, and the replay must start each interval with the same one-sided value.
    func = TimeMLP(seed=4)

    def stepped(t, y):
        return func(t, y) * (2.0 if float(t) > 0.7 else 1.0)

    y0 = _random((2,), 15)
    t = torch.tensor([0.0, 0.5, 1.4], dtype=F64)
    options = dict(jump_t=torch.tensor([0.7], dtype=F64), step_t=torch.tensor([1.1], dtype=F64))
    params = tuple(func.parameters())

    def grads(gradient, gradient_options=None):
        y = y0.clone().requires_grad_(True)
        ys = neurode.solve(
            stepped,
            y,
            t,
            gradient=gradient,
            gradient_options=gradient_options,
            params=params,
            options=options,
            rtol=1e-6,
            atol=1e-8,
        ).ys
        return torch.autograd.grad((ys**2).sum(), [y, *params])

    checkpointed = grads("checkpoint", {"checkpoints": checkpoints})
    for g, r in zip(checkpointed, grads("direct")):
        assert _rel(g, r) < 1e-12
    for g, r in zip(grads("backsolve"), grads("direct")):
        assert _rel(g, r) < 1e-4


def test_tuple_state_gradients_agree_with_direct():
    func = TimeMLP(dim=4, seed=5)

    def split(t, state):
        position, velocity = state
        out = func(t, torch.cat([position, velocity], dim=-1))
        return out[..., :2], out[..., 2:]

    split_module = torch.nn.Module()
    split_module.forward = split
    split_module.inner = func
    position, velocity = _random((3, 2), 16), _random((3, 2), 17)
    t = torch.tensor([0.0, 0.6, 1.2], dtype=F64)

    def grads(gradient):
        p = position.clone().requires_grad_(True)
        v = velocity.clone().requires_grad_(True)
        ys = neurode.solve(split_module, (p, v), t, gradient=gradient, **TIGHT).ys
        loss = (ys[0][1:] ** 2).sum() + (ys[1][-1] * ys[0][-1]).sum()
        return torch.autograd.grad(loss, [p, v, *func.parameters()])

    reference = grads("direct")
    for gradient, tolerance in (("checkpoint", 1e-12), ("backsolve", 1e-7)):
        for g, r in zip(grads(gradient), reference):
            assert _rel(g, r) < tolerance


# --------------------------------------------------------------------------- fixed grid
def test_fixed_grid_checkpoint_is_exact_and_backsolve_converges_at_fourth_order():
    A = 0.5 * _random((3, 3), 18) - 0.5 * torch.eye(3, dtype=F64)
    y0 = _random((3,), 19)
    t = torch.tensor([0.0, 0.45, 1.0], dtype=F64)  # 0.45 is off the grid: linear interpolation

    def loss(ys):
        return (ys[-1] ** 2).sum() + ys[1].sum()

    A_ref = A.clone().requires_grad_(True)
    exact_grad = torch.autograd.grad(((torch.linalg.matrix_exp(A_ref) @ y0) ** 2).sum(), A_ref)[0]

    func = Linear(A)
    kwargs = dict(method="rk4", options=dict(step_size=0.1))
    reference = _grads(func, y0, t, "direct", loss, **kwargs)
    checkpoint = _grads(func, y0, t, "checkpoint", loss, **kwargs)
    assert _rel(checkpoint[2][0], reference[2][0]) < 1e-12
    assert _rel(checkpoint[0], reference[0]) < 1e-12

    def end_loss(ys):
        return (ys[-1] ** 2).sum()

    errors = []
    for h in (0.1, 0.05):
        got = _grads(
            func, y0, t[[0, -1]], "backsolve", end_loss, method="rk4", options=dict(step_size=h)
        )
        errors.append(_rel(got[2][0], exact_grad))
    order = math.log2(errors[0] / errors[1])
    assert 3.5 < order < 4.5


def test_fixed_grid_backsolve_steps_the_reversed_forward_grid():
    func = TimeMLP(seed=6)
    steps = []
    func.callback_step_adjoint = lambda t, state, dt: steps.append((float(t), dt))
    y0 = _random((2,), 20)
    t = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    _grads(
        func, y0, t, "backsolve", lambda ys: ys.sum(), method="euler", options=dict(step_size=0.25)
    )
    # Forward grid 0, 0.25, 0.5, 0.75, 1; backward intervals [1, 0.35] and [0.35, 0].
    starts = [s for s, _ in steps]
    assert starts == pytest.approx([1.0, 0.75, 0.5, 0.35, 0.25])
    assert [dt for _, dt in steps] == pytest.approx([0.25, 0.25, 0.15, 0.1, 0.25])


def test_backsolve_through_adams_keeps_the_forward_step_size():
    # Adams integrators keep their options (the step size) in their own closure; the
    # backward solve must use them too, else it steps once per save interval.
    func = TimeMLP(seed=13)
    y0 = _random((3, 2), 30)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def loss(ys):
        return (ys**2).sum()

    reference = _grads(func, y0, t, "checkpoint", loss, **TIGHT)
    got = _grads(
        func, y0, t, "backsolve", loss, method="implicit_adams", options=dict(step_size=0.01)
    )
    assert got[3].stats["nfe_backward"] > 100
    assert _rel(got[0], reference[0]) < 1e-6
    for g, r in zip(got[2], reference[2]):
        assert _rel(g, r) < 1e-6


def test_checkpoint_rejects_integrators_it_cannot_replay():
    func = TimeMLP()
    with pytest.raises(UnknownMethodError):
        neurode.solve(
            func,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            method="explicit_adams",
            gradient="checkpoint",
        )
    assert func.calls == 0


# ------------------------------------------------------------------ the instability
def test_backsolve_refuses_a_diverging_reconstruction_while_checkpoint_stays_exact():
    # Modes e^{-0.5 t} and e^{-30 t}: integrating the state backwards over [0, 2]
    # amplifies the fast mode's local errors by e^{60}. Unchecked, backsolve's gradient
    # is off by a factor of about 1000; it must say so instead.
    A = torch.tensor([[-0.5, 1.0], [0.0, -30.0]], dtype=F64)
    y0 = torch.tensor([1.0, 1.0], dtype=F64)
    A_ref = A.clone().requires_grad_(True)
    exact = torch.autograd.grad(((torch.linalg.matrix_exp(2.0 * A_ref) @ y0) ** 2).sum(), A_ref)[0]
    t = torch.tensor([0.0, 2.0], dtype=F64)

    func = Linear(A)
    ys = neurode.solve(func, y0, t, gradient="checkpoint", **TIGHT).ys
    (g,) = torch.autograd.grad((ys[-1] ** 2).sum(), func.A)
    assert _rel(g, exact) < 1e-6

    func = Linear(A)
    ys = neurode.solve(func, y0, t, gradient="backsolve", **TIGHT).ys
    with pytest.raises(errors.AdjointDivergedError, match="checkpoint") as info:
        torch.autograd.grad((ys[-1] ** 2).sum(), func.A)
    assert 0.0 <= info.value.t < 2.0

    # With the check turned off it is the classic adjoint, wrong by orders of magnitude.
    func = Linear(A)
    ys = neurode.solve(
        func, y0, t, gradient="backsolve", gradient_options={"drift_limit": math.inf}, **TIGHT
    ).ys
    (g,) = torch.autograd.grad((ys[-1] ** 2).sum(), func.A)
    assert _rel(g, exact) > 1.0


class _Lorenz(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([10.0, 28.0, 8.0 / 3.0], dtype=F64))

    def forward(self, t, u):
        sigma, rho, beta = self.p
        x, y, z = u.unbind(-1)
        return torch.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], -1)


@pytest.mark.slow
def test_backsolve_on_a_chaotic_system_stops_crawling_and_says_why():
    """Lorenz on [0, 2]: the backward solve shrinks its steps without end; unchecked it
    took 30 s and 10,000 steps for a gradient 100 times off. It now stops within twenty
    times the forward solve's steps."""
    func = _Lorenz()
    y0 = torch.ones(3, dtype=F64)
    solution = neurode.solve(
        func, y0, torch.tensor([0.0, 2.0], dtype=F64), gradient="backsolve", rtol=1e-7, atol=1e-9
    )
    with pytest.raises(errors.AdjointDivergedError, match="checkpoint") as info:
        solution.ys[-1].sum().backward()
    assert 0.0 < info.value.t < 2.0


def test_healthy_backsolve_reports_a_small_reconstruction_drift():
    func = TimeMLP(dim=2, hidden=16, seed=3)
    y0 = _random((8, 2), 5)
    t = torch.tensor([0.0, 1.0, 3.0], dtype=F64)
    solution = neurode.solve(func, y0, t, gradient="backsolve", rtol=1e-7, atol=1e-9)
    (solution.ys**2).sum().backward()
    assert 0.0 <= solution.stats["reconstruction_drift"] < 100.0


# ------------------------------------------------------------------------ seminorm
def test_seminorm_keeps_the_gradient_and_saves_backward_evaluations():
    func = TimeMLP(dim=2, hidden=32, seed=7)
    y0 = _random((16, 2), 21)
    t = torch.tensor([0.0, 3.0], dtype=F64)

    def run(norm_options):
        gradient_options = {"adjoint_options": norm_options} if norm_options else None
        return _grads(
            func,
            y0,
            t,
            "backsolve",
            lambda ys: (ys[-1] ** 2).sum(),
            rtol=1e-6,
            atol=1e-8,
            gradient_options=gradient_options,
        )

    reference = _grads(func, y0, t, "checkpoint", lambda ys: (ys[-1] ** 2).sum(), **TIGHT)
    full = run(None)
    semi = run({"norm": "seminorm"})
    assert semi[3].stats["nfe_backward"] < full[3].stats["nfe_backward"]
    for got in (full, semi):
        assert _rel(got[0], reference[0]) < 1e-4
        for g, r in zip(got[2], reference[2]):
            assert _rel(g, r) < 1e-4


def test_custom_adjoint_norm_sees_the_channels():
    func = TimeMLP(seed=8)
    seen = []

    def norm(channels):
        seen.append(tuple(c.shape for c in channels))
        return max(c.abs().max() for c in channels)

    y0 = _random((3, 2), 22)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    _grads(
        func,
        y0,
        t,
        "backsolve",
        lambda ys: ys.sum(),
        gradient_options={"adjoint_options": {"norm": norm}},
    )
    shapes = [torch.Size([]), y0.shape, y0.shape] + [p.shape for p in func.parameters()]
    assert seen and all(list(s) == shapes for s in seen)


# -------------------------------------------------------------------- odeint_adjoint
def test_odeint_adjoint_with_adjoint_params_and_unused_parameters():
    theta = _random((2, 2), 23).requires_grad_(True)
    unused = torch.ones(3, dtype=F64, requires_grad=True)
    frozen = torch.ones(2, dtype=F64)  # no grad: left out of the backward pass

    def f(t, y):
        return torch.tanh(y @ theta.T) * frozen

    y0 = _random((2,), 24).requires_grad_(True)
    t = torch.tensor([0.0, 0.8, 1.5], dtype=F64)
    ys = neurode.odeint_adjoint(f, y0, t, adjoint_params=(theta, unused, frozen), **TIGHT)
    g_y0, g_theta, g_unused = torch.autograd.grad((ys**2).sum(), [y0, theta, unused])
    ref_ys = neurode.odeint(f, y0, t, **TIGHT)
    r_y0, r_theta = torch.autograd.grad((ref_ys**2).sum(), [y0, theta])
    assert _rel(g_y0, r_y0) < 1e-7
    assert _rel(g_theta, r_theta) < 1e-7
    assert torch.equal(g_unused, torch.zeros(3, dtype=F64))


def test_odeint_adjoint_requires_a_module_or_adjoint_params():
    with pytest.raises(NeurodeInputError):
        neurode.odeint_adjoint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("seminorm", [False, True])
def test_odeint_adjoint_matches_torchdiffeq(seminorm):
    torchdiffeq = pytest.importorskip("torchdiffeq")
    func = TimeMLP(seed=9)
    y0 = _random((5, 2), 25)
    t = torch.tensor([0.0, 0.7, 1.5, 2.0], dtype=F64)
    weights = _random((4, 5, 2), 26)
    adjoint_options = {"norm": "seminorm"} if seminorm else None

    def grads(odeint_adjoint):
        y = y0.clone().requires_grad_(True)
        s = t.clone().requires_grad_(True)
        ys = odeint_adjoint(func, y, s, rtol=1e-9, atol=1e-11, adjoint_options=adjoint_options)
        return torch.autograd.grad(_weighted_loss(ys, weights), [y, s, *func.parameters()])

    for g, r in zip(grads(neurode.odeint_adjoint), grads(torchdiffeq.odeint_adjoint)):
        assert float((g - r).norm()) < 1e-6 * float(r.norm())


# -------------------------------------------------------------------- stats and hooks
@pytest.mark.parametrize("gradient", ADJOINTS)
def test_nfe_backward_counts_the_evaluations_of_the_backward_pass(gradient):
    func = TimeMLP(seed=10)
    y0 = _random((2,), 27).requires_grad_(True)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=F64, requires_grad=True)
    solution = neurode.solve(func, y0, t, gradient=gradient, rtol=1e-6, atol=1e-8)
    assert func.calls == solution.stats["nfe"]
    assert "nfe_backward" not in solution.stats
    before = func.calls
    solution.ys.sum().backward()
    assert solution.stats["nfe_backward"] == func.calls - before > 0
    assert solution.stats["steps_backward"] > 0


def test_adjoint_callbacks_see_user_times_in_the_backward_direction():
    func = TimeMLP(seed=11)
    accepted, attempted = [], []
    func.callback_accept_step_adjoint = lambda t, state, dt: accepted.append(float(t))
    func.callback_step_adjoint = lambda t, state, dt: attempted.append(len(state))
    y0 = _random((2,), 28).requires_grad_(True)
    t = torch.tensor([0.5, 2.0], dtype=F64)
    solution = neurode.solve(func, y0, t, gradient="backsolve", **TIGHT)
    solution.ys.sum().backward()
    assert accepted[0] == 2.0 and all(0.5 < s <= 2.0 for s in accepted)
    assert accepted == sorted(accepted, reverse=True)
    assert len(attempted) == solution.stats["steps_backward"]
    assert set(attempted) == {3 + len(list(func.parameters()))}


@pytest.mark.parametrize("gradient", ADJOINTS)
def test_dense_output_and_no_grad_solves(gradient):
    func = TimeMLP(seed=12)
    y0 = _random((2,), 29)
    t = torch.tensor([0.0, 1.0], dtype=F64)
    solution = neurode.solve(func, y0, t, gradient=gradient, dense=True, **TIGHT)
    reference = neurode.solve(func, y0, t, dense=True, **TIGHT)
    assert torch.allclose(solution.evaluate(0.3), reference.evaluate(0.3), rtol=0, atol=1e-14)
    with torch.no_grad():
        ys = neurode.solve(func, y0, t, gradient=gradient).ys
    assert not ys.requires_grad


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("gradient", "options", "error"),
    [
        ("backsolve", {"adjoint_rtol": -1.0}, InvalidToleranceError),
        ("backsolve", {"adjoint_atol": float("nan")}, InvalidToleranceError),
        ("backsolve", {"adjoint_method": "nope"}, UnknownMethodError),
        ("backsolve", {"adjoint_options": {"norm": "l2"}}, UnknownOptionError),
        ("backsolve", {"adjoint_options": {"bogus": 1}}, UnknownOptionError),
        ("backsolve", {"adjoint_options": 3}, UnknownOptionError),
        ("backsolve", {"checkpoints": 3}, UnknownOptionError),
        ("checkpoint", {"checkpoints": 0}, UnknownOptionError),
        ("checkpoint", {"checkpoints": 2.5}, UnknownOptionError),
        ("checkpoint", {"adjoint_rtol": 1e-3}, UnknownOptionError),
    ],
)
def test_bad_gradient_options_raise_typed_errors_before_any_evaluation(gradient, options, error):
    func = TimeMLP()
    with pytest.raises(error):
        neurode.solve(
            func,
            torch.ones(2, dtype=F64),
            torch.tensor([0.0, 1.0], dtype=F64),
            gradient=gradient,
            gradient_options=options,
        )
    assert func.calls == 0
