r"""The toy problems that plain neural ODEs cannot represent (augmented neural ODEs).

The flow :math:`\phi_T` of an ODE :math:`\dot h = f(h, t)` is a homeomorphism of
:math:`\mathbb{R}^d`: trajectories cannot cross. Two consequences, each a dataset:

* **Negation in 1-D**, :math:`g(x) = -x`. Mapping :math:`1 \mapsto -1` and
  :math:`-1 \mapsto 1` would need the trajectories from :math:`\pm 1` to cross,
  which a continuous flow on :math:`\mathbb{R}` cannot do; the two points
  :math:`\pm 1` alone already show it, a uniform sample of :math:`[-1, 1]` shows
  it everywhere.
* **Concentric circles** in :math:`d` dimensions: points with
  :math:`\|x\| \le r_1` are labelled :math:`-1`, points with
  :math:`r_2 \le \|x\| \le r_3` are labelled :math:`+1` (:math:`r_1 < r_2 < r_3`).
  Separating them by a linear read-out of the flow's output needs the inner
  ball moved outside the annulus, which a homeomorphism cannot do without
  tearing it.

Adding dimensions (augmented neural ODEs) removes both obstructions.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from neurode.data._checks import _check_float_dtype, _check_int, _check_real, _generator
from neurode.data.errors import DatasetArgumentError


class InputTargetPairs(NamedTuple):
    """Inputs ``(n, d_in)`` and their targets ``(n, d_out)``, row by row."""

    inputs: Tensor
    targets: Tensor


def make_negation_pairs(
    n_points: int,
    *,
    sampling: Literal["uniform", "endpoints"] = "uniform",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> InputTargetPairs:
    r"""Pairs :math:`(x, -x)`, the 1-D map no neural ODE on :math:`\mathbb{R}` can learn.

    Args:
        n_points: number of pairs ``n``.
        sampling: ``"uniform"`` draws :math:`x \sim U[-1, 1]`; ``"endpoints"``
            uses only :math:`x = \pm 1`, ``ceil(n/2)`` of ``+1`` and
            ``floor(n/2)`` of ``-1`` in random order (``n = 2`` is the minimal case).
        seed: makes the data reproducible.
        dtype: floating dtype.

    Returns:
        :class:`InputTargetPairs` with ``inputs`` and ``targets = -inputs``, both ``(n, 1)``.
    """
    n_points = _check_int("n_points", n_points, minimum=1)
    dtype = _check_float_dtype(dtype)
    generator = _generator(seed)
    if sampling == "uniform":
        x = 2.0 * torch.rand(n_points, 1, generator=generator, dtype=torch.float64) - 1.0
    elif sampling == "endpoints":
        signs = torch.ones(n_points, 1, dtype=torch.float64)
        signs[(n_points + 1) // 2 :] = -1.0
        x = signs[torch.randperm(n_points, generator=generator)]
    else:
        raise DatasetArgumentError(f"sampling must be 'uniform' or 'endpoints', got {sampling!r}")
    x = x.to(dtype)
    return InputTargetPairs(inputs=x, targets=-x)


def make_concentric_circles(
    n_inner: int,
    n_outer: int,
    *,
    inner_radius: float = 0.5,
    annulus_radii: tuple[float, float] = (1.0, 1.5),
    dim: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> InputTargetPairs:
    r"""A ball labelled :math:`-1` inside an annulus (spherical shell) labelled :math:`+1`.

    Points are uniform in volume: the direction is a normalised standard
    Gaussian vector and the radius of a point in the shell
    :math:`r_{lo} \le \|x\| \le r_{hi}` is
    :math:`(r_{lo}^d + U\,(r_{hi}^d - r_{lo}^d))^{1/d}`, :math:`U \sim U[0, 1]`
    (:math:`r_{lo} = 0` for the ball).

    Args:
        n_inner: points in the ball :math:`\|x\| \le r_1` (``inner_radius``).
        n_outer: points in the shell :math:`r_2 \le \|x\| \le r_3` (``annulus_radii``).
        inner_radius: :math:`r_1 > 0`.
        annulus_radii: :math:`(r_2, r_3)` with :math:`r_1 < r_2 < r_3`.
        dim: dimension :math:`d` (2 gives the concentric circles).
        seed: makes the data reproducible.
        dtype: floating dtype.

    Returns:
        :class:`InputTargetPairs`: ``inputs`` ``(n_inner + n_outer, dim)``, the
        ``n_inner`` ball points first, and ``targets`` ``(n, 1)`` of ``-1``/``+1``.
    """
    n_inner = _check_int("n_inner", n_inner, minimum=1)
    n_outer = _check_int("n_outer", n_outer, minimum=1)
    dim = _check_int("dim", dim, minimum=1)
    r1 = _check_real("inner_radius", inner_radius, strictly_positive=True)
    if not isinstance(annulus_radii, tuple | list) or len(annulus_radii) != 2:
        raise DatasetArgumentError(f"annulus_radii must be a pair (r2, r3), got {annulus_radii!r}")
    r2 = _check_real("annulus_radii[0]", annulus_radii[0])
    r3 = _check_real("annulus_radii[1]", annulus_radii[1])
    if not r1 < r2 < r3:
        raise DatasetArgumentError(
            f"radii must satisfy inner_radius < r2 < r3, got {r1}, {r2}, {r3}"
        )
    dtype = _check_float_dtype(dtype)
    generator = _generator(seed)

    inner = _uniform_in_shell(n_inner, dim, 0.0, r1, generator)
    outer = _uniform_in_shell(n_outer, dim, r2, r3, generator)
    labels = torch.cat([-torch.ones(n_inner, 1), torch.ones(n_outer, 1)]).to(dtype)
    return InputTargetPairs(inputs=torch.cat([inner, outer]).to(dtype), targets=labels)


def _uniform_in_shell(
    n: int, dim: int, r_low: float, r_high: float, generator: torch.Generator
) -> Tensor:
    """``n`` points uniform in volume in ``r_low <= |x| <= r_high`` of R^dim, float64."""
    gaussian = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    directions = gaussian / gaussian.norm(dim=1, keepdim=True)
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64)
    radii = (r_low**dim + u * (r_high**dim - r_low**dim)) ** (1.0 / dim)
    return directions * radii
