"""Pendulum angle measurements as CSV: ``t,theta`` with an optional ``trajectory`` id.

Format: a header line naming the columns, then one row per measurement::

    trajectory,t,theta
    0,0.0,1.2
    0,0.1,1.17
    ...

``t`` (time) and ``theta`` (angle, radians) are required; ``trajectory`` is an
optional integer id. Rows are grouped by id in order of first appearance (the
rows of one trajectory need not be adjacent); without the column the whole file
is one trajectory with id 0. Within a trajectory, times must be strictly
increasing in row order, every value finite, and there must be at least three
points (enough for a first and a second difference). A file that breaks a rule
raises :class:`DataFormatError` naming the file, the line and the fix.
"""

from __future__ import annotations

import csv
import errno
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from neurode.data._checks import _check_float_dtype
from neurode.data.errors import DataFormatError, DatasetArgumentError
from neurode.data.irregular import MaskedSeries, _check_time_row, union_time_grid

_REQUIRED_COLUMNS = ("t", "theta")
_OPTIONAL_COLUMNS = ("trajectory",)
_MIN_POINTS = 3


@dataclass(frozen=True)
class PendulumMeasurements:
    """Angle measurements of one or more pendulum trajectories.

    Attributes:
        trajectory_ids: the id of each trajectory, in order of first appearance.
        times: one strictly increasing 1-D tensor per trajectory.
        theta: one 1-D tensor of angles per trajectory, aligned with ``times``.
    """

    trajectory_ids: tuple[int, ...]
    times: tuple[Tensor, ...]
    theta: tuple[Tensor, ...]

    @property
    def n_trajectories(self) -> int:
        return len(self.trajectory_ids)

    def to_masked(self) -> MaskedSeries:
        """All trajectories on the union of their times; values ``(N, U, 1)``, mask ``(N, U)``."""
        return union_time_grid(list(self.times), [theta.unsqueeze(-1) for theta in self.theta])


def load_pendulum_csv(
    path: str | os.PathLike[str], *, dtype: torch.dtype = torch.float64
) -> PendulumMeasurements:
    """Read pendulum measurements written in the format of this module's docstring.

    Raises:
        FileNotFoundError: ``path`` does not exist (the message names it).
        DataFormatError: empty file, missing or unknown columns, a value that is
            not a number or not finite, times not strictly increasing within a
            trajectory, or a trajectory with fewer than three points.
    """
    dtype = _check_float_dtype(dtype)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(errno.ENOENT, "pendulum CSV file not found", str(path))
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            # Keep each row's file line (the header is line 1) for error messages.
            rows = [(reader.line_num, row) for row in reader if any(f.strip() for f in row)]
    except UnicodeDecodeError as error:
        raise DataFormatError(
            f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8 CSV"
        ) from None
    except csv.Error as error:
        raise DataFormatError(f"{path}: not valid CSV ({error})") from None

    if not rows:
        raise DataFormatError(
            f"{path} is empty; write a header line 't,theta' (or 'trajectory,t,theta') "
            "followed by one row per measurement"
        )
    columns = _column_positions(path, rows[0][1])
    data_rows = rows[1:]
    if not data_rows:
        raise DataFormatError(
            f"{path} has a header but no data rows; add at least {_MIN_POINTS} measurements"
        )

    # trajectory id -> list of (line, t, theta), in order of first appearance
    groups: dict[int, list[tuple[int, float, float]]] = {}
    for line, row in data_rows:
        if len(row) != len(columns):
            raise DataFormatError(
                f"{path}, line {line}: expected {len(columns)} fields "
                f"({','.join(columns)}), found {len(row)}"
            )
        t = _parse_finite(path, line, "t", row[columns["t"]])
        theta = _parse_finite(path, line, "theta", row[columns["theta"]])
        trajectory = (
            _parse_id(path, line, row[columns["trajectory"]]) if "trajectory" in columns else 0
        )
        groups.setdefault(trajectory, []).append((line, t, theta))

    for trajectory, points in groups.items():
        _check_trajectory(path, trajectory, points, has_ids="trajectory" in columns)

    return PendulumMeasurements(
        trajectory_ids=tuple(groups),
        times=tuple(torch.tensor([p[1] for p in pts], dtype=dtype) for pts in groups.values()),
        theta=tuple(torch.tensor([p[2] for p in pts], dtype=dtype) for pts in groups.values()),
    )


def save_pendulum_csv(
    path: str | os.PathLike[str],
    times: Tensor | Sequence[Tensor],
    theta: Tensor | Sequence[Tensor],
    *,
    trajectory_ids: Sequence[int] | None = None,
) -> None:
    """Write angle measurements that :func:`load_pendulum_csv` reads back exactly.

    Args:
        path: file to write (replaced atomically: a crash leaves the old file or the new one).
        times, theta: a single trajectory as two 1-D tensors (written as
            ``t,theta``), or several as ``(N, T)`` tensors or sequences of 1-D
            tensors (written as ``trajectory,t,theta``). ``times`` may also be a
            shared ``(T,)`` grid for ``(N, T)`` angles.
        trajectory_ids: distinct integer ids of the trajectories; ``0..N-1`` by default.

    Values are written with the shortest decimal that round-trips a float64.
    """
    times_list, theta_list, single = _as_trajectories(times, theta)
    if trajectory_ids is None:
        ids = list(range(len(times_list)))
    else:
        ids = [int(i) for i in trajectory_ids]
        if len(ids) != len(times_list) or len(set(ids)) != len(ids):
            raise DatasetArgumentError(
                f"trajectory_ids must be {len(times_list)} distinct integers, got {ids}"
            )
    for i, (t_i, theta_i) in enumerate(zip(times_list, theta_list, strict=True)):
        _check_time_row(f"times of trajectory {ids[i]}", t_i)
        if theta_i.shape != t_i.shape:
            raise DatasetArgumentError(
                f"trajectory {ids[i]}: {len(t_i)} times but theta of shape {tuple(theta_i.shape)}"
            )
        if len(t_i) < _MIN_POINTS:
            raise DatasetArgumentError(
                f"trajectory {ids[i]} has {len(t_i)} points; at least {_MIN_POINTS} are needed"
            )
        if not torch.isfinite(theta_i).all():
            raise DatasetArgumentError(f"theta of trajectory {ids[i]} holds NaN or infinity")

    with_ids = not single or trajectory_ids is not None
    header = ["trajectory", "t", "theta"] if with_ids else ["t", "theta"]
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(header)
            for trajectory, t_i, theta_i in zip(ids, times_list, theta_list, strict=True):
                for t, value in zip(t_i.tolist(), theta_i.tolist(), strict=True):
                    fields = [repr(float(t)), repr(float(value))]
                    writer.writerow([str(trajectory), *fields] if with_ids else fields)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _column_positions(path: Path, header: list[str]) -> dict[str, int]:
    names = [name.strip() for name in header]
    allowed = set(_REQUIRED_COLUMNS) | set(_OPTIONAL_COLUMNS)
    missing = [name for name in _REQUIRED_COLUMNS if name not in names]
    unknown = [name for name in names if name not in allowed]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if missing or unknown or duplicated:
        problems = []
        if missing:
            problems.append(f"missing {', '.join(repr(n) for n in missing)}")
        if unknown:
            problems.append(f"unexpected {', '.join(repr(n) for n in unknown)}")
        if duplicated:
            problems.append(f"repeated {', '.join(repr(n) for n in duplicated)}")
        raise DataFormatError(
            f"{path}: header has columns {names}; needed 't' and 'theta' (optional "
            f"'trajectory'): {'; '.join(problems)}"
        )
    return {name: position for position, name in enumerate(names)}


def _parse_finite(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise DataFormatError(
            f"{path}, line {line}: column '{column}' holds {text!r}, which is not a number"
        ) from None
    if not math.isfinite(value):
        raise DataFormatError(
            f"{path}, line {line}: column '{column}' is {text.strip()}; values must be finite"
        )
    return value


def _parse_id(path: Path, line: int, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise DataFormatError(
            f"{path}, line {line}: column 'trajectory' holds {text!r}, which is not an integer id"
        ) from None


def _check_trajectory(
    path: Path, trajectory: int, points: list[tuple[int, float, float]], *, has_ids: bool
) -> None:
    name = f"trajectory {trajectory}" if has_ids else "the trajectory"
    for (previous_line, previous_t, _), (line, t, _) in zip(points, points[1:], strict=False):
        if not t > previous_t:
            raise DataFormatError(
                f"{path}, line {line}: time {t!r} of {name} does not exceed the previous "
                f"time {previous_t!r} (line {previous_line}); times must strictly increase"
            )
    if len(points) < _MIN_POINTS:
        raise DataFormatError(
            f"{path}: {name} has {len(points)} point(s); each trajectory needs at least "
            f"{_MIN_POINTS}"
        )


def _as_trajectories(
    times: Tensor | Sequence[Tensor], theta: Tensor | Sequence[Tensor]
) -> tuple[list[Tensor], list[Tensor], bool]:
    """Normalise save arguments to per-trajectory lists; ``single`` when one 1-D pair was given."""
    if isinstance(theta, Tensor) and theta.dim() == 1:
        if not isinstance(times, Tensor) or times.dim() != 1:
            raise DatasetArgumentError("a 1-D theta needs 1-D times of the same length")
        return [times.detach().cpu()], [theta.detach().cpu()], True
    if isinstance(theta, Tensor):
        if theta.dim() != 2:
            raise DatasetArgumentError(
                f"theta must be (T,), (N, T) or a sequence of 1-D tensors, got {tuple(theta.shape)}"
            )
        theta_list = list(theta.unbind(0))
    elif isinstance(theta, Sequence) and all(isinstance(v, Tensor) for v in theta):
        theta_list = list(theta)
    else:
        raise DatasetArgumentError("theta must be a tensor or a sequence of tensors")
    if isinstance(times, Tensor) and times.dim() == 1:
        times_list = [times] * len(theta_list)
    elif isinstance(times, Tensor) and times.dim() == 2:
        times_list = list(times.unbind(0))
    elif isinstance(times, Sequence) and all(isinstance(v, Tensor) for v in times):
        times_list = list(times)
    else:
        raise DatasetArgumentError("times must be (T,), (N, T) or a sequence of 1-D tensors")
    if len(times_list) != len(theta_list):
        raise DatasetArgumentError(
            f"times has {len(times_list)} trajectories but theta has {len(theta_list)}"
        )
    if not theta_list:
        raise DatasetArgumentError("need at least one trajectory to save")
    return (
        [t.detach().cpu() for t in times_list],
        [v.detach().cpu() for v in theta_list],
        False,
    )
