r"""Iteration matrices of augmented systems, built from the base state's Jacobian alone.

Sensitivity and adjoint systems carry copies of the state's linearisation: the
forward sensitivities ``S' = J S + f_θ`` next to ``y' = f``, the adjoint
``a' = −Jᵀ a`` next to ``z' = f``, plus integrals that feed back into nothing.
Their exact Jacobian is block lower triangular with ``±J`` or ``±Jᵀ`` on the
diagonal (the blocks below hold second derivatives of ``f``). Newton's method
only needs an approximation of it, and the block diagonal is a good one: the
iteration converges to the exact stage solution, the neglected coupling costing
at most an iteration or so. So with ``J`` of the base state (``n × n``):

- the state ``x`` is the concatenation of blocks and a tail; block ``i`` holds
  ``copies_i`` vectors of length ``n`` laid out as an ``(n, copies_i)`` matrix
  (row-major), on which the Jacobian acts as ``c_i J`` (``c_i Jᵀ`` when
  ``transposed_i``); the tail's Jacobian is zero;
- ``I − hγ·diag`` is then solved block by block with the LU factors of
  ``I − hγ c J`` (a transposed solve for ``Jᵀ``), at most one factorisation per
  distinct ``c``, each of size ``n`` whatever the number of copies.

:class:`BlockStructure` describes the layout; :class:`StructuredIterationMatrix`
and :class:`StructuredBlockIterationMatrix` (the stage system
``I − h (A ⊗ J_aug)`` of a fully implicit method) solve with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockStructure:
    """``x = [block_1, …, block_k, tail]``; block ``i`` is ``(n, copies_i)``, times ``c_i J``."""

    n: int
    blocks: tuple[tuple[int, float, bool], ...]
    """``(copies, coefficient, transposed)`` of each block, in order."""

    def __post_init__(self) -> None:
        if not self.blocks or self.blocks[0] != (1, 1.0, False):
            raise ValueError("the first block must be the base state itself: (1, 1.0, False)")

    def base_state(self, x: torch.Tensor) -> torch.Tensor:
        """The base state: the first ``n`` entries of ``x``."""
        return x.reshape(-1)[: self.n]

    def segments(self):
        """``(start, copies, coefficient, transposed)`` of each block, then the tail's start."""
        start, out = 0, []
        for copies, coefficient, transposed in self.blocks:
            out.append((start, copies, coefficient, transposed))
            start += copies * self.n
        return out, start


class StructuredIterationMatrix:
    """``I − hγ·blockdiag(c_i J^{(T)})`` on the layout of a :class:`BlockStructure`."""

    def __init__(self, jacobian: torch.Tensor, h_gamma: float, structure: BlockStructure):
        self.structure = structure
        n = structure.n
        identity = torch.eye(n, dtype=jacobian.dtype, device=jacobian.device)
        self._factors: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
        singular = torch.zeros((), dtype=torch.bool, device=jacobian.device)
        for _, coefficient, _ in structure.blocks:
            if coefficient != 0.0 and coefficient not in self._factors:
                lu, pivots, info = torch.linalg.lu_factor_ex(
                    identity - (h_gamma * coefficient) * jacobian
                )
                self._factors[coefficient] = (lu, pivots)
                singular = singular | (info != 0)
        self.singular = singular
        self.factorizations = len(self._factors)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        flat = rhs.reshape(-1)
        out = flat.clone()
        segments, _ = self.structure.segments()
        n = self.structure.n
        for start, copies, coefficient, transposed in segments:
            if coefficient == 0.0:
                continue
            lu, pivots = self._factors[coefficient]
            block = flat[start : start + copies * n].view(n, copies).to(lu.dtype)
            solved = torch.linalg.lu_solve(lu, pivots, block, adjoint=transposed)
            out[start : start + copies * n] = solved.reshape(-1).to(out.dtype)
        return out.view(rhs.shape)


class StructuredBlockIterationMatrix:
    """``I − h (A ⊗ J_aug)`` for the ``s`` stages of a fully implicit method, block by block.

    Unknowns are laid out ``(s, *x.shape)``. For a block acted on by ``c J`` the
    stage system is ``I − h (A ⊗ cJ)`` on ``(s·n, copies)``; for ``c Jᵀ`` it is
    ``I − h (A ⊗ cJᵀ)``; the tail is left as it is.
    """

    def __init__(
        self, jacobian: torch.Tensor, h: float, a: torch.Tensor, structure: BlockStructure
    ):
        self.structure = structure
        self.s = a.shape[0]
        a = a.to(jacobian.dtype)
        size = self.s * structure.n
        identity = torch.eye(size, dtype=jacobian.dtype, device=jacobian.device)
        self._factors: dict[tuple[float, bool], tuple[torch.Tensor, torch.Tensor]] = {}
        singular = torch.zeros((), dtype=torch.bool, device=jacobian.device)
        for _, coefficient, transposed in structure.blocks:
            key = (coefficient, transposed)
            if coefficient != 0.0 and key not in self._factors:
                block_jacobian = jacobian.mT if transposed else jacobian
                kron = torch.kron(a, coefficient * block_jacobian.contiguous())
                lu, pivots, info = torch.linalg.lu_factor_ex(identity - h * kron)
                self._factors[key] = (lu, pivots)
                singular = singular | (info != 0)
        self.singular = singular
        self.factorizations = len(self._factors)

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        s, n = self.s, self.structure.n
        flat = rhs.reshape(s, -1)
        out = flat.clone()
        segments, _ = self.structure.segments()
        for start, copies, coefficient, transposed in segments:
            if coefficient == 0.0:
                continue
            lu, pivots = self._factors[(coefficient, transposed)]
            block = flat[:, start : start + copies * n].reshape(s * n, copies).to(lu.dtype)
            solved = torch.linalg.lu_solve(lu, pivots, block)
            out[:, start : start + copies * n] = solved.reshape(s, copies * n).to(out.dtype)
        return out.view(rhs.shape)


__all__ = ["BlockStructure", "StructuredBlockIterationMatrix", "StructuredIterationMatrix"]
