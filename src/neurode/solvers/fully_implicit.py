r"""One generic fully implicit Runge–Kutta step (Gauss, Radau IIA), for fixed step sizes.

All ``s`` stages are solved together: with ``Z_i = Y_i − y_0``,

.. math::

    Z_i = h Σ_j a_{ij} f(t + c_j h, y_0 + Z_j), \qquad i = 1 … s,

by :func:`~neurode.solvers.newton.simplified_newton` on the ``sN`` unknowns with
the block iteration matrix ``I − h (A ⊗ J)`` (one LU factorisation of size
``sN``, or matrix-free GMRES). The iterate starts from ``Z_i = c_i h f_0``
(exact for a straight line). Stage derivatives come from the converged stage
equations, ``K = (A⁻¹ ⊗ I) Z / h``, so no further evaluation of ``f`` is
needed; ``A`` must be invertible (true of Gauss and Radau IIA). The new
solution is ``y_0 + h Σ b_i k_i``, the last stage value ``y_0 + Z_s`` for a
stiffly accurate method.

Layout of ``Z``: ``(s, *y.shape)`` in joint mode, ``(B, s, *row_shape)`` in
per-row mode (rows first, as the Newton iteration and the block matrix expect).

Hairer & Wanner's RADAU5 solves the same system through a transformation of
``A`` to its eigenvalues, one real and one complex ``N × N`` system instead of
one of size ``3N``; that is the step to take when these methods go adaptive.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from ._stage_rows import as_state, divide_rows, is_per_row, mask_rows, row_values
from .implicit_step import ImplicitStep, NewtonStats
from .implicit_tableau import ImplicitTableau
from .jacobian import VectorField
from .linear_solve import IterationMatrix
from .newton import DEFAULT_MAX_ITERATIONS, scaled_rms_norm, simplified_newton


@cache
def _inverse(a: tuple[tuple[float, ...], ...]) -> np.ndarray:
    matrix = np.array(a, dtype=np.float64)
    if abs(np.linalg.det(matrix)) < 1e-12:
        raise ValueError("fully_implicit_step needs an invertible coefficient matrix A")
    return np.linalg.inv(matrix)


def coefficient_matrix(tableau: ImplicitTableau, like: torch.Tensor) -> torch.Tensor:
    """The tableau's ``A`` as a tensor, for :meth:`JacobianCache.block_iteration_matrix`."""
    return torch.tensor(tableau.a, dtype=like.dtype, device=like.device)


def fully_implicit_step(
    tableau: ImplicitTableau,
    func: VectorField,
    t: float | torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    h: float | torch.Tensor,
    matrix: IterationMatrix,
    *,
    scale: torch.Tensor,
    kappa: float,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    eta: torch.Tensor | float | None = None,
    grace: int = 0,
) -> ImplicitStep:
    """Advance ``y0`` from ``t`` by ``h``; ``matrix`` is ``I − h (A ⊗ J)`` for this ``h``.

    Arguments as for :func:`~neurode.solvers.dirk.dirk_step`. No error estimate.
    """
    inverse = _inverse(tableau.a)
    per_row = is_per_row(h)
    s = tableau.stages
    a = coefficient_matrix(tableau, y0)
    a_inverse = torch.tensor(inverse, dtype=y0.dtype, device=y0.device)
    c = torch.tensor(tableau.c, dtype=y0.dtype, device=y0.device)
    h_rows = row_values(h, y0)
    stage_dim = 1 if per_row else 0

    def mix(coefficients: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``(coefficients ⊗ I) values`` along the stage dimension."""
        return torch.movedim(
            torch.tensordot(coefficients, torch.movedim(values, stage_dim, 0), dims=1),
            0,
            stage_dim,
        )

    def stage(z: torch.Tensor, i: int) -> torch.Tensor:
        return z.select(stage_dim, i)

    def stack(values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values, dim=stage_dim)

    h_stages = h_rows.unsqueeze(1) if per_row else h_rows  # scales (B, s, ...) or (s, ...)
    times = [t + tableau.c[i] * h for i in range(s)]

    def residual(z: torch.Tensor) -> torch.Tensor:
        values = stack([as_state(func(times[i], y0 + stage(z, i)), y0) for i in range(s)])
        return h_stages * mix(a, values) - z

    if per_row:
        nodes = c.reshape((1, s) + (1,) * (y0.ndim - 1))
    else:
        nodes = c.reshape((s,) + (1,) * y0.ndim)
    z0 = h_stages * nodes * f0.unsqueeze(stage_dim)
    stage_scale = scale.unsqueeze(stage_dim)
    result = simplified_newton(
        residual,
        lambda rhs, z: matrix.solve(rhs),
        z0,
        lambda dz: scaled_rms_norm(dz, stage_scale, per_row=per_row),
        kappa=kappa,
        max_iterations=max_iterations,
        eta=eta,
        grace=grace,
    )
    z = result.z
    derivatives = divide_rows(mix(a_inverse, z), h_stages, f0.unsqueeze(stage_dim).expand_as(z))
    stages = [stage(derivatives, i) for i in range(s)]
    if tableau.stiffly_accurate:
        y1 = y0 + stage(z, s - 1)
    else:
        b = torch.tensor(tableau.b, dtype=y0.dtype, device=y0.device)
        y1 = y0 + h_rows * torch.tensordot(b, torch.movedim(derivatives, stage_dim, 0), dims=1)
    f1 = stages[-1] if tableau.stiffly_accurate and tableau.c[-1] == 1.0 else None
    if not bool(result.converged.all()):
        y1 = mask_rows(y1, result.converged)
    return ImplicitStep(
        y1=y1,
        error_estimate=None,
        f1=f1,
        stages=stages,
        converged=result.converged,
        function_evaluations=s * result.evaluations,
        newton=NewtonStats(result.iterations, result.rate, result.eta),
        y0=y0,
        stage_scale=h_rows,
        dense=tableau.dense,
        finite=result.finite,
    )
