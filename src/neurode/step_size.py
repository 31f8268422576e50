"""Step-size control: error norm, PID controller, initial step selection.

The error of a step is measured relative to the tolerances,

    ratio = ‖ e / (atol + rtol · max(|y_n|, |y_{n+1}|)) ‖,

with the root-mean-square norm by default (HNW I §II.4). A step is accepted
when ``ratio <= 1``. The next step size follows the PID rule (Söderlind 2003,
in the parametrisation diffrax uses), with ``k`` the order of the error
estimate plus one:

    h_{n+1} = h_n · safety · r_n^{-β1/k} · r_{n-1}^{β2/k} · r_{n-2}^{-β3/k}
    β1 = pcoeff + icoeff + dcoeff,  β2 = pcoeff + 2 dcoeff,  β3 = dcoeff

clipped to ``[dfactor, ifactor]``. ``pcoeff = dcoeff = 0, icoeff = 1`` is the
classic integral controller.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root-mean-square of all elements."""
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


def error_ratio(
    error_estimate: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Norm | None,
) -> float:
    """``‖ e / (atol + rtol · max(|y0|, |y1|)) ‖`` as a Python float."""
    scale = torch.maximum(y0.detach().abs(), y1.detach().abs())
    scale = scale.mul_(rtol).add_(atol)
    scaled = error_estimate.detach() / scale
    value = rms_norm(scaled) if norm is None else norm(scaled)
    return float(value)


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
    """:func:`error_ratio` for the steps of one solve, with the per-solve work done once.

    The tolerances become tensors once; ``atol + rtol·|y|`` of a state is kept
    and reused when that state starts the next step (or the same step again
    after a rejection), since ``max(|y0|, |y1|)`` scaled equals the maximum of
    the two scaled terms; and the default RMS norm is one dot product.
    """

    def __init__(
        self,
        like: torch.Tensor,
        rtol: float | torch.Tensor,
        atol: float | torch.Tensor,
        norm: Norm | None,
    ):
        dtype = like.real.dtype if like.is_complex() else like.dtype
        self._rtol = _tolerance_tensor(rtol, dtype, like.device)
        self._atol = _tolerance_tensor(atol, dtype, like.device)
        self._norm = norm
        self._dot = norm is None and like.dtype in (torch.float32, torch.float64)
        self._count = max(like.numel(), 1)
        self._cache: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    def _scale(self, y: torch.Tensor) -> torch.Tensor:
        for state, scale in self._cache:
            if state is y:
                return scale
        return torch.addcmul(self._atol, _detached(y).abs(), self._rtol)

    def ratio(self, error_estimate: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor) -> float:
        """``‖ e / (atol + rtol · max(|y0|, |y1|)) ‖`` as a Python float."""
        scale0, scale1 = self._scale(y0), self._scale(y1)
        self._cache = ((y0, scale0), (y1, scale1))
        scaled = _detached(error_estimate) / torch.maximum(scale0, scale1)
        if self._dot:
            flat = scaled.reshape(-1)
            return math.sqrt(float(torch.dot(flat, flat)) / self._count)
        if self._norm is None:
            return float(rms_norm(scaled))
        return float(self._norm(scaled))


@dataclass
class PIDController:
    """Proposes the next step size from the error ratios of recent steps."""

    safety: float = 0.9
    ifactor: float = 10.0
    dfactor: float = 0.2
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    min_step: float = 0.0
    max_step: float = math.inf
    _history: list[float] = field(default_factory=lambda: [1.0, 1.0], repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.safety <= 1):
            raise ValueError(f"safety must be in (0, 1], got {self.safety}")
        if self.ifactor < 1 or not (0 < self.dfactor <= 1):
            raise ValueError(
                f"need ifactor >= 1 and 0 < dfactor <= 1, got {self.ifactor}, {self.dfactor}"
            )
        if self.min_step < 0 or self.max_step <= 0 or self.min_step > self.max_step:
            raise ValueError(
                f"need 0 <= min_step <= max_step and max_step > 0, "
                f"got {self.min_step}, {self.max_step}"
            )

    def reset(self) -> None:
        self._history = [1.0, 1.0]

    def clip(self, step_size: float) -> float:
        return min(max(step_size, self.min_step), self.max_step)

    def propose(self, step_size: float, ratio: float, order: int, accepted: bool) -> float:
        """Next step size after a step of ``step_size`` with error ratio ``ratio``."""
        if not math.isfinite(ratio):
            return self.clip(step_size * self.dfactor)
        if ratio == 0.0:
            factor = self.ifactor
        else:
            k = float(order)
            beta1 = (self.pcoeff + self.icoeff + self.dcoeff) / k
            factor = self.safety * ratio**-beta1
            if self.pcoeff or self.dcoeff:
                prev1, prev2 = self._history
                beta2 = (self.pcoeff + 2 * self.dcoeff) / k
                beta3 = self.dcoeff / k
                factor *= prev1**beta2 * prev2**-beta3
            factor = min(self.ifactor, max(factor, self.dfactor))
        if accepted:
            # Ratios are floored so a lucky tiny error does not dominate the memory.
            self._history = [max(ratio, 1e-4), self._history[0]]
        return self.clip(step_size * factor)


def initial_step_size(
    func: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    order: int,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Norm | None,
) -> float:
    """Hairer's starting step (HNW I §II.4, algorithm in "Starting step size").

    Costs one evaluation of ``func``. ``order`` is the order of the error estimate.
    """
    norm_fn = rms_norm if norm is None else norm
    with torch.no_grad():
        scale = y0.abs().mul_(rtol).add_(atol)
        if norm is None and f0.dtype == y0.dtype:
            both = torch.stack((y0, f0)).div_(scale).view(2, -1)
            root_n = math.sqrt(max(y0.numel(), 1))
            d0, d1 = (x / root_n for x in torch.linalg.vector_norm(both, dim=1).tolist())
        else:
            d0 = float(norm_fn(y0 / scale))
            d1 = float(norm_fn(f0 / scale))
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        y1 = torch.add(y0, f0, alpha=h0)
        f1 = func(t0 + h0, y1)
        d2 = float(norm_fn((f1 - f0) / scale)) / h0
        if max(d1, d2) <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    if not math.isfinite(h0) or not math.isfinite(h1):
        return 1e-6
    return min(100 * h0, h1)
