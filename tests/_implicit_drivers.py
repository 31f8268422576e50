"""Minimal drivers around the implicit steps, for tests: a fixed-step loop and an adaptive one.

They are what the integration loop has to do with these pieces, reduced to the
essentials: ask the Jacobian cache for the iteration matrix, take the step,
react to Newton failure (halve ``h``), to the error test (accept or reject) and
report both outcomes to the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from neurode.solvers.dirk import dirk_step
from neurode.solvers.fully_implicit import coefficient_matrix, fully_implicit_step
from neurode.solvers.implicit_tableau import ImplicitTableau
from neurode.solvers.jacobian_cache import JacobianCache
from neurode.solvers.newton import newton_tolerance
from neurode.solvers.rosenbrock import rosenbrock_step, time_derivative
from neurode.solvers.rosenbrock_tableau import RosenbrockTableau


@dataclass
class DriverStats:
    accepted: int = 0
    rejected: int = 0
    newton_failures: int = 0
    function_evaluations: int = 0
    jacobians: int = 0
    factorizations: int = 0
    steps: list = field(default_factory=list)


def take_step(tableau, cache, func, t, y, f0, h, *, rtol, atol, eta=None, f_t=None, **options):
    """One step of any implicit or Rosenbrock tableau with the iteration matrix from ``cache``."""
    if isinstance(tableau, RosenbrockTableau):
        matrix = cache.iteration_matrix(t, y, h * tableau.gamma)
        return rosenbrock_step(tableau, func, t, y, f0, h, matrix, f_t=f_t)
    kappa = newton_tolerance(rtol, y.dtype)
    scale = atol + rtol * y.abs()
    if tableau.diagonally_implicit:
        matrix = cache.iteration_matrix(t, y, h * tableau.gamma)
        return dirk_step(
            tableau, func, t, y, f0, h, matrix, scale=scale, kappa=kappa, eta=eta, **options
        )
    matrix = cache.block_iteration_matrix(t, y, h, coefficient_matrix(tableau, y))
    return fully_implicit_step(
        tableau, func, t, y, f0, h, matrix, scale=scale, kappa=kappa, eta=eta, **options
    )


def fixed_step_solve(
    tableau: ImplicitTableau | RosenbrockTableau,
    func,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    steps: int,
    *,
    rtol: float = 1e-12,
    atol: float = 1e-14,
    exact_time_derivative: bool = False,
    cache: JacobianCache | None = None,
) -> tuple[torch.Tensor, DriverStats]:
    """``steps`` equal steps from ``t0`` to ``t1``; every stage solve must converge.

    ``rtol``/``atol`` only set the Newton tolerance here: tight by default, so
    the error measured is the method's. ``exact_time_derivative`` gives a
    Rosenbrock step ``∂f/∂t`` by differentiating ``func`` in a tensor ``t``.
    """
    rosenbrock = isinstance(tableau, RosenbrockTableau)
    cache = cache or JacobianCache(func, reuse=not rosenbrock)
    stats = DriverStats()
    h = (t1 - t0) / steps
    y, eta = y0, None
    for n in range(steps):
        t = t0 + n * h
        f0 = func(t, y)
        f_t = None
        if rosenbrock:
            time = torch.tensor(t, dtype=torch.float64) if exact_time_derivative else t
            f_t = time_derivative(func, time, y, f0, h=h)
        step = take_step(tableau, cache, func, t, y, f0, h, rtol=rtol, atol=atol, eta=eta, f_t=f_t)
        assert bool(step.converged.all()), f"{tableau.name}: stage solve failed at step {n}"
        stats.function_evaluations += 1 + step.function_evaluations
        cache.step_accepted(None if step.newton is None else step.newton.rate)
        eta = None if step.newton is None else step.newton.eta
        y = step.y1
        stats.steps.append(step)
    stats.accepted = steps
    stats.jacobians, stats.factorizations = cache.jacobian_evaluations, cache.factorizations
    return y, stats


def adaptive_solve(
    tableau: ImplicitTableau | RosenbrockTableau,
    func,
    y0: torch.Tensor,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    first_step: float = 1e-6,
    max_steps: int = 5000,
    autonomous: bool = True,
) -> tuple[torch.Tensor, DriverStats]:
    """An elementary adaptive loop (joint mode): the HW policy for Newton failures and ``J``.

    Error norm: RMS of ``e / (atol + rtol max(|y0|, |y1|))``; step factor
    ``0.9 err^(−1/q)`` clipped to ``[0.2, 5]``, and no growth right after a
    Newton failure.
    """
    rosenbrock = isinstance(tableau, RosenbrockTableau)
    cache = JacobianCache(func, reuse=not rosenbrock)
    stats = DriverStats()
    t, y, h, eta = t0, y0, first_step, None
    f0 = func(t, y)
    stats.function_evaluations = 1
    just_failed = False
    while t < t1:
        if stats.accepted + stats.rejected + stats.newton_failures >= max_steps:
            raise RuntimeError(f"{tableau.name}: more than {max_steps} steps at t = {t}")
        h = min(h, t1 - t)
        f_t = None
        if rosenbrock and not autonomous:
            f_t = time_derivative(func, t, y, f0, h=h)
            stats.function_evaluations += 1
        step = take_step(tableau, cache, func, t, y, f0, h, rtol=rtol, atol=atol, eta=eta, f_t=f_t)
        stats.function_evaluations += step.function_evaluations
        if not bool(step.converged):
            cache.newton_failed()
            stats.newton_failures += 1
            h *= 0.5
            just_failed = True
            continue
        scale = atol + rtol * torch.maximum(y.abs(), step.y1.abs())
        error = float((step.error_estimate / scale).square().mean().sqrt())
        factor = 0.9 * error ** (-1.0 / tableau.error_exponent_order) if error > 0 else 5.0
        factor = min(5.0, max(0.2, factor))
        if error <= 1.0:
            cache.step_accepted(None if step.newton is None else step.newton.rate)
            eta = None if step.newton is None else step.newton.eta
            t, y = t + h, step.y1
            if step.f1 is not None:
                f0 = step.f1
            else:
                f0 = func(t, y)
                stats.function_evaluations += 1
            stats.accepted += 1
            if just_failed:
                factor = min(factor, 1.0)
            just_failed = False
        else:
            cache.step_rejected()
            stats.rejected += 1
        h *= factor
    stats.jacobians, stats.factorizations = cache.jacobian_evaluations, cache.factorizations
    return y, stats
