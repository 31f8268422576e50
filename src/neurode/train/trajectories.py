r"""Fitting an ODE to observed trajectories: the data, the model, the loss.

Data (:class:`Trajectories`): ``N`` trajectories of a ``state_dim``-dimensional
ODE, trajectory ``i`` observed at its own increasing times
:math:`t_{i1} < \dots < t_{iT_i}`, of which only the components ``observed``
are measured (all of them for a simulated pendulum; only :math:`\theta`, not
:math:`\omega`, for real angle measurements).

Model (:class:`TrajectoryModel`): a vector field with its solver settings
and, when some components are unobserved, one learnable value of each
unobserved component at every training trajectory's first time (the
pendulum's initial :math:`\omega_0`). Those start from a finite-difference
estimate (:func:`finite_difference_slope`) and are refined jointly with the
vector field.

Loss (:class:`TrajectoryObjective`): mean squared error over the observed
components at the observation times, excluding each solve's initial point.
Two modes:

* whole trajectories (``segment_points=None``): solve from each
  trajectory's first time over all its times;
* short segments, in the spirit of multiple shooting: each optimisation step
  draws one random start index per group of trajectories sharing a time grid
  and solves ``segment_points`` observations from the *observed* state at that
  index. Short horizons keep the loss landscape of oscillatory systems free of
  the local minima that long rollouts have (a wrong frequency is only a little
  wrong over one period, and badly wrong over ten), and cost fewer
  evaluations per step. It needs every component observed.

Trajectories that share their time grid are solved together in one batched
solve; irregularly sampled trajectories are solved one grid at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InvalidTimesError, NeurodeInputError, NonFiniteInputError, ShapeMismatchError
from ..nn import NeuralODE
from .loop import StepOutput

__all__ = [
    "Trajectories",
    "TrajectoryModel",
    "TrajectoryObjective",
    "estimate_unobserved",
    "finite_difference_slope",
    "predict",
    "rollout_mse",
    "squared_error",
]


@dataclass(frozen=True)
class Trajectories:
    """Observed trajectories, each at its own strictly increasing times.

    Attributes:
        times: ``N`` tensors, ``times[i]`` of shape ``(T_i,)``.
        values: ``N`` tensors, ``values[i]`` of shape ``(T_i, len(observed))``.
        observed: the state components measured, in the column order of ``values``.
        state_dim: the dimension of the ODE's state.
    """

    times: tuple[Tensor, ...]
    values: tuple[Tensor, ...]
    observed: tuple[int, ...]
    state_dim: int

    def __post_init__(self) -> None:
        if len(self.times) != len(self.values) or not self.times:
            raise ShapeMismatchError(
                f"need one times tensor per values tensor and at least one trajectory; "
                f"got {len(self.times)} and {len(self.values)}"
            )
        if not self.observed or len(set(self.observed)) != len(self.observed):
            raise NeurodeInputError(f"observed must list distinct components, got {self.observed}")
        if any(not 0 <= k < self.state_dim for k in self.observed):
            raise NeurodeInputError(
                f"observed components {self.observed} must lie in 0..{self.state_dim - 1}"
            )
        for i, (t, y) in enumerate(zip(self.times, self.values, strict=True)):
            if t.ndim != 1 or t.numel() < 2:
                raise InvalidTimesError(f"trajectory {i}: times must be 1-D with >= 2 points")
            if y.shape != (t.numel(), len(self.observed)):
                raise ShapeMismatchError(
                    f"trajectory {i}: values have shape {tuple(y.shape)}, expected "
                    f"{(t.numel(), len(self.observed))}"
                )
            if not (torch.isfinite(t).all() and torch.isfinite(y).all()):
                raise NonFiniteInputError(f"trajectory {i} holds NaN or infinite values")
            if not bool((t[1:] > t[:-1]).all()):
                raise InvalidTimesError(f"trajectory {i}: times must be strictly increasing")

    @classmethod
    def from_tensors(
        cls,
        times: Tensor,
        values: Tensor,
        *,
        observed: Sequence[int] | None = None,
        state_dim: int | None = None,
    ) -> Trajectories:
        """From a shared grid ``(T,)`` or per-trajectory times ``(N, T)`` and values ``(N, T, k)``.

        By default every component is observed (``observed = 0..k-1``).
        """
        if values.ndim != 3:
            raise ShapeMismatchError(f"values must be (N, T, k), got {tuple(values.shape)}")
        n, _, k = values.shape
        observed = tuple(range(k)) if observed is None else tuple(int(c) for c in observed)
        state_dim = k if state_dim is None else int(state_dim)
        if times.ndim == 1:
            rows = (times,) * n
        elif times.ndim == 2 and times.shape[0] == n:
            rows = tuple(times.unbind(0))
        else:
            raise ShapeMismatchError(
                f"times must be (T,) or (N, T) with N = {n}, got {tuple(times.shape)}"
            )
        return cls(rows, tuple(values.unbind(0)), observed, state_dim)

    def __len__(self) -> int:
        return len(self.times)

    @property
    def fully_observed(self) -> bool:
        return len(self.observed) == self.state_dim

    @property
    def unobserved(self) -> tuple[int, ...]:
        return tuple(k for k in range(self.state_dim) if k not in self.observed)

    def window(
        self,
        start: float | Sequence[float] | None = None,
        end: float | Sequence[float] | None = None,
    ) -> Trajectories:
        """The observations with ``start <= t < end`` (either bound may be omitted).

        A bound is one time for every trajectory or a sequence of one per
        trajectory. Every trajectory must keep at least two points, so that
        indices of trajectories (and of their learned initial values) are
        unchanged.
        """
        times, values = [], []
        for i, (t, y) in enumerate(zip(self.times, self.values, strict=True)):
            keep = _in_window(t, _bound(start, i), _bound(end, i))
            if int(keep.sum()) < 2:
                raise NeurodeInputError(
                    f"trajectory {i} has {int(keep.sum())} point(s) in "
                    f"[{_bound(start, i)}, {_bound(end, i)}); a window needs at least 2"
                )
            times.append(t[keep])
            values.append(y[keep])
        return Trajectories(tuple(times), tuple(values), self.observed, self.state_dim)

    def head(self, n_points: int) -> Trajectories:
        """The first ``n_points`` observations (>= 2) of every trajectory (all if fewer)."""
        if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
            raise NeurodeInputError(f"n_points must be an integer >= 2, got {n_points!r}")
        return Trajectories(
            tuple(t[:n_points] for t in self.times),
            tuple(y[:n_points] for y in self.values),
            self.observed,
            self.state_dim,
        )

    def select(self, indices: Sequence[int]) -> Trajectories:
        """The trajectories ``indices``, in that order."""
        indices = [int(i) for i in indices]
        return Trajectories(
            tuple(self.times[i] for i in indices),
            tuple(self.values[i] for i in indices),
            self.observed,
            self.state_dim,
        )

    def time_groups(self, indices: Sequence[int] | None = None) -> list[tuple[Tensor, list[int]]]:
        """Trajectories (of ``indices``, default all) grouped by identical time grids."""
        groups: dict[tuple, tuple[Tensor, list[int]]] = {}
        for i in range(len(self)) if indices is None else [int(i) for i in indices]:
            t = self.times[i]
            key = (t.numel(), t.dtype, tuple(t.tolist()))
            groups.setdefault(key, (t, []))[1].append(i)
        return list(groups.values())

    def first_values(self, indices: Sequence[int]) -> Tensor:
        """The first observation of each trajectory, ``(len(indices), len(observed))``."""
        return torch.stack([self.values[int(i)][0] for i in indices])


def _bound(bound: float | Sequence[float] | None, index: int) -> float | None:
    if bound is None or isinstance(bound, int | float):
        return bound
    return float(bound[index])


def _in_window(t: Tensor, start: float | None, end: float | None) -> Tensor:
    keep = torch.ones_like(t, dtype=torch.bool)
    if start is not None:
        keep &= t >= start
    if end is not None:
        keep &= t < end
    return keep


def finite_difference_slope(t: Tensor, y: Tensor) -> Tensor:
    r"""Slope at ``t[0]`` of the parabola through the first three points.

    For steps :math:`h_1 = t_1 - t_0`, :math:`h_2 = t_2 - t_0`,

    .. math::

        y'(t_0) \approx -\frac{h_1 + h_2}{h_1 h_2} y_0
        + \frac{h_2}{h_1 (h_2 - h_1)} y_1 - \frac{h_1}{h_2 (h_2 - h_1)} y_2 ,

    second-order accurate, and :math:`(-3y_0 + 4y_1 - y_2)/(2h)` on a uniform
    grid. With two points it falls back to the first difference. ``y`` is
    ``(T, ...)``; the result is ``y[0]``-shaped.
    """
    if t.numel() < 2:
        raise InvalidTimesError("a slope needs at least two points")
    if t.numel() == 2:
        return (y[1] - y[0]) / (t[1] - t[0])
    h1, h2 = t[1] - t[0], t[2] - t[0]
    return (
        -(h1 + h2) / (h1 * h2) * y[0] + h2 / (h1 * (h2 - h1)) * y[1] - h1 / (h2 * (h2 - h1)) * y[2]
    )


def _assemble_state(
    observed_part: Tensor, unobserved_part: Tensor | None, data: Trajectories
) -> Tensor:
    """Full states ``(b, state_dim)`` from the observed ``(b, k)`` and unobserved parts."""
    columns: list[Tensor | None] = [None] * data.state_dim
    for position, component in enumerate(data.observed):
        columns[component] = observed_part[:, position]
    for position, component in enumerate(data.unobserved):
        columns[component] = unobserved_part[:, position]
    return torch.stack(columns, dim=-1)


def estimate_unobserved(data: Trajectories) -> Tensor | None:
    r"""Initial unobserved components ``(N, d - k)`` by finite differences, or None.

    Assumes, as in mechanics, that each unobserved component is the time
    derivative of the observed one at the same position: unobserved component
    ``j`` of ``data.unobserved`` is estimated as the slope of observed
    component ``j`` of ``data.observed`` (the pendulum: :math:`\omega_0 \approx
    \dot\theta(t_0)`).
    """
    if data.fully_observed:
        return None
    if len(data.unobserved) > len(data.observed):
        raise NeurodeInputError(
            f"cannot estimate {len(data.unobserved)} unobserved components from the slopes "
            f"of {len(data.observed)} observed ones"
        )
    slopes = [
        finite_difference_slope(t, y)[: len(data.unobserved)]
        for t, y in zip(data.times, data.values, strict=True)
    ]
    return torch.stack(slopes)


class TrajectoryModel(nn.Module):
    """A vector field, its solver settings, and learnable initial values.

    Args:
        dynamics: the vector field ``f(t, y)`` on states ``(batch, state_dim)``.
        data: the training trajectories. When some components are unobserved,
            the model holds one learnable value per unobserved component and
            trajectory, started at :func:`estimate_unobserved`.
        learn_initial_state: also learn a correction of each training
            trajectory's *observed* initial values (started at zero). A noisy
            first observation otherwise propagates through the whole rollout
            and biases the fitted dynamics (errors in variables); learned,
            it is estimated from the whole trajectory instead. Used by
            whole-trajectory objectives; segments start from raw observations.
        method, rtol, atol, gradient, options, gradient_options, regularisation:
            passed to :class:`neurode.nn.NeuralODE`.

    After each call, :attr:`stats` is the solver's statistics dictionary of
    that solve and :attr:`regularisation_loss` its regulariser (if any).
    """

    def __init__(
        self,
        dynamics: Callable[[Tensor, Tensor], Tensor],
        data: Trajectories,
        *,
        method: str = "dopri5",
        rtol: float = 1e-6,
        atol: float = 1e-8,
        gradient: str = "direct",
        options: Mapping[str, Any] | None = None,
        gradient_options: Mapping[str, Any] | None = None,
        regularisation: Mapping[str, float] | None = None,
        learn_initial_state: bool = False,
    ):
        super().__init__()
        self.ode = NeuralODE(
            dynamics,
            method=method,
            rtol=rtol,
            atol=atol,
            gradient=gradient,
            options=options,
            gradient_options=gradient_options,
            regularisation=regularisation,
        )
        self.observed = data.observed
        self.state_dim = data.state_dim
        self.n_trajectories = len(data)
        guess = estimate_unobserved(data)
        self.initial_unobserved = None if guess is None else nn.Parameter(guess.clone())
        self.initial_correction = (
            nn.Parameter(torch.zeros_like(data.first_values(range(len(data)))))
            if learn_initial_state
            else None
        )

    @property
    def dynamics(self) -> Callable[[Tensor, Tensor], Tensor]:
        return self.ode.dynamics

    @property
    def stats(self) -> dict | None:
        return self.ode.stats

    @property
    def regularisation_loss(self) -> Tensor | None:
        return self.ode.regularisation_loss if self.ode.regularisation else None

    def initial_state(
        self, data: Trajectories, indices: Sequence[int], *, learned: bool = True
    ) -> Tensor:
        """Full initial states ``(b, state_dim)`` of trajectories ``indices`` of ``data``.

        Observed components come from the data (plus the learned correction,
        if any, when ``learned``). Unobserved ones are the learned values when
        ``learned`` (``data`` must then be the training trajectories, or a
        window of them), else finite-difference estimates (for trajectories
        the model was not trained on).
        """
        indices = [int(i) for i in indices]
        observed_part = data.first_values(indices)
        if learned and len(data) != self.n_trajectories:
            raise NeurodeInputError(
                f"learned initial values exist for the {self.n_trajectories} training "
                f"trajectories, not for {len(data)}; pass learned=False for other data"
            )
        if learned and self.initial_correction is not None:
            observed_part = observed_part + self.initial_correction[indices]
        if data.fully_observed:
            return observed_part
        if learned:
            unobserved_part = self.initial_unobserved[indices]
        else:
            unobserved_part = estimate_unobserved(data.select(indices))
        return _assemble_state(observed_part, unobserved_part, data)

    def forward(self, y0: Tensor, t: Tensor) -> Tensor:
        """The solution ``(len(t), *y0.shape)`` from ``y0`` at ``t[0]``."""
        return self.ode(y0, t)


class TrajectoryObjective:
    """Mean squared error of a :class:`TrajectoryModel` on a mini-batch of trajectories.

    Args:
        model: the model being trained.
        data: the training trajectories (the model's ``data``).
        segment_points: ``None`` for whole trajectories, else the number of
            observations per segment (>= 2); needs every component observed.
        segments_per_step: segments drawn per trajectory and step. Their
            start indices are stratified: the possible starts are cut into
            this many equal ranges and one start is drawn from each, so a
            step covers the whole trajectory.
        autonomous: the dynamics ignore ``t``. Segments whose time offsets
            from their start agree (any segments of a uniform grid) are then
            shifted to a common start and solved in one batched solve;
            otherwise each segment start is its own solve.

    Called as ``objective(indices, generator)`` by :func:`neurode.train.fit`.
    The regulariser of the model's solves, if any, is added to the loss.
    """

    def __init__(
        self,
        model: TrajectoryModel,
        data: Trajectories,
        *,
        segment_points: int | None = None,
        segments_per_step: int = 1,
        autonomous: bool = False,
    ):
        for name, value, minimum in (
            ("segment_points", segment_points, 2),
            ("segments_per_step", segments_per_step, 1),
        ):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise NeurodeInputError(f"{name} must be an integer >= {minimum}, got {value!r}")
        if segment_points is not None:
            if not data.fully_observed:
                raise NeurodeInputError(
                    "segments start from an observed state, so they need every component "
                    f"observed; components {data.unobserved} are not (use whole trajectories)"
                )
            shortest = min(t.numel() for t in data.times)
            if segment_points > shortest:
                raise NeurodeInputError(
                    f"segment_points={segment_points} exceeds the shortest trajectory "
                    f"({shortest} points)"
                )
        self.model = model
        self.data = data
        self.segment_points = segment_points
        self.segments_per_step = segments_per_step
        self.autonomous = bool(autonomous)

    @property
    def observed(self) -> tuple[int, ...]:
        return self.data.observed

    def __call__(self, indices: Tensor, generator: torch.Generator) -> StepOutput:
        self._squared: Tensor | float = 0.0
        self._count = 0
        self._regulariser: Tensor | float = 0.0
        self._stats: list[dict] = []
        batch = [int(i) for i in indices]
        for times, members in self.data.time_groups(batch):
            if self.segment_points is None:
                y0 = self.model.initial_state(self.data, members)
                self._solve(y0, times, [(members, 0)])
            else:
                self._segments(times, members, generator)
        loss = self._squared / self._count + self._regulariser / self._count
        return StepOutput(loss=loss, stats=self._stats)

    def _segments(self, times: Tensor, members: list[int], generator: torch.Generator) -> None:
        length = self.segment_points
        starts = self._segment_starts(times.numel() - length + 1, generator)
        y0 = lambda start: torch.stack([self.data.values[i][start] for i in members])
        if self.autonomous:
            offsets = times[starts[0] : starts[0] + length] - times[starts[0]]
            if all(
                torch.allclose(times[s : s + length] - times[s], offsets, rtol=1e-9, atol=1e-12)
                for s in starts[1:]
            ):
                self._solve(
                    torch.cat([y0(s) for s in starts]), offsets, [(members, s) for s in starts]
                )
                return
        for s in starts:
            self._solve(y0(s), times[s : s + length], [(members, s)])

    def _segment_starts(self, high: int, generator: torch.Generator) -> list[int]:
        strata = min(self.segments_per_step, high)
        edges = [round(k * high / strata) for k in range(strata + 1)]
        draws = torch.rand(strata, generator=generator, dtype=torch.float64).tolist()
        return [
            lo + min(int(u * (hi - lo)), hi - lo - 1)
            for lo, hi, u in zip(edges, edges[1:], draws, strict=False)
        ]

    def _solve(self, y0: Tensor, t: Tensor, blocks: list[tuple[list[int], int]]) -> None:
        """Solve from ``y0`` (the blocks' initial states, stacked) and add the blocks' errors.

        Block ``(members, start)`` is the trajectories ``members`` solved from
        their observation ``start`` over ``len(t)`` observations.
        """
        ys = self.model(y0, t)
        self._stats.append(self.model.stats)
        prediction = ys[1:, :, list(self.observed)].transpose(0, 1)
        target = torch.cat(
            [
                torch.stack([self.data.values[i][start + 1 : start + len(t)] for i in members])
                for members, start in blocks
            ]
        )
        self._squared = self._squared + (prediction - target).pow(2).sum()
        self._count += target.numel()
        if self.model.regularisation_loss is not None:
            # The regulariser is a mean over the solve's batch; weight it like its errors.
            self._regulariser = self._regulariser + self.model.regularisation_loss * target.numel()


@torch.no_grad()
def predict(
    model: TrajectoryModel, data: Trajectories, *, learned: bool = True
) -> tuple[list[Tensor], list[dict]]:
    """Full-state rollouts ``(T_i, state_dim)`` of every trajectory of ``data`` from its first time.

    ``learned`` as for :meth:`TrajectoryModel.initial_state`. Also returns the
    solver statistics of the solves.
    """
    rollouts: list[Tensor | None] = [None] * len(data)
    stats = []
    for times, members in data.time_groups():
        y0 = model.initial_state(data, members, learned=learned)
        ys = model(y0, times)
        stats.append(model.stats)
        for position, i in enumerate(members):
            rollouts[i] = ys[:, position]
    return rollouts, stats


def rollout_mse(model: TrajectoryModel, data: Trajectories, *, learned: bool = True) -> float:
    """Mean squared error of whole-trajectory rollouts over every observation of ``data``."""
    rollouts, _ = predict(model, data, learned=learned)
    total, count = squared_error(rollouts, data)
    return total / count


def squared_error(
    rollouts: Sequence[Tensor],
    data: Trajectories,
    *,
    component: int | None = None,
    start: float | Sequence[float] | None = None,
    end: float | Sequence[float] | None = None,
) -> tuple[float, int]:
    """Sum of squared errors of rollouts against the observations, and their count.

    Restricted to one state ``component`` (default: every observed one) and to
    observations with ``start <= t < end`` (bounds as in :meth:`Trajectories.window`).
    """
    columns = list(range(len(data.observed)))
    if component is not None:
        if component not in data.observed:
            raise NeurodeInputError(f"component {component} is not observed")
        columns = [data.observed.index(component)]
    state_columns = [data.observed[c] for c in columns]
    total, count = 0.0, 0
    for i, (rollout, t, y) in enumerate(zip(rollouts, data.times, data.values, strict=True)):
        keep = _in_window(t, _bound(start, i), _bound(end, i))
        error = rollout[keep][:, state_columns] - y[keep][:, columns]
        total += float(error.pow(2).sum())
        count += error.numel()
    return total, count
