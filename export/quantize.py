"""int8 quantization of exported models with the accuracy change: static (calibrated on cache samples) for
ST-GCN-like encoders, dynamic for encoder kinds whose serving form asks for it (export.serving; the
transformer).

Default (``Int8Config()``), chosen by measurement (benchmarks/bench_infer.py, interleaved A/B against fp32 ORT
on 2 Zen 5 cores, a CPU with AVX512-VNNI; tried: per-tensor weights, reduce_range, Entropy/Percentile
calibration, Conv+MatMul(+Gemm), QOperator format, ActivationSymmetric, S8 activations, all op types, with and
without pre-processing): QDQ format, U8 asymmetric activations, S8 symmetric per-channel weights, MinMax
calibration on 512 cache samples, only the convolutions quantized, after onnxruntime's ``quant_pre_process``
graph optimization (without symbolic shape inference). Quantizing the graph MatMuls and the Gemm heads too was
slower and changed more predictions; the graph einsum and the fusion stay float. Dynamic quantization was
measured 2× slower than fp32 on the ST-GCN encoder, so ST-GCNs are quantized statically. Encoder kinds
registered with ``int8="dynamic"`` (``export.serving.register_serving``: the transformer) get ``dynamic_int8``
instead: ``Int8Config.dynamic``, onnxruntime's ``quantize_dynamic`` of the MatMul/Gemm weights, no calibration
(metadata ``quantization`` = ``int8-dynamic``).

Weight range by CPU target (``Int8Config.target``, recorded as metadata ``int8_target``; see
``crossclr_infer.int8``): ``vnni`` = full-range S8 weights (|w| ≤ 127), the measured default above, accurate
only on CPUs with VNNI; ``portable`` = 7-bit weights (``reduce_range``, |w| ≤ 64), accurate on every x86 CPU.
Without VNNI (AVX2, AVX-512 without VNNI, e.g. AMD Zen 3) onnxruntime's MLAS computes U8S8 products with
VPMADDUBSW, which adds adjacent u8·s8 products in int16 with saturation (2·255·127 > 32767; 2·255·64 ≤ 32767);
onnxruntime's quantization docs name reduce_range as the remedy on such machines (FAQ,
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html). ``auto`` (the default)
resolves when quantizing, from the exporting machine's probe ``crossclr_infer.hardware.cpu_caps().vnni``:
``vnni`` where it has VNNI, else ``portable``. A ``vnni`` model opened on a CPU without VNNI logs a warning
(``crossclr_infer.int8.warn_int8_target_mismatch``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.hardware import CpuCaps, cpu_caps
from crossclr_infer.int8 import (
    INT8_TARGET_KEY,
    QUANTIZATION_CONFIG_KEY,
    QUANTIZATION_KEY,
    TARGET_PORTABLE,
    TARGET_VNNI,
    native_target,
)
from crossclr_infer.session import INPUT_NAME

log = logging.getLogger(__name__)

QUANTIZABLE_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
QUANT_FORMATS = ("qdq", "qoperator")
QUANTIZATION_TAG = "int8-static-qdq"  # metadata ``quantization`` of static int8 models (QDQ or QOperator)
QUANTIZATION_TAG_DYNAMIC = "int8-dynamic"  # ... of dynamic ones (transformer encoders)
TARGET_AUTO = "auto"
INT8_CONFIG_TARGETS = (TARGET_AUTO, TARGET_VNNI, TARGET_PORTABLE)
_REDUCE_RANGE = {TARGET_VNNI: False, TARGET_PORTABLE: True}  # 7-bit weights for the portable target


@dataclass(frozen=True)
class Int8Config:
    """How ``quantize_int8`` quantizes; the defaults are the measured best (module docstring).

    ``target``: the CPUs the model must be accurate on: ``vnni`` (full-range S8 weights), ``portable`` (7-bit
    weights, every x86 CPU) or ``auto`` (resolved by ``resolved()`` when quantizing: ``vnni`` if the exporting
    CPU has VNNI, else ``portable``). ``reduce_range`` follows the target (``vnni`` False, ``portable`` True;
    None while ``auto``); setting it explicitly with ``auto`` pins the target it implies, and a value that
    contradicts an explicit target is an error. Equal settings compare equal however they were spelled.
    """

    op_types: tuple[str, ...] = ("Conv",)
    per_channel: bool = True
    target: str = TARGET_AUTO
    reduce_range: bool | None = None
    calibration: str = "minmax"
    calib_count: int = 512
    quant_format: str = "qdq"
    activation_symmetric: bool = False
    preprocess: bool = True        # onnxruntime quant_pre_process (graph optimization) before quantizing
    symbolic_shape: bool = False   # ... with its symbolic shape inference (measured slower here)
    dynamic: bool = False          # activations quantized at run time, no calibration (transformers)

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
        self._settle_target()

    def _settle_target(self) -> None:
        """Make ``target`` and ``reduce_range`` agree (see the class docstring)."""
        if self.target not in INT8_CONFIG_TARGETS:
            raise CrossclrError(f"int8 target {self.target!r}: expected one of {list(INT8_CONFIG_TARGETS)}")
        if self.reduce_range is None:
            if self.target != TARGET_AUTO:
                object.__setattr__(self, "reduce_range", _REDUCE_RANGE[self.target])
            return
        implied = TARGET_PORTABLE if self.reduce_range else TARGET_VNNI
        if self.target == TARGET_AUTO:
            object.__setattr__(self, "target", implied)
        elif self.target != implied:
            raise CrossclrError(f"int8 target {self.target!r} contradicts reduce_range={self.reduce_range}; "
                                f"drop reduce_range (the target sets it) or use target {implied!r}")

    @property
    def is_resolved(self) -> bool:
        """True when the target is concrete (not ``auto``)."""
        return self.target != TARGET_AUTO

    def resolved(self, caps: CpuCaps | None = None) -> Int8Config:
        """This config with ``auto`` replaced by the target for ``caps`` (default: this machine's CPU probe):
        ``vnni`` when it has VNNI, else ``portable``. A concrete target is returned unchanged."""
        if self.is_resolved:
            return self
        return replace(self, target=native_target(caps if caps is not None else cpu_caps()))

    def describe(self) -> str:
        """One line; an ``auto`` target is shown with what it resolves to on this machine."""
        r = self.resolved()
        target = r.target if self.is_resolved else f"{r.target} (auto on this CPU)"
        weights = "full-range" if r.target == TARGET_VNNI else "7-bit reduce_range"
        if self.dynamic:
            grain = "per-channel" if self.per_channel else "per-tensor"
            return (f"dynamic int8 of {'+'.join(self.op_types)} (activations quantized at run time, S8 "
                    f"{grain} {weights} weights, target {target})")
        return (f"static {self.quant_format.upper()} int8 of {'+'.join(self.op_types)} (U8 "
                f"{'symmetric' if self.activation_symmetric else 'asymmetric'} activations, S8 "
                f"{'per-channel' if self.per_channel else 'per-tensor'} {weights} weights, target {target}), "
                f"{self.calibration} calibration{'' if self.preprocess else ', no pre-processing'}")

    def to_json(self) -> str:
        """The fields as JSON (the metadata ``quantization_config`` holds the resolved config's)."""
        return json.dumps(asdict(self), sort_keys=True)


DEFAULT_INT8 = Int8Config()


def dynamic_int8(config: Int8Config) -> Int8Config:
    """The int8 recipe of encoder kinds registered with dynamic int8 (the transformer): dynamic quantization
    of their MatMul/Gemm weights (the target's weight range kept). Static calibration would record every
    attention map (750 × 750 per head and layer): a static run on the official size with 32 calibration
    clips was killed (SIGKILL, memory on a 24 GiB machine, not profiled further); dynamic int8 ran 2.07× the
    fp32 model at batch 1 (``benchmarks/bench_transformer.py``, Intel Xeon, one thread)."""
    return replace(config, dynamic=True, op_types=("MatMul", "Gemm"))


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


def resolve_logged(config: Int8Config) -> Int8Config:
    """``config.resolved()`` for this machine, logging what an ``auto`` target became and why."""
    if config.is_resolved:
        return config
    resolved = config.resolved()
    log.info("int8 target auto -> %s (this CPU %s VNNI)", resolved.target,
             "has" if resolved.target == TARGET_VNNI else "lacks")
    return resolved


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


def quantize_int8(src: Path, dst: Path, calib: np.ndarray, config: Int8Config = DEFAULT_INT8) -> Int8Config:
    """int8 quantization of ``src`` into ``dst`` as ``config`` says: static, calibrated on ``calib``, or
    dynamic when ``config.dynamic`` (``calib`` unused); returns the config used (``config.resolved()``: an
    ``auto`` target resolved for this machine's CPU).

    The fp32 model's metadata is copied; ``quantization`` = ``int8-static-qdq`` (``int8-dynamic``),
    ``quantization_config`` (the resolved config as JSON) and ``int8_target`` (``vnni`` or ``portable``) are
    added.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    config = resolve_logged(config)
    if config.dynamic:
        return _quantize_dynamic(src, dst, config)
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
    _copy_metadata(src, dst, config)
    return config


def _quantize_dynamic(src: Path, dst: Path, config: Int8Config) -> Int8Config:
    """Dynamic int8 (onnxruntime's quantize_dynamic: S8 weights, activations quantized per call)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(config.op_types),
                     per_channel=config.per_channel, reduce_range=bool(config.reduce_range),
                     weight_type=QuantType.QInt8)
    _copy_metadata(src, dst, config)
    return config


def _copy_metadata(src: Path, dst: Path, config: Int8Config) -> None:
    """The fp32 model's metadata on the int8 model, plus the quantization keys; the result is checked."""
    import onnx

    fp = onnx.load(str(src))
    q = onnx.load(str(dst))
    del q.metadata_props[:]
    for p in fp.metadata_props:
        q.metadata_props.add(key=p.key, value=p.value)
    q.metadata_props.add(key=QUANTIZATION_KEY, value=QUANTIZATION_TAG_DYNAMIC if config.dynamic
                         else QUANTIZATION_TAG)
    q.metadata_props.add(key=QUANTIZATION_CONFIG_KEY, value=config.to_json())
    q.metadata_props.add(key=INT8_TARGET_KEY, value=config.target)
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


def quantize_models(folder: Path, files: Mapping[str, str], cache_path: str | Path, meta: Any, *,
                    float_parity: Mapping[str, Any] | None = None, calib_count: int | None = None,
                    max_eval: int = 4096, config: Int8Config = DEFAULT_INT8, eval_batch: int = 64
                    ) -> dict[str, Any]:
    """Quantize every model file in ``folder`` into ``NAME.int8.onnx``; report fp32 vs int8 top-1 on the cache
    (``eval_batch`` samples per call) and the share of samples whose predicted class is unchanged.
    ``calib_count`` overrides ``config.calib_count``; an ``auto`` target is resolved once for all models
    (report key ``int8_target``)."""
    config = resolve_logged(config)
    calib = (np.zeros((0,), np.float32) if config.dynamic
             else calibration_samples(cache_path, calib_count or config.calib_count))
    out: dict[str, Any] = {}
    for name, fname in files.items():
        src = folder / fname
        dst = folder / f"{name}.int8.onnx"
        quantize_int8(src, dst, calib, config)
        fp_pred, labels = predictions_on_cache(src, cache_path, max_eval, eval_batch)
        q_pred, _ = predictions_on_cache(dst, cache_path, max_eval, eval_batch)
        n = int(len(labels))
        fp_acc = 100.0 * float((fp_pred == labels).mean()) if n else 0.0
        q_acc = 100.0 * float((q_pred == labels).mean()) if n else 0.0
        agree = 100.0 * float((fp_pred == q_pred).mean()) if n else 100.0
        out[name] = {"file": dst.name, "method": config.describe(), "config": json.loads(config.to_json()),
                     "int8_target": config.target, "calibration_samples": int(len(calib)), "eval_samples": n,
                     "top1_fp32": fp_acc, "top1_int8": q_acc, "top1_change_pt": q_acc - fp_acc,
                     "prediction_agreement_pct": agree}
        log.info("%s: int8 top-1 %.2f%% vs fp32 %.2f%% (%+.2f pt on %d samples; %.1f%% same predictions)",
                 name, q_acc, fp_acc, q_acc - fp_acc, n, agree)
    return out
