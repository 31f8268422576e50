"""Stiff problems through the public API: the implicit, Rosenbrock and automatic methods.

References are scipy's Radau at tight tolerances (``reference_solution``), the
Bari test set's HIRES values, closed forms (the linear problem), convergence
orders, rows solved alone, and finite differences for gradients.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import neurode
from neurode.data.stiff_problems import (
    HIRES_REFERENCE,
    hires,
    reference_solution,
    robertson,
    stiff_linear,
    van_der_pol,
)
from neurode.errors import (
    InvalidOptionError,
    NonFiniteStateError,
    SolverError,
    StiffnessWarning,
    UnknownOptionError,
)

F64 = torch.float64
ADAPTIVE = ["kvaerno3", "kvaerno4", "kvaerno5", "rodas5", "rodas5p", "auto"]
FIXED_ORDERS = {
    "implicit_euler": 1,
    "implicit_midpoint": 2,
    "trapezoid": 2,
    "radauIIA3": 3,
    "radauIIA5": 5,
    "gl4": 4,
    "gl6": 6,
    "sdirk2": 2,
    "trbdf2": 2,
}


def _times(*values):
    return torch.tensor(values, dtype=F64)


def _scaled_error(ys, reference, rtol, atol):
    return float(((ys - reference).abs() / (atol + rtol * reference.abs())).max())


# ----------------------------------------------------------------------- accuracy
@pytest.fixture(scope="module")
def robertson_reference():
    times = _times(0.0, 1e-3, 0.4, 40.0, 4e3, 4e5)
    return times, reference_solution(robertson(), times)


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p", "rodas5", "auto"])
def test_robertson_to_four_hundred_thousand(method, robertson_reference):
    times, reference = robertson_reference
    problem = robertson()
    rtol, atol = 1e-6, 1e-12
    solution = neurode.solve(problem.func, problem.y0, times, method=method, rtol=rtol, atol=atol)
    # The end point within a few tolerances; saved points through the interpolant
    # (kvaerno5's is cubic Hermite: third order, looser).
    assert _scaled_error(solution.ys[-1], reference[-1], rtol, atol) < 5
    limit = 200 if method == "kvaerno5" else 5
    assert _scaled_error(solution.ys, reference, rtol, atol) < limit
    # Mass is conserved to rounding by every linear combination of stages.
    assert float((solution.ys.sum(dim=1) - 1).abs().max()) < 1e-12
    stats = solution.stats
    # Far fewer evaluations than an explicit method would need (millions).
    assert stats["nfe"] < 2500 and stats["steps"] < 400
    assert stats["jacobian_evaluations"] >= 1 and stats["factorizations"] >= 1


def test_robertson_evaluations_against_scipy_radau(robertson_reference):
    scipy_integrate = pytest.importorskip("scipy.integrate")
    problem = robertson()
    rtol, atol = 1e-6, 1e-12

    def rhs(t, y):
        return problem.func(t, torch.from_numpy(y)).numpy()

    def jac(t, y):
        return problem.jacobian(t, torch.from_numpy(y)).numpy()

    radau = scipy_integrate.solve_ivp(
        rhs, (0.0, 4e5), problem.y0.numpy(), method="Radau", rtol=rtol, atol=atol, jac=jac
    )
    solution = neurode.solve(
        problem.func,
        problem.y0,
        _times(0.0, 4e5),
        method="rodas5p",
        rtol=rtol,
        atol=atol,
        options={"autonomous": True},
    )
    evaluations = solution.stats["nfe"] - solution.stats["jacobian_evaluations"]
    assert evaluations < 1.5 * radau.nfev


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p", "auto"])
def test_hires_against_the_published_values(method):
    problem = hires()
    rtol, atol = 1e-8, 1e-12
    solution = neurode.solve(
        problem.func, problem.y0, _times(*problem.t_span), method=method, rtol=rtol, atol=atol
    )
    reference = torch.tensor(HIRES_REFERENCE, dtype=F64)
    # Global error over 300 time units: a few tens of the local tolerance.
    assert _scaled_error(solution.ys[-1], reference, 1e-6, 1e-10) < 1


@pytest.mark.parametrize("method", ["rodas5p", "auto"])
def test_van_der_pol_stiff_first_relaxation(method):
    problem = van_der_pol(1000.0, t_end=1000.0)
    times = _times(0.0, 500.0, 1000.0)
    reference = reference_solution(problem, times)
    rtol, atol = 1e-6, 1e-8
    solution = neurode.solve(problem.func, problem.y0, times, method=method, rtol=rtol, atol=atol)
    assert _scaled_error(solution.ys, reference, 1e-4, 1e-6) < 1
    assert solution.stats["steps"] < 400


@pytest.mark.slow
@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p", "auto"])
def test_van_der_pol_mu_1000_to_3000(method):
    problem = van_der_pol(1000.0)
    times = _times(0.0, 1000.0, 2000.0, 3000.0)
    reference = reference_solution(problem, times)
    solution = neurode.solve(problem.func, problem.y0, times, method=method, rtol=1e-7, atol=1e-9)
    # The fast transitions make the phase sensitive: compare in a looser measure.
    assert _scaled_error(solution.ys, reference, 1e-3, 1e-5) < 1
    assert solution.stats["steps"] < 3000


def test_linear_problem_l_stable_methods_damp_the_stiff_mode():
    problem = stiff_linear()
    exact = problem.exact(1.0)
    # One step of 0.1 (h λ = -1000): the stiff mode must be gone, the others resolved.
    for method in ("implicit_euler", "radauIIA3", "radauIIA5", "sdirk2", "trbdf2"):
        ys = neurode.odeint(
            problem.func, problem.y0, _times(0.0, 1.0), method=method, options={"step_size": 0.1}
        )
        assert float((ys[-1] - exact).abs().max()) < 0.05, method
    # A-stable but not L-stable: the stiff mode survives with |R(∞)| = 1.
    ys = neurode.odeint(
        problem.func, problem.y0, _times(0.0, 1.0), method="trapezoid", options={"step_size": 0.1}
    )
    assert float((ys[-1] - exact).abs().max()) > 0.1


@pytest.mark.parametrize("method", ["kvaerno3", "kvaerno5", "rodas5p", "auto"])
def test_linear_problem_adaptive_steps_are_not_held_back(method):
    problem = stiff_linear()
    solution = neurode.solve(
        problem.func, problem.y0, _times(0.0, 1.0), method=method, rtol=1e-6, atol=1e-9
    )
    assert _scaled_error(solution.ys[-1], problem.exact(1.0), 1e-6, 1e-9) < 5
    # λ = -1e4 would hold an explicit method to about 3e4 steps on [0, 1]; an L-stable
    # method takes about as many as on the problem without the stiff mode (λ = -20).
    mild = stiff_linear((-1.0, -10.0, -20.0))
    without_stiff_mode = neurode.solve(
        mild.func, mild.y0, _times(0.0, 1.0), method=method, rtol=1e-6, atol=1e-9
    )
    assert solution.stats["steps"] < 1.5 * without_stiff_mode.stats["steps"] + 20


# ----------------------------------------------------------------------- orders
def _smooth_problem():
    """y1' = -y1² + y2 + g1(t), y2' = -y1 y2 - y2/2 + g2(t), solution (sin t, e^{-t/2} cos t)."""

    def exact(t):
        t = torch.as_tensor(t, dtype=F64)
        return torch.stack([torch.sin(t), torch.exp(-t / 2) * torch.cos(t)], dim=-1)

    def func(t, y):
        s = exact(t)
        ds = torch.stack(
            [torch.cos(t), -torch.exp(-t / 2) * (torch.sin(t) + 0.5 * torch.cos(t))], dim=-1
        )
        y1, y2 = y.unbind(-1)
        s1, s2 = s.unbind(-1)
        g = ds - torch.stack([-s1 * s1 + s2, -s1 * s2 - 0.5 * s2], dim=-1)
        return torch.stack([-y1 * y1 + y2, -y1 * y2 - 0.5 * y2], dim=-1) + g

    return func, exact


@pytest.mark.parametrize("method", sorted(FIXED_ORDERS))
def test_fixed_grid_methods_converge_at_their_order(method):
    func, exact = _smooth_problem()
    errors = []
    for steps in (10, 20):
        ys = neurode.odeint(
            func,
            exact(0.0),
            _times(0.0, 1.0),
            method=method,
            rtol=1e-13,
            atol=1e-15,
            options={"step_size": 1.0 / steps},
        )
        errors.append(float((ys[-1] - exact(1.0)).abs().max()))
    order = math.log2(errors[0] / errors[1])
    assert abs(order - FIXED_ORDERS[method]) < 0.2, (method, order)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_adaptive_methods_meet_tighter_tolerances(method):
    func, exact = _smooth_problem()
    errors = []
    for rtol in (1e-5, 1e-8):
        solution = neurode.solve(
            func, exact(0.0), _times(0.0, 2.0), method=method, rtol=rtol, atol=rtol
        )
        errors.append(float((solution.ys[-1] - exact(2.0)).abs().max()))
    assert errors[1] < errors[0] / 100
    assert errors[1] < 1e-6


# ----------------------------------------------------------------------- output
@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p"])
def test_dense_output_and_events(method):
    func, exact = _smooth_problem()
    solution = neurode.solve(
        func, exact(0.0), _times(0.0, 2.0), method=method, rtol=1e-9, atol=1e-9, dense=True
    )
    inside = _times(0.3, 1.1, 1.7)
    assert float((solution.evaluate(inside) - exact(inside)).abs().max()) < 1e-5
    # The first zero of cos t e^{-t/2} is at π/2.
    event_t, states = neurode.odeint(
        func,
        exact(0.0),
        _times(0.0, 5.0),
        method=method,
        rtol=1e-9,
        atol=1e-9,
        event_fn=lambda t, y: y[1],
    )
    assert float(event_t) == pytest.approx(math.pi / 2, abs=1e-6)


def test_float32_solves():
    problem = robertson(dtype=torch.float32)
    times = _times(0.0, 40.0, 4e5)
    reference = reference_solution(robertson(), times)
    for method in ("kvaerno5", "rodas5p", "auto"):
        solution = neurode.solve(
            problem.func, problem.y0, times.float(), method=method, rtol=1e-4, atol=1e-8
        )
        assert solution.ys.dtype == torch.float32
        assert _scaled_error(solution.ys.double(), reference, 1e-3, 1e-7) < 1, method


def test_decreasing_time_and_a_user_jacobian():
    problem = stiff_linear()
    # Backwards from t = 1 to 0 every mode grows (by e^{-λ}): local errors of a mode
    # λ = -20 would grow 5e8-fold, so the problem is well conditioned only with slow modes.
    slow = stiff_linear((-1.0, -2.0, -3.0))
    y1 = slow.exact(1.0)
    calls = []

    def jacobian(t, y):
        calls.append(float(t))
        return slow.jacobian(t, y)

    solution = neurode.solve(
        slow.func,
        y1,
        _times(1.0, 0.0),
        method="kvaerno5",
        rtol=1e-8,
        atol=1e-10,
        options={"jacobian": jacobian},
    )
    assert float((solution.ys[-1] - slow.y0).abs().max()) < 1e-6
    assert calls and all(0.0 <= t <= 1.0 for t in calls)
    assert problem.t_span == (0.0, 1.0)


def test_matrix_free_krylov_solves():
    problem = hires()
    solution = neurode.solve(
        problem.func,
        problem.y0,
        _times(*problem.t_span),
        method="kvaerno5",
        rtol=1e-6,
        atol=1e-10,
        options={"linear_solver": "krylov"},
    )
    reference = torch.tensor(HIRES_REFERENCE, dtype=F64)
    assert _scaled_error(solution.ys[-1], reference, 1e-4, 1e-8) < 1
    assert solution.stats["jvp_evaluations"] > 0
    assert solution.stats["jacobian_evaluations"] == 0


# ----------------------------------------------------------------------- batches
def _rates(rows: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    spread = torch.exp(0.3 * torch.randn(rows, 3, generator=generator, dtype=F64))
    return torch.tensor([0.04, 3e7, 1e4], dtype=F64) * spread


@pytest.mark.parametrize("method", ["kvaerno5", "rodas5p", "auto"])
def test_per_sample_rows_are_the_problems_solved_alone(method):
    problem = robertson(_rates(3), t_end=40.0)
    times = _times(0.0, 0.4, 40.0)
    batch = neurode.solve(
        problem.func, problem.y0, times, method=method, rtol=1e-6, atol=1e-10, batch="per_sample"
    )
    reference = reference_solution(problem, times)
    # Global error: kvaerno5 reaches 1.5e-5 relative on one row at rtol=1e-6.
    assert _scaled_error(batch.ys, reference, 1e-4, 1e-9) < 1
    for row in range(3):
        alone = problem.row(row)
        single = neurode.solve(alone.func, alone.y0, times, method=method, rtol=1e-6, atol=1e-10)
        assert int(batch.stats["steps"][row]) == single.stats["steps"]
        torch.testing.assert_close(batch.ys[:, row], single.ys, rtol=1e-7, atol=1e-12)


def test_joint_batch_is_one_system():
    problem = robertson(_rates(2), t_end=40.0)
    times = _times(0.0, 40.0)
    joint = neurode.solve(problem.func, problem.y0, times, method="rodas5p", rtol=1e-6, atol=1e-10)
    reference = reference_solution(problem, times)
    assert _scaled_error(joint.ys, reference, 1e-5, 1e-9) < 1
    assert isinstance(joint.stats["steps"], int)


def test_auto_switches_each_row_on_its_own():
    # μ = 1 never needs the implicit method; μ = 1000 is stiff after a short transient.
    problem = van_der_pol(torch.tensor([1.0, 1000.0], dtype=F64), t_end=20.0)
    times = _times(0.0, 20.0)
    solution = neurode.solve(
        problem.func, problem.y0, times, method="auto", rtol=1e-6, atol=1e-9, batch="per_sample"
    )
    stats = solution.stats
    assert int(stats["implicit_steps"][0]) == 0 and int(stats["switches"][0]) == 0
    assert int(stats["implicit_steps"][1]) > 0 and int(stats["switches"][1]) >= 1
    reference = reference_solution(problem, times)
    assert _scaled_error(solution.ys, reference, 1e-3, 1e-6) < 1


def test_auto_switches_back_and_forth_on_van_der_pol():
    problem = van_der_pol(100.0, t_end=300.0)
    solution = neurode.solve(
        problem.func, problem.y0, _times(0.0, 300.0), method="auto", rtol=1e-6, atol=1e-9
    )
    stats = solution.stats
    assert stats["switches"] >= 3
    assert stats["explicit_steps"] > 0 and stats["implicit_steps"] > 0
    assert stats["explicit_steps"] + stats["implicit_steps"] == stats["steps"]


def test_auto_stays_explicit_on_a_non_stiff_problem():
    func, exact = _smooth_problem()
    solution = neurode.solve(func, exact(0.0), _times(0.0, 5.0), method="auto", rtol=1e-6)
    assert solution.stats["implicit_steps"] == 0 and solution.stats["switches"] == 0


# ----------------------------------------------------------------------- warnings, errors
@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "fehlberg2"])
def test_explicit_methods_warn_early_on_stiff_problems(method):
    problem = robertson()
    with (
        pytest.warns(StiffnessWarning, match="stability limit at t=") as record,
        pytest.raises(SolverError),
    ):
        neurode.solve(
            problem.func,
            problem.y0,
            _times(0.0, 4e5),
            method=method,
            rtol=1e-4,
            atol=1e-10,
            options={"max_num_steps": 1500},
        )
    assert len([w for w in record if w.category is StiffnessWarning]) == 1
    assert "method='auto'" in str(record[0].message)


def test_no_stiffness_warning_on_non_stiff_problems():
    func, exact = _smooth_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", StiffnessWarning)
        # Loose and tight tolerances; the low orders' tight runs take ~1e4 steps at 1e-6.
        for method, tight in (
            ("dopri5", 1e-8),
            ("tsit5", 1e-8),
            ("dopri8", 1e-8),
            ("bosh3", 1e-6),
            ("adaptive_heun", 1e-6),
        ):
            for rtol in (1e-3, tight):
                neurode.solve(func, exact(0.0), _times(0.0, 20.0), method=method, rtol=rtol)


def test_nan_in_func_is_a_typed_error_naming_the_time():
    def func(t, y):
        value = -100.0 * (y - torch.cos(t))
        return torch.where(t > 0.5, torch.full_like(value, float("nan")), value)

    for method, options in (("kvaerno5", {}), ("rodas5p", {}), ("trbdf2", {"step_size": 0.01})):
        with pytest.raises(NonFiniteStateError, match="t=0.5") as error:
            neurode.solve(
                func, torch.ones(2, dtype=F64), _times(0.0, 1.0), method=method, options=options
            )
        assert error.value.t == pytest.approx(0.5, abs=0.01)


def test_fixed_grid_newton_failure_is_a_solver_error():
    problem = robertson()
    with pytest.raises(SolverError, match="did not converge"):
        neurode.odeint(
            problem.func,
            problem.y0,
            _times(0.0, 1.0),
            method="radauIIA5",
            options={"step_size": 0.05},
        )


def test_bad_options_are_rejected_before_work():
    problem = robertson()
    times = _times(0.0, 1.0)
    with pytest.raises(InvalidOptionError, match="linear_solver"):
        neurode.solve(
            problem.func, problem.y0, times, method="kvaerno5", options={"linear_solver": "qr"}
        )
    with pytest.raises(InvalidOptionError, match="Rosenbrock"):
        neurode.solve(
            problem.func, problem.y0, times, method="rodas5p", options={"linear_solver": "krylov"}
        )
    with pytest.raises(InvalidOptionError, match="jacobian"):
        neurode.solve(problem.func, problem.y0, times, method="kvaerno5", options={"jacobian": 3})
    with pytest.raises(UnknownOptionError):
        neurode.solve(
            problem.func, problem.y0, times, method="kvaerno5", options={"autonomous": True}
        )
    with pytest.raises(InvalidOptionError, match="stiff_method"):
        neurode.solve(problem.func, problem.y0, times, method="auto", options={"stiff_method": "x"})


# ----------------------------------------------------------------------- torchdiffeq semantics
@pytest.mark.parametrize("method", ["implicit_euler", "gl4", "radauIIA5", "trbdf2"])
def test_fixed_implicit_gradients_in_the_time_grid_are_those_of_the_computed_output(method):
    # t requiring grad makes the grid differentiable (0-dim tensor steps): not per-row steps.
    a = torch.tensor(0.2, dtype=F64)

    def func(t, y):
        return a + (y - (a * t + 3.0)) ** 3

    t = torch.linspace(1.0, 3.0, 5, dtype=F64, requires_grad=True)
    y0 = torch.tensor(3.2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda y0, t: neurode.odeint(func, y0, t, method=method), (y0, t)
    )


@pytest.mark.parametrize("method", ["implicit_euler", "gl4", "sdirk2"])
@pytest.mark.parametrize("perturb", [True, False])
def test_perturb_keeps_every_evaluation_off_the_grid_points(method, perturb):
    times_seen = []

    def func(t, x):
        times_seen.append(float(t))
        return -x

    neurode.odeint(
        func,
        torch.tensor([1.0, 2.0], dtype=F64),
        _times(0.0, 1.0),
        method=method,
        options={"step_size": 0.5, "perturb": perturb},
    )
    on_grid = {0.0, 0.5} & set(times_seen)
    assert on_grid == (set() if perturb else {0.0, 0.5})


@pytest.mark.parametrize("method", ["implicit_euler", "trapezoid"])
def test_float32_scalar_state_on_a_differentiable_float64_grid_stays_float32(method):
    t = torch.linspace(1.0, 2.0, 5, dtype=F64, requires_grad=True)
    y0 = torch.tensor(1.0, requires_grad=True)
    ys = neurode.odeint(lambda t, y: -0.1 * y, y0, t, method=method)
    assert ys.dtype == torch.float32 and ys.shape == (5,)
    exact = torch.exp(-0.1 * (t.detach() - 1.0)).float()
    torch.testing.assert_close(ys.detach(), exact, rtol=1e-2, atol=0)
    ys.sum().backward()
    assert y0.grad is not None and t.grad is not None


@pytest.mark.parametrize("method", ["implicit_euler", "gl4"])
def test_perturb_keeps_the_adjoint_evaluations_off_the_grid_points(method):
    times_seen = []

    def func(t, x):
        times_seen.append(float(t))
        return -x

    x0 = torch.tensor([1.0, 2.0], dtype=F64, requires_grad=True)
    ys = neurode.odeint_adjoint(
        func,
        x0,
        _times(0.0, 1.0),
        method=method,
        options={"step_size": 0.5, "perturb": True},
        adjoint_params=(),
    )
    times_seen.clear()
    ys.sum().backward()
    assert times_seen and not {0.0, 0.5, 1.0} & set(times_seen)
