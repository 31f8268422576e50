"""Time-conditioned layers for CNF vector fields (FFJORD's "concatsquash").

A concatsquash layer maps ``(t, x)`` to

    y = (W x + b) ⊙ σ(w_g t + b_g) + w_b t,

a linear layer whose output is gated and shifted by learned functions of time,
so ``f(t, z)`` can change smoothly along the flow.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import NeurodeInputError
from ._layers import _ACTIVATIONS


class ConcatSquashLinear(nn.Module):
    """``y = (W x + b) * sigmoid(w_g t + b_g) + w_b t`` for ``x`` of shape ``(..., in)``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.shift = nn.Linear(1, out_features, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        t = t.reshape(1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.shift(t)


class ConcatSquashMLP(nn.Module):
    """Vector field ``f(t, z)`` made of concatsquash layers: ``dim -> hidden... -> dim``."""

    def __init__(self, dim: int, hidden: Sequence[int] = (64, 64, 64), activation: str = "tanh"):
        super().__init__()
        if dim < 1 or any(h < 1 for h in hidden):
            raise NeurodeInputError("dim and hidden widths must be positive")
        if activation not in _ACTIVATIONS:
            raise NeurodeInputError(
                f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}"
            )
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(
            ConcatSquashLinear(n_in, n_out)
            for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            z = layer(t, z)
            if i < len(self.layers) - 1:
                z = self.activation(z)
        return z
