"""How an augmented vector field tells an implicit method its Newton matrix.

The forward sensitivities and the backsolve adjoint integrate augmented systems
whose dense Jacobian ``torch.func`` cannot take (their fields differentiate
``func`` themselves) and would not want to (it is mostly copies of the state's
own). Such a field carries a ``jacobian_blocks`` attribute, an
:class:`AugmentedJacobian`: its base state's vector field and the
:class:`~neurode.solvers.structured_matrix.BlockStructure` of the rest. The
implicit steppers then factor only the base state's ``n × n`` matrices
(:mod:`neurode.solvers.structured_matrix`); Newton's method converges to the
exact stage solution regardless of the neglected off-diagonal blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UnknownOptionError
from ..solvers.jacobian_cache import JacobianCache
from ..solvers.structured_matrix import BlockStructure


@dataclass(frozen=True)
class AugmentedJacobian:
    """``base_field(t, z, perturb=0)``: the base state's field in solver time, ``z`` of
    ``base_shape``, evaluated from the side ``perturb`` says."""

    base_field: Callable[..., torch.Tensor]
    base_shape: torch.Size
    structure: BlockStructure

    @property
    def lag(self) -> int:
        """Newton iterations by which the last coupled block can trail the base state."""
        return len(self.structure.blocks)

    def cache(
        self,
        *,
        per_row: bool,
        method: str,
        reuse: bool,
        start_perturb: Callable[[], int] = lambda: 0,
    ) -> JacobianCache:
        if per_row:
            raise UnknownOptionError("augmented systems are solved jointly, not per row")
        shape = self.base_shape

        def flat_field(t, z: torch.Tensor) -> torch.Tensor:
            return self.base_field(t, z.view(shape), start_perturb()).reshape(-1)

        return JacobianCache(flat_field, method=method, reuse=reuse, structure=self.structure)


__all__ = ["AugmentedJacobian", "BlockStructure"]
