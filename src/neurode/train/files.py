"""Writing output files atomically, with one clear error when the disk refuses.

Every file a run leaves (metrics, figures, checkpoints, the run record) is
written to a temporary file in its destination folder, flushed and
``fsync``-ed, then moved over the destination with :func:`os.replace`, which
is atomic on POSIX and Windows: a kill or a crash at any moment leaves the
previous file or the new one, never a truncated mix or an empty file. The
temporary file gets the permissions a plain ``open`` would give (``mkstemp``
would leave it readable by its owner only).

A failure of the operating system (a full disk, a read-only folder, a
missing permission) becomes :class:`OutputError`, naming the file and the
reason on one line; the temporary file is removed and the destination is
untouched.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["OutputError", "describe_os_error", "write_atomically", "write_json_atomically"]


class OutputError(OSError):
    """An output file or folder could not be written; the message says which and why."""

    def __str__(self) -> str:
        return self.strerror or super().__str__()


def describe_os_error(error: OSError, path: str | os.PathLike[str] | None = None) -> str:
    """``'PATH: reason'`` with a hint for the usual causes."""
    where = path if path is not None else (error.filename or "")
    reason = error.strerror or str(error)
    hint = {
        errno.ENOSPC: "free some space or write elsewhere with --out",
        errno.EDQUOT: "free some space or write elsewhere with --out",
        errno.EROFS: "the folder is read-only; choose another --out",
        errno.EACCES: "no permission to write there; choose another --out",
        errno.EPERM: "no permission to write there; choose another --out",
    }.get(error.errno)
    return f"{where}: {reason}" + (f" ({hint})" if hint else "")


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[IO[bytes]], Any], *, fsync: bool = True
) -> Path:
    """Write ``path`` by calling ``write(handle)`` on a temporary binary file, then renaming it.

    Raises :class:`OutputError` if the operating system refuses (module docstring).
    """
    path = Path(path)
    temporary = None
    try:
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(descriptor, "wb") as handle:
            write(handle)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        _remove(temporary)
        if isinstance(error, OutputError):
            raise
        raise OutputError(error.errno, describe_os_error(error, path)) from error
    except BaseException:
        _remove(temporary)
        raise
    return path


def write_json_atomically(path: str | os.PathLike[str], content: Any) -> Path:
    """``content`` as indented JSON (UTF-8, trailing newline), written atomically."""
    text = json.dumps(content, indent=2) + "\n"
    return write_atomically(path, lambda handle: handle.write(text.encode("utf-8")))


def _remove(temporary: str | None) -> None:
    if temporary is not None:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
