r"""Noisy 2-D spirals observed at irregular times: the latent-ODE benchmark.

Generation recipe (all draws from one ``torch.Generator`` seeded with ``seed``):

1. A dense grid of ``n_dense`` angles :math:`s_k = k\,\Delta s`,
   :math:`\Delta s = s_{max}/(n_{dense}-1)`, on :math:`[0, s_{max}]`
   (default :math:`s_{max} = 6\pi`, three turns).
2. The Archimedean spiral :math:`r(s) = a + b\,s`. A counter-clockwise spiral
   is :math:`p(s) = (r(s)\cos s,\ r(s)\sin s)`; a clockwise one is its mirror
   image :math:`(r(s)\cos s,\ -r(s)\sin s)`. Both move outwards at unit angular
   speed, and their angular momentum :math:`x\dot y - y\dot x = \pm r(s)^2` has
   the sign of the orientation.
3. Exactly ``n_spirals // 2`` spirals, chosen at random, are clockwise.
4. Each spiral starts at a uniformly random dense index :math:`k_0` with room
   for a window of ``n_window`` dense points, so its ground truth is
   :math:`p(s_{k_0} + t_j)` at the shared times :math:`t_j = j\,\Delta s`,
   :math:`j < n_{window}`.
5. The first ``round(observed_fraction * n_window)`` dense points form the
   observed part; the rest is the extrapolation part. Each spiral observes
   ``n_observations`` distinct points of its observed part, chosen uniformly
   without replacement and sorted (so observation times differ per spiral),
   with i.i.d. Gaussian noise of standard deviation ``noise_std`` added to
   both coordinates.

The defaults (:math:`a = 0`, :math:`b = 0.3`, three turns on 1000 dense
points, noise 0.1) follow the scale of the latent-ODE spiral experiment of the
2018 neural-ODE paper, which reports predictive RMSE for 30, 50 and 100
observations per spiral.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from neurode.data._checks import (
    _check_float_dtype,
    _check_fraction,
    _check_int,
    _check_real,
    _generator,
)
from neurode.data.errors import DatasetArgumentError
from neurode.data.irregular import MaskedSeries, subsample_grid, take_along_time, union_time_grid


@dataclass(frozen=True)
class SpiralDataset:
    """Dense ground truth and irregular noisy observations of ``N`` spirals.

    Attributes:
        dense_times: ``(W,)`` shared times of the dense ground truth, starting at 0.
        dense: ``(N, W, 2)`` exact positions.
        observed_indices: ``(N, n_observations)`` strictly increasing indices
            into ``dense_times``, all below ``n_observed_window``.
        observed_times: ``(N, n_observations)`` the times of those indices.
        observed: ``(N, n_observations, 2)`` noisy positions at ``observed_times``.
        n_observed_window: dense points ``[0, n_observed_window)`` form the
            observed part, the rest the extrapolation part.
        clockwise: ``(N,)`` bool orientation of each spiral.
        start_angle: ``(N,)`` spiral angle :math:`s` at time 0.
        noise_std: the observation noise standard deviation.
    """

    dense_times: Tensor
    dense: Tensor
    observed_indices: Tensor
    observed_times: Tensor
    observed: Tensor
    n_observed_window: int
    clockwise: Tensor
    start_angle: Tensor
    noise_std: float

    @property
    def n_spirals(self) -> int:
        return self.dense.shape[0]

    @property
    def observed_part_times(self) -> Tensor:
        """``(W_obs,)`` dense times of the observed part."""
        return self.dense_times[: self.n_observed_window]

    @property
    def observed_part(self) -> Tensor:
        """``(N, W_obs, 2)`` exact positions over the observed part."""
        return self.dense[:, : self.n_observed_window]

    @property
    def extrapolation_times(self) -> Tensor:
        """``(W - W_obs,)`` dense times after the observed part."""
        return self.dense_times[self.n_observed_window :]

    @property
    def extrapolation(self) -> Tensor:
        """``(N, W - W_obs, 2)`` exact positions to be predicted."""
        return self.dense[:, self.n_observed_window :]

    def to_masked(self) -> MaskedSeries:
        """The observations on the union of their times, with a mask."""
        return union_time_grid(self.observed_times, self.observed)


def spiral_points(
    angle: Tensor, *, clockwise: Tensor | bool, a: float = 0.0, b: float = 0.3
) -> Tensor:
    r"""Points of the Archimedean spiral :math:`r = a + b s` at angles ``angle``.

    Counter-clockwise: :math:`(r\cos s, r\sin s)`; clockwise:
    :math:`(r\cos s, -r\sin s)`. ``clockwise`` broadcasts against ``angle``.
    Returns ``(*angle.shape, 2)``.
    """
    radius = a + b * angle
    orientation = 1.0 - 2.0 * torch.as_tensor(clockwise, dtype=angle.dtype, device=angle.device)
    return torch.stack([radius * torch.cos(angle), orientation * radius * torch.sin(angle)], -1)


def make_spirals_dataset(
    n_spirals: int,
    n_observations: int = 100,
    *,
    noise_std: float = 0.1,
    n_dense: int = 1000,
    n_window: int = 300,
    observed_fraction: float = 0.5,
    max_angle: float = 6 * math.pi,
    a: float = 0.0,
    b: float = 0.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> SpiralDataset:
    """Generate ``n_spirals`` noisy, irregularly observed spirals (recipe in the module docstring).

    Args:
        n_spirals: number of spirals ``N`` (at least 2, so both orientations appear).
        n_observations: noisy observations per spiral, at most the observed part's length.
        noise_std: observation noise standard deviation (>= 0).
        n_dense: points of the dense angle grid over ``[0, max_angle]``.
        n_window: dense points per spiral (observed plus extrapolation part).
        observed_fraction: share of the window that is observed.
        max_angle: largest spiral angle (radians).
        a, b: spiral radius ``r = a + b * angle``.
        seed: makes the dataset reproducible; different seeds give different data.
        dtype: floating dtype of every floating tensor.
    """
    n_spirals = _check_int("n_spirals", n_spirals, minimum=2)
    n_observations = _check_int("n_observations", n_observations, minimum=1)
    noise_std = _check_real("noise_std", noise_std, minimum=0.0)
    n_dense = _check_int("n_dense", n_dense, minimum=2)
    n_window = _check_int("n_window", n_window, minimum=2)
    observed_fraction = _check_fraction("observed_fraction", observed_fraction)
    max_angle = _check_real("max_angle", max_angle, strictly_positive=True)
    a = _check_real("a", a, minimum=0.0)
    b = _check_real("b", b, strictly_positive=True)
    dtype = _check_float_dtype(dtype)
    if n_window > n_dense:
        raise DatasetArgumentError(f"n_window ({n_window}) cannot exceed n_dense ({n_dense})")
    n_observed_window = round(observed_fraction * n_window)
    if not 1 <= n_observed_window < n_window:
        raise DatasetArgumentError(
            f"observed_fraction={observed_fraction} leaves an empty observed or extrapolation "
            f"part of a {n_window}-point window; use a larger n_window"
        )
    if n_observations > n_observed_window:
        raise DatasetArgumentError(
            f"n_observations ({n_observations}) exceeds the {n_observed_window} dense points of "
            "the observed part; raise n_window or observed_fraction, or observe fewer points"
        )
    generator = _generator(seed)

    angle_step = max_angle / (n_dense - 1)
    dense_times = torch.arange(n_window, dtype=torch.float64) * angle_step

    clockwise = torch.zeros(n_spirals, dtype=torch.bool)
    clockwise[torch.randperm(n_spirals, generator=generator)[: n_spirals // 2]] = True
    start_index = torch.randint(0, n_dense - n_window + 1, (n_spirals,), generator=generator)
    start_angle = start_index.to(torch.float64) * angle_step
    angles = start_angle.unsqueeze(1) + dense_times
    dense = spiral_points(angles, clockwise=clockwise.unsqueeze(1), a=a, b=b)

    chosen = subsample_grid(
        dense_times[:n_observed_window], n_spirals, n_observations, seed=generator
    )
    noise = torch.randn(n_spirals, n_observations, 2, generator=generator, dtype=torch.float64)
    observed = take_along_time(dense, chosen.indices) + noise_std * noise

    return SpiralDataset(
        dense_times=dense_times.to(dtype),
        dense=dense.to(dtype),
        observed_indices=chosen.indices,
        observed_times=chosen.times.to(dtype),
        observed=observed.to(dtype),
        n_observed_window=n_observed_window,
        clockwise=clockwise,
        start_angle=start_angle.to(dtype),
        noise_std=noise_std,
    )
