"""Which CPUs an int8 model is accurate on, and a once-per-process warning when this one is not among them.

A static int8 model multiplies U8 activations by S8 weights. On x86 CPUs with VNNI (AVX512-VNNI, AVX-VNNI)
onnxruntime sums the u8·s8 products in int32 and is exact. Without VNNI (AVX2, AVX-512 without VNNI: e.g. AMD
Zen 3, Intel Skylake-SP) its MLAS kernels use VPMADDUBSW, which adds adjacent u8·s8 products into int16 with
saturation: two products of full-range weights reach 2·255·127 = 64770 > 32767, and the result is silently
wrong. Weights quantized to 7 bits (``reduce_range``, |w| ≤ 64) keep every pair within 2·255·64 = 32640, so
they are exact everywhere (onnxruntime docs, quantization FAQ:
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

Hence two int8 targets, recorded in the model's ``metadata_props`` key ``int8_target`` by ``crossclr export``:
``vnni`` (full-range weights: accurate only with VNNI) and ``portable`` (7-bit weights: accurate on every x86
CPU). Int8 models written before that key existed were quantized with full-range weights (the old default),
so they count as ``vnni`` unless their ``quantization_config`` says ``reduce_range``.

Torch-free and onnx-free: ``warn_int8_target_mismatch`` only reads the metadata dict and the cached CPU probe,
so it is cheap enough to call for every model a session opens.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping

from .hardware import CpuCaps, cpu_caps

log = logging.getLogger(__name__)

INT8_TARGET_KEY = "int8_target"  # metadata key: the target an int8 model was quantized for
QUANTIZATION_KEY = "quantization"  # metadata key present on every int8 model (value: export.quantize's tag)
QUANTIZATION_CONFIG_KEY = "quantization_config"  # metadata key: the resolved Int8Config as JSON
TARGET_VNNI = "vnni"  # full-range S8 weights: accurate only on CPUs with VNNI
TARGET_PORTABLE = "portable"  # 7-bit (reduce_range) S8 weights: accurate on every x86 CPU
INT8_TARGETS = (TARGET_VNNI, TARGET_PORTABLE)
_X86_ARCHES = frozenset({"x86_64", "amd64", "x64", "i386", "i686", "x86"})

_warned: set[str] = set()  # targets already warned about in this process
_lock = threading.Lock()


def native_target(caps: CpuCaps) -> str:
    """The target whose models are accurate on ``caps`` at full weight precision: ``vnni`` where int8 dot
    products cannot saturate, else ``portable``."""
    return TARGET_VNNI if caps.vnni else TARGET_PORTABLE


def model_int8_target(props: Mapping[str, str]) -> str | None:
    """The int8 target a model was made for, from its metadata; None for a float model.

    An int8 model without ``int8_target`` predates the key: ``portable`` when its ``quantization_config`` says
    ``reduce_range``, else ``vnni`` (the old default).
    """
    target = props.get(INT8_TARGET_KEY)
    if target is not None:
        return str(target)
    if QUANTIZATION_KEY not in props:
        return None
    try:
        config = json.loads(props.get(QUANTIZATION_CONFIG_KEY) or "{}")
    except (TypeError, ValueError):
        config = {}
    return TARGET_PORTABLE if isinstance(config, dict) and config.get("reduce_range") is True else TARGET_VNNI


def _is_x86(caps: CpuCaps) -> bool:
    return caps.arch.lower() in _X86_ARCHES


def warn_int8_target_mismatch(path: str, props: Mapping[str, str], caps: CpuCaps | None = None) -> None:
    """Log one warning per process (per target) when the int8 model at ``path`` may be inaccurate on this CPU.

    ``props``: the model's ``metadata_props`` as a dict. Warns when the model was made for ``vnni`` (or is an
    int8 model older than ``int8_target``, see ``model_int8_target``) and ``caps`` (default: this machine's
    probe) is an x86 CPU whose flags are known and lack VNNI. Silent for float and ``portable`` models, on
    VNNI CPUs, on other architectures, and where the CPU flags are unknown (no ``/proc/cpuinfo``). Never
    raises.
    """
    target = model_int8_target(props)
    if target != TARGET_VNNI:
        if target not in (None, TARGET_PORTABLE):
            log.debug("%s: unknown int8 target %r; not checked against this CPU", path, target)
        return
    caps = caps if caps is not None else cpu_caps()
    if not _is_x86(caps) or not caps.flags or caps.vnni:
        return
    with _lock:
        if target in _warned:
            return
        _warned.add(target)
    legacy = INT8_TARGET_KEY not in props
    what = ("was quantized before int8 targets were recorded, with full-range weights for VNNI CPUs" if legacy
            else "was quantized for CPUs with VNNI (int8 target 'vnni', full-range weights)")
    log.warning("%s: this int8 model %s; this CPU (%s) has no VNNI, so onnxruntime's int8 kernels may "
                "saturate and the model may lose accuracy here; re-export it with `crossclr export "
                "--quantize int8 --int8-target portable` (accurate on every x86 CPU) or use the fp32 model. "
                "(warned once per process)", path, what, caps.model)


def reset_int8_warnings() -> None:
    """Forget which warnings were given (for tests)."""
    with _lock:
        _warned.clear()
