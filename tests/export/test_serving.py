"""The export-only serving form of ST-GCN (BatchNorm folded, graph product as MatMul) and float16 export:
BN folding equals BN in eval mode, ServingSTGCN equals the training encoder (every graph, residual kind and
block order), the exported graph holds no Einsum/BatchNormalization and equals the einsum export, and the
float16 models keep float32 inputs/outputs, record their precision and stay within the fp16 tolerance."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml  # noqa: E402
from crossclr_infer.session import ModelSession  # noqa: E402
from export.config import FP16_TOLERANCE  # noqa: E402
from export.onnx_export import export_models  # noqa: E402
from export.serving import (  # noqa: E402
    ServingBlock,
    ServingSTGCN,
    _fold_conv,
    bn_scale_shift,
    dft_matrices,
    half_encoder,
    serving_encoder,
)
from training.encoders.config import EncoderConfig  # noqa: E402
from training.encoders.stgcn import STGCN  # noqa: E402

NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
CLASSES = ["a", "b", "c"]


def randomize_bn(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial eval-mode BatchNorms and edge importances (so that folding has something to fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        for p in getattr(module, "edge_importance", None) or []:
            p.copy_(0.5 + torch.rand(p.shape, generator=g))
    return module.eval()


def encoder(graph: str = "spatial", seed: int = 0, **cfg) -> STGCN:
    torch.manual_seed(seed)
    base = dict(graph=graph, base_channels=4, hidden_dim=8, feature_dim=4, stage_blocks=(2, 1, 1))
    return randomize_bn(STGCN(NTU, EncoderConfig(**{**base, **cfg}), num_person=2), seed)


def skeletons(n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy((0.5 * rng.standard_normal((n, 3, 50, 25, 2))).astype(np.float32))


def parts(streams=("joint", "bone"), **cfg):
    encoders = {v: encoder(seed=i, **cfg) for i, v in enumerate(streams)}
    heads = {v: torch.nn.Linear(encoders[v].cfg.hidden_dim, len(CLASSES)).eval() for v in streams}
    meta = {"layout": layout_to_toml(NTU), "class_names": CLASSES, "frames": 50, "num_person": 2,
            "fusion_weights": {"joint": 0.6, "bone": 0.4}, "preprocess": {"mode": "official", "frames": 50},
            "config": {}}
    return encoders, heads, meta


# ------------------------------------------------------------------------------------------ BN folding


def test_bn_scale_shift_is_eval_batchnorm() -> None:
    bn = randomize_bn(torch.nn.BatchNorm2d(6))
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    s, b = bn_scale_shift(bn)
    with torch.no_grad():
        want = bn.double()(x)
    torch.testing.assert_close(x * s[:, None, None] + b[:, None, None], want, rtol=1e-12, atol=1e-12)


def test_folded_conv_is_conv_then_batchnorm() -> None:
    conv = torch.nn.Conv2d(4, 6, (9, 1), stride=(2, 1), padding=(4, 0)).double()
    bn = randomize_bn(torch.nn.BatchNorm2d(6)).double()
    x = torch.randn(2, 4, 11, 5, dtype=torch.float64)
    w, b = _fold_conv(conv, bn)
    with torch.no_grad():
        want = bn(conv(x))
        got = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=(4, 0))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------- serving encoder


@pytest.mark.parametrize("graph", ["spatial", "flow"])
@pytest.mark.parametrize("cfg", [{}, {"edge_importance": False}, {"base_channels": 8, "hidden_dim": 4},
                                 {"temporal_kernel": 5, "stage_blocks": (1, 2, 1)}])
def test_serving_encoder_equals_training_encoder(graph, cfg) -> None:
    """Same features in float64 (the folded weights are rounded to float32 once: relative error ~1e-7).
    ``hidden_dim < base_channels`` takes the official graph-after-conv order in the last block."""
    enc = encoder(graph, **cfg)
    serving = ServingSTGCN(enc, frames=50)
    if cfg.get("hidden_dim") == 4:
        assert not serving.blocks[-1].aggregate_first and serving.blocks[0].aggregate_first
    x = skeletons(3).double()
    with torch.no_grad():
        want = enc.double().forward_features(x)
        got = serving.double().forward_features(x)
    assert got.shape == want.shape == (3, enc.cfg.hidden_dim)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_serving_encoder_only_for_spatial_and_flow_graphs() -> None:
    assert isinstance(serving_encoder(encoder("spatial"), 50), ServingSTGCN)
    adaptive = encoder("adaptive")
    assert serving_encoder(adaptive, 50) is adaptive  # per-sample graphs keep the training module
    spatial = encoder("spatial")
    assert serving_encoder(spatial, 50, "einsum") is spatial
    with pytest.raises(CrossclrError, match="graph form 'fast'"):
        serving_encoder(spatial, 50, "fast")


def test_half_body_computes_in_float16_with_float32_boundary() -> None:
    enc = encoder()
    half = half_encoder(ServingSTGCN(enc, frames=50))
    assert half.half_body and half.blocks[0].w.dtype == torch.float16 and half.in_scale.dtype == torch.float32
    x = skeletons(2)
    with torch.no_grad():
        got, want = half.forward_features(x), enc.forward_features(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2 * max(1.0, float(want.abs().max())))


@pytest.mark.parametrize("frames,kernel", [(13, 9), (12, 9), (7, 3), (25, 5), (1, 3)])
def test_dft_matrices_give_the_zero_padded_convolution(frames, kernel) -> None:
    """Forward DFT, per-product channel matrices, inverse DFT == conv2d with (kernel, 1) and zero padding
    (odd and even circular lengths L = frames + pad), with 3F − 2 or 3F − 4 products."""
    pad = (kernel - 1) // 2
    g = torch.Generator().manual_seed(frames)
    x = torch.randn(2, 3, frames, 4, dtype=torch.float64, generator=g)  # (N, C, T, V)
    w = torch.randn(5, 3, kernel, 1, dtype=torch.float64, generator=g)
    fwd, inv, taps = dft_matrices(frames, kernel, pad)
    nf, even = (frames + pad) // 2 + 1, (frames + pad) % 2 == 0
    assert fwd.shape[0] == inv.shape[1] == taps.shape[0] == 3 * nf - (4 if even and nf > 1 else 2)
    spec = torch.einsum("bt,nctv->nbcv", fwd, x)
    prod = torch.einsum("boc,nbcv->nbov", torch.einsum("ock,bk->boc", w[..., 0], taps), spec)
    got = torch.einsum("tb,nbov->notv", inv, prod)
    want = torch.nn.functional.conv2d(x, w, padding=(pad, 0))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("hidden", [16, 8])  # identity residual in the last block / 1×1 conv residual
def test_dft_last_block_equals_training_encoder(hidden) -> None:
    enc = encoder(stage_blocks=(1, 1, 2), hidden_dim=hidden)  # the last block has stride 1
    serving = ServingSTGCN(enc, frames=50, dft_min_channels=1)
    assert serving.blocks[-1].dft_on and serving.blocks[-1].residual_kind == (1 if hidden == 16 else 2)
    assert not getattr(ServingSTGCN(enc, frames=50).blocks[-1], "dft_on", False)  # 16 channels: direct conv
    x = skeletons(3).double()
    with torch.no_grad():
        torch.testing.assert_close(serving.double().forward_features(x), enc.double().forward_features(x),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(CrossclrError, match="dft=False"):
        serving.with_half_body()


def test_bias_channel_weights_stay_within_the_conv_weights_for_a_large_bias() -> None:
    """The constant channel's value β keeps its weights (the folded conv bias) within each output channel's
    weight range, so per-channel int8 weight scales are not set by the bias."""
    enc = encoder()
    with torch.no_grad():
        enc.st_gcn_networks[1].gcn.conv.bias.mul_(50.0)
    block = ServingSTGCN(enc, frames=50).blocks[1]
    assert isinstance(block, ServingBlock) and block.bias_channel and block.bias_value > 1.0
    w = block.w[:, :, 0, 0].reshape(block.c_out, block.k, block.c_in + 1)
    assert bool((w[:, :, -1].abs().amax(1) <= w[:, :, :-1].abs().amax(dim=(1, 2)) * (1 + 1e-5)).all())
    x = skeletons(2).double()
    with torch.no_grad():
        torch.testing.assert_close(ServingSTGCN(enc, frames=50).double().forward_features(x),
                                   enc.double().forward_features(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------- exported graphs


def op_types(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_matmul_form_graph_equals_einsum_form_and_torch(tmp_path) -> None:
    encoders, heads, meta = parts(("joint",))
    fast = export_models(encoders, heads, meta, tmp_path / "fast", ensemble=False)
    slow = export_models(encoders, heads, meta, tmp_path / "slow", ensemble=False, graph_form="einsum")
    fast_ops, slow_ops = op_types(fast.out_dir / "joint.onnx"), op_types(slow.out_dir / "joint.onnx")
    assert "Einsum" in slow_ops
    assert not {"Einsum", "BatchNormalization", "Shape"} & fast_ops and "MatMul" in fast_ops
    x = skeletons(4, seed=5).numpy()
    a = ModelSession(fast.out_dir / "joint.onnx", ["cpu"]).run(x)
    b = ModelSession(slow.out_dir / "joint.onnx", ["cpu"]).run(x)
    for name in ("logits", "embedding"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = heads["joint"](encoders["joint"].forward_features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(a["logits"], want, rtol=1e-5, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(fast.out_dir / "joint.onnx")).metadata_props}
    assert props["graph_form"] == "matmul" and props["precision"] == "fp32"
    assert fast.parity["joint"]["max_abs_diff_logits"] <= 1e-4


def test_dft_export_and_int8_from_the_direct_form(tiny_cache, tmp_path, monkeypatch) -> None:
    """The DFT block exports (parity with torch holds), int8 models are quantized from the direct-convolution
    form (every temporal convolution quantized) and the int8 source files do not stay behind."""
    import export.serving as sv

    monkeypatch.setattr(sv, "DFT_MIN_CHANNELS", 1)
    encoders, heads, meta = parts(("joint",), stage_blocks=(1, 1, 2), hidden_dim=16)
    res = export_models(encoders, heads, meta, tmp_path / "m", data=tiny_cache, ensemble=False,
                        quantize="int8")
    assert res.parity["joint"]["max_abs_diff_logits"] <= 1e-4
    fp32 = onnx.load(str(tmp_path / "m" / "joint.onnx")).graph.node
    int8 = onnx.load(str(tmp_path / "m" / "joint.int8.onnx")).graph.node
    convs = 2 * 4  # graph conv and temporal conv per block, no conv residual (identity/none)
    assert sum(n.op_type == "Conv" for n in fp32) == convs - 1 + 2  # + residual convs of blocks 2, 3
    assert sum(n.op_type == "Conv" for n in int8) == convs + 2
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["export.json", "joint.int8.onnx", "joint.onnx"]


def test_parity_is_checked_against_the_training_modules(tmp_path, monkeypatch) -> None:
    """A serving form that drifted from the training encoder must fail the export."""
    import export.onnx_export as ox

    real = ox.serving_encoder

    def broken(enc, frames, form="matmul", **kw):
        out = real(enc, frames, form, **kw)
        with torch.no_grad():
            out.blocks[0].bt.add_(0.5)
        return out

    monkeypatch.setattr(ox, "serving_encoder", broken)
    encoders, heads, meta = parts(("joint",))
    with pytest.raises(CrossclrError, match="differs from torch beyond"):
        export_models(encoders, heads, meta, tmp_path / "m", ensemble=False)
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------------------------------- fp16


def test_fp16_export_keeps_float32_io_and_records_precision(tiny_cache, tmp_path) -> None:
    encoders, heads, meta = parts()
    res = export_models(encoders, heads, meta, tmp_path / "m", data=tiny_cache, precision="fp16")
    assert {"joint.fp16", "bone.fp16", "ensemble.fp16"} <= set(res.files)
    assert res.files["ensemble.fp16"] == "ensemble.fp16.onnx"
    model = onnx.load(str(tmp_path / "m" / "ensemble.fp16.onnx"))
    f32, f16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [f32]
    assert {o.type.tensor_type.elem_type for o in model.graph.output} == {f32}
    assert sum(t.data_type == f16 for t in model.graph.initializer) > sum(
        t.data_type == f32 for t in model.graph.initializer)
    x = skeletons(4, seed=3).numpy()
    s16 = ModelSession(tmp_path / "m" / "ensemble.fp16.onnx", ["cpu"])
    s32 = ModelSession(tmp_path / "m" / "ensemble.onnx", ["cpu"])
    assert s16.info.precision == "fp16" and s32.info.precision == "fp32"
    a, b = s16.run(x), s32.run(x)
    assert a["logits"].dtype == np.float32
    scale = max(1.0, float(np.abs(b["logits"]).max()))
    np.testing.assert_allclose(a["logits"], b["logits"], rtol=0, atol=FP16_TOLERANCE * scale)
    for name in ("joint.fp16", "ensemble.fp16"):
        p = res.parity[name]
        assert set(p["per_input"]) == {"random", "real"} and p["tolerance"] == FP16_TOLERANCE
        assert 0 < p["max_abs_diff_logits"] <= FP16_TOLERANCE
    summary = json.loads((tmp_path / "m" / "export.json").read_text())
    assert summary["precision"] == "fp16" and summary["fp16_tolerance"] == FP16_TOLERANCE


def test_fp16_of_a_model_without_serving_form(tmp_path) -> None:
    """Adaptive graphs export in float16 through HalfEncoder (the whole training module in float16)."""
    torch.manual_seed(0)
    enc = encoder("adaptive")
    meta = parts(("joint",))[2]
    res = export_models({"joint": enc}, {"joint": torch.nn.Linear(8, 3).eval()}, meta, tmp_path / "m",
                        ensemble=False, precision="fp16")
    assert res.parity["joint.fp16"]["max_abs_diff_logits"] <= FP16_TOLERANCE
    assert ModelSession(tmp_path / "m" / "joint.fp16.onnx", ["cpu"]).info.precision == "fp16"


def test_fp16_parity_failure_and_bad_precision(tmp_path) -> None:
    encoders, heads, meta = parts(("joint",))
    with pytest.raises(CrossclrError, match=r"joint\.fp16\.onnx differs from torch beyond"):
        export_models(encoders, heads, meta, tmp_path / "m", ensemble=False, precision="fp16",
                      fp16_tolerance=1e-9)
    assert not (tmp_path / "m").exists()
    with pytest.raises(CrossclrError, match="--precision 'bf16'"):
        export_models(encoders, heads, meta, tmp_path / "n", precision="bf16")


def test_cli_export_precision_fp16_and_int8_target(tiny_cache, tmp_path, capsys) -> None:
    import cli
    from training.protocols.io import save_linear

    encoders, heads, meta = parts(("joint",))
    meta["config"] = {"model": encoders["joint"].cfg.to_dict()}
    ckpt = tmp_path / "linear.pt"
    save_linear(ckpt, encoders, heads, fusion="separate", fusion_weights={"joint": 1.0}, class_names=CLASSES,
                layout=NTU, meta=meta, metrics={})
    cli.main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"), "--precision", "fp16",
              "--no-ensemble", "--quantize", "int8", "--int8-target", "portable", "--calibration",
              str(tiny_cache)])
    out = capsys.readouterr().out
    assert "joint.fp16.onnx" in out and "float16 model vs torch float32" in out and "joint.onnx" in out
    assert ModelSession(tmp_path / "m" / "joint.fp16.onnx", ["cpu"]).info.precision == "fp16"
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "joint.int8.onnx")).metadata_props}
    assert props["int8_target"] == "portable" and "joint.fp16.int8.onnx" not in out  # fp32 models only
