"""Inference backends behind ``ModelSession``: onnxruntime and the OpenVINO runtime (extra ``openvino``).

Why the OpenVINO runtime directly and not onnxruntime's OpenVINO execution provider (docs/backends.md): the
provider (``onnxruntime-ep-openvino`` 1.8.1, a plugin registered with
``onnxruntime.register_execution_provider_library``) offers no device at all on a non-Intel CPU
(``get_ep_devices()`` lists only onnxruntime's own CPU device on an AMD EPYC), and it loads a second copy of
OpenVINO into the process. ``openvino.Core`` compiles the same ONNX file on any x86-64 or ARM CPU and
reports what it compiled (``INFERENCE_PRECISION_HINT``, ``EXECUTION_DEVICES``), which the precision check
needs.

``auto`` (``choose_backend``, then ``ModelSession``): a float32 transformer runs on OpenVINO in bf16 where
OpenVINO has native bf16 and a recorded accuracy check passed (``crossclr_infer.precision``); otherwise in
fp32 on OpenVINO when its graph has no fused attention op (plain MatMul/Softmax attention: OpenVINO f32
1.15-1.25x onnxruntime), on onnxruntime when it has one (``crossclr export``'s default since fused
attention: onnxruntime's fused kernel is as fast as OpenVINO f32). Everything else — the ST-GCN exports
(OpenVINO 0.43-0.65x of onnxruntime), int8 and fp16 models, any explicit ``--providers`` — runs on
onnxruntime. Figures: docs/backends.md (AMD EPYC with AVX512-BF16, no AMX).

The model is given to OpenVINO as bytes, and a model that keeps tensors in external files is refused before
OpenVINO sees it: from bytes, OpenVINO resolves external data against the working directory (it refuses paths
outside it), so a model could otherwise read files of whatever folder the command runs in. onnxruntime, which
resolves them inside the model's folder and refuses absolute paths, runs such models (``--backend auto`` falls
back to it).
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import CrossclrError
from .hardware import cpu_caps

log = logging.getLogger(__name__)

BACKENDS = ("auto", "onnxruntime", "openvino")
PRECISIONS = ("auto", "fp32", "bf16")
OPENVINO_EXTRA = "pip install 'crossclr[openvino]'"
OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}  # our names -> INFERENCE_PRECISION_HINT values
OV_DEVICE = "CPU"
# How an ONNX TensorProto names an external file: a StringStringEntryProto whose key (field 1) is "location".
_EXTERNAL_DATA_MARK = b"\x0a\x08location"
# A node whose op_type (NodeProto field 4) is a fused attention op: com.microsoft MultiHeadAttention or
# Attention, or ONNX Attention (opset 23), as `crossclr export --attention` writes them.
_FUSED_ATTENTION_MARKS = (b"\x22\x12MultiHeadAttention", b"\x22\x09Attention")


def check_choice(value: str, choices: Sequence[str], option: str) -> str:
    """``value`` lower-cased when it is one of ``choices``, else a one-line CrossclrError naming
    ``option``."""
    v = str(value).strip().lower()
    if v not in choices:
        raise CrossclrError(f"{option} {value!r}: expected one of {', '.join(choices)}")
    return v


def openvino_installed() -> bool:
    """Whether the ``openvino`` package can be imported (looked up without importing it)."""
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def import_openvino() -> Any:
    """The openvino module, or a one-line CrossclrError naming the extra."""
    try:
        import openvino
    except ImportError:
        raise CrossclrError(f"--backend openvino: OpenVINO is not installed; install it with "
                            f"{OPENVINO_EXTRA}") from None
    return openvino


def openvino_version() -> str:
    """The installed OpenVINO version (``2026.4.1-…``), or "" when it is not installed."""
    if not openvino_installed():
        return ""
    return str(import_openvino().get_version())


def onnxruntime_version() -> str:
    try:
        import onnxruntime
    except ImportError:
        return ""
    return str(onnxruntime.__version__)


def openvino_native_bf16() -> bool:
    """OpenVINO's CPU plugin computes bf16 natively here: the CPU has AVX512-BF16 or AMX, no
    ``ONEDNN_MAX_CPU_ISA`` caps it away (``hardware.CpuCaps.native_bf16``), and OpenVINO lists BF16 among the
    CPU's optimization capabilities. The cap matters: OpenVINO 2026.4 still lists BF16 and still defaults to
    bf16 under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE``, whose capped kernels then emulate it (20x slower than f32
    on an AMD EPYC), and under ``AVX2`` it cannot compile a transformer in bf16 at all."""
    if not cpu_caps().native_bf16:
        return False
    return "BF16" in _ov_core().get_property(OV_DEVICE, "OPTIMIZATION_CAPABILITIES")


_CORE_LOCK = threading.Lock()
_CORE: list[Any] = []


def _ov_core() -> Any:
    """One ``openvino.Core`` per process (creating one loads the plugins: tens of milliseconds)."""
    with _CORE_LOCK:
        if not _CORE:
            _CORE.append(import_openvino().Core())
        return _CORE[0]


def is_transformer(config: dict) -> bool:
    """The model's metadata ``config`` (a training config or its ``model`` part) names a transformer
    encoder."""
    model = config.get("model", config) if isinstance(config, dict) else None
    return isinstance(model, dict) and model.get("graph") == "transformer"


def choose_backend(requested: str, *, transformer: bool, model_precision: str, providers_given: bool,
                   precision: str, openvino_ok: bool) -> str:
    """The backend a model may run on (see the module docstring for the ``auto`` rule). ``ModelSession``
    then keeps OpenVINO under ``auto`` only when it runs bf16, or fp32 on a graph without fused attention."""
    if requested != "auto":
        return requested
    if providers_given or not openvino_ok or model_precision != "fp32":
        return "onnxruntime"
    if transformer or precision == "bf16":
        return "openvino"
    return "onnxruntime"


# ---------------------------------------------------------------------------------------------- OpenVINO


def _message(e: BaseException) -> str:
    """The informative line of an OpenVINO exception (its first lines name OpenVINO's own source file)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    text = (useful or lines or [type(e).__name__])[0]
    return text.encode("ascii", "backslashreplace").decode()[:200]


def _dims(partial_shape: Any) -> list[Any]:
    """An OpenVINO partial shape as onnxruntime reports shapes: ints, and a name for dynamic axes."""
    return [d.get_length() if d.is_static else "batch" for d in partial_shape]


class OpenVINOModel:
    """A crossclr ONNX model read by OpenVINO: its metadata (``rt_info['framework']`` holds the ONNX
    ``metadata_props``), input and output signatures, and compiled forms of it on the CPU."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        if _EXTERNAL_DATA_MARK in data:
            raise CrossclrError(f"{path}: the model keeps tensors in external files; OpenVINO would look "
                                "for them in the working directory, so it does not run such models (use "
                                "--backend onnxruntime)")
        core = _ov_core()
        try:
            self._model = core.read_model(data)
        except Exception as e:  # OpenVINO raises RuntimeError/GeneralFailure with multi-line messages
            raise CrossclrError(f"{path}: not a loadable ONNX model for OpenVINO ({_message(e)})") from None
        props: dict[str, str] = {}
        if self._model.has_rt_info(["framework"]):
            for key, value in self._model.get_rt_info()["framework"].items():
                props[str(key)] = value.astype(str) if hasattr(value, "astype") else str(value)
        self.props = props
        self.input_names = [i.get_any_name() for i in self._model.inputs]
        self.input_shape = _dims(self._model.inputs[0].get_partial_shape()) if self._model.inputs else []
        self.output_names = [o.get_any_name() for o in self._model.outputs]
        self.output_shapes = {o.get_any_name(): _dims(o.get_partial_shape()) for o in self._model.outputs}
        self.fused_attention = any(mark in data for mark in _FUSED_ATTENTION_MARKS)

    def compile(self, precision: str, threads: int) -> OpenVINOCompiled:
        """The model compiled for the CPU at ``precision`` (fp32 / bf16) on ``threads`` threads."""
        config = {"INFERENCE_PRECISION_HINT": OV_PRECISION[precision], "INFERENCE_NUM_THREADS": int(threads),
                  "PERFORMANCE_HINT": "LATENCY"}
        try:
            compiled = _ov_core().compile_model(self._model, OV_DEVICE, config)
        except Exception as e:
            raise CrossclrError(f"{self.path}: OpenVINO cannot compile the model ({_message(e)})") from None
        return OpenVINOCompiled(compiled, self.output_names)


class OpenVINOCompiled:
    """A compiled model and one infer request, run one call at a time (a lock: ``run`` may be called from
    worker threads, e.g. the stream's model thread)."""

    def __init__(self, compiled: Any, output_names: Sequence[str]) -> None:
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._index = {name: i for i, name in enumerate(output_names)}
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = "bf16" if any(t in str(hint).lower() for t in ("bf16", "bfloat16")) else "fp32"
        self.devices = [str(d) for d in compiled.get_property("EXECUTION_DEVICES")]
        self.threads = int(compiled.get_property("INFERENCE_NUM_THREADS"))

    def run(self, x: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """The outputs ``names`` for the batch ``x`` (copied out of OpenVINO's buffers)."""
        with self._lock:
            res = self._request.infer({0: x})
            return [np.array(res[self._index[n]], dtype=np.float32, copy=True) for n in names]


def system_lines() -> list[str]:
    """CPU probe plus the versions and providers of the libraries that run models (for ``info --system``)."""
    import importlib.metadata as md
    import sys

    lines = [f"cpu:          {cpu_caps().line()}", f"python:       {sys.version.split()[0]}"]
    for dist in ("crossclr", "numpy", "onnxruntime", "onnxruntime-gpu", "torch"):
        try:
            lines.append(f"{dist + ':':13s} {md.version(dist)}")
        except md.PackageNotFoundError:
            continue
    try:
        import onnxruntime as ort

        lines.append(f"ort providers: {', '.join(ort.get_available_providers())}")
    except ImportError:
        lines.append("ort providers: onnxruntime not installed (extra cpu or gpu)")
    lines.append(_openvino_line())
    return lines


def _openvino_line() -> str:
    """OpenVINO's version, devices and whether its CPU plugin has native bf16 here."""
    if not openvino_installed():
        return "openvino:     not installed (extra openvino: --backend openvino, bf16 inference)"
    try:
        devices = ", ".join(_ov_core().available_devices)
        bf16 = "native bf16" if openvino_native_bf16() else "no native bf16 (fp32 only)"
        return f"openvino:     {openvino_version()} (devices {devices}; {bf16})"
    except Exception as e:  # noqa: BLE001 - a broken install is reported, not raised, by `info --system`
        return f"openvino:     installed but not usable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
