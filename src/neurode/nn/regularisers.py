r"""Kinetic-energy and Jacobian-norm regularisers, integrated alongside the state.

Finlay et al. (2020, "How to train your neural ODE") and Kelly et al. (2020)
penalise dynamics that are expensive to solve. For :math:`\dot h = f(t, h)` on
:math:`[t_0, t_1]` the two penalties, per sample, are

.. math::

    K = \int_{t_0}^{t_1} \lVert f(t, h(t)) \rVert^2 \, dt,
    \qquad
    B = \int_{t_0}^{t_1} \lVert \partial f / \partial h \,(t, h(t)) \rVert_F^2 \, dt .

Small :math:`K` favours straight, constant-speed paths (optimal transport);
small :math:`B` favours smooth flows. Both keep the number of function
evaluations of an adaptive solver from growing during training.

Both integrals are solved in the same call as the state: the augmented state is
the tuple :math:`(h, K(t), B(t))` with :math:`\dot K = \lVert f \rVert^2` and
:math:`\dot B = \lVert \varepsilon^\top J \rVert^2`, where the Frobenius norm
comes from the Hutchinson estimator

.. math::

    \lVert J \rVert_F^2 = \operatorname{tr}(J^\top J)
    = \mathbb{E}_\varepsilon\, \lVert \varepsilon^\top J \rVert^2
    \quad\text{for any noise with } \mathbb{E}[\varepsilon \varepsilon^\top] = I,

so each evaluation costs one vector-Jacobian product. The probe
:math:`\varepsilon` is drawn once per solve and held fixed while the solver runs
(and while a gradient method integrates backwards), so that the integrand is a
deterministic, smooth function of time during the solve.

The leading dimension of the state is the batch when the state has two or
more dimensions; the penalties are then per sample, of shape ``(batch,)``. A
1-D state is a single sample and its penalties are scalars.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..api import solve
from ..errors import NeurodeInputError
from ._vector_jacobian import value_and_vjps

NOISE_KINDS = ("gaussian", "rademacher")
REGULARISATION_TERMS = ("kinetic", "jacobian")


def _per_sample_squared_norm(x: Tensor) -> Tensor:
    """Sum of squares over every dimension but the leading (batch) one; all of them for 1-D."""
    if x.ndim <= 1:
        return x.pow(2).sum()
    return x.pow(2).flatten(1).sum(dim=1)


def _per_sample_zeros(h: Tensor) -> Tensor:
    shape = h.shape[:1] if h.ndim >= 2 else ()
    return h.new_zeros(shape)


def sample_probe(
    like: Tensor, kind: str = "gaussian", generator: torch.Generator | None = None
) -> Tensor:
    r"""Draw a Hutchinson probe shaped like ``like``, with :math:`E[\varepsilon \varepsilon^T] = I`.

    ``"gaussian"``: standard normal entries. ``"rademacher"``: entries :math:`\pm 1`
    with equal probability (lower variance of the estimate for the same cost).
    """
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return bits.to(like.dtype).mul_(2).sub_(1)
    raise NeurodeInputError(f"noise must be one of {NOISE_KINDS}, got {kind!r}.")


def validate_regularisation(regularisation: Mapping[str, float] | None) -> dict[str, float]:
    """Check a ``{"kinetic": λ_k, "jacobian": λ_j}`` mapping; return it with float weights.

    Missing terms get weight 0. ``None`` means no regularisation (an empty dict).
    """
    if regularisation is None:
        return {}
    if not isinstance(regularisation, Mapping):
        raise NeurodeInputError(
            "regularisation must be a mapping such as {'kinetic': 0.01, 'jacobian': 0.01}, "
            f"got {type(regularisation).__name__}."
        )
    unknown = set(regularisation) - set(REGULARISATION_TERMS)
    if unknown:
        raise NeurodeInputError(
            f"Unknown regularisation term(s) {sorted(unknown)}; "
            f"known terms are {list(REGULARISATION_TERMS)}."
        )
    weights: dict[str, float] = {}
    for name, value in regularisation.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise NeurodeInputError(f"regularisation[{name!r}] must be a number, got {value!r}.")
        if not math.isfinite(value) or value < 0:
            raise NeurodeInputError(
                f"regularisation[{name!r}] must be finite and non-negative, got {value}."
            )
        weights[name] = float(value)
    return weights


class RegularisedDynamics(nn.Module):
    r"""Dynamics on the augmented state ``(h, K, B)`` that also accumulate the penalties.

    ``forward(t, (h, K, B))`` returns :math:`(f(t, h),\ \lVert f \rVert^2,\
    \lVert \varepsilon^\top \partial f/\partial h \rVert^2)` per sample. A
    disabled term has zero derivative and stays at its initial value.

    Args:
        dynamics: the module (or callable) ``f(t, h)``.
        kinetic: accumulate :math:`\int \lVert f \rVert^2 dt`.
        jacobian: accumulate the Hutchinson estimate of :math:`\int \lVert J \rVert_F^2 dt`.
        noise: ``"gaussian"`` or ``"rademacher"`` probes.
        generator: optional random generator for the probes.

    The probe is drawn on the first evaluation that needs it and kept until
    :meth:`resample_noise` or :meth:`set_noise` is called, so one solve (and
    the backward pass of a gradient method that re-evaluates the dynamics)
    sees one probe. The probe belongs to one solve: ``backsolve``,
    ``checkpoint`` and ``reversible`` read it again when the backward pass
    runs, so replacing it before every solve that used it has been
    differentiated changes those solves' gradients. Build one
    ``RegularisedDynamics`` per solve (it only wraps ``dynamics``, whose
    parameters it shares), as :func:`regularised_solve` does.
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        *,
        kinetic: bool = True,
        jacobian: bool = True,
        noise: str = "gaussian",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not callable(dynamics):
            raise NeurodeInputError(
                f"dynamics must be callable as dynamics(t, h), got {type(dynamics).__name__}."
            )
        if noise not in NOISE_KINDS:
            raise NeurodeInputError(f"noise must be one of {NOISE_KINDS}, got {noise!r}.")
        self.dynamics = dynamics
        self.kinetic = bool(kinetic)
        self.jacobian = bool(jacobian)
        self.noise_kind = noise
        self.generator = generator
        self.noise: Tensor | None = None

    def initial_state(self, h0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The augmented initial state ``(h0, 0, 0)`` with per-sample zero penalties."""
        return (h0, _per_sample_zeros(h0), _per_sample_zeros(h0))

    def resample_noise(self, like: Tensor) -> Tensor:
        """Draw and keep a new probe shaped like the state ``like``."""
        self.noise = sample_probe(like, self.noise_kind, self.generator)
        return self.noise

    def set_noise(self, noise: Tensor | None) -> None:
        """Use the given probe (shaped like the state) until it is replaced; ``None`` clears it."""
        self.noise = noise

    def forward(
        self, t: Tensor, state: tuple[Tensor, Tensor, Tensor]
    ) -> tuple[Tensor, Tensor, Tensor]:
        h, kinetic_acc, jacobian_acc = state
        if not self.jacobian:
            f = self.dynamics(t, h)
            kinetic_rate = (
                _per_sample_squared_norm(f) if self.kinetic else torch.zeros_like(kinetic_acc)
            )
            return f, kinetic_rate.to(kinetic_acc.dtype), torch.zeros_like(jacobian_acc)

        if self.noise is None:
            self.resample_noise(h)
        noise = self.noise
        if noise.shape != h.shape:
            raise NeurodeInputError(
                f"The Hutchinson probe has shape {tuple(noise.shape)} but the state has shape "
                f"{tuple(h.shape)}; call resample_noise(h0) or set_noise(...) before solving."
            )
        f, (vjp,) = value_and_vjps(lambda state: self.dynamics(t, state), h, (noise,))
        kinetic_rate = (
            _per_sample_squared_norm(f) if self.kinetic else torch.zeros_like(kinetic_acc)
        )
        jacobian_rate = _per_sample_squared_norm(vjp)
        return f, kinetic_rate.to(kinetic_acc.dtype), jacobian_rate.to(jacobian_acc.dtype)


@dataclass
class RegularisedSolution:
    """What :func:`regularised_solve` returns.

    Attributes:
        ys: the state trajectory, ``(len(t), *y0.shape)``.
        kinetic: cumulative kinetic integral at each time, ``(len(t), batch)``
            (``(len(t),)`` for a 1-D state), oriented with ``t``.
        jacobian: cumulative Jacobian-norm integral, same shape as ``kinetic``.
        loss: scalar regularisation loss,
            ``λ_k · mean|K(t_end)| + λ_j · mean|B(t_end)|`` over the batch.
        solution: the underlying :class:`Solution` of the augmented system; its
            ``stats`` dict is the one gradient methods fill during backward.
    """

    ys: Tensor
    kinetic: Tensor
    jacobian: Tensor
    loss: Tensor
    solution: Any

    @property
    def stats(self) -> dict:
        return self.solution.stats


def regularisation_loss(
    kinetic: Tensor, jacobian: Tensor, weights: Mapping[str, float], increasing: bool
) -> Tensor:
    """Weighted batch-mean of the penalties at the last saved time.

    An integral over a decreasing time span is accumulated with negative sign;
    ``increasing=False`` flips it back so the loss is always non-negative.
    """
    sign = 1.0 if increasing else -1.0
    loss = kinetic.new_zeros(())
    if weights.get("kinetic", 0.0):
        loss = loss + weights["kinetic"] * sign * kinetic[-1].mean()
    if weights.get("jacobian", 0.0):
        loss = loss + weights["jacobian"] * sign * jacobian[-1].mean()
    return loss


def regularised_solve(
    dynamics: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor,
    regularisation: Mapping[str, float],
    *,
    noise: str = "gaussian",
    generator: torch.Generator | None = None,
    **solve_kwargs: Any,
) -> RegularisedSolution:
    r"""Solve :math:`\dot h = f(t, h)` together with the kinetic and Jacobian penalties.

    Args:
        dynamics: ``f(t, h)``; an ``nn.Module`` for gradient methods that need parameters.
        y0: initial state, batch first when it has two or more dimensions.
        t: 1-D tensor of save times, strictly monotonic.
        regularisation: weights ``{"kinetic": λ_k, "jacobian": λ_j}``; a term with
            weight 0 (or absent) is not computed.
        noise: ``"gaussian"`` or ``"rademacher"`` Hutchinson probes, one per solve.
        generator: optional random generator for the probe.
        **solve_kwargs: passed to :func:`neurode.solve` (``method``, ``rtol``,
            ``atol``, ``gradient``, ``options``, ``gradient_options``).

    Returns:
        A :class:`RegularisedSolution` with the trajectory, the penalties and the loss.
    """
    weights = validate_regularisation(regularisation)
    if not isinstance(y0, Tensor):
        raise NeurodeInputError(
            f"regularised_solve needs a single tensor y0, got {type(y0).__name__}."
        )
    t = torch.as_tensor(t)
    if t.ndim != 1 or t.numel() < 2:
        raise NeurodeInputError("t must be a 1-D tensor with at least two times.")
    regularised = RegularisedDynamics(
        dynamics,
        kinetic=weights.get("kinetic", 0.0) > 0,
        jacobian=weights.get("jacobian", 0.0) > 0,
        noise=noise,
        generator=generator,
    )
    if regularised.jacobian:
        regularised.resample_noise(y0)
    solution = solve(regularised, regularised.initial_state(y0), t, **solve_kwargs)
    ys, kinetic, jacobian = solution.ys
    increasing = bool(t[-1] > t[0])
    loss = regularisation_loss(kinetic, jacobian, weights, increasing)
    return RegularisedSolution(
        ys=ys, kinetic=kinetic, jacobian=jacobian, loss=loss, solution=solution
    )
