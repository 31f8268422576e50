"""Jacobians ``J = ∂f/∂y`` of the vector field, dense or as products ``J v``.

Two layouts, matching the two ways a batch is solved:

- *joint*: the whole state is one system; ``J`` is the ``(N, N)`` Jacobian of
  the flattened state (``N = y.numel()``), and ``t`` is a Python float.
- *per row*: row ``b`` of a state of shape ``(B, ...)`` is its own system with
  its own time ``t[b]`` (``t`` of shape ``(B,)``); ``J`` has shape ``(B, d, d)``
  with ``d`` the size of one row. Rows must not interact through ``func`` (the
  per-sample contract), so row ``b``'s Jacobian is the ``b``-th diagonal block
  of the joint one; it is computed with ``d`` products against basis vectors
  set in every row at once (one vmapped call), never as the ``(Bd, Bd)`` whole.

In joint mode a user-supplied Jacobian may also come as ``(B, d, d)`` blocks for
a state of shape ``(B, ...)``: it declares that the rows do not interact, so the
joint ``J`` is block diagonal (:func:`is_row_blocks`). The iteration matrices
then factor ``B`` blocks of size ``d`` instead of one ``(Bd, Bd)`` matrix;
consumers without a block path expand it (:func:`dense_from_blocks`). An
automatically differentiated joint Jacobian takes the same layout when
:func:`row_block_jacobian` finds the rows independent: ``d`` products instead
of ``Bd``, and ``B`` small factorisations instead of one large one.

Derivatives come from ``torch.func``: ``"reverse"`` (vector–Jacobian products,
works with every op that has a backward formula) or ``"forward"``
(Jacobian–vector products: one vmapped forward-mode call). Either way ``func``
must be usable under ``torch.func.vmap``. The result is detached: it serves the
linear algebra of the stage solves, not the autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ShapeMismatchError

VectorField = Callable[..., torch.Tensor]
"""``func(t, y) -> dy/dt`` with ``t`` a float (joint) or a ``(B,)`` tensor (per row)."""

JACOBIAN_METHODS = ("reverse", "forward")


def _as_state(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return output if output.dtype == y.dtype else output.to(y.dtype)


def dense_jacobian(
    func: VectorField,
    t: float | torch.Tensor,
    y: torch.Tensor,
    *,
    per_row: bool,
    method: str = "reverse",
) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, y)``: ``(N, N)`` joint, ``(B, d, d)`` per row (see the module notes)."""
    if method not in JACOBIAN_METHODS:
        raise ValueError(f"unknown Jacobian method {method!r}; expected one of {JACOBIAN_METHODS}")
    y = y.detach().contiguous()  # forward mode cannot write tangents into an expanded state
    if method == "reverse":
        return _reverse_jacobian(func, t, y, per_row)
    if not per_row:

        def flat_field(flat: torch.Tensor) -> torch.Tensor:
            return _as_state(func(t, flat.view_as(y)), y).reshape(-1)

        return torch.func.jacfwd(flat_field)(y.reshape(-1)).detach().contiguous()

    rows, d = y.shape[0], y[0].numel()
    # Basis vector k set in every row: shape (d, B, *row_shape).
    basis = torch.eye(d, dtype=y.dtype, device=y.device)
    basis = basis[:, None, :].expand(d, rows, d).reshape(d, *y.shape)

    def field(state: torch.Tensor) -> torch.Tensor:
        return _as_state(func(t, state), y)

    def push(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(field, (y,), (tangent,))[1]

    products = torch.func.vmap(push)(basis)  # [k, b] = J_b e_k: column k
    return products.reshape(d, rows, d).permute(1, 2, 0).contiguous().detach()


def differentiable_jacobian(
    func: VectorField, t: float | torch.Tensor, y: torch.Tensor, *, per_row: bool
) -> torch.Tensor:
    """``∂f/∂y`` at ``(t, y)`` with a graph: differentiable in ``y`` and in what ``func`` holds
    (a Rosenbrock step's solution depends on ``J`` itself)."""
    return _reverse_jacobian(func, t, y, per_row, create_graph=True)


def _reverse_jacobian(
    func: VectorField, t, y: torch.Tensor, per_row: bool, *, create_graph: bool = False
) -> torch.Tensor:
    """Rows of ``J`` by one evaluation of ``func`` and a batched backward pass.

    Plain autograd rather than ``torch.func.jacrev``: the forward pass then runs
    without functorch's wrappers, which on small states costs as much as the
    products themselves (2.3 times as long with a graph on Robertson's three
    equations); only the backward pass is vectorised. With ``create_graph`` the
    products keep their graph, through ``y`` where it requires grad.
    """
    with torch.enable_grad():
        state = y if create_graph and y.requires_grad else y.detach().clone().requires_grad_(True)
        out = _as_state(func(t, state), y)
        if per_row:
            rows, d = y.shape[0], y[0].numel()
            # Basis vector k set in every row: [k, b] = e_kᵀ J_b, row k of each block.
            basis = torch.eye(d, dtype=y.dtype, device=y.device)
            basis = basis[:, None, :].expand(d, rows, d).reshape(d, *y.shape)
        else:
            n = y.numel()
            basis = torch.eye(n, dtype=y.dtype, device=y.device).reshape(n, *y.shape)
        if not out.requires_grad:
            products = torch.zeros_like(basis)
        else:
            (products,) = torch.autograd.grad(
                out,
                state,
                basis,
                create_graph=create_graph,
                is_grads_batched=True,
                materialize_grads=True,
            )
    if per_row:
        return products.reshape(d, rows, d).permute(1, 0, 2).contiguous()
    return products.reshape(n, n).contiguous()


def user_jacobian(
    jacobian: Callable[..., torch.Tensor],
    t: float | torch.Tensor,
    y: torch.Tensor,
    *,
    per_row: bool,
) -> torch.Tensor:
    """A user-supplied ``jacobian(t, y)``, checked for its layout and cast to the state's dtype."""
    matrix = jacobian(t, y)
    blocks = (y.shape[0], y[0].numel(), y[0].numel()) if y.ndim >= 2 else None
    if per_row:
        allowed, layout = (blocks,), "per row"
    elif blocks is not None:
        allowed = ((y.numel(), y.numel()), blocks)
        layout = "the flattened state, or one block per row when rows do not interact"
    else:
        allowed, layout = ((y.numel(), y.numel()),), "the flattened state"
    if not isinstance(matrix, torch.Tensor) or tuple(matrix.shape) not in allowed:
        shape = tuple(matrix.shape) if isinstance(matrix, torch.Tensor) else type(matrix)
        expected = " or ".join(str(shape) for shape in allowed)
        raise ShapeMismatchError(
            f"jacobian(t, y) must return a tensor of shape {expected} for a state of shape "
            f"{tuple(y.shape)} ({layout}); got {shape}"
        )
    return _as_state(matrix, y).detach()


def is_row_blocks(jacobian: torch.Tensor, per_row: bool) -> bool:
    """A joint-mode Jacobian given as ``(B, d, d)`` blocks of independent rows."""
    return not per_row and jacobian.ndim == 3


def dense_from_blocks(jacobian: torch.Tensor) -> torch.Tensor:
    """The ``(Bd, Bd)`` block-diagonal matrix of ``(B, d, d)`` row blocks."""
    return torch.block_diag(*jacobian.unbind(0))


def jacobian_vector_product(
    func: VectorField, t: float | torch.Tensor, y: torch.Tensor, v: torch.Tensor
) -> torch.Tensor:
    """``J(t, y) v`` by forward-mode differentiation, shaped like ``y`` (no Jacobian is formed).

    Per row this is ``J_b v_b`` for every row at once, since rows do not interact.
    """
    field = lambda state: _as_state(func(t, state), y)
    # Forward mode writes tangents into the primal's layout: an expanded (stride-0)
    # state, as `y0.expand(B, d)` makes, needs its own memory first.
    primal = y.detach().contiguous()
    return torch.func.jvp(field, (primal,), (v.to(y.dtype).contiguous(),))[1].detach()


def row_block_jacobian(
    func: VectorField, t: float | torch.Tensor, y: torch.Tensor, *, method: str = "reverse"
) -> torch.Tensor | None:
    """The joint Jacobian as ``(B, d, d)`` row blocks, or None if the rows interact.

    The blocks are computed as per row (``d`` products against basis vectors set
    in every row), which is right only if row ``b`` of ``func`` depends on row
    ``b`` of ``y`` alone. That is checked once, against an exact Jacobian–vector
    product with a random vector: where rows interact (a batch norm, attention
    across the batch), ``J v`` differs from the block product and the answer is
    None, so the caller keeps the dense ``(Bd, Bd)`` matrix.
    """
    if y.ndim < 2 or y.shape[0] < 2:
        return None
    y = y.contiguous()
    blocks = dense_jacobian(func, t, y, per_row=True, method=method)
    generator = torch.Generator(device="cpu").manual_seed(0)
    probe = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    try:
        exact = jacobian_vector_product(func, t, y, probe).reshape(y.shape[0], -1)
    except (RuntimeError, NotImplementedError):
        return None  # no forward-mode derivative to check with: keep the dense matrix
    blocked = torch.einsum("bij,bj->bi", blocks, probe.reshape(y.shape[0], -1))
    scale = float((blocks.abs() @ probe.reshape(y.shape[0], -1, 1).abs()).amax()) + 1e-300
    rounding = 64 * y[0].numel() * torch.finfo(y.dtype).eps
    if float((exact - blocked).abs().amax()) > rounding * scale:
        return None
    return blocks


def joint_jacobian(
    func: VectorField,
    t: float | torch.Tensor,
    y: torch.Tensor,
    *,
    method: str,
    row_blocks: bool | None,
) -> tuple[torch.Tensor, bool]:
    """The joint Jacobian by autodiff and whether it came as row blocks.

    ``row_blocks``: the decision taken at an earlier Jacobian of the solve (True:
    blocks, False: dense), or None to decide now by :func:`row_block_jacobian`.
    """
    if row_blocks is None:
        blocks = row_block_jacobian(func, t, y, method=method)
        if blocks is not None:
            return blocks, True
        row_blocks = False
    return dense_jacobian(func, t, y, per_row=row_blocks, method=method), row_blocks
