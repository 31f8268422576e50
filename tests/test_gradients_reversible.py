"""The reversible solver: exact inversion, order, stability, and exact discrete gradients."""

from __future__ import annotations

import math

import pytest
import torch

import neurode
from neurode.errors import (
    NeurodeInputError,
    ReversibleInstabilityError,
    SolverError,
    UnknownMethodError,
    UnknownOptionError,
)
from neurode.gradients import _reversible_guards
from neurode.integrate import reversible_coupling
from neurode.integrate.reversible_coupling import _fastest_decay
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
    """Plain autograd through the reversible steps at the given times (``coupling``: one
    ``λ`` for all steps, or one per step)."""
    y0 = y0.detach().clone().requires_grad_(True)

    def field(s, y, perturb=0):
        return func(torch.tensor(s, dtype=DTYPE), y)

    y = z = y0
    states = [y0]
    couplings = coupling if isinstance(coupling, list) else [coupling] * (len(times) - 1)
    for t0, t1, step_coupling in zip(times[:-1], times[1:], couplings):
        step = reversible_step(TABLEAUS[tableau], field, t0, t1, y, z, step_coupling)
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
        func,
        _Y0,
        t,
        _WEIGHTS_5,
        method="tsit5",
        rtol=1e-8,
        atol=1e-10,
        gradient="reversible",
        gradient_options={"coupling": 0.999},
    )
    times = [t0 for t0, _ in func.accepted] + [2.0]
    assert len(times) > 10
    save_steps = [times.index(float(s)) for s in t]  # the steps land exactly on save times
    expected = _replayed_gradients(func, _Y0, times, _WEIGHTS_5, save_steps, 0.999, "tsit5")
    assert torch.allclose(gradient, expected, rtol=1e-11, atol=1e-13)


def test_automatic_couplings_are_replayed_exactly_by_backward(monkeypatch):
    """Backward walks the accepted steps with the very ``λ_n`` the forward solve chose."""
    chosen: dict[tuple[float, float], float] = {}
    call = reversible_coupling.Coupling.__call__

    def recording(self, h, y, z, f_y, f_z, increment):
        coupling = call(self, h, y, z, f_y, f_z, increment)
        chosen[(len(chosen), h)] = coupling
        return coupling

    monkeypatch.setattr(reversible_coupling.Coupling, "__call__", recording)
    func = _Dynamics()
    t = torch.linspace(0.0, 2.0, 5, dtype=DTYPE)
    gradient = _gradients(
        func, _Y0, t, _WEIGHTS_5, method="tsit5", rtol=1e-8, atol=1e-10, gradient="reversible"
    )
    monkeypatch.setattr(reversible_coupling.Coupling, "__call__", call)
    attempts = sorted(chosen.items())
    couplings, position = [], 0
    for _, h in func.accepted:  # an accepted step is the latest attempt with its size
        while attempts[position][0][1] != h:
            position += 1
        couplings.append(attempts[position][1])
        position += 1
    assert len(set(couplings)) > 5  # the coupling did change from step to step
    times = [t0 for t0, _ in func.accepted] + [2.0]
    save_steps = [times.index(float(s)) for s in t]
    expected = _replayed_gradients(func, _Y0, times, _WEIGHTS_5, save_steps, couplings, "tsit5")
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
        solution = solve("reversible", step_size)
        assert len(solution.ys.grad_fn.saved_tensors) == 3  # y0, y_N, z_N
        # ... and up to 16 evenly thinned forward pairs to check and restart from.
        assert solution.stats["stored_pairs"] <= 16
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
        dict(rtol=1e-8, atol=1e-10),
        dict(gradient_options={"coupling": math.exp(-21.0 * 0.005), "step_size": 0.005}),
        dict(gradient_options={"step_size": 0.005}),
    ],
    ids=["adaptive-coupling-rate", "adaptive-automatic", "fixed-matched-coupling", "fixed-auto"],
)
def test_strongly_damped_two_rate_system_gives_the_true_gradient(solve_kwargs):
    """Decay rates 1 and 21 over [0, 1]: re-integrating the state backwards loses
    ``e^20`` times the tolerance; the reversible solve with ``λ ≈ exp(−21 h)``, given
    or found, only ``e^20`` machine epsilons."""
    matrix = _two_rate_matrix(1.0, 21.0)
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DTYPE)
    weights = torch.tensor([[0.0, 0.0], [1.0, -0.5], [0.7, 0.3]], dtype=DTYPE)
    func = _Linear(matrix)
    gradient = _gradients(func, _Y0, t, weights, gradient="reversible", **solve_kwargs)
    exact = _linear_loss_gradients(matrix, _Y0, t.tolist(), weights)
    assert float((gradient - exact).norm() / exact.norm()) < 1e-6


def test_coupling_the_damping_outruns_stops_a_fixed_grid_solve():
    """``y' = −y`` on [0, 10] with steps of 0.1 and ``λ = 0.999``: the parasitic mode grows
    by ``λ e^{0.1} ≈ 1.1`` a step and the end state used to come back 60% off with a
    warning. Now the solve stops, naming the time; the automatic coupling and the
    matched ``coupling_rate`` give the right value."""
    func = _Linear(torch.tensor([[-1.0]], dtype=DTYPE))
    y0 = torch.ones(1, dtype=DTYPE)
    t = torch.tensor([0.0, 10.0], dtype=DTYPE)
    with pytest.raises(ReversibleInstabilityError, match="coupling_rate") as raised:
        neurode.solve(
            func,
            y0,
            t,
            gradient="reversible",
            gradient_options={"step_size": 0.1, "coupling": 0.999},
        )
    assert 0.0 < raised.value.t < 10.0
    assert f"t={raised.value.t:.6g}" in str(raised.value)
    # The automatic coupling keeps the gap within the fixed grid's tolerances (√ε,
    # absolute below 1): 5e-11 here, 1e-6 of the final value.
    for options, rel in (
        ({"step_size": 0.1}, 1e-5),
        ({"step_size": 0.1, "coupling_rate": 1.0}, 1e-6),
    ):
        value = neurode.solve(func, y0, t, gradient="reversible", gradient_options=options).ys
        assert float(value[-1, 0].detach()) == pytest.approx(math.exp(-10.0), rel=rel)


def test_instability_error_names_the_users_time_when_t_decreases():
    """``y' = y`` from t = 10 down to 0 decays in the solver's direction."""
    with pytest.raises(ReversibleInstabilityError) as raised:
        neurode.solve(
            lambda t, y: y,
            torch.ones(1, dtype=DTYPE),
            torch.tensor([10.0, 0.0], dtype=DTYPE),
            method="rk4",
            options={"step_size": 0.1},
            gradient="reversible",
            gradient_options={"coupling": 0.999},
        )
    assert 0.0 < raised.value.t < 10.0
    assert isinstance(raised.value, SolverError)


# --------------------------------------------------- correct to the tolerances, or an error
def test_growing_exponential_value_and_gradient_are_exact():
    """``y' = a y``, ``a = 5`` on [0, 5]: ``y = e^25``, ``dy/da = 5 e^25``. The backward
    reconstruction used to amplify rounding by the growth ``e^25`` and returned
    ``dy/da = 3.1e14`` for ``3.6e11``; ``λ > 1`` and restart pairs keep it exact."""
    rate = torch.tensor(5.0, dtype=DTYPE, requires_grad=True)
    solution = neurode.solve(
        lambda t, y: rate * y,
        torch.ones(1, dtype=DTYPE),
        torch.tensor([0.0, 5.0], dtype=DTYPE),
        gradient="reversible",
        params=(rate,),
    )
    (gradient,) = torch.autograd.grad(solution.ys[-1].sum(), rate)
    assert float(solution.ys[-1, 0].detach()) == pytest.approx(math.exp(25.0), rel=1e-5)
    assert float(gradient) == pytest.approx(5.0 * math.exp(25.0), rel=1e-5)
    assert solution.stats["reconstruction_drift"] < 1e-3


@pytest.mark.parametrize("rotated", [False, True], ids=["diagonal", "rotated"])
def test_decay_rates_half_and_thirty_meet_the_tolerances(rotated):
    """Rates 0.5 and 30 over [0, 2] (the fast mode ends at ``e^{−60} ≈ 8.8e-27``): the
    forward value used to be 8.9e17 with only a warning. The automatic coupling keeps
    the gap damped, the error test keeps the solution within the tolerances, and restart
    pairs keep the reconstruction (``e^{59}`` of growth backwards) accurate."""
    rates = torch.tensor([-0.5, -30.0], dtype=DTYPE)
    matrix = torch.diag(rates)
    if rotated:
        rotation = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=DTYPE)
        matrix = rotation @ matrix @ rotation.T
    y0 = torch.ones(2, dtype=DTYPE)
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    weights = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DTYPE)
    func = _Linear(matrix)
    y0_leaf = y0.clone().requires_grad_(True)
    solution = neurode.solve(func, y0_leaf, t, gradient="reversible")
    exact_end = torch.linalg.matrix_exp(matrix * 2.0) @ y0
    assert (solution.ys[-1].detach() - exact_end).abs().max() < 1e-8  # atol 1e-9, rtol 1e-7
    loss = (weights * solution.ys).sum()
    gradient = _flat(torch.autograd.grad(loss, [y0_leaf, func.matrix]))
    exact = _linear_loss_gradients(matrix, y0, t.tolist(), weights)
    assert float((gradient - exact).norm() / exact.norm()) < 1e-6
    assert solution.stats["stored_pairs"] > 0


class _Lorenz(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.tensor([10.0, 28.0, 8.0 / 3.0], dtype=DTYPE))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sigma, rho, beta = self.p
        x, v, w = y.unbind(-1)
        return torch.stack([sigma * (v - x), x * (rho - w) - v, x * v - beta * w], -1)


def _lorenz_gradient(t_end: float, **kwargs) -> tuple[torch.Tensor, dict]:
    func = _Lorenz()
    options = dict(rtol=1e-7, atol=1e-9) | kwargs
    solution = neurode.solve(
        func, torch.ones(3, dtype=DTYPE), torch.tensor([0.0, t_end], dtype=DTYPE), **options
    )
    (gradient,) = torch.autograd.grad(solution.ys[-1].sum(), func.p)
    return gradient, solution.stats


def test_lorenz_gradient_agrees_with_direct():
    """Lorenz over [0, 1]: the gap used to grow on the contracting direction (rate ≈ 14.6)
    and left the forward solution, so the gradient was 1–3% off with a reconstruction
    error of 1e-10. Now it agrees with direct backprop (itself within 1e-6 of the truth)."""
    reversible, stats = _lorenz_gradient(1.0, gradient="reversible")
    direct, _ = _lorenz_gradient(1.0, gradient="direct")
    tight, _ = _lorenz_gradient(1.0, gradient="direct", rtol=1e-10, atol=1e-12)
    assert float((reversible - direct).norm() / direct.norm()) < 1e-5
    assert float((reversible - tight).norm() / tight.norm()) < 1e-5
    assert stats["coupling_min"] < 0.5  # the automatic coupling found the fast decay


@pytest.mark.slow
def test_lorenz_over_two_time_units_finishes_in_about_the_steps_of_direct():
    """It used to crawl (40 s and counting): the gap grew faster than the steps could
    shrink. Now it takes about as many steps as the base method and is as accurate."""
    reversible, stats = _lorenz_gradient(2.0, gradient="reversible")
    direct, direct_stats = _lorenz_gradient(2.0, gradient="direct")
    tight, _ = _lorenz_gradient(2.0, gradient="direct", rtol=1e-10, atol=1e-12)
    assert stats["steps"] < 1.5 * direct_stats["steps"]
    assert float((reversible - tight).norm() / tight.norm()) < 1e-5
    assert float((direct - tight).norm() / tight.norm()) < 1e-5


def test_a_coupling_the_damping_outruns_stops_an_adaptive_solve_instead_of_crawling():
    """``coupling=0.999`` on Lorenz: the gap grows on the contracting direction at
    ``0.999 e^{14.6 h}`` a step, so only steps below 7e-5 could keep it within the
    tolerances. The solve stops within a few hundred steps, naming the time."""
    with pytest.raises(ReversibleInstabilityError, match="checkpoint") as raised:
        _lorenz_gradient(2.0, gradient="reversible", gradient_options={"coupling": 0.999})
    assert 0.0 < raised.value.t < 2.0


def test_backward_check_stops_a_reconstruction_that_left_the_forward_states(monkeypatch):
    """Without restart pairs the rotated 0.5/30 system amplifies rounding by ``e^{59}``
    on the way back: the check against the stored start raises, naming the time."""

    class NoRestarts(_reversible_guards.RestartPairs):
        def __init__(self, save_times, thinned, budget):
            super().__init__(save_times, 0, math.inf)

    monkeypatch.setattr("neurode.gradients.reversible.RestartPairs", NoRestarts)
    rotation = torch.tensor([[0.8, 0.6], [-0.6, 0.8]], dtype=DTYPE)
    func = _Linear(rotation @ torch.diag(torch.tensor([-0.5, -30.0], dtype=DTYPE)) @ rotation.T)
    y0 = torch.ones(2, dtype=DTYPE, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    solution = neurode.solve(func, y0, t, gradient="reversible")
    with pytest.raises(ReversibleInstabilityError, match="reconstruction") as raised:
        solution.ys[-1].sum().backward()
    assert raised.value.t == 0.0
    # The check is what stands between the user and a wrong gradient.
    unchecked = neurode.solve(
        func, y0, t, gradient="reversible", gradient_options={"reconstruction_limit": math.inf}
    )
    (gradient,) = torch.autograd.grad(unchecked.ys[-1].sum(), func.matrix)
    weights = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=DTYPE)
    exact = _linear_loss_gradients(func.matrix.detach(), y0.detach(), [0.0, 2.0], weights)[2:]
    assert float((gradient.reshape(-1) - exact).norm() / exact.norm()) > 1e-3


def test_float32_at_the_default_tolerances_agrees_with_direct():
    """``rtol`` = 1e-7 is about float32's ε: the checks allow for rounding."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    y0 = torch.randn(16, 4)
    t = torch.tensor([0.0, 3.0])
    gradients = {}
    for gradient in ("direct", "reversible"):
        net.zero_grad()
        y = y0.clone().requires_grad_(True)
        solution = neurode.solve(lambda s, x: net(x), y, t, rtol=1e-9, atol=1e-9, gradient=gradient)
        (solution.ys[-1] ** 2).sum().backward()
        gradients[gradient] = _flat([y.grad, *[p.grad for p in net.parameters()]])
    difference = gradients["reversible"] - gradients["direct"]
    assert float(difference.norm() / gradients["direct"].norm()) < 1e-5


def test_fastest_decay_is_found_from_gaps_spanning_the_space():
    """The Ritz values of ``J`` on the span of the gaps: with three gaps in R³ they are
    ``J``'s eigenvalues, and the fastest decay is ``max −Re μ``."""
    generator = torch.Generator().manual_seed(5)
    basis = torch.randn(3, 3, generator=generator, dtype=DTYPE)
    eigenvalues = torch.tensor([-30.0, -0.5, 2.0], dtype=DTYPE)
    matrix = basis @ torch.diag(eigenvalues) @ torch.linalg.inv(basis)
    gaps = torch.randn(3, 3, generator=generator, dtype=DTYPE)  # rows
    images = gaps @ matrix.T
    rate = _fastest_decay(gaps @ gaps.T, gaps @ images.T)
    assert rate == pytest.approx(30.0, rel=1e-9)
    # A rotation neither decays nor grows; a lone gap gives its Rayleigh quotient.
    rotation = torch.tensor([[0.0, 2.0], [-2.0, 0.0]], dtype=DTYPE)
    gaps = torch.randn(2, 2, generator=generator, dtype=DTYPE)
    assert _fastest_decay(gaps @ gaps.T, gaps @ (gaps @ rotation.T).T) == pytest.approx(
        0.0, abs=1e-12
    )
    gap = torch.tensor([[1.0, 0.0, 0.0]], dtype=DTYPE)
    assert _fastest_decay(gap @ gap.T, gap @ (gap @ matrix.T).T) == pytest.approx(
        -float(matrix[0, 0])
    )


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
        (dict(gradient_options={"checkpoints": -1}), NeurodeInputError),
        (dict(gradient_options={"checkpoints": 2.5}), NeurodeInputError),
        (dict(gradient_options={"reconstruction_limit": 0.0}), NeurodeInputError),
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


def test_the_warning_class_stays_importable():
    assert issubclass(neurode.ReversibleInstabilityWarning, Warning)
    assert issubclass(ReversibleInstabilityError, SolverError)


def test_complex_state_gradient_matches_the_exact_one():
    """The coupling's estimates treat a complex state as pairs of reals."""
    matrix = torch.tensor([[-0.5 + 2j, 0.3], [0.1, -1.0 - 1j]], dtype=torch.complex128)
    y0 = torch.tensor([1.0 + 0j, 0.5j], dtype=torch.complex128, requires_grad=True)
    t = torch.tensor([0.0, 2.0], dtype=DTYPE)
    solution = neurode.solve(lambda s, y: matrix @ y, y0, t, gradient="reversible")
    (gradient,) = torch.autograd.grad(solution.ys[-1].abs().square().sum(), y0)
    propagator = torch.linalg.matrix_exp(matrix * 2.0)
    exact = 2.0 * propagator.conj().T @ (propagator @ y0.detach())
    assert torch.allclose(gradient, exact, rtol=1e-6, atol=1e-9)
