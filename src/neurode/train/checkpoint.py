"""Training checkpoints, written atomically.

A checkpoint is a plain dictionary saved with :func:`torch.save`. It is first
written to a temporary file in the destination's directory, flushed and
``fsync``-ed, then moved over the destination with :func:`os.replace`, which is
atomic on POSIX and Windows. A crash at any point therefore leaves either the
previous checkpoint or the new one on disk, never a truncated mix; the
directory is ``fsync``-ed afterwards so that the rename itself survives a power
loss.

The random-number states of torch, numpy and Python are stored as plain lists
and tensors, so a checkpoint loads with ``torch.load(..., weights_only=True)``:
loading one never executes code from the file.

A *manifest* (:class:`CheckpointManifest`, e.g. a run folder's ``run.json``)
records the SHA-256 of every checkpoint written and is checked on load, so a
damaged or replaced file is refused instead of silently resuming from it. The
digest is announced to the manifest before the file is replaced and
confirmed after, so a kill between the two leaves a manifest that accepts
whichever of the old and the new file is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import NeurodeInputError

__all__ = [
    "CheckpointError",
    "CheckpointManifest",
    "capture_rng_state",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]


class CheckpointError(NeurodeInputError):
    """A checkpoint file is missing, unreadable, or not a neurode checkpoint."""


_FORMAT = "neurode.train.checkpoint"
_VERSION = 1


class CheckpointManifest(Protocol):
    """Where the SHA-256 digests of checkpoints are recorded and checked."""

    def announce(self, path: Path, digest: str) -> None:
        """``path`` is about to be replaced by content with ``digest``."""

    def confirm(self, path: Path, digest: str) -> None:
        """``path`` now holds content with ``digest``."""

    def verify(self, path: Path, digest: str) -> None:
        """Raise :class:`CheckpointError` unless ``digest`` is recorded for ``path``."""


def save_checkpoint(
    path: str | os.PathLike[str],
    payload: dict[str, Any],
    *,
    manifest: CheckpointManifest | None = None,
) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file, fsync, ``os.replace``).

    The parent directory is created if needed. On any failure the temporary
    file is removed and the previous content of ``path``, if any, is untouched.
    With a ``manifest`` the file's SHA-256 is recorded there (module docstring).
    Returns the path written.
    """
    path = Path(path)
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    record = {"format": _FORMAT, "version": _VERSION, **payload}
    buffer = io.BytesIO()
    torch.save(record, buffer)
    content = buffer.getvalue()
    digest = hashlib.sha256(content).hexdigest()
    if manifest is not None:
        manifest.announce(path, digest)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    if manifest is not None:
        manifest.confirm(path, digest)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, manifest: CheckpointManifest | None = None
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors on CPU).

    Raises :class:`CheckpointError` if the file is missing, corrupt, was not
    written by :func:`save_checkpoint`, or (with a ``manifest``) its SHA-256
    is not the one recorded.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        content = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"cannot read checkpoint {path}: {error.strerror}") from error
    if manifest is not None:
        manifest.verify(path, hashlib.sha256(content).hexdigest())
    try:
        record = torch.load(io.BytesIO(content), map_location="cpu", weights_only=True)
    except Exception as error:
        reason = " ".join(str(error).split())
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from error
    if not isinstance(record, dict) or record.get("format") != _FORMAT:
        raise CheckpointError(f"{path} is not a neurode training checkpoint")
    if record.get("version") != _VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {record.get('version')}; "
            f"this neurode reads version {_VERSION}"
        )
    return record


def capture_rng_state() -> dict[str, Any]:
    """The global random states of torch (CPU and CUDA), numpy and Python."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gauss": float(cached_gauss),
        },
        "python": {"version": version, "state": list(python_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the global random states saved by :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            numpy_state["kind"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["position"],
            numpy_state["has_gauss"],
            numpy_state["cached_gauss"],
        )
    )
    python_state = state["python"]
    random.setstate(
        (python_state["version"], tuple(python_state["state"]), python_state["gauss_next"])
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_directory(directory: Path) -> None:
    # Makes the rename durable; directories cannot be opened for fsync on Windows.
    if os.name != "posix":
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
