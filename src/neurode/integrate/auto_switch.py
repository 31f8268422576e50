r"""``method="auto"``: an explicit method where the problem is not stiff, implicit where it is.

A composition of two steppers in the one integration loop, sharing its
controller, step size and error norm (both methods are fifth order with a
fourth-order estimate, so the step-size rule does not change at a switch):

- it starts with ``tsit5``, whose :class:`~neurode.integrate.stiffness.StiffnessMonitor`
  runs Hairer's test on every accepted step; after ``15`` positive tests (reset
  by ``6`` negative ones in a row — DOPRI5's constants) the problem is stiff.
  Hairer's estimate misses stiffness at tight tolerances, where the stiff mode's
  amplitude in the stages is below the smooth drift's (Robertson at
  ``rtol=1e-8`` stays explicit for thousands of steps at ``hρ ≈ 3.5`` while the
  test reads ``0.5``–``1.5``), and gradients through such steps are meaningless.
  So every ``16``-th accepted explicit step also takes the Jacobian (the one the
  implicit side would take) and its spectral radius; ``2`` such checks in a row
  at the stability boundary declare stiffness as well. Then the solve continues
  with the implicit method (``rodas5p`` by default:
  on Robertson, van der Pol and HIRES it takes fewer evaluations than
  ``kvaerno5`` at equal accuracy, and its interpolant is fourth order);
- on the implicit side, the Jacobian the step factored gives the spectral radius
  ``ρ`` (its eigenvalues for up to 64 unknowns, else a few power iterations);
  after ``10`` accepted steps in a row with ``h ρ`` below half of ``tsit5``'s
  stability boundary, the explicit method would be stable at that step size,
  and the solve switches back.

A switch costs nothing: the derivative at the switching point is handed over
and the implicit method computes a fresh Jacobian there.

Per row (``batch="per_sample"``) every row has its own side: a step runs the
explicit method on the explicit rows and the implicit method on the others
(each with the other rows' step sizes set to zero, so they stay in place), and
the attempt combines them row by row.

Statistics: ``explicit_steps`` and ``implicit_steps`` (attempted steps on each
side; per row, ``(B,)`` tensors), ``switches``, and the implicit method's
Jacobian and factorisation counts.
"""

from __future__ import annotations

import torch

from ..solvers.interpolation import row_scale
from ..solvers.jacobian import jacobian_vector_product
from ..solvers.tableaus import TABLEAUS
from .implicit_stepper import ImplicitRungeKuttaMethod
from .rosenbrock_stepper import RosenbrockMethod
from .runge_kutta_stepper import RungeKuttaMethod
from .stepper import VectorField
from .stiffness import StiffnessMonitor, real_stability_boundary

STIFF_TESTS = 15
NONSTIFF_RESET = 6
NONSTIFF_STEPS = 10
NONSTIFF_FRACTION = 0.5
JACOBIAN_EVERY = 16
JACOBIAN_POSITIVES = 2
_EIGENVALUE_SIZE_MAX = 64
_POWER_ITERATIONS = 12


def spectral_radius(jacobian: torch.Tensor) -> torch.Tensor:
    """``max |λ(J)|`` of an ``(N, N)`` or ``(B, d, d)`` matrix (per row: a ``(B,)`` tensor)."""
    jacobian = jacobian.detach()
    n = jacobian.shape[-1]
    if n <= _EIGENVALUE_SIZE_MAX:
        values = torch.linalg.eigvals(jacobian.to(torch.float64))
        return values.abs().amax(dim=-1)
    vector = torch.ones(jacobian.shape[:-1] + (1,), dtype=jacobian.dtype, device=jacobian.device)
    estimate = torch.zeros(jacobian.shape[:-2], dtype=torch.float64, device=jacobian.device)
    for _ in range(_POWER_ITERATIONS):
        product = jacobian @ vector
        size = product.norm(dim=(-2, -1))
        estimate = (size / vector.norm(dim=(-2, -1)).clamp_min(1e-300)).to(torch.float64)
        vector = product / size.clamp_min(1e-300)[..., None, None]
    return estimate


def _matrix_free_radius(field: VectorField, t, y: torch.Tensor, per_row: bool) -> torch.Tensor:
    """``max |λ(J)|`` by power iteration on Jacobian-vector products (per row: ``(B,)``)."""
    y = y.detach()
    vector = torch.ones_like(y)
    dims = tuple(range(1, y.dim())) if per_row else tuple(range(y.dim()))
    estimate = torch.zeros(y.shape[:1] if per_row else (), dtype=torch.float64, device=y.device)
    for _ in range(_POWER_ITERATIONS):
        product = jacobian_vector_product(lambda s, z: field(s, z, 0), t, y, vector)
        size = product.norm(dim=dims, keepdim=True)
        ratio = size / vector.norm(dim=dims, keepdim=True).clamp_min(1e-300)
        estimate = ratio.reshape(estimate.shape).to(torch.float64)
        vector = product / size.clamp_min(1e-300)
    return estimate


class _RowAttempt:
    """An explicit and an implicit attempt on complementary rows, combined row by row."""

    def __init__(self, explicit, implicit, implicit_rows: torch.Tensor, t0, t1, h, y0):
        self.explicit, self.implicit = explicit, implicit
        self.implicit_rows = implicit_rows
        self.t0, self.t1, self.h, self.y0 = t0, t1, h, y0
        mask = row_scale(implicit_rows, y0).bool()
        self._mask = mask
        self.y1 = torch.where(mask, implicit.y1, explicit.y1)
        terms = []
        for (e_explicit, *_), (e_implicit, *_) in zip(explicit.error_terms, implicit.error_terms):
            terms.append((torch.where(mask, e_implicit, e_explicit), y0, self.y1))
        self.error_terms = terms
        converged = implicit.converged
        if not isinstance(converged, torch.Tensor):
            converged = torch.full_like(implicit_rows, bool(converged))
        self.converged = torch.where(implicit_rows, converged, True)
        finite = getattr(implicit, "finite", True)
        if not isinstance(finite, torch.Tensor):
            finite = torch.full_like(implicit_rows, bool(finite))
        self.finite = torch.where(implicit_rows, finite, True)
        self.predictive = implicit_rows & bool(getattr(implicit, "predictive", False))

    def dense_states(self, field: VectorField, thetas, out=None):
        # Per row θ is a (B,) tensor and the result one state.
        explicit = self.explicit.dense_states(field, thetas)
        implicit = self.implicit.dense_states(field, thetas)
        return torch.where(self._mask, implicit, explicit)

    def segment(self, field: VectorField):
        raise NotImplementedError("dense output is not kept per row")


class AutoSwitchMethod:
    """``tsit5`` and an implicit stepper, switched by stiffness (see the module notes)."""

    fused = False

    def __init__(self, implicit: RosenbrockMethod | ImplicitRungeKuttaMethod, *, user_time=float):
        tableau = TABLEAUS["tsit5"]
        monitor = StiffnessMonitor(
            tableau, every=1, count=STIFF_TESTS, reset=NONSTIFF_RESET, warn=False
        )
        self.explicit = RungeKuttaMethod(tableau, stiffness=monitor)
        self.implicit = implicit
        self.user_time = user_time
        if implicit.error_order != self.explicit.error_order:
            raise ValueError("auto needs an implicit method of tsit5's error order")
        self.error_order = self.explicit.error_order
        self.limit = NONSTIFF_FRACTION * real_stability_boundary(tableau)

    # ---------------------------------------------------------------- the solve
    def start(self, y0: torch.Tensor, f0: torch.Tensor, perturb: int = 0) -> None:
        self.explicit.start(y0, f0, perturb)
        self.implicit.start(y0, f0, perturb)
        self._stiff: bool | torch.Tensor | None = None  # per row: a mask, made at the first step
        self._calm: int | torch.Tensor = 0
        self._switches: int | torch.Tensor = 0
        self._explicit_steps: int | torch.Tensor = 0
        self._implicit_steps: int | torch.Tensor = 0
        self._refresh = False
        self._side = "explicit"  # per row: which stepper made the last attempt
        self._probe = None  # the Jacobian cache of the explicit side's stiffness check
        self._explicit_accepted = 0
        self._jacobian_positives: int | torch.Tensor = 0

    def stats(self) -> dict:
        stats = dict(self.implicit.stats())
        stats.update(
            explicit_steps=self._explicit_steps,
            implicit_steps=self._implicit_steps,
            switches=self._switches,
        )
        return stats

    def finish(self) -> None:
        self.explicit.finish()
        self.implicit.finish()

    # ---------------------------------------------------------------- steps
    def step(self, field: VectorField, t, t1, h, y, perturb_end: bool, end_on_jump: bool):
        if isinstance(h, torch.Tensor):
            return self._row_step(field, t, t1, h, y)
        if self._stiff:
            self._implicit_steps += 1
            return self.implicit.step(field, t, t1, h, y, perturb_end, end_on_jump)
        self._explicit_steps += 1
        return self.explicit.step(field, t, t1, h, y, perturb_end, end_on_jump)

    def _row_step(self, field, t, t1, h, y):
        if self._stiff is None:
            self._stiff = torch.zeros(h.shape, dtype=torch.bool, device=h.device)
            self._calm = torch.zeros(h.shape, dtype=torch.long, device=h.device)
            self._switches = torch.zeros_like(self._calm)
            self._explicit_steps = torch.zeros_like(self._calm)
            self._implicit_steps = torch.zeros_like(self._calm)
        stiff = self._stiff
        moving = h != 0
        # Rows that are not moving (finished) do not make the other side run.
        any_stiff, any_explicit = torch.stack(
            [(stiff & moving).any(), (~stiff & moving).any()]
        ).tolist()
        all_stiff = not any_explicit
        if self._refresh:
            # Rows moved under the other side or switched: one evaluation serves both.
            f0 = field(t, y, 0)
            self.explicit.resume(f0)
            self.implicit.resume(f0)
        self._refresh = False
        self._explicit_steps = self._explicit_steps + (moving & ~stiff)
        self._implicit_steps = self._implicit_steps + (moving & stiff)
        if not any_stiff:
            self._side = "explicit"
            return self.explicit.step(field, t, t1, h, y, False, False)
        if all_stiff:
            self._side = "implicit"
            return self.implicit.step(field, t, t1, h, y, False, False)
        self._side = "rows"
        zero = torch.zeros_like(h)
        h_explicit, h_implicit = torch.where(stiff, zero, h), torch.where(stiff, h, zero)
        explicit = self.explicit.step(field, t, t + h_explicit, h_explicit, y, False, False)
        implicit = self.implicit.step(field, t, t + h_implicit, h_implicit, y, False, False)
        return _RowAttempt(explicit, implicit, stiff, t, t1, h, y)

    # ---------------------------------------------------------------- outcomes
    def accept(self, field: VectorField, attempt, rows=None) -> None:
        if rows is not None:
            return self._row_accept(field, attempt, rows)
        if not self._stiff:
            self.explicit.accept(field, attempt)
            if self.explicit.stiffness.stiff or self._jacobian_check(field, attempt, None):
                self._stiff, self._calm = True, 0
                self._jacobian_positives = 0
                self._switches += 1
                if attempt.end_on_jump:
                    self.implicit.resume(None, 1)
                else:
                    self.implicit.resume(attempt.end_derivative(field), 0)
            return
        radius = float(spectral_radius(self.implicit.jacobian_at_start()).max())
        self.implicit.accept(field, attempt)
        calm = abs(attempt.h) * radius < self.limit
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= NONSTIFF_STEPS:
            self._stiff = False
            self._switches += 1
            f0, perturb = self.implicit.current_derivative()
            self.explicit.resume(f0, perturb)
            self.explicit.stiffness.clear()
            self._jacobian_positives = 0

    def _row_accept(self, field, attempt, rows: torch.Tensor) -> None:
        stiff = self._stiff
        explicit_rows, implicit_rows = rows & ~stiff, rows & stiff
        if self._side == "rows":
            self.explicit.accept(field, attempt.explicit, explicit_rows)
            radius = spectral_radius(self.implicit.jacobian_at_start())
            self.implicit.accept(field, attempt.implicit, implicit_rows)
            self._refresh = True
            h_implicit = attempt.implicit.h
        elif self._side == "implicit":
            radius = spectral_radius(self.implicit.jacobian_at_start())
            self.implicit.accept(field, attempt, implicit_rows)
            h_implicit = attempt.h
        else:
            self.explicit.accept(field, attempt, explicit_rows)
            radius = None
        monitor = self.explicit.stiffness
        to_implicit = explicit_rows & monitor.stiff_rows
        if self._side != "implicit" and bool(explicit_rows.any()):
            explicit_attempt = attempt.explicit if self._side == "rows" else attempt
            to_implicit = to_implicit | self._jacobian_check(field, explicit_attempt, explicit_rows)
        calm = self._calm
        if radius is not None:
            quiet = h_implicit.abs() * radius.to(h_implicit.device) < self.limit
            calm = torch.where(implicit_rows, torch.where(quiet, calm + 1, 0), calm)
        to_explicit = implicit_rows & (calm >= NONSTIFF_STEPS)
        changed = to_implicit | to_explicit
        self._calm = torch.where(changed, 0, calm)
        if bool(changed.any()):
            self._jacobian_positives = torch.where(changed, 0, self._jacobian_positives)
            self._stiff = (stiff | to_implicit) & ~to_explicit
            self._switches = self._switches + changed
            monitor.clear(changed)
            self.implicit.mark_moved(to_implicit)
            self._refresh = True

    def _jacobian_check(self, field, attempt, rows: torch.Tensor | None):
        """Every ``JACOBIAN_EVERY``-th explicit step: is ``h ρ(J)`` at the stability boundary?

        Joint: a bool; per row (``rows``: the explicit rows that accepted): a mask.
        """
        self._explicit_accepted += 1
        if self._explicit_accepted % JACOBIAN_EVERY:
            return False if rows is None else torch.zeros_like(rows)
        per_row = rows is not None
        if self._probe is None:
            self._probe = self.implicit.settings.make_cache(field, per_row, reuse=False)
        with torch.no_grad():
            jacobian = self._probe.jacobian_at(attempt.t0, attempt.y0)
        if jacobian is None:
            radius = _matrix_free_radius(field, attempt.t0, attempt.y0, per_row)
        else:
            radius = spectral_radius(jacobian)
        threshold = self.explicit.stiffness.threshold
        if not per_row:
            # Joint mode with row blocks: the largest radius over the blocks.
            at_boundary = abs(float(attempt.h)) * float(radius.max()) >= threshold
            self._jacobian_positives = self._jacobian_positives + 1 if at_boundary else 0
            return self._jacobian_positives >= JACOBIAN_POSITIVES
        at_boundary = attempt.h.abs().to(torch.float64) * radius.to(attempt.h.device) >= threshold
        positives = self._jacobian_positives
        positives = torch.where(rows, torch.where(at_boundary, positives + 1, 0), positives)
        self._jacobian_positives = positives
        return rows & (positives >= JACOBIAN_POSITIVES)

    def reject(self, attempt) -> None:
        side = self._side if isinstance(self._stiff, torch.Tensor) else None
        if side == "rows":
            self.explicit.reject(attempt.explicit)
            self.implicit.reject(attempt.implicit)
        elif side == "implicit" or (side is None and self._stiff):
            self.implicit.reject(attempt)
        else:
            self.explicit.reject(attempt)


__all__ = ["AutoSwitchMethod", "spectral_radius"]
