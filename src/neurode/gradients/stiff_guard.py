"""No gradient through the steps of an explicit method held at its stability limit.

Direct backpropagation differentiates the steps with their sizes held fixed. On a
stiff stretch an explicit method's step sizes sit at its stability limit, where
the step-size control is what keeps the solution stable; with the sizes frozen
the linearised steps amplify the stiff modes instead of damping them, and the
"gradient" is not the derivative of the solution, however accurate the solution
is (tsit5 on Robertson over [0, 0.4]: −0.71 at rtol 1e-4 and 2.2e4 at rtol 1e-8,
where the true value is 3.9e-4). When the stiffness test fired during a solve
that records a graph, the outputs from that time on refuse gradients with
:class:`~neurode.errors.StiffGradientError` in ``backward()``; the outputs before
it keep theirs. ``direct``, ``checkpoint`` (whose replays differentiate the same
steps) and ``forward`` (whose sensitivities are those of the same steps) use it.
"""

from __future__ import annotations

import torch

from ..errors import StiffGradientError


def refuse_gradients_past_stiffness(
    ys: torch.Tensor, t: torch.Tensor, stiff_at: float | None, method: str
) -> torch.Tensor:
    """``ys`` (one row per time of ``t``), with a hook that raises if a nonzero gradient
    reaches a row at or past ``stiff_at`` (in the direction of integration)."""
    if stiff_at is None or not ys.requires_grad:
        return ys
    times = t.detach().to(torch.float64)
    increasing = bool(times[-1] >= times[0]) if times.numel() > 1 else True
    past = times >= stiff_at if increasing else times <= stiff_at
    if not bool(past.any()):
        return ys
    rows = torch.nonzero(past).reshape(-1).to(ys.device)

    def refuse(grad: torch.Tensor) -> torch.Tensor:
        if bool((grad.index_select(0, rows) != 0).any()):
            raise StiffGradientError(
                f"{method} was held at its stability limit from t={stiff_at:.6g} on (the "
                "StiffnessWarning of the solve): the gradient through its steps there is "
                "not the derivative of the solution, because the steps are differentiated "
                "with their sizes frozen while the step-size control is what keeps them "
                "stable. Solve with method='auto' (tsit5, switching to an implicit method "
                "where needed) or an implicit method such as 'rodas5p' or 'kvaerno5'.",
                t=stiff_at,
            )
        return grad

    ys = ys.view_as(ys)  # a hook of this solve's own, not of a tensor the caller holds
    ys.register_hook(refuse)
    return ys
