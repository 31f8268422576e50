"""STEER: stochastic end times as a temporal regulariser.

Ghosh et al. (2020) train a neural ODE on ``[t0, t1']`` with a new end time
``t1' ~ U[t1 - b, t1 + b]`` drawn at every training step, and evaluate at the
fixed ``t1``. The dynamics must then produce a useful state over a whole
interval of end times, which favours simple, slowly varying flows and lowers
the number of function evaluations the solver needs.
"""

from __future__ import annotations

import math

import torch

from ..errors import NeurodeInputError


def validate_steer_half_width(b: float, t0: float, t1: float) -> float:
    """Check a STEER half-width ``b`` for the span ``[t0, t1]`` and return it as a float.

    ``b`` must satisfy ``0 <= b < |t1 - t0|`` so that the perturbed end time never
    reaches (or crosses) the start time.
    """
    if isinstance(b, bool) or not isinstance(b, (int, float)):
        raise NeurodeInputError(f"steer must be a non-negative number, got {b!r}.")
    b = float(b)
    if not math.isfinite(b) or b < 0.0:
        raise NeurodeInputError(f"steer must be finite and non-negative, got {b}.")
    if b >= abs(t1 - t0):
        raise NeurodeInputError(
            f"steer={b} must be smaller than the span |t1 - t0| = {abs(t1 - t0)}, "
            "otherwise the sampled end time can reach the start time."
        )
    return b


def steer_end_time(t1: float, b: float, generator: torch.Generator | None = None) -> float:
    r"""Draw a STEER end time :math:`t_1' \sim \mathcal{U}[t_1 - b,\ t_1 + b]`.

    Args:
        t1: the nominal end time.
        b: the half-width of the interval, ``b >= 0``.
        generator: optional random generator, for reproducible draws.

    Returns:
        The sampled end time as a Python float (``t1`` itself when ``b == 0``).
    """
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not math.isfinite(b) or b < 0:
        raise NeurodeInputError(f"b must be a finite non-negative number, got {b!r}.")
    if isinstance(t1, bool) or not isinstance(t1, (int, float)) or not math.isfinite(t1):
        raise NeurodeInputError(f"t1 must be a finite number, got {t1!r}.")
    if b == 0:
        return float(t1)
    u = torch.rand((), generator=generator, dtype=torch.float64).item()
    return float(t1) + (2.0 * u - 1.0) * float(b)
