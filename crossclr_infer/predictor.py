"""``Predictor``: a crossclr ONNX model behind one call, raw skeleton coordinates in, typed results out.

    from crossclr_infer import Predictor

    model = Predictor("models/xsub/ensemble.onnx", providers=["cpu"], threads=1)
    result = model.predict(clip)              # one clip: (T, V, C), (M, T, V, C) or (C, T, V, M)
    result = model.predict("clip.npy")        # a file: .npy raw coordinates or an NTU .skeleton file
    results = model.predict([clip_a, clip_b]) # a batch: a list of clips (or an array with axes "N...")
    result.name, result.probability           # the fused top-1: "wave", 0.91 (result.top: the top-k)

The clip gets the model's own preprocessing (mode, frames, bodies from its metadata) through the functions
``crossclr predict`` uses (``predict.detect_axes``/``parse_axes``, ``to_ctvm``, ``preprocess_ctvm``) and the
result is ``predict.predict``'s ``results.Prediction``: its ``to_dict()`` is the record of ``crossclr predict
--json`` on the clip saved as ``.npy`` (same numbers). Channels are (x, y, z), or (x, y, score) for models of
a scored 2-D layout / the ``pose2d`` preprocessing; those also take (x, y) alone (C = 2): each joint then gets
score 1, or 0 where it is exactly (0, 0) (how pose estimators write a missing joint). Coordinates must be
finite: missing joints (NaN) of live data are handled by ``crossclr_infer.stream`` before its windows reach
``predict``. The full API: docs/api.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError
from .layout_map import FillSpec, LayoutMap, input_mapping
from .layouts import Layout
from .predict import (
    API_AXES,
    SUFFIXES,
    SkeletonInput,
    axes_hint,
    check_top_k,
    collect_files,
    detect_axes,
    load_npy,
    parse_axes,
    predict,
    preprocess_ctvm,
    read_raw_skeleton,
    to_ctvm,
)
from .preprocess import MODES
from .results import Prediction
from .session import ModelInfo, ModelSession
from .skeleton import check_coordinates

log = logging.getLogger(__name__)

Clip = np.ndarray | Sequence[Any]  # an array, or nested lists of numbers, in one of the clip shapes
Input = str | os.PathLike | Clip  # a clip or a file (.npy / .skeleton)
Result = Prediction
CLIP_SHAPES = "(T, V, C), (M, T, V, C) or (C, T, V, M)"


def _as_array(clip: object, source: str) -> np.ndarray:
    """``np.asarray(clip)``; what numpy cannot make an array of (ragged or 64+-deep nesting, integers beyond
    float64) is a one-line CrossclrError naming ``source``."""
    try:
        return np.asarray(clip)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CrossclrError(f"{source}: not an array of numbers ({type(e).__name__}); expected a "
                            f"{CLIP_SHAPES} array") from None


def takes_scores(info: ModelInfo) -> bool:
    """Whether the model's third channel is a detection score (a scored 2-D layout or a scored preprocessing
    such as ``pose2d``): then (x, y) clips without scores are accepted."""
    mode = info.preprocess.get("mode") if isinstance(info.preprocess, dict) else None
    return bool(info.layout.scored or (mode in MODES and MODES[str(mode)].scored))


def with_unit_scores(xy: np.ndarray) -> np.ndarray:
    """(2, T, V, M) (x, y) -> (3, T, V, M) (x, y, score): score 1 for every joint, 0 where it is exactly
    (0, 0) (a missing joint as pose estimators write it; all-zero padding bodies stay absent)."""
    score = np.any(xy != 0, axis=0, keepdims=True).astype(xy.dtype)  # (1, T, V, M)
    return np.concatenate([xy, score], axis=0)


def _is_path(item: object) -> bool:
    return isinstance(item, (str, os.PathLike))


def _is_batch(items: Sequence[Any], clip_axes: str | None, source: str) -> bool:
    """Whether a list/tuple is a batch. With ``axes``: when its items have one dimension per axis letter.
    Without: paths and arrays of 3 or more dimensions are clips (a batch), arrays of (V, C) are frames (one
    clip); nested Python lists are one clip when they form one rectangular array (a 5-D one is a batch),
    else (ragged) a batch of clips."""
    first = items[0]
    if _is_path(first):
        return True
    if clip_axes:
        return _as_array(first, f"{source}[0]").ndim == len(clip_axes.strip())
    if isinstance(first, np.ndarray):
        return first.ndim >= 3
    try:
        np.asarray(items)
    except (ValueError, TypeError, OverflowError, RecursionError):
        return _as_array(first, f"{source}[0]").ndim >= 3
    return False


class Predictor:
    """One crossclr ONNX model (ensemble or stream model) for raw skeleton clips, without torch.

    ``providers``: onnxruntime execution providers (short names ``cpu``, ``cuda`` ... or full names; None =
    CUDA when available, then CPU). ``threads``: CPU cores for onnxruntime (0 = every core this process may
    run on), the latency thread plan of ``crossclr predict``. ``backend`` (auto / onnxruntime / openvino) and
    ``precision`` (auto / fp32 / bf16): as ``crossclr predict --backend --precision``.

    Thread safety: after construction a Predictor holds no per-call state, so ``prepare``, ``predict`` and
    ``predict_prepared`` may be called from several threads at once on one shared Predictor (onnxruntime's
    ``InferenceSession.run`` is thread-safe; the OpenVINO backend serialises its calls with a lock). Each
    call's onnxruntime run uses the ``threads`` cores, so N threads at once compete for them: for throughput
    prefer one thread with batches, or ``threads`` = cores / N.

    ``from_layout``: the layout of the clips given (a built-in name, a ``.toml`` file or a Layout) when it is
    not the model's, e.g. a Kinect v1 camera for an NTU model; each clip's joints are mapped to the model's
    layout by name before its preprocessing (``crossclr_infer.layout_map``, with ``fill`` and
    ``fill_missing`` for the joints the camera lacks; a mapping that cannot fill every joint is refused here).
    ``layout_map`` holds the plan (None when the clips are in the model's layout); ``input_layout`` the
    clips' layout. ``StreamPredictor`` reads frames in ``input_layout``.
    """

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None,
                 threads: int = 0, *, backend: str = "auto", precision: str = "auto",
                 from_layout: str | Layout | None = None, fill: FillSpec | None = None,
                 fill_missing: bool = False) -> None:
        self.session = ModelSession(model_path, providers, intra_op_threads=threads, use="latency",
                                    backend=backend, precision=precision)
        self.layout_map: LayoutMap | None = input_mapping(from_layout, self.info.layout, fill=fill,
                                                          fill_missing=fill_missing)

    @property
    def input_layout(self) -> Layout:
        """The layout of the clips this Predictor takes: ``from_layout``, else the model's."""
        return self.info.layout if self.layout_map is None else self.layout_map.source

    @property
    def backend(self) -> dict[str, Any]:
        """Which backend (onnxruntime / openvino), version and precision (fp32 / bf16 / ...) run the model."""
        return self.session.describe_backend()

    @property
    def info(self) -> ModelInfo:
        """The model's metadata: layout, frames, bodies, classes, preprocessing."""
        return self.session.info

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class index -> name, as in the model's metadata."""
        return tuple(self.info.class_names)

    def prepare(self, clip: Clip, axes: str | None = None, source: str = "clip") -> np.ndarray:
        """Raw coordinates -> the model's input (C, T, V, M) float32 (its preprocessing applied).

        ``axes`` names the clip's axes (e.g. ``TVC``, ``MTVC``, ``CTVM``); None detects them from the shape
        when that is unambiguous, as ``crossclr predict`` does (a shape that fits 3 channels is read as 3
        channels; for scored models a shape that fits only 2 is (x, y))."""
        x = _as_array(clip, source)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise CrossclrError(f"{source}: array dtype {x.dtype}, expected real numbers (float32) in the "
                                f"shape {CLIP_SHAPES}, or a path to a .npy / .skeleton file")
        if not np.isfinite(x).all():
            raise CrossclrError(f"{source}: skeleton contains NaN or Inf values; expected finite coordinates "
                                "(stream frames with missing joints go through crossclr_infer.stream)")
        check_coordinates(x, source)
        info = self.info
        a = parse_axes(axes, x.ndim, source, API_AXES) if axes else self._detect(x.shape, source)
        ctvm = to_ctvm(x, a)  # (named axes) -> (C, T, V, M)
        if self.layout_map is not None:  # (C, T, V_camera, M) -> (C, T, V_model, M)
            ctvm = self.layout_map.apply(ctvm, "CTVM", source)
        if ctvm.shape[2] != info.layout.num_joints:
            raise CrossclrError(f"{source}: skeleton has {ctvm.shape[2]} joints, the model's layout "
                                f"{info.layout.name!r} has {info.layout.num_joints}")
        return preprocess_ctvm(self._channels(ctvm, source), info, source)

    def _detect(self, shape: tuple[int, ...], source: str) -> str:
        """The clip's axes from its shape: 3 channels first, then 2 (x, y) as the fallback."""
        v = self.input_layout.num_joints
        try:
            return detect_axes(shape, v, 3, source, API_AXES)
        except CrossclrError as first:
            try:
                return detect_axes(shape, v, 2, source, API_AXES)
            except CrossclrError as second:  # an (x, y) shape that fits two forms says so
                raise (second if "fits both" in str(second) else first) from None

    def _channels(self, ctvm: np.ndarray, source: str) -> np.ndarray:
        """(C, T, V, M) with C = 3, a score channel added to (x, y) for scored models; other C refused."""
        c = ctvm.shape[0]
        if c == 3:
            return ctvm
        layout = self.info.layout.name
        if c == 2 and takes_scores(self.info):
            return with_unit_scores(ctvm)
        if c == 2:
            raise CrossclrError(f"{source}: 2 coordinates per joint (x, y), the model's layout {layout!r} "
                                "takes 3 (x, y, z); (x, y) without z is accepted only by models of a 2-D "
                                "layout (x, y, score), such as coco-17 with the pose2d preprocessing")
        want = "(x, y, score), or (x, y)" if takes_scores(self.info) else "(x, y, z)"
        raise CrossclrError(f"{source}: {c} coordinates per joint, the model's layout {layout!r} takes 3 "
                            f"{want}; name the axes with {axes_hint(API_AXES)} if C is another axis (arrays "
                            "already prepared for the model go to Predictor.predict_prepared)")

    def predict(self, inputs: Input | Sequence[Input], *, axes: str | None = None, top_k: int = 5,
                embedding: bool = False, name: str | None = None) -> Result | list[Result]:
        """The ``Prediction`` of one clip, or a list of them (in order) for a batch.

        One clip: an array or nested list of shape (T, V, C), (M, T, V, C) or (C, T, V, M) (a list of (V, C)
        frames is one (T, V, C) clip), or a path (str / Path) to a ``.npy`` array or an NTU ``.skeleton``
        file. A batch: a list/tuple of clips or paths, a folder path (its .npy and .skeleton files), an array
        whose ``axes`` start with ``N`` (e.g. ``NTVC``) or a 5-D array (N clips of (M, T, V, C) or
        (C, T, V, M)). ``top_k``: classes in ``.top`` and per stream (``.probabilities`` always holds every
        class); ``embedding``: fill ``.embedding`` from the model's ``embedding`` output; ``name``: the
        results' ``input`` (default: the path, else ``clip`` / ``clip[i]``)."""
        top_k = check_top_k(top_k, "top_k")
        if axes is not None and not isinstance(axes, str):
            raise CrossclrError(f"{name or 'clip'}: axes {axes!r:.40} is a {type(axes).__name__}, expected a "
                                "string such as 'TVC' or None")
        if embedding:
            self._check_embedding()
        samples, is_batch = self._inputs(inputs, axes, name)
        results = predict(self.session, samples, top_k=top_k, embedding=embedding)
        return results if is_batch else results[0]

    def predict_prepared(self, x: np.ndarray, *, top_k: int = 5, embedding: bool = False,
                         name: str = "clip") -> Result:
        """The ``Prediction`` of one clip already prepared for the model (C, T, V, M), e.g. by ``prepare``."""
        top_k = check_top_k(top_k, "top_k")
        if embedding:
            self._check_embedding()
        check_coordinates(np.asarray(x), name)
        [one] = predict(self.session, [SkeletonInput(name, np.asarray(x, dtype=np.float32))], top_k=top_k,
                        embedding=embedding)
        return one

    def _check_embedding(self) -> None:
        if "embedding" not in self.session.output_names:
            raise CrossclrError(f"{self.session.path}: the model has no 'embedding' output (it has "
                                f"{list(self.session.output_names)}); re-export it with `crossclr export`")

    def _inputs(self, inputs: Input | Sequence[Input], axes: str | None,
                name: str | None) -> tuple[list[SkeletonInput], bool]:
        """The model-ready samples of ``inputs`` and whether they form a batch (module docstring)."""
        by_n = axes is not None and axes.strip().upper().startswith("N")
        clip_axes = axes.strip()[1:] if by_n and axes else axes
        if _is_path(inputs):
            path = Path(inputs)  # type: ignore[arg-type]
            if path.is_dir():
                return [self._file(f, clip_axes, str(f)) for f in collect_files([path])], True
            if not by_n:
                return [self._file(path, clip_axes, name or str(path))], False
            inputs = self._npy(path)
        source = name or "clip"
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise CrossclrError(f"{source}: empty batch; expected at least one clip")
            if by_n or _is_batch(inputs, clip_axes, source):
                return [self._item(c, clip_axes, f"{source}[{i}]") for i, c in enumerate(inputs)], True
        arr = _as_array(inputs, source)
        if by_n or arr.ndim == 5:
            if len(arr) == 0:
                raise CrossclrError(f"{source}: empty batch; expected at least one clip")
            return [self._item(c, clip_axes, f"{source}[{i}]") for i, c in enumerate(arr)], True
        return [SkeletonInput(source, self.prepare(arr, clip_axes, source))], False

    def _item(self, item: Input, axes: str | None, source: str) -> SkeletonInput:
        """One clip of a batch: a path (named by itself) or an array."""
        if _is_path(item):
            return self._file(Path(item), axes, str(item))  # type: ignore[arg-type]
        return SkeletonInput(source, self.prepare(item, axes, source))  # type: ignore[arg-type]

    def _file(self, path: Path, axes: str | None, source: str) -> SkeletonInput:
        """A ``.skeleton`` file or a ``.npy`` array (read as ``crossclr predict`` reads it) made ready."""
        if path.suffix.lower() == ".skeleton" and path.is_file():
            return SkeletonInput(source, read_raw_skeleton(path, self.info, self.layout_map))
        return SkeletonInput(source, self.prepare(self._npy(path), axes, source))

    @staticmethod
    def _npy(path: Path) -> np.ndarray:
        if not path.is_file():
            raise CrossclrError(f"{path}: file not found; expected a .npy or .skeleton file (or a clip "
                                "array)")
        if path.suffix.lower() not in SUFFIXES:
            raise CrossclrError(f"{path}: unsupported input type {path.suffix or '(no suffix)'!r}; expected "
                                ".npy (skeleton array) or .skeleton (raw NTU file)")
        if path.suffix.lower() != ".npy":
            raise CrossclrError(f"{path}: a .skeleton file holds one clip; expected a .npy array for axes "
                                "starting with N")
        return load_npy(path)
