"""Sessions: provider choice and fallback (faked onnxruntime reports), metadata, input checks, errors.

The models here are hand-built with onnx.helper (no torch): features = mean of the skeleton over T, V, M;
logits_v = features @ W_v; the ensemble fuses Σ w_v·logits_v and applies softmax.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import session as session_mod
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import BUILTIN_LAYOUTS, Layout, layout_to_toml
from crossclr_infer.session import ModelSession, parse_metadata, resolve_providers
from tests.helpers import cli_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]


def weights_for(streams: Sequence[str], num_class: int, channels: int = 3, seed: int = 0) -> dict[str,
                                                                                                  np.ndarray]:
    rng = np.random.default_rng(seed)
    return {v: rng.standard_normal((channels, num_class)).astype(np.float32) for v in streams}


def build_model(path: Path, *, kind: str = "ensemble", streams: Sequence[str] = ("joint", "motion"),
                class_names: Sequence[str] = ("a", "b", "c", "d", "e", "f"), layout: Layout = NTU,
                frames: int = 50, num_person: int = 2, channels: int = 3,
                fusion: dict[str, float] | None = None, seed: int = 0, props: dict[str, str] | None = None,
                drop_props: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """Write a tiny crossclr-format model; returns its weight matrices {stream: (C, K)}."""
    from onnx import TensorProto, helper, numpy_helper

    k = len(class_names)
    fusion = fusion or {v: 0.5 + 0.25 * i for i, v in enumerate(streams)}
    w = weights_for(streams, k, channels, seed)
    nodes = [helper.make_node("ReduceMean", ["skeleton"], ["feat"], axes=[2, 3, 4], keepdims=0)]
    inits = []
    for v in streams:
        inits.append(numpy_helper.from_array(w[v], f"W_{v}"))
        nodes.append(helper.make_node("MatMul", ["feat", f"W_{v}"], [f"logits_{v}"]))
    outs = []
    if kind == "ensemble":
        acc = None
        for v in streams:
            inits.append(numpy_helper.from_array(np.array(fusion[v], np.float32), f"w_{v}"))
            nodes.append(helper.make_node("Mul", [f"logits_{v}", f"w_{v}"], [f"wl_{v}"]))
            if acc is None:
                acc = f"wl_{v}"
            else:
                nodes.append(helper.make_node("Add", [acc, f"wl_{v}"], [f"acc_{v}"]))
                acc = f"acc_{v}"
        nodes.append(helper.make_node("Identity", [acc], ["logits"]))
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        names = ["logits", "probabilities", *[f"logits_{v}" for v in streams]]
    else:
        nodes[-1].output[0] = "logits"
        names = ["logits"]
    nodes.append(helper.make_node("Identity", ["feat"], ["embedding"]))
    names.append("embedding")
    for n in names:
        dim = channels if n == "embedding" else k
        outs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", dim]))
    inp = helper.make_tensor_value_info("skeleton", TensorProto.FLOAT,
                                        ["batch", channels, frames, layout.num_joints, num_person])
    graph = helper.make_graph(nodes, "tiny", [inp], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = {"crossclr_format": "crossclr-onnx-v1", "kind": kind, "layout": layout_to_toml(layout),
            "frames": str(frames), "num_person": str(num_person), "streams": json.dumps(list(streams)),
            "class_names": json.dumps(list(class_names)), "fusion_weights": json.dumps(fusion),
            "preprocess": json.dumps({"mode": "official", "frames": frames}), "config": json.dumps({}),
            "version": "test"}
    meta.update(props or {})
    for key, value in meta.items():
        if key not in drop_props:
            model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def reference_logits(x: np.ndarray, w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """numpy: mean over T, V, M then @ W_v."""
    feat = x.astype(np.float64).mean(axis=(2, 3, 4))  # (N, C, T, V, M) -> (N, C)
    return {v: feat @ m.astype(np.float64) for v, m in w.items()}


@pytest.fixture()
def model(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    p = tmp_path / "ensemble.onnx"
    return p, build_model(p)


# ------------------------------------------------------------------------------------------- providers


def test_default_providers_prefer_cuda_then_cpu() -> None:
    assert resolve_providers(None, ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    cpu = ["CPUExecutionProvider"]
    assert resolve_providers(None, ["AzureExecutionProvider", "CPUExecutionProvider"]) == cpu
    assert resolve_providers([], ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == cpu


def test_explicit_providers_aliases_and_order() -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert resolve_providers(["cpu"], avail) == ["CPUExecutionProvider"]
    assert resolve_providers(["trt", "CUDA", "cpu"], avail) == avail
    assert resolve_providers(["cudaexecutionprovider", "cuda"], avail) == ["CUDAExecutionProvider"]


def test_unavailable_provider_error_lists_available() -> None:
    with pytest.raises(CrossclrError) as e:
        resolve_providers(["cuda"], ["AzureExecutionProvider", "CPUExecutionProvider"])
    msg = str(e.value)
    assert "'cuda'" in msg and "CPUExecutionProvider" in msg and "AzureExecutionProvider" in msg
    assert "\n" not in msg


def test_requested_cuda_that_falls_back_to_cpu_warns(model, monkeypatch, caplog) -> None:
    """onnxruntime claims CUDA (faked); the real CPU build silently runs on CPU: we must warn."""
    path, _ = model
    fake = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: fake)
    with caplog.at_level(logging.WARNING, logger="crossclr_infer.session"):
        s = ModelSession(path)  # default = CUDA then CPU
    assert s.providers == ["CPUExecutionProvider"]
    assert s.fell_back == ["CUDAExecutionProvider"]
    assert any("CUDAExecutionProvider" in r.getMessage() and "CPUExecutionProvider" in r.getMessage()
               for r in caplog.records)


def test_cpu_only_does_not_warn(model, caplog) -> None:
    path, _ = model
    with caplog.at_level(logging.WARNING, logger="crossclr_infer.session"):
        s = ModelSession(path, ["cpu"])
    assert s.providers == ["CPUExecutionProvider"] and s.fell_back == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_explicit_unavailable_provider_fails_before_loading(model, monkeypatch) -> None:
    path, _ = model
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(CrossclrError, match="available: CPUExecutionProvider"):
        ModelSession(path, ["tensorrt"])


def test_missing_onnxruntime_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(CrossclrError, match=r"crossclr\[cpu\]"):
        session_mod.import_onnxruntime()


def test_thread_settings_are_applied(model) -> None:
    path, w = model
    s = ModelSession(path, ["cpu"], intra_op_threads=1, inter_op_threads=1)
    x = np.random.default_rng(1).standard_normal((2, 3, 50, 25, 2)).astype(np.float32)
    np.testing.assert_allclose(s.run(x)["logits_joint"], reference_logits(x, w)["joint"], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(CrossclrError, match="thread"):
        ModelSession(path, ["cpu"], intra_op_threads=-1)


# -------------------------------------------------------------------------------------------- metadata


def test_metadata_is_parsed(model) -> None:
    path, _ = model
    info = ModelSession(path, ["cpu"]).info
    assert info.kind == "ensemble" and info.streams == ("joint", "motion")
    assert info.class_names == ("a", "b", "c", "d", "e", "f") and info.num_class == 6
    assert info.layout == NTU and info.input_shape == (3, 50, 25, 2)
    assert info.fusion_weights == {"joint": 0.5, "motion": 0.75}
    assert info.preprocess["mode"] == "official"
    assert set(info.output_names) == {"logits", "probabilities", "logits_joint", "logits_motion", "embedding"}


@pytest.mark.parametrize("props,drop,match", [
    ({}, ["crossclr_format"], "has no crossclr metadata"),
    ({"crossclr_format": "other-v9"}, [], "format 'other-v9'"),
    ({}, ["class_names"], "lacks"),
    ({"streams": "[not json"}, [], "not valid JSON"),
    ({"kind": "thing"}, [], "kind 'thing'"),
    ({"frames": "40"}, [], "disagrees with its metadata"),
])
def test_bad_metadata_is_one_line_error(tmp_path, props, drop, match) -> None:
    p = tmp_path / "m.onnx"
    build_model(p, props=props, drop_props=drop)
    with pytest.raises(CrossclrError, match=match) as e:
        ModelSession(p, ["cpu"])
    assert "\n" not in str(e.value) and str(p) in str(e.value)


def test_missing_and_corrupt_model_files(tmp_path) -> None:
    with pytest.raises(CrossclrError, match="model file not found"):
        ModelSession(tmp_path / "nope.onnx", ["cpu"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 50)
    with pytest.raises(CrossclrError, match="not a loadable ONNX model") as e:
        ModelSession(bad, ["cpu"])
    assert "\n" not in str(e.value)


def test_parse_metadata_rejects_non_5d_input() -> None:
    props = {"crossclr_format": "crossclr-onnx-v1", "kind": "stream", "layout": layout_to_toml(NTU),
             "frames": "50",
             "num_person": "2", "streams": '["joint"]', "class_names": '["a"]', "fusion_weights": "{}",
             "preprocess": "{}", "config": "{}", "version": "x"}
    with pytest.raises(CrossclrError, match="5"):
        parse_metadata("m.onnx", props, ["batch", 3, 50, 25], ["logits"])


# ----------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("shape,dtype,match", [
    ((2, 3, 50, 25), np.float32, "5 dimensions"),
    ((2, 3, 50, 20, 2), np.float32, "20 joints but the model's layout 'ntu-rgb\\+d' has 25"),
    ((2, 3, 40, 25, 2), np.float32, r"expected \(N, 3, 50, 25, 2\)"),
    ((2, 3, 50, 25, 1), np.float32, r"expected \(N, 3, 50, 25, 2\)"),
    ((2, 3, 50, 25, 2), np.int32, "dtype int32"),
])
def test_input_shape_and_dtype_checked(model, shape, dtype, match) -> None:
    path, _ = model
    s = ModelSession(path, ["cpu"])
    with pytest.raises(CrossclrError, match=match):
        s.run(np.zeros(shape, dtype=dtype), source="x.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_rejected(model, bad) -> None:
    path, _ = model
    x = np.zeros((1, 3, 50, 25, 2), np.float32)
    x[0, 1, 3, 4, 0] = bad
    with pytest.raises(CrossclrError, match="NaN or Inf"):
        ModelSession(path, ["cpu"]).run(x, source="x.npy")


def test_float64_is_cast_and_batched_runs_match(model) -> None:
    path, w = model
    s = ModelSession(path, ["cpu"])
    x = np.random.default_rng(2).standard_normal((7, 3, 50, 25, 2))
    whole = s.run(x)
    parts = s.run_batched(x, batch_size=3)
    for name in s.output_names:
        np.testing.assert_array_equal(whole[name], parts[name])
    ref = reference_logits(x, w)
    fused = 0.5 * ref["joint"] + 0.75 * ref["motion"]
    np.testing.assert_allclose(whole["logits"], fused, rtol=1e-5, atol=1e-5)
    e = np.exp(fused - fused.max(1, keepdims=True))
    np.testing.assert_allclose(whole["probabilities"], e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-6)
    with pytest.raises(CrossclrError, match="no outputs"):
        s.run(x, ["nope"])
    with pytest.raises(CrossclrError, match="batch size"):
        s.run_batched(x, batch_size=0)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_missing_and_corrupt_model_one_line(tmp_path, capsys) -> None:
    x = tmp_path / "x.npy"
    np.save(x, np.ones((10, 25, 3), np.float32))
    assert "model file not found" in cli_error(["predict", str(x), "--model", str(tmp_path / "m.onnx")],
                                                capsys)
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    assert "not a loadable ONNX model" in cli_error(["predict", str(x), "--model", str(bad)], capsys)
    plain = tmp_path / "plain.onnx"
    build_model(plain, drop_props=["crossclr_format"])
    assert "no crossclr metadata" in cli_error(["predict", str(x), "--model", str(plain)], capsys)
    good = tmp_path / "good.onnx"
    build_model(good)
    assert "not available" in cli_error(["predict", str(x), "--model", str(good), "--providers", "coreml"],
                                         capsys)
