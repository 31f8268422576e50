"""Differentiable event times by the implicit function theorem.

The event time ``t_e`` solves ``g(t_e, y(t_e)) = 0``. A perturbation ``δy`` of the
state at fixed time moves it by

    δt_e = -(∂g/∂y · δy) / (∂g/∂t + ∂g/∂y · f(t_e, y_e)),

and the state returned at the event moves with it, ``δy_e = δy + f δt_e``; a change
``δθ`` of the event function's own parameters moves it by ``-(∂g/∂θ · δθ)`` over the
same denominator. The backward pass below applies the transpose of this map to the
incoming gradients, and autograd carries the result on through the solve that
produced ``y(t_e)`` (to ``y0``, ``t0`` and the parameters of ``func``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..integrate.tuple_state import TupleLayout
from .captured import captured_tensors


class _EventTimeGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, func, event_fn, event_t, state_t, *params):
        ctx.func = func
        ctx.event_fn = event_fn
        ctx.save_for_backward(event_t, state_t, *params)
        return event_t.detach().clone(), state_t.detach().clone()

    @staticmethod
    def backward(ctx, grad_t, grad_state):
        event_t, state_t, *params = ctx.saved_tensors
        with torch.enable_grad():
            t = event_t.detach().requires_grad_(True)
            y = state_t.detach().requires_grad_(True)
            g = ctx.event_fn(t, y)
            grads = torch.autograd.grad(g.sum(), (t, y, *params), allow_unused=True)
        dg_dt, dg_dy, *dg_dparams = (
            torch.zeros_like(x) if d is None else d for d, x in zip(grads, (t, y, *params))
        )
        with torch.no_grad():
            f = ctx.func(event_t.detach(), state_t.detach())
            total_dt = grad_t + torch.sum(grad_state * f)
            dg_total = dg_dt + torch.sum(dg_dy * f)
            factor = total_dt / dg_total
            grad_y = grad_state - dg_dy * factor
            grad_params = [-d * factor for d in dg_dparams]
        return (None, None, None, grad_y, *grad_params)


class _ZeroGradientThrough(torch.autograd.Function):
    """``value`` joined to the graph of ``anchor`` with a zero gradient."""

    @staticmethod
    def forward(ctx, value, anchor):
        return value.detach().clone()

    @staticmethod
    def backward(ctx, grad):
        return None, None


def attach_without_gradient(value: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """``value`` as part of ``anchor``'s graph, passing no gradient (torchdiffeq's adjoint
    returns an event time one can call ``backward`` on; its gradient comes from
    :func:`odeint_event`)."""
    if not (torch.is_grad_enabled() and anchor.requires_grad):
        return value
    return _ZeroGradientThrough.apply(value, anchor)


def differentiable_event(
    func: Callable,
    y0: Any,
    t0: torch.Tensor,
    *,
    event_fn: Callable,
    reverse_time: bool = False,
    odeint_interface: Callable,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    t0 = torch.as_tensor(t0)
    if not t0.is_floating_point():
        t0 = t0.to(torch.get_default_dtype())
    start = t0.reshape(-1)
    direction = -1.0 if reverse_time else 1.0
    t = torch.cat([start, start.detach() + direction])
    event_t, solution = odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)

    if isinstance(solution, torch.Tensor):
        layout = None
        state_t = solution[-1]
        flat_func, flat_event = func, event_fn
    else:
        layout = TupleLayout.of(tuple(s[-1] for s in solution))
        state_t = layout.flatten([s[-1] for s in solution])

        def flat_func(t, y):
            return layout.flatten(func(t, layout.unflatten(y)))

        def flat_event(t, y):
            return event_fn(t, layout.unflatten(y))

    # A vector-valued event function fires when its first component crosses zero; the
    # scalar whose root the event time is: min_k g_k(t, y) · sign g_k(t0, y0) (as
    # torchdiffeq combines them), so the gradient follows the component that fired.
    with torch.no_grad():
        start_state = y0 if isinstance(y0, torch.Tensor) else tuple(y0)
        signs = torch.sign(event_fn(start.reshape(()).detach(), start_state))

    def crossing(t, y):
        return (flat_event(t, y) * signs).min()

    # The event function's own parameters (a module's, or tensors in its closure).
    params = tuple(p for p in captured_tensors(event_fn) if p.requires_grad)
    event_t, state_t = _EventTimeGradient.apply(flat_func, crossing, event_t, state_t, *params)
    if layout is None:
        return event_t, torch.cat([solution[:-1], state_t[None]], dim=0)
    members = layout.unflatten(state_t)
    return event_t, tuple(torch.cat([s[:-1], m[None]], dim=0) for s, m in zip(solution, members))
