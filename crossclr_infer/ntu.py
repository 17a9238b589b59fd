"""NTU RGB+D raw ``.skeleton`` files, file names, benchmarks and action names.

The reader has two paths that give identical results:

* a vectorized fast path (numpy over the whole file's bytes: line boundaries, token counts, the
  structure check and the decimal conversion of the fields we keep are array operations, no Python
  loop over lines), taken for files in the canonical format the Kinect tools write (one space between
  values, plain decimals);
* a line-by-line reader, the authority on the grammar, used for anything unusual (tabs, extra spaces,
  exponents, ...) and to name the exact line and problem when a file is malformed.

Only x, y, z of each joint, the body IDs and the body counts are converted; the other fields must be
present (each line has its full number of values) but are not interpreted.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import require_regular_file
from crossclr_infer.skeleton import RawSkeleton

log = logging.getLogger(__name__)

NTU_NUM_JOINTS = 25
_INFO_VALUES = 10  # bodyID, clippedEdges, hand states ×4, isRestricted, leanX, leanY, trackingState
_JOINT_VALUES = 12  # x, y, z, depthX, depthY, colorX, colorY, orientation ×4, trackingState


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------
def read_skeleton(path: str | Path, *, num_joints: int = NTU_NUM_JOINTS) -> RawSkeleton:
    """Read an NTU RGB+D ``.skeleton`` file (CRLF or LF).

    Raises CrossclrError ``"FILE: line N: expected ..., got ..."`` for malformed files.
    """
    path = require_regular_file(path, "skeleton file", missing_ok=True)  # a FIFO would block the read
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CrossclrError(f"{path}: cannot read skeleton file ({e.strerror or e})") from None
    return parse_skeleton_bytes(data, str(path), num_joints=num_joints)


def parse_skeleton_bytes(data: bytes, source: str = "<bytes>", *,
                         num_joints: int = NTU_NUM_JOINTS) -> RawSkeleton:
    """Parse the content of a ``.skeleton`` file; ``source`` names it in error messages."""
    fast = _parse_fast(data, num_joints)
    if fast is not None:
        return fast
    return parse_skeleton_lines(data, source, num_joints=num_joints)


def _fail(source: str, line: int, expected: str, got: str) -> CrossclrError:
    return CrossclrError(f"{source}: line {line}: expected {expected}, got {got}")


def _show(tok: bytes, limit: int = 30) -> str:
    text = tok.decode("ascii", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _to_int(tok: bytes) -> int | None:
    if not tok or b"_" in tok:
        return None
    try:
        return int(tok)
    except ValueError:
        return None


def _to_float(tok: bytes) -> float | None:
    if b"_" in tok:
        return None
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


class _Lines:
    """The lines of a file for the line reader (trailing blank lines dropped), read with the grammar's
    messages: ``what`` is formatted with ``args`` only when a line is wrong."""

    def __init__(self, data: bytes, source: str) -> None:
        lines = data.replace(b"\r\n", b"\n").split(b"\n")
        n = len(lines)
        while n and not lines[n - 1].strip():
            n -= 1
        if n == 0:
            raise _fail(source, 1, "the number of frames", "an empty file")
        self.lines, self.n, self.source = lines, n, source

    def take(self, pos: int, what: str, *args: object) -> list[bytes]:
        """The tokens of line ``pos`` (0-based), which must exist and not be blank."""
        if pos >= self.n:
            raise _fail(self.source, pos + 1, what.format(*args), "the end of the file (truncated file)")
        toks = self.lines[pos].split()
        if not toks:
            raise _fail(self.source, pos + 1, what.format(*args), "an empty line")
        return toks

    def count(self, pos: int, what: str, *args: object) -> int:
        """Line ``pos`` holding one integer >= 0."""
        toks = self.take(pos, what, *args)
        value = _to_int(toks[0]) if len(toks) == 1 else None
        if value is None or value < 0:
            raise _fail(self.source, pos + 1, what.format(*args) + " (one integer >= 0)",
                        _show(b" ".join(toks)))
        return value


def parse_skeleton_lines(data: bytes, source: str = "<bytes>", *,
                         num_joints: int = NTU_NUM_JOINTS) -> RawSkeleton:
    """The plain line-by-line reader: the reference grammar, with precise error messages.

    Tokens are separated by any ASCII whitespace; trailing blank lines are allowed, blank lines inside
    the file are not. Messages are only formatted when a line is wrong.
    """
    doc = _Lines(data, source)
    num_frames = doc.count(0, "the number of frames")
    if num_frames > doc.n - 1:  # every frame needs at least its body-count line
        raise _fail(source, 1, f"the number of frames (at most {doc.n - 1} in a file of {doc.n} lines)",
                    f"{num_frames} (truncated file?)")
    pos = 1
    bodies_per_frame = np.zeros(num_frames, dtype=np.int64)
    body_ids: list[int] = []
    xyz: list[float] = []
    for f in range(num_frames):
        n = doc.count(pos, "the number of bodies in frame {}", f + 1)
        pos += 1
        bodies_per_frame[f] = n
        for b in range(n):
            pos = _read_body(doc, pos, f"body {b + 1} of frame {f + 1}", num_joints, body_ids, xyz)
    if pos < doc.n:
        raise _fail(source, pos + 1, f"the end of the file after {num_frames} frames",
                    _show(doc.lines[pos].strip()))
    arr = np.array(xyz, dtype=np.float64).reshape(-1, num_joints, 3)  # (B_total * V * 3,) -> (B_total, V, 3)
    return RawSkeleton(num_frames, bodies_per_frame, np.array(body_ids, dtype=np.int64),
                       arr.astype(np.float32))


def _read_body(doc: _Lines, pos: int, where: str, num_joints: int, body_ids: list[int],
               xyz: list[float]) -> int:
    """One body from line ``pos`` (info line, joint count, joint lines): appends its ID to ``body_ids`` and
    its x, y, z to ``xyz``; returns the line after it. ``where`` names the body in messages."""
    source = doc.source
    toks = doc.take(pos, "the {} values of {}", _INFO_VALUES, where)
    if len(toks) != _INFO_VALUES:
        raise _fail(source, pos + 1, f"{_INFO_VALUES} values for {where}", f"{len(toks)} values")
    body_id = _to_int(toks[0])
    if body_id is None or not -(2**63) <= body_id < 2**63:
        raise _fail(source, pos + 1, f"an integer body ID for {where}", _show(toks[0]))
    body_ids.append(body_id)
    joints = doc.count(pos + 1, "the number of joints of {}", where)
    if joints != num_joints:
        raise _fail(source, pos + 2, f"{num_joints} joints for {where}", f"{joints}")
    pos += 2
    for j in range(num_joints):
        toks = doc.take(pos, "joint {} of {} ({} values)", j + 1, where, _JOINT_VALUES)
        if len(toks) != _JOINT_VALUES:
            raise _fail(source, pos + 1, f"{_JOINT_VALUES} values for joint {j + 1} of {where}",
                        f"{len(toks)} values")
        for axis in range(3):
            v = _to_float(toks[axis])
            if v is None:
                raise _fail(source, pos + 1, f"a finite number for {'xyz'[axis]} of joint {j + 1} of "
                            f"{where}", _show(toks[axis]))
            xyz.append(v)
        pos += 1
    return pos


def _gather(buf: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(n, width) bytes from each start (buf must be padded by at least ``width`` bytes)."""
    return buf[starts[:, None] + np.arange(width)]


def _parse_uints(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 max_digits: int) -> np.ndarray | None:
    """Vectorized plain decimal integers (digits only), or None when any token is not one."""
    if starts.size == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lengths.max())
    if width > max_digits:
        return None
    win = _gather(buf, starts, width).astype(np.int64) - 48  # (n, width) digit values
    inside = np.arange(width) < lengths[:, None]
    if np.any(inside & ((win < 0) | (win > 9))):
        return None
    power = lengths[:, None] - 1 - np.arange(width)  # place value exponent of each digit
    weights = np.where(inside, 10 ** np.clip(power, 0, None), 0)
    return (win * weights).sum(axis=1)


_NUMBER_CHARS = b"0123456789.-+eE "


def _parse_prefix_numbers(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                          per_row: int) -> np.ndarray | None:
    """Convert the byte ranges [start, end] (each ``per_row`` space-separated numbers ending with the
    separator at ``end``) in one numpy call; None when any token is not exactly one finite number."""
    inside = np.zeros(buf.size + 1, dtype=np.int8)  # +1 where a range starts, -1 after it ends
    inside[starts] = 1
    inside[ends + 1] = -1
    compact = buf[np.cumsum(inside[:-1], dtype=np.int8).view(bool)].tobytes()  # ~1/4 of the file
    if compact.translate(None, _NUMBER_CHARS):
        return None  # letters or other characters: the line reader names the problem
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy warns (or raises) when it stops before the end
        try:
            values = np.fromstring(compact, dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    # every token yields at least one value unless parsing stopped, so the count proves one per token
    if values.size != per_row * starts.size or not np.all(np.isfinite(values)):
        return None
    return values


@dataclass(frozen=True)
class _Scan:
    """Where the lines and separators of a canonical file are (every array covers the whole file)."""

    buf: np.ndarray  # (size + 32,) uint8, padded: short gathers may run past the end
    starts: np.ndarray  # (L,) first byte of each line
    ends: np.ndarray  # (L,) one past the last byte of each line (CR excluded)
    space: np.ndarray  # (S,) every separator
    first_space: np.ndarray  # (L,) index in ``space`` of each line's first separator
    tokens: np.ndarray  # (L,) values per line


def _scan(data: bytes) -> _Scan | None:
    """Line boundaries and token counts, or None unless the file is canonical (LF or CRLF, single spaces,
    no blank lines, no leading or trailing spaces, no other control characters)."""
    data = data.rstrip(b" \r\n")
    if not data:
        return None
    size = len(data) + 1
    buf = np.frombuffer(data + b"\n" * 32, dtype=np.uint8)  # padded: short gathers may run past the end
    head = buf[:size]
    nl = np.flatnonzero(head == 10)  # (L,) end of each line
    cr = np.flatnonzero(head == 13) if b"\r" in data else nl[:0]
    if cr.size and not np.all(head[cr + 1] == 10):
        return None  # a lone CR
    if np.count_nonzero(head < 32) != nl.size + cr.size:
        return None  # tabs or other control characters
    starts = np.empty_like(nl)  # (L,) first byte of each line
    starts[0] = 0
    starts[1:] = nl[:-1] + 1
    ends = nl - (head[nl - 1] == 13) if cr.size else nl  # (L,) one past the last byte of each line
    if np.any(ends <= starts) or np.any(head[starts] == 32) or np.any(head[ends - 1] == 32):
        return None  # blank lines, leading or trailing spaces
    space = np.flatnonzero(head == 32)  # (S,) every separator
    if space.size > 1 and np.any(np.diff(space) == 1):
        return None  # runs of spaces
    first_space = np.searchsorted(space, starts)  # (L,) index in ``space`` of each line's first separator
    tokens = np.searchsorted(space, nl) - first_space + 1  # (L,) values per line (single spaces)
    return _Scan(buf, starts, ends, space, first_space, tokens)


def _frame_structure(scan: _Scan, num_joints: int) -> tuple[int, np.ndarray, np.ndarray] | None:
    """(frames, (F,) bodies per frame, (B,) body info lines) when the counts and the token count of every
    line agree with the grammar, else None."""
    tokens = scan.tokens
    lines = tokens.size
    # lines holding exactly one integer: the frame count, the body counts, the joint counts
    one = np.flatnonzero(tokens == 1)
    ones = _parse_uints(scan.buf, scan.starts[one], scan.ends[one] - scan.starts[one], 9)
    if ones is None:
        return None
    value = np.full(lines, -1, dtype=np.int64)
    value[one] = ones
    info = np.flatnonzero(tokens == _INFO_VALUES)  # (B,) body info lines
    if info.size and (info[-1] + 1 >= lines or np.any(value[info + 1] != num_joints)):
        return None  # a wrong joint count: the line reader reports it
    is_body_count = tokens == 1
    is_body_count[0] = False
    is_body_count[info + 1] = False
    count_lines = np.flatnonzero(is_body_count)  # (F,)
    num_frames = int(value[0])
    per_frame = value[count_lines]  # (F,) bodies in each frame
    stride = 2 + num_joints  # lines per body
    if count_lines.size != num_frames or int(per_frame.sum()) != info.size \
            or lines != 1 + num_frames + stride * info.size:
        return None
    # the token count of every line, rebuilt from the body counts, must be the file's
    first_body = np.cumsum(per_frame) - per_frame  # (F,) index of each frame's first body
    frame_line = 1 + np.arange(num_frames) + stride * first_body  # (F,) line of each body count
    info_line = np.repeat(frame_line, per_frame) + 1 + stride * (np.arange(info.size)
                                                                 - np.repeat(first_body, per_frame))
    expected = np.full(lines, _JOINT_VALUES, dtype=np.int64)
    expected[0] = 1
    expected[frame_line] = 1
    expected[info_line] = _INFO_VALUES
    expected[info_line + 1] = 1
    if not np.array_equal(expected, tokens):
        return None
    return num_frames, per_frame, info


def _parse_fast(data: bytes, num_joints: int) -> RawSkeleton | None:
    """Vectorized reader for canonical files; None means "let the line reader decide"."""
    scan = _scan(data)
    structure = None if scan is None else _frame_structure(scan, num_joints)
    if scan is None or structure is None:
        return None
    num_frames, per_frame, info = structure
    buf, starts, space, first_space = scan.buf, scan.starts, scan.space, scan.first_space
    # body IDs: the first value of each info line
    id_start = starts[info]
    body_ids = _parse_uints(buf, id_start, space[first_space[info]] - id_start, 18)
    if body_ids is None:
        return None
    # x, y, z: the first three values of each joint line (ending at its third separator)
    joint_lines = (info[:, None] + 2 + np.arange(num_joints)).reshape(-1)  # (B, V) -> (B*V,)
    xyz = np.zeros((0, 3))
    if joint_lines.size:
        vals = _parse_prefix_numbers(buf, starts[joint_lines], space[first_space[joint_lines] + 2], 3)
        if vals is None:
            return None
        xyz = vals.reshape(-1, 3)  # (B*V*3,) -> (B*V, 3)
    return RawSkeleton(num_frames, per_frame.astype(np.int64), body_ids.astype(np.int64),
                       xyz.reshape(-1, num_joints, 3).astype(np.float32))  # (B*V, 3) -> (B, V, 3)


# --------------------------------------------------------------------------------------------------
# names, benchmarks, action names
# --------------------------------------------------------------------------------------------------
_NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


@dataclass(frozen=True)
class NtuName:
    """``SsssCcccPpppRrrrAaaa``: setup, camera, performer (subject), replication, action (1-based)."""

    setup: int
    camera: int
    performer: int
    replication: int
    action: int

    @property
    def label(self) -> int:
        """0-based class index (action − 1)."""
        return self.action - 1

    def __str__(self) -> str:
        return (f"S{self.setup:03d}C{self.camera:03d}P{self.performer:03d}"
                f"R{self.replication:03d}A{self.action:03d}")


def sample_name(path_or_name: str | Path) -> str:
    """``.../S001C001P001R001A001.skeleton`` -> ``S001C001P001R001A001``."""
    name = Path(path_or_name).name
    return name[: -len(".skeleton")] if name.endswith(".skeleton") else name


def parse_ntu_name(name: str | Path) -> NtuName:
    """Parse an NTU sample name (a bare name, a file name or a path)."""
    stem = sample_name(name)
    m = _NAME_RE.fullmatch(stem)
    if m is None:
        raise CrossclrError(f"{name}: not an NTU sample name; expected SsssCcccPpppRrrrAaaa "
                            "(e.g. S001C002P003R002A013)")
    return NtuName(*(int(g) for g in m.groups()))


NTU60_XSUB_TRAIN = frozenset({1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38})
NTU120_XSUB_TRAIN = NTU60_XSUB_TRAIN | frozenset({
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89, 91, 92,
    93, 94, 95, 97, 98, 100, 103})
NTU60_XVIEW_TRAIN = frozenset({2, 3})


@dataclass(frozen=True)
class Benchmark:
    """An NTU evaluation protocol: which samples belong to it and which of them are training samples."""

    name: str
    num_class: int  # actions 1..num_class
    max_setup: int | None  # setups 1..max_setup (None: all)
    split_by: Literal["performer", "camera", "setup"]
    train: frozenset[int] | None  # train values of ``split_by``; None for setups = even setup numbers

    def split_of(self, n: NtuName) -> Literal["train", "val"] | None:
        if not 1 <= n.action <= self.num_class:
            return None
        if self.max_setup is not None and not 1 <= n.setup <= self.max_setup:
            return None
        key = getattr(n, self.split_by)
        is_train = key % 2 == 0 if self.train is None else key in self.train
        return "train" if is_train else "val"


BENCHMARKS: dict[str, Benchmark] = {
    "ntu60-xsub": Benchmark("ntu60-xsub", 60, 17, "performer", NTU60_XSUB_TRAIN),
    "ntu60-xview": Benchmark("ntu60-xview", 60, 17, "camera", NTU60_XVIEW_TRAIN),
    "ntu120-xsub": Benchmark("ntu120-xsub", 120, None, "performer", NTU120_XSUB_TRAIN),
    "ntu120-xset": Benchmark("ntu120-xset", 120, None, "setup", None),
}


def get_benchmark(benchmark: str) -> Benchmark:
    try:
        return BENCHMARKS[benchmark]
    except KeyError:
        raise CrossclrError(f"unknown benchmark {benchmark!r}; "
                            f"expected one of {sorted(BENCHMARKS)}") from None


def split_of(name: str | Path | NtuName, benchmark: str) -> Literal["train", "val"] | None:
    """'train' or 'val' for a sample of ``benchmark``; None when the sample is not part of it."""
    n = name if isinstance(name, NtuName) else parse_ntu_name(name)
    return get_benchmark(benchmark).split_of(n)


@lru_cache(maxsize=1)
def _action_names() -> tuple[str, ...]:
    text = resources.files("crossclr_infer").joinpath("data/ntu120_actions.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    assert len(names) == 120, f"ntu120_actions.txt holds {len(names)} names, expected 120"
    return names


NTU_ACTION_NAMES: tuple[str, ...] = _action_names()


def class_names(benchmark: str) -> list[str]:
    """The action names of a benchmark's classes, in label order."""
    return list(NTU_ACTION_NAMES[: get_benchmark(benchmark).num_class])


def read_name_list(path: str | Path) -> set[str]:
    """Sample names, one per line (blank lines and ``#`` comments ignored), e.g. an ignore list."""
    path = require_regular_file(path, "name list", missing_ok=True)  # a FIFO would block the read
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CrossclrError(f"{path}: cannot read the name list ({e})") from None
    names: set[str] = set()
    for i, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        stem = sample_name(line)
        if _NAME_RE.fullmatch(stem) is None:
            raise CrossclrError(f"{path}: line {i}: expected an NTU sample name like S001C002P003R002A013, "
                                f"got {line[:40]!r}")
        names.add(stem)
    return names
