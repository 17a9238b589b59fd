"""HDF5 skeleton caches (docs/design.md §2): the one format that training and evaluation read.

File layout::

    /                        attrs: format="crossclr-cache", format_version=1, layout (TOML text),
                                    layout_name, num_class, class_names (json list), benchmark, frames,
                                    num_person, num_channels, preprocess (json dict), splits (json list),
                                    crossclr_version
    /<split>/data            float32 (N, C, T, V, M), chunked one sample per chunk
    /<split>/label           int64 (N,)
    /<split>/name            utf-8 strings (N,)
    /<split>/length          int64 (N,)  valid frames of the raw sequence before resizing

``CacheWriter`` streams samples into resizable datasets (a small block buffer, never the whole data set
in memory), writes to a temporary file in the destination folder and renames it into place only when the
``with`` block ends cleanly; on any exception the temporary file is deleted.

``open_cache`` validates a file and returns a ``Cache``; ``Cache.split(name)`` gives a ``CacheSplit`` with
lazy per-sample reads (no h5py fancy indexing, which is much slower). The h5py handle is opened lazily per
process id, so a ``CacheSplit`` can be handed to torch DataLoader worker processes (forked or spawned).

A cache is a file from anyone, so opening one checks, before any sample is read (limits: docs/cli.md):

- it is a regular file (a FIFO or device is refused unread) and self-contained: every object is reached by
  hard links only (no soft, external or user-defined link), no dataset keeps its bytes in external files or
  is virtual (both would read other files of the machine), and only the standard filters are used
  (deflate, shuffle, fletcher32, lzf, scale-offset, n-bit); at most ``MAX_OBJECTS`` links;
- reads stay cheap: a chunk holds at most ``MAX_CHUNK_BYTES`` uncompressed (what one sample read may have to
  inflate) and no filtered chunk is stored in more bytes than its data (a compression bomb); a ``data`` chunk
  spans at most ``MAX_SAMPLES_PER_CHUNK`` samples and a sample at most ``MAX_CHUNKS_PER_SAMPLE`` chunks; a
  sample takes at most ``MAX_SAMPLE_BYTES`` and a split declares at most ``MAX_SAMPLES_PER_SPLIT`` samples
  (declared sizes are checked before labels are read);
- every attribute that may be printed (benchmark, layout, joint, class and split names, the writer's
  version) is a printable name (``errors.check_name``); attributes are read by name, scalar, at most
  ``MAX_ATTR_CHARS`` of text.

Samples are checked as they are read (``CacheSplit``): finite coordinates within
±``skeleton.MAX_ABS_COORDINATE``, else an error naming the cache, the split and the sample. Errors of h5py
(a damaged file) name the cache and the object.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import CrossclrError, check_name, printable
from .fileio import atomic_output, require_regular_file
from .layouts import Layout, layout_from_toml_text, layout_to_toml
from .skeleton import MAX_ABS_COORDINATE

log = logging.getLogger(__name__)

FORMAT_NAME = "crossclr-cache"
FORMAT_VERSION = 1
REQUIRED_ATTRS = ("format", "format_version", "layout", "num_class", "class_names", "benchmark", "frames",
                  "num_person", "num_channels", "preprocess", "splits")
SPLIT_DATASETS = ("data", "label", "name", "length")
_STR = h5py.string_dtype("utf-8")

# Limits of a cache read from a file (module docstring; docs/cli.md)
MAX_SAMPLES_PER_SPLIT = 10_000_000  # labels, names and lengths are read whole: 80 MB of labels at most
MAX_SAMPLE_BYTES = 16 * 2**20  # one sample (C, T, V, M) float32; the writer refuses larger ones
MAX_CHUNK_BYTES = 16 * 2**20  # one chunk, uncompressed: the most one sample read may inflate
MAX_SAMPLES_PER_CHUNK = 16  # samples one `data` chunk may span (the writer: 1)
MAX_CHUNKS_PER_SAMPLE = 1024  # chunks one sample may be split into
MAX_OBJECTS = 1000  # links (groups, datasets) in a cache file
MAX_ATTR_CHARS = 4 * 2**20  # text of one file attribute (layout TOML, class names JSON, ...)
ALLOWED_FILTERS = {h5py.h5z.FILTER_DEFLATE: "deflate", h5py.h5z.FILTER_SHUFFLE: "shuffle",
                   h5py.h5z.FILTER_FLETCHER32: "fletcher32", h5py.h5z.FILTER_LZF: "lzf",
                   h5py.h5z.FILTER_SCALEOFFSET: "scale-offset", h5py.h5z.FILTER_NBIT: "n-bit"}
# what h5py raises for a damaged file or a missing object (besides CrossclrError, a ValueError itself)
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


def check_not_input(out: str | Path, inputs: Sequence[str | Path], option: str = "--out") -> None:
    """Refuse an output path that is one of the input files (same file after resolving links, or the same
    inode): writing it would destroy the input."""
    out = Path(out)
    if not out.exists():
        return
    for inp in inputs:
        inp = Path(inp)
        try:
            same = inp.exists() and os.path.samefile(out, inp)
        except OSError:
            same = False
        if same:
            raise CrossclrError(f"{option} {out}: is the input file {inp}; writing it would destroy the "
                                "input, choose another output path")


def _split_order(splits: Sequence[str]) -> list[str]:
    """train, val first (in that order), then the others as given."""
    first = [s for s in ("train", "val") if s in splits]
    return first + [s for s in splits if s not in first]


class _SplitBuffer:
    """Datasets of one split plus a bounded block buffer of pending samples."""

    def __init__(self, group: h5py.Group, sample_shape: tuple[int, ...], block: int,
                 compression: str | None) -> None:
        self.sample_shape = sample_shape
        self.block = block
        self.n = 0  # samples flushed to the file
        self.data = group.create_dataset("data", shape=(0, *sample_shape), maxshape=(None, *sample_shape),
                                         dtype=np.float32, chunks=(1, *sample_shape), compression=compression)
        vec = {"shape": (0,), "maxshape": (None,), "chunks": (4096,)}
        self.label = group.create_dataset("label", dtype=np.int64, **vec)
        self.name = group.create_dataset("name", dtype=_STR, **vec)
        self.length = group.create_dataset("length", dtype=np.int64, **vec)
        self.buf = np.empty((block, *sample_shape), np.float32)  # (B, C, T, V, M)
        self.labels: list[int] = []
        self.names: list[str] = []
        self.lengths: list[int] = []

    def add(self, data: np.ndarray, label: int, name: str, length: int) -> None:
        k = len(self.labels)
        self.buf[k] = data
        self.labels.append(label)
        self.names.append(name)
        self.lengths.append(length)
        if k + 1 == self.block:
            self.flush()

    def flush(self) -> None:
        k = len(self.labels)
        if k == 0:
            return
        lo, hi = self.n, self.n + k
        for ds in (self.data, self.label, self.name, self.length):
            ds.resize(hi, axis=0)
        self.data[lo:hi] = self.buf[:k]
        self.label[lo:hi] = np.asarray(self.labels, np.int64)
        self.name[lo:hi] = np.asarray(self.names, dtype=object)
        self.length[lo:hi] = np.asarray(self.lengths, np.int64)
        self.n = hi
        self.labels, self.names, self.lengths = [], [], []

    @property
    def count(self) -> int:
        return self.n + len(self.labels)


class CacheWriter:
    """Stream samples into a new cache file at ``path``.

    >>> with CacheWriter(out, layout=layout, class_names=names, benchmark="ntu60-xsub", frames=50,
    ...                  num_person=2, preprocess={"mode": "official", "frames": 50}) as w:
    ...     w.add("train", x, label, "S001C001P001R001A001", length)   # x: (C, T, V, M)

    Memory is bounded by ``block`` samples per split. The file appears at ``path`` only after a clean exit.
    """

    def __init__(self, path: str | Path, *, layout: Layout, class_names: Sequence[str], benchmark: str,
                 frames: int, num_person: int, preprocess: dict[str, Any], num_channels: int = 3,
                 block: int = 64, compression: str | None = None) -> None:
        self.path = Path(path)
        if not class_names:
            raise CrossclrError(f"{self.path}: a cache needs at least one class name")
        if frames < 1 or num_person < 1 or num_channels < 1:
            raise CrossclrError(f"{self.path}: frames, num_person and num_channels must be >= 1, got "
                                f"{frames}, {num_person}, {num_channels}")
        try:
            preprocess_json = json.dumps(preprocess, sort_keys=True)
        except TypeError as e:
            raise CrossclrError(f"{self.path}: preprocess parameters must be JSON-serializable "
                                f"({e})") from None
        self.layout = layout
        self.class_names = [str(c) for c in class_names]
        self.benchmark = str(benchmark)
        check_name(layout.name, str(self.path), "layout name")
        for c in self.class_names:
            check_name(c, str(self.path), "class name")
        check_name(self.benchmark, str(self.path), "benchmark name")
        self.frames = int(frames)
        self.num_person = int(num_person)
        self.num_channels = int(num_channels)
        self.preprocess_json = preprocess_json
        self.sample_shape = (self.num_channels, self.frames, layout.num_joints, self.num_person)  # (C,T,V,M)
        sample_bytes = math.prod(self.sample_shape) * 4
        if sample_bytes > MAX_SAMPLE_BYTES:
            raise CrossclrError(f"{self.path}: samples (C, T, V, M) = {self.sample_shape} would take "
                                f"{sample_bytes / 2**20:.1f} MiB each, above the limit of "
                                f"{MAX_SAMPLE_BYTES / 2**20:g} MiB (MAX_SAMPLE_BYTES); use fewer frames")
        self.block = max(1, int(block))
        self.compression = compression
        self._file: h5py.File | None = None
        self._tmp: Path | None = None
        self._output: AbstractContextManager[Path] | None = None
        self._splits: dict[str, _SplitBuffer] = {}

    # -- context manager -------------------------------------------------------------------------------
    def __enter__(self) -> CacheWriter:
        folder = self.path.parent
        if not folder.is_dir():
            raise CrossclrError(f"{self.path}: output folder {folder} does not exist")
        self._output = atomic_output(self.path, mkdir=False)
        self._tmp = self._output.__enter__()
        try:
            # no chunk cache: every chunk goes to the file when written, so a failed write (full disk, ulimit
            # -f) fails there and leaves no dirty chunk behind; with one, HDF5 2.0 fails to close the dataset
            # and closing it again when h5py frees it crashed the process (exit 139)
            self._file = h5py.File(self._tmp, "w", rdcc_nbytes=0)
        except OSError as e:
            err = CrossclrError(f"{self.path}: cannot create the cache file ({e})")
            self._abort(err)
            raise err from None
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            try:
                self._finish()
            except BaseException as e:
                self._abort(e)
                raise
        else:
            self._abort(exc)

    @property
    def counts(self) -> dict[str, int]:
        """Samples added so far, per split."""
        return {s: b.count for s, b in self._splits.items()}

    def add(self, split: str, data: np.ndarray, label: int, name: str, length: int) -> None:
        """Append one sample ``data`` (C, T, V, M) with its label, name and valid length to ``split``."""
        if self._file is None:
            raise RuntimeError("CacheWriter.add outside its `with` block")
        if not split or "/" in split or split == ".":
            raise CrossclrError(f"{self.path}: invalid split name {split!r}")
        check_name(split, str(self.path), "split name")
        check_name(str(name), str(self.path), "sample name")
        arr = np.asarray(data)
        if arr.shape != self.sample_shape:
            raise CrossclrError(f"{self.path}: sample {name!r} has shape {arr.shape}, expected "
                                f"(C, T, V, M) = {self.sample_shape}")
        if not np.isfinite(arr).all():
            raise CrossclrError(f"{self.path}: sample {name!r} contains NaN or infinite values")
        label = int(label)
        if not 0 <= label < len(self.class_names):
            raise CrossclrError(f"{self.path}: sample {name!r} has label {label}, expected 0.."
                                f"{len(self.class_names) - 1} ({len(self.class_names)} classes)")
        buf = self._splits.get(split)
        if buf is None:
            group = self._file.create_group(split)
            buf = self._splits[split] = _SplitBuffer(group, self.sample_shape, self.block, self.compression)
        buf.add(arr, label, str(name), int(length))

    # -- internals -------------------------------------------------------------------------------------
    def _finish(self) -> None:
        assert self._file is not None and self._output is not None
        if not self._splits:
            raise CrossclrError(f"{self.path}: no samples to write")
        for buf in self._splits.values():
            buf.flush()
        attrs = self._file.attrs
        attrs["format"] = FORMAT_NAME
        attrs["format_version"] = FORMAT_VERSION
        attrs["layout"] = layout_to_toml(self.layout)
        attrs["layout_name"] = self.layout.name
        attrs["num_class"] = len(self.class_names)
        attrs["class_names"] = json.dumps(self.class_names)
        attrs["benchmark"] = self.benchmark
        attrs["frames"] = self.frames
        attrs["num_person"] = self.num_person
        attrs["num_channels"] = self.num_channels
        attrs["preprocess"] = self.preprocess_json
        attrs["splits"] = json.dumps(_split_order(list(self._splits)))
        attrs["crossclr_version"] = __version__
        self._file.close()
        self._file = None
        output, self._output, self._tmp = self._output, None, None
        output.__exit__(None, None, None)  # fsync, usual permissions, rename into place
        log.info("wrote %s: %s", self.path, ", ".join(f"{s} {n}" for s, n in self.counts.items()))

    def _abort(self, exc: BaseException) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except Exception:  # noqa: BLE001 - the original exception matters, not this one
                pass
            self._file = None
        if self._output is not None:
            output, self._output, self._tmp = self._output, None, None
            output.__exit__(type(exc), exc, exc.__traceback__)  # deletes the temp file


# ---------------------------------------------------------------------------------------------------------
# Reading


def _reason(e: BaseException) -> str:
    """The first line of an h5py error, escaped (it may quote names from the file)."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return printable(text.strip("'\""), 200)


class _Handle:
    """An h5py file opened lazily, once per process id (safe across fork/spawn of DataLoader workers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: h5py.File | None = None
        self._pid = -1

    def get(self) -> h5py.File:
        pid = os.getpid()
        if self._file is None or self._pid != pid:
            # after a fork the parent's handle must not be used (nor closed) here: just drop it
            self._file = _open_h5(self.path)
            self._pid = pid
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_file": None, "_pid": -1}


def _open_h5(path: Path) -> h5py.File:
    """The file opened read-only once it proved a regular, self-contained HDF5 file."""
    try:
        os.stat(path)
    except FileNotFoundError:
        raise CrossclrError(f"{printable(path, 300)}: no such cache file") from None
    except OSError as e:  # a name too long, a loop of symbolic links, a folder without permission
        raise CrossclrError(f"{printable(path, 300)}: cannot read the cache file "
                            f"({e.strerror or e})") from None
    if path.is_dir():
        raise CrossclrError(f"{path}: is a folder, expected an HDF5 cache file written by `crossclr prepare`")
    require_regular_file(path, "cache file")  # a FIFO would block the open
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CrossclrError(f"{path}: not a readable HDF5 file ({_reason(e)}); expected a cache written by "
                            "`crossclr prepare` or `crossclr synth`") from None
    try:
        check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_self_contained(f: h5py.File, path: Path) -> None:
    """Refuse a file with soft, external or user-defined links, datasets stored in external files or
    virtual, filters other than ALLOWED_FILTERS, chunks over MAX_CHUNK_BYTES or more than MAX_OBJECTS links.
    Links are listed without following any (HDF5 visits each hard-linked group once); nothing is read."""
    found: list[tuple[bytes, int]] = []

    def visit(name: bytes, info: Any) -> int | None:
        found.append((name, info.type))
        return 1 if len(found) > MAX_OBJECTS else None  # non-None stops the walk

    try:
        f.id.links.visit(visit, info=True)
    except _H5_ERRORS as e:
        raise CrossclrError(f"{path}: damaged HDF5 file, its objects cannot be listed "
                            f"({_reason(e)})") from None
    if len(found) > MAX_OBJECTS:
        raise CrossclrError(f"{path}: more than {MAX_OBJECTS} objects (MAX_OBJECTS); a crossclr cache holds "
                            "a few groups of four datasets")
    for raw, kind in found:
        where = f"{path}: object /{printable(raw.decode('utf-8', 'replace'), 120)}"
        if kind == h5py.h5l.TYPE_SOFT:
            raise CrossclrError(f"{where} is a soft link; a cache must be self-contained (hard links only)")
        if kind == h5py.h5l.TYPE_EXTERNAL:
            raise CrossclrError(f"{where} is an external link to another file; a cache must be "
                                "self-contained")
        if kind != h5py.h5l.TYPE_HARD:
            raise CrossclrError(f"{where} is a user-defined link (type {kind}); a cache must be "
                                "self-contained (hard links only)")
        try:
            obj = h5py.h5o.open(f.id, raw)
            if isinstance(obj, h5py.h5d.DatasetID):
                _check_storage(obj, where)
        except CrossclrError:
            raise
        except _H5_ERRORS as e:
            raise CrossclrError(f"{where} cannot be opened, damaged file ({_reason(e)})") from None


def _check_storage(ds: h5py.h5d.DatasetID, where: str) -> None:
    plist = ds.get_create_plist()
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        raise CrossclrError(f"{where} is a virtual dataset (its data would come from other files); a cache "
                            "must be self-contained")
    if plist.get_external_count() > 0:
        target = printable(plist.get_external(0)[0].decode("utf-8", "replace"), 120)
        raise CrossclrError(f"{where} keeps its data in external files (first: {target}); a cache must be "
                            "self-contained")
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise CrossclrError(f"{where} uses HDF5 filter {code}; expected only "
                                f"{', '.join(ALLOWED_FILTERS.values())}")
    if plist.get_layout() == h5py.h5d.CHUNKED:
        chunk = plist.get_chunk()
        size = math.prod(chunk) * ds.get_type().get_size()
        if size > MAX_CHUNK_BYTES:
            raise CrossclrError(f"{where} has chunks {tuple(chunk)} of {size / 2**20:.1f} MiB, above the "
                                f"limit of {MAX_CHUNK_BYTES / 2**20:g} MiB (MAX_CHUNK_BYTES): each read "
                                "would inflate a whole chunk; re-create the cache with `crossclr prepare`")
        if plist.get_nfilters():
            _check_stored_chunks(ds, where, size)


def _check_stored_chunks(ds: h5py.h5d.DatasetID, where: str, size: int) -> None:
    """No filtered chunk is stored in more bytes than its data could take compressed (``size`` plus the
    worst expansion of the filters, a sixteenth): HDF5 inflates a stored chunk whole, whatever the chunk
    size says, so a small chunk holding a deflate bomb would take gigabytes. One pass over the chunk index
    (about 0.1 s for 40,000 chunks); skipped where the HDF5 library cannot iterate chunks."""
    limit = size + size // 16 + 256
    largest = [0]

    def visit(info: Any) -> None:
        largest[0] = max(largest[0], info.size)

    try:
        ds.chunk_iter(visit)
    except (AttributeError, NotImplementedError, RuntimeError):  # pragma: no cover - HDF5 < 1.14
        log.debug("%s: chunk sizes not checked (this HDF5 cannot iterate chunks)", where)
        return
    if largest[0] > limit:
        raise CrossclrError(f"{where} stores a chunk in {largest[0]} bytes for {size} bytes of data: reading "
                            "it would inflate far more than the chunk holds (a compression bomb); re-create "
                            "the cache with `crossclr prepare`")


def _bad_samples(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` (B, ...) holding NaN, inf or a coordinate beyond ±MAX_ABS_COORDINATE (two reductions,
    no temporary array; NaN fails both comparisons)."""
    flat = x.reshape(len(x), -1)  # (B, C·T·V·M)
    ok = (flat.max(axis=1) <= MAX_ABS_COORDINATE) & (flat.min(axis=1) >= -MAX_ABS_COORDINATE)
    return np.flatnonzero(~ok)


class CacheSplit:
    """One split of a cache: ``len``, ``[i] -> (data (C, T, V, M) float32, label)``, lazy per-sample reads.
    Every sample read is checked: finite coordinates within ±MAX_ABS_COORDINATE, else a CrossclrError naming
    the cache, the split and the sample."""

    def __init__(self, handle: _Handle, name: str, labels: np.ndarray, sample_shape: tuple[int, ...]) -> None:
        self._handle = handle
        self.name = name
        self.labels = labels  # np.int64 (N,)
        self.sample_shape = sample_shape  # (C, T, V, M)
        self._names: list[str] | None = None
        self._lengths: np.ndarray | None = None
        self._data: tuple[int, h5py.Dataset] | None = None  # (pid, dataset) cached for per-sample reads

    @property
    def path(self) -> Path:
        return self._handle.path

    def _ds(self, key: str) -> h5py.Dataset:
        try:
            return self._handle.get()[self.name][key]
        except CrossclrError:
            raise
        except _H5_ERRORS as e:
            raise CrossclrError(f"{self.path}: dataset /{self.name}/{key} cannot be opened, damaged cache "
                                f"({_reason(e)})") from None

    def _data_ds(self) -> h5py.Dataset:
        pid = os.getpid()
        if self._data is None or self._data[0] != pid or not self._data[1].id.valid:
            self._data = (pid, self._ds("data"))
        return self._data[1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_data"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, i: int) -> int:
        n = len(self.labels)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample index {i} out of range for split {self.name!r} of {n} samples")
        return i

    def _read_error(self, e: BaseException, what: str) -> CrossclrError:
        return CrossclrError(f"{self.path}: cannot read {what} of split {self.name!r}, damaged cache "
                             f"({_reason(e)})")

    def _checked(self, x: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """``x`` (B, C, T, V, M) of the samples ``indices`` once every one passed ``_bad_samples``."""
        bad = _bad_samples(x)
        if len(bad):
            i = int(indices[int(bad[0])])
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            peak = float(np.nanmax(np.abs(x[bad[0]]))) if np.isfinite(x[bad[0]]).any() else math.nan
            what = ("NaN or infinite coordinates" if not np.isfinite(x[bad[0]]).all() else
                    f"a coordinate of magnitude {peak:.3g}")
            raise CrossclrError(f"{self.path}: sample {self._sample_name(i)} (split {self.name!r}, index {i})"
                                f"{more} holds {what}; expected finite coordinates within "
                                f"±{MAX_ABS_COORDINATE:g} (prepare the cache again from the source data)")
        return x

    def _sample_name(self, i: int) -> str:
        try:
            return repr(printable(self.names[i], 80))
        except CrossclrError:
            return "(unnamed)"

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = self._index(i)
        out = np.empty(self.sample_shape, np.float32)
        try:
            self._data_ds().read_direct(out, source_sel=np.s_[i])
        except CrossclrError:
            raise
        except _H5_ERRORS as e:
            raise self._read_error(e, f"sample {i}") from None
        self._checked(out[None], [i])
        return out, int(self.labels[i])

    @property
    def names(self) -> list[str]:
        if self._names is None:
            try:
                raw = self._ds("name")[()]
            except CrossclrError:
                raise
            except _H5_ERRORS as e:
                raise self._read_error(e, "the sample names") from None
            self._names = [s.decode("utf-8", "replace") if isinstance(s, bytes) else str(s) for s in raw]
        return self._names

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            try:
                self._lengths = np.asarray(self._ds("length")[()], np.int64)
            except CrossclrError:
                raise
            except _H5_ERRORS as e:
                raise self._read_error(e, "the sample lengths") from None
        return self._lengths

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Samples at ``indices`` as (B, C, T, V, M) float32, one chunk read per sample."""
        idx = [self._index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        out = np.empty((len(idx), *self.sample_shape), np.float32)
        ds = self._data_ds()
        for b, i in enumerate(idx):
            try:
                ds.read_direct(out, source_sel=np.s_[i], dest_sel=np.s_[b])
            except _H5_ERRORS as e:
                raise self._read_error(e, f"sample {i}") from None
        return self._checked(out, idx)

    def read_all(self) -> np.ndarray:
        """The whole split (N, C, T, V, M) float32 (only for small caches)."""
        try:
            out = np.asarray(self._ds("data")[()], np.float32)
        except CrossclrError:
            raise
        except _H5_ERRORS as e:
            raise self._read_error(e, "the samples") from None
        return self._checked(out, range(len(out)))

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Contiguous batches (data (B, C, T, V, M), labels (B,)) in file order, bounded memory."""
        ds = self._ds("data")
        for lo in range(0, len(self), batch_size):
            hi = min(lo + batch_size, len(self))
            try:
                x = np.asarray(ds[lo:hi], np.float32)
            except _H5_ERRORS as e:
                raise self._read_error(e, f"samples {lo}..{hi - 1}") from None
            yield self._checked(x, range(lo, hi)), self.labels[lo:hi]

    def class_counts(self, num_class: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_class)

    def __repr__(self) -> str:
        return f"CacheSplit({self.name!r}, {len(self)} samples)"


class Cache:
    """A validated cache file (use ``open_cache``)."""

    def __init__(self, path: Path, attrs: dict[str, Any], layout: Layout,
                 splits: dict[str, np.ndarray]) -> None:
        self.path = path
        self.layout = layout
        self.format_version = int(attrs["format_version"])
        self.class_names: list[str] = attrs["class_names"]
        self.num_class = int(attrs["num_class"])
        self.benchmark = str(attrs["benchmark"])
        self.frames = int(attrs["frames"])
        self.num_person = int(attrs["num_person"])
        self.num_channels = int(attrs["num_channels"])
        self.preprocess: dict[str, Any] = attrs["preprocess"]
        self.crossclr_version = str(attrs.get("crossclr_version", ""))
        self.splits: list[str] = list(splits)
        self._labels = splits
        self._handle = _Handle(path)

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        """(C, T, V, M)."""
        return (self.num_channels, self.frames, self.layout.num_joints, self.num_person)

    def split(self, name: str) -> CacheSplit:
        if name not in self._labels:
            raise CrossclrError(f"{self.path}: no split {name!r}; available: {', '.join(self.splits)}")
        return CacheSplit(self._handle, name, self._labels[name], self.sample_shape)

    def identity(self, split: str) -> dict[str, Any]:
        """What tells this cache split from another, cheaply (no sample data is read): the file size, the
        split name, its sample count and the SHA-256 of the benchmark, the preprocessing and the split's
        sample names and labels. Evaluation reports carry it so that ``merge-reports`` refuses shards of
        different caches."""
        sp = self.split(split)
        h = hashlib.sha256(json.dumps([self.benchmark, self.preprocess], sort_keys=True).encode() + b"\n")
        for name, label in zip(sp.names, sp.labels.tolist(), strict=True):
            h.update(f"{name}\t{label}\n".encode("utf-8", "surrogatepass"))
        return {"file_size": self.path.stat().st_size, "split": split, "num_samples": len(sp),
                "samples_sha256": h.hexdigest()}

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(v)}" for s, v in self._labels.items())
        return f"Cache({str(self.path)!r}, layout={self.layout.name!r}, classes={self.num_class}, {sizes})"


def _attr_str(v: Any) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _read_attr(f: h5py.File, path: Path, key: str) -> Any:
    """Root attribute ``key`` (None when absent): a scalar, at most MAX_ATTR_CHARS of text."""
    if key not in f.attrs:
        return None
    try:
        aid = h5py.h5a.open(f.id, key.encode())
        if aid.shape not in ((), (1,)):
            raise CrossclrError(f"{path}: attribute {key!r} has shape {aid.shape}, expected a single value")
        value = f.attrs[key]
    except CrossclrError:
        raise
    except _H5_ERRORS as e:
        raise CrossclrError(f"{path}: attribute {key!r} cannot be read, damaged cache "
                            f"({_reason(e)})") from None
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, (bytes, str)) and len(value) > MAX_ATTR_CHARS:
        raise CrossclrError(f"{path}: attribute {key!r} holds {len(value)} characters, above the limit of "
                            f"{MAX_ATTR_CHARS} (MAX_ATTR_CHARS)")
    return value


def _read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    raw = {k: v for k in (*REQUIRED_ATTRS, "crossclr_version") if (v := _read_attr(f, path, k)) is not None}
    fmt = _attr_str(raw["format"]) if "format" in raw else None
    if fmt != FORMAT_NAME:
        what = "no 'format' attribute" if fmt is None else f"format {printable(fmt, 60)!r}"
        raise CrossclrError(f"{path}: not a crossclr cache ({what}); expected an HDF5 file written by "
                            f"`crossclr prepare` with format {FORMAT_NAME!r}")
    missing = [k for k in REQUIRED_ATTRS if k not in raw]
    if missing:
        raise CrossclrError(f"{path}: damaged crossclr cache, missing attributes {missing}")
    try:
        version = int(raw["format_version"])
    except (TypeError, ValueError, OverflowError):
        raise CrossclrError(f"{path}: format_version {printable(raw['format_version'], 60)!r} is not an "
                            "integer") from None
    if version != FORMAT_VERSION:
        raise CrossclrError(f"{path}: cache format version {version}, this crossclr reads version "
                            f"{FORMAT_VERSION}; re-create it with `crossclr prepare`")
    out: dict[str, Any] = {"format_version": version}
    for key in ("num_class", "frames", "num_person", "num_channels"):
        try:
            out[key] = int(raw[key])
        except (TypeError, ValueError, OverflowError):
            raise CrossclrError(f"{path}: attribute {key!r} = {printable(raw[key], 60)!r} is not an "
                                "integer") from None
        if out[key] < 1:
            raise CrossclrError(f"{path}: attribute {key!r} = {out[key]}, expected >= 1")
    for key in ("class_names", "preprocess", "splits"):
        try:
            out[key] = json.loads(_attr_str(raw[key]))
        except (ValueError, RecursionError):  # JSONDecodeError, integers of over 4,300 digits, deep nesting
            raise CrossclrError(f"{path}: attribute {key!r} is not valid JSON (or nested too "
                                "deeply)") from None
    if not (isinstance(out["class_names"], list) and all(isinstance(c, str) for c in out["class_names"])):
        raise CrossclrError(f"{path}: attribute 'class_names' must be a JSON list of strings")
    for name in out["class_names"]:
        check_name(name, f"{path}: attribute 'class_names'", "class name")
    if len(out["class_names"]) != out["num_class"]:
        raise CrossclrError(f"{path}: {len(out['class_names'])} class names for num_class {out['num_class']}")
    if not isinstance(out["preprocess"], dict):
        raise CrossclrError(f"{path}: attribute 'preprocess' must be a JSON object")
    if not (isinstance(out["splits"], list) and all(isinstance(s, str) for s in out["splits"])):
        raise CrossclrError(f"{path}: attribute 'splits' must be a JSON list of split names")
    for name in out["splits"]:
        check_name(name, f"{path}: attribute 'splits'", "split name")
    out["benchmark"] = check_name(_attr_str(raw["benchmark"]), f"{path}: attribute 'benchmark'",
                                  "benchmark name")
    out["layout"] = _attr_str(raw["layout"])
    if "crossclr_version" in raw:
        out["crossclr_version"] = check_name(_attr_str(raw["crossclr_version"]),
                                             f"{path}: attribute 'crossclr_version'", "version")
    return out


def _check_split(f: h5py.File, path: Path, split: str, shape: tuple[int, ...], num_class: int) -> np.ndarray:
    """The split's datasets fit the attributes and the limits (declared sizes, chunks); returns its labels,
    the only data read here."""
    if split not in f or not isinstance(f[split], h5py.Group):
        raise CrossclrError(f"{path}: damaged cache, split {split!r} is listed but has no group")
    g = f[split]
    missing = [k for k in SPLIT_DATASETS if k not in g or not isinstance(g[k], h5py.Dataset)]
    if missing:
        raise CrossclrError(f"{path}: damaged cache, split {split!r} lacks datasets {missing}")
    data = g["data"]
    if data.ndim != 5 or tuple(data.shape[1:]) != shape:
        raise CrossclrError(f"{path}: split {split!r} data has shape {data.shape}, expected (N, C, T, V, M) "
                            f"with (C, T, V, M) = {shape} from the file attributes")
    if data.dtype != np.float32:
        raise CrossclrError(f"{path}: split {split!r} data has dtype {data.dtype}, expected float32")
    n = data.shape[0]
    if n > MAX_SAMPLES_PER_SPLIT:
        raise CrossclrError(f"{path}: split {split!r} declares {n} samples, more than the limit of "
                            f"{MAX_SAMPLES_PER_SPLIT} (MAX_SAMPLES_PER_SPLIT)")
    _check_data_chunks(data, path, split, shape)
    for k in ("label", "name", "length"):
        if g[k].shape != (n,):
            raise CrossclrError(f"{path}: split {split!r} {k} has shape {g[k].shape}, expected ({n},) "
                                "like its data")
    if not np.issubdtype(g["label"].dtype, np.integer):
        raise CrossclrError(f"{path}: split {split!r} labels have dtype {g['label'].dtype}, expected "
                            "integers")
    if not np.issubdtype(g["length"].dtype, np.integer):
        raise CrossclrError(f"{path}: split {split!r} lengths have dtype {g['length'].dtype}, expected "
                            "integers")
    if h5py.check_string_dtype(g["name"].dtype) is None:
        raise CrossclrError(f"{path}: split {split!r} names have dtype {g['name'].dtype}, expected strings")
    labels = np.asarray(g["label"][()]).astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= num_class):
        raise CrossclrError(f"{path}: split {split!r} has labels in {labels.min()}..{labels.max()}, expected "
                            f"0..{num_class - 1}")
    return labels


def _check_data_chunks(data: h5py.Dataset, path: Path, split: str, shape: tuple[int, ...]) -> None:
    """A sample read touches few, bounded chunks (chunk bytes are checked by ``check_self_contained``)."""
    sample_bytes = math.prod(shape) * 4
    if sample_bytes > MAX_SAMPLE_BYTES:
        raise CrossclrError(f"{path}: split {split!r} samples (C, T, V, M) = {shape} take "
                            f"{sample_bytes / 2**20:.1f} MiB each, above the limit of "
                            f"{MAX_SAMPLE_BYTES / 2**20:g} MiB (MAX_SAMPLE_BYTES)")
    chunks = data.chunks
    if chunks is None:  # contiguous or compact: a sample read reads that sample only
        return
    if chunks[0] > MAX_SAMPLES_PER_CHUNK:
        raise CrossclrError(f"{path}: dataset /{split}/data has chunks {chunks} spanning {chunks[0]} "
                            f"samples, more than {MAX_SAMPLES_PER_CHUNK} (MAX_SAMPLES_PER_CHUNK): each "
                            "sample read would inflate them all; re-create the cache with `crossclr prepare`")
    per_sample = math.prod(-(-s // c) for s, c in zip(shape, chunks[1:], strict=True))
    if per_sample > MAX_CHUNKS_PER_SAMPLE:
        raise CrossclrError(f"{path}: dataset /{split}/data has chunks {chunks} cutting each sample into "
                            f"{per_sample} chunks, more than {MAX_CHUNKS_PER_SAMPLE} "
                            "(MAX_CHUNKS_PER_SAMPLE); re-create the cache with `crossclr prepare`")


def open_cache(path: str | Path) -> Cache:
    """Open and validate a cache file; raises ``CrossclrError`` naming the file and the problem."""
    path = Path(path)
    with _open_h5(path) as f:
        try:
            return _validate(f, path)
        except CrossclrError:
            raise
        except RecursionError:
            raise CrossclrError(f"{path}: damaged cache, an attribute is nested too deeply") from None
        except _H5_ERRORS as e:
            raise CrossclrError(f"{path}: damaged cache, cannot read it ({_reason(e)})") from None


def _validate(f: h5py.File, path: Path) -> Cache:
    attrs = _read_attrs(f, path)
    try:
        layout = layout_from_toml_text(attrs["layout"], f"{path} (layout attribute)")
    except ValueError as e:
        raise CrossclrError(str(e)) from None
    check_name(layout.name, f"{path}: attribute 'layout'", "layout name")
    shape = (attrs["num_channels"], attrs["frames"], layout.num_joints, attrs["num_person"])
    groups = sorted(k for k in f if isinstance(f[k], h5py.Group))
    if sorted(attrs["splits"]) != groups:
        raise CrossclrError(f"{path}: damaged cache, attribute splits {attrs['splits']} but groups "
                            f"{[printable(g, 60) for g in groups]}")
    splits = {s: _check_split(f, path, s, shape, attrs["num_class"]) for s in attrs["splits"]}
    return Cache(path, attrs, layout, splits)
