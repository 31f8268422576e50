"""The divergence ``tr(∂f/∂z)`` of a vector field, exactly or by Hutchinson's estimator.

For ``f: R^d -> R^d`` evaluated on a batch, with ``J = ∂f/∂z``:

- exact: ``tr J = Σ_i ∂f_i/∂z_i``, one vector-Jacobian product per dimension;
- Hutchinson: ``tr J = E[εᵀ J ε]`` for any noise with ``E[ε εᵀ] = I``
  (standard Gaussian or Rademacher ±1), one vector-Jacobian product in all.

The same product ``εᵀ J`` also estimates ``‖J‖_F² = E‖εᵀ J‖²``, the Jacobian
regulariser of RNODE. Probes come from :func:`neurode.nn.regularisers.sample_probe`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..nn._vector_jacobian import value_and_vjps
from ..nn.regularisers import NOISE_KINDS, sample_probe

__all__ = ["PROBE_DISTRIBUTIONS", "exact_divergence", "hutchinson_divergence", "sample_probe"]

PROBE_DISTRIBUTIONS = NOISE_KINDS
"""Hutchinson probe distributions accepted by :func:`sample_probe`."""


def exact_divergence(
    f: torch.Tensor, z: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """``tr(∂f/∂z)`` per batch row; ``f`` (a function of ``z``) and ``z`` are ``(B, d)``."""
    return _exact_jacobian_terms(f, z, create_graph, frobenius=False)[0]


def hutchinson_divergence(
    f: torch.Tensor, z: torch.Tensor, noise: torch.Tensor, *, create_graph: bool = False
) -> torch.Tensor:
    """Unbiased estimate ``εᵀ (∂f/∂z) ε`` of the divergence, one probe ``ε`` per batch row."""
    return _hutchinson_jacobian_terms(f, z, noise, create_graph)[0]


def _exact_jacobian_terms(
    f: torch.Tensor, z: torch.Tensor, create_graph: bool, frobenius: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Exact trace and (optionally) squared Frobenius norm of the per-row Jacobian."""
    trace = torch.zeros_like(f[:, 0])
    frobenius_sq = torch.zeros_like(f[:, 0]) if frobenius else None
    for i in range(f.shape[1]):
        row = torch.autograd.grad(f[:, i].sum(), z, create_graph=create_graph, retain_graph=True)[0]
        trace = trace + row[:, i]
        if frobenius:
            frobenius_sq = frobenius_sq + (row**2).sum(-1)
    return trace, frobenius_sq


def _hutchinson_jacobian_terms(
    f: torch.Tensor, z: torch.Tensor, noise: torch.Tensor, create_graph: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Estimates ``εᵀ J ε`` of the trace and ``‖εᵀ J‖²`` of the squared Frobenius norm."""
    noise_jacobian = torch.autograd.grad(f, z, noise, create_graph=create_graph, retain_graph=True)[
        0
    ]
    return (noise_jacobian * noise).sum(-1), (noise_jacobian**2).sum(-1)


def field_and_jacobian_terms(
    field: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, probe: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f = field(z)``, its divergence and its squared Jacobian Frobenius norm, per row.

    Exact (one vector-Jacobian product per dimension) when ``probe`` is ``None``,
    else Hutchinson's estimates ``εᵀ J ε`` and ``‖εᵀ J‖²`` with the probe ``ε``
    ``(B, d)``. Works wherever a vector field is evaluated: under ``no_grad``,
    with a graph for backpropagation, and inside ``torch.func`` transforms
    (forward sensitivities).
    """
    if probe is None:
        eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
        f, rows = value_and_vjps(field, z, [eye[i].expand_as(z) for i in range(z.shape[-1])])
        trace = sum(row[:, i] for i, row in enumerate(rows))
        frobenius_sq = sum((row**2).sum(-1) for row in rows)
        return f, trace, frobenius_sq
    f, (probe_jacobian,) = value_and_vjps(field, z, (probe,))
    return f, (probe_jacobian * probe).sum(-1), (probe_jacobian**2).sum(-1)
