"""Fused attention in exported transformers: the export-time FusedAttention equals a numpy attention built
from the module's parameters alone, every form exports one attention node per block that onnxruntime runs
within the parity tolerance, export_models writes the fused MultiHeadAttention by default (metadata
``attention``) with int8-dynamic still working, float16 and the dynamo exporter keep the plain graph, and the
parity check runs its inputs in chunks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml  # noqa: E402
from export.config import DEFAULT_OPSET, check_attention  # noqa: E402
from export.onnx_export import compare, export_graph, export_models  # noqa: E402
from export.serving import (  # noqa: E402
    ATTENTION_FORMS,
    DEFAULT_ATTENTION,
    ONNX_ATTENTION_OPSET,
    FusedAttention,
    ServingTransformer,
    StreamNet,
    half_encoder,
    serving_encoder,
)
from training.encoders.config import EncoderConfig  # noqa: E402
from training.encoders.transformer import Attention, SkeletonTransformer  # noqa: E402

NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
FRAMES, DEPTH = 16, 2
FUSED = [f for f in ATTENTION_FORMS if f != "plain"]
NODE = {"mha": ("com.microsoft", "MultiHeadAttention"), "contrib-attention": ("com.microsoft", "Attention"),
        "onnx-attention": ("", "Attention")}


def tiny_transformer(seed: int = 0) -> SkeletonTransformer:
    torch.manual_seed(seed)
    cfg = EncoderConfig(graph="transformer", hidden_dim=32, depth=DEPTH, num_heads=4, mlp_ratio=2.0,
                        t_patch=4, projector="none")
    enc = SkeletonTransformer(NTU, cfg, num_person=2, frames=FRAMES).eval()
    with torch.no_grad():  # non-zero biases, so that a misplaced qkv bias shows
        for blk in enc.blocks:
            blk.attn.qkv.bias.normal_(0.0, 0.5)
            blk.attn.proj.bias.normal_(0.0, 0.5)
    return enc


def skeletons(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.standard_normal((n, 3, FRAMES, 25, 2))).astype(np.float32)


def numpy_attention(x: np.ndarray, attn: Attention) -> np.ndarray:
    """softmax(q·kᵀ·scale)·v of the official (B, L, 3, H, D/H) qkv split, then the projection, in float64."""
    b, n, d = x.shape
    h = attn.num_heads
    wq, bq = attn.qkv.weight.detach().double().numpy(), attn.qkv.bias.detach().double().numpy()
    qkv = (x.astype(np.float64) @ wq.T + bq).reshape(b, n, 3, h, d // h)
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # each (B, H, L, D/H)
    s = np.einsum("bhld,bhmd->bhlm", q, k) * attn.scale
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhlm,bhmd->bhld", p, v).transpose(0, 2, 1, 3).reshape(b, n, d)
    wp, bp = attn.proj.weight.detach().double().numpy(), attn.proj.bias.detach().double().numpy()
    return out @ wp.T + bp


@pytest.mark.parametrize("form", FUSED)
def test_fused_attention_uses_parameters_not_forward(form: str, monkeypatch: pytest.MonkeyPatch) -> None:
    attn = tiny_transformer().blocks[0].attn
    x = np.random.default_rng(0).standard_normal((3, 7, 32)).astype(np.float32)
    want = numpy_attention(x, attn)
    np.testing.assert_allclose(attn(torch.from_numpy(x)).detach().numpy(), want, rtol=1e-5, atol=1e-5)

    def broken(self, x):  # the export form must not depend on how the training forward is written
        raise AssertionError("training Attention.forward called")

    monkeypatch.setattr(Attention, "forward", broken)
    fused = FusedAttention(attn, form)
    with torch.no_grad():
        got = fused(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", FUSED)
def test_each_fused_form_exports_one_attention_node_per_block(form: str, tmp_path: Path) -> None:
    enc = tiny_transformer()
    head = torch.nn.Linear(32, 5).eval()
    ref = StreamNet("joint", NTU, enc, head).eval()
    net = StreamNet("joint", NTU, serving_encoder(enc, FRAMES, attention=form), head).eval()
    path = tmp_path / f"{form}.onnx"
    opset = ONNX_ATTENTION_OPSET if form == "onnx-attention" else DEFAULT_OPSET
    export_graph(net, path, ["logits", "embedding"], torch.from_numpy(skeletons(2)), opset=opset,
                 dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = Counter((n.domain, n.op_type) for n in model.graph.node)
    assert ops[NODE[form]] == DEPTH
    assert ops[("", "Softmax")] == 0  # no attention map left outside the fused node
    x = skeletons(5, seed=1)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"skeleton": x})[0]
    with torch.no_grad():
        want = ref(torch.from_numpy(x))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_export_models_writes_fused_attention_by_default_and_int8_keeps_it(tmp_path: Path) -> None:
    from crossclr_infer.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "s.h5", classes=3, per_class=4, seed=0, frames=FRAMES)
    streams = ("joint", "bone")
    meta = {"layout": layout_to_toml(NTU), "class_names": ["a", "b", "c"], "frames": FRAMES, "num_person": 2,
            "fusion_weights": {v: 1.0 for v in streams}, "preprocess": {"mode": "official"},
            "config": {"model": {"graph": "transformer"}}}
    encoders = {v: tiny_transformer(seed=i) for i, v in enumerate(streams)}
    heads = {v: torch.nn.Linear(32, 3).eval() for v in streams}
    res = export_models(encoders, heads, meta, tmp_path / "m", data=data, quantize="int8")
    assert DEFAULT_ATTENTION == "mha"
    for name in ("joint", "bone", "ensemble"):
        scale = max(per["logits:scale"] for per in res.parity[name]["per_input"].values())
        assert res.parity[name]["max_abs_diff_logits"] <= 1e-4 * scale
        model = onnx.load(str(res.out_dir / res.files[name]))
        assert {p.key: p.value for p in model.metadata_props}["attention"] == "mha"
        per_stream = 2 if name == "ensemble" else 1
        assert Counter(n.op_type for n in model.graph.node)["MultiHeadAttention"] == DEPTH * per_stream
    q = onnx.load(str(res.out_dir / res.quantization["joint"]["file"]))
    ops = Counter(n.op_type for n in q.graph.node)
    assert ops["MultiHeadAttention"] == DEPTH and ops["MatMulInteger"] > 0  # qkv, proj and MLP weights int8
    x = skeletons(4, seed=2)
    fp = ort.InferenceSession(str(res.out_dir / res.files["joint"]), providers=["CPUExecutionProvider"])
    q8 = ort.InferenceSession(str(res.out_dir / res.quantization["joint"]["file"]),
                              providers=["CPUExecutionProvider"])
    a, b = (s.run(["logits"], {"skeleton": x})[0] for s in (fp, q8))
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()


def test_fp16_and_dynamo_keep_the_plain_attention(tmp_path: Path) -> None:
    enc = tiny_transformer()
    serving = serving_encoder(enc, FRAMES)
    assert isinstance(serving, ServingTransformer)
    assert serving_encoder(enc, FRAMES, attention="plain") is enc
    assert half_encoder(serving).encoder.blocks[0].attn.__class__ is Attention  # float16: plain graph
    assert check_attention("mha", DEFAULT_OPSET, dynamo=True) == "plain"
    assert check_attention("onnx-attention", ONNX_ATTENTION_OPSET, dynamo=False) == "onnx-attention"
    with pytest.raises(CrossclrError, match="--opset 23"):
        check_attention("onnx-attention", DEFAULT_OPSET, dynamo=False)
    with pytest.raises(CrossclrError, match="expected one of"):
        check_attention("flash", DEFAULT_OPSET, dynamo=False)


def test_parity_check_runs_in_chunks(tmp_path: Path) -> None:
    """compare() hands torch and onnxruntime at most ``chunk`` samples a call; chunking changes nothing."""
    enc = tiny_transformer()
    head = torch.nn.Linear(32, 5).eval()
    net = StreamNet("joint", NTU, enc, head).eval()
    path = tmp_path / "m.onnx"
    export_graph(net, path, ["logits", "embedding"], torch.from_numpy(skeletons(2)), opset=DEFAULT_OPSET,
                 dynamo=False)
    seen: list[int] = []
    net.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    inputs = {"a": skeletons(7, seed=3), "b": skeletons(2, seed=4)}
    chunked = compare(net, path, ["logits", "embedding"], inputs, chunk=3)
    assert seen == [3, 3, 1, 2]
    whole = compare(net, path, ["logits", "embedding"], inputs, chunk=100)
    for label in inputs:  # float32 kernels round differently at other batch sizes: equal up to that
        assert chunked[label].keys() == whole[label].keys()
        for key, value in whole[label].items():
            tol = {"rel": 1e-5} if key.endswith(":scale") else {"abs": 1e-6}
            assert chunked[label][key] == pytest.approx(value, **tol), (label, key)


def test_openvino_reads_the_fused_model(tmp_path: Path) -> None:
    ov = pytest.importorskip("openvino", reason="OpenVINO (extra 'openvino') is not installed")
    enc = tiny_transformer()
    head = torch.nn.Linear(32, 5).eval()
    net = StreamNet("joint", NTU, serving_encoder(enc, FRAMES), head).eval()
    path = tmp_path / "m.onnx"
    export_graph(net, path, ["logits", "embedding"], torch.from_numpy(skeletons(2)), opset=DEFAULT_OPSET,
                 dynamo=False)
    x = skeletons(3, seed=5)
    compiled = ov.Core().compile_model(ov.Core().read_model(str(path)), "CPU",
                                       {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({"skeleton": x})[0]
    with torch.no_grad():
        want = StreamNet("joint", NTU, enc, head).eval()(torch.from_numpy(x))[0].numpy()
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))
