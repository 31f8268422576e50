"""Interpolation inside one step from its end points: linear and cubic Hermite.

For methods without an interpolant of their own (fixed-grid solves save by
these, as torchdiffeq's do), on ``[t, t + h]`` at ``t + θ h``:

    linear:  (1 − θ) y0 + θ y1
    Hermite: h00 y0 + h h10 f0 + h01 y1 + h h11 f1,
             h00 = 2θ³ − 3θ² + 1, h10 = θ³ − 2θ² + θ, h01 = −2θ³ + 3θ², h11 = θ³ − θ²

(Hermite is third-order accurate). ``θ`` and ``h`` are floats, or ``(B,)``
tensors with one value per row of the state (per-sample batching).
"""

from __future__ import annotations

import torch


def row_scale(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` of shape ``(B,)`` as ``(B, 1, ..., 1)`` in the dtype of ``like``.

    A 0-dim ``values`` (one differentiated value for the whole state) stays 0-dim.
    """
    dtype = like.real.dtype if like.is_complex() else like.dtype
    if values.ndim == 0:
        return values.to(dtype)
    return values.to(dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def _as_factor(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    return row_scale(value, like) if isinstance(value, torch.Tensor) else value


def hermite_interpolate(
    y0: torch.Tensor,
    y1: torch.Tensor,
    f0: torch.Tensor,
    f1: torch.Tensor,
    step_size: float | torch.Tensor,
    theta: float | torch.Tensor,
) -> torch.Tensor:
    """Cubic Hermite interpolation on ``[t, t + h]`` at ``t + θ h``."""
    if not isinstance(theta, torch.Tensor):
        if theta == 0.0:
            return y0
        if theta == 1.0:
            return y1
    th = _as_factor(theta, y0)
    h = _as_factor(step_size, y0)
    t2 = th * th
    t3 = t2 * th
    h00 = 2 * t3 - 3 * t2 + 1
    h10 = (t3 - 2 * t2 + th) * h
    h01 = -2 * t3 + 3 * t2
    h11 = (t3 - t2) * h
    if isinstance(th, torch.Tensor):
        return h00 * y0 + h10 * f0 + h01 * y1 + h11 * f1
    result = y0 * h00
    result.add_(f0, alpha=h10).add_(y1, alpha=h01).add_(f1, alpha=h11)
    return result


def linear_interpolate(
    y0: torch.Tensor, y1: torch.Tensor, theta: float | torch.Tensor
) -> torch.Tensor:
    """``(1 − θ) y0 + θ y1``."""
    if isinstance(theta, torch.Tensor):
        return torch.lerp(y0, y1, row_scale(theta, y0))
    if theta == 0.0:
        return y0
    if theta == 1.0:
        return y1
    return torch.lerp(y0, y1, theta)


__all__ = ["hermite_interpolate", "linear_interpolate", "row_scale"]
