"""The pieces under the implicit steps: Newton, Jacobians, linear solves, the Jacobian cache.

Newton converges quadratically with the exact Jacobian at each iterate and
linearly with a frozen one, stops early when it cannot converge, and reports a
non-finite ``f`` as not converged; GMRES agrees with LU; per-row mode gives
each row what a solve of that row alone gives; float32 works; the cache
follows the reuse policy.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from _implicit_drivers import take_step
from neurode.data.stiff_problems import robertson, van_der_pol
from neurode.errors import ShapeMismatchError
from neurode.solvers.dirk import dirk_step
from neurode.solvers.fully_implicit import coefficient_matrix, fully_implicit_step
from neurode.solvers.jacobian import dense_jacobian, jacobian_vector_product, user_jacobian
from neurode.solvers.jacobian_cache import JacobianCache
from neurode.solvers.linear_solve import (
    BlockIterationMatrix,
    DenseIterationMatrix,
    KrylovIterationMatrix,
    KrylovSettings,
    gmres,
)
from neurode.solvers.newton import newton_tolerance, scaled_rms_norm, simplified_newton
from neurode.solvers.rosenbrock import rosenbrock_step, time_derivative
from neurode.solvers.tableaus.stiff import IMPLICIT_TABLEAUS, ROSENBROCK_TABLEAUS

F64 = torch.float64


def _cubic(t, y):
    """A small nonlinear system: ``y₁' = −y₁³ + y₂``, ``y₂' = −y₂ − y₁ y₂²``."""
    y1, y2 = y.unbind(-1)
    return torch.stack([-(y1**3) + y2, -y2 - y1 * y2 * y2], dim=-1)


def _implicit_euler_stage(solve, *, kappa=1e-15, max_iterations=30, h=0.5, y0=(1.0, 0.5)):
    """Solve ``z = h f(y0 + z)`` recording the increment norms."""
    y0 = torch.tensor(y0, dtype=F64)
    sizes = []

    def norm(dz):
        size = dz.square().mean().sqrt()
        sizes.append(float(size))
        return size

    result = simplified_newton(
        lambda z: h * _cubic(0.0, y0 + z) - z,
        lambda r, z: solve(r, y0 + z, h),
        torch.zeros(2, dtype=F64),
        norm,
        kappa=kappa,
        max_iterations=max_iterations,
    )
    return result, sizes


def _exact_solve(r, y, h):
    jacobian = dense_jacobian(_cubic, 0.0, y, per_row=False)
    return torch.linalg.solve(torch.eye(2, dtype=F64) - h * jacobian, r)


@functools.cache
def _start_jacobian() -> torch.Tensor:
    """``J`` at the start point ``(1, 0.5)``, frozen for the simplified iterations."""
    return dense_jacobian(_cubic, 0.0, torch.tensor([1.0, 0.5], dtype=F64), per_row=False)


def _frozen_solve(r, y, h):
    return torch.linalg.solve(torch.eye(2, dtype=F64) - h * _start_jacobian(), r)


# --- Newton ------------------------------------------------------------------------------
def test_newton_with_the_exact_jacobian_converges_quadratically():
    result, sizes = _implicit_euler_stage(_exact_solve)
    assert bool(result.converged) and int(result.iterations) <= 6
    # ‖ΔZ^{k+1}‖ ≤ C ‖ΔZ^k‖² with a C of order one, until rounding.
    ratios = [sizes[k + 1] / sizes[k] ** 2 for k in range(len(sizes) - 1) if sizes[k] > 1e-7]
    assert len(ratios) >= 3
    assert max(ratios) < 1.0
    assert sizes[-2] < 1e-7 and sizes[-1] < 1e-14


def test_newton_with_a_frozen_jacobian_converges_linearly_at_its_rate():
    result, sizes = _implicit_euler_stage(_frozen_solve)
    assert bool(result.converged) and int(result.iterations) > 10
    contractions = [sizes[k + 1] / sizes[k] for k in range(2, len(sizes) - 1)]
    # A constant rate θ (here ≈ 0.18), reported as the solve's rate.
    assert min(contractions) > 0.1 and max(contractions) < 0.3
    assert max(contractions) / min(contractions) < 1.1
    assert float(result.rate) == pytest.approx(max(contractions), rel=1e-12)
    assert float(result.eta) == pytest.approx(contractions[-1] / (1 - contractions[-1]), rel=1e-9)


def test_newton_stops_once_the_predicted_error_is_below_kappa():
    # η_k ‖ΔZ^k‖ ≤ κ with η_k = θ_k / (1 − θ_k): with κ = 1e-6 it stops long before rounding.
    result, sizes = _implicit_euler_stage(_frozen_solve, kappa=1e-6)
    theta = sizes[-1] / sizes[-2]
    assert bool(result.converged)
    assert theta / (1 - theta) * sizes[-1] <= 1e-6
    theta_before = sizes[-2] / sizes[-3]
    assert theta_before / (1 - theta_before) * sizes[-2] > 1e-6
    exact, _ = _implicit_euler_stage(_exact_solve)
    assert float((result.z - exact.z).abs().max()) < 1e-6


def test_newton_gives_up_early_when_the_rate_cannot_reach_the_tolerance():
    # h = 20 with the Jacobian of the start point: θ ≈ 0.9, far too slow for 10 iterations.
    result, sizes = _implicit_euler_stage(
        lambda r, y, h: torch.linalg.solve(torch.eye(2, dtype=F64) - h * _start_jacobian(), r),
        kappa=1e-2,
        max_iterations=10,
        h=20.0,
    )
    assert not bool(result.converged)
    assert len(sizes) < 10


def test_newton_detects_divergence():
    # An iteration matrix of the wrong sign: increments grow, θ ≥ 1 at once.
    result, sizes = _implicit_euler_stage(
        lambda r, y, h: torch.linalg.solve(torch.eye(2, dtype=F64) + h * _start_jacobian(), r),
        h=2.0,
    )
    assert not bool(result.converged)
    assert len(sizes) == 2 and sizes[1] >= sizes[0]


def test_newton_reports_a_nan_from_func_as_not_converged():
    y0 = torch.tensor([1.0, 0.5], dtype=F64)
    result = simplified_newton(
        lambda z: torch.full_like(z, float("nan")),
        lambda r, z: r,
        torch.zeros(2, dtype=F64),
        lambda dz: dz.square().mean().sqrt(),
        kappa=0.01,
    )
    assert not bool(result.converged)
    assert int(result.iterations) == 0
    assert torch.equal(result.z, torch.zeros_like(y0))


def test_newton_first_iteration_uses_the_previous_rate():
    # With a small η from the previous solve, one small increment is enough to stop.
    def solve_with(eta):
        return simplified_newton(
            lambda z: 0.05 - z,
            lambda r, z: r,
            torch.zeros((), dtype=F64),
            lambda dz: dz.abs(),
            kappa=0.01,
            eta=eta,
        )

    assert int(solve_with(1e-4).iterations) == 1  # η_0 = 1e-4^0.8 ≈ 6e-4: 0.05 η_0 ≤ κ
    assert int(solve_with(None).iterations) == 2  # η_0 = 1: 0.05 > κ, one more


def test_newton_tolerance():
    assert newton_tolerance(1e-6, F64) == 0.01
    assert newton_tolerance(1e-16, F64) == pytest.approx(10 * torch.finfo(F64).eps / 1e-16)


def test_scaled_rms_norm_joint_and_per_row():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=F64)
    scale = torch.tensor([[1.0, 2.0], [1.0, 1.0]], dtype=F64)
    assert float(scaled_rms_norm(x, scale, per_row=False)) == pytest.approx(math.sqrt(17 / 4))
    torch.testing.assert_close(
        scaled_rms_norm(x, scale, per_row=True),
        torch.tensor([math.sqrt(13 / 2), math.sqrt(2.0)], dtype=F64),
    )


# --- Jacobians ---------------------------------------------------------------------------
_RATES = torch.tensor([[0.04, 3e7, 1e4], [0.05, 1e7, 2e4], [0.03, 5e7, 1e3]], dtype=F64)


def _robertson_state() -> torch.Tensor:
    """States on the slow manifold of each rate set: ``y₂`` solves ``k₁y₁ = k₂y₂² + k₃y₂y₃``.

    Off it, ``y₂`` relaxes on a time scale of ``1/(2k₂y₂) ≈ 10⁻³``, and the steps used
    here would be too long for Newton from the start point.
    """
    y1 = torch.tensor([0.9, 0.7, 0.99], dtype=F64)
    y3 = 1.0 - y1
    k1, k2, k3 = _RATES.unbind(-1)
    b = k3 * y3
    y2 = (-b + torch.sqrt(b * b + 4 * k2 * k1 * y1)) / (2 * k2)
    return torch.stack([y1 - y2, y2, y3], dim=-1)


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_per_row_jacobian_is_each_rows_own(method):
    problem = robertson(_RATES)
    y, t = _robertson_state(), torch.zeros(3, dtype=F64)
    jacobian = dense_jacobian(problem.func, t, y, per_row=True, method=method)
    torch.testing.assert_close(jacobian, problem.jacobian(t, y), rtol=1e-14, atol=0)


@pytest.mark.parametrize("method", ["reverse", "forward"])
def test_joint_jacobian_of_a_batch_is_block_diagonal(method):
    problem = robertson(_RATES)
    y = _robertson_state()
    jacobian = dense_jacobian(problem.func, 0.0, y, per_row=False, method=method)
    torch.testing.assert_close(
        jacobian, torch.block_diag(*problem.jacobian(0.0, y)), rtol=1e-14, atol=0
    )


def test_jacobian_vector_product_matches_the_dense_jacobian():
    problem = van_der_pol(torch.tensor([10.0, 1000.0], dtype=F64))
    y = torch.tensor([[1.5, -0.3], [-2.0, 0.7]], dtype=F64)
    v = torch.tensor([[0.2, -1.0], [3.0, 0.5]], dtype=F64)
    jv = jacobian_vector_product(problem.func, 0.0, y, v)
    torch.testing.assert_close(jv, torch.einsum("bij,bj->bi", problem.jacobian(0.0, y), v))


def test_user_jacobian_shape_is_checked():
    problem = robertson()
    y = problem.y0
    with pytest.raises(ShapeMismatchError, match=r"\(3, 3\)"):
        user_jacobian(lambda t, y: torch.zeros(3, dtype=F64), 0.0, y, per_row=False)
    with pytest.raises(ShapeMismatchError, match=r"\(2, 3, 3\)"):
        user_jacobian(lambda t, y: torch.zeros(3, 3), 0.0, y.expand(2, 3), per_row=True)
    cast = user_jacobian(lambda t, y: problem.jacobian(t, y).float(), 0.0, y, per_row=False)
    assert cast.dtype == F64


def test_unknown_jacobian_method_is_rejected_before_any_work():
    with pytest.raises(ValueError, match="reverse"):
        dense_jacobian(_cubic, 0.0, torch.ones(2, dtype=F64), per_row=False, method="central")
    with pytest.raises(ValueError, match="reverse"):
        JacobianCache(_cubic, method="central")
    with pytest.raises(ValueError, match="recompute_rate"):
        JacobianCache(_cubic, recompute_rate=float("nan"))


# --- linear solves -----------------------------------------------------------------------
def _well_conditioned(systems: int, n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(systems, n, n, generator=generator, dtype=F64)
    a = torch.eye(n, dtype=F64) + 0.3 * noise / math.sqrt(n)
    b = torch.randn(systems, n, generator=generator, dtype=F64)
    return a, b


def test_gmres_matches_lu_on_well_conditioned_systems():
    a, b = _well_conditioned(4, 30)
    result = gmres(lambda v: torch.einsum("sij,sj->si", a, v), b, rtol=1e-12, restart=40)
    assert bool(result.converged.all())
    assert int(result.iterations.max()) <= 30
    torch.testing.assert_close(result.x, torch.linalg.solve(a, b), rtol=1e-10, atol=1e-10)
    true_residual = torch.linalg.vector_norm(b - torch.einsum("sij,sj->si", a, result.x), dim=1)
    torch.testing.assert_close(result.residual_norm, true_residual, rtol=0.1, atol=1e-13)


def test_restarted_gmres_reaches_the_tolerance():
    a, b = _well_conditioned(3, 40, seed=1)
    result = gmres(
        lambda v: torch.einsum("sij,sj->si", a, v), b, rtol=1e-10, restart=5, max_restarts=60
    )
    assert bool(result.converged.all())
    residual = torch.linalg.vector_norm(b - torch.einsum("sij,sj->si", a, result.x), dim=1)
    assert bool((residual <= 1.01e-10 * torch.linalg.vector_norm(b, dim=1)).all())


def test_gmres_systems_are_independent():
    a, b = _well_conditioned(3, 20, seed=2)
    together = gmres(lambda v: torch.einsum("sij,sj->si", a, v), b, rtol=1e-8, restart=4)
    alone = gmres(lambda v: torch.einsum("sij,sj->si", a[1:2], v), b[1:2], rtol=1e-8, restart=4)
    torch.testing.assert_close(together.x[1:2], alone.x, rtol=1e-12, atol=1e-14)
    assert int(together.iterations[1]) == int(alone.iterations[0])


def test_gmres_edge_cases():
    # A zero right-hand side needs no step; the identity is solved in one (happy breakdown);
    # too few steps report not converged with an honest residual.
    identity = lambda v: v
    zero = gmres(identity, torch.zeros(2, 5, dtype=F64))
    assert bool(zero.converged.all()) and int(zero.iterations.max()) == 0
    b = torch.arange(1.0, 6.0, dtype=F64)[None]
    one = gmres(identity, b)
    assert int(one.iterations[0]) == 1 and torch.allclose(one.x, b)
    a, b = _well_conditioned(1, 30, seed=3)
    short = gmres(lambda v: torch.einsum("sij,sj->si", a, v), b, restart=2, max_restarts=0)
    assert not bool(short.converged[0])
    residual = torch.linalg.vector_norm(b - torch.einsum("sij,sj->si", a, short.x))
    assert float(short.residual_norm[0]) == pytest.approx(float(residual), rel=1e-8)


@pytest.mark.parametrize("per_row", [False, True])
def test_krylov_iteration_matrix_matches_lu(per_row):
    problem = van_der_pol(torch.tensor([5.0, 50.0], dtype=F64))
    y = torch.tensor([[1.5, -0.3], [-2.0, 0.7]], dtype=F64)
    t = torch.zeros(2, dtype=F64) if per_row else 0.0
    h_gamma = torch.tensor([0.01, 0.02], dtype=F64) if per_row else 0.01
    rhs = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=F64)
    jacobian = dense_jacobian(problem.func, t, y, per_row=per_row)
    lu = DenseIterationMatrix(jacobian, h_gamma, per_row=per_row).solve(rhs)
    krylov = KrylovIterationMatrix(
        problem.func, t, y, h_gamma, per_row=per_row, settings=KrylovSettings(rtol=1e-12)
    )
    torch.testing.assert_close(krylov.solve(rhs), lu, rtol=1e-10, atol=1e-12)
    assert krylov.matvecs > 0 and krylov.failures == 0


@pytest.mark.parametrize("per_row", [False, True])
def test_block_iteration_matrix_solves_the_kronecker_system(per_row):
    problem = van_der_pol(torch.tensor([5.0, 50.0], dtype=F64))
    y = torch.tensor([[1.5, -0.3], [-2.0, 0.7]], dtype=F64)
    t = torch.zeros(2, dtype=F64) if per_row else 0.0
    h = torch.tensor([0.01, 0.03], dtype=F64) if per_row else 0.01
    a = coefficient_matrix(IMPLICIT_TABLEAUS["radauIIA5"], y)
    jacobian = dense_jacobian(problem.func, t, y, per_row=per_row)
    generator = torch.Generator().manual_seed(4)
    shape = (2, 3, 2) if per_row else (3, 2, 2)
    rhs = torch.randn(shape, generator=generator, dtype=F64)
    x = BlockIterationMatrix(jacobian, h, a, per_row=per_row).solve(rhs)
    # Check (I − h A⊗J) x = rhs directly, stage by stage.
    if per_row:
        jx = torch.einsum("bpq,bjq->bjp", jacobian, x)
        applied = x - h[:, None, None] * torch.einsum("ij,bjp->bip", a, jx)
    else:
        jx = torch.einsum("pq,jq->jp", jacobian, x.reshape(3, 4)).reshape(3, 2, 2)
        applied = x - h * torch.einsum("ij,j...->i...", a, jx)
    torch.testing.assert_close(applied, rhs, rtol=1e-12, atol=1e-12)
    krylov = KrylovIterationMatrix(
        problem.func, t, y, h, per_row=per_row, a=a, settings=KrylovSettings(rtol=1e-13)
    )
    torch.testing.assert_close(krylov.solve(rhs), x, rtol=1e-10, atol=1e-12)


def test_singular_iteration_matrix_is_flagged():
    jacobian = torch.eye(2, dtype=F64)
    matrix = DenseIterationMatrix(jacobian, 1.0, per_row=False)  # I − J = 0
    assert bool(matrix.singular)
    rows = DenseIterationMatrix(jacobian.expand(2, 2, 2), torch.tensor([1.0, 0.5]), per_row=True)
    assert rows.singular.tolist() == [True, False]


# --- steps in per-row mode, float32, NaN ---------------------------------------------------
def _row_step(name, problem, y, t, h, cache=None, **options):
    tableau = {**IMPLICIT_TABLEAUS, **ROSENBROCK_TABLEAUS}[name]
    per_row = isinstance(h, torch.Tensor)
    cache = cache or JacobianCache(problem.func, per_row=per_row, reuse=False)
    f0 = problem.func(t, y)
    return take_step(tableau, cache, problem.func, t, y, f0, h, rtol=1e-8, atol=1e-12, **options)


@pytest.mark.parametrize("name", ["kvaerno5", "radauIIA5", "rodas5p"])
def test_per_row_step_equals_each_row_solved_alone(name):
    # Each row has its own rate constants and its own step size; stopping is per row too.
    problem = robertson(_RATES)
    y = _robertson_state()
    h = torch.tensor([1e-3, 3e-3, 2e-3], dtype=F64)
    t = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    batch = _row_step(name, problem, y, t, h)
    assert bool(batch.converged.all())
    for row in range(3):
        alone = _row_step(name, problem.row(row), y[row], float(t[row]), float(h[row]))
        torch.testing.assert_close(batch.y1[row], alone.y1, rtol=1e-13, atol=1e-18)
        if alone.error_estimate is not None:
            # The estimate cancels terms far larger than itself; the rows may sum them in
            # another order (one matrix-vector product over the whole batch), so compare
            # to the rounding of those terms: ε Σ_i |u_i|.
            terms = sum(stage.abs().max() for stage in alone.stages)
            torch.testing.assert_close(
                batch.error_estimate[row],
                alone.error_estimate,
                rtol=1e-9,
                atol=16 * torch.finfo(F64).eps * float(terms),
            )
        if alone.newton is not None:
            assert int(batch.newton.iterations[row]) == int(alone.newton.iterations)
        theta = torch.tensor([0.3, 0.6, 0.9], dtype=F64)
        torch.testing.assert_close(
            batch.interpolate(theta)[row], alone.interpolate(float(theta[row])), rtol=1e-12, atol=0
        )


@pytest.mark.parametrize("name", ["kvaerno5", "radauIIA5", "rodas5p"])
def test_a_row_with_a_zero_step_stays_put(name):
    # A per-sample loop may hold finished rows at h = 0; they must neither move nor fail.
    problem = robertson(_RATES)
    y = _robertson_state()
    h = torch.tensor([1e-3, 0.0, 2e-3], dtype=F64)
    step = _row_step(name, problem, y, torch.zeros(3, dtype=F64), h)
    assert bool(step.converged.all())
    assert torch.equal(step.y1[1], y[1])
    if step.error_estimate is not None:
        assert float(step.error_estimate[1].abs().max()) == 0.0
    assert bool(torch.isfinite(step.interpolate(torch.full((3,), 0.5, dtype=F64))).all())


def test_nan_in_one_row_fails_that_row_only():
    problem = robertson(_RATES)
    y = _robertson_state()
    poisoned = lambda t, state: torch.where(
        torch.tensor([False, True, False])[:, None], float("nan"), problem.func(t, state)
    )
    cache = JacobianCache(problem.func, per_row=True)
    t, h = torch.zeros(3, dtype=F64), torch.full((3,), 1e-3, dtype=F64)
    tableau = IMPLICIT_TABLEAUS["kvaerno3"]
    matrix = cache.iteration_matrix(t, y, h * tableau.gamma)
    step = dirk_step(
        tableau, poisoned, t, y, problem.func(t, y), h, matrix, scale=1e-12 + 1e-8 * y, kappa=0.01
    )
    assert step.converged.tolist() == [True, False, True]
    assert bool(torch.isnan(step.y1[1]).all()) and bool(torch.isnan(step.error_estimate[1]).all())
    alone = _row_step("kvaerno3", problem.row(2), y[2], 0.0, 1e-3)
    torch.testing.assert_close(step.y1[2], alone.y1, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", ["kvaerno3", "gl4", "rodas5p"])
def test_nan_from_func_gives_not_converged_not_an_exception(name):
    problem = van_der_pol(10.0)
    nan_field = lambda t, y: torch.full_like(y, float("nan"))
    tableau = {**IMPLICIT_TABLEAUS, **ROSENBROCK_TABLEAUS}[name]
    cache = JacobianCache(problem.func)
    f0 = problem.func(0.0, problem.y0)
    step = take_step(tableau, cache, nan_field, 0.0, problem.y0, f0, 0.01, rtol=1e-6, atol=1e-9)
    assert not bool(step.converged)
    assert bool(torch.isnan(step.y1).all())


def test_nan_jacobian_gives_not_converged():
    problem = van_der_pol(10.0)
    cache = JacobianCache(problem.func, jacobian=lambda t, y: torch.full((2, 2), float("nan")))
    f0 = problem.func(0.0, problem.y0)
    step = take_step(
        IMPLICIT_TABLEAUS["kvaerno5"], cache, problem.func, 0.0, problem.y0, f0, 0.01,
        rtol=1e-6, atol=1e-9,
    )  # fmt: skip
    assert not bool(step.converged)


@pytest.mark.parametrize("name", ["kvaerno5", "radauIIA3", "rodas5p"])
def test_float32_steps(name):
    problem64 = robertson(_RATES)
    problem32 = robertson(_RATES, dtype=torch.float32)
    y = _robertson_state()
    t = torch.zeros(3, dtype=F64)
    h = torch.full((3,), 1e-3, dtype=F64)
    step64 = _row_step(name, problem64, y, t, h)
    tableau = {**IMPLICIT_TABLEAUS, **ROSENBROCK_TABLEAUS}[name]
    cache = JacobianCache(problem32.func, per_row=True, reuse=False)
    y32 = y.float()
    step32 = take_step(
        tableau, cache, problem32.func, t, y32, problem32.func(t, y32), h, rtol=1e-4, atol=1e-7
    )
    assert step32.y1.dtype == torch.float32
    assert bool(step32.converged.all())
    torch.testing.assert_close(step32.y1.double(), step64.y1, rtol=1e-4, atol=1e-8)


def test_krylov_step_matches_the_lu_step():
    problem = robertson(_RATES)
    y, t = _robertson_state(), torch.zeros(3, dtype=F64)
    h = torch.full((3,), 1e-3, dtype=F64)
    lu = _row_step("kvaerno5", problem, y, t, h)
    cache = JacobianCache(problem.func, per_row=True, krylov=KrylovSettings(rtol=1e-10))
    krylov = _row_step("kvaerno5", problem, y, t, h, cache=cache)
    assert bool(krylov.converged.all())
    assert cache.jvp_evaluations > 0 and cache.jacobian_evaluations == 0
    # Both stop at the Newton tolerance κ·(atol + rtol |y|); they agree well within it.
    torch.testing.assert_close(krylov.y1, lu.y1, rtol=1e-9, atol=1e-13)


def test_fully_implicit_step_rejects_a_singular_a():
    trapezoid = IMPLICIT_TABLEAUS["trapezoid"]  # first row of A is zero
    y = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="invertible"):
        fully_implicit_step(
            trapezoid, _cubic, 0.0, y, _cubic(0.0, y), 0.1, None, scale=y, kappa=0.01
        )


def test_dirk_step_rejects_a_fully_implicit_tableau():
    y = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="singly diagonally implicit"):
        dirk_step(IMPLICIT_TABLEAUS["gl4"], _cubic, 0.0, y, _cubic(0.0, y), 0.1, None,
                  scale=y, kappa=0.01)  # fmt: skip


# --- time derivative for Rosenbrock --------------------------------------------------------
def _forced_decay(t, y):
    return -y + torch.sin(3 * torch.as_tensor(t, dtype=F64))[..., None] * y * y


def test_time_derivative_by_forward_difference_and_exactly_per_row():
    y = torch.tensor([[0.5, -1.0], [2.0, 0.1]], dtype=F64)
    t = torch.tensor([0.3, 1.2], dtype=F64)
    exact = 3 * torch.cos(3 * t)[:, None] * y * y
    per_row = time_derivative(_forced_decay, t, y, _forced_decay(t, y), h=t)
    torch.testing.assert_close(per_row, exact, rtol=1e-14, atol=0)
    for row in range(2):
        f0 = _forced_decay(float(t[row]), y[row])
        forward = time_derivative(_forced_decay, float(t[row]), y[row], f0, h=0.1)
        backward = time_derivative(_forced_decay, float(t[row]), y[row], f0, h=-0.1)
        torch.testing.assert_close(forward, exact[row], rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(backward, exact[row], rtol=1e-6, atol=1e-7)


def test_rosenbrock_step_without_time_derivative_is_wrong_for_a_non_autonomous_field():
    # One step of h = 0.05: with ∂f/∂t the local error is O(h⁶) (7e-9 here), without it
    # the order is lost (9e-6); the reference is a fifth-order Radau IIA step (error 3e-10).
    y0, h = torch.tensor([0.5, -1.0], dtype=F64), 0.05
    tableau = ROSENBROCK_TABLEAUS["rodas5p"]
    f0 = _forced_decay(0.0, y0)
    f_t = time_derivative(_forced_decay, torch.tensor(0.0, dtype=F64), y0, f0, h=h)
    errors = []
    reference = take_step(
        IMPLICIT_TABLEAUS["radauIIA5"], JacobianCache(_forced_decay), _forced_decay, 0.0, y0,
        f0, h, rtol=1e-13, atol=1e-15,
    ).y1  # fmt: skip
    for time_term in (f_t, None):
        matrix = JacobianCache(_forced_decay).iteration_matrix(0.0, y0, h * tableau.gamma)
        step = rosenbrock_step(tableau, _forced_decay, 0.0, y0, f0, h, matrix, f_t=time_term)
        errors.append(float((step.y1 - reference).abs().max()))
    assert errors[0] < 1e-7
    assert errors[1] > 1e-6


# --- the Jacobian cache ----------------------------------------------------------------------
def _joint_cache(**options):
    problem = van_der_pol(10.0)
    return problem, JacobianCache(problem.func, **options)


def test_cache_reuses_the_factorisation_while_h_is_unchanged():
    problem, cache = _joint_cache()
    y = problem.y0
    first = cache.iteration_matrix(0.0, y, 0.01)
    assert cache.iteration_matrix(0.0, y, 0.01) is first
    assert (cache.jacobian_evaluations, cache.factorizations) == (1, 1)
    cache.iteration_matrix(0.0, y, 0.02)  # h changed: refactor, same J
    assert (cache.jacobian_evaluations, cache.factorizations) == (1, 2)
    assert cache.current is True


def test_cache_keeps_j_after_a_fast_step_and_recomputes_after_a_slow_one():
    problem, cache = _joint_cache()
    cache.iteration_matrix(0.0, problem.y0, 0.01)
    cache.step_accepted(rate=1e-4)
    y1 = problem.y0 + 0.01
    cache.iteration_matrix(0.01, y1, 0.01)
    assert cache.jacobian_evaluations == 1 and cache.current is False
    assert cache.computed_at == 0.0
    cache.step_accepted(rate=0.2)
    cache.iteration_matrix(0.02, y1 + 0.01, 0.01)
    assert cache.jacobian_evaluations == 2 and cache.current is True
    assert cache.computed_at == 0.02
    torch.testing.assert_close(cache.jacobian, problem.jacobian(0.02, y1 + 0.01))


def test_cache_after_newton_failure_and_error_rejection():
    problem, cache = _joint_cache()
    cache.iteration_matrix(0.0, problem.y0, 0.01)
    cache.newton_failed()  # J is current: only h can help
    cache.iteration_matrix(0.0, problem.y0, 0.005)
    assert (cache.jacobian_evaluations, cache.factorizations) == (1, 2)
    cache.step_rejected()  # same start point: keep J, refactor for the new h
    cache.iteration_matrix(0.0, problem.y0, 0.002)
    assert (cache.jacobian_evaluations, cache.factorizations) == (1, 3)
    cache.step_accepted(rate=0.0)
    cache.iteration_matrix(0.002, problem.y0 + 0.01, 0.002)
    assert cache.jacobian_evaluations == 1
    cache.newton_failed()  # J is old: recompute at the retry
    cache.iteration_matrix(0.002, problem.y0 + 0.01, 0.001)
    assert cache.jacobian_evaluations == 2 and cache.current is True


def test_cache_without_reuse_recomputes_every_step():
    problem, cache = _joint_cache(reuse=False)
    for n in range(3):
        cache.iteration_matrix(0.01 * n, problem.y0 + 0.01 * n, 0.01)
        cache.step_accepted(rate=0.0)
    assert cache.jacobian_evaluations == 3


def test_cache_with_a_user_jacobian_never_differentiates_func():
    problem = robertson()

    def opaque(t, y):  # .tolist() breaks torch.func transforms
        y1, y2, y3 = y.tolist()
        return problem.func(t, torch.tensor([y1, y2, y3], dtype=F64))

    cache = JacobianCache(opaque, jacobian=problem.jacobian)
    cache.iteration_matrix(0.0, problem.y0, 0.01)
    torch.testing.assert_close(cache.jacobian, problem.jacobian(0.0, problem.y0))
    with pytest.raises(ValueError, match="exclude"):
        JacobianCache(opaque, jacobian=problem.jacobian, krylov=KrylovSettings())


def test_per_row_cache_recomputes_for_all_rows_when_one_row_needs_it():
    problem = robertson(_RATES)
    y, t = _robertson_state(), torch.zeros(3, dtype=F64)
    cache = JacobianCache(problem.func, per_row=True)
    h_gamma = torch.full((3,), 1e-3, dtype=F64)
    cache.iteration_matrix(t, y, h_gamma)
    # Rows 0 and 2 accepted, row 2 slowly; row 1 rejected.
    cache.step_accepted(rate=torch.tensor([1e-5, 0.5, 0.2]), rows=torch.tensor([True, False, True]))
    assert cache.current.tolist() == [False, True, False]
    y_next = y * 1.01
    cache.iteration_matrix(t + 1e-3, y_next, h_gamma)
    assert cache.jacobian_evaluations == 2
    assert cache.current.tolist() == [True, True, True]
    torch.testing.assert_close(cache.jacobian, problem.jacobian(t, y_next))
    # A new hγ for one row refactors; the same hγ reuses.
    before = cache.factorizations
    cache.iteration_matrix(t, y_next, h_gamma)
    assert cache.factorizations == before
    cache.iteration_matrix(t, y_next, torch.tensor([1e-3, 5e-4, 1e-3], dtype=F64))
    assert cache.factorizations == before + 1
    # A Newton failure in a row whose J is current changes nothing.
    cache.newton_failed(rows=torch.tensor([False, True, False]))
    cache.iteration_matrix(t, y_next, h_gamma)
    assert cache.jacobian_evaluations == 2


def test_krylov_cache_moves_its_linearisation_point_every_step():
    problem, cache = _joint_cache(krylov=KrylovSettings())
    cache.iteration_matrix(0.0, problem.y0, 0.01).solve(torch.ones(2, dtype=F64))
    cache.step_accepted(rate=0.0)
    cache.iteration_matrix(0.01, problem.y0 + 0.1, 0.01)
    assert cache.computed_at == 0.01
    assert cache.jacobian_evaluations == 0 and cache.factorizations == 0
    assert cache.jvp_evaluations > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["kvaerno5", "radauIIA5", "rodas5p"])
def test_per_row_step_on_cuda_matches_cpu(name):
    problem = robertson(_RATES)
    y = _robertson_state()
    t = torch.zeros(3, dtype=F64)
    h = torch.tensor([1e-3, 3e-3, 2e-3], dtype=F64)
    cpu = _row_step(name, problem, y, t, h)
    device = torch.device("cuda")
    rates = _RATES.to(device)
    k1, k2, k3 = rates.unbind(-1)

    def field(time, state):
        y1, y2, y3 = state.unbind(-1)
        return torch.stack(
            [-k1 * y1 + k3 * y2 * y3, k1 * y1 - k2 * y2 * y2 - k3 * y2 * y3, k2 * y2 * y2], dim=-1
        )

    tableau = {**IMPLICIT_TABLEAUS, **ROSENBROCK_TABLEAUS}[name]
    cache = JacobianCache(field, per_row=True, reuse=False)
    y_gpu, t_gpu, h_gpu = y.to(device), t.to(device), h.to(device)
    gpu = take_step(
        tableau, cache, field, t_gpu, y_gpu, field(t_gpu, y_gpu), h_gpu, rtol=1e-8, atol=1e-12
    )
    assert bool(gpu.converged.all())
    torch.testing.assert_close(gpu.y1.cpu(), cpu.y1, rtol=1e-12, atol=1e-18)
    theta = torch.full((3,), 0.5, dtype=F64, device=device)
    torch.testing.assert_close(gpu.interpolate(theta).cpu(), cpu.interpolate(theta.cpu()))
