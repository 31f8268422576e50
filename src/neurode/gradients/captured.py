"""Which tensors a vector field depends on, for the gradient methods that must be told.

``direct`` differentiates through the solve, so every tensor ``func`` uses gets its
gradient. The other methods run the forward solve without a graph and compute
``dL/dθ`` themselves for a given list of tensors ``θ``; a tensor missing from that
list would silently get no gradient. So:

- :func:`captured_tensors` finds what ``func`` visibly holds: the parameters of an
  ``nn.Module``, and the tensors that require grad (or modules) among a function's
  closure, the globals it names, a bound method's object and a ``functools.partial``'s
  arguments, looking through nested functions, lists, tuples and dicts;
- :func:`uncovered_inputs` checks the first real evaluation of ``func`` (with a graph,
  no extra call): every leaf tensor requiring grad that the output depends on must be
  reachable only through the state or a listed tensor, else the method raises
  :class:`~neurode.errors.GradientUnavailableError` before the solve goes on.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from ..errors import GradientUnavailableError

_DEPTH = 4


def captured_tensors(func: Callable) -> tuple[torch.Tensor, ...]:
    """Tensors requiring grad that ``func`` holds, each once."""
    found: dict[int, torch.Tensor] = {}
    seen: set[int] = set()
    _collect(func, found, seen, _DEPTH)
    return tuple(found.values())


def _collect(value: Any, found: dict, seen: set, depth: int) -> None:
    if depth < 0 or id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            found.setdefault(id(value), value)
        return
    if isinstance(value, torch.nn.Module):
        for parameter in value.parameters():
            if parameter.requires_grad:
                found.setdefault(id(parameter), parameter)
        # A module's forward may still close over other tensors.
        _collect(type(value).forward, found, seen, depth - 1)
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect(item, found, seen, depth - 1)
        return
    if isinstance(value, dict):
        for item in value.values():
            _collect(item, found, seen, depth - 1)
        return
    if isinstance(value, functools.partial):
        _collect(value.func, found, seen, depth - 1)
        _collect(value.args, found, seen, depth - 1)
        _collect(value.keywords, found, seen, depth - 1)
        return
    if inspect.ismethod(value):
        _collect(value.__self__, found, seen, depth - 1)
        _collect(value.__func__, found, seen, depth - 1)
        return
    if inspect.isfunction(value):
        for cell in value.__closure__ or ():
            try:
                _collect(cell.cell_contents, found, seen, depth - 1)
            except ValueError:  # an empty cell
                continue
        names = _global_names(value.__code__)
        module_globals = value.__globals__
        for name in names:
            if name in module_globals:
                _collect(module_globals[name], found, seen, depth - 1)
        for default in value.__defaults__ or ():
            _collect(default, found, seen, depth - 1)
        return
    if not isinstance(value, (type, types.ModuleType)):
        # Any other object (a callable, the object of a bound method): its attributes
        # may hold what func uses.
        attributes = getattr(value, "__dict__", None)
        if attributes:
            _collect(attributes, found, seen, depth - 1)


def _global_names(code) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if inspect.iscode(constant):
            names |= _global_names(constant)
    return names


def uncovered_inputs(output: torch.Tensor, covered: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Leaf tensors requiring grad that ``output`` depends on other than through ``covered``.

    The walk stops at a covered tensor: at its accumulation node if it is a leaf,
    at the node that produced it otherwise.
    """
    if not isinstance(output, torch.Tensor) or output.grad_fn is None:
        return []
    covered = list(covered)
    leaf_ids = {id(c) for c in covered if c.grad_fn is None}
    stop_nodes = {id(c.grad_fn) for c in covered if c.grad_fn is not None}
    missing: dict[int, torch.Tensor] = {}
    stack, visited = [output.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in visited or id(node) in stop_nodes:
            continue
        visited.add(id(node))
        variable = getattr(node, "variable", None)
        if variable is not None:  # an accumulation node: a leaf
            if id(variable) not in leaf_ids:
                missing.setdefault(id(variable), variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return list(missing.values())


def guard_first_evaluation(problem, params: Sequence[torch.Tensor], gradient: str) -> None:
    """Make the solve's first evaluation of ``func`` check that ``params`` cover its inputs.

    Raises :class:`GradientUnavailableError` from that evaluation, before the solve
    goes on, when ``func`` depends on a tensor requiring grad that ``gradient``
    would leave without a gradient.
    """

    def inspect(output: torch.Tensor, state: torch.Tensor) -> None:
        missing = uncovered_inputs(output, (state, *params))
        if missing:
            raise GradientUnavailableError(
                f"func depends on {describe(missing)} that require grad but are not among "
                f"the tensors gradient={gradient!r} computes gradients for, so they would get "
                "none. Pass them in params=(...) (adjoint_params=(...) for odeint_adjoint), "
                "make func an nn.Module that owns them, or use gradient='direct'."
            )

    problem.inspect_first = inspect


def describe(tensors: Sequence[torch.Tensor]) -> str:
    shapes = ", ".join(str(tuple(t.shape)) for t in tensors[:5])
    more = f" and {len(tensors) - 5} more" if len(tensors) > 5 else ""
    return f"{len(tensors)} tensor(s) of shape {shapes}{more}"


__all__ = ["captured_tensors", "describe", "guard_first_evaluation", "uncovered_inputs"]
