"""Tuple states: a tuple of tensors is solved as one flat vector.

The solver and the error norm see one tensor; ``func`` sees the tuple it was
written for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ShapeMismatchError, StructureMismatchError


@dataclass(frozen=True)
class TupleLayout:
    """Shapes of the members of a tuple state and their place in the flat vector."""

    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]

    @classmethod
    def of(cls, tensors: tuple[torch.Tensor, ...]) -> TupleLayout:
        return cls(tuple(x.shape for x in tensors), tuple(x.numel() for x in tensors))

    def flatten(self, tensors) -> torch.Tensor:
        return torch.cat([x.reshape(-1) for x in tensors])

    def flatten_like(self, tensors, dtype: torch.dtype) -> torch.Tensor:
        """The members of ``func``'s output as one flat vector of ``dtype``."""
        return torch.cat([x.reshape(-1).to(dtype) for x in tensors])

    def unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of ``flat`` (leading dimensions are kept: ``flat`` may be ``(T, n)``)."""
        lead = flat.shape[:-1]
        pieces = torch.split(flat, self.numels, dim=-1)
        return tuple(p.view((*lead, *shape)) for p, shape in zip(pieces, self.shapes))

    def check_output(self, output) -> None:
        if not isinstance(output, (tuple, list)) or len(output) != len(self.shapes):
            got = (
                f"a {type(output).__name__} of length {len(output)}"
                if isinstance(output, (tuple, list))
                else f"a {type(output).__name__}"
            )
            raise StructureMismatchError(
                f"func must return a tuple of {len(self.shapes)} tensors like y0, "
                f"but returned {got}"
            )
        for i, (out, shape) in enumerate(zip(output, self.shapes)):
            if not isinstance(out, torch.Tensor):
                raise StructureMismatchError(
                    f"func's output[{i}] must be a tensor, got {type(out).__name__}"
                )
            if out.shape != shape:
                raise ShapeMismatchError(
                    f"func's output[{i}] has shape {tuple(out.shape)} but y0[{i}] has shape "
                    f"{tuple(shape)}; dy/dt must have the state's shape"
                )
