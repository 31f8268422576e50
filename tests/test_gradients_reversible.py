"""The reversible solver: exact inversion, order, stability, and exact discrete gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import neurode
from neurode.errors import NeurodeInputError, UnknownMethodError, UnknownOptionError
from neurode.gradients.reversible import ReversibleInstabilityWarning
from neurode.solvers.reversible import reversible_step, reversible_step_back, rk_increment
from neurode.solvers.tableaus import TABLEAUS

DTYPE = torch.float64


class _Dynamics(torch.nn.Module):
    """A small time-dependent MLP vector field on R²; records the accepted steps."""

    def __init__(self, seed: int = 0, hidden: int = 12):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.inner = torch.nn.Parameter(
            0.8 * torch.randn(hidden, 3, generator=generator, dtype=DTYPE)
        )
        self.bias = torch.nn.Parameter(0.3 * torch.randn(hidden, generator=generator, dtype=DTYPE))
        self.outer = torch.nn.Parameter(
            0.5 * torch.randn(2, hidden, generator=generator, dtype=DTYPE)
        )
        self.accepted: list[tuple[float, float]] = []

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = torch.cat([y, torch.cos(t).reshape(1).to(y.dtype)])
        return self.outer @ torch.tanh(self.inner @ features + self.bias)

    def callback_accept_step(self, t: float, y: torch.Tensor, h: float) -> None:
        self.accepted.append((t, h))


class _Linear(torch.nn.Module):
    def __init__(self, matrix: torch.Tensor):
        super().__init__()
        self.matrix = torch.nn.Parameter(matrix.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.matrix @ y


def _flat(tensors) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in tensors])


def _gradients(func, y0, t, loss_weights, **solve_kwargs) -> torch.Tensor:
    y0 = y0.detach().clone().requires_grad_(True)
    solution = neurode.solve(func, y0, t, **solve_kwargs)
    loss = (loss_weights * solution.ys).sum()
    return _flat(torch.autograd.grad(loss, [y0, *func.parameters()]))


def _replayed_gradients(func, y0, times, loss_weights, save_steps, coupling, tableau):
    """Plain autograd through the reversible steps at the given times."""
    y0 = y0.detach().clone().requires_grad_(True)

    def field(s, y, perturb=0):
        return func(torch.tensor(s, dtype=DTYPE), y)

    y = z = y0
    states = [y0]
    for t0, t1 in zip(times[:-1], times[1:]):
        step = reversible_step(TABLEAUS[tableau], field, t0, t1, y, z, coupling)
        y, z = step.y1, step.z1
        states.append(y)
    ys = torch.stack([states[i] for i in save_steps])
    loss = (loss_weights * ys).sum()
    return _flat(torch.autograd.grad(loss, [y0, *func.parameters()]))


def _expm_directional(matrix: torch.Tensor, direction: torch.Tensor, t: float) -> torch.Tensor:
    """``d/dε expm((A + εE) t)`` at ε = 0: the upper-right block of ``expm([[A, E], [0, A]] t)``."""
    n = matrix.shape[0]
    block = torch.zeros(2 * n, 2 * n, dtype=DTYPE)
    block[:n, :n] = matrix
    block[n:, n:] = matrix
    block[:n, n:] = direction
    return torch.linalg.matrix_exp(block * t)[:n, n:]


def _linear_loss_gradients(matrix, y0, times, weights) -> torch.Tensor:
    """Exact ``∇`` of ``L = Σ_i ⟨w_i, expm(A t_i) y0⟩`` with respect to ``(y0, A)``."""
    n = matrix.shape[0]
    grad_y0 = sum(torch.linalg.matrix_exp(matrix * t).T @ w for t, w in zip(times, weights))
    grad_matrix = torch.zeros(n, n, dtype=DTYPE)
    for j in range(n):
        for k in range(n):
            direction = torch.zeros(n, n, dtype=DTYPE)
            direction[j, k] = 1.0
            grad_matrix[j, k] = sum(
                w @ _expm_directional(matrix, direction, t) @ y0 for t, w in zip(times, weights)
            )
    return torch.cat([grad_y0, grad_matrix.reshape(-1)])


def _saved_tensor_count(run) -> int:
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return count


_Y0 = torch.tensor([0.6, -0.4], dtype=DTYPE)
_WEIGHTS_5 = torch.tensor(
    [[0.3, -0.2], [1.0, 0.5], [-0.7, 0.4], [0.2, 0.9], [0.8, -1.1]], dtype=DTYPE
)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("name", sorted(TABLEAUS))
def test_step_back_inverts_the_step_to_rounding(name):
    func = _Dynamics(seed=1)

    def field(s, y, perturb=0):
        return func(torch.tensor(s, dtype=DTYPE), y)

    times = [0.05 * i for i in range(41)]
    y = z = _Y0
    with torch.no_grad():
        for t0, t1 in zip(times[:-1], times[1:]):
            step = reversible_step(TABLEAUS[name], field, t0, t1, y, z, 0.9)
            y, z = step.y1, step.z1
        for t0, t1 in zip(reversed(times[:-1]), reversed(times[1:])):
            y, z = reversible_step_back(TABLEAUS[name], field, t0, t1, y, z, 0.9)
    assert torch.allclose(y, _Y0, rtol=0, atol=1e-13)
    assert torch.allclose(z, _Y0, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", ["midpoint", "heun3", "rk4", "bosh3", "dopri5", "tsit5"])
def test_reversible_method_keeps_the_order_of_its_base_method(name):
    """Global error on a damped rotation halves by ``2^p`` when the step halves."""
    matrix = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=DTYPE)
    exact = torch.linalg.matrix_exp(matrix * 2.0) @ _Y0
    errors = []
    for steps in (20, 40):
        h = 2.0 / steps
        y = z = _Y0
        for n in range(steps):
            step = reversible_step(
                TABLEAUS[name], lambda s, x, p=0: matrix @ x, n * h, (n + 1) * h, y, z, 0.999
            )
            y, z = step.y1, step.z1
        errors.append(float((y - exact).norm()))
    observed = math.log2(errors[0] / errors[1])
    assert abs(observed - TABLEAUS[name].order) < 0.4


@pytest.mark.parametrize("x", [-0.4, -0.05, 0.3])
def test_step_matrix_on_the_linear_test_equation(x):
    """On ``y' = a y`` (``h = 1``, ``x = a``) one step multiplies ``(y, z)`` by
    ``M = [[λ, R − λ], [λ(1 − R̄), 1 + (1 − R̄)(R − λ)]]`` with ``R = R(x)``,
    ``R̄ = R(−x)``: ``det M = λ``, ``tr M = 1 + R − R R̄ + λ R̄``; its eigenvalues are
    ``μ₁ ≈ R`` and the parasitic ``μ₂ = λ / μ₁``."""
    coupling = 0.9
    tableau = TABLEAUS["dopri5"]

    def field(s, v, p=0):
        return x * v

    def step_of(y, z):
        step = reversible_step(tableau, field, 0.0, 1.0, y, z, coupling)
        return torch.cat([step.y1, step.z1])

    one, zero = torch.ones(1, dtype=DTYPE), torch.zeros(1, dtype=DTYPE)
    matrix = torch.stack([step_of(one, zero), step_of(zero, one)], dim=1)
    forward = 1.0 + float(rk_increment(tableau, field, 0.0, one, 1.0).value)
    backward = 1.0 + float(rk_increment(tableau, field, 1.0, one, 0.0).value)
    assert float(torch.linalg.det(matrix)) == pytest.approx(coupling, rel=1e-12)
    trace = 1.0 + forward - forward * backward + coupling * backward
    assert float(torch.trace(matrix)) == pytest.approx(trace, rel=1e-12)
    eigenvalues = sorted(torch.linalg.eigvals(matrix).abs().tolist())
    assert eigenvalues == pytest.approx(sorted([forward, coupling / forward]), rel=1e-5)


# ------------------------------------------------------------------------- gradients
def test_gradient_matches_central_differences_with_fixed_and_adaptive_steps():
    func = _Dynamics()
    t = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)
    configurations = [
        dict(method="dopri5", gradient_options={"step_size": 0.05}),
        dict(method="dopri5", rtol=1e-10, atol=1e-12),
    ]
    generator = torch.Generator().manual_seed(3)
    for configuration in configurations:
        solve_kwargs = dict(gradient="reversible", **configuration)
        gradient = _gradients(func, _Y0, t, _WEIGHTS_5, **solve_kwargs)
        inputs = [_Y0.clone(), *[p.detach().clone() for p in func.parameters()]]
        for _ in range(3):
            direction = torch.randn(gradient.numel(), generator=generator, dtype=DTYPE)
            eps = 1e-6
            values = []
            for sign in (1.0, -1.0):
                pieces = torch.split(sign * eps * direction, [x.numel() for x in inputs])
                with torch.no_grad():
                    for p, base, piece in zip(func.parameters(), inputs[1:], pieces[1:]):
                        p.copy_(base + piece.view(base.shape))
                    ys = neurode.solve(func, inputs[0] + pieces[0], t, **solve_kwargs).ys
                values.append(float((_WEIGHTS_5 * ys).sum()))
            with torch.no_grad():
                for p, base in zip(func.parameters(), inputs[1:]):
                    p.copy_(base)
            central = (values[0] - values[1]) / (2 * eps)
            assert float(gradient @ direction) == pytest.approx(central, rel=1e-5, abs=1e-8)


def test_fixed_step_gradient_is_backprop_through_the_same_steps():
    func = _Dynamics()
    t = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)
    gradient = _gradients(
        func,
        _Y0,
        t,
        _WEIGHTS_5,
        method="rk4",
        options={"step_size": 0.1},
        gradient="reversible",
        gradient_options={"coupling": 0.95},
    )
    times = [0.1 * i for i in range(21)]
    times[-1] = 2.0
    expected = _replayed_gradients(func, _Y0, times, _WEIGHTS_5, [0, 5, 10, 15, 20], 0.95, "rk4")
    assert torch.allclose(gradient, expected, rtol=1e-11, atol=1e-13)


def test_adaptive_gradient_is_backprop_through_the_accepted_steps():
    func = _Dynamics()
    t = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)
    gradient = _gradients(
        func, _Y0, t, _WEIGHTS_5, method="tsit5", rtol=1e-8, atol=1e-10, gradient="reversible"
    )
    times = [t0 for t0, _ in func.accepted] + [2.0]
    assert len(times) > 10
    save_steps = [times.index(float(s)) for s in t]  # the steps land exactly on save times
    expected = _replayed_gradients(func, _Y0, times, _WEIGHTS_5, save_steps, 0.999, "tsit5")
    assert torch.allclose(gradient, expected, rtol=1e-11, atol=1e-13)


class _Pendulum(torch.nn.Module):
    """``q'' = −ω² sin q``: oscillatory, so neither direction amplifies the parasitic mode."""

    def __init__(self):
        super().__init__()
        self.omega_squared = torch.nn.Parameter(torch.tensor(2.0, dtype=DTYPE))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[1], -self.omega_squared * torch.sin(y[0])])


def test_reconstructed_start_equals_the_true_one_after_a_long_solve():
    y0 = torch.tensor([2.0, 0.0], dtype=DTYPE, requires_grad=True)
    t = torch.tensor([0.0, 40.0], dtype=DTYPE)
    solution = neurode.solve(
        _Pendulum(), y0, t, method="rk4", options={"step_size": 0.04}, gradient="reversible"
    )
    solution.ys[-1].sum().backward()
    assert solution.stats["steps_backward"] == 1000
    assert solution.stats["reconstruction_error"] < 1e-12


def test_saved_tensors_do_not_grow_with_the_number_of_steps():
    func = _Dynamics()
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)

    def solve(gradient, step_size):
        y0 = _Y0.clone().requires_grad_(True)
        return neurode.solve(
            func, y0, t, method="rk4", options={"step_size": step_size}, gradient=gradient
        )

    for step_size in (0.1, 0.002):
        node = solve("reversible", step_size).ys.grad_fn
        assert len(node.saved_tensors) == 3  # y0, y_N, z_N
    coarse = _saved_tensor_count(lambda: solve("reversible", 0.1))
    fine = _saved_tensor_count(lambda: solve("reversible", 0.002))
    assert coarse == fine
    direct_coarse = _saved_tensor_count(lambda: solve("direct", 0.1))
    direct_fine = _saved_tensor_count(lambda: solve("direct", 0.002))
    assert direct_fine > 40 * direct_coarse


def test_adaptive_solution_lands_on_save_times_and_meets_the_tolerance():
    matrix = torch.tensor([[-0.2, 2.0], [-2.0, -0.2]], dtype=DTYPE)
    t = torch.tensor([0.0, 0.37, 1.0, 2.5, 4.0], dtype=DTYPE)
    solution = neurode.solve(_Linear(matrix), _Y0, t, rtol=1e-9, atol=1e-11, gradient="reversible")
    exact = torch.stack([torch.linalg.matrix_exp(matrix * s) @ _Y0 for s in t])
    assert torch.allclose(solution.ys.detach(), exact, rtol=0, atol=1e-8)
    assert solution.stats["accepted"] > 10


def test_counts_evaluations_forward_and_backward():
    """rk4 (4 stages) and dopri5 (6 stages needed without error estimate) per base step;
    two base steps a step forwards, two again backwards."""
    func = _Dynamics()
    t = torch.tensor([0.0, 1.0], dtype=DTYPE)
    for method, options, stages in (
        ("rk4", {"step_size": 0.1}, 4),
        ("dopri5", None, 6),
    ):
        y0 = _Y0.clone().requires_grad_(True)
        gradient_options = {"step_size": 0.1} if options is None else {}
        solution = neurode.solve(
            func,
            y0,
            t,
            method=method,
            options=options,
            gradient="reversible",
            gradient_options=gradient_options,
        )
        assert solution.stats["nfe"] == 2 * stages * 10
        solution.ys[-1].sum().backward()
        assert solution.stats["nfe_backward"] == 2 * stages * 10


def test_time_gradients_tuple_states_and_decreasing_time_match_direct():
    func = _Dynamics()

    def tuple_func(t, state):
        first, second = state
        out = func(t, torch.cat([first, second]))
        return out[:1], out[1:]

    results = {}
    for gradient in ("direct", "reversible"):
        first = _Y0[:1].clone().requires_grad_(True)
        second = _Y0[1:].clone().requires_grad_(True)
        t = torch.tensor([1.5, 0.8, -0.4], dtype=DTYPE, requires_grad=True)
        solution = neurode.solve(
            tuple_func,
            (first, second),
            t,
            rtol=1e-11,
            atol=1e-13,
            gradient=gradient,
            params=tuple(func.parameters()),
        )
        loss = (solution.ys[0] ** 2).sum() + (solution.ys[1] * _WEIGHTS_5[:3, :1]).sum()
        results[gradient] = _flat(torch.autograd.grad(loss, [first, second, t, *func.parameters()]))
    assert torch.allclose(results["reversible"], results["direct"], rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- stability in practice
def _two_rate_matrix(slow: float, fast: float) -> torch.Tensor:
    rotation = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=DTYPE)
    return rotation @ torch.diag(torch.tensor([-slow, -fast], dtype=DTYPE)) @ rotation.T


@pytest.mark.parametrize(
    "solve_kwargs",
    [
        dict(rtol=1e-8, atol=1e-10, gradient_options={"coupling_rate": 21.0}),
        dict(gradient_options={"coupling": math.exp(-21.0 * 0.005), "step_size": 0.005}),
    ],
    ids=["adaptive-coupling-rate", "fixed-matched-coupling"],
)
def test_strongly_damped_two_rate_system_gives_the_true_gradient(solve_kwargs):
    """Decay rates 1 and 21 over [0, 1]: re-integrating the state backwards loses
    ``e^20`` times the tolerance; the reversible solve with ``λ = exp(−21 h)`` only
    ``e^20`` machine epsilons."""
    matrix = _two_rate_matrix(1.0, 21.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    weights = torch.tensor([[0.0, 0.0], [1.0, -0.5], [0.7, 0.3]], dtype=DTYPE)
    func = _Linear(matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversibleInstabilityWarning)
        gradient = _gradients(func, _Y0, t, weights, gradient="reversible", **solve_kwargs)
    exact = _linear_loss_gradients(matrix, _Y0, t.tolist(), weights)
    assert float((gradient - exact).norm() / exact.norm()) < 1e-6


def test_default_coupling_warns_when_damping_outruns_it():
    """``y' = −y`` on [0, 10] with steps of 0.1: the parasitic mode grows by
    ``λ e^{0.1} ≈ 1.1`` a step, and the end state is far off."""
    func = _Linear(torch.tensor([[-1.0]], dtype=DTYPE))
    y0 = torch.ones(1, dtype=DTYPE)
    t = torch.tensor([0.0, 10.0], dtype=DTYPE)
    with pytest.warns(ReversibleInstabilityWarning):
        solution = neurode.solve(
            func, y0, t, gradient="reversible", gradient_options={"step_size": 0.1}
        )
    assert abs(float(solution.ys[-1, 0].detach()) / math.exp(-10.0) - 1.0) > 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReversibleInstabilityWarning)
        matched = neurode.solve(
            func,
            y0,
            t,
            gradient="reversible",
            gradient_options={"step_size": 0.1, "coupling_rate": 1.0},
        )
    assert float(matched.ys[-1, 0].detach()) == pytest.approx(math.exp(-10.0), rel=1e-6)


# ------------------------------------------------------------------- other behaviour
def test_dense_output_follows_the_solution():
    matrix = torch.tensor([[-0.2, 2.0], [-2.0, -0.2]], dtype=DTYPE)
    for method, gradient_options in (("dopri5", {}), ("rk4", {"step_size": 0.02})):
        solution = neurode.solve(
            _Linear(matrix),
            _Y0,
            torch.tensor([0.0, 2.0], dtype=DTYPE),
            method=method,
            rtol=1e-9,
            atol=1e-11,
            gradient="reversible",
            gradient_options=gradient_options,
            dense=True,
        )
        for s in (0.123, 1.01, 1.77):
            exact = torch.linalg.matrix_exp(matrix * s) @ _Y0
            assert torch.allclose(solution.evaluate(s), exact, rtol=0, atol=1e-6)


def test_without_gradients_it_solves_the_same():
    func = _Dynamics()
    t = torch.linspace(0.0, 1.0, 3, dtype=DTYPE)
    y0 = _Y0.clone().requires_grad_(True)
    with_graph = neurode.solve(func, y0, t, gradient="reversible").ys
    with torch.no_grad():
        without = neurode.solve(func, y0, t, gradient="reversible").ys
    assert torch.equal(with_graph.detach(), without)
    assert not without.requires_grad


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(gradient_options={"couplin": 0.9}), UnknownOptionError),
        (dict(gradient_options={"coupling": 0.0}), NeurodeInputError),
        (dict(gradient_options={"coupling": 1.5}), NeurodeInputError),
        (dict(gradient_options={"coupling": "0.9"}), NeurodeInputError),
        (dict(gradient_options={"coupling": 0.9, "coupling_rate": 1.0}), NeurodeInputError),
        (dict(gradient_options={"coupling_rate": -1.0}), NeurodeInputError),
        (dict(gradient_options={"step_size": -0.1}), NeurodeInputError),
        (dict(gradient_options={"step_size": 0.1, "grid": [0.0, 1.0]}), NeurodeInputError),
        (dict(gradient_options={"grid": [0.0, 0.5, 0.9]}), NeurodeInputError),
        (dict(gradient_options={"grid": [0.0, 0.7, 0.5, 1.0]}), NeurodeInputError),
        (
            dict(method="rk4", options={"step_size": 0.1}, gradient_options={"step_size": 0.2}),
            NeurodeInputError,
        ),
        (dict(method="explicit_adams", options={"step_size": 0.1}), UnknownMethodError),
    ],
)
def test_bad_options_are_rejected_before_any_evaluation(kwargs, error):
    calls = []

    def func(t, y):
        calls.append(t)
        return -y

    with pytest.raises(error):
        neurode.solve(
            func, _Y0, torch.tensor([0.0, 1.0], dtype=DTYPE), gradient="reversible", **kwargs
        )
    assert calls == []


def test_user_grid_is_used_and_save_times_are_added():
    func = _Dynamics()
    grid = [0.0, 0.3, 0.55, 1.0]
    solution = neurode.solve(
        func,
        _Y0,
        torch.tensor([0.0, 0.4, 1.0], dtype=DTYPE),
        gradient="reversible",
        gradient_options={"grid": grid},
    )
    assert [t0 for t0, _ in func.accepted] == [0.0, 0.3, 0.4, 0.55]
    assert solution.stats["steps"] == 4
