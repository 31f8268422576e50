"""Small helpers shared by the implicit steps: per-row step sizes, dtype casts, row flags.

In joint mode ``t`` and ``h`` are floats; in per-row mode they are ``(B,)``
tensors (float64) and a state has its rows in dimension 0.
"""

from __future__ import annotations

import torch


def is_per_row(h: float | torch.Tensor) -> bool:
    """Per-row step sizes are a ``(B,)`` tensor; a 0-dim tensor is one differentiable step."""
    return isinstance(h, torch.Tensor) and h.ndim > 0


def differentiable_step_in_state_dtype(
    h: float | torch.Tensor, like: torch.Tensor
) -> float | torch.Tensor:
    """A 0-dim tensor step (a differentiable time grid) in the state's real dtype.

    A float64 grid would otherwise promote a 0-dim float32 state to float64; floats
    and per-row ``(B,)`` steps are returned as they are.
    """
    if not isinstance(h, torch.Tensor) or h.ndim > 0:
        return h
    dtype = like.real.dtype if like.is_complex() else like.dtype
    return h if h.dtype == dtype else h.to(dtype)


def row_values(values: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A float as is; a ``(B,)`` tensor as ``(B, 1, …, 1)`` in ``like``'s dtype, to scale rows."""
    if not isinstance(values, torch.Tensor) or values.ndim == 0:
        return values
    return values.to(device=like.device, dtype=like.dtype).reshape((-1,) + (1,) * (like.ndim - 1))


def as_state(output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``func``'s output in the state's dtype (a wider output is cast, as the explicit steps do)."""
    return output if output.dtype == like.dtype else output.to(like.dtype)


def divide_rows(
    numerator: torch.Tensor, denominator: float | torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    """``numerator / denominator``, with ``fallback`` in rows whose denominator is 0 (``h = 0``)."""
    if not isinstance(denominator, torch.Tensor):
        return numerator / denominator if denominator != 0 else fallback
    zero = denominator == 0
    return torch.where(zero, fallback, numerator / torch.where(zero, 1.0, denominator))


def row_flags(value: bool, y0: torch.Tensor, per_row: bool) -> torch.Tensor:
    shape = (y0.shape[0],) if per_row else ()
    return torch.full(shape, value, dtype=torch.bool, device=y0.device)


def rows_finite(x: torch.Tensor, per_row: bool) -> torch.Tensor:
    finite = torch.isfinite(x)
    return finite.reshape(x.shape[0], -1).all(dim=1) if per_row else finite.all()


def mask_rows(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` where ``keep`` (``()`` or ``(B,)``), NaN elsewhere: a failed row is never a number."""
    shaped = keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim))
    return torch.where(shaped, x, torch.full_like(x, float("nan")))
