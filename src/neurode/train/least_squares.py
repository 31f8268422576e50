r"""Nonlinear least squares through the solver, with Laplace (Gauss–Newton) uncertainty.

For a vector field with a few parameters :math:`p` (the pendulum's
:math:`g/L` and :math:`\mu`), the best fit to observed trajectories is a
small nonlinear least-squares problem in :math:`p` and each trajectory's
initial state :math:`y_{i0}`:

.. math::

    \min_{p,\,y_{10},\dots,y_{N0}}\ \tfrac12 \lVert r \rVert^2, \qquad
    r_{ijk} = y_k(t_{ij};\,p,\,y_{i0}) - \hat y_{ijk},

over every observation :math:`j` of every observed component :math:`k` of
every trajectory :math:`i`. Its Jacobian
:math:`J = \partial r / \partial(p, y_{10}, \dots)` comes from the forward
sensitivities of one batched solve (:func:`neurode.sensitivities`): the
derivatives of the discrete solution itself, exact to rounding. The
Levenberg–Marquardt step solves
:math:`(J^\top J + \lambda\,\operatorname{diag} J^\top J)\,\delta = -J^\top r`;
it is accepted when the cost falls, and :math:`\lambda` shrinks on success
and grows on failure. Near the minimum the steps are Gauss–Newton steps,
which converge in a handful of iterations where first-order optimisers need
thousands.

**Uncertainty.** With i.i.d. Gaussian noise of variance :math:`\sigma^2` the
Laplace approximation of the posterior (flat prior), equivalently the
asymptotic covariance of the least-squares estimate, is

.. math::

    \operatorname{Cov}(\hat p, \hat y_0) \approx \hat\sigma^2 (J^\top J)^{-1}, \qquad
    \hat\sigma^2 = \frac{\lVert r \rVert^2}{n - m},

with :math:`n` observations and :math:`m` fitted numbers. The standard error
of a parameter is the square root of its diagonal entry; a 95% interval is
:math:`\hat p \pm 1.96\,\mathrm{SE}` in the fitted parametrisation (for
:math:`g/L = e^a` and :math:`\mu = \operatorname{softplus}(b)` the interval
of :math:`a` or :math:`b` mapped through the monotone transform, so it never
leaves the physical range). Nuisance initial states are estimated jointly, so
their uncertainty is accounted for.

All trajectories are solved in one batch: the vector field must be
autonomous (it ignores ``t``), each trajectory's times are shifted to start
at zero, and the batch is saved on the union of the shifted times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError
from ..sensitivities import sensitivities
from .trajectories import Trajectories

__all__ = ["LeastSquaresFit", "interval_95", "least_squares_fit", "softplus"]

Z_95 = 1.959963984540054  # the 97.5% quantile of the standard normal


def interval_95(
    estimate: float, standard_error: float, transform: Callable[[float], float] = float
) -> tuple[float, float]:
    """The 95% Laplace (Wald) interval of a raw parameter, mapped through a monotone
    increasing ``transform`` (``math.exp`` for :math:`g/L = e^a`)."""
    return (
        transform(estimate - Z_95 * standard_error),
        transform(estimate + Z_95 * standard_error),
    )


def softplus(x: float) -> float:
    r""":math:`\log(1 + e^x)`, without overflow."""
    return math.log1p(math.exp(-abs(x))) + max(x, 0.0)


@dataclass
class LeastSquaresFit:
    """The outcome of :func:`least_squares_fit`.

    Attributes:
        initial_states: fitted ``(N, state_dim)`` states at each trajectory's first time.
        cost: the residual sum of squares :math:`\\lVert r\\rVert^2` at the end.
        n_residuals: number of residuals :math:`n`.
        n_fitted: number of fitted numbers :math:`m` (parameters and initial states).
        covariance: ``(P, P)`` Laplace covariance of the raw parameters (in the
            order given), ``None`` if :math:`J^\\top J` is singular or
            :math:`n \\le m`.
        iterations: Levenberg–Marquardt iterations run.
        converged: whether the relative change of the cost fell below the tolerance.
        history: cost after each iteration (accepted or not) and the function
            evaluations it took: ``{"cost": [...], "nfe": [...]}``.
    """

    initial_states: Tensor
    cost: float
    n_residuals: int
    n_fitted: int
    covariance: Tensor | None
    iterations: int
    converged: bool
    history: dict[str, list] = field(default_factory=lambda: {"cost": [], "nfe": []})

    @property
    def noise_variance(self) -> float:
        """:math:`\\hat\\sigma^2 = \\lVert r\\rVert^2 / (n - m)` (NaN when :math:`n \\le m`)."""
        dof = self.n_residuals - self.n_fitted
        return self.cost / dof if dof > 0 else math.nan

    def standard_errors(self) -> Tensor | None:
        """Standard errors of the raw parameters, or None without a covariance."""
        if self.covariance is None:
            return None
        return self.covariance.diagonal().clamp_min(0).sqrt()


class _CountingField(nn.Module):
    """The wrapped vector field, counting its calls (the function evaluations)."""

    def __init__(self, dynamics: nn.Module):
        super().__init__()
        self.dynamics = dynamics
        self.calls = 0

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        self.calls += 1
        return self.dynamics(t, y)


@dataclass(frozen=True)
class _Layout:
    """Where each observation of each trajectory sits on the union grid of shifted times."""

    grid: Tensor  # (U,) union of the shifted times
    positions: tuple[Tensor, ...]  # per trajectory, indices into grid
    targets: tuple[Tensor, ...]  # per trajectory, (T_i, k) observations


def _layout(data: Trajectories) -> _Layout:
    shifted = [t - t[0] for t in data.times]
    grid = torch.unique(torch.cat(shifted), sorted=True)
    positions = tuple(torch.searchsorted(grid, s) for s in shifted)
    return _Layout(grid, positions, data.values)


Jacobians = Callable[[Tensor], tuple[Tensor, Tensor]]
"""``jacobians(y) -> (df/dy, df/dp)``, ``(N, d, d)`` and ``(N, d, P)`` for states ``(N, d)``."""


class _SensitivityField(nn.Module):
    r"""The state and its sensitivities as one ODE: :math:`S' = A S + [0 \mid B]`.

    The augmented state of each trajectory is :math:`(y, \Phi, \Psi)` with
    :math:`\Phi = \partial y/\partial y_0` (``d x d``) and
    :math:`\Psi = \partial y/\partial p` (``d x P``), flattened to one row.
    """

    def __init__(self, field_: _CountingField, jacobians: Jacobians, dim: int, n_params: int):
        super().__init__()
        self.field_, self.jacobians = field_, jacobians
        self.dim, self.n_params = dim, n_params

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        d, p = self.dim, self.n_params
        y = z[:, :d]
        sensitivity = z[:, d:].reshape(-1, d, d + p)
        a, b = self.jacobians(y)
        rate = a @ sensitivity
        rate[:, :, d:] += b
        return torch.cat([self.field_(t, y), rate.reshape(z.shape[0], -1)], dim=1)


def _solve_with_sensitivities(
    field_: _CountingField,
    parameters: Sequence[nn.Parameter],
    y0: Tensor,
    grid: Tensor,
    jacobians: Jacobians | None,
    solver: dict,
) -> tuple[Tensor, Tensor, Tensor]:
    """``ys (U, N, d)``, ``dy/dy0 (U, N, d, d)`` per trajectory, ``dy/dp (U, N, d, P)``."""
    n_traj, dim = y0.shape
    n_params = len(parameters)
    if jacobians is None:
        ys, dy_dy0, dy_dparams = sensitivities(field_, y0, grid, params=list(parameters), **solver)
        own = torch.arange(n_traj)
        phi = dy_dy0[:, own, :, own, :].transpose(0, 1)  # advanced indices first: (N, U, d, d)
        psi = torch.stack([d.reshape(*ys.shape) for d in dy_dparams], dim=-1)
        return ys, phi, psi
    from ..api import odeint

    start = torch.cat(
        [torch.eye(dim, dtype=y0.dtype), torch.zeros(dim, n_params, dtype=y0.dtype)], dim=1
    )
    z0 = torch.cat([y0, start.reshape(1, -1).expand(n_traj, -1)], dim=1)
    augmented = _SensitivityField(field_, jacobians, dim, n_params)
    with torch.no_grad():
        zs = odeint(augmented, z0, grid, **solver)
    sensitivity = zs[..., dim:].reshape(*zs.shape[:2], dim, dim + n_params)
    return zs[..., :dim], sensitivity[..., :dim], sensitivity[..., dim:]


def _residuals_and_jacobian(
    field_: _CountingField,
    parameters: Sequence[nn.Parameter],
    y0: Tensor,
    layout: _Layout,
    observed: tuple[int, ...],
    *,
    jacobians: Jacobians | None,
    jacobian: bool,
    solver: dict,
) -> tuple[Tensor, Tensor | None]:
    """Residuals ``(n,)`` and, if asked, the Jacobian ``(n, P + N * d)``."""
    n_traj, dim = y0.shape
    columns = list(observed)
    if not jacobian:
        from ..api import odeint

        with torch.no_grad():
            ys = odeint(field_, y0, layout.grid, **solver)
        rows = [ys[layout.positions[i], i][:, columns] - layout.targets[i] for i in range(n_traj)]
        return torch.cat([r.reshape(-1) for r in rows]), None
    ys, phi, psi = _solve_with_sensitivities(field_, parameters, y0, layout.grid, jacobians, solver)
    n_params = len(parameters)
    residuals, blocks = [], []
    for i in range(n_traj):
        where = layout.positions[i]
        residuals.append((ys[where, i][:, columns] - layout.targets[i]).reshape(-1))
        rows = where.numel() * len(columns)
        block = ys.new_zeros(rows, n_params + n_traj * dim)
        block[:, :n_params] = psi[where, i][:, columns].reshape(rows, n_params)
        own = phi[where, i][:, columns]  # (T_i, k, d)
        block[:, n_params + i * dim : n_params + (i + 1) * dim] = own.reshape(rows, dim)
        blocks.append(block)
    return torch.cat(residuals), torch.cat(blocks)


def least_squares_fit(
    dynamics: nn.Module,
    parameters: Sequence[nn.Parameter],
    data: Trajectories,
    initial_states: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    jacobians: Jacobians | None = None,
    max_iterations: int = 50,
    tolerance: float = 1e-6,
    callback: Callable[[int, float], None] | None = None,
) -> LeastSquaresFit:
    r"""Levenberg–Marquardt fit of ``parameters`` (scalars of ``dynamics``) and initial states.

    Args:
        dynamics: an autonomous vector field ``f(t, y)`` on states ``(N, state_dim)``.
        parameters: the scalar parameters to fit, owned by ``dynamics``; updated
            in place to the fitted values. Other parameters stay fixed.
        data: the observed trajectories (any times, any observed components).
        initial_states: ``(N, state_dim)`` starting values of the initial states.
        method, rtol, atol: solver settings of the solves.
        jacobians: analytic ``df/dy`` and ``df/dp`` (see :data:`Jacobians`), for
            the sensitivity equations as one augmented ODE; without them the
            sensitivities come from :func:`neurode.sensitivities` (the
            ``forward`` gradient method, automatic differentiation), which
            gives the same numbers at several times the cost per evaluation.
        max_iterations: limit on Levenberg–Marquardt iterations.
        tolerance: stop when an accepted step lowers the cost by less than this
            fraction of it, or moves every fitted number by less than this
            fraction of its standard error. (The cost's own sampling spread is
            a fraction :math:`\sqrt{2/n}` of it, so smaller changes carry no
            information; solver round-off makes them unreliable anyway.)
        callback: called as ``callback(iteration, cost)`` after each iteration.

    Returns:
        A :class:`LeastSquaresFit` with the Laplace covariance of ``parameters``.
    """
    parameters = list(parameters)
    if not parameters or any(p.numel() != 1 for p in parameters):
        raise NeurodeInputError("least_squares_fit fits scalar parameters; pass at least one")
    if initial_states.shape != (len(data), data.state_dim):
        raise NeurodeInputError(
            f"initial_states must be ({len(data)}, {data.state_dim}), "
            f"got {tuple(initial_states.shape)}"
        )
    field_ = _CountingField(dynamics)
    layout = _layout(data)
    y0 = initial_states.detach().clone()
    n_params = len(parameters)

    def current() -> Tensor:
        return torch.cat(
            [torch.stack([p.detach().reshape(()) for p in parameters]), y0.reshape(-1)]
        )

    def assign(vector: Tensor) -> None:
        with torch.no_grad():
            for k, p in enumerate(parameters):
                p.copy_(vector[k].reshape(p.shape))
        y0.copy_(vector[n_params:].reshape(y0.shape))

    solver = {"method": method, "rtol": rtol, "atol": atol}
    evaluate = lambda jacobian: _residuals_and_jacobian(
        field_, parameters, y0, layout, data.observed,
        jacobians=jacobians, jacobian=jacobian, solver=solver,
    )  # fmt: skip
    history: dict[str, list] = {"cost": [], "nfe": []}
    damping = 1e-3
    converged = False
    residuals, jac = evaluate(True)
    cost = float(residuals @ residuals)
    iterations = 0
    for iterations in range(1, max_iterations + 1):
        calls = field_.calls
        normal = jac.T @ jac
        gradient = jac.T @ residuals
        scale = normal.diagonal().clamp_min(1e-12 * float(normal.diagonal().max()))
        # The Gauss-Newton model's own promise, g^T N^-1 g (twice the decrease
        # it predicts): when even that is below the tolerance the fit has
        # converged, and trying damped steps would only cost solves.
        try:
            promised = float(gradient @ torch.linalg.solve(normal, gradient))
        except RuntimeError:
            promised = math.inf
        if promised < tolerance * cost:
            converged = True
            break
        start = current()
        accepted = False
        for _ in range(10):
            try:
                step = torch.linalg.solve(normal + damping * torch.diag(scale), -gradient)
            except RuntimeError:
                damping *= 10.0
                continue
            assign(start + step)
            trial, _ = evaluate(False)
            trial_cost = float(trial @ trial)
            if math.isfinite(trial_cost) and trial_cost < cost:
                accepted = True
                break
            damping *= 10.0
        if not accepted:
            assign(start)
            history["cost"].append(cost)
            history["nfe"].append(field_.calls - calls)
            converged = True  # no step lowers the cost: a (local) minimum to rounding
            break
        decrease = (cost - trial_cost) / max(cost, 1e-300)
        dof = max(jac.shape[0] - jac.shape[1], 1)
        try:
            spread = (torch.linalg.inv(normal).diagonal().clamp_min(0) * cost / dof).sqrt()
            small_step = bool((step.abs() < tolerance * 1e3 * spread).all())
        except RuntimeError:
            small_step = False
        damping = max(damping / 10.0, 1e-12)
        residuals, jac = evaluate(True)
        cost = float(residuals @ residuals)
        history["cost"].append(cost)
        history["nfe"].append(field_.calls - calls)
        if callback is not None:
            callback(iterations, cost)
        if decrease < tolerance or small_step:
            converged = True
            break

    n_residuals, n_fitted = residuals.numel(), jac.shape[1]
    covariance = None
    if n_residuals > n_fitted:
        try:
            inverse = torch.linalg.inv(jac.T @ jac)
        except RuntimeError:
            inverse = None
        if inverse is not None and bool(torch.isfinite(inverse).all()):
            sigma2 = cost / (n_residuals - n_fitted)
            covariance = sigma2 * inverse[:n_params, :n_params]
    return LeastSquaresFit(
        initial_states=y0,
        cost=cost,
        n_residuals=n_residuals,
        n_fitted=n_fitted,
        covariance=covariance,
        iterations=iterations,
        converged=converged,
        history=history,
    )
