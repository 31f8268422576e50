r"""The MNIST classifiers of Chen et al. (2018, Table 1): ResNet, RK-Net and ODE-Net.

All three share a down-sampling stem and a classification head; they differ in
the feature extractor between them, on 64 feature maps of 6 × 6:

* :class:`ResNet`: six pre-activation residual blocks
  :math:`h \mapsto h + \mathrm{conv}(\mathrm{ReLU}(\mathrm{GN}(
  \mathrm{conv}(\mathrm{ReLU}(\mathrm{GN}(h))))))`.
* :class:`ODENet`: one ODE block, :math:`h(1) = h(0) + \int_0^1 f(t, h(t))\,dt` with
  :math:`f = \mathrm{GN} \circ \mathrm{cconv} \circ \mathrm{ReLU} \circ \mathrm{GN} \circ
  \mathrm{cconv} \circ \mathrm{ReLU} \circ \mathrm{GN}` (:class:`MNISTDynamics`), where
  ``cconv`` is a 3 × 3 convolution that sees the time as one more input channel.
  An adaptive solver and the adjoint gradient by default.
* :class:`RKNet`: the same dynamics, integrated by a fixed-step Runge–Kutta
  scheme and differentiated by backpropagating through its steps.

Stem: conv 3 × 3 (1 → 64), GN-ReLU-conv 4 × 4 stride 2, GN-ReLU-conv 4 × 4
stride 2 (28 → 26 → 13 → 6). Head: GN-ReLU-global average pool-linear(64, 10).
Group norm uses ``min(32, channels)`` groups.

Mixed precision (``autocast_dtype``) covers the stem and the head only; the ODE
block always runs in float32, where the solver's error control is meaningful.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError
from ..nn import ConcatConv2d, ODEBlock

__all__ = [
    "MNISTDynamics",
    "ODENet",
    "RKNet",
    "ResNet",
    "ResidualBlock",
    "mnist_classifier_head",
    "mnist_downsampling",
]


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, channels), channels)


def mnist_downsampling(channels: int = 64) -> nn.Sequential:
    """``(N, 1, 28, 28)`` images to ``(N, channels, 6, 6)`` features."""
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, 1),
        _group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
        _group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


def mnist_classifier_head(channels: int = 64, classes: int = 10) -> nn.Sequential:
    """``(N, channels, H, W)`` features to ``(N, classes)`` logits."""
    return nn.Sequential(
        _group_norm(channels),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


class ResidualBlock(nn.Module):
    """Pre-activation residual block ``h + conv(ReLU(GN(conv(ReLU(GN(h))))))``, bias-free convs."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.norm1 = _group_norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = _group_norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        out = self.conv1(torch.relu(self.norm1(h)))
        out = self.conv2(torch.relu(self.norm2(out)))
        return h + out


class MNISTDynamics(nn.Module):
    """``f(t, h) = GN(cconv(t, ReLU(GN(cconv(t, ReLU(GN(h)))))))`` on ``channels`` feature maps."""

    def __init__(self, channels: int = 64):
        super().__init__()
        self.norm1 = _group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm2 = _group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels, 3, padding=1)
        self.norm3 = _group_norm(channels)

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        out = self.conv1(t, torch.relu(self.norm1(h)))
        out = self.conv2(t, torch.relu(self.norm2(out)))
        return self.norm3(out)


class _MNISTClassifier(nn.Module):
    """Stem, feature extractor, head; optional autocast of the stem and head."""

    def __init__(self, features: nn.Module, channels: int, autocast_dtype: torch.dtype | None):
        super().__init__()
        self.downsampling = mnist_downsampling(channels)
        self.features = features
        self.head = mnist_classifier_head(channels)
        self.autocast_dtype = autocast_dtype

    def _autocast(self, x: Tensor):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, 10)`` of images ``(N, 1, 28, 28)``."""
        with self._autocast(x):
            h = self.downsampling(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            h = self.features(h.to(torch.promote_types(h.dtype, torch.float32)))
        with self._autocast(x):
            logits = self.head(h)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    @property
    def nfe_forward(self) -> int:
        """Function evaluations of the ODE block in the last forward pass (0 for a ResNet)."""
        return 0

    @property
    def nfe_backward(self) -> int:
        """Function evaluations of the ODE block in the last backward pass (0 for a ResNet)."""
        return 0


class ResNet(_MNISTClassifier):
    """Stem, ``blocks`` residual blocks, head: 0.58M parameters with the defaults."""

    def __init__(
        self, *, channels: int = 64, blocks: int = 6, autocast_dtype: torch.dtype | None = None
    ):
        if blocks < 1:
            raise NeurodeInputError(f"blocks must be positive, got {blocks}")
        features = nn.Sequential(*(ResidualBlock(channels) for _ in range(blocks)))
        super().__init__(features, channels, autocast_dtype)


class _ODEClassifier(_MNISTClassifier):
    """A classifier whose features are one :class:`~neurode.nn.ODEBlock`."""

    @property
    def ode_block(self) -> ODEBlock:
        return self.features

    @property
    def nfe_forward(self) -> int:
        return self.features.nfe_forward

    @property
    def nfe_backward(self) -> int:
        return self.features.nfe_backward


class ODENet(_ODEClassifier):
    """Stem, one ODE block of :class:`MNISTDynamics` on ``[t0, t1]``, head: 0.21M parameters.

    ``method``, ``rtol``, ``atol``, ``gradient``, ``options`` and ``gradient_options`` go to
    :class:`~neurode.nn.ODEBlock`. The defaults are the paper's: dopri5 at
    tolerance 1e-3 and the adjoint (``"backsolve"``).
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        gradient: str = "backsolve",
        t0: float = 0.0,
        t1: float = 1.0,
        options: Mapping[str, Any] | None = None,
        gradient_options: Mapping[str, Any] | None = None,
        autocast_dtype: torch.dtype | None = None,
    ):
        block = ODEBlock(
            MNISTDynamics(channels),
            t0=t0,
            t1=t1,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            options=options,
            gradient_options=gradient_options,
        )
        super().__init__(block, channels, autocast_dtype)


class RKNet(_ODEClassifier):
    """The ODE-Net with a fixed-step scheme: ``steps`` steps of ``method`` on ``[t0, t1]``.

    Gradients backpropagate through the steps (``gradient="direct"``), so
    memory grows with ``steps`` times the stages of ``method``.
    """

    def __init__(
        self,
        *,
        channels: int = 64,
        method: str = "rk4",
        steps: int = 4,
        t0: float = 0.0,
        t1: float = 1.0,
        autocast_dtype: torch.dtype | None = None,
    ):
        if not isinstance(steps, int) or steps < 1:
            raise NeurodeInputError(f"steps must be a positive integer, got {steps!r}")
        if not t1 > t0:
            raise NeurodeInputError(f"t1 must be greater than t0, got t0={t0}, t1={t1}")
        block = ODEBlock(
            MNISTDynamics(channels),
            t0=t0,
            t1=t1,
            method=method,
            gradient="direct",
            options={"step_size": (t1 - t0) / steps},
        )
        super().__init__(block, channels, autocast_dtype)
        self.steps = steps
