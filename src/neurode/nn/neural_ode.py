r"""NeuralODE: a learned vector field evaluated along a trajectory.

Given dynamics :math:`f_\theta(t, y)`, an initial condition :math:`y_0` and save
times :math:`t_0, t_1, \dots, t_n` (increasing or decreasing, not necessarily
evenly spaced), the model returns :math:`y(t_0), \dots, y(t_n)` where
:math:`\dot y = f_\theta(t, y)`, :math:`y(t_0) = y_0`. This is the model for
fitting dynamics to time series: compare the trajectory with observations and
backpropagate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidTimesError
from ._solving import _check_state, _SolvingModule


class NeuralODE(_SolvingModule):
    r"""Trajectory of ``dynamics(t, y)`` at given times from batched initial conditions.

    Args:
        dynamics: module (or callable) ``f(t, y)``.
        method, rtol, atol, options: solver settings passed to :func:`neurode.solve`.
        gradient, gradient_options: gradient method and its settings.
        regularisation, noise, generator: as for :class:`ODEBlock`; the loss is
            stored in :attr:`regularisation_loss` after each forward.

    ``forward(y0, t)`` takes ``y0`` shaped ``(batch, ...)`` (or any shape the
    dynamics accept) and a 1-D strictly monotonic ``t`` whose first entry is the
    time of ``y0``; it returns ``(len(t), *y0.shape)``.

    Attributes:
        nfe_forward, nfe_backward, stats: as for :class:`ODEBlock`.
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        *,
        method: str = "dopri5",
        rtol: float = 1e-7,
        atol: float = 1e-9,
        gradient: str = "direct",
        options: Mapping[str, Any] | None = None,
        gradient_options: Mapping[str, Any] | None = None,
        regularisation: Mapping[str, float] | None = None,
        noise: str = "gaussian",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(
            dynamics,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            options=options,
            gradient_options=gradient_options,
            regularisation=regularisation,
            noise=noise,
            generator=generator,
        )

    def forward(self, y0: Tensor, t: Tensor | Sequence[float]) -> Tensor:
        """Return the trajectory ``(len(t), *y0.shape)`` starting from ``y0`` at ``t[0]``."""
        y0 = _check_state(y0, "y0")
        if isinstance(t, Tensor):
            t = t.to(device=y0.device)
        else:
            t = torch.as_tensor(t, dtype=y0.dtype, device=y0.device)
        if t.ndim != 1 or t.numel() < 2:
            raise InvalidTimesError(
                f"t must be a 1-D tensor of at least two times, got shape {tuple(t.shape)}."
            )
        return self._integrate(y0, t)
