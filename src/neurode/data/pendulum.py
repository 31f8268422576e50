r"""The damped pendulum: simulation, phase-plane vector field and a noisy dataset.

The angle :math:`\theta(t)` of a pendulum with linear friction obeys

.. math::

    \ddot\theta = -\mu\,\dot\theta - \frac{g}{L}\sin\theta ,

written as a first-order system in the state :math:`y = (\theta, \omega)`,
:math:`\omega = \dot\theta`:

.. math::

    \dot\theta = \omega, \qquad \dot\omega = -\mu\,\omega - \frac{g}{L}\sin\theta .

The energy per unit :math:`mL^2`,
:math:`E = \tfrac12\omega^2 + \tfrac{g}{L}(1 - \cos\theta)`, satisfies
:math:`\dot E = -\mu\,\omega^2 \le 0`: it is conserved when :math:`\mu = 0` and
decreases otherwise. Below the separatrix energy :math:`E = 2g/L` the pendulum
oscillates; above it, it rotates over the top. For small angles
(:math:`\sin\theta \approx \theta`) the equation is the damped linear oscillator
with natural frequency :math:`\omega_0 = \sqrt{g/L}` and decay rate :math:`\mu/2`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from neurode.api import odeint
from neurode.data._checks import (
    _check_float_dtype,
    _check_fraction,
    _check_int,
    _check_real,
    _generator,
)
from neurode.data.errors import DatasetArgumentError
from neurode.data.irregular import (
    MaskedSeries,
    _check_time_row,
    sample_sorted_uniform_times,
    union_time_grid,
)

_SIMULATION_RTOL = 1e-10
_SIMULATION_ATOL = 1e-12


@dataclass(frozen=True)
class PendulumParams:
    r"""Physical constants of the damped pendulum.

    Attributes:
        mu: linear friction coefficient :math:`\mu \ge 0` (1/s).
        g_over_l: :math:`g/L > 0` (1/s²), the squared small-angle frequency.

    The defaults, :math:`\mu = 0.15` and :math:`g/L = 4`, give a small-angle
    period :math:`2\pi/\sqrt{g/L} = \pi \approx 3.1` s and an amplitude envelope
    :math:`e^{-\mu t/2}`: over the default 20 s window that is about six
    oscillations whose amplitude decays to :math:`e^{-1.5} \approx 22\%`, so both
    the oscillation and the damping are plainly visible and a model must learn
    both; half the window (the training part) already shows three periods.
    """

    mu: float = 0.15
    g_over_l: float = 4.0

    def __post_init__(self) -> None:
        _check_real("PendulumParams.mu", self.mu, minimum=0.0)
        _check_real("PendulumParams.g_over_l", self.g_over_l, strictly_positive=True)

    @property
    def natural_frequency(self) -> float:
        r"""Small-angle angular frequency :math:`\omega_0 = \sqrt{g/L}` (rad/s)."""
        return math.sqrt(self.g_over_l)


def pendulum_vector_field(
    params: PendulumParams, theta: Tensor | float, omega: Tensor | float
) -> tuple[Tensor, Tensor]:
    r"""The right-hand side of the pendulum system.

    :math:`(\dot\theta, \dot\omega) = (\omega,\ -\mu\omega - (g/L)\sin\theta)`.
    ``theta`` and ``omega`` broadcast against each other, so a meshgrid gives
    the arrows of a phase portrait.
    """
    theta = torch.as_tensor(theta)
    omega = torch.as_tensor(omega)
    theta, omega = torch.broadcast_tensors(theta, omega)
    return omega.clone(), -params.mu * omega - params.g_over_l * torch.sin(theta)


def pendulum_energy(params: PendulumParams, theta: Tensor, omega: Tensor) -> Tensor:
    r"""Energy per unit :math:`mL^2`: :math:`E = \tfrac12\omega^2 + (g/L)(1 - \cos\theta)`."""
    return 0.5 * omega**2 + params.g_over_l * (1.0 - torch.cos(theta))


def simulate_pendulum(
    params: PendulumParams,
    theta0: Tensor | float | Sequence[float],
    omega0: Tensor | float | Sequence[float],
    t: Tensor | Sequence[float],
    *,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Solve the damped pendulum for a batch of initial conditions.

    Args:
        params: physical constants.
        theta0, omega0: initial angle (rad) and angular velocity (rad/s) at
            ``t[0]``; scalars or 1-D, broadcast against each other to the batch.
        t: strictly increasing 1-D output times; ``t[0]`` is the initial time.
        dtype: floating dtype of the result.

    Returns:
        Tensor ``(len(t), batch, 2)`` of states ``[theta, omega]`` on ``t``'s
        device, computed by ``neurode.odeint`` with dopri5 at
        ``rtol=1e-10, atol=1e-12`` in float64 whatever ``dtype`` is, i.e. exact
        to plotting and noise levels.
    """
    if not isinstance(params, PendulumParams):
        raise DatasetArgumentError(f"params must be a PendulumParams, got {params!r}")
    dtype = _check_float_dtype(dtype)
    device = t.device if isinstance(t, Tensor) else None
    t = _check_time_row("t", torch.as_tensor(t, dtype=torch.float64, device=device))
    theta0 = torch.as_tensor(theta0, dtype=torch.float64, device=t.device)
    omega0 = torch.as_tensor(omega0, dtype=torch.float64, device=t.device)
    if theta0.dim() > 1 or omega0.dim() > 1:
        raise DatasetArgumentError(
            f"theta0 and omega0 must be scalars or 1-D, got shapes {tuple(theta0.shape)} "
            f"and {tuple(omega0.shape)}"
        )
    try:
        theta0, omega0 = torch.broadcast_tensors(theta0.reshape(-1), omega0.reshape(-1))
    except RuntimeError:
        raise DatasetArgumentError(
            f"theta0 ({theta0.numel()} values) and omega0 ({omega0.numel()} values) "
            "must have the same length or one of them be a scalar"
        ) from None
    if not (torch.isfinite(theta0).all() and torch.isfinite(omega0).all()):
        raise DatasetArgumentError("theta0 and omega0 must be finite")
    y0 = torch.stack([theta0, omega0], dim=-1)
    if len(t) == 1:
        return y0.unsqueeze(0).to(dtype)

    mu, g_over_l = params.mu, params.g_over_l

    def vector_field(_t: Tensor, y: Tensor) -> Tensor:
        theta, omega = y[..., 0], y[..., 1]
        return torch.stack([omega, -mu * omega - g_over_l * torch.sin(theta)], dim=-1)

    states = odeint(
        vector_field, y0, t, method="dopri5", rtol=_SIMULATION_RTOL, atol=_SIMULATION_ATOL
    )
    return states.to(dtype)


@dataclass(frozen=True)
class TrajectoryWindow:
    """A contiguous time window of every trajectory of a :class:`PendulumDataset`.

    Attributes:
        times: ``(T_w,)`` shared times, or ``(N, T_w)`` per-trajectory times.
        clean: ``(N, T_w, 2)`` exact states ``[theta, omega]``.
        noisy: ``(N, T_w, 2)`` observed states.
    """

    times: Tensor
    clean: Tensor
    noisy: Tensor


@dataclass(frozen=True)
class PendulumDataset:
    """Noisy observations of damped-pendulum trajectories, split in time.

    Trajectory-first layout: ``clean[i]`` is trajectory ``i``, observed at
    ``times`` (regular sampling, shape ``(T,)``) or ``times[i]`` (irregular,
    shape ``(N, T)``). The first ``n_train`` time points of every trajectory
    lie in the training window ``[0, t_split)``, the remaining ones in the
    extrapolation window ``[t_split, t_end]``.

    Attributes:
        params: the physical constants used.
        times: observation times, ``(T,)`` or ``(N, T)``.
        clean: ``(N, T, 2)`` exact states ``[theta, omega]``.
        noisy: ``clean`` plus i.i.d. ``Normal(0, noise_std**2)`` noise on both components.
        theta0, omega0: ``(N,)`` initial conditions at ``t = 0``.
        noise_std: the observation noise standard deviation.
        n_train: number of time points in the training window.
        t_split: start of the extrapolation window.
        t_end: end of the simulated span.
    """

    params: PendulumParams
    times: Tensor
    clean: Tensor
    noisy: Tensor
    theta0: Tensor
    omega0: Tensor
    noise_std: float
    n_train: int
    t_split: float
    t_end: float

    @property
    def is_irregular(self) -> bool:
        """True when every trajectory has its own observation times."""
        return self.times.dim() == 2

    @property
    def n_trajectories(self) -> int:
        return self.clean.shape[0]

    @property
    def initial_states(self) -> Tensor:
        """``(N, 2)`` initial states ``[theta0, omega0]`` at ``t = 0``."""
        return torch.stack([self.theta0, self.omega0], dim=-1)

    @property
    def train(self) -> TrajectoryWindow:
        """The observations in the training window ``[0, t_split)``."""
        return self._window(slice(0, self.n_train))

    @property
    def extrapolation(self) -> TrajectoryWindow:
        """The observations in the extrapolation window ``[t_split, t_end]``."""
        return self._window(slice(self.n_train, None))

    def to_masked(self, *, noisy: bool = True) -> MaskedSeries:
        """The union-of-times grid with a mask (see :mod:`neurode.data.irregular`).

        For regular sampling the grid is ``times`` and the mask is all true.
        """
        values = self.noisy if noisy else self.clean
        times = self.times if self.is_irregular else self.times.expand(self.n_trajectories, -1)
        return union_time_grid(times, values)

    def _window(self, index: slice) -> TrajectoryWindow:
        times = self.times[..., index]
        return TrajectoryWindow(times=times, clean=self.clean[:, index], noisy=self.noisy[:, index])


def make_pendulum_dataset(
    n_trajectories: int,
    t_end: float = 20.0,
    n_points: int = 100,
    *,
    noise_std: float = 0.05,
    irregular: bool = False,
    params: PendulumParams | None = None,
    train_fraction: float = 0.5,
    theta0_max: float = 1.5,
    omega0_max: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> PendulumDataset:
    r"""Simulate noisy damped-pendulum trajectories from random initial conditions.

    Recipe, all draws from one ``torch.Generator`` seeded with ``seed``:

    1. initial conditions :math:`\theta_0 \sim U[-\theta_{max}, \theta_{max}]`,
       :math:`\omega_0 \sim U[-\omega_{max}, \omega_{max}]` per trajectory at :math:`t = 0`
       (the defaults stay below the separatrix energy :math:`2g/L`, so every
       trajectory oscillates);
    2. times: with ``irregular=False`` the shared grid
       ``linspace(0, t_end, n_points)``; with ``irregular=True`` each
       trajectory draws ``n_train = round(train_fraction * n_points)`` sorted
       uniform times in the training window ``[0, t_split)`` and the rest in
       ``[t_split, t_end)``, where ``t_split = train_fraction * t_end``, so
       every trajectory has the same number of points in each window;
    3. exact states from :func:`simulate_pendulum`;
    4. observations ``noisy = clean + noise_std * eps``, ``eps ~ N(0, I)``, on
       both :math:`\theta` and :math:`\omega`.

    Args:
        n_trajectories: number of trajectories ``N``.
        t_end: end of the simulated span (s).
        n_points: observations per trajectory ``T`` (at least 2).
        noise_std: observation noise standard deviation (>= 0).
        irregular: per-trajectory random times instead of a shared grid.
        params: physical constants; :class:`PendulumParams` defaults if omitted.
        train_fraction: fraction of the span (and, if irregular, of the points)
            in the training window.
        theta0_max, omega0_max: half-widths of the initial-condition ranges.
        seed: makes the dataset reproducible; different seeds give different data.
        dtype: floating dtype of every tensor.
    """
    n_trajectories = _check_int("n_trajectories", n_trajectories, minimum=1)
    t_end = _check_real("t_end", t_end, strictly_positive=True)
    n_points = _check_int("n_points", n_points, minimum=2)
    noise_std = _check_real("noise_std", noise_std, minimum=0.0)
    train_fraction = _check_fraction("train_fraction", train_fraction)
    theta0_max = _check_real("theta0_max", theta0_max, minimum=0.0)
    omega0_max = _check_real("omega0_max", omega0_max, minimum=0.0)
    dtype = _check_float_dtype(dtype)
    params = PendulumParams() if params is None else params
    if not isinstance(params, PendulumParams):
        raise DatasetArgumentError(f"params must be a PendulumParams, got {params!r}")
    # Rounded to dtype so that comparing times of that dtype with it is exact.
    t_split = float(torch.tensor(train_fraction * t_end, dtype=dtype))
    generator = _generator(seed)

    uniform = lambda half_width: (
        half_width
        * (2.0 * torch.rand(n_trajectories, generator=generator, dtype=torch.float64) - 1.0)
    )
    theta0 = uniform(theta0_max).to(dtype)
    omega0 = uniform(omega0_max).to(dtype)

    if irregular:
        n_train = min(max(round(train_fraction * n_points), 1), n_points - 1)
        times = torch.cat(
            [
                sample_sorted_uniform_times(
                    n_trajectories, n_train, 0.0, t_split, seed=generator, dtype=dtype
                ),
                sample_sorted_uniform_times(
                    n_trajectories, n_points - n_train, t_split, t_end, seed=generator, dtype=dtype
                ),
            ],
            dim=1,
        )
        clean = _simulate_at_own_times(params, theta0, omega0, times)
    else:
        times = torch.linspace(0.0, t_end, n_points, dtype=dtype)
        n_train = int((times < t_split).sum())
        if not 1 <= n_train < n_points:
            raise DatasetArgumentError(
                f"train_fraction={train_fraction} leaves an empty window on a grid of "
                f"{n_points} points; use more points or a fraction nearer 0.5"
            )
        clean = simulate_pendulum(params, theta0, omega0, times, dtype=dtype).transpose(0, 1)

    noise = torch.randn(clean.shape, generator=generator, dtype=torch.float64).to(dtype)
    return PendulumDataset(
        params=params,
        times=times,
        clean=clean,
        noisy=clean + noise_std * noise,
        theta0=theta0,
        omega0=omega0,
        noise_std=noise_std,
        n_train=n_train,
        t_split=t_split,
        t_end=t_end,
    )


def _simulate_at_own_times(
    params: PendulumParams, theta0: Tensor, omega0: Tensor, times: Tensor
) -> Tensor:
    """States ``(N, T, 2)`` of trajectory ``i`` at ``times[i]``, from one batched solve.

    The batch is solved once on the union of all times (with ``t = 0``
    prepended), and each trajectory's own times are then picked out of it.
    """
    union = torch.unique(torch.cat([times.new_zeros(1), times.reshape(-1)]), sorted=True)
    states = simulate_pendulum(params, theta0, omega0, union, dtype=times.dtype)
    positions = torch.searchsorted(union, times)
    batch_index = torch.arange(times.shape[0]).unsqueeze(1)
    return states[positions, batch_index]
