"""Two-dimensional toy densities for density estimation with flows.

Each sampler returns an ``(n, 2)`` tensor with most of its mass in
``[-4, 4]²``:

- ``moons``: two interleaved half circles (radius 2) with Gaussian noise;
- ``8gaussians``: an equal mixture of 8 isotropic Gaussians (std ``0.5/√2``)
  centred on the circle of radius ``4/√2`` at angles ``kπ/4``;
- ``checkerboard``: uniform on the 8 dark squares (side 2) of a 4×4 board
  covering ``[-4, 4]²``;
- ``rings``: four concentric rings of radii 0.75, 1.5, 2.25, 3 (points
  spread uniformly over the total length) with radial Gaussian noise.

``8gaussians`` has a closed-form density, :func:`eight_gaussians_log_density`,
the best log-likelihood any model can reach on it.
"""

from __future__ import annotations

import math

import torch

from ..errors import NeurodeInputError

TOY_DENSITIES = ("moons", "8gaussians", "checkerboard", "rings")

_EIGHT_GAUSSIANS_RADIUS = 4 / math.sqrt(2)
_EIGHT_GAUSSIANS_STD = 0.5 / math.sqrt(2)
_RING_RADII = (0.75, 1.5, 2.25, 3.0)


def sample_toy_density(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``n`` samples ``(n, 2)`` from the toy density called ``name`` (see :data:`TOY_DENSITIES`)."""
    if name not in _SAMPLERS:
        raise NeurodeInputError(f"unknown toy density {name!r}; choose from {TOY_DENSITIES}")
    if not isinstance(n, int) or n < 1:
        raise NeurodeInputError(f"n must be a positive integer, got {n!r}")
    return _SAMPLERS[name](n, generator).to(dtype)


def eight_gaussians_log_density(x: torch.Tensor) -> torch.Tensor:
    """Exact ``log p(x)`` of the ``8gaussians`` mixture for ``x`` of shape ``(..., 2)``."""
    centres = _eight_gaussians_centres(x.dtype).to(x.device)
    squared = ((x[..., None, :] - centres) ** 2).sum(-1) / _EIGHT_GAUSSIANS_STD**2
    component = -0.5 * squared - math.log(2 * math.pi * _EIGHT_GAUSSIANS_STD**2)
    return torch.logsumexp(component, dim=-1) - math.log(8)


def _uniform(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, dtype=torch.float64)


def _normal(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _moons(n: int, generator: torch.Generator | None) -> torch.Tensor:
    angle = math.pi * _uniform(n, generator)
    lower = torch.arange(n) % 2 == 1
    # Upper arc: (cos a, sin a); lower arc: (1 - cos a, 0.5 - sin a).
    x = torch.where(lower, 1 - torch.cos(angle), torch.cos(angle))
    y = torch.where(lower, 0.5 - torch.sin(angle), torch.sin(angle))
    points = torch.stack([x, y], dim=-1) + 0.1 * _normal((n, 2), generator)
    return 2 * points - torch.tensor([1.0, 0.5], dtype=torch.float64)


def _eight_gaussians_centres(dtype: torch.dtype) -> torch.Tensor:
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
    centres = _EIGHT_GAUSSIANS_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    return centres.to(dtype)


def _eight_gaussians(n: int, generator: torch.Generator | None) -> torch.Tensor:
    component = torch.randint(0, 8, (n,), generator=generator)
    centres = _eight_gaussians_centres(torch.float64)[component]
    return centres + _EIGHT_GAUSSIANS_STD * _normal((n, 2), generator)


def _checkerboard(n: int, generator: torch.Generator | None) -> torch.Tensor:
    # Column c in {0..3}, then one of the two dark rows of that column: dark squares
    # have (row + column) even.
    column = torch.randint(0, 4, (n,), generator=generator)
    row = 2 * torch.randint(0, 2, (n,), generator=generator) + column % 2
    x = -4 + 2 * column + 2 * _uniform(n, generator)
    y = -4 + 2 * row + 2 * _uniform(n, generator)
    return torch.stack([x, y], dim=-1)


def _rings(n: int, generator: torch.Generator | None) -> torch.Tensor:
    radii = torch.tensor(_RING_RADII, dtype=torch.float64)
    ring = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = 2 * math.pi * _uniform(n, generator)
    radius = radii[ring] + 0.08 * _normal((n,), generator)
    return radius[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=-1)


_SAMPLERS = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "rings": _rings,
}
