"""Early stopping on a monitored loss, with the best parameters kept."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..errors import NeurodeInputError

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stop when the monitored loss has not improved for ``patience`` epochs.

    An epoch improves on the best loss so far when
    ``loss < best - min_delta``. With ``patience=None`` training never stops
    early, but the best parameters are still tracked. Its state (best loss,
    best epoch, epochs without improvement, best parameters) round-trips
    through :meth:`state_dict` so that a resumed run stops where the
    uninterrupted one would.
    """

    def __init__(self, patience: int | None = None, min_delta: float = 0.0):
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise NeurodeInputError(
                f"patience must be a positive integer or None, got {patience!r}"
            )
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise NeurodeInputError(f"min_delta must be finite and >= 0, got {min_delta!r}")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best_loss = math.inf
        self.best_epoch = -1
        self.epochs_without_improvement = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stopped = False

    def update(self, epoch: int, loss: float, model: nn.Module) -> bool:
        """Record ``loss`` for ``epoch``; returns True when training should stop."""
        if loss < self.best_loss - self.min_delta:
            self.best_loss = float(loss)
            self.best_epoch = epoch
            self.epochs_without_improvement = 0
            self.best_state = {
                name: value.detach().clone() for name, value in model.state_dict().items()
            }
        else:
            self.epochs_without_improvement += 1
        self.stopped = (
            self.patience is not None and self.epochs_without_improvement >= self.patience
        )
        return self.stopped

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "min_delta": self.min_delta,
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "best_state": self.best_state,
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = float(state["best_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.best_state = state["best_state"]
        self.stopped = bool(state["stopped"])
