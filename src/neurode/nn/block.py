r"""ODEBlock: a continuous-depth replacement for a residual block.

A residual block computes :math:`h \mapsto h + f(h)`, one Euler step of
:math:`\dot h = f(t, h)`. An ODE block instead returns the exact flow

.. math::

    h(t_1) = h(t_0) + \int_{t_0}^{t_1} f(t, h(t))\, dt, \qquad h(t_0) = x,

computed by an adaptive solver, with gradients from one of neurode's gradient
methods (the default, ``"backsolve"``, is the adjoint of Chen et al. 2018 with
memory independent of the number of steps).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import InvalidTimesError, NeurodeInputError
from ._solving import _check_state, _SolvingModule
from .steer import steer_end_time, validate_steer_half_width


def _check_time(name: str, value: float) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise InvalidTimesError(f"{name} must be a scalar, got shape {tuple(value.shape)}.")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTimesError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value):
        raise InvalidTimesError(f"{name} must be finite, got {value}.")
    return float(value)


def _check_times(times: Tensor | Sequence[float], t0: float) -> Tensor:
    times = torch.as_tensor(times, dtype=torch.float64).detach()
    if times.ndim != 1 or times.numel() < 2:
        raise InvalidTimesError("times must be a 1-D sequence of at least two times.")
    if not torch.isfinite(times).all():
        raise InvalidTimesError("times must be finite.")
    steps = times.diff()
    if not ((steps > 0).all() or (steps < 0).all()):
        raise InvalidTimesError("times must be strictly increasing or strictly decreasing.")
    if times[0].item() != t0:
        raise InvalidTimesError(f"times must start at t0={t0}, got {times[0].item()}.")
    return times


class ODEBlock(_SolvingModule):
    r"""Integrate ``dynamics(t, h)`` from ``t0`` to ``t1`` starting at the input.

    Args:
        dynamics: module (or callable) ``f(t, h)`` returning a tensor shaped like ``h``.
            An ``nn.Module`` is required by gradient methods that need its parameters.
        t0, t1: the integration span; ``t1 < t0`` integrates backwards.
        method, rtol, atol, options: solver settings passed to :func:`neurode.solve`.
        gradient, gradient_options: how gradients are computed (``"backsolve"``,
            ``"direct"``, ``"checkpoint"``, ``"reversible"``, ``"forward"``).
        return_trajectory: return the states at ``times`` (default ``[t0, t1]``),
            shaped ``(len(times), *x.shape)``, instead of the final state.
        times: save times for ``return_trajectory``; must start at ``t0``.
        regularisation: ``{"kinetic": λ_k, "jacobian": λ_j}``; the weighted
            penalties of :mod:`neurode.nn.regularisers` are integrated with the
            state and stored in :attr:`regularisation_loss` after each forward
            (``None`` without regularisation); the next forward replaces it, so
            with several forward passes before one backward, collect it after each.
        noise: Hutchinson probe for the Jacobian penalty, ``"gaussian"`` or ``"rademacher"``.
        steer: STEER half-width ``b``: in training mode the end time is drawn from
            ``U[t1 - b, t1 + b]`` at every forward; evaluation uses ``t1``.
        generator: optional random generator for the STEER draw and the probes.

    Attributes:
        nfe_forward, nfe_backward: function evaluations of the last forward and
            backward pass; ``stats``: the last solve's statistics dict.
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        *,
        t0: float = 0.0,
        t1: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        gradient: str = "backsolve",
        options: Mapping[str, Any] | None = None,
        gradient_options: Mapping[str, Any] | None = None,
        return_trajectory: bool = False,
        times: Tensor | Sequence[float] | None = None,
        regularisation: Mapping[str, float] | None = None,
        noise: str = "gaussian",
        steer: float = 0.0,
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
        self.t0 = _check_time("t0", t0)
        self.t1 = _check_time("t1", t1)
        if self.t0 == self.t1:
            raise InvalidTimesError(f"t0 and t1 must differ, both are {self.t0}.")
        self.steer = validate_steer_half_width(steer, self.t0, self.t1)
        self.return_trajectory = bool(return_trajectory)
        if times is not None:
            if not self.return_trajectory:
                raise NeurodeInputError("times is only used with return_trajectory=True.")
            if self.steer:
                raise NeurodeInputError(
                    "steer perturbs the end time and cannot be combined with fixed save times."
                )
            self.times: Tensor | None = _check_times(times, self.t0)
        else:
            self.times = None

    def _end_time(self, t1: float | None) -> float:
        end = self.t1 if t1 is None else _check_time("t1", t1)
        if self.training and self.steer:
            end = steer_end_time(end, self.steer, self.generator)
        if end == self.t0:
            raise InvalidTimesError(f"The end time {end} equals t0.")
        return end

    def forward(self, x: Tensor, t1: float | None = None) -> Tensor:
        """Return :math:`h(t_1)` for :math:`h(t_0) = x`, or the trajectory (``return_trajectory``).

        ``t1`` overrides the block's end time for this call.
        """
        x = _check_state(x, "x")
        if self.times is not None:
            if t1 is not None:
                raise NeurodeInputError("t1 cannot be overridden when the block has fixed times.")
            t = self.times.to(dtype=x.dtype, device=x.device)
        else:
            t = torch.tensor([self.t0, self._end_time(t1)], dtype=x.dtype, device=x.device)
        trajectory = self._integrate(x, t)
        return trajectory if self.return_trajectory else trajectory[-1]

    def extra_repr(self) -> str:
        parts = [f"t0={self.t0:g}", f"t1={self.t1:g}", super().extra_repr()]
        if self.steer:
            parts.append(f"steer={self.steer:g}")
        return ", ".join(parts)
