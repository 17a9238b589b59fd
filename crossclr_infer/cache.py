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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

from . import __version__
from .errors import CrossclrError
from .fileio import atomic_output
from .layouts import Layout, layout_from_toml_text, layout_to_toml
from .views import check_name

log = logging.getLogger(__name__)

FORMAT_NAME = "crossclr-cache"
FORMAT_VERSION = 1
REQUIRED_ATTRS = ("format", "format_version", "layout", "num_class", "class_names", "benchmark", "frames",
                  "num_person", "num_channels", "preprocess", "splits")
SPLIT_DATASETS = ("data", "label", "name", "length")
_STR = h5py.string_dtype("utf-8")


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
        self.frames = int(frames)
        self.num_person = int(num_person)
        self.num_channels = int(num_channels)
        self.preprocess_json = preprocess_json
        self.sample_shape = (self.num_channels, self.frames, layout.num_joints, self.num_person)  # (C,T,V,M)
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
            self._file = h5py.File(self._tmp, "w")
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
        if not split or "/" in split:
            raise CrossclrError(f"{self.path}: invalid split name {split!r}")
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
    if not path.exists():
        raise CrossclrError(f"{path}: no such cache file")
    if path.is_dir():
        raise CrossclrError(f"{path}: is a folder, expected an HDF5 cache file written by `crossclr prepare`")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CrossclrError(f"{path}: not a readable HDF5 file ({reason}); expected a cache written by "
                            "`crossclr prepare` or `crossclr synth`") from None


class CacheSplit:
    """One split of a cache: ``len``, ``[i] -> (data (C, T, V, M) float32, label)``, lazy per-sample reads."""

    def __init__(self, handle: _Handle, name: str, labels: np.ndarray, sample_shape: tuple[int, ...]) -> None:
        self._handle = handle
        self.name = name
        self.labels = labels  # np.int64 (N,)
        self.sample_shape = sample_shape  # (C, T, V, M)
        self._names: list[str] | None = None
        self._lengths: np.ndarray | None = None
        self._data: tuple[int, h5py.Dataset] | None = None  # (pid, dataset) cached for per-sample reads

    def _ds(self, key: str) -> h5py.Dataset:
        return self._handle.get()[self.name][key]

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

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        i = self._index(i)
        out = np.empty(self.sample_shape, np.float32)
        self._data_ds().read_direct(out, source_sel=np.s_[i])
        return out, int(self.labels[i])

    @property
    def names(self) -> list[str]:
        if self._names is None:
            raw = self._ds("name")[()]
            self._names = [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in raw]
        return self._names

    @property
    def lengths(self) -> np.ndarray:
        if self._lengths is None:
            self._lengths = np.asarray(self._ds("length")[()], np.int64)
        return self._lengths

    def read(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Samples at ``indices`` as (B, C, T, V, M) float32, one chunk read per sample."""
        idx = [self._index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        out = np.empty((len(idx), *self.sample_shape), np.float32)
        ds = self._data_ds()
        for b, i in enumerate(idx):
            ds.read_direct(out, source_sel=np.s_[i], dest_sel=np.s_[b])
        return out

    def read_all(self) -> np.ndarray:
        """The whole split (N, C, T, V, M) float32 (only for small caches)."""
        return np.asarray(self._ds("data")[()], np.float32)

    def iter_batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Contiguous batches (data (B, C, T, V, M), labels (B,)) in file order, bounded memory."""
        ds = self._ds("data")
        for lo in range(0, len(self), batch_size):
            hi = min(lo + batch_size, len(self))
            yield np.asarray(ds[lo:hi], np.float32), self.labels[lo:hi]

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
            h.update(f"{name}\t{label}\n".encode())
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
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def _read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    raw = dict(f.attrs)
    fmt = _attr_str(raw["format"]) if "format" in raw else None
    if fmt != FORMAT_NAME:
        what = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
        raise CrossclrError(f"{path}: not a crossclr cache ({what}); expected an HDF5 file written by "
                            f"`crossclr prepare` with format {FORMAT_NAME!r}")
    missing = [k for k in REQUIRED_ATTRS if k not in raw]
    if missing:
        raise CrossclrError(f"{path}: damaged crossclr cache, missing attributes {missing}")
    try:
        version = int(raw["format_version"])
    except (TypeError, ValueError):
        raise CrossclrError(f"{path}: format_version {raw['format_version']!r} is not an integer") from None
    if version != FORMAT_VERSION:
        raise CrossclrError(f"{path}: cache format version {version}, this crossclr reads version "
                            f"{FORMAT_VERSION}; re-create it with `crossclr prepare`")
    out: dict[str, Any] = {"format_version": version}
    for key in ("num_class", "frames", "num_person", "num_channels"):
        try:
            out[key] = int(raw[key])
        except (TypeError, ValueError):
            raise CrossclrError(f"{path}: attribute {key!r} = {raw[key]!r} is not an integer") from None
        if out[key] < 1:
            raise CrossclrError(f"{path}: attribute {key!r} = {out[key]}, expected >= 1")
    for key in ("class_names", "preprocess", "splits"):
        try:
            out[key] = json.loads(_attr_str(raw[key]))
        except json.JSONDecodeError:
            raise CrossclrError(f"{path}: attribute {key!r} is not valid JSON") from None
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
    out["benchmark"] = _attr_str(raw["benchmark"])
    out["layout"] = _attr_str(raw["layout"])
    if "crossclr_version" in raw:
        out["crossclr_version"] = _attr_str(raw["crossclr_version"])
    return out


def _check_split(f: h5py.File, path: Path, split: str, shape: tuple[int, ...], num_class: int) -> np.ndarray:
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
    for k in ("label", "name", "length"):
        if g[k].shape != (n,):
            raise CrossclrError(f"{path}: split {split!r} {k} has shape {g[k].shape}, expected ({n},) "
                                "like its data")
    labels = np.asarray(g["label"][()])
    if not np.issubdtype(labels.dtype, np.integer):
        raise CrossclrError(f"{path}: split {split!r} labels have dtype {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= num_class):
        raise CrossclrError(f"{path}: split {split!r} has labels in {labels.min()}..{labels.max()}, expected "
                            f"0..{num_class - 1}")
    return labels


def open_cache(path: str | Path) -> Cache:
    """Open and validate a cache file; raises ``CrossclrError`` naming the file and the problem."""
    path = Path(path)
    with _open_h5(path) as f:
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
                                f"{groups}")
        splits = {s: _check_split(f, path, s, shape, attrs["num_class"]) for s in attrs["splits"]}
    return Cache(path, attrs, layout, splits)
