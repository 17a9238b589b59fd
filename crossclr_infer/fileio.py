"""Atomic file output: write under a temp name in the destination folder, rename into place on success.

Every file this project writes (caches, checkpoints, JSON reports, PNGs, ONNX folders) goes through
``atomic_output`` (one file) or ``atomic_output_dir`` (a folder), so a crash, an exception or Ctrl-C never
leaves a half-written file under the final name, and the temp name is removed on failure.

Temp names carry their writer: ``.NAME.<pid>-<host>.<random><suffix>`` (``host``: six hex digits of the
host name). A process killed outright (``kill -9``, power loss) cannot remove its temp file, so every atomic
write first removes the stale temp files of *its own* output (``remove_stale_temps``): those whose writer
on this host is gone, or whose pid now belongs to a process started after the file was last written. Live
writers, other outputs' temp files and other hosts' are never touched, so concurrent runs are safe.
Errors raised while writing name the output the user asked for, not its temp name. Names longer than
``STEM_MAX`` bytes are shortened in temp names (cut, plus a digest of the whole name), so every temp name
stays within the file system's 255-byte limit (NAME_MAX) whenever the output's own name does.

Two more rules hold for every command (``check_outputs``, ``output_lock``): an output that is, or is a
folder holding, one of the command's inputs is refused before anything is written; and an output is
locked (``fcntl.flock`` on ``.NAME.lock`` beside it) while a run writes it, so a second run writing the
same output is refused with the holder's pid. The OS releases the lock when its process ends, however it
ends, so a killed run never blocks the next.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import CrossclrError

log = logging.getLogger(__name__)

HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]
# temp names written before they carried their writer (".NAME.<random>.tmp") are stale after this long
# without a change (an export folder gains files every few seconds while it is written)
LEGACY_STALE_S = 3600.0
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part
# longest output name (bytes) used whole in temp and lock names: beyond it the name is cut and a digest of
# it appended, so ".NAME.<pid>-<host>.<random>.tmp" and the ".NAME.old-<temp name>" of a replaced folder
# stay within NAME_MAX (255 bytes)
STEM_MAX = 100
# errno values of a write that failed for want of room: disk full, file size limit (ulimit -f), quota
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
# how torch's stream writer reports a write that failed (it gives no errno)
_UNSAID_WRITE_FAILURES = ("file write failed", "unexpected pos ")


class WriteFailed(OSError):
    """An output could not be written for want of room (disk full, ``ulimit -f``, quota; ``errno`` says
    which); its message names the output, and nothing was left under its name. HDF5 (2.0, h5py 3.16)
    cannot close a file whose last write failed: the failed close leaves a half-closed dataset that a
    later garbage collection closes again (a segfault), so the CLI ends the process after this error
    without running finalizers (``cli.main``)."""


def _stem(name: str) -> str:
    """``name`` when it fits in ``STEM_MAX`` bytes, else its head cut to fit plus ``~`` and a digest."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= STEM_MAX:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:10]
    head = raw[:STEM_MAX - 11].decode("utf-8", "ignore")  # a cut multi-byte character is dropped
    return f"{head}~{digest}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{_stem(path.name)}.{os.getpid()}-{HOST_TAG}."


def _names(name: str) -> str:
    """Regex of the NAME part of a temp name: the shortened stem, or (written before names were
    shortened) the whole name."""
    stem = _stem(name)
    return re.escape(stem) if stem == name else f"(?:{re.escape(stem)}|{re.escape(name)})"


def _temp_regex(name: str, suffix: str) -> re.Pattern[str]:
    """``.NAME.<pid>-<host>.<random><suffix>`` (groups pid, host) or a legacy ``.NAME.<random><suffix>``."""
    return re.compile(rf"\.{_names(name)}\.(?:(\d+)-([0-9a-f]{{6}})\.)?{_RANDOM}{re.escape(suffix)}")


def _old_dir_regex(name: str) -> re.Pattern[str]:
    """The previous folder that ``atomic_output_dir`` moves aside: ``.NAME.old-<temp folder name>``."""
    return re.compile(rf"\.{_names(name)}\.old-\.{_names(name)}\.(?:(\d+)-([0-9a-f]{{6}})\.)?"
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


def _cannot_create(path: Path, error: OSError) -> Exception:
    """The one-line error when no temp file or folder can be made beside ``path`` (a read-only folder, a
    full disk): it names ``path``, never the temp name."""
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(errno.ENOENT, "no such folder", str(path.parent))
    reason = error.strerror or type(error).__name__
    return CrossclrError(f"{path}: cannot write here ({reason} in {path.parent}); expected a folder this "
                         "user can write to")


def _failed_write(error: BaseException) -> tuple[bool, int | None]:
    """Whether ``error`` (or an error chained to it) is a write that failed for want of room, and its errno
    when known: OSErrors carry it; HDF5 gives it only in its message text, and torch's stream writer says
    only "file write failed" or "unexpected pos" (errno unknown)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_ROOM:
            return True, e.errno
        if isinstance(e, (OSError, RuntimeError)):
            text = str(e)
            for code in _NO_ROOM:
                if f"errno = {code}," in text or os.strerror(code) in text:
                    return True, code
            if isinstance(e, RuntimeError) and any(m in text for m in _UNSAID_WRITE_FAILURES):
                return True, None
        e = e.__cause__ or e.__context__
    return False, None


def _write_failed(error: BaseException, path: Path) -> WriteFailed | None:
    """A ``WriteFailed`` naming ``path`` when ``error`` is a write that failed for want of room, else None.
    The temp file is already gone, and a previous ``path`` is untouched."""
    if isinstance(error, WriteFailed):
        return None
    failed, code = _failed_write(error)
    if not failed:
        return None
    reason = os.strerror(code) if code is not None else "the write failed"
    result = WriteFailed(f"{path}: could not be written: {reason} (a full disk, a quota or a file size limit "
                         "such as ulimit -f); nothing was written under that name and any previous file is "
                         "kept")
    result.errno = code
    return result


def _refuse_special_output(path: Path) -> None:
    """Refuse an output that exists (through symlinks) as a FIFO, socket or device: the rename would put a
    regular file in place of ``/dev/null`` or ``/dev/full`` (a run as root would destroy the device node).
    A path without a file name (``--out ''`` is the current folder) is refused too."""
    if path.name in ("", ".", ".."):
        raise CrossclrError(f"output {str(path) if str(path) != '.' else ''!r}: not a file or folder name; "
                            "expected a path such as out/NAME")
    try:
        mode = os.stat(path).st_mode
    except OSError:  # absent (the usual case), or unreadable: the writer reports it
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
    raise CrossclrError(f"{path}: is {kind}, expected a regular file or a new name to write (special files "
                        "are never replaced)")


@contextmanager
def atomic_output(path: str | Path, *, suffix: str = ".tmp", mkdir: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit fsync it and rename it over ``path``.

    On any exception (KeyboardInterrupt included) the temp file is deleted and the exception propagates.
    The temp file is created empty (writers may open it by name) and gets the usual permissions
    (0666 minus the umask) before the rename. ``mkdir`` creates missing parent folders.
    """
    path = Path(path)
    _refuse_special_output(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path, suffix)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    except OSError as e:
        raise _cannot_create(path, e) from None
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
        failed = _write_failed(e, path)
        if failed is not None:
            raise failed from e
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
    _refuse_special_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    except OSError as e:
        raise _cannot_create(path, e) from None
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = None
        if path.exists():
            old = path.with_name(f".{_stem(path.name)}.old-{tmp.name}")
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
        failed = _write_failed(e, path)
        if failed is not None:
            raise failed from e
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def require_regular_file(path: str | Path, what: str, *, missing_ok: bool = False) -> Path:
    """``Path(path)`` when it names a regular file (through symlinks), else a CrossclrError naming it and
    ``what`` was expected (e.g. ``"cache file"``). A FIFO, socket or device is refused from its ``stat``
    alone, never opened: opening a FIFO for reading blocks until a writer comes. ``missing_ok``: a path that
    does not exist is returned as is (for callers with their own message)."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if missing_ok:
            return path
        raise CrossclrError(f"{path}: {what} not found") from None
    except OSError as e:
        raise CrossclrError(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise CrossclrError(f"{path}: is a folder, expected a {what}")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_KINDS if test(mode)), "not a regular file")
        raise CrossclrError(f"{path}: is {kind}, expected a regular {what} (special files are refused "
                            "unread)")
    return path


# ---------------------------------------------------------------------------------------------------------
# outputs against inputs, and one writer per output


PathArg = str | Path | None


def _paths(value: PathArg | list[PathArg] | tuple[PathArg, ...]) -> list[Path]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [Path(v) for v in value if v is not None]
    return [Path(value)]


def _resolved(path: Path) -> Path:
    """``path`` absolute, through every symbolic link of its existing part."""
    return Path(os.path.abspath(path.expanduser())).resolve()


def _same_file(a: Path, b: Path) -> bool:
    """The same existing file under two names (hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse, before anything is read or written, an output that is one of the inputs or a folder that
    holds one (resolved through symbolic links; hard links too): writing it would replace or delete the
    input. ``outputs`` and ``inputs`` map an option name (``"--out"``, ``"--data"``, ``"METRICS"``) to a
    path, a list of paths, or None (not given)."""
    ins = [(opt, p, _resolved(p)) for opt, v in inputs.items() for p in _paths(v)]
    for opt_out, value in outputs.items():
        for out in _paths(value):
            res = _resolved(out)
            for opt_in, inp, inp_res in ins:
                if inp_res == res or _same_file(out, inp):
                    raise CrossclrError(f"{opt_out} {out}: is the input {opt_in} {inp}; writing it would "
                                        f"destroy the input, choose another {opt_out}")
                if res in inp_res.parents:
                    raise CrossclrError(f"{opt_out} {out}: is a folder holding the input {opt_in} {inp}; "
                                        f"writing it could destroy the input, choose another {opt_out}")


def lock_path(path: str | Path) -> Path:
    """The lock file of output ``path``: ``.NAME.lock`` beside it (beside, not inside, because a folder
    output is swapped in whole), after resolving links and ``.``, so every spelling of one output shares
    one lock."""
    path = _resolved(Path(path))
    return path.parent / f".{_stem(path.name)}.lock"


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return "?"
    return text if text.isdigit() else "?"


@contextmanager
def output_lock(path: str | Path, option: str = "--out", *, mkdir: bool = False) -> Iterator[Path]:
    """Hold an exclusive lock on output ``path`` while the block runs: ``fcntl.flock`` on its lock file
    (``lock_path``), which holds this process's pid. A second writer is refused at once with one line
    naming ``option``, ``path`` and the holder's pid. The lock file is removed when the block ends; the OS
    drops the lock of a process that dies, so a killed run never blocks the next (its lock file is reused).
    ``mkdir`` creates the missing parent folders first; without it a missing parent means no lock (the
    writer reports the missing folder itself). On a file system without ``flock`` the run goes unlocked,
    with a warning."""
    import fcntl

    path = Path(path)
    lock = lock_path(path)
    if mkdir:
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _cannot_create(path, e) from None
    elif not lock.parent.is_dir():
        yield lock
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise _cannot_create(path, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CrossclrError(f"{option} {path}: another run (pid {holder}) is writing it now; wait for it "
                                f"to end or choose another {option}") from None
        except OSError as e:  # no flock on this file system (some network mounts)
            os.close(fd)
            log.warning("%s: cannot lock %s (%s): concurrent runs writing it are not detected", path, lock,
                        e.strerror)
            yield lock
            return
        try:  # the previous holder may have removed the file between our open and our lock: lock anew
            st, now = os.fstat(fd), os.stat(lock)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield lock
    finally:
        try:
            os.unlink(lock)  # while still holding the lock: a waiting opener re-checks the inode
        except OSError:
            pass
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (model identities in reports and precision checks). Hashed once per file
    version: opening a model, its precision check and the report ask for the same model's hash."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int, inode: int) -> str:
    """The hash of ``path`` as it was at (size, mtime_ns, inode): a rewritten file gets a new key."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
