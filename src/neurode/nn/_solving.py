"""Shared machinery of the layers that call the solver: configuration, regularisation, stats."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..api import solve
from ..errors import NeurodeInputError
from .regularisers import NOISE_KINDS, regularised_solve, validate_regularisation


def _check_tolerance(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NeurodeInputError(f"{name} must be a number, got {value!r}.")
    if not math.isfinite(value) or value < 0:
        raise NeurodeInputError(f"{name} must be finite and non-negative, got {value}.")
    return float(value)


def _check_state(y0: Any, what: str) -> Tensor:
    if not isinstance(y0, Tensor):
        raise NeurodeInputError(f"{what} must be a torch.Tensor, got {type(y0).__name__}.")
    if not y0.is_floating_point():
        raise NeurodeInputError(f"{what} must have a floating dtype, got {y0.dtype}.")
    return y0


class _SolvingModule(nn.Module):
    """Base of :class:`ODEBlock` and :class:`NeuralODE`.

    Holds the solver settings, runs :func:`neurode.solve` (or
    :func:`regularised_solve` when a regularisation is set), and keeps the
    ``stats`` dict of the last solve. The gradient method adds
    ``nfe_backward`` to that same dict while the backward pass runs, so
    :attr:`nfe_backward` is read from it on access rather than copied.
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        *,
        method: str,
        rtol: float,
        atol: float,
        gradient: str,
        options: Mapping[str, Any] | None,
        gradient_options: Mapping[str, Any] | None,
        regularisation: Mapping[str, float] | None,
        noise: str,
        generator: torch.Generator | None,
    ) -> None:
        super().__init__()
        if not callable(dynamics):
            raise NeurodeInputError(
                f"dynamics must be callable as dynamics(t, h), got {type(dynamics).__name__}."
            )
        if gradient != "direct" and not isinstance(dynamics, nn.Module):
            raise NeurodeInputError(
                f"gradient={gradient!r} solves for the gradients of the dynamics' parameters, "
                "which it finds through nn.Module.parameters(); make the dynamics an "
                "nn.Module (or use gradient='direct')."
            )
        if not isinstance(method, str):
            raise NeurodeInputError(f"method must be a string, got {method!r}.")
        if not isinstance(gradient, str):
            raise NeurodeInputError(f"gradient must be a string, got {gradient!r}.")
        if options is not None and not isinstance(options, Mapping):
            raise NeurodeInputError(f"options must be a dict, got {type(options).__name__}.")
        if gradient_options is not None and not isinstance(gradient_options, Mapping):
            raise NeurodeInputError(
                f"gradient_options must be a dict, got {type(gradient_options).__name__}."
            )
        if noise not in NOISE_KINDS:
            raise NeurodeInputError(f"noise must be one of {NOISE_KINDS}, got {noise!r}.")
        self.dynamics = dynamics
        self.method = method
        self.rtol = _check_tolerance("rtol", rtol)
        self.atol = _check_tolerance("atol", atol)
        self.gradient = gradient
        self.options = dict(options) if options is not None else None
        self.gradient_options = dict(gradient_options) if gradient_options is not None else None
        self.regularisation = validate_regularisation(regularisation)
        self.noise = noise
        self.generator = generator
        self.regularisation_loss: Tensor | None = None
        self._stats: dict | None = None

    @property
    def stats(self) -> dict | None:
        """The ``stats`` dict of the last solve (``nfe``, ``steps``, ``accepted``, ``rejected``,
        and ``nfe_backward`` once a gradient method has run backward); ``None`` before any."""
        return self._stats

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the last forward solve (0 before any)."""
        return int(self._stats.get("nfe", 0)) if self._stats is not None else 0

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the backward pass of the last solve.

        0 until a backward pass has run, and for ``gradient="direct"``, which
        backpropagates through the recorded steps without evaluating the dynamics.
        """
        return int(self._stats.get("nfe_backward", 0)) if self._stats is not None else 0

    def _solve_kwargs(self) -> dict[str, Any]:
        return dict(
            method=self.method,
            rtol=self.rtol,
            atol=self.atol,
            gradient=self.gradient,
            options=self.options,
            gradient_options=self.gradient_options,
        )

    def _integrate(self, y0: Tensor, t: Tensor) -> Tensor:
        """Solve from ``y0`` at the times ``t``; return the trajectory ``(len(t), *y0.shape)``."""
        if self.regularisation:
            result = regularised_solve(
                self.dynamics,
                y0,
                t,
                self.regularisation,
                noise=self.noise,
                generator=self.generator,
                **self._solve_kwargs(),
            )
            self.regularisation_loss = result.loss
            self._stats = result.stats
            return result.ys
        solution = solve(self.dynamics, y0, t, **self._solve_kwargs())
        self._stats = solution.stats
        return solution.ys

    def extra_repr(self) -> str:
        parts = [
            f"method={self.method!r}",
            f"rtol={self.rtol:g}",
            f"atol={self.atol:g}",
            f"gradient={self.gradient!r}",
        ]
        if self.regularisation:
            parts.append(f"regularisation={self.regularisation}")
        return ", ".join(parts)
