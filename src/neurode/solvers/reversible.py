r"""The algebraically reversible wrapper around an explicit Runge–Kutta method.

McCallum & Foster (2024), "Efficient, Accurate and Stable Gradients for Neural
ODEs". Any explicit Runge–Kutta method with increment

    Ψ_h(t, x) = h Σ_i b_i k_i,      k_i = f(t + c_i h, x + h Σ_{j<i} a_ij k_j)

(one step of the base method is ``x ↦ x + Ψ_h(t, x)``) becomes a method on a
pair of states ``(y, z)`` with a coupling parameter ``λ > 0`` (usually ``≤ 1``):

    y_{n+1} = λ y_n + (1 − λ) z_n + Ψ_h(t_n, z_n)
    z_{n+1} = z_n − Ψ_{−h}(t_{n+1}, y_{n+1})

started from ``y_0 = z_0``. Each line can be solved for the old state, so the
step is inverted exactly with the same evaluations, in the reverse order:

    z_n = z_{n+1} + Ψ_{−h}(t_{n+1}, y_{n+1})
    y_n = (y_{n+1} − (1 − λ) z_n − Ψ_h(t_n, z_n)) / λ.

``y`` is the solution; ``z`` shadows it (``z_{n+1}`` is ``y_{n+1}`` taken one base
step backwards and forwards again), and ``y`` keeps the base method's order.

Linear stability. On ``y' = a y`` with ``x = a h``, ``R`` the base method's
stability function and ``R̄ = R(−x)``, one step multiplies ``(y, z)`` by

    M = [[λ, R − λ], [λ (1 − R̄), 1 + (1 − R̄)(R − λ)]],    det M = λ.

The two eigenvalues are therefore ``μ₁ ≈ R(x) ≈ e^x`` (the solution) and
``μ₂ = λ / μ₁ ≈ λ e^{−x}`` (the parasitic mode, which carries the difference
``y − z``). Consequences, which the tests of this module check numerically:

- oscillatory and growing modes (``Re x ≥ 0``) are stable whenever the base
  method is, and ``λ < 1`` damps the parasitic mode by ``λ`` per step
  (``λ = 1`` leaves it undamped, the weakness of earlier reversible schemes);
- a decaying mode with ``|μ₁| < λ`` — roughly ``h·|Re a| > −log λ ≈ 1 − λ`` —
  makes the parasitic mode grow by ``λ/|μ₁|`` per step in the forward solve;
- the backward reconstruction runs ``M⁻¹``, with eigenvalues ``1/μ₁`` and
  ``μ₁/λ``: rounding in the final pair grows back as much as the solution
  decayed, and its parasitic part by ``|μ₁|/λ`` per reconstructed step (on a
  growing mode, by as much as the solution grew).

So ``λ`` trades forward stability on strongly damped modes (smaller ``λ``, or
smaller steps) against reconstruction accuracy over many steps (``λ`` close to
1), and nothing forces ``λ ≤ 1``: on growing modes ``λ > 1`` spares the
reconstruction. :mod:`neurode.integrate.reversible_coupling` chooses ``λ_n`` step
by step from the dynamics; :mod:`neurode.gradients.reversible` bounds and checks
the reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .runge_kutta import StageFunction, runge_kutta_step
from .tableau import ButcherTableau


@dataclass
class Increment:
    """One base step ``x ↦ x + Ψ_h(t, x)``, kept as the increment itself."""

    value: torch.Tensor
    """``Ψ_h(t, x) = h Σ b_i k_i``."""
    error_estimate: torch.Tensor | None
    """``h Σ (b_i − b̂_i) k_i`` when asked for and the tableau has an embedded pair."""
    stages: list[torch.Tensor]
    """The stages evaluated (all of them when ``full``); ``stages[0] = f(t, x)``."""


def rk_increment(
    tableau: ButcherTableau,
    func: StageFunction,
    t: float,
    x: torch.Tensor,
    t1: float,
    *,
    with_error: bool = False,
    full: bool = False,
    f0: torch.Tensor | None = None,
) -> Increment:
    """The increment ``Ψ_h(t, x)`` of one base step from ``t`` to ``t1`` (``h = t1 − t``, any sign).

    Stages with ``c_i = 1`` are evaluated at exactly ``t1``. ``full`` evaluates every
    stage (dense output needs them); otherwise only those the result depends on.
    ``f0`` is ``f(t, x)`` if the caller has it.
    """
    step = runge_kutta_step(
        tableau,
        func,
        t,
        x,
        func(t, x, 0) if f0 is None else f0,
        t1 - t,
        t1=t1,
        with_error=with_error,
        increment=True,
        all_stages=full,
    )
    return Increment(value=step.increment, error_estimate=step.error_estimate, stages=step.stages)


@dataclass
class ReversibleStep:
    """One step of the reversible method and the two base steps it is made of."""

    y1: torch.Tensor
    z1: torch.Tensor
    forward: Increment
    """``Ψ_h(t_n, z_n)``."""
    backward: Increment
    """``Ψ_{−h}(t_{n+1}, y_{n+1})``."""
    coupling: float
    """``λ`` of this step."""


def reversible_step(
    tableau: ButcherTableau,
    func: StageFunction,
    t0: float,
    t1: float,
    y0: torch.Tensor,
    z0: torch.Tensor,
    coupling: float | Callable[[torch.Tensor, torch.Tensor], float],
    *,
    with_error: bool = False,
    full: bool = False,
    f0: torch.Tensor | None = None,
) -> ReversibleStep:
    """``(y_n, z_n) ↦ (y_{n+1}, z_{n+1})`` from ``t0`` to ``t1`` (``2 × stages`` evaluations).

    ``coupling`` is ``λ``, or a function of ``(f(t0, z_n), Ψ_h(t0, z_n))`` giving it
    (it is chosen once the forward base step is known). ``f0`` is ``f(t0, z_n)`` if
    the caller has it.
    """
    forward = rk_increment(tableau, func, t0, z0, t1, with_error=with_error, full=full, f0=f0)
    if callable(coupling):
        coupling = coupling(forward.stages[0], forward.value)
    y1 = torch.add(forward.value, y0, alpha=coupling)
    if coupling != 1.0:
        y1.add_(z0, alpha=1.0 - coupling)
    backward = rk_increment(tableau, func, t1, y1, t0, with_error=with_error)
    z1 = z0 - backward.value
    return ReversibleStep(y1=y1, z1=z1, forward=forward, backward=backward, coupling=coupling)


def reversible_step_back(
    tableau: ButcherTableau,
    func: StageFunction,
    t0: float,
    t1: float,
    y1: torch.Tensor,
    z1: torch.Tensor,
    coupling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y_{n+1}, z_{n+1}) ↦ (y_n, z_n)``: the exact inverse of :func:`reversible_step`."""
    z0 = z1 + rk_increment(tableau, func, t1, y1, t0).value
    y0 = undo_coupling(y1, z0, rk_increment(tableau, func, t0, z0, t1).value, coupling)
    return y0, z0


def coupling_defect(
    h: float,
    y0: torch.Tensor,
    z0: torch.Tensor,
    f_y: torch.Tensor,
    f_z: torch.Tensor,
    coupling: float,
) -> torch.Tensor:
    """``c = h (f(t_n, z_n) − f(t_n, y_n)) − (1 − λ)(y_n − z_n)``.

    ``y_{n+1} − (y_n + Ψ_h(t_n, y_n)) = Ψ_h(z_n) − Ψ_h(y_n) − (1 − λ)(y_n − z_n)``: how far
    the reversible step lands from the base step from ``y_n``, to first order in ``h``.
    """
    defect = torch.sub(f_z, f_y).mul_(h)
    if coupling != 1.0:
        defect.sub_(y0 - z0, alpha=1.0 - coupling)
    return defect


def undo_coupling(
    y1: torch.Tensor, z0: torch.Tensor, forward_increment: torch.Tensor, coupling: float
) -> torch.Tensor:
    """``y_n = (y_{n+1} − (1 − λ) z_n − Ψ_h(t_n, z_n)) / λ``."""
    y0 = y1 - forward_increment
    if coupling != 1.0:
        y0.sub_(z0, alpha=1.0 - coupling)
        y0.div_(coupling)
    return y0


__all__ = [
    "Increment",
    "ReversibleStep",
    "coupling_defect",
    "reversible_step",
    "reversible_step_back",
    "rk_increment",
    "undo_coupling",
]
