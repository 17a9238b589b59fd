"""The int8-target warning: once per process for a VNNI-made (or older) int8 model on an x86 CPU without VNNI;
silent for portable and float models, on VNNI CPUs, on other architectures and where the flags are unknown."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from crossclr_infer import int8
from crossclr_infer.hardware import CpuCaps
from crossclr_infer.int8 import (
    TARGET_PORTABLE,
    TARGET_VNNI,
    model_int8_target,
    native_target,
    reset_int8_warnings,
    warn_int8_target_mismatch,
)

ZEN3 = CpuCaps(model="AMD Ryzen 9 5950X (fake)", arch="x86_64", cores=2,
               flags=frozenset({"sse4_1", "avx", "avx2", "fma"}))
SKYLAKE_SP = CpuCaps(model="Xeon Skylake-SP (fake)", arch="x86_64", flags=frozenset({"avx2", "avx512f"}))
ICE_LAKE = CpuCaps(model="Xeon Ice Lake (fake)", arch="x86_64",
                   flags=frozenset({"avx2", "avx512f", "avx512_vnni"}))
ALDER_LAKE = CpuCaps(model="Core Alder Lake (fake)", arch="x86_64", flags=frozenset({"avx2", "avx_vnni"}))
GRAVITON = CpuCaps(model="Graviton (fake)", arch="aarch64", flags=frozenset({"fp", "asimd"}))
UNKNOWN_X86 = CpuCaps(model="unknown CPU", arch="x86_64")  # no /proc/cpuinfo: flags unknown

BASE = {"crossclr_format": "crossclr-onnx-v1", "kind": "stream"}
VNNI_MODEL = {**BASE, "quantization": "int8-static-qdq", "int8_target": "vnni",
              "quantization_config": json.dumps({"target": "vnni", "reduce_range": False})}
PORTABLE_MODEL = {**BASE, "quantization": "int8-static-qdq", "int8_target": "portable",
                  "quantization_config": json.dumps({"target": "portable", "reduce_range": True})}
OLD_INT8_MODEL = {**BASE, "quantization": "int8-static-qdq",  # before int8_target: the full-range default
                  "quantization_config": json.dumps({"op_types": ["Conv"], "reduce_range": False})}
OLD_REDUCED_MODEL = {**BASE, "quantization": "int8-static-qdq",
                     "quantization_config": json.dumps({"op_types": ["Conv"], "reduce_range": True})}
FP32_MODEL = dict(BASE)


@pytest.fixture(autouse=True)
def fresh_memory():
    reset_int8_warnings()
    yield
    reset_int8_warnings()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == int8.__name__ and r.levelno == logging.WARNING]


@pytest.mark.parametrize("caps", [ZEN3, SKYLAKE_SP])
def test_vnni_model_on_a_cpu_without_vnni_warns_once(caplog, caps) -> None:
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        for path in ("a.int8.onnx", "a.int8.onnx", "b.int8.onnx"):
            warn_int8_target_mismatch(path, VNNI_MODEL, caps=caps)
        warn_int8_target_mismatch("old.int8.onnx", OLD_INT8_MODEL, caps=caps)  # same target: no second one
    (msg,) = warnings_of(caplog)
    assert msg.startswith("a.int8.onnx: ") and caps.model in msg
    assert "VNNI" in msg and "lose accuracy" in msg and "--int8-target portable" in msg


def test_old_int8_model_counts_as_vnni_made_and_warns_once(caplog) -> None:
    assert model_int8_target(OLD_INT8_MODEL) == TARGET_VNNI
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        warn_int8_target_mismatch("old.int8.onnx", OLD_INT8_MODEL, caps=ZEN3)
        warn_int8_target_mismatch("old.int8.onnx", OLD_INT8_MODEL, caps=ZEN3)
    (msg,) = warnings_of(caplog)
    assert msg.startswith("old.int8.onnx: ") and "before int8 targets were recorded" in msg
    assert "--int8-target portable" in msg


def test_reset_lets_the_warning_come_again(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        warn_int8_target_mismatch("a.onnx", VNNI_MODEL, caps=ZEN3)
        reset_int8_warnings()
        warn_int8_target_mismatch("a.onnx", VNNI_MODEL, caps=ZEN3)
    assert len(warnings_of(caplog)) == 2


@pytest.mark.parametrize(("props", "caps"), [
    (PORTABLE_MODEL, ZEN3),        # portable models are exact on every x86 CPU
    (OLD_REDUCED_MODEL, ZEN3),     # an older model quantized with reduce_range is portable too
    (FP32_MODEL, ZEN3),            # float models
    ({}, ZEN3),                    # no metadata at all
    (VNNI_MODEL, ICE_LAKE),        # AVX512-VNNI
    (VNNI_MODEL, ALDER_LAKE),      # AVX-VNNI
    (OLD_INT8_MODEL, ICE_LAKE),
    (VNNI_MODEL, GRAVITON),        # not x86: ORT's arm kernels do not use VPMADDUBSW
    (VNNI_MODEL, UNKNOWN_X86),     # flags unknown: cannot tell, no false alarm
    ({**BASE, "int8_target": "amx"}, ZEN3),  # a target this version does not know
])
def test_silent_where_the_model_is_accurate_or_nothing_is_known(caplog, props, caps) -> None:
    with caplog.at_level(logging.DEBUG, logger=int8.__name__):
        warn_int8_target_mismatch("m.onnx", props, caps=caps)
    assert warnings_of(caplog) == []


def test_default_caps_are_this_machines_probe(caplog, monkeypatch) -> None:
    monkeypatch.setattr(int8, "cpu_caps", lambda: ZEN3)
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        warn_int8_target_mismatch("a.onnx", VNNI_MODEL)
    assert len(warnings_of(caplog)) == 1
    reset_int8_warnings()
    caplog.clear()
    monkeypatch.setattr(int8, "cpu_caps", lambda: ICE_LAKE)
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        warn_int8_target_mismatch("a.onnx", VNNI_MODEL)
    assert warnings_of(caplog) == []


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", "null", ""])
def test_junk_quantization_config_never_raises(caplog, config) -> None:
    props = {**BASE, "quantization": "int8-static-qdq", "quantization_config": config}
    assert model_int8_target(props) == TARGET_VNNI
    with caplog.at_level(logging.WARNING, logger=int8.__name__):
        warn_int8_target_mismatch("j.onnx", props, caps=ZEN3)
    assert len(warnings_of(caplog)) == 1


def test_model_and_native_targets() -> None:
    assert model_int8_target(VNNI_MODEL) == TARGET_VNNI
    assert model_int8_target(PORTABLE_MODEL) == TARGET_PORTABLE
    assert model_int8_target(OLD_REDUCED_MODEL) == TARGET_PORTABLE
    assert model_int8_target(FP32_MODEL) is None
    assert native_target(ICE_LAKE) == native_target(ALDER_LAKE) == TARGET_VNNI
    assert native_target(ZEN3) == native_target(SKYLAKE_SP) == native_target(UNKNOWN_X86) == TARGET_PORTABLE


def test_module_is_torch_and_onnx_free() -> None:
    code = ("import sys, crossclr_infer.int8; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "sys.exit(str(bad) if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)
