r"""Simplified Newton iteration for the stage equations of implicit methods.

The stage equations ``G(Z) = 0`` of an implicit step are solved by

.. math::

    M\,ΔZ^k = −G(Z^k) \;(\text{the caller's } \texttt{residual} \text{ returns } −G),
    \qquad Z^{k+1} = Z^k + ΔZ^k,

with a *fixed* iteration matrix ``M`` (``I − hγJ`` with an old Jacobian,
factored once): each iteration is one evaluation of ``f`` per stage and one
back substitution, and convergence is linear with a rate
``θ_k = ‖ΔZ^k‖ / ‖ΔZ^{k−1}‖`` that is small when ``J`` and ``h`` are.

Stopping follows Hairer & Wanner, *Solving ODEs II*, §IV.8: the error left
after iteration ``k`` is about ``η_k ‖ΔZ^k‖`` with ``η_k = θ_k / (1 − θ_k)``,
and the iteration stops when ``η_k ‖ΔZ^k‖ ≤ κ`` in the norm of the local error
test (so ``κ`` is a fraction of the tolerance; :func:`newton_tolerance`). The
first iteration has no rate yet and uses ``η_0 = max(η_old, ε)^0.8`` from the
previous solve. It gives up, reporting not converged, when

- ``θ_k ≥ 1`` (diverging),
- ``θ_k^{k_max − k} / (1 − θ_k) ‖ΔZ^k‖ > κ``: even at this rate the remaining
  iterations would not reach the tolerance (HW (8.13)),
- an increment is not finite (``f`` returned NaN or infinity, or the matrix was
  singular), or ``k_max`` iterations pass.

``grace`` exempts the first iterations from the two rate tests: an augmented
system (sensitivities, adjoints) solved with a block-diagonal matrix corrects
its coupled blocks one iteration behind the block they depend on, so its first
increments may grow before they shrink.

A failed solve is not an exception: the step is rejected and retried with a
smaller step (:mod:`neurode.solvers.jacobian_cache` says what to do with ``J``).

Per row: when the norm returns one value per row (shape ``(B,)``), every row has
its own rate, stopping test and flags, and a row that has stopped is frozen
(its iterate no longer changes), so it ends exactly where it would alone. The
unknowns then carry the rows in their first dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

DEFAULT_MAX_ITERATIONS = 10


@dataclass
class NewtonResult:
    """Outcome of one stage solve; flags and counters have the norm's shape, ``()`` or ``(B,)``."""

    z: torch.Tensor
    converged: torch.Tensor
    iterations: torch.Tensor
    """Iterations each row performed (each one evaluation of ``residual``)."""
    rate: torch.Tensor
    """The largest contraction ``θ_k`` seen; 0 when the first iteration already converged."""
    eta: torch.Tensor
    """``η`` of the last iteration, to seed the next solve's first stopping test."""
    evaluations: int
    """Calls of ``residual`` (each covers every row)."""
    finite: torch.Tensor | None = None
    """False where an increment was NaN or infinite (``f`` left its domain), not just slow."""


def newton_tolerance(rtol: float, dtype: torch.dtype) -> float:
    """``κ`` for the stopping test: ``max(0.01, 10 ε / rtol)``.

    Hairer & Wanner find ``κ`` between 0.01 and 0.1 good (HW II §IV.8): the error
    left by the iteration is then small next to the local error, and tighter
    values only buy iterations. The floor keeps ``κ · rtol`` above what rounding
    in ``dtype`` can resolve.
    """
    eps = torch.finfo(dtype).eps
    return max(0.01, 10.0 * eps / rtol)


def scaled_rms_norm(x: torch.Tensor, scale: torch.Tensor, *, per_row: bool) -> torch.Tensor:
    """``sqrt(mean((x / scale)²))``: over everything, or per row (dimension 0) when ``per_row``."""
    ratio = x / scale
    if not per_row:
        return ratio.square().mean().sqrt()
    return ratio.reshape(ratio.shape[0], -1).square().mean(dim=1).sqrt()


def simplified_newton(
    residual: Callable[[torch.Tensor], torch.Tensor],
    solve: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    norm: Callable[[torch.Tensor], torch.Tensor],
    *,
    kappa: float,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    eta: torch.Tensor | float | None = None,
    grace: int = 0,
) -> NewtonResult:
    """Solve ``G(Z) = 0`` from ``z0`` (see the module notes).

    ``residual(z)`` returns ``−G(z)``; ``solve(r, z)`` returns ``M⁻¹ r`` (``z``, the
    current iterate, lets a caller use the exact Jacobian there: full Newton);
    ``norm(dz)`` returns the scaled norm, ``()`` or ``(B,)``; ``eta`` is the
    previous solve's :attr:`NewtonResult.eta` (None at the first solve: ``η_0 = 1``).
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    dz = solve(residual(z0), z0)
    size = norm(dz)
    iterate = _iterate_joint if size.ndim == 0 else _iterate_rows
    return iterate(residual, solve, norm, z0, dz, size, kappa, max_iterations, eta, grace)


def _first_eta(eta: torch.Tensor | float | None, like: torch.Tensor) -> torch.Tensor:
    """``η_0 = max(η_old, ε)^0.8`` (``η_old = 1`` at the first solve), shaped like ``like``."""
    seed = torch.ones_like(like) if eta is None else torch.as_tensor(eta).to(like)
    return seed.clamp_min(torch.finfo(like.dtype).eps).pow(0.8).expand(like.shape)


def _iterate_joint(residual, solve, norm, z, dz, size, kappa, max_iterations, eta, grace=0):
    """One system: the same iteration with the bookkeeping in Python floats.

    Reading the norm costs the one device sync per iteration that deciding
    whether to go on needs anyway; everything else stays off the tensor path.
    """
    size = float(size)
    eta_k = float(_first_eta(eta, torch.ones((), dtype=dz.dtype)))
    eta_out, rate, iterations, converged = eta_k, 0.0, 0, False
    evaluations, previous, finite = 1, 1.0, True
    for k in range(max_iterations):
        if k > 0:
            dz = solve(residual(z), z)
            evaluations += 1
            size = float(norm(dz))
        if not math.isfinite(size):
            finite = False
            break
        if k > 0:
            contraction = size / previous
            hopeless = contraction >= 1.0 or (
                contraction ** (max_iterations - k) / (1.0 - contraction) * size > kappa
            )
            if k <= grace and contraction >= 1.0:
                pass  # a coupled block catching up: no rate yet
            elif hopeless and k > grace or contraction >= 1.0:
                break
            else:
                eta_k = contraction / (1.0 - contraction)
                rate = max(rate, contraction)
        z = z + dz
        iterations += 1
        eta_out = eta_k
        if eta_k * size <= kappa or size == 0.0:
            converged = True
            break
        previous = size
    device = z.device
    return NewtonResult(
        z,
        torch.tensor(converged, device=device),
        torch.tensor(iterations, device=device),
        torch.tensor(rate, dtype=dz.dtype, device=device),
        torch.tensor(eta_out, dtype=dz.dtype, device=device),
        evaluations,
        torch.tensor(finite, device=device),
    )


def _iterate_rows(residual, solve, norm, z, dz, size, kappa, max_iterations, eta, grace=0):
    """Rows with their own rates, tests and flags; a row that has stopped is frozen."""
    active = torch.ones(size.shape, dtype=torch.bool, device=size.device)
    converged = torch.zeros_like(active)
    iterations = torch.zeros(size.shape, dtype=torch.long, device=size.device)
    rate = torch.zeros_like(size)
    eta_k = eta_out = _first_eta(eta, size)
    contraction = torch.zeros_like(size)
    hopeless = torch.zeros_like(active)
    blown = torch.zeros_like(active)
    evaluations, previous = 1, size
    for k in range(max_iterations):
        if k > 0:
            dz = solve(residual(z), z)
            evaluations += 1
            size = norm(dz)
            contraction = size / previous
            eta_k = contraction / (1.0 - contraction)
            hopeless = (contraction >= 1.0) | (
                contraction.pow(max_iterations - k) / (1.0 - contraction) * size > kappa
            )
            if k <= grace:
                catching_up = contraction >= 1.0
                eta_k = torch.where(catching_up, eta_out, eta_k)
                contraction = torch.where(catching_up, 0.0, contraction)
                hopeless = torch.zeros_like(hopeless)
        blown = blown | (active & ~torch.isfinite(size))
        failed = active & (~torch.isfinite(size) | hopeless)
        moving = active & ~failed
        z = torch.where(_expand(moving, z), z + dz, z)
        iterations = iterations + moving.long()
        rate = torch.where(moving, torch.maximum(rate, contraction), rate)
        eta_out = torch.where(moving, eta_k, eta_out)
        done = moving & ((eta_k * size <= kappa) | (size == 0))
        converged = converged | done
        active = moving & ~done
        previous = size
        if not bool(active.any()):
            break
    return NewtonResult(z, converged, iterations, rate, eta_out, evaluations, ~blown)


def _expand(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A row mask of shape ``()`` or ``(B,)`` broadcastable against ``like`` (rows first)."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))
