"""The recurrent baseline for irregular series: a GRU told the time gaps.

Chen et al. (2018, §5) compare the latent ODE with "an RNN that takes the
time gaps as input". With ``Δ_i = |t_i - t_{i-1}|`` (``Δ_0 = 0``) and mask ``m_i``:

    h_i^- = GRUCell([0, 0, Δ_i], h_{i-1})                   (``before``)
    h_i   = GRUCell([x_i * m_i, m_i, Δ_i], h_{i-1})         (``after``)

``before`` is what the network knows at ``t_i`` without the observation there
(the state used to predict ``x_i``); a series with nothing observed at ``t_i``
keeps ``h_i = h_i^-``, so the state still moves with elapsed time. Before its
first observation a series stays at ``h_0``.
"""

from __future__ import annotations

import torch
from torch import nn

from .time_series import (
    RecurrentStates,
    check_recurrent_input,
    check_sizes,
    initial_hidden_state,
    masked_values,
)


class TimeGapGRU(nn.Module):
    """GRU over ``[x * m, m, Δt]``; same interface as :class:`neurode.models.ODERNN`."""

    def __init__(self, input_dim: int, hidden_dim: int):
        super().__init__()
        check_sizes(input_dim=input_dim, hidden_dim=hidden_dim)
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        self.cell = nn.GRUCell(2 * input_dim + 1, hidden_dim)

    def forward(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        h0: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> RecurrentStates:
        """Run over ``(B, T, D)`` series on the grid ``times``; see :class:`RecurrentStates`."""
        mask = check_recurrent_input(times, values, mask, self.input_dim)
        batch = values.shape[0]
        observed = mask.amax(dim=-1, keepdim=True) > 0
        x = masked_values(values, mask)
        h = initial_hidden_state(h0, values, self.hidden_dim)
        order = range(len(times) - 1, -1, -1) if reverse else range(len(times))
        before: list[torch.Tensor] = [None] * len(times)  # type: ignore[list-item]
        after: list[torch.Tensor] = [None] * len(times)  # type: ignore[list-item]
        start = h
        started = torch.zeros_like(observed[:, 0])
        previous = None
        for i in order:
            gap = (times[i] - times[previous]).abs() if previous is not None else times[i] * 0
            gap = gap.expand(batch, 1)
            blank = torch.cat([torch.zeros_like(x[:, i]), torch.zeros_like(x[:, i]), gap], -1)
            h_before = (
                torch.where(started, self.cell(blank, h), start) if previous is not None else h
            )
            update = self.cell(torch.cat([x[:, i], mask[:, i], gap], -1), h)
            h = torch.where(observed[:, i], update, h_before)
            before[i] = h_before
            after[i] = h
            started = started | observed[:, i]
            previous = i
        return RecurrentStates(torch.stack(before, 1), torch.stack(after, 1), h)
