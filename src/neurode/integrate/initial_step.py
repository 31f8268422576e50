"""Hairer's starting step size (HNW I §II.4, "Starting step size").

With ``sc = atol + rtol·|y0|``, ``d0 = ‖y0/sc‖``, ``d1 = ‖f0/sc‖``:

    h0 = 0.01 d0/d1  (1e-6 when d0 or d1 < 1e-5),   y1 = y0 + h0 f0,
    d2 = ‖(f(t0 + h0, y1) − f0)/sc‖ / h0,
    h1 = (0.01 / max(d1, d2))^(1/(q+1))  (max(1e-6, 1e-3 h0) when both ≤ 1e-15),
    h  = min(100 h0, h1)

with ``q`` the order of the error estimate. One evaluation of ``f``. The norms
are the error norm's: over the whole state, or per row (then every quantity is
a ``(B,)`` tensor and each row gets its own step).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .error_norm import ErrorNorm


def initial_step_size(
    func: Callable[[float | torch.Tensor, torch.Tensor], torch.Tensor],
    t0: float | torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    error_norm: ErrorNorm,
) -> float | torch.Tensor:
    """The first step size; ``order`` is the order of the error estimate."""
    with torch.no_grad():
        y0, f0 = y0.detach(), f0.detach()
        scale = error_norm.scale(y0)
        d0 = error_norm.size(y0 / scale)
        d1 = error_norm.size(f0 / scale)
        if error_norm.per_row:
            return _per_row(func, t0, y0, f0, order, error_norm, scale, d0, d1)
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        f1 = func(t0 + h0, torch.add(y0, f0, alpha=h0))
        d2 = error_norm.size((f1 - f0) / scale) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    if not math.isfinite(h0) or not math.isfinite(h1):
        return 1e-6
    return min(100 * h0, h1)


def _per_row(func, t0, y0, f0, order, error_norm, scale, d0, d1) -> torch.Tensor:
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
    rows = h0.to(y0.dtype).reshape((-1,) + (1,) * (y0.ndim - 1))
    f1 = func(t0 + h0, y0 + rows * f0)
    d2 = error_norm.size((f1 - f0) / scale) / h0
    d12 = torch.maximum(d1, d2)
    h1 = torch.where(
        d12 <= 1e-15, torch.clamp(h0 * 1e-3, min=1e-6), (0.01 / d12) ** (1.0 / (order + 1))
    )
    h = torch.minimum(100 * h0, h1)
    return torch.where(torch.isfinite(h0) & torch.isfinite(h1), h, 1e-6)


__all__ = ["initial_step_size"]
