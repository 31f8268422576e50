"""Argument checks shared by the dataset generators.

Each check raises :class:`DatasetArgumentError` naming the argument, the value
received and the range it must lie in.
"""

from __future__ import annotations

import math
import numbers

import torch

from neurode.data.errors import DatasetArgumentError


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise DatasetArgumentError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise DatasetArgumentError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_real(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    strictly_positive: bool = False,
    maximum: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DatasetArgumentError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise DatasetArgumentError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0.0:
        raise DatasetArgumentError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise DatasetArgumentError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise DatasetArgumentError(f"{name} must be <= {maximum}, got {value}")
    return value


def _check_fraction(name: str, value: object) -> float:
    """A number strictly between 0 and 1."""
    value = _check_real(name, value)
    if not 0.0 < value < 1.0:
        raise DatasetArgumentError(f"{name} must lie strictly between 0 and 1, got {value}")
    return value


def _check_float_dtype(dtype: object) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise DatasetArgumentError(
            f"dtype must be a floating-point torch.dtype such as torch.float64, got {dtype!r}"
        )
    return dtype


def _generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator: a fresh one seeded with ``seed``, or ``seed`` itself if it is one.

    Passing a generator lets a caller chain several draws from one stream;
    passing an int makes the call reproducible on its own. The global RNG is
    never touched.
    """
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise DatasetArgumentError(
                f"seed must be an int or a CPU torch.Generator, got a generator on {seed.device}"
            )
        return seed
    seed = _check_int("seed", seed, minimum=0)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator
