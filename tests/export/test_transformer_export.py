"""Transformer encoders through the ONNX path: per-stream and ensemble parity with torch, and the fusions
onnxruntime applies to them when a session opens (GELU with its bias, the scaled q·kᵀ product, LayerNorm)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def test_transformer_exports_with_parity_and_ort_fusions(tmp_path: Path) -> None:
    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    torch.manual_seed(0)
    data = generate_synthetic(tmp_path / "s.h5", classes=3, per_class=4, seed=0, frames=16)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    depth = 2
    cfg = EncoderConfig(graph="transformer", hidden_dim=32, depth=depth, num_heads=4, mlp_ratio=2.0,
                        t_patch=4, projector="none")
    with open_cache(data) as c:
        names = list(c.class_names)
        x = c.split("val").read_all()
    streams = ("joint", "motion", "bone")
    meta = {"layout": layout_to_toml(ntu), "class_names": names, "frames": 16, "num_person": 2,
            "fusion_weights": {v: 1.0 for v in streams}, "preprocess": {"mode": "official", "frames": 16},
            "config": {"model": cfg.to_dict()}}
    encoders = {v: SkeletonTransformer(ntu, cfg, num_person=2, frames=16).eval() for v in streams}
    heads = {v: torch.nn.Linear(32, len(names)).eval() for v in streams}
    # the plain attention graph (MatMul, Softmax, MatMul); the fused default: test_fused_attention.py
    res = export_models(encoders, heads, meta, tmp_path / "m", data=data, ensemble=True, attention="plain")
    assert set(res.files) >= {"joint", "motion", "bone", "ensemble"}
    for name, p in res.parity.items():
        assert p["max_abs_diff_logits"] <= 1e-4 * max(1.0, p.get("max_abs_logits", 1.0)), (name, p)
    # onnxruntime's own graph optimisations on the saved joint model
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(res.out_dir / res.files["joint"]), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node)
    assert ops["BiasGelu"] == depth and ops["Erf"] == 0  # GELU + its bias: one fused op per block
    assert ops["FusedMatMul"] >= depth  # the 1/sqrt(d) scale folded into q·kᵀ
    assert ops["LayerNormalization"] == 2 * depth + 1  # two per block and the final norm, as single ops
    assert ops["Attention"] == 0  # no attention fusion at session level (docs/results.md)
    logits = sess.run(["logits"], {"skeleton": x})[0]
    with torch.no_grad():
        want = heads["joint"](encoders["joint"].forward_features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_transformer_int8_is_dynamic_matmul_quantization(tmp_path: Path) -> None:
    """`--quantize int8` on a transformer: MatMul/Gemm weights in int8, activations quantized per call (no
    calibration pass), tagged as such in the metadata, and close to the fp32 model."""
    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    torch.manual_seed(0)
    data = generate_synthetic(tmp_path / "s.h5", classes=3, per_class=4, seed=0, frames=16)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig(graph="transformer", hidden_dim=32, depth=2, num_heads=4, mlp_ratio=2.0, t_patch=4,
                        projector="none")
    with open_cache(data) as c:
        names = list(c.class_names)
        x = c.split("val").read_all()
    meta = {"layout": layout_to_toml(ntu), "class_names": names, "frames": 16, "num_person": 2,
            "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official", "frames": 16},
            "config": {"model": cfg.to_dict()}}
    enc = {"joint": SkeletonTransformer(ntu, cfg, num_person=2, frames=16).eval()}
    head = {"joint": torch.nn.Linear(32, len(names)).eval()}
    res = export_models(enc, head, meta, tmp_path / "m", data=data, ensemble=False, quantize="int8")
    q = res.quantization["joint"]
    assert q["method"].startswith("dynamic int8 of MatMul+Gemm") and q["calibration_samples"] == 0
    model = onnx.load(str(res.out_dir / q["file"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["quantization"] == "int8-dynamic" and props["int8_target"] in ("vnni", "portable")
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0
    assert ops["QuantizeLinear"] == 0  # nothing static
    run = {k: ort.InferenceSession(str(res.out_dir / f), providers=["CPUExecutionProvider"])
           for k, f in (("fp32", res.files["joint"]), ("int8", q["file"]))}
    fp, q8 = (run[k].run(["logits"], {"skeleton": x})[0] for k in ("fp32", "int8"))
    assert np.abs(q8 - fp).max() <= 0.05 * np.abs(fp).max()
