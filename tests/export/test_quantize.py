"""int8 quantization options: config validation, which ops are quantized, the MinMax activation ranges and
per-channel / per-tensor weight scales against numpy, QDQ vs QOperator, metadata, and the accuracy report."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from crossclr_infer.errors import CrossclrError  # noqa: E402
from export.quantize import (  # noqa: E402
    DEFAULT_INT8,
    QUANTIZATION_TAG,
    Int8Config,
    calibration_samples,
    quantize_int8,
)

C_IN, C_OUT, CLASSES = 3, 6, 4


def hand_model(path: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """skeleton (N, 3, T, V) -> Conv 3x1 (pad 1) -> Relu -> ReduceMean over (T, V) -> MatMul -> logits."""
    w = rng.normal(size=(C_OUT, C_IN, 3, 1)).astype(np.float32)
    w[0] *= 5.0  # channels of very different ranges tell per-channel from per-tensor scales
    b = rng.normal(size=C_OUT).astype(np.float32)
    m = rng.normal(size=(C_OUT, CLASSES)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["skeleton", "W", "B"], ["c"], kernel_shape=[3, 1], pads=[1, 0, 1, 0]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ReduceMean", ["r"], ["f"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["f", "M"], ["logits"])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((w, "W"), (b, "B"), (m, "M"))]
    x_info = helper.make_tensor_value_info("skeleton", TensorProto.FLOAT, ["batch", C_IN, 8, 5])
    y_info = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])
    graph = helper.make_graph(nodes, "hand", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"crossclr_format": "crossclr-onnx-v1", "kind": "stream"})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w, b, m


def numpy_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 0)))  # (N, C, T + 2, V)
    conv = sum(np.einsum("oc,nctv->notv", w[:, :, k, 0], xp[:, :, k:k + x.shape[2]]) for k in range(3))
    f = np.maximum(conv + b[None, :, None, None], 0).mean(axis=(2, 3))  # (N, C_OUT)
    return f @ m


def run(path: Path, x: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(["logits"], {"skeleton": x})[0]


def inits(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


@pytest.fixture()
def hand(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "hand.onnx"
    w, b, m = hand_model(src, rng)
    # 64 samples = 4 calibration batches of 16 (a multiple of 4 once broke onnxruntime's merging)
    calib = (rng.normal(size=(64, C_IN, 8, 5)) * 2.0 + 0.5).astype(np.float32)
    return src, (w, b, m), calib


@pytest.mark.parametrize("kwargs", [{"op_types": ("Relu",)}, {"op_types": ()}, {"calibration": "kl"},
                                    {"quant_format": "onnx"}, {"calib_count": 0}])
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(CrossclrError, match="int8"):
        Int8Config(**kwargs)


def test_default_config_is_the_measured_choice() -> None:
    assert DEFAULT_INT8 == Int8Config(op_types=("Conv",), per_channel=True, reduce_range=False,
                                      calibration="minmax", calib_count=512, quant_format="qdq",
                                      activation_symmetric=False, preprocess=True, symbolic_shape=False)
    assert "Conv" in DEFAULT_INT8.describe() and "per-channel" in DEFAULT_INT8.describe()


def test_default_quantizes_convs_only_with_numpy_ranges_and_keeps_metadata(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    dst = tmp_path / "hand.int8.onnx"
    quantize_int8(src, dst, calib)
    q = onnx.load(str(dst))
    producers = {o: n for n in q.graph.node for o in n.output}
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert producers[conv.input[0]].op_type == "DequantizeLinear"
    assert producers[conv.input[1]].op_type == "DequantizeLinear"
    assert all(i not in producers or producers[i].op_type != "DequantizeLinear" for i in mm.input)
    init = inits(q)
    # activation: U8 asymmetric MinMax over the calibration data (range widened to include 0)
    qin = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "skeleton")
    lo, hi = min(float(calib.min()), 0.0), max(float(calib.max()), 0.0)
    scale = (hi - lo) / 255
    assert float(init[qin.input[1]]) == pytest.approx(scale, rel=1e-5)
    assert int(init[qin.input[2]]) == int(round(-lo / scale))
    # weights: S8 symmetric, one scale per output channel = max |w_c| / 127
    wdq = producers[conv.input[1]]
    wscale = init[wdq.input[1]]
    np.testing.assert_allclose(wscale, np.abs(w).reshape(C_OUT, -1).max(1) / 127, rtol=1e-5)
    assert init[wdq.input[0]].dtype == np.int8 and int(np.abs(init[wdq.input[0]]).max()) == 127
    # the quantized model follows the float numpy reference within a few quantization steps
    x = calib[:8]
    ref = numpy_forward(x, w, b, m)
    np.testing.assert_allclose(run(src, x), ref, rtol=1e-4, atol=1e-4)
    assert np.abs(run(dst, x) - ref).max() < 0.03 * np.abs(ref).max()
    props = {p.key: p.value for p in q.metadata_props}
    assert props["crossclr_format"] == "crossclr-onnx-v1" and props["kind"] == "stream"
    assert props["quantization"] == QUANTIZATION_TAG
    assert json.loads(props["quantization_config"]) == json.loads(json.dumps(asdict(DEFAULT_INT8)))


def test_per_tensor_weights_and_matmul_option(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    dst = tmp_path / "pt.onnx"
    quantize_int8(src, dst, calib, Int8Config(per_channel=False, op_types=("Conv", "MatMul")))
    q = onnx.load(str(dst))
    producers = {o: n for n in q.graph.node for o in n.output}
    init = inits(q)
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    wscale = init[producers[conv.input[1]].input[1]]
    assert wscale.size == 1 and float(wscale) == pytest.approx(float(np.abs(w).max()) / 127, rel=1e-5)
    mm = next(n for n in q.graph.node if n.op_type == "MatMul")
    assert {producers[i].op_type for i in mm.input} == {"DequantizeLinear"}
    assert np.abs(run(dst, calib[:8]) - numpy_forward(calib[:8], w, b, m)).max() < 0.05 * np.abs(
        numpy_forward(calib[:8], w, b, m)).max()


def test_qoperator_format_uses_qlinear_ops(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    dst = tmp_path / "qop.onnx"
    quantize_int8(src, dst, calib, Int8Config(quant_format="qoperator", preprocess=False))
    ops = {n.op_type for n in onnx.load(str(dst)).graph.node}
    assert "QLinearConv" in ops and "Conv" not in ops and "MatMul" in ops
    ref = numpy_forward(calib[:8], w, b, m)
    assert np.abs(run(dst, calib[:8]) - ref).max() < 0.03 * np.abs(ref).max()


def test_calibration_samples_spread_over_train(tiny_cache) -> None:
    from crossclr_infer.cache import open_cache

    x = calibration_samples(tiny_cache, 5)
    with open_cache(tiny_cache) as c:
        sp = c.split("train")
        idx = np.unique(np.linspace(0, len(sp) - 1, num=5).round().astype(np.int64))
        np.testing.assert_array_equal(x, sp.read(idx))
        assert len(calibration_samples(tiny_cache, 10_000)) == len(sp)


def test_quantize_models_reports_accuracy_and_agreement(tiny_cache, tmp_path) -> None:
    torch = pytest.importorskip("torch")
    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from export.onnx_export import export_models
    from export.quantize import quantize_models
    from training.stgcn import STGCN, EncoderConfig

    torch.manual_seed(0)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig(base_channels=4, hidden_dim=8, feature_dim=4, stage_blocks=(1, 1, 1))
    with open_cache(tiny_cache) as c:
        names = list(c.class_names)
        xv, yv = c.split("val").read_all(), np.asarray(c.split("val").labels)
    meta = {"layout": layout_to_toml(ntu), "class_names": names, "frames": 50, "num_person": 2,
            "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official", "frames": 50},
            "config": {"model": cfg.to_dict()}}
    res = export_models({"joint": STGCN(ntu, cfg, num_person=2).eval()},
                        {"joint": torch.nn.Linear(8, len(names)).eval()}, meta, tmp_path / "m",
                        data=tiny_cache, ensemble=False)
    config = Int8Config(op_types=("Conv", "MatMul", "Gemm"), calib_count=7)
    rep = quantize_models(res.out_dir, {"joint": "joint.onnx"}, tiny_cache, meta, config=config)["joint"]
    fp = run(res.out_dir / "joint.onnx", xv).argmax(1)
    q8 = run(res.out_dir / "joint.int8.onnx", xv).argmax(1)
    assert rep["calibration_samples"] == 7 and rep["eval_samples"] == len(yv)
    assert rep["top1_fp32"] == pytest.approx(100 * (fp == yv).mean())
    assert rep["top1_int8"] == pytest.approx(100 * (q8 == yv).mean())
    assert rep["prediction_agreement_pct"] == pytest.approx(100 * (fp == q8).mean())
    assert rep["top1_change_pt"] == pytest.approx(rep["top1_int8"] - rep["top1_fp32"])
    assert rep["config"]["op_types"] == ["Conv", "MatMul", "Gemm"] and rep["method"] == config.describe()
