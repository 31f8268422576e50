r"""Multiple shooting: short segments with learned starting states, joined by a penalty.

Fitting an oscillator on whole trajectories from an uninformed start is a
loss landscape full of local minima: a frequency a little wrong puts every
later oscillation out of phase. Cutting each trajectory into consecutive
segments of a few observations and solving each from its own starting state
keeps every solve short, where a wrong vector field is only a little wrong
(Bock & Plitt 1984; in neural ODEs, e.g. Turan & Jäschke 2021).

When only some components are measured (a pendulum's angle, not its
velocity) a segment cannot start from an observation. Here every segment's
starting state is a parameter :math:`s_{ik}` (trajectory :math:`i`, segment
:math:`k`), learned with the vector field. Observed components start at the
observation; unobserved ones at the local slope of the observed one
(:func:`local_slopes`, as :func:`~neurode.train.trajectories.estimate_unobserved`
assumes: the unobserved component is the derivative of the observed one).
The loss is

.. math::

    \frac{1}{n}\Big[\sum_{i,k}\ \sum_{j \in \text{seg}_{ik}}
    \lVert \hat y_{ij} - y(t_{ij};\, s_{ik}) \rVert^2
    + w \sum_{i,k} \big\lVert (y(t_{i,\text{end}_k};\, s_{ik}) - s_{i,k+1})
    \oslash c \big\rVert^2\Big],

over the observed components of every point of every segment (its first point
included: the start's observed part is itself fitted) plus the mismatch at
each joint, in units :math:`c` of the state's scale. The weight :math:`w` may
grow geometrically over the first calls (``joint_weight=(w0, w1)``,
``ramp_steps``): loose joints let every segment find its piece of the
dynamics first, tight ones then make the segments one trajectory, which is
what a whole-trajectory fit continues from. The count of calls is a buffer,
so a checkpoint of the module resumes the schedule where it stopped. Consecutive segments
share their boundary observation. All segments are solved together: the
vector field must be autonomous, each segment's times are shifted to start
at zero, and the batch is saved on the union of the shifted times.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..errors import NeurodeInputError
from .loop import StepOutput
from .trajectories import Trajectories, TrajectoryModel

__all__ = ["MultipleShooting", "local_slopes", "segment_bounds"]


def segment_bounds(n_points: int, segment_points: int) -> list[tuple[int, int]]:
    """Index ranges ``[first, last]`` of consecutive segments sharing their boundary point.

    Each segment holds ``segment_points`` observations except the last, which
    takes the remainder; a remainder under half a segment joins the one before.
    """
    if segment_points < 2:
        raise NeurodeInputError(f"segment_points must be >= 2, got {segment_points}")
    step = segment_points - 1
    firsts = list(range(0, max(n_points - 1, 1), step))
    bounds = [(f, min(f + step, n_points - 1)) for f in firsts]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < step // 2:
        last = bounds.pop()
        bounds[-1] = (bounds[-1][0], last[1])
    return bounds


def local_slopes(t: Tensor, y: Tensor, half_width: int = 2) -> Tensor:
    """Slope of ``y (T, k)`` at every point by a least-squares quadratic on its neighbours.

    The quadratic is fitted to the ``2 * half_width + 1`` points around each
    point (fewer, one-sided, at the ends), in time offsets from that point, so
    its linear coefficient is the slope there. Irregular times are fine.
    """
    n = t.numel()
    slopes = []
    for j in range(n):
        lo, hi = max(0, j - half_width), min(n, j + half_width + 1)
        if hi - lo < 3:
            lo, hi = max(0, min(lo, n - 3)), min(n, max(hi, 3))
        s = t[lo:hi] - t[j]
        basis = torch.stack([torch.ones_like(s), s, s * s], dim=1)
        coefficients = torch.linalg.lstsq(basis, y[lo:hi]).solution
        slopes.append(coefficients[1])
    return torch.stack(slopes)


class MultipleShooting(nn.Module):
    """Learned segment starting states and the multiple-shooting loss (module docstring).

    Args:
        model: the trajectory model whose vector field is trained.
        data: the training trajectories (any observed components, any times).
        segment_points: observations per segment (>= 3).
        state_scale: the scale :math:`c` of each state component in the joint penalty.
        joint_weight: :math:`w`, or ``(w0, w1)`` for a geometric ramp from ``w0``
            to ``w1`` over the first ``ramp_steps`` calls.
        ramp_steps: calls over which the weight ramps (``>= 1``).

    As a module it owns the starting states, so ``fit`` trains them with the
    model when given ``ShootingTrainee(model, shooting)``; calling it as
    ``shooting(indices, generator)`` is the objective.
    """

    def __init__(
        self,
        model: TrajectoryModel,
        data: Trajectories,
        segment_points: int,
        *,
        state_scale: Sequence[float] | None = None,
        joint_weight: float | tuple[float, float] = 1.0,
        ramp_steps: int = 1,
    ):
        super().__init__()
        if isinstance(segment_points, bool) or not isinstance(segment_points, int):
            raise NeurodeInputError(f"segment_points must be an integer, got {segment_points!r}")
        if segment_points < 3:
            raise NeurodeInputError(f"segment_points must be >= 3, got {segment_points}")
        if len(data.unobserved) > len(data.observed):
            raise NeurodeInputError(
                "multiple shooting starts unobserved components at the slopes of observed ones; "
                f"{len(data.unobserved)} unobserved but only {len(data.observed)} observed"
            )
        self._model = [model]  # not a submodule: the trainee owns the model
        self.data = data
        low, high = (
            (joint_weight, joint_weight) if isinstance(joint_weight, int | float) else joint_weight
        )
        if not (low > 0 and high > 0) or ramp_steps < 1:
            raise NeurodeInputError(
                "joint_weight must be positive and ramp_steps >= 1, "
                f"got {joint_weight!r} and {ramp_steps}"
            )
        self.joint_weights = (float(low), float(high))
        self.ramp_steps = int(ramp_steps)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        scale = torch.ones(data.state_dim) if state_scale is None else torch.as_tensor(state_scale)
        dtype = data.values[0].dtype
        self.register_buffer("state_scale", scale.to(dtype).reshape(data.state_dim))
        self.bounds = [segment_bounds(t.numel(), segment_points) for t in data.times]
        starts = []
        for t, y, bounds in zip(data.times, data.values, self.bounds, strict=True):
            firsts = torch.tensor([first for first, _ in bounds])
            state = y.new_zeros(len(bounds), data.state_dim)
            state[:, list(data.observed)] = y[firsts]
            if data.unobserved:
                slopes = local_slopes(t, y)[firsts]
                state[:, list(data.unobserved)] = slopes[:, : len(data.unobserved)]
            starts.append(state)
        self.offsets = [0]
        for state in starts:
            self.offsets.append(self.offsets[-1] + state.shape[0])
        self.starts = nn.Parameter(torch.cat(starts))
        self._plans: dict[tuple[int, ...], dict[str, Tensor]] = {}

    @property
    def model(self) -> TrajectoryModel:
        return self._model[0]

    def first_states(self) -> Tensor:
        """The learned state at the first time of every trajectory, ``(N, state_dim)``."""
        return self.starts[self.offsets[:-1]].detach()

    def _plan(self, batch: tuple[int, ...]) -> dict[str, Tensor]:
        """Index arrays of one batch: the union grid, where each residual and joint sits."""
        shifted, rows, targets, time_index, columns_of = [], [], [], [], []
        joint_end, joint_next = [], []
        for i in batch:
            t, y = self.data.times[i], self.data.values[i]
            for k, (first, last) in enumerate(self.bounds[i]):
                position = len(rows)
                rows.append(self.offsets[i] + k)
                shifted.append(t[first : last + 1] - t[first])
                targets.append(y[first : last + 1])
                columns_of.append(torch.full((last + 1 - first,), position))
                if k + 1 < len(self.bounds[i]):
                    joint_end.append(position)
                    joint_next.append(self.offsets[i] + k + 1)
        grid = torch.unique(torch.cat(shifted), sorted=True)
        time_index = [torch.searchsorted(grid, s) for s in shifted]
        last_index = torch.stack([index[-1] for index in time_index])
        return {
            "grid": grid,
            "rows": torch.tensor(rows),
            "time": torch.cat(time_index),
            "segment": torch.cat(columns_of),
            "target": torch.cat(targets),
            "joint_end": torch.tensor(joint_end, dtype=torch.long),
            "joint_end_time": last_index[joint_end] if joint_end else last_index[:0],
            "joint_next": torch.tensor(joint_next, dtype=torch.long),
        }

    def __call__(self, indices: Tensor, generator: torch.Generator) -> StepOutput:  # noqa: ARG002
        batch = tuple(int(i) for i in indices)
        plan = self._plans.get(batch)
        if plan is None:
            plan = self._plans[batch] = self._plan(batch)
        ys = self.model(self.starts[plan["rows"]], plan["grid"])  # (U, S, d)
        columns = list(self.data.observed)
        predicted = ys[plan["time"], plan["segment"]][:, columns]
        squared = (predicted - plan["target"]).pow(2).sum()
        count = plan["target"].numel()
        ends = ys[plan["joint_end_time"], plan["joint_end"]]
        gaps = (ends - self.starts[plan["joint_next"]]) / self.state_scale
        loss = (squared + self.joint_weight * gaps.pow(2).sum()) / count
        if torch.is_grad_enabled():
            self.calls += 1
        return StepOutput(loss=loss, stats=[self.model.stats])

    @property
    def joint_weight(self) -> float:
        """The weight of the joint penalty at the current call."""
        low, high = self.joint_weights
        progress = min(int(self.calls) / max(self.ramp_steps - 1, 1), 1.0)
        return low * (high / low) ** progress

    def extra_repr(self) -> str:
        return f"segments={self.starts.shape[0]}, joint_weights={self.joint_weights}"


class ShootingTrainee(nn.Module):
    """The model and its shooting states as one module, for :func:`neurode.train.fit`."""

    def __init__(self, model: TrajectoryModel, shooting: MultipleShooting):
        super().__init__()
        self.model = model
        self.shooting = shooting
