"""Typed errors raised by the dataset generators and loaders.

Both are :class:`neurode.errors.NeurodeInputError`, hence :class:`ValueError`:
they are raised before any work is done and say, in one line, what to fix.
"""

from __future__ import annotations

from neurode.errors import NeurodeInputError


class DatasetArgumentError(NeurodeInputError):
    """An argument of a dataset generator is out of range or of the wrong kind."""


class DataFormatError(NeurodeInputError):
    """A data file exists but its content cannot be read as the expected format."""
