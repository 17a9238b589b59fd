"""``Predictor``: a crossclr ONNX model behind one call, raw skeleton coordinates in, top-k classes out.

    from crossclr_infer.predictor import Predictor

    model = Predictor("models/xsub/ensemble.onnx", providers=["cpu"], threads=1)
    result = model.predict(clip)              # one clip: (T, V, C), (M, T, V, C) or (C, T, V, M)
    results = model.predict([clip_a, clip_b]) # a batch: a list of clips (or an array with axes "N...")
    result.name, result.probability           # the fused top-1: "wave", 0.91 (result.top: the top-k)

The clip gets the model's own preprocessing (mode, frames, bodies from its metadata) through the functions
``crossclr predict`` uses (``predict.detect_axes``/``parse_axes``, ``to_ctvm``, ``preprocess_ctvm``) and the
result is ``predict.predict``'s: ``{"input", "fused": top-k, "streams": {view: top-k}}`` — the same numbers as
``crossclr predict --json`` on the clip saved as ``.npy``. Channels are (x, y, z), or (x, y, score) for models
of the ``pose2d`` preprocessing. Coordinates must be finite: missing joints (NaN, score 0) of live data are
handled by ``crossclr_infer.stream`` before its windows reach ``predict``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError
from .predict import SkeletonInput, check_top_k, detect_axes, parse_axes, predict, preprocess_ctvm, to_ctvm
from .results import Prediction
from .session import ModelInfo, ModelSession
from .skeleton import check_coordinates

log = logging.getLogger(__name__)

Clip = np.ndarray
Result = Prediction


def _as_array(clip: object, source: str) -> np.ndarray:
    """``np.asarray(clip)``; what numpy cannot make an array of (ragged or 64+-deep nesting, integers beyond
    float64) is a one-line CrossclrError naming ``source``."""
    try:
        return np.asarray(clip)
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise CrossclrError(f"{source}: not an array of numbers ({type(e).__name__}); expected a (T, V, C), "
                            "(M, T, V, C) or (C, T, V, M) array") from None


class Predictor:
    """One crossclr ONNX model (ensemble or stream model) for raw skeleton clips, without torch.

    ``providers``: onnxruntime execution providers (short names ``cpu``, ``cuda`` ... or full names; None =
    CUDA when available, then CPU). ``threads``: CPU cores for onnxruntime (0 = every core this process may
    run on), the latency thread plan of ``crossclr predict``. ``backend`` (auto / onnxruntime / openvino) and
    ``precision`` (auto / fp32 / bf16): as ``crossclr predict --backend --precision``.
    """

    def __init__(self, model_path: str | Path, providers: Sequence[str] | None = None,
                 threads: int = 0, *, backend: str = "auto", precision: str = "auto") -> None:
        self.session = ModelSession(model_path, providers, intra_op_threads=threads, use="latency",
                                    backend=backend, precision=precision)

    @property
    def backend(self) -> dict[str, Any]:
        """Which backend (onnxruntime / openvino), version and precision (fp32 / bf16 / ...) run the model."""
        return self.session.describe_backend()

    @property
    def info(self) -> ModelInfo:
        """The model's metadata: layout, frames, bodies, classes, preprocessing."""
        return self.session.info

    def prepare(self, clip: Clip, axes: str | None = None, source: str = "clip") -> np.ndarray:
        """Raw coordinates -> the model's input (C, T, V, M) float32 (its preprocessing applied).

        ``axes`` names the clip's axes (e.g. ``TVC``, ``MTVC``, ``CTVM``); None detects them from the shape
        when that is unambiguous, as ``crossclr predict`` does."""
        x = _as_array(clip, source)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise CrossclrError(f"{source}: array dtype {x.dtype}, expected real numbers (float32)")
        if not np.isfinite(x).all():
            raise CrossclrError(f"{source}: skeleton contains NaN or Inf values; expected finite coordinates "
                                "(stream frames with missing joints go through crossclr_infer.stream)")
        check_coordinates(x, source)
        info = self.info
        v = info.layout.num_joints
        a = parse_axes(axes, x.ndim, source) if axes else detect_axes(x.shape, v, 3, source)
        ctvm = to_ctvm(x, a)  # (named axes) -> (C, T, V, M)
        if ctvm.shape[2] != info.layout.num_joints:
            raise CrossclrError(f"{source}: skeleton has {ctvm.shape[2]} joints, the model's layout "
                                f"{info.layout.name!r} has {info.layout.num_joints}")
        return preprocess_ctvm(ctvm, info, source)

    def predict(self, clips: Clip | Sequence[Clip], *, axes: str | None = None, top_k: int = 5,
                name: str = "clip") -> Result | list[Result]:
        """Top-k classes of one clip (a dict) or of a batch (a list of dicts, in order).

        A batch is a list/tuple of clips, or one array whose ``axes`` start with ``N`` (e.g. ``NTVC``), or a
        5-D array (N clips of (M, T, V, C) or (C, T, V, M)); any other array is one clip."""
        top_k = check_top_k(top_k, "top_k")
        if axes is not None and not isinstance(axes, str):
            raise CrossclrError(f"{name}: axes {axes!r:.40} is a {type(axes).__name__}, expected a string "
                                "such as 'TVC' or None")
        clip_axes = axes[1:] if axes and axes.strip().upper().startswith("N") else axes
        if isinstance(clips, (list, tuple)):
            batch: Sequence[Clip] | None = clips
        else:
            arr = _as_array(clips, name)
            batch = list(arr) if (axes and axes.strip().upper().startswith("N")) or arr.ndim == 5 else None
        if batch is None:
            [one] = self._run([self._input(clips, clip_axes, name)], top_k)
            return one
        if not batch:
            raise CrossclrError(f"{name}: empty batch; expected at least one clip")
        return self._run([self._input(c, clip_axes, f"{name}[{i}]") for i, c in enumerate(batch)], top_k)

    def predict_prepared(self, x: np.ndarray, *, top_k: int = 5, name: str = "clip") -> Result:
        """Top-k of one clip already prepared for the model (C, T, V, M), e.g. by ``prepare``."""
        top_k = check_top_k(top_k, "top_k")
        check_coordinates(np.asarray(x), name)
        [one] = self._run([SkeletonInput(name, np.asarray(x, dtype=np.float32))], top_k)
        return one

    def _input(self, clip: Clip, axes: str | None, name: str) -> SkeletonInput:
        return SkeletonInput(name, self.prepare(clip, axes, name))

    def _run(self, inputs: list[SkeletonInput], top_k: int) -> list[Result]:
        return predict(self.session, inputs, top_k=top_k)
