"""Argument checks shared by the solve entry points and the gradient methods.

A low layer: imports only :mod:`neurode.errors`, :mod:`neurode.state` and torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .errors import InvalidToleranceError
from .state import TupleLayout

__all__ = ["check_tolerance"]


def check_tolerance(
    name: str,
    value: Any,
    like: torch.Tensor,
    *,
    layout: TupleLayout | None = None,
    target: str = "the state",
) -> float | torch.Tensor:
    """A tolerance as a non-negative float, or a tensor broadcastable to ``like``.

    ``value`` is a number, anything :func:`torch.as_tensor` takes, or (when the
    state is a tuple, ``layout`` given) one value per tuple member. A single
    value comes back as a float; a tensor takes ``like``'s dtype and device.
    ``target`` names ``like`` in the error raised when the shapes do not
    broadcast. Raises :class:`InvalidToleranceError` for anything else.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise InvalidToleranceError(f"{name} must be a finite non-negative number, got {value}")
        return float(value)
    if isinstance(value, (tuple, list)) and layout is not None:
        if len(value) != len(layout.shapes):
            raise InvalidToleranceError(
                f"{name} has {len(value)} entries but y0 has {len(layout.shapes)} members"
            )
        value = torch.cat(
            [
                torch.full((n,), float(v), dtype=like.dtype, device=like.device)
                for v, n in zip(value, layout.numels)
            ]
        )
    try:
        tensor = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    except (TypeError, ValueError, RuntimeError):
        raise InvalidToleranceError(f"{name} must be a number or a tensor") from None
    if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
        raise InvalidToleranceError(f"{name} must be finite and non-negative")
    if tensor.numel() == 1:
        return float(tensor)
    try:
        torch.broadcast_shapes(tensor.shape, like.shape)
    except RuntimeError:
        raise InvalidToleranceError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to {target} "
            f"{tuple(like.shape)}"
        ) from None
    return tensor
