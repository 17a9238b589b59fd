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
