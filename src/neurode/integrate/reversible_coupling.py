r"""How the reversible method chooses its coupling ``λ_n``, and what that costs backwards.

The reversible pair ``(y, z)`` carries a parasitic mode, the gap ``g = y − z``
(:mod:`neurode.solvers.reversible`). Over one step it evolves as

    g_{n+1} ≈ λ_n · DΦ_{−h}(y_{n+1}) · g_n + d_n,

``DΦ_{−h} ≈ e^{−hJ}`` the backward base step's derivative and ``d_n`` the
round-trip defect ``Φ_{−h}(Φ_h(z_n)) − z_n`` (of the order of the local error).
With ``λ`` fixed, a mode decaying at rate ``ρ`` makes the gap grow by
``λ e^{hρ}`` per step, and the gap pollutes the solution: ``y_{n+1}`` departs
from the base step from ``y_n`` by the coupling defect
``c_n ≈ h (f(t_n, z_n) − f(t_n, y_n)) − (1 − λ_n) g_n``, which the step's error
test includes (:mod:`neurode.integrate.reversible_stepper`).

:class:`Coupling` measures, each step, from two evaluations the method makes anyway
(``f(t_n, y_n) − f(t_n, z_n) ≈ J g_n``):

- the fastest decay rate ``ρ̂ = max −Re μ`` over the Ritz values ``μ`` of ``J`` on
  the span of the latest four gaps (the Rayleigh quotient ``−⟨g, Jg⟩/⟨g, g⟩`` for
  one). The forward steps multiply the gap by ``≈ e^{−hJ}``, so the gaps lean
  towards the fastest-decaying directions (a power iteration). A single Rayleigh
  quotient is not enough: once ``λ`` damps the gap, fresh round-trip defects keep
  it from aligning, the quotient settles below the true rate (10 for Lorenz's
  14.6) and the damping at neutral. Measured on Lorenz over ``[0, 8]`` the
  gradient was then 1e-2 to 2 off (direct: 2e-4); with four gaps it is 2.4e-4;
- the change of the error scale ``atol + rtol·|y|`` along the gap over the step,
  ``σ = ‖g/scale(y_n)‖ / ‖g/scale(y_n + Ψ_h(z_n))‖``, bounded by ``e^{±h|ρ̂|}`` so
  that components passing near zero do not make ``λ`` jump (to 3.5 on Lorenz).

The automatic choice is ``λ_n = λ₀ · σ · e^{−h ρ̂ − θ h |ρ̂|}``: the gap, measured
in the tolerances, then shrinks by ``λ₀ e^{−θh|ρ̂|}`` a step, so the round-trip
defects add up to about ``d / θ`` instead of growing, and ``c_n`` stays of the
order of the local error. Growing dynamics give ``λ > 1`` (on ``y' = a y``,
``a > 0``: ``λ = λ₀ e^{(2 − θ) a h}``), which keeps the backward reconstruction
from amplifying rounding by the solution's own growth.

The price is paid backwards. Reconstructing a step multiplies an error, measured
in the tolerances, by about ``e^{h a} σ_n / λ_n`` on the parasitic part of a mode
``y' = a y`` and by ``e^{−h a} σ_n`` on its solution part; the extreme ``a`` are
not all observed, so

    α_n = log σ_n − log λ_n + h |ρ̂|

estimates the logarithm of that amplification (it bounds the growth of rounding
in the fastest-decaying mode, whose reconstruction runs it backwards), which the
gradient method uses to place its restart points.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

DEFAULT_BASE = 0.999
"""``λ₀``: the damping per step when the gap carries no information (and the fixed default)."""

DEFAULT_DAMPING = 0.5
"""``θ``: how fast the scaled gap is damped, in units of the estimated decay rate."""

_LOG_BOUND = 5.0
"""``|log λ_n| ≤ 5``: an explicit base method is unstable beyond ``h ρ ≈ 3.3`` anyway."""

RITZ_VECTORS = 4
"""How many of the latest gaps span the space in which the fastest decay is sought."""

_CONDITION = 1e-8
"""Smallest eigenvalue of the normalised Gram matrix of the gaps that is used."""

_TRUST = 1e3
"""The gap must exceed ``_TRUST`` units of rounding in ``y`` before ``ρ̂`` is believed."""


class Coupling:
    """``λ_n`` for each step: automatic (the default), fixed, or ``exp(−rate·|h_n|)``.

    ``scale(y)`` is ``atol + rtol·|y|``; ``damping`` is ``θ``, ``base`` is ``λ₀``.
    Each call also sets :attr:`amplification` (``α_n``), :attr:`rate` (``ρ̂``),
    :attr:`gap` and :attr:`relative_gap`.
    """

    def __init__(
        self,
        scale: Callable[[torch.Tensor], torch.Tensor],
        *,
        value: float | None = None,
        rate: float | None = None,
        base: float = DEFAULT_BASE,
        damping: float = DEFAULT_DAMPING,
        history: int = RITZ_VECTORS,
    ):
        self.scale = scale
        self.value, self.fixed_rate = value, rate
        self.automatic = value is None and rate is None
        self.base = base
        self.damping = damping
        self.history = history

    def start(self) -> None:
        self.rate = 0.0
        """``ρ̂``: the fastest decay rate seen in the latest gaps (negative: all grow)."""
        self.amplification = 0.0
        self.gap = self.relative_gap = 0.0
        """``‖(y_n − z_n) / scale(y_n)‖`` (RMS), the gap in tolerances, and
        ``‖y_n − z_n‖ / ‖y_n‖``, at the start of the latest step."""
        self._gaps: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []

    @property
    def small_step_limit(self) -> float:
        """``λ`` as the step size goes to zero: ``(1 − λ)·gap`` is what no step size removes."""
        if self.fixed_rate is not None:
            return 1.0
        return self.base if self.value is None else self.value

    def _given(self, h: float) -> float | None:
        if self.fixed_rate is not None:
            return math.exp(-self.fixed_rate * abs(h))
        return self.value

    def __call__(
        self,
        h: float,
        y: torch.Tensor,
        z: torch.Tensor,
        f_y: torch.Tensor | None,
        f_z: torch.Tensor,
        increment: torch.Tensor,
    ) -> float:
        given = self._given(h)
        if f_y is None or y is z:  # the first step: no gap yet
            coupling = self.base if given is None else given
            self.amplification = -math.log(coupling)
            self.gap = self.relative_gap = 0.0
            return coupling
        difference = y - z
        gap = _real(difference)
        image = _real(f_y - f_z)  # ≈ J g
        scaled0 = _real(difference / self.scale(y))
        scaled1 = _real(difference / self.scale(y + increment))
        flat_y = _real(y)
        gaps, images = [*self._gaps, gap], [*self._images, image]
        basis, mapped = torch.stack(gaps), torch.stack(images)
        sums = torch.cat(
            [
                torch.stack(
                    [
                        torch.dot(scaled0, scaled0),
                        torch.dot(scaled1, scaled1),
                        torch.dot(flat_y, flat_y),
                    ]
                ),
                (basis @ basis.T).reshape(-1),
                (basis @ mapped.T).reshape(-1),
            ]
        ).tolist()
        ss0, ss1, yy = sums[:3]
        k = len(gaps)
        gram = torch.tensor(sums[3 : 3 + k * k], dtype=torch.float64).view(k, k)
        cross = torch.tensor(sums[3 + k * k :], dtype=torch.float64).view(k, k)
        gg = float(gram[-1, -1])
        self.gap = math.sqrt(ss0 / max(gap.numel(), 1))
        self.relative_gap = math.sqrt(gg / yy) if yy > 0.0 else math.inf
        eps = torch.finfo(gap.dtype).eps
        if gg > (_TRUST * eps) ** 2 * yy and gg > 0.0 and math.isfinite(float(cross[-1, -1])):
            keep = max(1, min(self.history, gap.numel()))
            self._gaps, self._images = gaps[-keep:], images[-keep:]
            estimate = _fastest_decay(gram, cross)
            if estimate is not None:
                self.rate = estimate
        rate = self.rate
        # The scale's change along the gap, within what the rate itself can explain.
        log_sigma = 0.5 * math.log(ss0 / ss1) if ss0 > 0.0 and ss1 > 0.0 else 0.0
        bound = abs(h) * abs(rate)
        log_sigma = min(max(log_sigma, -bound), bound) if math.isfinite(log_sigma) else 0.0
        if given is None:
            log_coupling = (
                math.log(self.base) + log_sigma - abs(h) * (rate + self.damping * abs(rate))
            )
            coupling = math.exp(min(max(log_coupling, -_LOG_BOUND), _LOG_BOUND))
        else:
            coupling = given
        self.amplification = log_sigma - math.log(coupling) + abs(h) * abs(rate)
        return coupling


def _real(x: torch.Tensor) -> torch.Tensor:
    """``x`` flattened, a complex state as the pairs of its real and imaginary parts."""
    return torch.view_as_real(x).reshape(-1) if x.is_complex() else x.reshape(-1)


def _fastest_decay(gram: torch.Tensor, cross: torch.Tensor) -> float | None:
    """``max −Re μ`` over the Ritz values ``μ`` of ``J`` on the span of the latest gaps.

    With the gaps ``g_j`` as columns of ``G`` and ``J g_j`` of ``F``, ``J G ≈ G B`` with
    ``B = (GᵀG)⁻¹ GᵀF`` (``gram = GᵀG``, ``cross = GᵀF``). Gaps nearly parallel to the
    others are dropped, oldest first, until the Gram matrix is well conditioned.
    """
    while gram.shape[0] > 0:
        diagonal = gram.diagonal().clamp_min(1e-300).rsqrt()
        gram_n = gram * diagonal[:, None] * diagonal[None, :]
        cross_n = cross * diagonal[:, None] * diagonal[None, :]
        if not bool(torch.isfinite(gram_n).all() and torch.isfinite(cross_n).all()):
            return None
        if float(torch.linalg.eigvalsh(gram_n).min()) > _CONDITION:
            values = torch.linalg.eigvals(torch.linalg.solve(gram_n, cross_n))
            return float((-values.real).max())
        gram, cross = gram[1:, 1:], cross[1:, 1:]
    return None


__all__ = ["Coupling", "DEFAULT_BASE", "DEFAULT_DAMPING", "RITZ_VECTORS"]
