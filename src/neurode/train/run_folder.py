"""An output folder owned by one run: locked, recorded, never silently reused.

Every training command writes into a folder (``--out``) through a
:class:`RunFolder`, which guarantees:

* **one process at a time**: an exclusive lock (``flock`` on
  ``.neurode.lock`` in the folder, released by the operating system when the
  process ends, however it ends); a second process is refused at once with
  the first one's process id;
* **no run is overwritten by accident**: a folder that already holds a run
  (its ``run.json`` or a ``metrics.json``) is refused unless the command says
  ``--resume`` (continue it, with the same settings) or ``--overwrite``
  (delete that run's files and start over);
* **checkpoints are verified**: ``run.json`` records the command, its settings
  and the SHA-256 of every checkpoint written (the folder is the
  :class:`~neurode.train.checkpoint.CheckpointManifest` of the run); a
  checkpoint whose digest is not the recorded one is refused on resume;
* **everything is written atomically** (:mod:`neurode.train.files`), and
  every failure is one line: a corrupt ``run.json``, a read-only folder or a
  full disk raise :class:`RunFolderError` or
  :class:`~neurode.train.files.OutputError` naming the file and the way out.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import NeurodeInputError
from .checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from .files import OutputError, describe_os_error, write_json_atomically

__all__ = ["RunFolder", "RunFolderBusyError", "RunFolderError"]

_RECORD = "run.json"
_LOCK = ".neurode.lock"
_CHECKPOINTS = "checkpoints"
_FORMAT = "neurode.run"


class RunFolderError(NeurodeInputError):
    """The output folder cannot be used as asked: it holds another run, or its record is bad."""


class RunFolderBusyError(RunFolderError):
    """Another process is writing into the output folder."""


class RunFolder:
    """The output folder of one run of ``command`` (module docstring).

    Args:
        out: the folder (created if needed).
        command: the command's name, recorded and checked on resume.
        settings: everything that must match for ``--resume`` (JSON values).
        resume: continue the run recorded in the folder.
        overwrite: delete the run recorded in the folder (its checkpoints,
            record and ``outputs``) and start a new one.
        outputs: names of the files the command writes into the folder
            (``metrics.json``, figures, ...): their presence marks an earlier
            run, and ``overwrite`` deletes them.

    Use as a context manager; the lock is held until it exits.
    """

    def __init__(
        self,
        out: str | os.PathLike[str],
        command: str,
        settings: Mapping[str, Any],
        *,
        resume: bool = False,
        overwrite: bool = False,
        outputs: Sequence[str] = ("metrics.json",),
    ):
        if resume and overwrite:
            raise RunFolderError("--resume and --overwrite cannot be combined")
        self.out = Path(out)
        self.command = command
        self.settings = json.loads(json.dumps(dict(settings)))  # as it reads back from the file
        self.resume = resume
        self.overwrite = overwrite
        self.outputs = tuple(outputs)
        self.record: dict[str, Any] = {}
        self._lock: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> RunFolder:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def record_path(self) -> Path:
        return self.out / _RECORD

    def open(self) -> None:
        """Create and lock the folder, then check or start its run record."""
        if self.out.exists() and not self.out.is_dir():
            raise RunFolderError(f"--out {self.out} exists and is not a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(error.errno, f"cannot create {describe_os_error(error)}") from None
        self._acquire_lock()
        try:
            if self.resume:
                self._load_for_resume()
            else:
                self._start()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def finish(self, **details: Any) -> None:
        """Mark the run finished in ``run.json`` (with optional details)."""
        self.record["finished"] = _now()
        self.record.update(details)
        self._write_record()

    # ------------------------------------------------------------------ checkpoints
    def path(self, name: str) -> Path:
        """Where checkpoint ``name`` lives: ``OUT/checkpoints/name``."""
        return self.out / _CHECKPOINTS / name

    def exists(self, path: str | os.PathLike[str]) -> bool:
        """Whether a resumable checkpoint is at ``path`` (on disk and recorded)."""
        path = Path(path)
        return path.is_file() and self._key(path) in self.record.get("checkpoints", {})

    @property
    def manifest(self) -> RunFolder:
        return self

    def save_state(self, name: str, extra: Mapping[str, Any], **stateful: Any) -> None:
        """Checkpoint a custom training loop: ``state_dict()`` of each object, the global
        random states, and ``extra`` (plain values: epoch, history, ...)."""
        save_checkpoint(
            self.path(name),
            {
                "state": {key: value.state_dict() for key, value in stateful.items()},
                "rng": capture_rng_state(),
                "extra": dict(extra),
            },
            manifest=self,
        )

    def load_state(self, name: str, **stateful: Any) -> dict[str, Any] | None:
        """Restore what :meth:`save_state` wrote into ``stateful`` and the random states;
        return its ``extra``, or None if there is no such checkpoint in this run."""
        path = self.path(name)
        if not self.exists(path):
            return None
        record = load_checkpoint(path, manifest=self)
        try:
            for key, value in stateful.items():
                value.load_state_dict(record["state"][key])
        except (KeyError, RuntimeError, ValueError) as error:
            reason = " ".join(str(error).split())
            raise CheckpointError(f"{path} does not match this model: {reason}") from error
        restore_rng_state(record["rng"])
        return record["extra"]

    def announce(self, path: Path, digest: str) -> None:
        entry = self.record.setdefault("checkpoints", {}).get(self._key(path), {})
        accepted = [digest, *entry.get("sha256", [])[:1]]
        self.record["checkpoints"][self._key(path)] = {"sha256": accepted}
        self._write_record()

    def confirm(self, path: Path, digest: str) -> None:
        self.record.setdefault("checkpoints", {})[self._key(path)] = {"sha256": [digest]}
        self._write_record()

    def verify(self, path: Path, digest: str) -> None:
        entry = self.record.get("checkpoints", {}).get(self._key(path))
        if entry is None:
            raise CheckpointError(
                f"{path} is not recorded in {self.record_path}; it was not written by this run "
                "(start over with --overwrite or choose another --out)"
            )
        if digest not in entry.get("sha256", []):
            raise CheckpointError(
                f"{path} does not match the SHA-256 recorded in {self.record_path}: the file "
                "was damaged or replaced after it was written; start over with --overwrite "
                "or choose another --out"
            )

    # ------------------------------------------------------------------ internals
    def _key(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.out.resolve()).as_posix()
        except ValueError:
            return str(path)

    def _acquire_lock(self) -> None:
        path = self.out / _LOCK
        try:
            self._lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise OutputError(
                error.errno, f"cannot write into {self.out}: {describe_os_error(error, path)}"
            ) from None
        if not _try_lock(self._lock):
            holder = _read_pid(self._lock)
            os.close(self._lock)
            self._lock = None
            raise RunFolderBusyError(
                f"{self.out} is in use by another neurode process"
                + (f" (pid {holder})" if holder else "")
                + "; wait for it to finish or choose another --out"
            )
        try:
            os.ftruncate(self._lock, 0)
            os.pwrite(self._lock, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid only improves the message a second process prints

    def _read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            reason = error.strerror if isinstance(error, OSError) else str(error).split("\n")[0]
            raise RunFolderError(
                f"{self.record_path} is unreadable ({reason}); the run in {self.out} cannot be "
                "resumed: start over with --overwrite or choose another --out"
            ) from None
        if not isinstance(record, dict) or record.get("format") != _FORMAT:
            raise RunFolderError(
                f"{self.record_path} is not a neurode run record; start over with --overwrite "
                "or choose another --out"
            )
        return record

    def _load_for_resume(self) -> None:
        if not self.record_path.is_file():
            raise RunFolderError(f"--resume: there is no run to resume in {self.out} (no run.json)")
        record = self._read_record()
        if record.get("command") != self.command:
            raise RunFolderError(
                f"--resume: {self.out} holds a run of `neurode {record.get('command')}`, "
                f"not `neurode {self.command}`; choose another --out"
            )
        saved = record.get("settings", {})
        changed = sorted(
            k for k in saved.keys() | self.settings.keys() if saved.get(k) != self.settings.get(k)
        )
        if changed:
            details = ", ".join(
                f"{k}={saved.get(k)!r} (now {self.settings.get(k)!r})" for k in changed
            )
            raise CheckpointError(
                f"--resume: {self.out} holds a run with other settings: {details}"
            )
        record.pop("finished", None)
        self.record = record
        self.record["resumed"] = [*record.get("resumed", []), _now()]
        self._write_record()

    def _start(self) -> None:
        earlier = [name for name in (_RECORD, *self.outputs) if (self.out / name).exists()]
        if earlier and not self.overwrite:
            raise RunFolderError(
                f"{self.out} already holds a run ({', '.join(earlier)}); continue it with "
                "--resume, write this run elsewhere with another --out, or replace it with "
                "--overwrite"
            )
        if self.overwrite:
            self._remove_earlier_run()
        self.record = {
            "format": _FORMAT,
            "command": self.command,
            "settings": self.settings,
            "started": _now(),
            "checkpoints": {},
        }
        self._write_record()

    def _remove_earlier_run(self) -> None:
        try:
            for name in self.outputs:
                (self.out / name).unlink(missing_ok=True)
            checkpoints = self.out / _CHECKPOINTS
            if checkpoints.is_dir():
                shutil.rmtree(checkpoints)
            self.record_path.unlink(missing_ok=True)
        except OSError as error:
            raise OutputError(
                error.errno, f"cannot remove the earlier run: {describe_os_error(error)}"
            ) from None

    def _write_record(self) -> None:
        write_json_atomically(self.record_path, self.record)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _try_lock(descriptor: int) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        try:
            import msvcrt

            msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _read_pid(descriptor: int) -> str:
    try:
        return os.pread(descriptor, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return ""
