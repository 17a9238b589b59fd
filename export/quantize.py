"""Static int8 quantization of exported models, calibrated on cache samples, with the accuracy change.

Default (``Int8Config()``), chosen by measurement (benchmarks/bench_infer.py, interleaved A/B against fp32 ORT
on 2 Zen 5 cores; tried: per-tensor weights, reduce_range, Entropy/Percentile calibration, Conv+MatMul(+Gemm),
QOperator format, ActivationSymmetric, S8 activations, all op types, with and without pre-processing):
QDQ format, U8 asymmetric activations, S8 symmetric per-channel weights, MinMax calibration on 512 cache
samples, only the convolutions quantized, after onnxruntime's ``quant_pre_process`` graph optimization
(without symbolic shape inference). Quantizing the graph MatMuls and the Gemm heads too was slower and changed
more predictions; the graph einsum and the fusion stay float. Dynamic quantization was measured 2× slower than
fp32 on this encoder, so it is not offered.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.session import INPUT_NAME

log = logging.getLogger(__name__)

QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")
QUANTIZATION_TAG = "int8-static-qdq"  # metadata ``quantization`` of every int8 model (QDQ or QOperator)


@dataclass(frozen=True)
class Int8Config:
    """How ``quantize_int8`` quantizes; the defaults are the measured best (module docstring)."""

    op_types: tuple[str, ...] = ("Conv",)
    per_channel: bool = True
    reduce_range: bool = False
    calibration: str = "minmax"
    calib_count: int = 512
    quant_format: str = "qdq"
    activation_symmetric: bool = False
    preprocess: bool = True        # onnxruntime quant_pre_process (graph optimization) before quantizing
    symbolic_shape: bool = False   # ... with its symbolic shape inference (measured slower here)

    def __post_init__(self) -> None:
        bad = [o for o in self.op_types if o not in QUANTIZABLE_OPS]
        if bad or not self.op_types:
            raise CrossclrError(f"int8 op types {list(self.op_types)}: expected a non-empty subset of "
                                f"{list(QUANTIZABLE_OPS)}")
        if self.calibration not in CALIBRATION_METHODS:
            raise CrossclrError(f"int8 calibration {self.calibration!r}: expected one of "
                                f"{list(CALIBRATION_METHODS)}")
        if self.quant_format not in QUANT_FORMATS:
            raise CrossclrError(f"int8 format {self.quant_format!r}: expected one of {list(QUANT_FORMATS)}")
        if self.calib_count < 1:
            raise CrossclrError(f"int8 calibration samples {self.calib_count}: expected at least 1")

    def describe(self) -> str:
        return (f"static {self.quant_format.upper()} int8 of {'+'.join(self.op_types)} (U8 "
                f"{'symmetric' if self.activation_symmetric else 'asymmetric'} activations, S8 "
                f"{'per-channel' if self.per_channel else 'per-tensor'} weights"
                f"{', reduce_range' if self.reduce_range else ''}), {self.calibration} calibration"
                f"{'' if self.preprocess else ', no pre-processing'}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


DEFAULT_INT8 = Int8Config()


def calibration_samples(cache_path: str | Path, count: int = DEFAULT_INT8.calib_count,
                        split: str | None = None) -> np.ndarray:
    """Up to ``count`` samples evenly spread over the train split (or the first split) of a cache."""
    from crossclr_infer.cache import open_cache

    with open_cache(cache_path) as cache:
        name = split or ("train" if "train" in cache.splits else cache.splits[0])
        sp = cache.split(name)
        if len(sp) == 0:
            raise CrossclrError(f"{cache_path}: split {name!r} is empty; nothing to calibrate on")
        idx = np.unique(np.linspace(0, len(sp) - 1, num=min(count, len(sp))).round().astype(np.int64))
        return sp.read(idx).astype(np.float32)


class _Reader:
    """onnxruntime CalibrationDataReader over an array (N, C, T, V, M), a few samples per batch."""

    def __init__(self, x: np.ndarray, batch: int = 16) -> None:
        self._x, self._batch = x, batch
        self._it = self._gen()

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for s in range(0, len(self._x), self._batch):
            yield {INPUT_NAME: self._x[s:s + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._gen()


def quantize_int8(src: Path, dst: Path, calib: np.ndarray, config: Int8Config = DEFAULT_INT8) -> None:
    """Static int8 quantization of ``src`` into ``dst`` as ``config`` says, calibrated on ``calib``.

    The fp32 model's metadata is copied; ``quantization`` = ``int8-static-qdq`` and ``quantization_config``
    (the config as JSON) are added.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("CrossclrCalibration", (_Reader, CalibrationDataReader), {})(calib)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[config.calibration]
    fmt = QuantFormat.QDQ if config.quant_format == "qdq" else QuantFormat.QOperator
    # (no CalibMaxIntermediateOutputs: onnxruntime 1.32 then fails with "No data is collected" whenever the
    # batch count is a multiple of it; MinMax keeps only per-batch reduced ranges, so memory stays small)
    extra: dict[str, Any] = {"ActivationSymmetric": config.activation_symmetric}
    with tempfile.TemporaryDirectory(dir=dst.parent) as td:
        pre = Path(td) / "pre.onnx"
        if config.preprocess:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=not config.symbolic_shape)
        else:
            pre = src
        quantize_static(str(pre), str(dst), reader, quant_format=fmt, per_channel=config.per_channel,
                        reduce_range=config.reduce_range, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=list(config.op_types),
                        calibrate_method=method, extra_options=extra)
    fp = onnx.load(str(src))
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    for p in fp.metadata_props:
        q.metadata_props.add(key=p.key, value=p.value)
    q.metadata_props.add(key="quantization", value=QUANTIZATION_TAG)
    q.metadata_props.add(key="quantization_config", value=config.to_json())
    onnx.checker.check_model(q)
    onnx.save(q, str(dst))


def predictions_on_cache(model: Path, cache_path: str | Path, max_samples: int, batch: int = 64
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, label) of a model's ``logits`` on at most ``max_samples`` evenly spread samples of
    the val split (else the first split)."""
    from crossclr_infer.cache import open_cache
    from crossclr_infer.session import ModelSession

    sess = ModelSession(model, ["cpu"])
    with open_cache(cache_path) as cache:
        sp = cache.split("val" if "val" in cache.splits else cache.splits[0])
        n = min(len(sp), max_samples)
        idx = (np.unique(np.linspace(0, len(sp) - 1, num=n).round().astype(np.int64)) if n
               else np.zeros(0, np.int64))
        labels = np.asarray(sp.labels)[idx]
        preds = [sess.run(sp.read(idx[s:s + batch]), ["logits"])["logits"].argmax(1)
                 for s in range(0, len(idx), batch)]
    return (np.concatenate(preds) if preds else np.zeros(0, np.int64)), labels


def top1_on_cache(model: Path, cache_path: str | Path, max_samples: int, batch: int = 64) -> tuple[float,
                                                                                                   int]:
    """Top-1 (%) of a model's ``logits`` on the val split (else the first split), at most ``max_samples``."""
    pred, labels = predictions_on_cache(model, cache_path, max_samples, batch)
    return (100.0 * float((pred == labels).mean()) if len(labels) else 0.0), int(len(labels))


def quantize_models(folder: Path, files: Mapping[str, str], cache_path: str | Path, meta: Any, *,
                    float_parity: Mapping[str, Any] | None = None, calib_count: int | None = None,
                    max_eval: int = 4096, config: Int8Config = DEFAULT_INT8) -> dict[str, Any]:
    """Quantize every model file in ``folder`` into ``NAME.int8.onnx``; report fp32 vs int8 top-1 on the cache
    and the share of samples whose predicted class is unchanged. ``calib_count`` overrides
    ``config.calib_count``."""
    calib = calibration_samples(cache_path, calib_count or config.calib_count)
    out: dict[str, Any] = {}
    for name, fname in files.items():
        src = folder / fname
        dst = folder / f"{name}.int8.onnx"
        quantize_int8(src, dst, calib, config)
        fp_pred, labels = predictions_on_cache(src, cache_path, max_eval)
        q_pred, _ = predictions_on_cache(dst, cache_path, max_eval)
        n = int(len(labels))
        fp_acc = 100.0 * float((fp_pred == labels).mean()) if n else 0.0
        q_acc = 100.0 * float((q_pred == labels).mean()) if n else 0.0
        agree = 100.0 * float((fp_pred == q_pred).mean()) if n else 100.0
        out[name] = {"file": dst.name, "method": config.describe(), "config": json.loads(config.to_json()),
                     "calibration_samples": int(len(calib)), "eval_samples": n, "top1_fp32": fp_acc,
                     "top1_int8": q_acc, "top1_change_pt": q_acc - fp_acc, "prediction_agreement_pct": agree}
        log.info("%s: int8 top-1 %.2f%% vs fp32 %.2f%% (%+.2f pt on %d samples; %.1f%% same predictions)",
                 name, q_acc, fp_acc, q_acc - fp_acc, n, agree)
    return out
