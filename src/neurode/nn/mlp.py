r"""A multilayer perceptron vector field, the usual dynamics of a small neural ODE.

.. math::

    f(t, h) = W_{L} \sigma(\cdots \sigma(W_1 h + b_1) \cdots) + b_{L},

with ``depth`` hidden layers of width ``hidden``. With ``time_dependent=True``
every layer also sees :math:`t` (:class:`ConcatLinear`). A smooth activation
(``tanh``, ``softplus``, ``silu``) keeps :math:`f` smooth, which adaptive
solvers reward with fewer steps; ``relu`` makes :math:`f` only piecewise
linear.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..errors import NeurodeInputError
from .time_dependent import ConcatLinear

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
}


def _make_activation(activation: str | Callable[[], nn.Module]) -> nn.Module:
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise NeurodeInputError(
                f"Unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)} "
                "or pass a module class."
            )
        return ACTIVATIONS[activation]()
    if isinstance(activation, nn.Module):
        return activation
    if callable(activation):
        module = activation()
        if not isinstance(module, nn.Module):
            raise NeurodeInputError("An activation factory must return an nn.Module.")
        return module
    raise NeurodeInputError(f"activation must be a name or an nn.Module class, got {activation!r}.")


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NeurodeInputError(f"{name} must be a positive integer, got {value!r}.")
    return value


class MLPDynamics(nn.Module):
    """MLP vector field ``f(t, h)`` on states shaped ``(..., dim)``.

    Args:
        dim: size of the state's last dimension (input and output).
        hidden: width of the hidden layers.
        depth: number of hidden layers (at least 1).
        activation: a name (``"tanh"``, ``"softplus"``, ``"relu"``, ``"elu"``,
            ``"silu"``, ``"gelu"``, ``"sigmoid"``) or an ``nn.Module`` class.
        time_dependent: feed ``t`` to every layer; otherwise ``t`` is ignored.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        depth: int = 2,
        activation: str | Callable[[], nn.Module] = "tanh",
        time_dependent: bool = False,
    ):
        super().__init__()
        self.dim = _check_positive_int("dim", dim)
        _check_positive_int("hidden", hidden)
        _check_positive_int("depth", depth)
        self.time_dependent = bool(time_dependent)
        widths = [dim] + [hidden] * depth + [dim]
        layer = ConcatLinear if self.time_dependent else nn.Linear
        self.layers = nn.ModuleList(
            layer(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.activations = nn.ModuleList(_make_activation(activation) for _ in range(depth))

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if h.shape[-1] != self.dim:
            raise NeurodeInputError(
                f"MLPDynamics(dim={self.dim}) got a state whose last dimension is {h.shape[-1]}."
            )
        for i, layer in enumerate(self.layers):
            h = layer(t, h) if self.time_dependent else layer(h)
            if i < len(self.activations):
                h = self.activations[i](h)
        return h
