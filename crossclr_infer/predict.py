"""Inputs for ``crossclr predict``: raw skeleton arrays and files made ready for a model, and the predictions.

Accepted inputs (docs/design.md §4):
- ``.npy`` raw coordinates, one of (T, V, C) one body, (M, T, V, C), (C, T, V, M); the axes are detected from
  the model's joint and channel counts when that is unambiguous, otherwise ``--axes`` (e.g. ``MTVC``)
  says them;
- a raw NTU ``.skeleton`` text file;
- a folder holding such files;
- with ``preprocessed=True``, ``.npy`` arrays already prepared for the model: (C, T, V, M) or (N, C, T, V, M).
Raw inputs go through the one preprocessing function that ``prepare`` uses, with the model's parameters.

Every input is checked before the model runs: a ``.npy`` header declaring more than ``MAX_ARRAY_BYTES``
(2 GiB) is refused before anything is allocated, and coordinates must be finite and within
±``MAX_ABS_COORDINATE`` (1e5) (``crossclr_infer.arrays``). Errors name the file. With ``errors`` given,
``load_inputs`` skips a bad file and records its one-line message, so ``crossclr predict`` on a folder
predicts the good files, reports each bad one on stderr and exits non-zero.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CrossclrError
from .layout_map import LayoutMap
from .metrics import ranked_classes, softmax
from .results import ClassScore, Prediction
from .session import ModelInfo, ModelSession
from .skeleton import RawSkeleton, check_coordinates, fit_bodies

log = logging.getLogger(__name__)

SUFFIXES = (".npy", ".skeleton")
AXES_LETTERS = "TVCM"


@dataclass(frozen=True)
class SkeletonInput:
    """One model-ready sample (C, T, V, M) float32 and where it came from."""

    name: str
    data: np.ndarray


def collect_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders (their .npy and .skeleton files, sorted, not recursive); check every path exists."""
    if not paths:
        raise CrossclrError("no INPUT given; pass .npy or .skeleton files or a folder of them")
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in SUFFIXES)
            if not found:
                raise CrossclrError(f"{p}: folder holds no .npy or .skeleton files")
            out.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise CrossclrError(f"{p}: unsupported input type {p.suffix or '(no suffix)'!r}; expected "
                                    ".npy (skeleton array) or .skeleton (raw NTU file), or a folder of them")
            out.append(p)
        else:
            raise CrossclrError(f"{p}: input not found (expected a .npy or .skeleton file or a folder)")
    return out


CLI_AXES = "--axes"  # how errors name the axes option: the CLI's flag ...
API_AXES = "axes"  # ... or the Python argument (``Predictor.predict(axes=...)``)


def axes_hint(option: str, axes: str | None = None) -> str:
    """How an error names the axes option (``--axes MTVC`` for the CLI, ``axes='MTVC'`` for the API)."""
    flag = option.startswith("-")
    if axes is None:
        return option if flag else f"{option}="
    return f"{option} {axes}" if flag else f"{option}={axes!r}"


def _prepared_hint(option: str) -> str:
    if option.startswith("-"):
        return "--preprocessed arrays"
    return "Predictor.predict_prepared for prepared arrays"


def detect_axes(shape: tuple[int, ...], num_joints: int, num_channels: int, source: str,
                option: str = CLI_AXES) -> str:
    """The axes string of a raw array from its shape, when exactly one accepted form fits. Errors name the
    axes ``option`` (``--axes`` for the CLI, ``axes`` for the Python API)."""
    v, c = num_joints, num_channels
    hint = functools.partial(axes_hint, option)
    if len(shape) == 3:
        if shape[1:] == (v, c):
            return "TVC"
        if shape[2] == c and shape[1] != v:
            raise CrossclrError(f"{source}: skeleton has {shape[1]} joints, the model's layout has {v}; "
                                f"use a model of this skeleton layout (or {hint()} if the axes are not "
                                "(T, V, C))")
        raise CrossclrError(f"{source}: shape {shape} is not (T, V={v}, C={c}); pass {hint()} to name the "
                            f"axes, e.g. {hint('TVC')}")
    if len(shape) == 4:
        forms = (("MTVC", shape[2:] == (v, c)), ("CTVM", shape[0] == c and shape[2] == v))
        fits = [a for a, ok in forms if ok]
        if len(fits) == 1:
            return fits[0]
        if len(fits) == 2:
            raise CrossclrError(f"{source}: shape {shape} fits both (M, T, V, C) and (C, T, V, M); pass "
                                f"{hint('MTVC')} or {hint('CTVM')}")
        if shape[2] != v and (shape[3] == c or shape[0] == c):
            raise CrossclrError(f"{source}: skeleton has {shape[2]} joints, the model's layout has {v}; use "
                                f"a model of this skeleton layout (or {hint()} if the axes differ)")
        raise CrossclrError(f"{source}: shape {shape} is neither (M, T, V={v}, C={c}) nor (C={c}, T, V={v}, "
                            f"M); pass {hint()}, e.g. {hint('MTVC')}")
    raise CrossclrError(f"{source}: array has {len(shape)} dimensions {shape}; expected (T, V, C), (M, T, V, "
                        f"C) or (C, T, V, M) raw coordinates (or {_prepared_hint(option)})")


def parse_axes(axes: str, ndim: int, source: str, option: str = CLI_AXES) -> str:
    """Validate an axes string (``--axes`` / ``axes=``, named by ``option`` in errors): a permutation of T,
    V, C and optionally M, one letter per dimension."""
    a = axes.strip().upper()
    if (len(a) != ndim or len(set(a)) != len(a) or not set(a) <= set(AXES_LETTERS)
            or not set("TVC") <= set(a)):
        raise CrossclrError(f"{source}: {option} {axes!r} does not fit the array's {ndim} dimensions; "
                            "expected one letter per axis from T (frames), V (joints), C (coordinates), "
                            "M (bodies), e.g. MTVC")
    return a


def to_ctvm(x: np.ndarray, axes: str) -> np.ndarray:
    """Array with named axes -> (C, T, V, M) (M = 1 when absent)."""
    if "M" not in axes:
        x, axes = x[..., None], axes + "M"
    return np.transpose(x, [axes.index(k) for k in "CTVM"])  # (named axes) -> (C, T, V, M)


def load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file whose header was checked first (``arrays.read_npy_header``: size limit, no objects)."""
    from .arrays import read_npy_header

    try:
        with open(path, "rb") as f:
            read_npy_header(f, str(path))
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        if isinstance(e, CrossclrError):
            raise
        text = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise CrossclrError(f"{path}: not a readable .npy array ({text})") from None


def _named(error: CrossclrError, source: str) -> CrossclrError:
    """``error`` with ``source`` in front unless its message names it already."""
    msg = str(error)
    return error if msg.startswith(source) else CrossclrError(f"{source}: {msg}")


def _preprocess_params(info: ModelInfo) -> tuple[str, int, int]:
    """(mode, frames, max_bodies) of the model's preprocessing."""
    pre = info.preprocess if isinstance(info.preprocess, dict) else {}
    return str(pre.get("mode", "official")), int(info.frames), int(pre.get("max_bodies", info.num_person))


def preprocess_ctvm(x: np.ndarray, info: ModelInfo, source: str) -> np.ndarray:
    """Raw (C, T, V, M) coordinates -> the model's input (C, frames, V, num_person) via ``preprocess_raw``.

    The array becomes a RawSkeleton (per frame, the bodies that are not all zero, in array order) so that the
    exact function ``prepare`` applies to raw files runs here too.
    """
    from .preprocess import preprocess_raw

    c, t, v, m = x.shape
    if c != 3:
        raise CrossclrError(f"{source}: raw coordinates need C = 3 (x, y, z), got {c}; pass --preprocessed "
                            "for arrays already prepared for the model")
    if t < 1:
        raise CrossclrError(f"{source}: skeleton has no frames")
    bodies = np.transpose(x, (1, 3, 2, 0)).astype(np.float32)  # (C, T, V, M) -> (T, M, V, C)
    present = np.abs(bodies).sum(axis=(2, 3)) > 0  # (T, M)
    if not present.any():
        raise CrossclrError(f"{source}: every coordinate is 0; expected a skeleton sequence")
    raw = RawSkeleton(num_frames=t, bodies_per_frame=present.sum(axis=1).astype(np.int64),
                      body_ids=np.nonzero(present)[1].astype(np.int64),
                      xyz=bodies[present])  # (B_total, V, 3), frame by frame, bodies in order
    mode, frames, max_bodies = _preprocess_params(info)
    try:
        out = preprocess_raw(raw, info.layout, mode, frames, max_bodies=max_bodies)
    except CrossclrError as e:
        raise _named(e, source) from None
    return _fit_persons(out, info, source)


def _fit_persons(x: np.ndarray, info: ModelInfo, source: str) -> np.ndarray:
    if x.shape[-1] > info.num_person:
        log.warning("%s: %d bodies, the model takes %d; keeping the first %d", source, x.shape[-1],
                    info.num_person, info.num_person)
    return fit_bodies(np.asarray(x, dtype=np.float32), info.num_person)


def read_raw_skeleton(path: Path, info: ModelInfo, layout_map: LayoutMap | None = None) -> np.ndarray:
    """A raw NTU .skeleton file -> the model's input (C, T, V, M); ``layout_map``: the file's joints (its
    source layout) mapped to the model's layout first."""
    from .ntu import read_skeleton
    from .preprocess import preprocess_raw

    raw = read_skeleton(path)
    if layout_map is not None and raw.xyz.ndim == 3 and len(raw.xyz):
        raw = dataclasses.replace(raw, xyz=layout_map.apply(raw.xyz, "MVC", str(path)))  # (B, V_src, 3) -> V
    if raw.num_frames == 0 or len(raw.xyz) == 0:
        what = "no frames" if raw.num_frames == 0 else f"{raw.num_frames} frames but no body in any of them"
        raise CrossclrError(f"{path}: skeleton file holds {what}; expected a recorded skeleton sequence")
    check_coordinates(raw.xyz, str(path))
    v = raw.xyz.shape[1] if raw.xyz.ndim == 3 else -1
    if v != info.layout.num_joints:
        raise CrossclrError(f"{path}: skeleton has {v} joints, the model's layout {info.layout.name!r} has "
                            f"{info.layout.num_joints}; use a model of this skeleton layout")
    if info.num_channels != 3:
        raise CrossclrError(f"{path}: the model takes {info.num_channels} channels, a .skeleton file gives 3 "
                            f"(x, y, z)")
    mode, frames, max_bodies = _preprocess_params(info)
    try:
        x = preprocess_raw(raw, info.layout, mode, frames, max_bodies=max_bodies)
    except CrossclrError as e:
        raise _named(e, str(path)) from None
    check_coordinates(x, str(path))
    return _fit_persons(x, info, str(path))


def load_file(path: Path, info: ModelInfo, *, axes: str | None = None, preprocessed: bool = False,
              layout_map: LayoutMap | None = None) -> list[SkeletonInput]:
    """The samples of one input file made ready for the model described by ``info`` (``layout_map``: raw
    inputs in its source layout, mapped to the model's, ``--from-layout``)."""
    src = str(path)
    if path.suffix.lower() == ".skeleton":
        if preprocessed:
            raise CrossclrError(f"{path}: --preprocessed applies to .npy arrays, a .skeleton file is raw")
        return [SkeletonInput(src, read_raw_skeleton(path, info, layout_map))]
    x = load_npy(path)
    check_coordinates(x, src)
    if preprocessed:
        shape = info.input_shape
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[1:] != shape:
            raise CrossclrError(f"{path}: preprocessed array has shape {x.shape}, expected (C, T, V, M) "
                                f"= {shape} or (N, *{shape}) as the model's metadata fixes it")
        names = [src] if len(x) == 1 else [f"{src}[{i}]" for i in range(len(x))]
        return [SkeletonInput(n, s.astype(np.float32)) for n, s in zip(names, x, strict=True)]
    joints = (layout_map.source if layout_map else info.layout).num_joints
    a = parse_axes(axes, x.ndim, src) if axes else detect_axes(x.shape, joints, 3, src)
    ctvm = to_ctvm(x, a)
    ctvm = layout_map.apply(ctvm, "CTVM", src) if layout_map else ctvm  # (C, T, V_src, M) -> (C, T, V, M)
    if ctvm.shape[2] != info.layout.num_joints:
        raise CrossclrError(f"{path}: skeleton has {ctvm.shape[2]} joints, the model's layout "
                            f"{info.layout.name!r} has {info.layout.num_joints}")
    return [SkeletonInput(src, preprocess_ctvm(ctvm, info, src))]


def load_inputs(paths: Sequence[str | Path], info: ModelInfo, *, axes: str | None = None,
                preprocessed: bool = False, errors: list[str] | None = None,
                layout_map: LayoutMap | None = None) -> list[SkeletonInput]:
    """Every input made ready for the model described by ``info``.

    A missing path or an empty folder always raises. A bad file raises too, unless ``errors`` is given:
    then its one-line message (naming the file) is appended there and the file is skipped."""
    out: list[SkeletonInput] = []
    for path in collect_files(paths):
        try:
            out.extend(load_file(path, info, axes=axes, preprocessed=preprocessed, layout_map=layout_map))
        except CrossclrError as e:
            if errors is None:
                raise
            errors.append(str(_named(e, str(path))))
            log.debug("skipped %s: %s", path, e)
    return out


def _top(probs: np.ndarray, names: Sequence[str], k: int) -> list[tuple[ClassScore, ...]]:
    idx = ranked_classes(probs, min(k, probs.shape[1]))
    return [tuple(ClassScore(int(j), names[j], float(p[j])) for j in row)
            for row, p in zip(idx, probs, strict=True)]


def check_top_k(top_k: object, option: str = "--top-k") -> int:
    """``top_k`` as an int >= 1 (an integer, not a bool or a float), else a one-line CrossclrError naming
    ``option``."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise CrossclrError(f"{option} must be an integer >= 1, got {top_k!r:.40}")
    return int(top_k)


def predict(session: ModelSession, inputs: Sequence[SkeletonInput], *, top_k: int = 5,
            batch_size: int = 64, embedding: bool = False) -> list[Prediction]:
    """Per input: the fused top-k classes and probabilities, each stream's top-k, and (``embedding``) the
    model's ``embedding`` output."""
    top_k = check_top_k(top_k)
    if not inputs:
        raise CrossclrError("no inputs to predict")
    info = session.info
    x = np.stack([s.data for s in inputs])  # (N, C, T, V, M)
    names = ", ".join(s.name for s in inputs[:3]) + (" …" if len(inputs) > 3 else "")
    res = session.run_batched(x, batch_size, source=names)
    cls = tuple(info.class_names)
    if info.kind == "ensemble":
        probs = res["probabilities"]
        streams = {v: _top(softmax(res[f"logits_{v}"]), cls, top_k) for v in info.streams}
    else:
        probs = softmax(res["logits"])
        streams = {info.streams[0]: _top(probs, cls, top_k)}
    fused = _top(probs, cls, top_k)
    emb = res.get("embedding") if embedding else None
    return [Prediction(s.name, fused[i], probs[i], {v: streams[v][i] for v in streams}, cls,
                       None if emb is None else emb[i])
            for i, s in enumerate(inputs)]


def format_predictions(preds: Sequence[Prediction]) -> str:
    """Human-readable text: per input the fused top-k, then each stream's best class."""
    lines: list[str] = []
    for p in preds:
        lines.append(p.input)
        for rank, c in enumerate(p.top, 1):
            lines.append(f"  {rank}. {c.name:<40s} {100 * c.probability:6.2f}%")
        if len(p.streams) > 1:
            per = ", ".join(f"{v}: {top[0].name} {100 * top[0].probability:.1f}%"
                            for v, top in p.streams.items())
            lines.append(f"  streams: {per}")
    return "\n".join(lines)
