"""Atomic outputs: renamed into place on success, temp removed and old content kept on failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from crossclr_infer.fileio import atomic_output, atomic_output_dir, write_json_atomic, write_text_atomic


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_output_renames_on_success_with_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "a.bin"  # parent folder created
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".a.bin.") and tmp.exists()
        assert not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert _names(target.parent) == ["a.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_output_failure_keeps_old_file_and_removes_temp(tmp_path, exc):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(exc):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise exc()
    assert target.read_text() == "old"
    assert _names(tmp_path) == ["a.txt"]


def test_atomic_output_without_mkdir_needs_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "missing" / "a.txt", mkdir=False):
            pass
    assert not (tmp_path / "missing").exists()


def test_write_text_and_json(tmp_path):
    assert write_text_atomic(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"
    p = write_json_atomic(tmp_path / "r.json", {"a": [1, 2.5], "b": None}, indent=2)
    assert json.loads(p.read_text()) == {"a": [1, 2.5], "b": None}
    assert p.read_text().endswith("\n") and '\n  "a"' in p.read_text()
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "bad.json", {"x": object()})
    assert _names(tmp_path) == ["r.json", "t.txt"]


def test_atomic_output_dir_replaces_a_folder_only_on_success(tmp_path):
    out = tmp_path / "models"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.onnx").write_text("1")
    assert _names(out) == ["a.onnx"]
    with pytest.raises(ValueError):
        with atomic_output_dir(out) as tmp:
            (tmp / "b.onnx").write_text("2")
            raise ValueError("parity failed")
    assert _names(out) == ["a.onnx"] and _names(tmp_path) == ["models"]
    with atomic_output_dir(out) as tmp:
        (tmp / "b.onnx").write_text("2")
    assert _names(out) == ["b.onnx"] and _names(tmp_path) == ["models"]


# ----------------------------------------------------------------------------------- stale temp files


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _temp(folder: Path, output: str, pid: int, *, host: str | None = None, rand: str = "abcd_123",
          folder_kind: bool = False) -> Path:
    """A temp name as atomic_output gives it, written by ``pid`` on ``host`` (default: this one)."""
    from crossclr_infer.fileio import HOST_TAG

    p = folder / f".{output}.{pid}-{host or HOST_TAG}.{rand}.tmp"
    if folder_kind:
        p.mkdir()
        (p / "joint.onnx").write_bytes(b"x" * 100)
    else:
        p.write_bytes(b"")
    return p


def test_temp_names_carry_the_writer(tmp_path):
    from crossclr_infer.fileio import HOST_TAG

    with atomic_output(tmp_path / "a.bin") as tmp:
        assert tmp.name.startswith(f".a.bin.{os.getpid()}-{HOST_TAG}.") and tmp.name.endswith(".tmp")
    with atomic_output_dir(tmp_path / "m") as tmp:
        assert tmp.name.startswith(f".m.{os.getpid()}-{HOST_TAG}.")


def test_stale_temps_of_the_same_output_are_removed_and_nothing_else(tmp_path):
    dead = _dead_pid()
    stale_file = _temp(tmp_path, "pretrain.pt", dead)
    stale_dir = _temp(tmp_path, "pretrain.pt", dead, rand="zzzz9999", folder_kind=True)
    live = _temp(tmp_path, "pretrain.pt", os.getpid())  # this process, started before the file: writing
    other_host = _temp(tmp_path, "pretrain.pt", dead, host="000000")  # another machine's pid: unknowable
    other_output = _temp(tmp_path, "other.pt", dead)  # another run's output: never touched
    legacy_old = tmp_path / ".pretrain.pt.k2j3h4l5.tmp"  # written before temp names had a writer
    legacy_old.write_bytes(b"")
    os.utime(legacy_old, (0, 1_000_000))
    legacy_new = tmp_path / ".pretrain.pt.q9w8e7r6.tmp"
    legacy_new.write_bytes(b"")
    user_file = tmp_path / ".pretrain.pt.notes.tmp"  # not a temp name of ours
    user_file.write_text("mine")
    with atomic_output(tmp_path / "pretrain.pt") as tmp:
        tmp.write_bytes(b"ckpt")
    left = set(_names(tmp_path))
    assert not {stale_file.name, stale_dir.name, legacy_old.name} & left
    assert {live.name, other_host.name, other_output.name, legacy_new.name, user_file.name,
            "pretrain.pt"} == left


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process start times come from /proc")
def test_a_reused_pid_does_not_keep_a_stale_temp(tmp_path):
    reused = _temp(tmp_path, "r.json", os.getpid())  # same pid, but written before this process started
    os.utime(reused, (0, 1_000_000))
    write_json_atomic(tmp_path / "r.json", {"a": 1})
    assert _names(tmp_path) == ["r.json"]


def test_a_killed_writer_leaves_a_temp_that_the_next_write_removes(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "cache.h5"
    code = ("import os, signal, sys\nfrom crossclr_infer.fileio import atomic_output\n"
            "with atomic_output(sys.argv[1]) as tmp:\n    tmp.write_bytes(b'half')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    r = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True)
    assert r.returncode != 0
    left = _names(tmp_path)
    assert len(left) == 1 and left[0].startswith(".cache.h5.") and left[0].endswith(".tmp")
    write_text_atomic(target, "done")
    assert _names(tmp_path) == ["cache.h5"]


def test_a_previous_folder_moved_aside_is_kept_while_it_is_the_only_copy(tmp_path):
    dead = _dead_pid()
    from crossclr_infer.fileio import HOST_TAG

    old = tmp_path / f".m.old-.m.{dead}-{HOST_TAG}.abcd_123.tmp"
    old.mkdir()
    with atomic_output_dir(tmp_path / "n") as tmp:  # another output: does not look at m's
        (tmp / "a").write_text("1")
    assert old.exists()
    with atomic_output_dir(tmp_path / "m") as tmp:  # m is absent: the moved-aside folder is its only copy
        (tmp / "a").write_text("1")
    assert old.exists()
    with atomic_output_dir(tmp_path / "m") as tmp:  # m exists now: the old copy is stale
        (tmp / "a").write_text("2")
    assert _names(tmp_path) == ["m", "n"]


def test_atomic_output_dir_uses_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with atomic_output_dir(tmp_path / "models") as tmp:
            (tmp / "a.onnx").write_text("1")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "models").stat().st_mode) == 0o750


def test_errors_while_writing_name_the_output_not_the_temp(tmp_path):
    target = tmp_path / "run" / "pretrain.pt"
    with pytest.raises(OSError) as e:
        with atomic_output(target) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert str(target) in str(e.value) and ".tmp" not in str(e.value)
    with pytest.raises(ValueError) as e:
        with atomic_output_dir(tmp_path / "models") as tmp:
            raise ValueError(f"Load model from {tmp / 'joint.onnx'} failed")
    assert str(e.value) == f"Load model from {tmp_path / 'models' / 'joint.onnx'} failed"
    assert _names(tmp_path) == ["run"] and _names(tmp_path / "run") == []
