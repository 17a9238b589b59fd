"""Atomic file output: write under a temp name in the destination folder, rename into place on success.

Every file this project writes (caches, checkpoints, JSON reports, PNGs, ONNX folders) goes through
``atomic_output`` (one file) or ``atomic_output_dir`` (a folder), so a crash, an exception or Ctrl-C never
leaves a half-written file under the final name, and the temp name is removed on failure.

Temp names carry their writer: ``.NAME.<pid>-<host>.<random><suffix>`` (``host``: six hex digits of the
host name). A process killed outright (``kill -9``, power loss) cannot remove its temp file, so every atomic
write first removes the stale temp files of *its own* output (``remove_stale_temps``): those whose writer
on this host is gone, or whose pid now belongs to a process started after the file was last written. Live
writers, other outputs' temp files and other hosts' are never touched, so concurrent runs are safe.
Errors raised while writing name the output the user asked for, not its temp name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
# temp names written before they carried their writer (".NAME.<random>.tmp") are stale after this long
# without a change (an export folder gains files every few seconds while it is written)
LEGACY_STALE_S = 3600.0
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}-{HOST_TAG}."


def _temp_regex(name: str, suffix: str) -> re.Pattern[str]:
    """``.NAME.<pid>-<host>.<random><suffix>`` (groups pid, host) or a legacy ``.NAME.<random><suffix>``."""
    return re.compile(rf"\.{re.escape(name)}\.(?:(\d+)-([0-9a-f]{{6}})\.)?{_RANDOM}{re.escape(suffix)}")


def _old_dir_regex(name: str) -> re.Pattern[str]:
    """The previous folder that ``atomic_output_dir`` moves aside: ``.NAME.old-<temp folder name>``."""
    return re.compile(rf"\.{re.escape(name)}\.old-\.{re.escape(name)}\.(?:(\d+)-([0-9a-f]{{6}})\.)?"
                      rf"{_RANDOM}\.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return True  # cannot tell: keep the file
    return True


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from /proc on Linux; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])  # field 22, starttime in clock ticks
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _is_stale(entry: Path, pid: str | None, host: str | None) -> bool:
    """Whether the temp ``entry`` of writer ``pid`` on ``host`` (None: a legacy name) is abandoned."""
    try:
        mtime = entry.lstat().st_mtime
    except OSError:
        return False
    if pid is None:
        return time.time() - mtime > LEGACY_STALE_S
    if host != HOST_TAG:
        return False  # another machine's writer (a shared folder): its pids mean nothing here
    if not _pid_alive(int(pid)):
        return True
    started = _process_start(int(pid))
    return started is not None and started > mtime + 2.0  # the pid was reused since the file was written


def _remove(entry: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError:
        return False  # removed meanwhile by a concurrent run, or not ours to remove
    return True


def remove_stale_temps(path: str | Path, suffix: str = ".tmp") -> list[Path]:
    """Remove the temp files and folders that earlier, killed writers of ``path`` left beside it (see the
    module docstring); returns what was removed. A previous output folder moved aside by
    ``atomic_output_dir`` is removed only when ``path`` itself exists (else it is the only copy, kept)."""
    path = Path(path)
    temp, old = _temp_regex(path.name, suffix), _old_dir_regex(path.name)
    try:
        names = [e.name for e in os.scandir(path.parent)]
    except OSError:
        return []
    removed = []
    for name in names:
        m = temp.fullmatch(name) or old.fullmatch(name)
        if m is None:
            continue
        entry = path.parent / name
        if not _is_stale(entry, m.group(1), m.group(2)):
            continue
        if m.re is old and not path.exists():
            log.warning("%s: the previous content of %s is kept here (a replacement did not finish)", entry,
                        path)
            continue
        if _remove(entry):
            log.info("removed %s, left by a run of pid %s that did not finish", entry, m.group(1) or "?")
            removed.append(entry)
    return removed


def _name_the_output(error: BaseException, tmp: Path, path: Path) -> None:
    """Rewrite ``error``'s message (and an OSError's file names) to name ``path`` instead of ``tmp``."""
    pairs = [(str(tmp), str(path)), (str(tmp.absolute()), str(path.absolute())), (tmp.name, path.name)]

    def fix(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    if isinstance(error, OSError):
        for attr in ("filename", "filename2"):
            value = getattr(error, attr, None)
            if isinstance(value, str):
                setattr(error, attr, fix(value))
    try:
        error.args = tuple(fix(a) if isinstance(a, str) else a for a in error.args)
    except (AttributeError, TypeError):  # pragma: no cover - exotic exception types
        pass


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
    remove_stale_temps(path, suffix)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        _name_the_output(e, tmp, path)
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
    aside first and removed only after the rename). On any exception the temp folder is removed. The
    folder gets the usual permissions (0777 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
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
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        _name_the_output(e, tmp, path)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
