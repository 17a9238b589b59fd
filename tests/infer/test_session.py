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
    opts = s._sess.get_session_options()  # what onnxruntime itself was given
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    two = ModelSession(path, ["cpu"], intra_op_threads=2)
    assert two._sess.get_session_options().intra_op_num_threads == two.plan.intra_op_threads >= 1
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


# ------------------------------------------------------------------------------ thread plans per use


def test_thread_plans_per_use() -> None:
    from crossclr_infer.session import ThreadPlan, plan_threads

    assert plan_threads("latency", cores=4) == ThreadPlan(intra_op_threads=4)
    assert plan_threads("throughput", cores=4) == ThreadPlan(intra_op_threads=1, workers=4, slice_size=1)
    # shards in parallel: each process gets its share of the cores
    assert plan_threads("throughput", cores=8, processes=4) == ThreadPlan(1, workers=2, slice_size=1)
    assert plan_threads("latency", cores=8, processes=4) == ThreadPlan(intra_op_threads=2)
    assert plan_threads("throughput", cores=2, processes=4) == ThreadPlan(intra_op_threads=1)
    for use in ("latency", "throughput"):
        assert not plan_threads(use, cores=4).allow_spinning
    from crossclr_infer.hardware import cpu_caps

    assert plan_threads("latency").intra_op_threads == cpu_caps().cores  # the cores this process may use
    with pytest.raises(CrossclrError, match="session use 'fast'"):
        plan_threads("fast")
    with pytest.raises(CrossclrError, match="processes >= 1"):
        plan_threads("latency", processes=0)


class SpySessions:
    """Records the SessionOptions of every InferenceSession created (the real class does the work)."""

    def __init__(self, monkeypatch) -> None:
        self.options: list = []
        real = ort.InferenceSession

        def make(path, sess_options=None, providers=None, **kw):
            self.options.append(sess_options)
            return real(path, sess_options=sess_options, providers=providers, **kw)

        monkeypatch.setattr(ort, "InferenceSession", make)


def test_session_options_follow_the_plan(model, monkeypatch) -> None:
    import dataclasses

    from crossclr_infer import hardware

    path, _ = model
    eight = dataclasses.replace(hardware.cpu_caps(), cores=8)  # the plan of an 8-CPU machine, on any machine
    monkeypatch.setattr(hardware, "cpu_caps", lambda: eight)
    spy = SpySessions(monkeypatch)
    lat = ModelSession(path, ["cpu"], intra_op_threads=3)
    thr = ModelSession(path, ["cpu"], intra_op_threads=3, use="throughput")
    o_lat, o_thr = spy.options
    assert (o_lat.intra_op_num_threads, o_thr.intra_op_num_threads) == (3, 1)
    for o in spy.options:
        assert o.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert o.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        assert o.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert lat.plan.workers == 1 and thr.plan.workers == 3 and thr.plan.slice_size == 1
    assert "no spinning" in thr.plan.describe()


def test_throughput_slices_equal_one_call(model) -> None:
    from crossclr_infer.session import ThreadPlan, _worker_pool

    path, w = model
    x = np.random.default_rng(4).standard_normal((7, 3, 50, 25, 2)).astype(np.float32)
    whole = ModelSession(path, ["cpu"], plan=ThreadPlan(intra_op_threads=1)).run(x)
    sliced = ModelSession(path, ["cpu"], plan=ThreadPlan(1, workers=3, slice_size=2))
    got = sliced.run(x)
    for name in whole:
        np.testing.assert_allclose(got[name], whole[name], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got["logits_joint"], reference_logits(x, w)["joint"], rtol=1e-5, atol=1e-5)
    assert sliced.run(x[:2])["logits"].shape == (2, 6)  # a batch within one slice runs in one call
    assert _worker_pool(3) is _worker_pool(3)  # one pool per worker count, shared by all sessions


def test_evaluate_opens_every_model_with_the_throughput_plan(tmp_path) -> None:
    from crossclr_infer.report import load_models

    for v in ("joint", "motion"):
        build_model(tmp_path / f"{v}.onnx", kind="stream", streams=(v,))
    ms = load_models([tmp_path / "joint.onnx", tmp_path / "motion.onnx"], ["cpu"], intra_op_threads=2)
    assert [s.plan.workers for s in ms.sessions] == [2, 2]
    assert all(s.plan.intra_op_threads == 1 and not s.plan.allow_spinning for s in ms.sessions)
    one = load_models([tmp_path / "joint.onnx"], ["cpu"], intra_op_threads=2, use="latency")
    assert one.sessions[0].plan.intra_op_threads == 2 and one.sessions[0].plan.workers == 1


# ---------------------------------------------------------------------------------- precision metadata


@pytest.mark.parametrize("props,want", [({}, "fp32"), ({"precision": "fp16"}, "fp16"),
                                        ({"quantization": "int8-static-qdq"}, "int8")])
def test_precision_from_metadata(tmp_path, props, want) -> None:
    p = tmp_path / "m.onnx"
    build_model(p, props=props)
    assert ModelSession(p, ["cpu"]).info.precision == want


def test_int8_target_check_runs_on_every_open(model, monkeypatch) -> None:
    import crossclr_infer.int8 as int8

    calls = []
    monkeypatch.setattr(int8, "warn_int8_target_mismatch", lambda path, props: calls.append((path, props)))
    path, _ = model
    ModelSession(path, ["cpu"])
    ModelSession(path, ["cpu"])  # the same model again: checked again, nothing is remembered
    ModelSession(path, backend="onnxruntime", use="throughput")
    ModelSession(path, backend="onnxruntime", precision="fp32", intra_op_threads=1)
    assert [c[0] for c in calls] == [str(path)] * 4
    for _, props in calls:
        assert props["crossclr_format"] == "crossclr-onnx-v1" and "class_names" in props


# ------------------------------------------------------------------------------- CUDA I/O binding (faked)


class FakeBinding:
    """onnxruntime IOBinding stand-in: records what is bound, runs the real CPU session."""

    def __init__(self, sess) -> None:
        self.sess, self.inputs, self.outputs, self.results = sess, {}, [], None

    def bind_cpu_input(self, name, array) -> None:
        self.inputs[name] = array

    def bind_output(self, name, device_type="cpu", device_id=0, *args) -> None:
        self.outputs.append((name, device_type))

    def copy_outputs_to_cpu(self):
        return list(self.results)


REAL_SESSION = ort.InferenceSession


class FakeCudaSession:
    """An InferenceSession that claims CUDA; runs go through I/O binding only (``run`` is forbidden)."""

    instances: list = []

    def __init__(self, path, sess_options=None, providers=None, **kw) -> None:
        self.real = REAL_SESSION(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
        self.bindings: list[FakeBinding] = []
        FakeCudaSession.instances.append(self)

    def get_providers(self):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    def get_inputs(self):
        return self.real.get_inputs()

    def get_outputs(self):
        return self.real.get_outputs()

    def get_modelmeta(self):
        return self.real.get_modelmeta()

    def io_binding(self) -> FakeBinding:
        self.bindings.append(FakeBinding(self))
        return self.bindings[-1]

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        names = [n for n, _ in binding.outputs]
        binding.results = self.real.run(names, binding.inputs)

    def run(self, *a, **kw):
        raise AssertionError("a CUDA session must run through I/O binding")


def test_cuda_session_runs_through_io_binding(model, monkeypatch) -> None:
    path, w = model
    fake = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: fake)
    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    FakeCudaSession.instances.clear()
    s = ModelSession(path, use="throughput")  # default providers: CUDA first
    assert s.device == "cuda" and s.plan.workers == 1  # no CPU slicing on the GPU
    x = np.random.default_rng(5).standard_normal((5, 3, 50, 25, 2))  # float64: cast once, then bound
    got = s.run(x, ["logits_joint", "logits"])
    binding = FakeCudaSession.instances[0].bindings[-1]
    assert binding.outputs == [("logits_joint", "cuda"), ("logits", "cuda")]  # only what was asked for
    bound = binding.inputs["skeleton"]
    assert bound.dtype == np.float32 and bound.flags["C_CONTIGUOUS"] and bound.shape == x.shape
    np.testing.assert_allclose(got["logits_joint"], reference_logits(x, w)["joint"], rtol=1e-5, atol=1e-5)
    assert set(s.run_batched(x, 2)) == set(s.output_names) and len(FakeCudaSession.instances[0].bindings) == 4
