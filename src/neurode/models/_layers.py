"""Small building blocks shared by the models: MLPs, an autonomous vector field, and
the solve with a model's stored solver settings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..api import solve

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


def _solve_states(
    owner: nn.Module, func: nn.Module, y0: torch.Tensor, times: torch.Tensor
) -> torch.Tensor:
    """States ``(len(times), *y0.shape)`` of ``func`` solved with ``owner``'s
    ``method``, ``rtol``, ``atol``, ``options``, ``gradient`` and ``gradient_options``."""
    return solve(
        func,
        y0,
        times,
        method=owner.method,
        rtol=owner.rtol,
        atol=owner.atol,
        options=owner.options,
        gradient=owner.gradient,
        gradient_options=owner.gradient_options,
    ).ys
