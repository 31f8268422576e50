"""Output folders that never lose or hide work: locks, refusals, digests, atomic writes."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from neurode.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neurode.train.files import OutputError, write_atomically, write_json_atomically
from neurode.train.run_folder import RunFolder, RunFolderBusyError, RunFolderError

SETTINGS = {"epochs": 3, "lr": 0.01}


def _folder(out, **kwargs) -> RunFolder:
    return RunFolder(out, "test", kwargs.pop("settings", SETTINGS), **kwargs)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_holds_it(tmp_path):
    with (
        _folder(tmp_path / "run"),
        pytest.raises(RunFolderBusyError, match=f"pid {os.getpid()}"),
    ):
        _folder(tmp_path / "run", overwrite=True).open()
    with _folder(tmp_path / "run", resume=True):  # released on exit
        pass


def test_the_lock_holds_against_another_process_and_dies_with_it(tmp_path):
    out = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import sys, time
        from neurode.train.run_folder import RunFolder
        with RunFolder({str(out)!r}, "test", {{}}):
            print("locked", flush=True)
            sys.stdin.readline()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid}"):
            _folder(out, overwrite=True).open()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with _folder(out, settings={}, resume=True):  # a killed holder leaves no stale lock
        pass


@pytest.mark.parametrize("leftover", ["run.json", "metrics.json"])
def test_a_plain_rerun_onto_an_earlier_run_is_refused_naming_the_ways_out(tmp_path, leftover):
    out = tmp_path / "run"
    out.mkdir()
    if leftover == "run.json":
        with _folder(out):
            pass
    else:
        (out / leftover).write_text("{}")
    with pytest.raises(RunFolderError) as refused:
        _folder(out).open()
    message = str(refused.value)
    assert "--resume" in message and "another --out" in message and "--overwrite" in message
    assert (out / leftover).exists()


def test_overwrite_deletes_only_the_earlier_runs_own_files(tmp_path):
    out = tmp_path / "run"
    with _folder(out, outputs=("metrics.json", "figure.png")) as folder:
        save_checkpoint(folder.path("a.pt"), {"x": 1}, manifest=folder)
    (out / "metrics.json").write_text("{}")
    (out / "figure.png").write_bytes(b"png")
    (out / "notes.txt").write_text("mine")
    with _folder(out, overwrite=True, outputs=("metrics.json", "figure.png")) as folder:
        assert folder.record["checkpoints"] == {}
    assert not (out / "checkpoints").exists() and not (out / "metrics.json").exists()
    assert not (out / "figure.png").exists() and (out / "notes.txt").read_text() == "mine"


def test_resume_needs_a_record_with_the_same_command_and_settings(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RunFolderError, match="no run to resume"):
        _folder(out, resume=True).open()
    with _folder(out):
        pass
    with pytest.raises(CheckpointError, match=r"other settings: epochs=3 \(now 4\)"):
        _folder(out, resume=True, settings={"epochs": 4, "lr": 0.01}).open()
    with pytest.raises(RunFolderError, match="not `neurode other`"):
        RunFolder(out, "other", SETTINGS, resume=True).open()
    with _folder(out, resume=True) as folder:
        assert len(folder.record["resumed"]) == 1


@pytest.mark.parametrize(
    "content", ["{not json", "", "[1, 2]", '{"format": "something else"}', "\udcff"]
)
def test_a_corrupt_record_is_a_one_line_error_naming_the_file(tmp_path, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(content, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(RunFolderError) as error:
        _folder(out, resume=True).open()
    assert str(out / "run.json") in str(error.value) and "\n" not in str(error.value)


def test_checkpoint_digests_are_recorded_and_a_flipped_bit_is_refused(tmp_path):
    out = tmp_path / "run"
    with _folder(out) as folder:
        path = save_checkpoint(folder.path("model.pt"), {"w": torch.arange(100.0)}, manifest=folder)
    record = json.loads((out / "run.json").read_text())
    digest = record["checkpoints"]["checkpoints/model.pt"]["sha256"]
    assert len(digest) == 1 and len(digest[0]) == 64
    with _folder(out, resume=True) as folder:
        assert torch.equal(load_checkpoint(path, manifest=folder)["w"], torch.arange(100.0))
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))
    with _folder(out, resume=True) as folder, pytest.raises(CheckpointError, match="SHA-256"):
        load_checkpoint(path, manifest=folder)


def test_a_kill_between_writing_a_checkpoint_and_recording_it_still_resumes(tmp_path, monkeypatch):
    """The digest is announced before the rename: either file on disk is accepted."""
    out = tmp_path / "run"
    with _folder(out) as folder:
        path = save_checkpoint(folder.path("m.pt"), {"epoch": 1}, manifest=folder)

        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(folder, "confirm", killed)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"epoch": 2}, manifest=folder)
    monkeypatch.undo()
    with _folder(out, resume=True) as folder:
        assert load_checkpoint(path, manifest=folder)["epoch"] == 2


def test_a_full_disk_leaves_the_old_file_and_says_so_on_one_line(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    write_json_atomically(path, {"old": True})

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as error:
        write_json_atomically(path, {"new": True})
    assert str(path) in str(error.value) and "No space left" in str(error.value)
    assert "\n" not in str(error.value)
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary left


def test_a_kill_while_writing_leaves_no_empty_file(tmp_path):
    path = tmp_path / "figure.png"

    def interrupted(handle):
        handle.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, interrupted)
    assert not path.exists() and not list(tmp_path.iterdir())


def test_a_read_only_folder_is_an_output_error(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).startswith(str(out)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputError, match="read-only") as error:
        _folder(out).open()
    assert str(out) in str(error.value)


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunFolderError, match="cannot be combined"):
        _folder(tmp_path, resume=True, overwrite=True)
