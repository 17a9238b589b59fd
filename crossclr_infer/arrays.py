"""Import generic skeleton arrays from one ``.npz`` file into a cache (``crossclr prepare arrays``).

Keys of the ``.npz`` (written with ``numpy.savez``/``savez_compressed``; object arrays are refused, nothing is
unpickled). Axes are always C (coordinates), T (frames), V (joints, in the order of ``--layout``), M (bodies):

``data`` — one of three layouts:

- **fixed**: ``data`` (N, C, T, V, M), every sample the same length (already padded, or already preprocessed);
- **concatenated**: ``data`` (C, F, V, M) with all samples' frames one after another along F, plus either
  ``lengths`` (N,) frames per sample (summing to F) or ``offsets`` (N + 1,) start frames with
  ``offsets[0] == 0`` and ``offsets[-1] == F``;
- **per sample**: ``data_0``, ``data_1``, …, ``data_{N-1}``, each (C, T_i, V, M) (no ``data`` key).

``label`` (N,) integers, 0-based class indices (required).
``name`` (N,) strings (optional; default ``sample000000`` …).
``split`` (N,) strings ``"train"``/``"val"`` or integers 0 (train) / 1 (val) (optional; default: all
``train``).
``class_names`` (K,) strings (optional; default ``class 0`` … up to the largest label).

Bodies (``bodies`` argument, ``--bodies M``): the cache holds the data's M by default; a larger M adds zero
bodies (a one-body data set written for a two-body model), a smaller M keeps the first bodies.

Preprocessing (``preprocess`` argument, ``--preprocess``): every mode (official, none, energy, mamp,
pose2d) passes every sample through ``preprocess.normalize_sequence(x, layout, mode=..., frames=frames)``
(the one preprocessing; ``official`` needs C = 3); ``as-is`` stores the samples unchanged and needs equal
lengths (fixed layout, or sequences that all have ``frames`` frames). Default: ``as-is`` for the fixed
layout, ``pose2d`` for the 2-D built-in layouts with scores (coco-17, openpose-body25), ``official``
otherwise.
Note: an ``.npz`` member is read whole when first touched; per-sample keys keep memory to one sample.

Layout mapping (``to_layout`` argument, ``--to-layout NAME|FILE``): every sample's joints are mapped to that
layout by name (``crossclr_infer.layout_map``; ``fill`` / ``--fill JOINT=SOURCE[+SOURCE]`` and
``fill_missing`` / ``--fill-missing`` fill joints the data lacks) after ``--bodies`` and before the
preprocessing, which runs in the target layout; the cache records the target layout.

Limits (checked before anything is read or written): every member's ``.npy`` header is read first and an
array declaring more than ``MAX_ARRAY_BYTES`` (2 GiB) is refused (use per-sample keys for larger data); every
coordinate must be finite and within ±``skeleton.MAX_ABS_COORDINATE`` (1e5: 100 m in millimetres, 100 km in
metres, far beyond any image in pixels); the output cache may not be the input file. The same header and
coordinate checks guard ``crossclr predict``'s inputs and ``prepare official`` / ``prepare ntu``.
"""

from __future__ import annotations

import logging
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from .cache import CacheWriter, check_not_input
from .errors import CrossclrError
from .fileio import require_regular_file
from .layout_map import FillSpec, LayoutMap, load_layout, plan_mapping
from .layouts import Layout
from .preprocess import MODES, normalize_sequence, valid_length
from .skeleton import check_coordinates, fit_bodies

log = logging.getLogger(__name__)

MAX_ARRAY_BYTES = 2 * 1024**3  # largest array read whole from a .npy file or an .npz member
AS_IS = "as-is"
_PER_SAMPLE = re.compile(r"data_(\d+)")
KNOWN_KEYS = {"data", "lengths", "offsets", "label", "name", "split", "class_names"}


@dataclass(frozen=True)
class ArraySource:
    """An opened ``.npz`` with its validated metadata (samples are read lazily by ``samples()``)."""

    path: Path
    kind: str  # "fixed" | "concatenated" | "per-sample"
    labels: np.ndarray  # (N,) int64
    names: list[str]
    splits: list[str]
    class_names: list[str]
    channels: int
    joints: int
    bodies: int
    starts: np.ndarray | None  # concatenated: (N + 1,) frame offsets
    npz: np.lib.npyio.NpzFile

    def __len__(self) -> int:
        return len(self.labels)

    def samples(self) -> Iterator[np.ndarray]:
        """Each sample (C, T_i, V, M) float32, in order."""
        if self.kind == "fixed":
            data = self._get("data")
            for i in range(len(self)):
                yield self._checked(data[i], i, "data")
        elif self.kind == "concatenated":
            data = self._get("data")
            assert self.starts is not None
            for i in range(len(self)):
                yield self._checked(data[:, self.starts[i]:self.starts[i + 1]], i, "data")
        else:
            for i in range(len(self)):
                x = self._get(f"data_{i}")
                if x.ndim != 4 or x.shape[0] != self.channels or x.shape[2:] != (self.joints, self.bodies):
                    raise CrossclrError(f"{self.path}: data_{i} has shape {x.shape}, expected (C, T, V, M) = "
                                        f"({self.channels}, T, {self.joints}, {self.bodies}) like data_0")
                yield self._checked(x, i, f"data_{i}")

    def _checked(self, x: np.ndarray, i: int, key: str) -> np.ndarray:
        """Sample ``i`` as float32 once its coordinates passed ``check_coordinates``."""
        check_coordinates(x, f"{self.path}: sample {self.names[i]!r} (key {key!r})")
        return np.asarray(x, np.float32)

    def lengths(self) -> np.ndarray | None:
        """Frames per sample when known without reading the data (fixed / concatenated)."""
        if self.kind == "concatenated":
            assert self.starts is not None
            return np.diff(self.starts)
        return None

    def _get(self, key: str) -> np.ndarray:
        return _member(self.npz, self.path, key)

    def close(self) -> None:
        self.npz.close()


def read_npy_header(f: IO[bytes], source: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the header of the ``.npy`` stream ``f`` (positioned at its start), refusing an
    array that would take more than MAX_ARRAY_BYTES before any of it is allocated."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as e:
        text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CrossclrError(f"{source}: not a readable .npy array ({text}); expected numpy.save "
                            "output") from None
    if dtype.hasobject:
        raise CrossclrError(f"{source}: cannot be read, an array of Python objects (dtype {dtype}); expected "
                            "plain numeric or string arrays")
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise CrossclrError(f"{source}: array header declares shape {tuple(shape)} {dtype} = "
                            f"{size / 2**30:.1f} GiB, above the limit of {MAX_ARRAY_BYTES / 2**30:g} GiB per "
                            "array; split the data into smaller arrays")
    return tuple(shape), dtype


def check_npz_headers(npz: np.lib.npyio.NpzFile, path: Path) -> None:
    """Every member of an ``.npz`` is a ``.npy`` array within MAX_ARRAY_BYTES (headers only are read)."""
    for name in npz.zip.namelist():
        key = name[:-4] if name.endswith(".npy") else name
        try:
            with npz.zip.open(name) as f:
                read_npy_header(f, f"{path}: key {key!r}")
        except (OSError, zipfile.BadZipFile, EOFError) as e:
            raise CrossclrError(f"{path}: key {key!r} is damaged ({e})") from None


def _member(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    try:
        arr = npz[key]
        if not isinstance(arr, np.ndarray):  # a member that is not a .npy array comes back as bytes
            raise CrossclrError(f"{path}: key {key!r} is not a .npy array; expected numpy.savez output")
    except CrossclrError:
        raise
    except ValueError as e:  # object arrays with allow_pickle=False
        raise CrossclrError(f"{path}: key {key!r} cannot be read ({e}); expected plain numeric or string "
                            "arrays (no Python objects)") from None
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise CrossclrError(f"{path}: key {key!r} is damaged ({e})") from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise CrossclrError(f"{path}: key {key!r} contains NaN or infinite values")
    return arr


def _strings(arr: np.ndarray, path: Path, key: str, n: int | None) -> list[str]:
    if arr.ndim != 1 or arr.dtype.kind not in "US":
        raise CrossclrError(f"{path}: {key!r} has shape {arr.shape} and dtype {arr.dtype}, expected a 1-D "
                            "array of strings")
    if n is not None and len(arr) != n:
        raise CrossclrError(f"{path}: {key!r} has {len(arr)} entries for {n} samples")
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in arr.tolist()]


def open_arrays(path: str | Path, layout: Layout) -> ArraySource:
    """Open and validate an ``.npz`` in one of the layouts of this module's docstring."""
    path = require_regular_file(path, ".npz archive")  # a FIFO or device is refused unread
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CrossclrError(f"{path}: not a readable .npz archive ({str(e).splitlines()[0] if str(e) else e})"
                            "; expected numpy.savez output") from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise CrossclrError(f"{path}: a single .npy array, expected an .npz archive with keys data, "
                            "label, ...")
    try:
        check_npz_headers(npz, path)
        return _validate(npz, path, layout)
    except BaseException:
        npz.close()
        raise


def _validate(npz: np.lib.npyio.NpzFile, path: Path, layout: Layout) -> ArraySource:
    keys = set(npz.files)
    per_sample = sorted(int(m.group(1)) for k in keys if (m := _PER_SAMPLE.fullmatch(k)))
    unknown = sorted(k for k in keys - KNOWN_KEYS if not _PER_SAMPLE.fullmatch(k))
    if unknown:
        raise CrossclrError(f"{path}: unknown keys {unknown}; expected {sorted(KNOWN_KEYS)} or data_0, "
                            "data_1, ...")
    labels = _labels(npz, path, keys)
    n = len(labels)
    kind, (channels, joints, bodies), starts = _data_kind(npz, path, keys, per_sample, n)
    if joints != layout.num_joints:
        raise CrossclrError(f"{path}: {joints} joints in the data, layout {layout.name!r} has "
                            f"{layout.num_joints}")
    names = _strings(_member(npz, path, "name"), path, "name", n) if "name" in keys else \
        [f"sample{i:06d}" for i in range(n)]
    if len(set(names)) != len(names):
        raise CrossclrError(f"{path}: sample names are not unique")
    splits = _splits(npz, path, n) if "split" in keys else ["train"] * n
    if "class_names" in keys:
        classes = _strings(_member(npz, path, "class_names"), path, "class_names", None)
        if labels.max() >= len(classes):
            raise CrossclrError(f"{path}: label {labels.max()} but only {len(classes)} class names")
    else:
        classes = [f"class {i}" for i in range(int(labels.max()) + 1)]
    return ArraySource(path, kind, labels, names, splits, classes, int(channels), int(joints), int(bodies),
                       starts, npz)


def _labels(npz: np.lib.npyio.NpzFile, path: Path, keys: set[str]) -> np.ndarray:
    """``label`` (N,) int64: present, 1-D integers, at least one, none negative."""
    if "label" not in keys:
        raise CrossclrError(f"{path}: no 'label' key; expected label (N,) 0-based class indices")
    labels = _member(npz, path, "label")
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise CrossclrError(f"{path}: 'label' has shape {labels.shape} and dtype {labels.dtype}, "
                            "expected (N,) integers")
    labels = labels.astype(np.int64)
    if len(labels) == 0:
        raise CrossclrError(f"{path}: no samples ('label' is empty)")
    if labels.min() < 0:
        raise CrossclrError(f"{path}: negative label {labels.min()}; expected 0-based class indices")
    return labels


def _data_kind(npz: np.lib.npyio.NpzFile, path: Path, keys: set[str], per_sample: list[int], n: int
               ) -> tuple[str, tuple[int, int, int], np.ndarray | None]:
    """The data layout (fixed / concatenated / per-sample), (channels, joints, bodies) and, for concatenated
    data, the (N + 1,) frame offsets."""
    if "data" in keys:
        if per_sample:
            raise CrossclrError(f"{path}: both 'data' and data_0.. keys; use one layout")
        data = _member(npz, path, "data")
        if data.dtype.kind not in "iuf":
            raise CrossclrError(f"{path}: 'data' has dtype {data.dtype}, expected numbers")
        if data.ndim == 5:
            if "lengths" in keys or "offsets" in keys:
                raise CrossclrError(f"{path}: 'lengths'/'offsets' given with 5-D data {data.shape}; expected "
                                    "concatenated data (C, F, V, M) with them, or (N, C, T, V, M) without")
            if data.shape[0] != n:
                raise CrossclrError(f"{path}: 'data' holds {data.shape[0]} samples but 'label' {n}")
            return "fixed", (data.shape[1], data.shape[3], data.shape[4]), None
        if data.ndim == 4:
            channels, total, joints, bodies = data.shape
            return "concatenated", (channels, joints, bodies), _starts(npz, path, keys, n, total)
        raise CrossclrError(f"{path}: 'data' has shape {data.shape}, expected (N, C, T, V, M) or "
                            "concatenated (C, F, V, M) with 'lengths' or 'offsets'")
    if not per_sample:
        raise CrossclrError(f"{path}: no 'data' key and no data_0.. keys; expected skeleton arrays")
    if per_sample != list(range(n)):
        raise CrossclrError(f"{path}: per-sample keys must be data_0 .. data_{n - 1} for {n} labels, "
                            f"found {len(per_sample)} keys (data_{per_sample[0]} .. "
                            f"data_{per_sample[-1]})")
    first = _member(npz, path, "data_0")
    if first.ndim != 4:
        raise CrossclrError(f"{path}: data_0 has shape {first.shape}, expected (C, T, V, M)")
    channels, _, joints, bodies = first.shape
    return "per-sample", (channels, joints, bodies), None


def _starts(npz: np.lib.npyio.NpzFile, path: Path, keys: set[str], n: int, total: int) -> np.ndarray:
    if ("lengths" in keys) == ("offsets" in keys):
        raise CrossclrError(f"{path}: concatenated data (C, F, V, M) needs exactly one of 'lengths' (N,) or "
                            "'offsets' (N + 1,)")
    if "lengths" in keys:
        lengths = _member(npz, path, "lengths")
        if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
            raise CrossclrError(f"{path}: 'lengths' has shape {lengths.shape}, dtype {lengths.dtype}; "
                                f"expected ({n},) integers")
        if (lengths < 1).any() or int(lengths.sum()) != total:
            raise CrossclrError(f"{path}: 'lengths' must be >= 1 and sum to the {total} frames of 'data', "
                                f"they sum to {int(lengths.sum())}")
        return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    offsets = _member(npz, path, "offsets")
    if offsets.shape != (n + 1,) or offsets.dtype.kind not in "iu":
        raise CrossclrError(f"{path}: 'offsets' has shape {offsets.shape}, dtype {offsets.dtype}; expected "
                            f"({n + 1},) integers (N + 1 start frames)")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != total or (np.diff(offsets) < 1).any():
        raise CrossclrError(f"{path}: 'offsets' must start at 0, increase strictly and end at the {total} "
                            "frames of 'data'")
    return offsets


def _splits(npz: np.lib.npyio.NpzFile, path: Path, n: int) -> list[str]:
    arr = _member(npz, path, "split")
    if arr.shape != (n,):
        raise CrossclrError(f"{path}: 'split' has shape {arr.shape}, expected ({n},)")
    if arr.dtype.kind in "iub":
        bad = sorted(set(arr.astype(np.int64).tolist()) - {0, 1})
        if bad:
            raise CrossclrError(f"{path}: 'split' values {bad[:5]}; expected 0 (train) or 1 (val)")
        return ["val" if v else "train" for v in arr.astype(np.int64).tolist()]
    values = _strings(arr, path, "split", n)
    bad = sorted(set(values) - {"train", "val"})
    if bad:
        raise CrossclrError(f"{path}: 'split' values {bad[:5]}; expected 'train' or 'val'")
    return values


def _layouts(layout: str | Layout, to_layout: str | Layout | None, fill: FillSpec | None,
             fill_missing: bool) -> tuple[Layout, LayoutMap | None]:
    """The data's layout and, with ``to_layout``, the map to it (``crossclr_infer.layout_map``)."""
    lay = load_layout(layout, "--layout")
    if to_layout is None:
        if fill or fill_missing:
            raise CrossclrError("--fill/--fill-missing apply with --to-layout (a layout to map the data to)")
        return lay, None
    return lay, plan_mapping(lay, load_layout(to_layout, "--to-layout"), fill=fill, fill_missing=fill_missing,
                             cli=True)


def _mode(src: ArraySource, preprocess: str | None, scored: bool) -> str:
    """The preprocessing of the samples: ``preprocess``, else the default of the module docstring."""
    mode = preprocess or (AS_IS if src.kind == "fixed" else "pose2d" if scored else "official")
    if mode != AS_IS and mode not in MODES:
        raise CrossclrError(f"unknown preprocessing {mode!r}; expected one of {[AS_IS, *MODES]}")
    if mode != AS_IS and src.channels != 3:
        raise CrossclrError(f"{src.path}: {src.channels} coordinates per joint; preprocessing {mode!r} "
                            "needs 3 (x, y, z); use --preprocess as-is for already prepared data")
    return mode


def import_arrays(path: str | Path, out: str | Path, *, layout: str | Layout, preprocess: str | None = None,
                  frames: int = 50, benchmark: str = "custom", progress: bool = True,
                  bodies: int | None = None, to_layout: str | Layout | None = None,
                  fill: FillSpec | None = None, fill_missing: bool = False) -> dict[str, int]:
    """Write the samples of an ``.npz`` into the cache ``out``; returns samples per split.

    ``bodies``: bodies M per sample in the cache (``--bodies``); None keeps the data's. A larger M adds zero
    bodies, a smaller one keeps the first bodies (before the preprocessing).
    ``to_layout`` (``--to-layout``): map each sample's joints to this layout first
    (``layout_map.plan_mapping`` with ``fill`` / ``fill_missing``); the cache then holds that layout and the
    preprocessing runs in it."""
    lay, mapping = _layouts(layout, to_layout, fill, fill_missing)
    check_not_input(out, [path])
    src = open_arrays(path, lay)
    target = lay if mapping is None else mapping.target
    try:
        mode = _mode(src, preprocess, lay.scored)
        if mode == AS_IS and src.kind == "fixed":
            frames = int(_member(src.npz, src.path, "data").shape[2])
        params = {"mode": mode, "frames": frames}
        known = src.lengths()
        bodies = src.bodies if bodies is None else bodies
        if bodies < 1:
            raise CrossclrError(f"bodies must be >= 1, got {bodies}")
        with CacheWriter(out, layout=target, class_names=src.class_names, benchmark=benchmark, frames=frames,
                         num_person=bodies, num_channels=src.channels, preprocess=params) as w:
            bar = tqdm(src.samples(), total=len(src), desc="import", unit="sample", leave=False,
                       disable=None if progress else True)  # None: only on a terminal
            for i, x in enumerate(bar):
                x = fit_bodies(x, bodies) if bodies != src.bodies else x
                x = mapping.apply(x, "CTVM", f"{src.path}: sample {src.names[i]!r}") if mapping else x
                if mode == AS_IS:
                    if x.shape[1] != frames:
                        raise CrossclrError(f"{src.path}: sample {src.names[i]!r} has {x.shape[1]} frames; "
                                            f"--preprocess as-is needs all samples to have {frames}")
                    y = x
                else:
                    try:
                        y = normalize_sequence(x, target, mode=mode, frames=frames)
                    except CrossclrError as e:
                        raise CrossclrError(f"{src.path}: sample {src.names[i]!r}: {e}") from None
                length = int(known[i]) if known is not None else valid_length(x)
                w.add(src.splits[i], y, int(src.labels[i]), src.names[i], length)
        return w.counts
    finally:
        src.close()
