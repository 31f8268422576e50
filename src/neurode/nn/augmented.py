r"""Augmented neural ODEs (Dupont, Doucet & Teh 2019).

The flow :math:`\phi_T: x \mapsto h(T)` of :math:`\dot h = f(t, h)` with
Lipschitz :math:`f` is a homeomorphism of :math:`\mathbb{R}^d`: trajectories
cannot cross, and the flow is continuous with a continuous inverse (the flow
backwards in time). So a plain neural ODE can only learn homeomorphisms, and
some simple maps are out of reach. In one dimension, a homeomorphism of
:math:`\mathbb{R}` that is connected to the identity (as every flow is, by
varying :math:`T`) is increasing, so :math:`g(x) = -x` cannot be represented:
:math:`\phi(-1) < \phi(1)` always, while :math:`g(-1) = 1 > -1 = g(1)`. The
same obstruction forbids separating two concentric circles in the plane.

Augmenting the state with :math:`p` zeros, :math:`h(0) = [x, 0_p]`, lets the
flow move points through the extra dimensions, around each other: in
:math:`\mathbb{R}^2` a rotation by :math:`\pi` maps :math:`(x, 0)` to
:math:`(-x, 0)`, so :math:`g(x) = -x` becomes the first coordinate of a flow.
The learned dynamics must accept (and return) the augmented state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError
from ._solving import _SolvingModule
from .block import ODEBlock

PROJECTIONS = ("none", "slice", "linear")


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NeurodeInputError(f"{name} must be a positive integer, got {value!r}.")
    return value


class Augmented(nn.Module):
    r"""Pad the input with ``augment_dim`` zeros, integrate, and optionally project back.

    Args:
        dynamics_or_block: an :class:`ODEBlock` or :class:`NeuralODE` to run on the
            augmented state, or a dynamics module ``f(t, h)`` for the augmented
            state, which is then wrapped in an :class:`ODEBlock` built with
            ``block_kwargs``.
        augment_dim: number of zero features (or channels) appended.
        dim: the feature (channel) dimension of the input, ``1`` for
            ``(batch, features)`` vectors and ``(batch, channels, H, W)`` images.
        projection: what to return:

            - ``"none"``: the whole augmented state;
            - ``"slice"``: the first ``in_features`` entries along ``dim`` (the
              original coordinates), with no parameters;
            - ``"linear"``: a learned linear map of the augmented features to
              ``out_features`` (default ``in_features``), as in Dupont et al.
        in_features: size of the input along ``dim``; needed for ``"linear"``
            (``"slice"`` takes it from the input when omitted).
        out_features: output size of the ``"linear"`` head.
        **block_kwargs: passed to :class:`ODEBlock` when given bare dynamics.

    ``forward(x, *args, **kwargs)`` forwards the extra arguments to the block, so
    an augmented :class:`NeuralODE` is called as ``model(y0, t)`` and returns the
    trajectory, whose feature dimension is located from the end.
    """

    def __init__(
        self,
        dynamics_or_block: nn.Module | Callable[[Tensor, Tensor], Tensor],
        augment_dim: int,
        *,
        dim: int = 1,
        projection: str = "none",
        in_features: int | None = None,
        out_features: int | None = None,
        **block_kwargs: Any,
    ) -> None:
        super().__init__()
        self.augment_dim = _check_positive_int("augment_dim", augment_dim)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise NeurodeInputError(f"dim must be an integer, got {dim!r}.")
        if dim == 0:
            raise NeurodeInputError("dim=0 is the batch dimension; features are augmented.")
        if projection not in PROJECTIONS:
            raise NeurodeInputError(f"projection must be one of {PROJECTIONS}, got {projection!r}.")
        if isinstance(dynamics_or_block, _SolvingModule):
            if block_kwargs:
                raise NeurodeInputError(
                    f"Options {sorted(block_kwargs)} apply only when Augmented builds the "
                    "ODEBlock itself; set them on the block you passed."
                )
            self.block = dynamics_or_block
        else:
            self.block = ODEBlock(dynamics_or_block, **block_kwargs)
        self.dim = dim
        self.projection = projection
        self.in_features = (
            None if in_features is None else _check_positive_int("in_features", in_features)
        )
        self.head: nn.Linear | None = None
        if projection == "linear":
            if self.in_features is None:
                raise NeurodeInputError("projection='linear' needs in_features.")
            out = self.in_features if out_features is None else out_features
            out = _check_positive_int("out_features", out)
            self.head = nn.Linear(self.in_features + self.augment_dim, out)
        elif out_features is not None:
            raise NeurodeInputError("out_features is only used with projection='linear'.")

    def augment(self, x: Tensor) -> Tensor:
        """``[x, 0]``: ``x`` with ``augment_dim`` zeros appended along ``dim``."""
        if not isinstance(x, Tensor):
            raise NeurodeInputError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim < 2:
            raise NeurodeInputError(
                f"x must be batched, shaped (batch, features, ...); got shape {tuple(x.shape)}."
            )
        dim = self.dim if self.dim > 0 else x.ndim + self.dim
        if not 0 < dim < x.ndim:
            raise NeurodeInputError(
                f"dim={self.dim} is out of range for input shape {tuple(x.shape)}."
            )
        if self.in_features is not None and x.shape[dim] != self.in_features:
            raise NeurodeInputError(
                f"Expected {self.in_features} features along dim {self.dim}, got {x.shape[dim]}."
            )
        pad_shape = list(x.shape)
        pad_shape[dim] = self.augment_dim
        return torch.cat([x, x.new_zeros(pad_shape)], dim=dim)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        x_aug = self.augment(x)
        out = self.block(x_aug, *args, **kwargs)
        if self.projection == "none":
            return out
        # Counted from the end, the feature dimension is the same for the final
        # state and for a trajectory with a leading time dimension.
        feature_dim = (self.dim if self.dim > 0 else x.ndim + self.dim) - x.ndim
        if self.projection == "slice":
            n = self.in_features if self.in_features is not None else x.shape[self.dim]
            return out.narrow(feature_dim, 0, n)
        assert self.head is not None
        return self.head(out.movedim(feature_dim, -1)).movedim(-1, feature_dim)

    @property
    def nfe_forward(self) -> int:
        return self.block.nfe_forward

    @property
    def nfe_backward(self) -> int:
        return self.block.nfe_backward

    @property
    def stats(self) -> dict | None:
        return self.block.stats

    @property
    def regularisation_loss(self) -> Tensor | None:
        return self.block.regularisation_loss

    def extra_repr(self) -> str:
        return f"augment_dim={self.augment_dim}, dim={self.dim}, projection={self.projection!r}"
