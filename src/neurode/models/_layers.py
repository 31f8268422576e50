"""Small building blocks shared by the models: MLPs and an autonomous vector field."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
}


def _mlp(sizes: Sequence[int], activation: str = "tanh") -> nn.Sequential:
    """Fully connected ``sizes[0] -> ... -> sizes[-1]``, no activation after the last layer."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class _AutonomousField(nn.Module):
    """Vector field ``f(t, y) = net(y)`` that ignores time."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)
