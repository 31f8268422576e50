"""Irregularly sampled time series: argument checks and batching on a union time grid.

Every sequence model in :mod:`neurode.models` takes a batch of series as three
tensors on one shared grid:

- ``times``  ``(T,)``, strictly monotonic;
- ``values`` ``(B, T, D)``;
- ``mask``   ``(B, T, D)`` (per feature) or ``(B, T)`` (per time), 1 or True
  where a value was observed.

Series observed at different times share the sorted union of all their times,
each masked out where it has no observation (:func:`neurode.data.union_time_grid`
builds this form). Unobserved entries of ``values`` may hold anything (zeros,
NaN); the models never read them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..errors import InvalidTimesError, NeurodeInputError, ShapeMismatchError


def check_times(times: torch.Tensor, name: str = "times", increasing: bool = False) -> None:
    """Raise :class:`InvalidTimesError` unless ``times`` is 1-D, finite and strictly monotonic."""
    if not isinstance(times, torch.Tensor) or times.ndim != 1 or times.numel() == 0:
        raise InvalidTimesError(f"{name} must be a non-empty 1-D tensor")
    if not torch.is_floating_point(times):
        raise InvalidTimesError(f"{name} must be a floating-point tensor, got {times.dtype}")
    if not torch.isfinite(times).all():
        raise InvalidTimesError(f"{name} holds NaN or infinity")
    if times.numel() > 1:
        steps = times[1:] - times[:-1]
        if increasing and not (steps > 0).all():
            raise InvalidTimesError(f"{name} must be strictly increasing")
        if not ((steps > 0).all() or (steps < 0).all()):
            raise InvalidTimesError(f"{name} must be strictly monotonic")


def check_series(
    times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Check a batch of series on a shared grid and return its mask as a float ``(B, T, D)``.

    ``mask=None`` means every value was observed; a ``(B, T)`` mask applies to
    every feature.
    """
    check_times(times, increasing=True)
    if not isinstance(values, torch.Tensor) or values.ndim != 3:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values)
        raise ShapeMismatchError(f"values must have shape (batch, time, features), got {shape}")
    if not torch.is_floating_point(values):
        raise NeurodeInputError(f"values must be floating point, got {values.dtype}")
    if values.shape[1] != times.shape[0]:
        raise ShapeMismatchError(
            f"values has {values.shape[1]} time points but times has {times.shape[0]}"
        )
    if mask is None:
        mask = torch.ones_like(values)
    elif not isinstance(mask, torch.Tensor) or mask.shape not in (values.shape, values.shape[:2]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)
        raise ShapeMismatchError(
            f"mask must have the shape of values {tuple(values.shape)} or its first two axes, "
            f"got {shape}"
        )
    elif mask.ndim == 2:
        mask = mask[..., None].expand_as(values)
    mask = mask.to(values.dtype)
    observed = torch.where(mask > 0, values, torch.zeros_like(values))
    if not torch.isfinite(observed).all():
        raise NeurodeInputError("observed values (mask 1) hold NaN or infinity")
    return mask


def check_sizes(**sizes: int) -> None:
    """Layer sizes given by name must be positive (``check_sizes(input_dim=3, hidden_dim=8)``)."""
    if any(size < 1 for size in sizes.values()):
        raise NeurodeInputError(f"{' and '.join(sizes)} must be positive")


def check_recurrent_input(
    times: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, input_dim: int
) -> torch.Tensor:
    """:func:`check_series` for a recurrent model reading ``input_dim`` features."""
    mask = check_series(times, values, mask)
    if values.shape[-1] != input_dim:
        raise NeurodeInputError(
            f"values have {values.shape[-1]} features, the model expects {input_dim}"
        )
    return mask


def initial_hidden_state(
    h0: torch.Tensor | None, values: torch.Tensor, hidden_dim: int
) -> torch.Tensor:
    """Initial state ``(B, hidden_dim)`` for ``(B, T, D)`` values: ``h0`` checked, or zeros."""
    batch = values.shape[0]
    if h0 is None:
        return values.new_zeros(batch, hidden_dim)
    if not isinstance(h0, torch.Tensor) or h0.shape != (batch, hidden_dim):
        shape = tuple(h0.shape) if isinstance(h0, torch.Tensor) else type(h0)
        raise ShapeMismatchError(f"h0 must have shape ({batch}, {hidden_dim}), got {shape}")
    return h0


def masked_values(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` with every unobserved entry replaced by 0 (also NaN placeholders)."""
    return torch.where(mask > 0, values, torch.zeros_like(values))


class RecurrentStates(NamedTuple):
    """Hidden states of a recurrent model over a grid of ``T`` times.

    ``before[:, i]`` is the state at ``times[i]`` built from the observations
    strictly before it (in the direction of processing); ``after[:, i]`` has
    also absorbed the observation at ``times[i]`` (equal to ``before`` where
    nothing was observed). ``final`` is the state after the last processed time.
    """

    before: torch.Tensor
    after: torch.Tensor
    final: torch.Tensor
