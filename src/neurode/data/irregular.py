"""Irregular sampling: per-series observation times, and the masked union-grid form.

Two representations of a batch of ``N`` series observed at different times:

* per-series: series ``i`` has its own strictly increasing times
  ``t_i = (t_i1 < ... < t_iT_i)`` and values ``y_i`` of shape ``(T_i, *features)``;
* masked union grid (:class:`MaskedSeries`): one sorted grid
  ``u = sorted(union_i {t_ij})`` of length ``U``, values ``Y`` of shape
  ``(N, U, *features)`` and a boolean mask ``M`` of shape ``(N, U)`` with
  ``M[i, k] = (u_k in t_i)``; where ``M[i, k]`` is true, ``Y[i, k]`` is the
  observation of series ``i`` at ``u_k``, elsewhere it is a fill value. One ODE
  solve over ``u`` serves the whole batch, which is how latent-ODE and ODE-RNN
  models consume irregular data; a loss is then ``sum(M * err) / sum(M)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from neurode.data._checks import _check_float_dtype, _check_int, _check_real, _generator
from neurode.data.errors import DatasetArgumentError


@dataclass(frozen=True)
class MaskedSeries:
    """A batch of series on one shared time grid, with a mask of observed entries.

    Attributes:
        times: ``(U,)`` strictly increasing union of all observation times.
        values: ``(N, U, *features)``; meaningful only where ``mask`` is true.
        mask: ``(N, U)`` bool, ``mask[i, k]`` is true when series ``i`` was
            observed at ``times[k]``. Broadcast against ``values`` with
            ``mask[..., None]``.
    """

    times: Tensor
    values: Tensor
    mask: Tensor

    @property
    def n_series(self) -> int:
        return self.values.shape[0]

    def series(self, index: int) -> tuple[Tensor, Tensor]:
        """The observed times ``(T_i,)`` and values ``(T_i, *features)`` of one series."""
        observed = self.mask[index]
        return self.times[observed], self.values[index][observed]


class GridSubsample(NamedTuple):
    """Indices into a regular grid and the grid times they select, both ``(N, n_points)``."""

    indices: Tensor
    times: Tensor


def sample_sorted_uniform_times(
    n_series: int,
    n_points: int,
    t_start: float,
    t_end: float,
    *,
    seed: int | torch.Generator = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Independent observation times for each series, uniform on ``[t_start, t_end)``.

    Each row holds ``n_points`` i.i.d. ``Uniform[t_start, t_end)`` draws sorted
    ascending: the order statistics of a uniform sample. Draws are made in
    float64; rows that rounding to a narrow ``dtype`` makes tie, or pushes onto
    ``t_end``, are drawn again, so every row is strictly increasing and inside
    the window in ``dtype``.

    Returns:
        Tensor ``(n_series, n_points)`` of ``dtype``.
    """
    n_series = _check_int("n_series", n_series, minimum=1)
    n_points = _check_int("n_points", n_points, minimum=1)
    t_start = _check_real("t_start", t_start)
    t_end = _check_real("t_end", t_end)
    if not t_end > t_start:
        raise DatasetArgumentError(f"t_end must be greater than t_start, got [{t_start}, {t_end}]")
    dtype = _check_float_dtype(dtype)
    generator = _generator(seed)

    low, high = torch.tensor([t_start, t_end], dtype=dtype).tolist()
    times = torch.empty(n_series, n_points, dtype=dtype)
    pending = torch.arange(n_series)
    for _ in range(100):
        draws = torch.rand(len(pending), n_points, generator=generator, dtype=torch.float64)
        rows = (t_start + (t_end - t_start) * draws).sort(dim=1).values.to(dtype)
        times[pending] = rows
        invalid = (rows.diff(dim=1) <= 0).any(dim=1) | (rows[:, 0] < low) | (rows[:, -1] >= high)
        pending = pending[invalid]
        if len(pending) == 0:
            return times
    raise DatasetArgumentError(
        f"cannot draw {n_points} distinct times in [{t_start}, {t_end}) at {dtype}; "
        "use fewer points, a wider window or a wider dtype"
    )


def subsample_grid(
    grid: Tensor,
    n_series: int,
    n_points: int,
    *,
    seed: int | torch.Generator = 0,
    include_first: bool = False,
) -> GridSubsample:
    """Choose ``n_points`` distinct grid points per series, uniformly without replacement.

    Every ``n_points``-subset of the grid is equally likely (or, with
    ``include_first``, every subset containing index 0). Indices are sorted, so
    each row of ``times`` is strictly increasing when ``grid`` is.

    Args:
        grid: ``(G,)`` strictly increasing times.
        n_series: number of independent subsamples ``N``.
        n_points: points per series, ``1 <= n_points <= G``.
        seed: int seed or CPU ``torch.Generator``.
        include_first: always keep ``grid[0]`` (e.g. the time of a known
            initial condition).

    Returns:
        :class:`GridSubsample` with ``indices`` (int64) and ``times``, both ``(N, n_points)``.
    """
    grid = _check_time_row("grid", grid)
    n_series = _check_int("n_series", n_series, minimum=1)
    n_points = _check_int("n_points", n_points, minimum=1)
    if n_points > len(grid):
        raise DatasetArgumentError(
            f"n_points ({n_points}) cannot exceed the number of grid points ({len(grid)})"
        )
    generator = _generator(seed)

    first = 1 if include_first else 0
    # A uniformly random permutation of the candidate indices per row: argsort of i.i.d. keys.
    keys = torch.rand(n_series, len(grid) - first, generator=generator, dtype=torch.float64)
    chosen = keys.argsort(dim=1)[:, : n_points - first] + first
    if include_first:
        chosen = torch.cat([torch.zeros(n_series, 1, dtype=torch.long), chosen], dim=1)
    indices = chosen.sort(dim=1).values.to(grid.device)
    return GridSubsample(indices=indices, times=grid[indices])


def take_along_time(values: Tensor, indices: Tensor) -> Tensor:
    """Gather ``values[i, indices[i, j]]`` for series-first ``values`` of shape ``(N, G, *f)``.

    Returns a tensor of shape ``(N, n_points, *f)``.
    """
    if values.dim() < 2 or indices.dim() != 2 or values.shape[0] != indices.shape[0]:
        raise DatasetArgumentError(
            "values must be (N, G, *features) and indices (N, n_points) with the same N, "
            f"got {tuple(values.shape)} and {tuple(indices.shape)}"
        )
    feature_shape = values.shape[2:]
    expanded = indices.reshape(*indices.shape, *([1] * len(feature_shape))).expand(
        *indices.shape, *feature_shape
    )
    return values.gather(1, expanded)


def union_time_grid(
    times: Tensor | Sequence[Tensor],
    values: Tensor | Sequence[Tensor],
    *,
    fill_value: float = 0.0,
) -> MaskedSeries:
    """Put series observed at different times on the union of their times, with a mask.

    Args:
        times: ``(N, T)`` tensor, or a sequence of ``N`` 1-D tensors of possibly
            different lengths; each strictly increasing.
        values: ``(N, T, *features)`` tensor, or a sequence of ``N`` tensors
            ``(T_i, *features)`` with the same feature shape.
        fill_value: written into ``values`` where a series has no observation.

    Returns:
        :class:`MaskedSeries`. Times that are bitwise equal across series share a
        grid point, so series subsampled from one regular grid stay aligned.
    """
    times_list = _as_series_list("times", times)
    values_list = _as_series_list("values", values)
    if len(times_list) != len(values_list):
        raise DatasetArgumentError(
            f"times has {len(times_list)} series but values has {len(values_list)}"
        )
    if len(times_list) == 0:
        raise DatasetArgumentError("need at least one series, got none")
    feature_shape = values_list[0].shape[1:]
    for i, (t_i, y_i) in enumerate(zip(times_list, values_list, strict=True)):
        _check_time_row(f"times[{i}]", t_i)
        if y_i.dim() < 1 or y_i.shape[0] != t_i.shape[0]:
            raise DatasetArgumentError(
                f"series {i}: {t_i.shape[0]} times but values of shape {tuple(y_i.shape)}; "
                "values must have one row per time"
            )
        if y_i.shape[1:] != feature_shape:
            raise DatasetArgumentError(
                f"series {i}: feature shape {tuple(y_i.shape[1:])} differs from series 0's "
                f"{tuple(feature_shape)}"
            )

    union = torch.unique(torch.cat(times_list), sorted=True)
    n_series = len(times_list)
    reference = values_list[0]
    grid_values = torch.full(
        (n_series, len(union), *feature_shape),
        fill_value,
        dtype=reference.dtype,
        device=reference.device,
    )
    mask = torch.zeros(n_series, len(union), dtype=torch.bool, device=union.device)
    for i, (t_i, y_i) in enumerate(zip(times_list, values_list, strict=True)):
        positions = torch.searchsorted(union, t_i)
        grid_values[i, positions] = y_i
        mask[i, positions] = True
    return MaskedSeries(times=union, values=grid_values, mask=mask)


def _as_series_list(name: str, series: Tensor | Sequence[Tensor]) -> list[Tensor]:
    if isinstance(series, Tensor):
        if series.dim() < 1:
            raise DatasetArgumentError(f"{name} must have a leading series dimension")
        return list(series.unbind(0))
    if not isinstance(series, Sequence) or not all(isinstance(s, Tensor) for s in series):
        raise DatasetArgumentError(f"{name} must be a tensor or a sequence of tensors")
    return list(series)


def _check_time_row(name: str, times: object) -> Tensor:
    if not isinstance(times, Tensor) or times.dim() != 1 or len(times) == 0:
        shape = tuple(times.shape) if isinstance(times, Tensor) else type(times).__name__
        raise DatasetArgumentError(f"{name} must be a non-empty 1-D tensor, got {shape}")
    if not times.dtype.is_floating_point:
        raise DatasetArgumentError(f"{name} must be floating point, got {times.dtype}")
    if not torch.isfinite(times).all():
        raise DatasetArgumentError(f"{name} holds NaN or infinity")
    if len(times) > 1 and not (times.diff() > 0).all():
        first_bad = int((times.diff() <= 0).nonzero()[0, 0]) + 1
        raise DatasetArgumentError(
            f"{name} must be strictly increasing; entry {first_bad} ({float(times[first_bad])}) "
            f"does not exceed entry {first_bad - 1} ({float(times[first_bad - 1])})"
        )
    return times
