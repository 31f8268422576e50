"""``f(h)`` together with vector-Jacobian products ``vᵀ ∂f/∂h``, inside a vector field.

Regularised dynamics and CNFs need ``∂f/∂h`` at every evaluation of the vector
field, whatever the gradient method around the solve does with that evaluation:

- ``direct`` records a graph and differentiates through the products
  (``create_graph``);
- the adjoints evaluate under ``no_grad`` in the forward solve and under their
  own ``enable_grad`` in the backward one;
- forward sensitivities evaluate inside ``torch.func`` transforms (``jvp``,
  ``vmap``), where ``requires_grad_`` and ``torch.autograd.grad`` on the
  transformed tensors are not allowed; there the products come from
  ``torch.func.vjp``, which nests in those transforms (and costs more per
  call than plain autograd, so it is used only there).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def inside_functorch_transform() -> bool:
    """Whether the caller runs inside a ``torch.func`` transform (``jvp``, ``vmap``, ...)."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is None or peek() is not None


def value_and_vjps(
    function: Callable[[Tensor], Tensor], h: Tensor, cotangents: Sequence[Tensor]
) -> tuple[Tensor, list[Tensor]]:
    """``(function(h), [vᵀ ∂function/∂h for v in cotangents])``.

    The results are differentiable when the caller records a graph, and plain
    values (no graph kept) under an outer ``no_grad``. A ``function`` that does
    not depend on ``h`` gets zero products.
    """
    if inside_functorch_transform():
        value, vjp_fn = torch.func.vjp(function, h)
        return value, [vjp_fn(v.to(value.dtype))[0] for v in cotangents]
    keep_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        h_in = h if h.requires_grad else h.detach().requires_grad_(True)
        value = function(h_in)
        if not value.requires_grad:  # constant in h and in every parameter
            return value, [torch.zeros_like(h) for _ in cotangents]
        products = []
        for i, v in enumerate(cotangents):
            (product,) = torch.autograd.grad(
                value,
                h_in,
                grad_outputs=v.to(value.dtype),
                create_graph=keep_graph,
                retain_graph=keep_graph or i < len(cotangents) - 1,
                allow_unused=True,
            )
            products.append(torch.zeros_like(h) if product is None else product)
    if not keep_graph:
        value = value.detach()
        products = [product.detach() for product in products]
    return value, products
