"""Argument checks shared by the solve entry points and the gradient methods.

A low layer: imports only :mod:`neurode.errors`, the tuple layout and torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidToleranceError
from .tuple_state import TupleLayout

__all__ = ["check_tolerance", "check_tolerance_pair"]


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
        broadcast = torch.broadcast_shapes(tensor.shape, like.shape)
    except RuntimeError:
        broadcast = None
    if broadcast != like.shape:
        # A tolerance that would widen the state (shape (1, 2) for a (2,) state) is as
        # wrong as one that does not broadcast at all.
        raise InvalidToleranceError(
            f"{name} of shape {tuple(tensor.shape)} does not broadcast to {target} "
            f"{tuple(like.shape)} without changing its shape"
        )
    return tensor


def check_tolerance_pair(
    rtol: Any,
    atol: Any,
    like: torch.Tensor,
    *,
    layout: TupleLayout | None = None,
    target: str = "the state",
    prefix: str = "",
) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Both tolerances checked as :func:`check_tolerance`, and never both zero anywhere.

    With ``rtol = atol = 0`` the error test divides by zero wherever the state is
    zero: no step would ever be accepted, so it is refused before the solve.
    """
    rtol = check_tolerance(f"{prefix}rtol", rtol, like, layout=layout, target=target)
    atol = check_tolerance(f"{prefix}atol", atol, like, layout=layout, target=target)
    if isinstance(rtol, float) and isinstance(atol, float):
        both_zero = rtol == 0.0 and atol == 0.0
    else:
        both_zero = bool(((torch.as_tensor(rtol) == 0) & (torch.as_tensor(atol) == 0)).any())
    if both_zero:
        raise InvalidToleranceError(
            f"{prefix}rtol and {prefix}atol are both zero (for some component): the error test "
            "would divide by zero; give a positive atol (e.g. 1e-9) or rtol"
        )
    return rtol, atol
