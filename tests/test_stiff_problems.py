"""The stiff test problems: vector fields, Jacobians, scipy references, implicit solves.

Analytic Jacobians are checked against automatic differentiation, scipy's
references against published values (HIRES) and closed forms (the linear
problem), and the implicit steps, run by the elementary adaptive driver of the
tests, against those references.
"""

from __future__ import annotations

import pytest
import torch

from _implicit_drivers import adaptive_solve
from neurode.data.errors import DatasetArgumentError
from neurode.data.stiff_problems import (
    HIRES_END,
    HIRES_REFERENCE,
    hires,
    reference_solution,
    robertson,
    stiff_linear,
    van_der_pol,
)
from neurode.solvers.jacobian import dense_jacobian
from neurode.solvers.tableaus.stiff import IMPLICIT_TABLEAUS, ROSENBROCK_TABLEAUS

F64 = torch.float64


def _autodiff(problem, y):
    return dense_jacobian(problem.func, 0.0, y, per_row=y.ndim == 2)


def test_robertson_conserves_mass_and_has_the_right_jacobian():
    problem = robertson()
    y = torch.tensor([0.8, 3e-5, 0.2 - 3e-5], dtype=F64)
    assert abs(float(problem.func(0.0, y).sum())) < 1e-17
    torch.testing.assert_close(problem.jacobian(0.0, y), _autodiff(problem, y))
    assert problem.t_span == (0.0, 4e5) and problem.rows is None
    assert problem.y0.tolist() == [1.0, 0.0, 0.0]


def test_batched_robertson_rows_are_the_single_problems():
    rates = torch.tensor([[0.04, 3e7, 1e4], [0.1, 1e6, 3e3]], dtype=F64)
    problem = robertson(rates)
    y = torch.tensor([[0.8, 3e-5, 0.2], [0.5, 1e-4, 0.5]], dtype=F64)
    torch.testing.assert_close(problem.jacobian(0.0, y), _autodiff(problem, y))
    for row in range(2):
        alone = robertson(rates[row])
        torch.testing.assert_close(problem.func(0.0, y)[row], alone.func(0.0, y[row]))
        torch.testing.assert_close(problem.row(row).func(0.0, y[row]), alone.func(0.0, y[row]))
    with pytest.raises(DatasetArgumentError, match="row 2"):
        problem.row(2)
    with pytest.raises(DatasetArgumentError, match="not a batched"):
        robertson().row(0)


def test_van_der_pol_jacobian_and_batch():
    mus = torch.tensor([1.0, 1000.0], dtype=F64)
    problem = van_der_pol(mus)
    y = torch.tensor([[1.5, -0.3], [-2.0, 0.7]], dtype=F64)
    torch.testing.assert_close(problem.jacobian(0.0, y), _autodiff(problem, y))
    assert problem.t_span == (0.0, 3000.0) and problem.y0.shape == (2, 2)
    torch.testing.assert_close(problem.row(1).func(0.0, y[1]), van_der_pol(1000.0).func(0.0, y[1]))


def test_hires_jacobian():
    problem = hires()
    y = torch.linspace(0.1, 0.8, 8, dtype=F64)
    torch.testing.assert_close(problem.jacobian(0.0, y), _autodiff(problem, y))
    torch.testing.assert_close(
        problem.jacobian(0.0, y.expand(2, 8)), _autodiff(problem, y.expand(2, 8).clone())
    )


def test_stiff_linear_has_the_requested_eigenvalues_and_solves_its_equation():
    problem = stiff_linear((-1.0, -10.0, -1e4))
    eigenvalues = torch.linalg.eigvals(problem.jacobian(0.0, problem.y0)).real.sort().values
    torch.testing.assert_close(eigenvalues, torch.tensor([-1e4, -10.0, -1.0], dtype=F64))
    torch.testing.assert_close(problem.exact(0.0), problem.y0)
    # d/dt exact(t) = M exact(t), by a central difference at a time where all modes live.
    t, dt = 2e-4, 1e-8
    derivative = (problem.exact(t + dt) - problem.exact(t - dt)) / (2 * dt)
    torch.testing.assert_close(derivative, problem.func(t, problem.exact(t)), rtol=1e-6, atol=1e-6)


def test_invalid_problem_arguments():
    with pytest.raises(DatasetArgumentError, match="shape"):
        robertson([1.0, 2.0])
    with pytest.raises(DatasetArgumentError, match="positive"):
        robertson([0.04, -3e7, 1e4])
    with pytest.raises(DatasetArgumentError, match="positive"):
        van_der_pol(0.0)
    with pytest.raises(DatasetArgumentError, match="three"):
        stiff_linear((-1.0, -2.0))
    with pytest.raises(DatasetArgumentError, match="t_end"):
        robertson(t_end=-1.0)
    with pytest.raises(DatasetArgumentError, match="floating"):
        hires(dtype=torch.int64)


# --- scipy references ------------------------------------------------------------------------
def test_reference_of_the_linear_problem_matches_its_exact_solution():
    pytest.importorskip("scipy")
    problem = stiff_linear()
    times = [0.01, 0.05]
    reference = reference_solution(problem, times, rtol=1e-9, atol=1e-11)
    exact = torch.stack([problem.exact(t) for t in times])
    torch.testing.assert_close(reference, exact, rtol=1e-8, atol=1e-11)


def test_reference_of_a_batch_is_the_rows_solved_one_by_one():
    pytest.importorskip("scipy")
    rates = torch.tensor([[0.04, 3e7, 1e4], [0.1, 1e6, 3e3]], dtype=F64)
    problem = robertson(rates)
    times = [0.5, 1.0]
    batch = reference_solution(problem, times, rtol=1e-7, atol=1e-12)
    assert batch.shape == (2, 2, 3)
    for row in range(2):
        alone = reference_solution(robertson(rates[row]), times, rtol=1e-7, atol=1e-12)
        torch.testing.assert_close(batch[:, row], alone)


def test_reference_rejects_bad_times():
    pytest.importorskip("scipy")
    with pytest.raises(DatasetArgumentError, match="increase"):
        reference_solution(robertson(), [1.0, 0.5])
    with pytest.raises(DatasetArgumentError, match="non-empty"):
        reference_solution(robertson(), [])


@pytest.mark.slow
def test_hires_reference_matches_the_published_values():
    pytest.importorskip("scipy")
    reference = reference_solution(hires(), [HIRES_END], rtol=1e-10)[-1]
    published = torch.tensor(HIRES_REFERENCE, dtype=F64)
    torch.testing.assert_close(reference, published, rtol=1e-9, atol=0)


# --- the implicit steps on the stiff problems ---------------------------------------------------
_METHODS = {"kvaerno5": IMPLICIT_TABLEAUS["kvaerno5"], "rodas5p": ROSENBROCK_TABLEAUS["rodas5p"]}


@pytest.mark.parametrize("name", sorted(_METHODS))
def test_robertson_early_transient(name):
    # The fast initial transient of y₂ (time scale 10⁻³) and the slow decay after it.
    pytest.importorskip("scipy")
    problem = robertson()
    reference = reference_solution(problem, [1.0], rtol=1e-10)[-1]
    y, stats = adaptive_solve(
        _METHODS[name], problem.func, problem.y0, 0.0, 1.0, rtol=1e-7, atol=1e-12
    )
    torch.testing.assert_close(y, reference, rtol=1e-5, atol=1e-11)
    assert abs(float(y.sum()) - 1.0) < 1e-12
    assert stats.accepted < 100, stats


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_METHODS))
def test_robertson_to_four_hundred_thousand(name):
    pytest.importorskip("scipy")
    problem = robertson()
    reference = reference_solution(problem, [4e5], rtol=1e-10)[-1]
    y, stats = adaptive_solve(
        _METHODS[name], problem.func, problem.y0, 0.0, 4e5, rtol=1e-6, atol=1e-10
    )
    torch.testing.assert_close(y, reference, rtol=1e-4, atol=1e-12)
    assert abs(float(y.sum()) - 1.0) < 1e-10
    assert stats.accepted < 300, stats


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_METHODS))
def test_hires_to_the_end(name):
    pytest.importorskip("scipy")
    problem = hires()
    y, _ = adaptive_solve(
        _METHODS[name], problem.func, problem.y0, 0.0, HIRES_END, rtol=1e-7, atol=1e-9
    )
    torch.testing.assert_close(y, torch.tensor(HIRES_REFERENCE, dtype=F64), rtol=1e-4, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_METHODS))
def test_van_der_pol_stiff(name):
    pytest.importorskip("scipy")
    problem = van_der_pol(1000.0, t_end=1000.0)
    reference = reference_solution(problem, [1000.0], rtol=1e-9, atol=1e-9)[-1]
    y, _ = adaptive_solve(
        _METHODS[name], problem.func, problem.y0, 0.0, 1000.0, rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(y, reference, rtol=1e-3, atol=1e-4)
