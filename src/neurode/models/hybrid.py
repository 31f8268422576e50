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

    @torch.no_grad()
    def jacobians(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r"""Analytic Jacobians :math:`\partial f/\partial y` and :math:`\partial f/\partial p`.

        Both are shaped ``(..., 2, 2)``; :math:`p = (a, b)` with :math:`g/L = e^a`
        and :math:`\mu = \operatorname{softplus}(b)`, the raw parameters:

        .. math::

            \frac{\partial f}{\partial y} = \begin{pmatrix} 0 & 1 \\
            -(g/L)\cos\theta & -\mu \end{pmatrix}, \qquad
            \frac{\partial f}{\partial p} = \begin{pmatrix} 0 & 0 \\
            -(g/L)\sin\theta & -\sigma(b)\,\omega \end{pmatrix}.
        """
        theta, omega = _split_pendulum_state(y)
        g_over_l, mu = self.g_over_l, self.mu
        zero = torch.zeros_like(theta)
        d_state = torch.stack(
            [
                torch.stack([zero, torch.ones_like(theta)], dim=-1),
                torch.stack([-g_over_l * torch.cos(theta), (-mu).expand_as(theta)], dim=-1),
            ],
            dim=-2,
        )
        d_params = torch.stack(
            [
                torch.stack([zero, zero], dim=-1),
                torch.stack(
                    [-g_over_l * torch.sin(theta), -torch.sigmoid(self.raw_mu) * omega], dim=-1
                ),
            ],
            dim=-2,
        )
        return d_state, d_params

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
        state_scale: typical sizes :math:`(s_\theta, s_\omega)` of the state; the
            network sees :math:`(\theta/s_\theta, \omega/s_\omega)`, inputs of order one
            whatever the pendulum (default ``(1, 1)``).
        friction: the linear friction :math:`\mu_0 \ge 0` the model starts with
            (the network's output bias is :math:`-\mu_0`, its weights zero).
        dtype: dtype of the parameters.

    The network's last layer starts at zero weights, so training starts from
    the physical model with linear friction ``friction`` (frictionless by default).
    """

    def __init__(
        self,
        g_over_l: float = 1.0,
        *,
        hidden: int = 16,
        depth: int = 1,
        vanishes_at_rest: bool = True,
        state_scale: tuple[float, float] = (1.0, 1.0),
        friction: float = 0.0,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        g_over_l = _check_positive("g_over_l", g_over_l)
        if len(state_scale) != 2:
            raise NeurodeInputError(f"state_scale must be two numbers, got {state_scale!r}")
        scale = tuple(_check_positive("state_scale", value) for value in state_scale)
        if isinstance(friction, bool) or not isinstance(friction, int | float):
            raise NeurodeInputError(f"friction must be a number, got {friction!r}")
        if not (math.isfinite(friction) and friction >= 0):
            raise NeurodeInputError(f"friction must be finite and >= 0, got {friction}")
        self.register_buffer("state_scale", torch.tensor(scale, dtype=dtype))
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
        nn.init.constant_(output.bias, -float(friction))
        self.friction_net = nn.Sequential(*layers, output)

    @property
    def g_over_l(self) -> Tensor:
        """:math:`g/L = e^{a}`."""
        return self.log_g_over_l.exp()

    def correction(self, theta: Tensor, omega: Tensor) -> Tensor:
        r"""The learned angular acceleration, :math:`\omega\,n(\theta,\omega)` or :math:`n`."""
        inputs = torch.stack([theta, omega], dim=-1) / self.state_scale
        learned = self.friction_net(inputs).squeeze(-1)
        return omega * learned if self.vanishes_at_rest else learned

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        theta, omega = _split_pendulum_state(y)
        acceleration = -self.g_over_l * torch.sin(theta) + self.correction(theta, omega)
        return torch.stack([omega, acceleration], dim=-1)

    def jacobians(self, y: Tensor) -> tuple[Tensor, Tensor]:
        r""":math:`\partial f/\partial y` and :math:`\partial f/\partial p` for
        :math:`p = (a, c)`: :math:`g/L = e^a` and :math:`c` the output bias of the
        friction network (a constant shift of :math:`n`), each ``(N, 2, 2)`` for
        states ``(N, 2)``.

        The correction's gradient in the state comes from one reverse pass (the
        rows are independent); the parameter columns are analytic:
        :math:`\partial f/\partial a = (0, -(g/L)\sin\theta)` and
        :math:`\partial f/\partial c = (0, \omega)` (or :math:`(0, 1)` without
        ``vanishes_at_rest``).
        """
        theta, omega = _split_pendulum_state(y)
        with torch.enable_grad():
            state = y.detach().requires_grad_(True)
            correction = self.correction(state[..., 0], state[..., 1])
            (gradient,) = torch.autograd.grad(correction.sum(), state)
        g_over_l = self.g_over_l.detach()
        zero = torch.zeros_like(theta)
        d_state = torch.stack(
            [
                torch.stack([zero, torch.ones_like(theta)], dim=-1),
                torch.stack(
                    [-g_over_l * torch.cos(theta) + gradient[..., 0], gradient[..., 1]], dim=-1
                ),
            ],
            dim=-2,
        )
        shift = omega if self.vanishes_at_rest else torch.ones_like(omega)
        d_params = torch.stack(
            [
                torch.stack([zero, zero], dim=-1),
                torch.stack([-g_over_l * torch.sin(theta), shift], dim=-1),
            ],
            dim=-2,
        )
        return d_state, d_params

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
