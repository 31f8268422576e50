r"""Second-order dynamics as a first-order system.

A second-order ODE :math:`\ddot x = a(t, x, \dot x)` (mechanics: position,
velocity, acceleration) becomes the first-order system

.. math::

    \frac{d}{dt} \begin{bmatrix} x \\ v \end{bmatrix}
    = \begin{bmatrix} v \\ a(t, x, v) \end{bmatrix},

which any ODE solver integrates. The state :math:`z = [x, v]` is the
concatenation of position and velocity along one dimension. Learning
:math:`a` instead of a general first-order field builds in the structure
(the position's derivative *is* the velocity), which Norcliffe et al. (2020)
show is what augmented ODEs otherwise have to discover.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError, ShapeMismatchError


def split_state(z: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
    """Split ``z = [x, v]`` into position ``x`` and velocity ``v`` (equal halves along ``dim``)."""
    if not isinstance(z, Tensor):
        raise NeurodeInputError(f"z must be a torch.Tensor, got {type(z).__name__}.")
    if z.ndim == 0:
        raise NeurodeInputError("z must have at least one dimension.")
    size = z.shape[dim]
    if size % 2:
        raise ShapeMismatchError(
            f"A second-order state holds [x, v] along dim {dim}, so its size there must be "
            f"even; got {size}."
        )
    x, v = z.split(size // 2, dim=dim)
    return x, v


def join_state(x: Tensor, v: Tensor, dim: int = -1) -> Tensor:
    """The state ``z = [x, v]``: position and velocity concatenated along ``dim``."""
    if not isinstance(x, Tensor) or not isinstance(v, Tensor):
        raise NeurodeInputError("x and v must be torch.Tensors.")
    if x.shape != v.shape:
        raise ShapeMismatchError(
            f"Position and velocity must have the same shape, got {tuple(x.shape)} and "
            f"{tuple(v.shape)}."
        )
    if x.ndim == 0:
        raise NeurodeInputError("x and v must have at least one dimension.")
    return torch.cat([x, v], dim=dim)


class SecondOrder(nn.Module):
    r"""First-order dynamics ``(t, [x, v]) -> [v, a(t, x, v)]`` from an acceleration ``a``.

    Args:
        acceleration: module (or callable) ``a(t, x, v)`` returning a tensor
            shaped like ``x``.
        dim: the dimension along which the state concatenates ``x`` and ``v``
            (``-1`` for vectors; ``1`` to stack channels of images).

    Use :func:`join_state` to build the initial state and :func:`split_state`
    (or :meth:`split`) to read positions and velocities off a solution.
    """

    def __init__(self, acceleration: Callable[[Tensor, Tensor, Tensor], Tensor], *, dim: int = -1):
        super().__init__()
        if not callable(acceleration):
            raise NeurodeInputError(
                "acceleration must be callable as acceleration(t, x, v), got "
                f"{type(acceleration).__name__}."
            )
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise NeurodeInputError(f"dim must be an integer, got {dim!r}.")
        self.acceleration = acceleration
        self.dim = dim

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, v)`` from a state (or, with ``dim < 0``, a trajectory of states)."""
        return split_state(z, self.dim)

    def join(self, x: Tensor, v: Tensor) -> Tensor:
        """The state ``[x, v]``."""
        return join_state(x, v, self.dim)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        x, v = split_state(z, self.dim)
        a = self.acceleration(t, x, v)
        if a.shape != x.shape:
            raise ShapeMismatchError(
                f"acceleration returned shape {tuple(a.shape)}, expected the position's "
                f"shape {tuple(x.shape)}."
            )
        return torch.cat([v, a], dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
