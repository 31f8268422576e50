r"""Gradients through implicit stage equations by the implicit function theorem.

An implicit step solves its stage equations by Newton's method; backpropagating
through the iterations would differentiate an approximation of an
approximation and store every iterate. Instead the converged stages are
differentiated through the equations they satisfy. For a diagonally implicit
stage

.. math::

    Z = hγ\, f(t_i, ψ + Z; θ)  \quad\Longrightarrow\quad
    (I − hγJ)\, dZ = hγ\,(J\,dψ + f_θ\,dθ),\qquad J = ∂f/∂y(t_i, ψ + Z),

so with ``u = hγ f(t_i, ψ + Z*; θ)`` evaluated once more *with* a graph (``Z*``
held constant) the stage is ``Z = M(u)`` for the linear map with
``∂Z/∂u = (I − hγJ)^{-1}``: its backward is one solve with the transposed
iteration matrix, ``λ = (I − hγJ)^{-T} \bar Z``, and autograd carries ``λ``
through ``u`` to ``ψ`` (hence to earlier stages and ``y_n``) and to ``θ``.
For a fully implicit method the same holds for all stages at once with the
block matrix ``I − h (A ⊗ I) diag(J_1, …, J_s)``.

The Jacobian in the backward pass is taken at the converged stage value, not the
(possibly old) one that served the Newton iteration: the gradient is then that
of the exact solution of the stage equations, so it equals the derivative of
the discrete solve up to the Newton tolerance. Matrix-free solves (``krylov``)
use GMRES on products ``Jᵀ v`` instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..solvers.jacobian import (
    dense_from_blocks,
    dense_jacobian,
    is_row_blocks,
    joint_jacobian,
    user_jacobian,
)
from ..solvers.linear_solve import KrylovSettings, gmres


class _ConvergedStages(torch.autograd.Function):
    """``(u, Z*) ↦ Z*`` with ``∂Z/∂u = (I − hγJ)^{-1}`` (see the module notes)."""

    @staticmethod
    def forward(ctx, value, solution, transpose_solve):
        ctx.transpose_solve = transpose_solve
        return solution.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.transpose_solve(grad), None, None


def attach_stage_gradient(
    value: torch.Tensor, solution: torch.Tensor, transpose_solve: Callable
) -> torch.Tensor:
    """``solution`` (detached), differentiable through ``value`` by the implicit function theorem.

    ``value`` is the right-hand side of the stage equation at the converged
    stages, computed with a graph; ``transpose_solve(g)`` returns ``M^{-T} g`` for
    the iteration matrix ``M`` at the converged stages.
    """
    return _ConvergedStages.apply(value, solution.detach(), transpose_solve)


class StageJacobian:
    """The Jacobian of the vector field at given points, for the backward solves.

    ``dense(t, y)`` returns ``(N, N)`` (joint) or ``(B, d, d)`` (per row), from
    the user's ``jacobian`` when there is one, else from ``torch.func``.
    ``krylov`` switches the transposed solves to GMRES on vector–Jacobian products.
    """

    def __init__(
        self,
        func: Callable,
        *,
        per_row: bool,
        user_jacobian: Callable | None,
        method: str,
        krylov: KrylovSettings | None,
    ):
        self.func = func
        self.per_row = per_row
        self.user_jacobian = user_jacobian
        self.method = method
        self.krylov = krylov
        self.evaluations = 0
        self._row_blocks: bool | None = None

    def dense(self, t, y: torch.Tensor) -> torch.Tensor:
        self.evaluations += 1
        with torch.no_grad():
            if self.user_jacobian is not None:
                return user_jacobian(self.user_jacobian, t, y.detach(), per_row=self.per_row)
        y = y.detach()
        if self.per_row:
            return dense_jacobian(self.func, t, y, per_row=True, method=self.method)
        # Joint mode: row blocks if the rows are independent (decided at the first one).
        jacobian, self._row_blocks = joint_jacobian(
            self.func, t, y, method=self.method, row_blocks=self._row_blocks
        )
        return jacobian

    def vjp(self, t, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """``v ↦ Jᵀ v`` at ``(t, y)`` (per row: each row's own)."""
        y = y.detach()
        _, pullback = torch.func.vjp(lambda state: _as(self.func(t, state), y), y)
        return lambda v: pullback(v.to(y.dtype))[0]


def _without_row_blocks(jacobian: torch.Tensor, per_row: bool) -> torch.Tensor:
    """The stage system's Kronecker products need the joint matrix whole."""
    return dense_from_blocks(jacobian) if is_row_blocks(jacobian, per_row) else jacobian


def _as(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return output if output.dtype == like.dtype else output.to(like.dtype)


def _row_factor(value, like: torch.Tensor, trailing: int):
    if isinstance(value, torch.Tensor):
        return value.to(like.dtype).reshape((-1,) + (1,) * trailing)
    return value


def diagonal_transpose_solve(
    jacobians: StageJacobian, t, stage_value: torch.Tensor, h_gamma
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g ↦ (I − hγJ)^{-T} g`` with ``J`` at ``(t, stage_value)``, computed when called."""
    per_row = jacobians.per_row
    point = stage_value.detach()

    def solve(grad: torch.Tensor) -> torch.Tensor:
        if jacobians.krylov is not None:
            return _gmres_transpose(jacobians, t, point, h_gamma, grad, 1, None)
        jacobian = jacobians.dense(t, point)
        n = jacobian.shape[-1]
        identity = torch.eye(n, dtype=jacobian.dtype, device=jacobian.device)
        matrix = identity - _row_factor(h_gamma, jacobian, 2) * jacobian
        if per_row or is_row_blocks(jacobian, per_row):
            columns = grad.reshape(jacobian.shape[0], n, 1).to(matrix.dtype)
        else:
            columns = grad.reshape(n, 1).to(matrix.dtype)
        return torch.linalg.solve(matrix.mT, columns).reshape(grad.shape).to(grad.dtype)

    return solve


def block_transpose_solve(
    jacobians: StageJacobian,
    times: list,
    stage_values: torch.Tensor,
    h,
    a: torch.Tensor,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``g ↦ (I − h (A ⊗ I) diag(J_1 … J_s))^{-T} g``, ``J_j`` at stage ``j``'s value.

    ``stage_values`` is laid out as the fully implicit step's unknowns:
    ``(s, *shape)`` jointly, ``(B, s, *row_shape)`` per row.
    """
    per_row = jacobians.per_row
    points = stage_values.detach()
    s = a.shape[0]
    stage_dim = 1 if per_row else 0

    def solve(grad: torch.Tensor) -> torch.Tensor:
        a_local = a.to(grad.dtype)
        if jacobians.krylov is not None:
            return _gmres_transpose(jacobians, times, points, h, grad, s, a_local)
        blocks = [
            _without_row_blocks(jacobians.dense(times[j], points.select(stage_dim, j)), per_row)
            for j in range(s)
        ]  # each (N, N) or (B, d, d)
        n = blocks[0].shape[-1]
        stacked = torch.stack(blocks, dim=-3)  # (s, N, N) or (B, s, d, d)
        # M[i, j] = δ_ij I − h a_ij J_j  →  (.., s, n, s, n)
        products = torch.einsum("ij,...jpq->...ipjq", a_local, stacked)
        factor = _row_factor(h, products, 4)
        identity = torch.eye(s * n, dtype=grad.dtype, device=grad.device)
        matrix = identity - (factor * products).reshape(*products.shape[:-4], s * n, s * n)
        columns = grad.reshape(grad.shape[0], s * n, 1) if per_row else grad.reshape(s * n, 1)
        return torch.linalg.solve(matrix.mT, columns).reshape(grad.shape)

    return solve


def _gmres_transpose(jacobians, t, points, h, grad, stages, a):
    """GMRES on ``Mᵀ λ = g`` with ``Jᵀ v`` products (stage by stage for a block system)."""
    per_row = jacobians.per_row
    systems = grad.shape[0] if per_row else 1
    stage_dim = 1 if per_row else 0
    if stages == 1:
        pullbacks = [jacobians.vjp(t, points)]
        state_shape = points.shape
    else:
        pullbacks = [jacobians.vjp(t[j], points.select(stage_dim, j)) for j in range(stages)]
        state_shape = points.select(stage_dim, 0).shape
    factor = _row_factor(h, grad, 1)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        per_stage = v.reshape(systems, stages, -1)
        if a is not None:
            # (h (A ⊗ I) D)ᵀ v = h D ᵀ (Aᵀ ⊗ I) v
            per_stage = torch.einsum("ji,sjn->sin", a, per_stage)
        products = [
            pullbacks[i](per_stage[:, i].reshape(state_shape)).reshape(systems, -1)
            for i in range(stages)
        ]
        return v - factor * torch.stack(products, dim=1).reshape(systems, -1)

    settings = jacobians.krylov
    result = gmres(
        matvec,
        grad.reshape(systems, -1),
        rtol=min(settings.rtol, 1e-10),
        restart=settings.restart,
        max_restarts=max(settings.max_restarts, 20),
    )
    return result.x.reshape(grad.shape)


__all__ = [
    "StageJacobian",
    "attach_stage_gradient",
    "block_transpose_solve",
    "diagonal_transpose_solve",
]
