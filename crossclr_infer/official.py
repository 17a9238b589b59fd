"""Import the processed files of the official CrosSCLR code (and its successors) into a cache.

A folder such as ``data/NTU-RGB-D/xsub/`` holds, per split ``train`` / ``val``:

- ``{split}_position.npy`` (official 50-frame preprocessing, docs/design.md §2) or ``{split}_data.npy``
  (``ntu_gendata`` output: raw xyz zero-padded to 300 frames): float (N, 3, T, 25, 2);
- ``{split}_label.pkl`` = ``(names, labels)`` — read with a restricted unpickler that builds only lists,
  tuples, dicts, strings, numbers and numpy scalars of numeric dtype; any other global is refused before it
  is resolved, so no code from the file ever runs — or ``{split}_label.npy`` (N,) integers;
- optionally ``{split}_num_frame.npy`` (N,) valid frame counts.

Arrays are memory-mapped and copied sample by sample through ``CacheWriter`` (bounded memory). Each sample
must hold finite coordinates within ±``arrays.MAX_ABS_COORDINATE`` (the error names the file and the
sample); the small label and frame-count arrays are read whole only after their ``.npy`` header passed the
size limit (``arrays.MAX_ARRAY_BYTES``); the output cache may not be one of the input files.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .arrays import read_npy_header
from .cache import CacheWriter, check_not_input
from .errors import CrossclrError
from .fileio import require_regular_file
from .layouts import Layout, get_layout
from .preprocess import valid_length
from .skeleton import check_coordinates

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
DATA_KINDS = {"position": "official", "data": "none"}  # file kind -> preprocessing it holds
# numpy globals that numeric scalars and their dtypes pickle through (numpy 1.x and 2.x module paths)
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY_GLOBALS:
            return np.dtype if name == "dtype" else _numeric_scalar
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 pickles the bytes inside numpy scalars
            return _latin1_bytes
        raise pickle.UnpicklingError(f"{self.source}: refusing to load global {module}.{name}; label pickles "
                                     "may only hold lists, tuples, strings and numbers")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError(f"{self.source}: refusing persistent id {pid!r}")


def _numeric_scalar(dtype: np.dtype, data: bytes | None = None) -> Any:
    """numpy's scalar reconstructor, limited to numeric, non-object dtypes."""
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError(f"refusing numpy scalar of dtype {dtype!r}: only numbers are allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def restricted_load(data: bytes, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` allowing only plain containers, strings and numbers (CrossclrError otherwise)."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except pickle.UnpicklingError as e:
        msg = str(e)
        raise CrossclrError(msg if msg.startswith(source) else f"{source}: {msg}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise CrossclrError(f"{source}: not a valid label pickle ({type(e).__name__}: {e})") from None


def read_label_pickle(path: str | Path) -> tuple[list[str], np.ndarray]:
    """``(names, labels)`` from an official ``*_label.pkl`` through the restricted unpickler."""
    path = require_regular_file(path, "label pickle", missing_ok=True)  # a FIFO would block the read
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise CrossclrError(f"{path}: cannot read ({e.strerror or e})") from None
    obj = restricted_load(raw, str(path))
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise CrossclrError(f"{path}: expected a pickled (names, labels) pair, got {type(obj).__name__}")
    names, labels = obj
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise CrossclrError(f"{path}: expected the first element to be a list of sample names (strings)")
    if not isinstance(labels, (list, tuple)) or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels):
        raise CrossclrError(f"{path}: expected the second element to be a list of integer labels")
    if len(names) != len(labels):
        raise CrossclrError(f"{path}: {len(names)} names but {len(labels)} labels")
    return [str(n) for n in names], np.asarray(labels, np.int64).reshape(len(labels))


def _load_npy(path: Path, mmap: bool = True) -> np.ndarray:
    """A memory-mapped array, or (``mmap`` False) an array read whole once its header passed the limit."""
    require_regular_file(path, ".npy array", missing_ok=True)  # a FIFO would block the open
    try:
        if not mmap:
            with open(path, "rb") as f:
                read_npy_header(f, str(path))
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except CrossclrError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise CrossclrError(f"{path}: not a readable .npy array ({str(e).splitlines()[0] if str(e) else e}); "
                            "expected a numeric array written by numpy.save") from None


@dataclass(frozen=True)
class OfficialSplit:
    split: str
    data_path: Path
    kind: str  # "position" | "data"
    data: np.ndarray  # memory-mapped (N, 3, T, V, M)
    names: list[str]
    labels: np.ndarray  # (N,) int64
    lengths: np.ndarray | None  # (N,) from *_num_frame.npy when present


def find_official_split(folder: Path, split: str, layout: Layout) -> OfficialSplit | None:
    """The files of one split in ``folder`` (None when the split has no data file)."""
    found = [(k, folder / f"{split}_{k}.npy") for k in DATA_KINDS if (folder / f"{split}_{k}.npy").exists()]
    if not found:
        return None
    kind, data_path = found[0]
    data = _load_npy(data_path)
    if data.ndim != 5 or data.shape[1] != 3 or data.shape[3] != layout.num_joints:
        raise CrossclrError(f"{data_path}: array of shape {data.shape}, expected (N, 3, T, "
                            f"{layout.num_joints}, M) for layout {layout.name!r}")
    if not np.issubdtype(data.dtype, np.floating) and not np.issubdtype(data.dtype, np.integer):
        raise CrossclrError(f"{data_path}: dtype {data.dtype}, expected a numeric array")
    n = data.shape[0]
    pkl, npy = folder / f"{split}_label.pkl", folder / f"{split}_label.npy"
    if pkl.exists():
        names, labels = read_label_pickle(pkl)
        label_path = pkl
    elif npy.exists():
        labels = np.asarray(_load_npy(npy, mmap=False))
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise CrossclrError(f"{npy}: labels of shape {labels.shape} and dtype {labels.dtype}, expected "
                                "(N,) integers")
        labels = labels.astype(np.int64)
        names = [f"{split}{i:06d}" for i in range(len(labels))]
        label_path = npy
    else:
        raise CrossclrError(f"{folder}: {data_path.name} has no labels; expected {pkl.name} or {npy.name}")
    if len(labels) != n:
        raise CrossclrError(f"{label_path}: {len(labels)} labels for {n} samples in {data_path.name}")
    if n and labels.min() < 0:
        raise CrossclrError(f"{label_path}: negative label {labels.min()}; expected 0-based class indices")
    lengths = None
    nf = folder / f"{split}_num_frame.npy"
    if nf.exists():
        lengths = np.asarray(_load_npy(nf, mmap=False)).astype(np.int64).reshape(-1)
        if len(lengths) != n:
            raise CrossclrError(f"{nf}: {len(lengths)} frame counts for {n} samples in {data_path.name}")
    return OfficialSplit(split, data_path, kind, data, names, labels, lengths)


def official_class_names(num_class: int) -> list[str]:
    """NTU action names when the labels fit NTU-60 / NTU-120, else generic names."""
    from .ntu import NTU_ACTION_NAMES

    for k in (60, 120):
        if num_class <= k:
            return list(NTU_ACTION_NAMES[:k])
    return [f"class {i}" for i in range(num_class)]


def prepare_official(folder: str | Path, out: str | Path, *, layout: str = "ntu-rgb+d",
                    benchmark: str | None = None, progress: bool = True) -> dict[str, int]:
    """Write the official processed files of ``folder`` into the cache ``out``; returns samples per split."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CrossclrError(f"{folder}: not a folder; expected the folder holding train_position.npy / "
                            "val_position.npy (or *_data.npy) and their *_label.pkl")
    try:
        lay = get_layout(layout)
    except ValueError as e:
        raise CrossclrError(str(e)) from None
    inputs = [q for sp in SPLITS for q in folder.glob(f"{sp}_*")]
    check_not_input(out, inputs)
    splits = [s for s in (find_official_split(folder, sp, lay) for sp in SPLITS) if s is not None]
    if not splits:
        raise CrossclrError(f"{folder}: no train/val data found; expected train_position.npy or "
                            "train_data.npy (and val_*) with *_label.pkl or *_label.npy")
    shapes = {s.data.shape[1:] for s in splits}
    kinds = {s.kind for s in splits}
    if len(shapes) > 1 or len(kinds) > 1:
        found = ", ".join(f"{s.data_path.name} {s.data.shape}" for s in splits)
        raise CrossclrError(f"{folder}: splits disagree ({found}); expected the same kind of file and "
                            "sample shape for train and val")
    _, _, frames, _, num_person = splits[0].data.shape
    kind = splits[0].kind
    max_label = max(int(s.labels.max()) if len(s.labels) else 0 for s in splits)
    names = official_class_names(max_label + 1)
    preprocess = {"mode": DATA_KINDS[kind], "frames": int(frames), "imported_from": f"official {kind}.npy"}
    with CacheWriter(out, layout=lay, class_names=names, benchmark=benchmark or folder.name, frames=frames,
                     num_person=num_person, preprocess=preprocess) as w:
        for s in splits:
            bar = tqdm(range(len(s.labels)), desc=f"import {s.split}", unit="sample", leave=False,
                       disable=None if progress else True)  # None: only on a terminal
            for i in bar:
                x = np.asarray(s.data[i])  # (C, T, V, M), one sample from the memory map
                check_coordinates(x, f"{s.data_path}: sample {s.names[i]!r} (index {i})")
                x = x.astype(np.float32)
                length = int(s.lengths[i]) if s.lengths is not None else valid_length(x)
                w.add(s.split, x, int(s.labels[i]), s.names[i], length)
    return w.counts
