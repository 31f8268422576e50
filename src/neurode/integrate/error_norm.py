"""The error norm: how large a step's error estimate is against the tolerances.

    ratio = ‖ e / (atol + rtol · max(|y_n|, |y_{n+1}|)) ‖

with the root-mean-square norm by default (HNW I §II.4), over the whole state
or, for per-sample batching, over each row of it. A step is accepted when
``ratio <= 1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of all elements."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def rms_rows(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of each row (first dimension), as float64 of shape ``(B,)``."""
    flat = x.abs().reshape(x.shape[0], -1).double()
    return flat.square().mean(dim=1).sqrt()


_TOLERANCE_TENSORS: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def _tolerance_tensor(
    value: float | torch.Tensor, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A tolerance as a tensor; the 0-dim ones of plain floats are made once and shared."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype=dtype, device=device)
    key = (float(value), dtype, device)
    tensor = _TOLERANCE_TENSORS.get(key)
    if tensor is None:
        if len(_TOLERANCE_TENSORS) > 256:
            _TOLERANCE_TENSORS.clear()
        tensor = _TOLERANCE_TENSORS[key] = torch.tensor(float(value), dtype=dtype, device=device)
    return tensor


def _detached(x: torch.Tensor) -> torch.Tensor:
    return x.detach() if x.requires_grad else x


class ErrorNorm:
    """The error ratio of the steps of one solve, with the per-solve work done once.

    The tolerances become tensors once; ``atol + rtol·|y|`` of a state is kept
    and reused when that state starts the next step (or the same step again
    after a rejection), since ``max(|y0|, |y1|)`` scaled equals the maximum of
    the two scaled terms; and the default RMS norm is one dot product.

    ``per_row=True`` gives one ratio per row of the state (a float64 ``(B,)``
    tensor) instead of one float.
    """

    def __init__(
        self,
        like: torch.Tensor,
        rtol: float | torch.Tensor,
        atol: float | torch.Tensor,
        norm: Norm | None = None,
        *,
        per_row: bool = False,
    ):
        dtype = like.real.dtype if like.is_complex() else like.dtype
        self.rtol, self.atol = rtol, atol
        self._rtol = _tolerance_tensor(rtol, dtype, like.device)
        self._atol = _tolerance_tensor(atol, dtype, like.device)
        self.norm = norm
        self.per_row = per_row
        self._dot = norm is None and not per_row and like.dtype in (torch.float32, torch.float64)
        self._count = max(like.numel(), 1)
        self._cache: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    def scale(self, y: torch.Tensor) -> torch.Tensor:
        """``atol + rtol · |y|`` (reused when ``y`` is one of the latest step's states)."""
        for state, scale in self._cache:
            if state is y:
                return scale
        return torch.addcmul(self._atol, _detached(y).abs(), self._rtol)

    def size(self, scaled: torch.Tensor) -> float | torch.Tensor:
        """The norm of an already scaled tensor: a float, or one per row."""
        if self.per_row:
            return rms_rows(scaled)
        if self._dot:
            flat = scaled.reshape(-1)
            return math.sqrt(float(torch.dot(flat, flat)) / self._count)
        if self.norm is None:
            return float(rms_norm(scaled))
        return float(self.norm(scaled))

    def ratio(
        self, error_estimate: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor
    ) -> float | torch.Tensor:
        """``‖ e / (atol + rtol · max(|y0|, |y1|)) ‖``."""
        scale0, scale1 = self.scale(y0), self.scale(y1)
        self._cache = ((y0, scale0), (y1, scale1))
        return self.size(_detached(error_estimate) / torch.maximum(scale0, scale1))


__all__ = ["ErrorNorm", "Norm", "rms_norm", "rms_rows"]
