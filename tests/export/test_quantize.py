"""int8 quantization options: config validation, which ops are quantized, the MinMax activation ranges and
per-channel / per-tensor weight scales against numpy, QDQ vs QOperator, metadata, and the accuracy report;
the CPU target (vnni / portable / auto) with a numpy model of the AVX2 int16 saturation, and the int8 error of
a trained ST-GCN.

Every test that compares quantized outputs with a reference uses a target that is accurate on the machine
running it (``auto``, or ``portable``: accurate on every x86 CPU); ``vnni`` models are only inspected.
"""

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
from crossclr_infer.hardware import CpuCaps  # noqa: E402
from export.quantize import (  # noqa: E402
    DEFAULT_INT8,
    QUANTIZATION_TAG,
    Int8Config,
    calibration_samples,
    quantize_int8,
)

INT16_MAX = 32767
U8_MAX = 255
# faked CPU probes: one with VNNI, one AVX2-only like AMD Zen 3, one whose flags are unknown
VNNI_CPU = CpuCaps(model="Xeon (fake)", arch="x86_64", flags=frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX2_CPU = CpuCaps(model="Zen 3 (fake)", arch="x86_64", flags=frozenset({"avx2", "fma"}))
UNKNOWN_CPU = CpuCaps()

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


def props_of(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def weight_qmax(config: Int8Config) -> int:
    """Largest |quantized weight| of a resolved config: 127, or 64 with reduce_range (7-bit weights)."""
    assert config.is_resolved
    return 64 if config.reduce_range else 127


@pytest.fixture()
def hand(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "hand.onnx"
    w, b, m = hand_model(src, rng)
    # 64 samples = 4 calibration batches of 16 (a multiple of 4 once broke onnxruntime's merging)
    calib = (rng.normal(size=(64, C_IN, 8, 5)) * 2.0 + 0.5).astype(np.float32)
    return src, (w, b, m), calib


@pytest.mark.parametrize("kwargs", [{"op_types": ("Relu",)}, {"op_types": ()}, {"calibration": "kl"},
                                    {"quant_format": "onnx"}, {"calib_count": 0}, {"target": "avx2"},
                                    {"target": "vnni", "reduce_range": True},
                                    {"target": "portable", "reduce_range": False}])
def test_config_rejects_bad_values(kwargs) -> None:
    with pytest.raises(CrossclrError, match="int8"):
        Int8Config(**kwargs)


def test_default_config_is_the_measured_choice() -> None:
    assert DEFAULT_INT8 == Int8Config(op_types=("Conv",), per_channel=True, target="auto", reduce_range=None,
                                      calibration="minmax", calib_count=512, quant_format="qdq",
                                      activation_symmetric=False, preprocess=True, symbolic_shape=False)
    assert not DEFAULT_INT8.is_resolved
    text = DEFAULT_INT8.describe()
    assert "Conv" in text and "per-channel" in text and "(auto on this CPU)" in text
    assert f"target {DEFAULT_INT8.resolved().target}" in text


def test_target_sets_reduce_range_and_an_explicit_reduce_range_pins_the_target() -> None:
    assert Int8Config(target="vnni").reduce_range is False
    assert Int8Config(target="portable").reduce_range is True
    assert Int8Config(reduce_range=True) == Int8Config(target="portable")
    assert Int8Config(reduce_range=False) == Int8Config(target="vnni")
    assert Int8Config(target="portable", reduce_range=True).target == "portable"
    assert "7-bit" in Int8Config(target="portable").describe()
    assert "full-range" in Int8Config(target="vnni").describe()


@pytest.mark.parametrize(("caps", "target"), [(VNNI_CPU, "vnni"), (AVX2_CPU, "portable"),
                                              (UNKNOWN_CPU, "portable"),
                                              (CpuCaps(arch="x86_64", flags=frozenset({"avx2", "avx_vnni"})),
                                               "vnni")])
def test_auto_resolves_from_the_cpu_probe(caps, target) -> None:
    r = DEFAULT_INT8.resolved(caps)
    assert r.target == target and r.is_resolved
    assert r.reduce_range is (target == "portable")
    assert r == Int8Config(target=target)
    # a concrete target is kept whatever the CPU
    for fixed in ("vnni", "portable"):
        assert Int8Config(target=fixed).resolved(caps).target == fixed


def test_default_quantizes_convs_only_with_numpy_ranges_and_keeps_metadata(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    dst = tmp_path / "hand.int8.onnx"
    used = quantize_int8(src, dst, calib)
    assert used == DEFAULT_INT8.resolved()  # auto: accurate on the CPU running this test
    qmax = weight_qmax(used)
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
    # weights: S8 symmetric, one scale per output channel = max |w_c| / qmax (127, or 64 for portable)
    wdq = producers[conv.input[1]]
    wscale = init[wdq.input[1]]
    np.testing.assert_allclose(wscale, np.abs(w).reshape(C_OUT, -1).max(1) / qmax, rtol=1e-5)
    assert init[wdq.input[0]].dtype == np.int8 and int(np.abs(init[wdq.input[0]]).max()) == qmax
    # the quantized model follows the float numpy reference within a few quantization steps
    x = calib[:8]
    ref = numpy_forward(x, w, b, m)
    np.testing.assert_allclose(run(src, x), ref, rtol=1e-4, atol=1e-4)
    assert np.abs(run(dst, x) - ref).max() < 0.03 * np.abs(ref).max()
    props = {p.key: p.value for p in q.metadata_props}
    assert props["crossclr_format"] == "crossclr-onnx-v1" and props["kind"] == "stream"
    assert props["quantization"] == QUANTIZATION_TAG
    assert json.loads(props["quantization_config"]) == json.loads(json.dumps(asdict(used)))
    assert props["int8_target"] == used.target


def test_per_tensor_weights_and_matmul_option(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    dst = tmp_path / "pt.onnx"
    used = quantize_int8(src, dst, calib, Int8Config(per_channel=False, op_types=("Conv", "MatMul")))
    q = onnx.load(str(dst))
    producers = {o: n for n in q.graph.node for o in n.output}
    init = inits(q)
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    wscale = init[producers[conv.input[1]].input[1]]
    assert wscale.size == 1
    assert float(wscale) == pytest.approx(float(np.abs(w).max()) / weight_qmax(used), rel=1e-5)
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
    from training.encoders.config import EncoderConfig
    from training.encoders.stgcn import STGCN

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
    assert rep["config"]["op_types"] == ["Conv", "MatMul", "Gemm"]
    assert rep["method"] == config.resolved().describe()
    assert rep["int8_target"] == config.resolved().target == rep["config"]["target"]
    assert props_of(res.out_dir / "joint.int8.onnx")["int8_target"] == rep["int8_target"]


@pytest.mark.parametrize(("caps", "target", "qmax"), [(VNNI_CPU, "vnni", 127), (AVX2_CPU, "portable", 64)])
def test_auto_target_is_resolved_on_the_exporting_cpu_and_recorded(hand, tmp_path, monkeypatch, caps, target,
                                                                   qmax) -> None:
    from crossclr_infer.int8 import model_int8_target

    monkeypatch.setattr("export.quantize.cpu_caps", lambda: caps)
    src, _, calib = hand
    dst = tmp_path / "auto.onnx"
    used = quantize_int8(src, dst, calib)  # DEFAULT_INT8: target auto
    assert used.target == target
    props = props_of(dst)
    assert props["int8_target"] == target and model_int8_target(props) == target
    config = json.loads(props["quantization_config"])
    assert config["target"] == target and config["reduce_range"] is (target == "portable")
    assert Int8Config(**{**config, "op_types": tuple(config["op_types"])}) == used  # the JSON round-trips
    assert int(np.abs(inits(onnx.load(str(dst)))["W_quantized"]).max()) == qmax
    assert f"target {target} (auto on this CPU)" in Int8Config().describe()  # describe() uses the probe too


# --- AVX2 without VNNI, in numpy: VPMADDUBSW adds adjacent u8·s8 products into int16 with saturation --------

def conv_operands(model_path: Path, x: np.ndarray, tap_major: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(u8 input columns (N, T, V, K), s8 weights (C_OUT, K), initializers) of the hand model's quantized
    Conv, read from the saved model: x quantized with the model's input scale / zero point, padded with the
    zero point (= float 0), im2col over the 3 taps. The reduction axis K is ordered tap-major (index
    tap·C + c, as a channels-last im2col) or channel-major (c·3 + tap, channels-first)."""
    init = inits(onnx.load(str(model_path)))
    sx, zx = init["skeleton_scale"], int(init["skeleton_zero_point"])
    a = np.clip(np.rint(x / sx) + zx, 0, U8_MAX).astype(np.int64)  # QuantizeLinear: round half to even
    t = x.shape[2]
    ap = np.pad(a, ((0, 0), (0, 0), (1, 1), (0, 0)), constant_values=zx)
    cols = np.stack([ap[:, :, k:k + t] for k in range(3)], axis=-1)  # (N, C, T, V, tap)
    wq = init["W_quantized"].astype(np.int64)[..., 0]  # (C_OUT, C, tap)
    if tap_major:
        cols, wq = cols.transpose(0, 2, 3, 4, 1), wq.transpose(0, 2, 1)
    else:
        cols = cols.transpose(0, 2, 3, 1, 4)
    return cols.reshape(*cols.shape[:3], -1), wq.reshape(C_OUT, -1), init


def vpmaddubsw_dot(a: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AVX2 u8·s8 dot products a (..., K) · w (O, K) -> (..., O) as MLAS computes them without VNNI: products
    of adjacent k summed in pairs with int16 saturation (VPMADDUBSW), then the pairs summed in int32
    (VPMADDWD with ones + VPADDD). Also returns the unsaturated pair sums (..., O, K/2)."""
    k = a.shape[-1] + a.shape[-1] % 2
    a = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, k - a.shape[-1])])
    w = np.pad(w, ((0, 0), (0, k - w.shape[1])))
    prod = a[..., None, :] * w  # (..., O, K)
    pairs = prod[..., 0::2] + prod[..., 1::2]
    return np.clip(pairs, -INT16_MAX - 1, INT16_MAX).sum(-1), pairs


def hand_logits(acc_u8w: np.ndarray, w: np.ndarray, init: dict, m: np.ndarray) -> np.ndarray:
    """The rest of the quantized hand model from the Conv's Σ a·w: zero-point correction, int32 bias,
    requantization of the Conv output (its Q/DQ pair), Relu, mean over (T, V), MatMul."""
    acc = acc_u8w - int(init["skeleton_zero_point"]) * w.sum(1) + init["B_quantized"]  # Σ (a - za)·w + b
    y = acc * (init["skeleton_scale"] * init["W_scale"])
    sc, zc = float(init["c_scale"]), int(init["c_zero_point"])
    cq = np.clip(np.rint(y / sc) + zc, 0, U8_MAX)
    return np.maximum((cq - zc) * sc, 0).mean(axis=(1, 2)) @ m


def test_portable_weights_cannot_saturate_avx2_int16_pairs(hand, tmp_path) -> None:
    src, (w, b, m), calib = hand
    models = {t: tmp_path / f"{t}.onnx" for t in ("vnni", "portable")}
    for t, path in models.items():
        quantize_int8(src, path, calib, Int8Config(target=t))
    # the bound: u8 activations reach 255; two full-range products overflow int16, two 7-bit ones cannot
    assert 2 * U8_MAX * 127 > INT16_MAX >= 2 * U8_MAX * 64
    scale = np.abs(numpy_forward(calib, w, b, m)).max()
    for tap_major in (True, False):  # which k MLAS pairs does not matter for the bound; try both orders
        a, wq, init = conv_operands(models["vnni"], calib, tap_major)
        assert int(np.abs(wq).max()) == 127 and int(a.max()) == U8_MAX
        exact = a @ wq.T
        avx2, pairs = vpmaddubsw_dot(a, wq)
        # full-range weights + the calibration data DO saturate: AVX2 results differ from exact arithmetic,
        # by more than the 3 % of the logit scale the accuracy tests allow (tap-major: 0.80 on calib[:8], of
        # scale 23: the size of the deviation reported on a Zen 3 without VNNI)
        assert int(np.abs(pairs).max()) > INT16_MAX and (avx2 != exact).any()
        assert np.abs(hand_logits(avx2, wq, init, m) - hand_logits(exact, wq, init, m)).max() > 0.03 * scale

        a, wq, init = conv_operands(models["portable"], calib, tap_major)
        assert int(np.abs(wq).max()) <= 64  # the quantized initializer as saved: 7-bit weights
        avx2, pairs = vpmaddubsw_dot(a, wq)
        assert int(np.abs(pairs).max()) <= INT16_MAX
        np.testing.assert_array_equal(avx2, a @ wq.T)  # AVX2 == exact integer arithmetic
    # and that exact arithmetic is what onnxruntime computes for this model (on any CPU: nothing saturates)
    got = run(models["portable"], calib)
    np.testing.assert_allclose(hand_logits(a @ wq.T, wq, init, m), got, atol=1e-4 * scale, rtol=0)


# --- a trained model ------------------------------------------------------------------------------------

TRAIN_FRAMES = 16  # short clips keep training at a few seconds on 2 cores


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory):
    """A tiny ST-GCN + linear head trained (supervised, 120 Adam steps) on a synthetic 4-class cache and
    exported as joint.onnx: (model folder, cache, all samples)."""
    torch = pytest.importorskip("torch")
    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.stgcn import STGCN

    root = tmp_path_factory.mktemp("trained")
    cache = generate_synthetic(root / "synth.h5", classes=4, per_class=30, seed=0, frames=TRAIN_FRAMES)
    with open_cache(cache) as c:
        names = list(c.class_names)
        xt, yt = c.split("train").read_all(), np.asarray(c.split("train").labels)
        xv = c.split("val").read_all()
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig(base_channels=4, hidden_dim=16, feature_dim=4, stage_blocks=(1, 1, 1),
                        temporal_kernel=3, dropout=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny kernels: one thread is faster than two on shared cores
    try:
        torch.manual_seed(0)
        encoder, head = STGCN(ntu, cfg, num_person=2), torch.nn.Linear(cfg.hidden_dim, len(names))
        opt = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=1e-2)
        x, y = torch.from_numpy(xt), torch.from_numpy(yt)
        gen = torch.Generator().manual_seed(0)
        for _ in range(120):
            idx = torch.randint(0, len(x), (16,), generator=gen)
            loss = torch.nn.functional.cross_entropy(head(encoder.forward_features(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        encoder.eval()
        head.eval()
        with torch.no_grad():
            train_acc = float((head(encoder.forward_features(x)).argmax(1).numpy() == yt).mean())
    finally:
        torch.set_num_threads(threads)
    assert train_acc > 0.6  # it learned (chance: 0.25; measured 0.97): trained weights, not random ones
    meta = {"layout": layout_to_toml(ntu), "class_names": names, "frames": TRAIN_FRAMES, "num_person": 2,
            "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official", "frames": TRAIN_FRAMES},
            "config": {"model": cfg.to_dict()}}
    res = export_models({"joint": encoder}, {"joint": head}, meta, root / "m", data=cache, ensemble=False,
                        quantize="int8")  # the default int8 config: target auto
    return res, cache, np.concatenate([xt, xv])


def int8_error(fp: np.ndarray, q8: np.ndarray) -> tuple[float, float]:
    """(prediction agreement in %, max |Δ logit| / max |fp32 logit|)."""
    agree = 100.0 * float((fp.argmax(1) == q8.argmax(1)).mean())
    return agree, float(np.abs(q8 - fp).max() / np.abs(fp).max())


def test_trained_model_int8_default_agrees_with_fp32(trained_export) -> None:
    res, _, x = trained_export
    rep = res.quantization["joint"]
    assert rep["int8_target"] == DEFAULT_INT8.resolved().target  # auto: accurate on the CPU running this
    assert props_of(res.out_dir / "joint.int8.onnx")["int8_target"] == rep["int8_target"]
    fp = run(res.out_dir / "joint.onnx", x)
    agree, rel = int8_error(fp, run(res.out_dir / "joint.int8.onnx", x))
    # measured on an Intel Xeon with AVX512-VNNI + AMX (auto -> vnni; train top-1 0.97, val 75 %), all 120
    # samples: 100 % agreement, max |Δ logit| 0.100 = 0.81 % of the max |fp32 logit| 12.3
    print(f"default int8 ({rep['int8_target']}): agreement {agree:.1f} %, max logit error {rel:.2%}")
    assert agree >= 98.0
    assert rel <= 0.03


def test_trained_model_int8_portable_agrees_with_fp32_on_this_cpu(trained_export, tmp_path) -> None:
    """Accuracy on the CPU running the test (onnxruntime's kernels cannot be capped to AVX2, so CI's
    AVX2-capped run does not change them); that portable weights cannot saturate AVX2's int16 pairs on any
    CPU is test_portable_weights_cannot_saturate_avx2_int16_pairs."""
    res, cache, x = trained_export
    dst = tmp_path / "joint.portable.onnx"
    used = quantize_int8(res.out_dir / "joint.onnx", dst, calibration_samples(cache),
                         Int8Config(target="portable"))
    assert used.reduce_range and props_of(dst)["int8_target"] == "portable"
    fp = run(res.out_dir / "joint.onnx", x)
    agree, rel = int8_error(fp, run(dst, x))
    # 7-bit weights double the weight quantization step of full-range ones (but cannot saturate on AVX2), so
    # the logit bound is wider than the vnni target's: measured on the same Xeon on two trainings that differ
    # only in float rounding (the fast ops' residual as a conv or as a GEMM): 100 % agreement both times, max
    # |Δ logit| 1.32 % and 3.48 % of the max |fp32 logit|
    print(f"portable int8: agreement {agree:.1f} %, max logit error {rel:.2%}")
    assert agree >= 98.0
    assert rel <= 0.05
