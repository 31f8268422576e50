"""Continuous normalizing flow (FFJORD; Grathwohl et al. 2019), with RNODE regularisers.

Samples move from the base distribution ``p_0 = N(0, I)`` at ``t = 0`` to the
data at ``t = T`` along ``dz/dt = f(t, z)``. Along a trajectory the log-density
obeys the instantaneous change of variables

    d log p_t(z(t)) / dt = -tr(∂f/∂z (t, z(t))),

so for a data point ``x = z(T)``

    log p_T(x) = log p_0(z(0)) - ∫_0^T tr(∂f/∂z) dt,

computed by solving the augmented state ``(z, ℓ)`` with ``dℓ/dt = -tr(∂f/∂z)``
backwards from ``(x, 0)`` at ``T`` to ``t = 0``, where ``ℓ(0) = ∫_0^T tr dt``.
For linear dynamics ``f = A z`` this gives the Gaussian push-forward
``log p_T(x) = log N(e^{-AT} x; 0, I) - T tr A``.

The trace is exact (``d`` vector-Jacobian products, fine for small ``d``) or
Hutchinson's estimate ``εᵀ J ε`` with one probe ``ε`` per sample, drawn once
per solve and reused at every evaluation (so the integrand is a smooth function
of time for the step-size controller).

RNODE (Finlay et al. 2020) adds ``λ_K ∫ ‖f‖² dt + λ_J ∫ ‖∂f/∂z‖_F² dt`` to the
loss; both integrals ride along in the same solve, the Jacobian term reusing
the product ``εᵀ J`` of the trace estimate.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..errors import NeurodeInputError, ShapeMismatchError
from ._layers import _solve_states
from .divergence import PROBE_DISTRIBUTIONS, field_and_jacobian_terms, sample_probe

TRACE_ESTIMATORS = ("exact", "hutchinson")


class CNFOutput(NamedTuple):
    """Density evaluation of a batch ``x`` of shape ``(B, d)``.

    ``log_prob`` ``(B,)``; ``base`` ``(B, d)``, the points ``z(0)`` that flow to
    ``x``; ``kinetic`` ``∫_0^T ‖f‖² dt`` and ``jacobian`` ``∫_0^T ‖∂f/∂z‖_F² dt``
    ``(B,)`` when the model is regularised, otherwise ``None``.
    """

    log_prob: torch.Tensor
    base: torch.Tensor
    kinetic: torch.Tensor | None
    jacobian: torch.Tensor | None


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last axis."""
    return -0.5 * (z**2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class _EvaluationCount:
    """Evaluations of a CNF's augmented fields, shared by the fields of all its solves."""

    def __init__(self) -> None:
        self.count = 0


class _SolveField(nn.Module):
    """``(z, ℓ[, kinetic, jacobian]) ↦ (f, -tr ∂f/∂z[, ‖f‖², ‖∂f/∂z‖_F²])`` for one solve.

    The divergence estimator, the Hutchinson probe (``None`` for the exact trace)
    and whether the regularisers ride along are fixed when the field is built:
    a gradient method that evaluates the field again in its backward pass
    (``backsolve``, ``checkpoint``, ``reversible``) then sees the probe of this
    solve, even when other solves of the same CNF ran in between. The field
    holds the CNF's ``dynamics`` as a submodule, so its parameters are the
    dynamics' own.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        dim: int,
        probe: torch.Tensor | None,
        regularise: bool,
        evaluations: _EvaluationCount,
    ):
        super().__init__()
        self.dynamics = dynamics
        self.dim = dim
        self.probe = probe
        self.regularise = regularise
        self._evaluations = evaluations

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        self._evaluations.count += 1
        z = state[:, : self.dim]
        probe = None if self.probe is None else self.probe.to(z.dtype)
        f, trace, frobenius_sq = field_and_jacobian_terms(lambda z_: self.dynamics(t, z_), z, probe)
        parts = [f, -trace[:, None]]
        if self.regularise:
            parts += [(f**2).sum(-1, keepdim=True), frobenius_sq[:, None]]
        return torch.cat(parts, dim=-1)


class _AugmentedField(nn.Module):
    """Holds the CNF's dynamics and builds the augmented field of each solve."""

    def __init__(self, dynamics: nn.Module, dim: int):
        super().__init__()
        self.dynamics = dynamics
        self.dim = dim
        self.evaluations = _EvaluationCount()

    @property
    def nfe(self) -> int:
        return self.evaluations.count

    def for_solve(self, probe: torch.Tensor | None, regularise: bool) -> _SolveField:
        """The augmented field of one solve: exact trace when ``probe`` is ``None``."""
        return _SolveField(self.dynamics, self.dim, probe, regularise, self.evaluations)


class CNF(nn.Module):
    """Continuous normalizing flow on ``R^dim`` with a standard normal base at ``t = 0``.

    Args:
        dynamics: the vector field ``f(t, z)`` for ``z`` of shape ``(B, dim)``,
            e.g. :class:`neurode.models.ConcatSquashMLP`.
        dim: the dimension ``d`` of the data.
        t1: the integration time ``T``.
        trace: ``"exact"`` or ``"hutchinson"``, the divergence used in training.
        noise: the Hutchinson probe distribution, ``"rademacher"`` or ``"gaussian"``.
        method, rtol, atol, options, gradient, gradient_options: passed to
            :func:`neurode.solve`.
        kinetic_weight, jacobian_weight: RNODE weights ``λ_K``, ``λ_J`` used by
            :meth:`loss`; either positive makes :meth:`forward` integrate both terms.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        dim: int,
        *,
        t1: float = 1.0,
        trace: str = "hutchinson",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        options: dict | None = None,
        gradient: str = "direct",
        gradient_options: dict | None = None,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
    ):
        super().__init__()
        if dim < 1:
            raise NeurodeInputError(f"dim must be positive, got {dim}")
        if not t1 > 0:
            raise NeurodeInputError(f"t1 must be positive, got {t1}")
        _check_trace(trace)
        if noise not in PROBE_DISTRIBUTIONS:
            raise NeurodeInputError(f"unknown noise {noise!r}; choose from {PROBE_DISTRIBUTIONS}")
        if kinetic_weight < 0 or jacobian_weight < 0:
            raise NeurodeInputError("regulariser weights must be >= 0")
        self.dim = dim
        self.t1 = float(t1)
        self.trace = trace
        self.noise = noise
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.gradient_options = gradient_options
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.field = _AugmentedField(dynamics, dim)

    @property
    def dynamics(self) -> nn.Module:
        return self.field.dynamics

    @property
    def nfe(self) -> int:
        """Evaluations of the augmented field so far (forward and any adjoint backward)."""
        return self.field.nfe

    @property
    def regularised(self) -> bool:
        return self.kinetic_weight > 0 or self.jacobian_weight > 0

    def _solve(self, func: nn.Module, state: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        return _solve_states(self, func, state, times)

    def _times(self, start: float, end: float, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor([start, end], dtype=like.dtype, device=like.device)

    def _check_points(self, x: torch.Tensor, name: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ShapeMismatchError(f"{name} must have shape (batch, {self.dim}), got {shape}")
        if not torch.is_floating_point(x):
            raise NeurodeInputError(f"{name} must be floating point, got {x.dtype}")

    def forward(
        self,
        x: torch.Tensor,
        *,
        trace: str | None = None,
        generator: torch.Generator | None = None,
    ) -> CNFOutput:
        """Log-density of ``x`` ``(B, d)`` under the flow, by solving from ``T`` back to 0."""
        self._check_points(x, "x")
        trace = self.trace if trace is None else trace
        _check_trace(trace)
        extra = 3 if self.regularised else 1
        state = torch.cat([x, x.new_zeros(x.shape[0], extra)], dim=-1)
        probe = sample_probe(x, self.noise, generator) if trace == "hutchinson" else None
        field = self.field.for_solve(probe, self.regularised)
        end = self._solve(field, state, self._times(self.t1, 0.0, x))[-1]
        base = end[:, : self.dim]
        log_prob = standard_normal_log_prob(base) - end[:, self.dim]
        # Integrating from T down to 0 accumulates -∫_0^T of each regulariser.
        kinetic = -end[:, self.dim + 1] if self.regularised else None
        jacobian = -end[:, self.dim + 2] if self.regularised else None
        return CNFOutput(log_prob, base, kinetic, jacobian)

    def log_prob(self, x: torch.Tensor, *, trace: str | None = None) -> torch.Tensor:
        """``log p_T(x)`` for each row of ``x`` ``(B, d)``."""
        return self(x, trace=trace).log_prob

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, CNFOutput]:
        """Training loss ``-mean log p(x) + λ_K mean ∫‖f‖² + λ_J mean ∫‖J‖_F²`` and the output."""
        output = self(x)
        loss = -output.log_prob.mean()
        if self.regularised:
            loss = loss + self.kinetic_weight * output.kinetic.mean()
            loss = loss + self.jacobian_weight * output.jacobian.mean()
        return loss, output

    def flow(self, z0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Push base points ``z0`` ``(B, d)`` along the flow; ``(len(times), B, d)``.

        ``times`` is monotonic and starts at the time of ``z0`` (0 for base samples).
        """
        self._check_points(z0, "z0")
        return self._solve(self.dynamics, z0, times.to(z0.dtype))

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """The base points ``z(0)`` that flow to ``x`` at ``T``."""
        self._check_points(x, "x")
        return self._solve(self.dynamics, x, self._times(self.t1, 0.0, x))[-1]

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        return_log_prob: bool = False,
        trace: str = "exact",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples ``(n, d)``; with ``return_log_prob`` also their log-density ``(n,)``.

        The log-density is carried along the forward solve from ``log p_0(z0)``,
        with the exact trace unless ``trace="hutchinson"``.
        """
        if not isinstance(n, int) or n < 1:
            raise NeurodeInputError(f"n must be a positive integer, got {n!r}")
        _check_trace(trace)
        reference = next(self.parameters(), None)
        dtype = dtype or (reference.dtype if reference is not None else torch.get_default_dtype())
        device = device or (reference.device if reference is not None else None)
        z0 = torch.randn(n, self.dim, generator=generator, dtype=dtype, device=device)
        times = self._times(0.0, self.t1, z0)
        if not return_log_prob:
            return self._solve(self.dynamics, z0, times)[-1]
        state = torch.cat([z0, standard_normal_log_prob(z0)[:, None]], dim=-1)
        probe = sample_probe(z0, self.noise, generator) if trace == "hutchinson" else None
        end = self._solve(self.field.for_solve(probe, False), state, times)[-1]
        return end[:, : self.dim], end[:, self.dim]


def _check_trace(trace: str) -> None:
    if trace not in TRACE_ESTIMATORS:
        raise NeurodeInputError(f"unknown trace {trace!r}; choose from {TRACE_ESTIMATORS}")
