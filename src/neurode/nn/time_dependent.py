r"""Time-dependent dynamics: time as an extra input feature or channel.

A non-autonomous field :math:`f(t, h)` is most simply built by feeding
:math:`t` to the network alongside :math:`h`, as the ODE-Net dynamics of
Chen et al. (2018) do: each layer sees :math:`[t, h]`, with :math:`t`
broadcast to one extra feature (dense layers) or one constant extra channel
(convolutions). The layers here are called as ``layer(t, h)``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError


def _time_like(t: Tensor | float, h: Tensor, dim: int) -> Tensor:
    """``t`` broadcast to ``h``'s shape with size 1 along ``dim``."""
    shape = list(h.shape)
    shape[dim] = 1
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise NeurodeInputError(f"t must be a scalar, got shape {tuple(t.shape)}.")
        t = t.reshape(()).to(dtype=h.dtype, device=h.device)
    else:
        t = torch.tensor(t, dtype=h.dtype, device=h.device)
    return t.expand(shape)


def concat_time(t: Tensor | float, h: Tensor, dim: int = -1) -> Tensor:
    """``[t, h]``: a constant slice holding ``t`` put before ``h`` along ``dim``."""
    if not isinstance(h, Tensor) or h.ndim == 0:
        raise NeurodeInputError("h must be a tensor with at least one dimension.")
    return torch.cat([_time_like(t, h, dim), h], dim=dim)


class ConcatTime(nn.Module):
    """Make an autonomous module time-dependent: ``forward(t, h) = module([t, h])``.

    The wrapped module receives ``h`` with one extra entry along ``dim``
    holding ``t`` (so its input size is one larger than the state's).
    """

    def __init__(self, module: Callable[[Tensor], Tensor], *, dim: int = -1):
        super().__init__()
        if not callable(module):
            raise NeurodeInputError(f"module must be callable, got {type(module).__name__}.")
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise NeurodeInputError(f"dim must be an integer, got {dim!r}.")
        self.module = module
        self.dim = dim

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.module(concat_time(t, h, self.dim))

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class ConcatLinear(nn.Module):
    r"""Affine layer of :math:`[t, h]`: :math:`W [t, h] + b = W_h h + w_t t + b`."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features + 1, out_features, bias=bias)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        return self.linear(concat_time(t, h, -1))


class ConcatConv2d(nn.Module):
    """2-D convolution of the input with one extra constant channel holding ``t``.

    The default ``kernel_size=3, padding=1`` keeps the spatial size, as an ODE's
    dynamics must. ``transpose=True`` uses a transposed convolution instead.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        transpose: bool = False,
    ):
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        self.conv = conv(
            in_channels + 1,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.ndim != 4:
            raise NeurodeInputError(
                f"ConcatConv2d expects (batch, channels, height, width), got {tuple(h.shape)}."
            )
        return self.conv(concat_time(t, h, 1))
