"""ODE-RNN: a recurrent network whose hidden state follows an ODE between observations.

Rubanova, Chen & Duvenaud (2019). For observation times ``t_0 < ... < t_{T-1}``
the hidden state starts at ``h_0`` and, for each ``i``,

    h_i^-  = ODESolve(f, h_{i-1}, t_{i-1} -> t_i)          (``before``)
    h_i    = GRUCell([x_i * m_i, m_i], h_i^-)               (``after``)

where ``m_i`` is the observation mask. A series with nothing observed at
``t_i`` skips the update (``h_i = h_i^-``), and the state of a series stays at
``h_0`` until its first observation; so a series gets the same states whether
it is run alone or in a batch on the union grid of all their times. With
``f = 0`` and a full mask this is exactly a GRU fed ``[x_i, 1]``.

Run with ``reverse=True`` the model reads the series from the last time to the
first, integrating the ODE backwards in time; this is the latent ODE's encoder.
"""

from __future__ import annotations

import torch
from torch import nn

from ._layers import _AutonomousField, _mlp, _solve_states
from .time_series import (
    RecurrentStates,
    check_recurrent_input,
    check_sizes,
    initial_hidden_state,
    masked_values,
)


class ODERNN(nn.Module):
    """GRU updates at observations, ODE evolution of the hidden state in between.

    Args:
        input_dim: number of features ``D`` of each observation.
        hidden_dim: size ``H`` of the hidden state.
        dynamics: the hidden-state vector field ``f(t, h)``; by default an MLP
            ``H -> dynamics_width -> H`` with tanh that ignores ``t``.
        dynamics_width: width of the default MLP.
        method, rtol, atol, options, gradient, gradient_options: passed to
            :func:`neurode.solve` for each evolution between consecutive times.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        *,
        dynamics: nn.Module | None = None,
        dynamics_width: int = 64,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-4,
        options: dict | None = None,
        gradient: str = "direct",
        gradient_options: dict | None = None,
    ):
        super().__init__()
        check_sizes(input_dim=input_dim, hidden_dim=hidden_dim)
        self.input_dim = input_dim
        self.hidden_dim = hidden_dim
        if dynamics is None:
            dynamics = _AutonomousField(_mlp([hidden_dim, dynamics_width, hidden_dim], "tanh"))
        self.dynamics = dynamics
        self.cell = nn.GRUCell(2 * input_dim, hidden_dim)
        self.method = method
        self.rtol = rtol
        self.atol = atol
        self.options = options
        self.gradient = gradient
        self.gradient_options = gradient_options

    def evolve(self, h: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """Solve ``dh/dt = f(t, h)`` from ``times[0]``; returns ``(len(times), *h.shape)``."""
        return _solve_states(self, self.dynamics, h, times)

    def forward(
        self,
        times: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        h0: torch.Tensor | None = None,
        reverse: bool = False,
    ) -> RecurrentStates:
        """Run over a batch of series on the grid ``times`` (``(T,)``, increasing).

        ``values`` and ``mask`` are ``(B, T, D)``. Returns :class:`RecurrentStates`
        with ``before``/``after`` of shape ``(B, T, H)`` in the order of ``times``
        whichever the direction of processing, and ``final`` ``(B, H)``: the state
        at ``times[-1]`` (or ``times[0]`` when ``reverse``).
        """
        mask = check_recurrent_input(times, values, mask, self.input_dim)
        inputs = torch.cat([masked_values(values, mask), mask], dim=-1)
        observed = mask.amax(dim=-1, keepdim=True) > 0
        h = initial_hidden_state(h0, values, self.hidden_dim)
        order = range(len(times) - 1, -1, -1) if reverse else range(len(times))
        before: list[torch.Tensor] = [None] * len(times)  # type: ignore[list-item]
        after: list[torch.Tensor] = [None] * len(times)  # type: ignore[list-item]
        start = h
        started = torch.zeros_like(observed[:, 0])
        previous = None
        for i in order:
            # Until some series has been observed every state is h0; nothing to solve.
            if previous is not None and bool(started.any()):
                evolved = self.evolve(h, torch.stack([times[previous], times[i]]))[-1]
                h = torch.where(started, evolved, start)
            before[i] = h
            h = torch.where(observed[:, i], self.cell(inputs[:, i], h), h)
            after[i] = h
            started = started | observed[:, i]
            previous = i
        return RecurrentStates(torch.stack(before, 1), torch.stack(after, 1), h)
