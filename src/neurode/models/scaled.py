r"""A vector field learned in normalised units of state and time.

A network initialised for inputs and outputs of order one learns slowly,
or not at all, when the data live on other scales: a pendulum of
:math:`g/L = 16` with amplitudes of a radian has angular velocities of 4 rad/s
and accelerations of 16 rad/s², and one of :math:`g/L = 1` oscillates over
six seconds. :class:`ScaledDynamics` lets the network :math:`g` see the state
in units of its typical size :math:`s` and time in units of a
characteristic time :math:`\tau` of the data:

.. math::

    \frac{dy}{dt} = \frac{1}{\tau}\, s \odot g\!\left(t/\tau,\ y \oslash s\right),

so that :math:`u = y \oslash s` obeys :math:`du/d(t/\tau) = g(\cdot, u)`: every
problem becomes an oscillation of unit amplitude and unit angular frequency
for the network. The scales are fixed buffers (chosen from the data before
training), not parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError

__all__ = ["ScaledDynamics"]


class ScaledDynamics(nn.Module):
    """``f(t, y) = s * g(t / tau, y / s) / tau`` for a network ``g`` (module docstring).

    Args:
        network: the vector field ``g(t, u)`` in normalised units.
        state_scale: one positive scale per state component (or one for all).
        time_scale: the characteristic time :math:`\\tau > 0`.
    """

    def __init__(
        self, network: nn.Module, state_scale: float | Sequence[float], time_scale: float = 1.0
    ):
        super().__init__()
        scale = torch.as_tensor(state_scale, dtype=torch.float64).reshape(-1)
        if not (torch.isfinite(scale).all() and (scale > 0).all()) or scale.numel() == 0:
            raise NeurodeInputError(f"state_scale must be positive and finite, got {state_scale}")
        if not (isinstance(time_scale, int | float) and math.isfinite(time_scale)) or not (
            time_scale > 0
        ):
            raise NeurodeInputError(f"time_scale must be positive and finite, got {time_scale}")
        self.network = network
        dtype = next((p.dtype for p in network.parameters()), torch.float64)
        self.register_buffer("state_scale", scale.to(dtype))
        self.time_scale = float(time_scale)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        u = y / self.state_scale
        return self.state_scale * self.network(t / self.time_scale, u) / self.time_scale

    def extra_repr(self) -> str:
        scales = ", ".join(f"{float(s):.4g}" for s in self.state_scale)
        return f"state_scale=({scales}), time_scale={self.time_scale:.4g}"
