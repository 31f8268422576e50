"""Forecasting with a recurrent model: decode the state each time point is reached with.

For a recurrent model (:class:`ODERNN` or :class:`TimeGapGRU`) the prediction
at ``t_i`` is ``decoder(h_i^-)``, the state built from the observations strictly
before ``t_i``. Past the last observation the mask is 0 and the state keeps
moving (by the ODE, or by the time gaps), which gives the extrapolation.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ShapeMismatchError
from ._layers import _mlp
from .time_series import check_series, masked_values


class SequencePredictor(nn.Module):
    """A recurrent model plus a decoder ``H -> D`` (linear, or an MLP of ``decoder_width``)."""

    def __init__(self, recurrent: nn.Module, output_dim: int, decoder_width: int | None = None):
        super().__init__()
        self.recurrent = recurrent
        hidden = recurrent.hidden_dim
        sizes = (
            [hidden, output_dim] if decoder_width is None else [hidden, decoder_width, output_dim]
        )
        self.decoder = _mlp(sizes, "tanh")

    def forward(
        self, times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Predictions ``(B, T, output_dim)`` at every grid time from the observations before it."""
        states = self.recurrent(times, values, mask)
        return self.decoder(states.before)

    def loss(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        target_values: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mean squared error over the target entries (by default the observed ones).

        The model reads ``values`` where ``mask`` is 1 and is scored on
        ``target_values`` (default ``values``) where ``target_mask`` (default
        ``mask``) is 1, all on the same grid ``times``.
        """
        mask = check_series(times, values, mask)
        target_values = values if target_values is None else target_values
        target_mask = (
            mask if target_mask is None else check_series(times, target_values, target_mask)
        )
        if target_values.shape[:2] != values.shape[:2]:
            raise ShapeMismatchError("target_values must share the batch and time grid of values")
        predictions = self(times, values, mask)
        return _masked_mse(predictions, target_values, target_mask)


def _masked_mse(
    predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    squared = (predictions - masked_values(targets, mask)) ** 2 * mask
    return squared.sum() / mask.sum().clamp_min(1)
