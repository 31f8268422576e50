"""Joint-mode Jacobians given as (B, d, d) row blocks: the block-diagonal joint matrix,
factored block by block.

Every result is compared with the same solve given the dense ``(Bd, Bd)``
block-diagonal matrix, which the joint mode has always accepted.
"""

from __future__ import annotations

import pytest
import torch

import neurode
from neurode.data.stiff_problems import robertson
from neurode.errors import ShapeMismatchError
from neurode.solvers.jacobian import row_block_jacobian, user_jacobian

F64 = torch.float64


def _sweep(rows: int = 6):
    generator = torch.Generator().manual_seed(3)
    spread = torch.exp(0.5 * torch.randn(rows, 3, generator=generator, dtype=F64))
    return robertson(torch.tensor((0.04, 3e7, 1e4), dtype=F64) * spread, t_end=1e3)


def _dense(problem):
    return lambda t, y: torch.block_diag(*problem.jacobian(t, y).unbind(0))


def _solve(problem, jacobian, method, y0=None, t_end=1e3, **options):
    t = torch.tensor([0.0, 1.0, t_end], dtype=F64)
    options = {"jacobian": jacobian, **options}
    return neurode.solve(
        problem.func,
        problem.y0 if y0 is None else y0,
        t,
        method=method,
        rtol=1e-6,
        atol=1e-10,
        options=options,
    )


@pytest.mark.parametrize("method", ["rodas5p", "kvaerno5", "kvaerno3", "auto"])
def test_row_blocks_give_the_dense_joint_solve(method):
    problem = _sweep()
    with torch.no_grad():
        blocks = _solve(problem, problem.jacobian, method)
        dense = _solve(problem, _dense(problem), method)
    assert blocks.stats["steps"] == dense.stats["steps"]
    assert blocks.stats["nfe"] == dense.stats["nfe"]
    torch.testing.assert_close(blocks.ys, dense.ys, rtol=1e-10, atol=1e-16)


@pytest.mark.parametrize("method", ["rodas5p", "kvaerno5"])
def test_row_block_gradients_equal_the_dense_ones(method):
    # direct: kvaerno5 by the implicit function theorem on its stages, rodas5p through
    # the differentiable factorisation of I − hγJ.
    problem = _sweep(4)
    grads = []
    for jacobian in (problem.jacobian, _dense(problem)):
        y0 = problem.y0.clone().requires_grad_(True)
        solution = _solve(problem, jacobian, method, y0=y0, t_end=10.0)
        (grad,) = torch.autograd.grad(solution.ys[-1][:, 1].sum(), y0)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=1e-18)


def test_row_blocks_on_a_fixed_grid_fully_implicit_method():
    # radauIIA5's stage system couples the stages; with row blocks it is built whole.
    mus = torch.tensor([1.0, 3.0, 8.0], dtype=F64)

    def func(t, y):
        x, v = y.unbind(-1)
        return torch.stack([v, mus * (1 - x**2) * v - x], dim=-1)

    def jacobian(t, y):
        x, v = y.unbind(-1)
        zero = torch.zeros_like(x)
        top = torch.stack([zero, zero + 1], dim=-1)
        bottom = torch.stack([-2 * mus * x * v - 1, mus * (1 - x**2)], dim=-1)
        return torch.stack([top, bottom], dim=-2)

    dense = lambda t, y: torch.block_diag(*jacobian(t, y).unbind(0))
    t = torch.tensor([0.0, 1.0], dtype=F64)
    results = []
    for jac in (jacobian, dense):
        y0 = torch.tensor([[2.0, 0.0]] * 3, dtype=F64, requires_grad=True)
        solution = neurode.solve(
            func, y0, t, method="radauIIA5", options={"jacobian": jac, "step_size": 0.05}
        )
        (grad,) = torch.autograd.grad(solution.ys[-1].sum(), y0)
        results.append((solution.ys[-1].detach(), grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-10, atol=1e-14)


def test_row_blocks_are_accepted_only_for_a_state_with_rows():
    problem = _sweep(2)
    y = problem.y0
    blocks = user_jacobian(problem.jacobian, 0.0, y, per_row=False)
    assert blocks.shape == (2, 3, 3)
    with pytest.raises(ShapeMismatchError, match=r"\(6, 6\) or \(2, 3, 3\)"):
        user_jacobian(lambda t, y: torch.zeros(3, 3, dtype=F64), 0.0, y, per_row=False)
    flat = y.reshape(-1)
    with pytest.raises(ShapeMismatchError, match=r"\(6, 6\)"):
        user_jacobian(lambda t, z: problem.jacobian(t, z.reshape(2, 3)), 0.0, flat, per_row=False)


# --- automatic differentiation: row blocks when the rows are independent ------------------
def _coupled(problem, strength=1e-3):
    """Robertson rows pulled towards their mean: every row depends on every other."""
    return lambda t, y: problem.func(t, y) + strength * (y.mean(0, keepdim=True) - y)


def test_an_expanded_state_is_checked_like_any_other():
    # y0.expand(B, d) (stride 0) once made the check's forward-mode product fail, and
    # the solve fell back to the dense (Bd)² matrix without a word.
    problem = _sweep(4)
    y = torch.tensor([1.0, 2e-5, 1e-3], dtype=F64).expand(4, 3)
    blocks = row_block_jacobian(problem.func, 0.0, y)
    assert blocks is not None
    torch.testing.assert_close(blocks, problem.jacobian(0.0, y), rtol=1e-12, atol=1e-12)


def test_row_block_jacobian_finds_independent_rows_and_refuses_coupled_ones():
    problem = _sweep(5)
    y = problem.y0 + 0.01 * torch.rand(problem.y0.shape, dtype=F64)
    blocks = row_block_jacobian(problem.func, 0.0, y)
    torch.testing.assert_close(blocks, problem.jacobian(0.0, y), rtol=1e-12, atol=1e-12)
    assert row_block_jacobian(_coupled(problem), 0.0, y) is None
    assert row_block_jacobian(problem.func, 0.0, y[:1]) is None  # one row: nothing to gain
    assert row_block_jacobian(lambda t, z: -z, 0.0, torch.ones(6, dtype=F64)) is None


@pytest.mark.parametrize("method", ["rodas5p", "kvaerno5", "auto"])
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_automatic_joint_jacobian_uses_row_blocks_with_the_same_result(method, mode):
    problem = _sweep()
    with torch.no_grad():
        automatic = _solve(problem, mode, method)
        dense = _solve(problem, _dense(problem), method)
    assert automatic.stats["steps"] == dense.stats["steps"]
    torch.testing.assert_close(automatic.ys, dense.ys, rtol=1e-10, atol=1e-16)


def test_coupled_rows_keep_the_dense_jacobian():
    # Row blocks would drop the coupling from J: rodas5p (which needs the exact J) would
    # take other steps. The automatic Jacobian must give the steps of the dense one.
    from scipy.integrate import solve_ivp

    problem = _sweep(4)
    func = _coupled(problem)

    def dense(t, y):
        flat = lambda z: func(t, z.reshape(y.shape)).reshape(-1)
        return torch.autograd.functional.jacobian(flat, y.reshape(-1))

    t = torch.tensor([0.0, 10.0], dtype=F64)
    solutions = [
        neurode.solve(
            func, problem.y0, t, method="rodas5p", rtol=1e-8, atol=1e-12, options={"jacobian": j}
        )
        for j in ("reverse", dense)
    ]
    assert solutions[0].stats["steps"] == solutions[1].stats["steps"]
    torch.testing.assert_close(solutions[0].ys, solutions[1].ys, rtol=1e-10, atol=1e-16)
    flat = lambda s, y: func(s, torch.from_numpy(y).reshape(4, 3)).reshape(-1).numpy()
    reference = solve_ivp(
        flat, (0.0, 10.0), problem.y0.reshape(-1).numpy(), method="Radau", rtol=1e-11, atol=1e-14
    ).y[:, -1]
    error = (solutions[0].ys[-1].reshape(-1) - torch.from_numpy(reference)).abs().max()
    assert float(error) < 1e-8


@pytest.mark.parametrize("method", ["rodas5p", "kvaerno5"])
def test_automatic_row_block_gradients_equal_the_dense_ones(method):
    # Gradients with respect to the rate constants, which the Jacobian depends on.
    rates = torch.tensor(
        [[0.04, 3e7, 1e4], [0.05, 2e7, 2e4], [0.03, 4e7, 8e3], [0.06, 1e7, 1.5e4]], dtype=F64
    )
    grads = []
    for jacobian in ("reverse", "dense"):
        leaf = rates.clone().requires_grad_(True)
        system = robertson(leaf, t_end=10.0)
        dense = lambda t, y, system=system: torch.block_diag(*system.jacobian(t, y).unbind(0))
        option = dense if jacobian == "dense" else jacobian
        solution = _solve(system, option, method, t_end=10.0)
        (grad,) = torch.autograd.grad(solution.ys[-1][:, 0].sum(), leaf)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-9, atol=0.0)
