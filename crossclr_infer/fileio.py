"""Atomic file output: write under a temp name in the destination folder, rename into place on success.

Every file this project writes (caches, checkpoints, JSON reports, PNGs, ONNX folders) goes through
``atomic_output`` (one file) or ``atomic_output_dir`` (a folder), so a crash, an exception or Ctrl-C never
leaves a half-written file under the final name, and the temp name is removed on failure.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_output(path: str | Path, *, suffix: str = ".tmp", mkdir: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit fsync it and rename it over ``path``.

    On any exception (KeyboardInterrupt included) the temp file is deleted and the exception propagates.
    The temp file is created empty (writers may open it by name) and gets the usual permissions
    (0666 minus the umask) before the rename. ``mkdir`` creates missing parent folders.
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns ``Path(path)``."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | Path, obj: Any, *, indent: int = 1) -> Path:
    """Write ``obj`` as JSON (trailing newline) to ``path`` atomically; returns ``Path(path)``."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


@contextmanager
def atomic_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on a clean exit it replaces ``path`` (an old folder is moved
    aside first and removed only after the rename). On any exception the temp folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{tmp.name}")
            path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            if old is not None:
                old.rename(path)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
