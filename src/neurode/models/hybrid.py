r"""Physics-prior models of the damped pendulum: known physics plus learned parts.

Both models are vector fields on the state :math:`y = (\theta, \omega)`,
:math:`\omega = \dot\theta`, shaped ``(..., 2)``, to be integrated by
:func:`neurode.solve`.

:class:`PendulumPhysics` is the full physical model with two unknown
constants, for parameter estimation through the solver:

.. math::

    \dot\theta = \omega, \qquad
    \dot\omega = -\mu\,\omega - \frac{g}{L}\sin\theta .

:class:`HybridODE` keeps the gravity term, whose form is known but whose
constant :math:`g/L` is not, and learns the friction, whose form is unknown,
with a small network :math:`n` of :math:`(\theta, \omega)`:

.. math::

    \dot\theta = \omega, \qquad
    \dot\omega = -\frac{g}{L}\sin\theta + \omega\, n(\theta, \omega) .

The factor :math:`\omega` makes the learned force vanish at rest, as friction
does. It also keeps :math:`g/L` identifiable: a network free to output any
acceleration could absorb part of :math:`-(g/L)\sin\theta` (which is non-zero
at rest), while :math:`\omega\, n` cannot. Pass ``vanishes_at_rest=False`` for
an unconstrained correction :math:`n(\theta, \omega)`.

Positive constants are learned through a logarithm, :math:`g/L = e^{a}`, so
every step is a relative change and the value can never cross zero; the
friction :math:`\mu = \operatorname{softplus}(b) \ge 0` may approach zero.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError, ShapeMismatchError

__all__ = ["HybridODE", "PendulumPhysics", "linear_friction_fit"]


def _inverse_softplus(value: float) -> float:
    # log(exp(x) - 1), stable for large x.
    return value + math.log(-math.expm1(-value))


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise NeurodeInputError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise NeurodeInputError(f"{name} must be positive and finite, got {value}")
    return float(value)


def _split_pendulum_state(y: Tensor) -> tuple[Tensor, Tensor]:
    if y.shape[-1] != 2:
        raise ShapeMismatchError(
            f"a pendulum state is (..., 2) = (theta, omega); got shape {tuple(y.shape)}"
        )
    return y[..., 0], y[..., 1]


class PendulumPhysics(nn.Module):
    r"""The damped pendulum with learnable :math:`\mu \ge 0` and :math:`g/L > 0`.

    Args:
        g_over_l: initial :math:`g/L` (1/s²).
        mu: initial friction coefficient :math:`\mu` (1/s).
        dtype: dtype of the parameters.

    ``forward(t, y)`` with ``y`` shaped ``(..., 2)`` returns
    :math:`(\omega,\ -\mu\omega - (g/L)\sin\theta)`.
    """

    def __init__(
        self, g_over_l: float = 1.0, mu: float = 0.1, *, dtype: torch.dtype = torch.float64
    ):
        super().__init__()
        g_over_l = _check_positive("g_over_l", g_over_l)
        mu = _check_positive("mu", mu)
        self.log_g_over_l = nn.Parameter(torch.tensor(math.log(g_over_l), dtype=dtype))
        self.raw_mu = nn.Parameter(torch.tensor(_inverse_softplus(mu), dtype=dtype))

    @property
    def g_over_l(self) -> Tensor:
        """:math:`g/L = e^{a}`."""
        return self.log_g_over_l.exp()

    @property
    def mu(self) -> Tensor:
        r""":math:`\mu = \operatorname{softplus}(b)`."""
        return nn.functional.softplus(self.raw_mu)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        theta, omega = _split_pendulum_state(y)
        return torch.stack([omega, -self.mu * omega - self.g_over_l * torch.sin(theta)], dim=-1)

    def extra_repr(self) -> str:
        return f"g_over_l={float(self.g_over_l):.6g}, mu={float(self.mu):.6g}"


class HybridODE(nn.Module):
    r"""Known gravity with learnable :math:`g/L`, plus friction learned by a network.

    Args:
        g_over_l: initial :math:`g/L` (1/s²).
        hidden: width of the friction network's hidden layers.
        depth: number of hidden layers.
        vanishes_at_rest: learn :math:`\omega\,n(\theta, \omega)` (default) rather
            than an unconstrained :math:`n(\theta, \omega)`.
        dtype: dtype of the parameters.

    The network's last layer starts at zero, so training starts from the
    frictionless physical model.
    """

    def __init__(
        self,
        g_over_l: float = 1.0,
        *,
        hidden: int = 16,
        depth: int = 1,
        vanishes_at_rest: bool = True,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        g_over_l = _check_positive("g_over_l", g_over_l)
        for name, value in (("hidden", hidden), ("depth", depth)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise NeurodeInputError(f"{name} must be a positive integer, got {value!r}")
        self.vanishes_at_rest = bool(vanishes_at_rest)
        self.log_g_over_l = nn.Parameter(torch.tensor(math.log(g_over_l), dtype=dtype))
        widths = [2] + [hidden] * depth
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out, dtype=dtype), nn.Tanh()]
        output = nn.Linear(hidden, 1, dtype=dtype)
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        self.friction_net = nn.Sequential(*layers, output)

    @property
    def g_over_l(self) -> Tensor:
        """:math:`g/L = e^{a}`."""
        return self.log_g_over_l.exp()

    def correction(self, theta: Tensor, omega: Tensor) -> Tensor:
        r"""The learned angular acceleration, :math:`\omega\,n(\theta,\omega)` or :math:`n`."""
        learned = self.friction_net(torch.stack([theta, omega], dim=-1)).squeeze(-1)
        return omega * learned if self.vanishes_at_rest else learned

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        theta, omega = _split_pendulum_state(y)
        acceleration = -self.g_over_l * torch.sin(theta) + self.correction(theta, omega)
        return torch.stack([omega, acceleration], dim=-1)

    @torch.no_grad()
    def friction_coefficient(self, states: Tensor) -> Tensor:
        r"""The linear friction :math:`\hat\mu` that best matches the learned correction.

        Least squares over the given states: :math:`\hat\mu = \arg\min_\mu
        \sum_k (c_k + \mu\,\omega_k)^2 = -\sum_k \omega_k c_k / \sum_k \omega_k^2`,
        with :math:`c_k` the correction at state :math:`k`. Evaluate it on the
        states the model was trained on: that is where the network is informed.
        """
        theta, omega = _split_pendulum_state(states.reshape(-1, 2))
        return linear_friction_fit(omega, self.correction(theta, omega))

    def extra_repr(self) -> str:
        return f"g_over_l={float(self.g_over_l):.6g}, vanishes_at_rest={self.vanishes_at_rest}"


def linear_friction_fit(omega: Tensor, acceleration: Tensor) -> Tensor:
    r"""Least-squares :math:`\mu` in :math:`a \approx -\mu\,\omega`.

    :math:`\hat\mu = -\sum_k \omega_k a_k / \sum_k \omega_k^2`.
    """
    denominator = (omega * omega).sum()
    if float(denominator) == 0.0:
        raise NeurodeInputError("the friction coefficient needs states with non-zero velocity")
    return -(omega * acceleration).sum() / denominator
