"""MAMP skeleton transformer: numpy reference forward (patch embedding, attention block, pooled features),
parameter count and initialisation of the official configuration, input validation, ONNX export."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from training.encoders.config import EncoderConfig
from training.encoders.stgcn import count_parameters
from training.encoders.transformer import SkeletonTransformer, drop_path_rates

NTU = get_layout("ntu-rgb+d")
TINY = dict(graph="transformer", projector="none", hidden_dim=32, depth=2, num_heads=4, t_patch=4)
FRAMES = 16  # 4 time tokens × 25 joints = 100 tokens per body


def tiny(seed: int = 0, **kw: object) -> SkeletonTransformer:
    torch.manual_seed(seed)
    return SkeletonTransformer(NTU, EncoderConfig(**{**TINY, **kw}), frames=FRAMES).double().eval()


def p(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


# ---------------------------------------------------------------- numpy reference
_erf = np.vectorize(math.erf)


def np_layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)  # biased, as LayerNorm
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_block(x: np.ndarray, sd: dict[str, np.ndarray], pre: str, heads: int) -> np.ndarray:
    """Pre-norm block on (B, L, D): multi-head attention then the GELU MLP, each with a residual."""
    b, n, d = x.shape
    hd = d // heads
    h = np_layer_norm(x, sd[pre + "norm1.weight"], sd[pre + "norm1.bias"])
    qkv = h @ sd[pre + "attn.qkv.weight"].T + sd[pre + "attn.qkv.bias"]  # (B, L, 3D): [q | k | v], head-major
    q, k, v = (qkv[..., i * d:(i + 1) * d].reshape(b, n, heads, hd).transpose(0, 2, 1, 3) for i in range(3))
    att = np_softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd))  # (B, H, L, L)
    o = (att @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    x = x + o @ sd[pre + "attn.proj.weight"].T + sd[pre + "attn.proj.bias"]
    h = np_layer_norm(x, sd[pre + "norm2.weight"], sd[pre + "norm2.bias"])
    h = np_gelu(h @ sd[pre + "mlp.fc1.weight"].T + sd[pre + "mlp.fc1.bias"])
    return x + h @ sd[pre + "mlp.fc2.weight"].T + sd[pre + "mlp.fc2.bias"]


def np_embed(x: np.ndarray, sd: dict[str, np.ndarray], t_patch: int) -> np.ndarray:
    """(B, C, T, V) -> (B, L, D): each (p frames × C) patch of one joint times the conv kernel (a matmul)."""
    b, c, t, v = x.shape
    w = sd["joints_embed.proj.weight"][..., 0]  # (D, C, p)
    patches = x.reshape(b, c, t // t_patch, t_patch, v).transpose(0, 2, 4, 1, 3)  # (B, T/p, V, C, p)
    tok = patches.reshape(b, t // t_patch, v, c * t_patch) @ w.reshape(w.shape[0], -1).T
    tok = tok + sd["joints_embed.proj.bias"] + sd["temp_embed"][0] + sd["pos_embed"][0]  # (B, T/p, V, D)
    return tok.reshape(b, -1, tok.shape[-1])


def np_features(x: np.ndarray, sd: dict[str, np.ndarray], depth: int, heads: int, t_patch: int) -> np.ndarray:
    n, c, t, v, m = x.shape
    tok = np_embed(x.transpose(0, 4, 1, 2, 3).reshape(n * m, c, t, v), sd, t_patch)
    for i in range(depth):
        tok = np_block(tok, sd, f"blocks.{i}.", heads)
    tok = np_layer_norm(tok, sd["norm.weight"], sd["norm.bias"])
    return tok.reshape(n, m, -1, tok.shape[-1]).mean(axis=(1, 2))


def state(m: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: p(v) for k, v in m.state_dict().items()}


# ---------------------------------------------------------------- tests
def test_patch_embedding_is_a_matmul_over_patches() -> None:
    m = tiny()
    x = torch.randn(3, 3, FRAMES, 25, dtype=torch.float64)
    np.testing.assert_allclose(p(m.embed(x)), np_embed(p(x), state(m), 4), rtol=1e-12, atol=1e-12)


def test_block_matches_numpy() -> None:
    m = tiny()
    with torch.no_grad():  # non-trivial norms and biases
        for prm in m.blocks[0].parameters():
            prm.add_(0.1 * torch.randn_like(prm))
    x = torch.randn(2, 100, 32, dtype=torch.float64)
    np.testing.assert_allclose(p(m.blocks[0](x)), np_block(p(x), state(m), "blocks.0.", heads=4),
                               rtol=1e-10, atol=1e-10)


def test_forward_features_matches_numpy() -> None:
    m = tiny()
    x = torch.randn(2, 3, FRAMES, 25, 2, dtype=torch.float64)
    x[1, ..., 1] = 0  # an absent second body is still a sequence of the mean (official pooling)
    f = m.forward_features(x)
    assert f.shape == (2, 32)
    np.testing.assert_allclose(p(f), np_features(p(x), state(m), depth=2, heads=4, t_patch=4),
                               rtol=1e-10, atol=1e-10)
    assert torch.equal(m(x), f)  # projector "none"


def test_kept_tokens_are_encoded_alone() -> None:
    """forward_tokens(x, keep) attends among the kept tokens only: the numpy blocks on the gathered tokens."""
    m = tiny()
    x = torch.randn(2, 3, FRAMES, 25, dtype=torch.float64)
    keep = torch.stack([torch.randperm(100)[:9] for _ in range(2)])
    sd = state(m)
    tok = np_embed(p(x), sd, 4)
    tok = np.stack([tok[i, keep[i].numpy()] for i in range(2)])
    for i in range(2):
        tok = np_block(tok, sd, f"blocks.{i}.", 4)
    ref = np_layer_norm(tok, sd["norm.weight"], sd["norm.bias"])
    np.testing.assert_allclose(p(m.forward_tokens(x, keep)), ref, rtol=1e-10, atol=1e-10)


def test_official_parameter_count_and_names() -> None:
    m = SkeletonTransformer(NTU, EncoderConfig(graph="transformer", projector="none"))
    d, hid = 256, 1024
    embed = 3 * d * 4 + d + 30 * d + 25 * d  # conv (3·4 → 256) + bias, temp (30), joint (25) embeddings
    # two LayerNorms, qkv, proj, fc1, fc2
    block = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * hid + hid) + (hid * d + d)
    assert block == 789_760
    assert count_parameters(m) == embed + 8 * block + 2 * d == 6_336_000
    sd = m.state_dict()
    assert sd["joints_embed.proj.weight"].shape == (256, 3, 4, 1)
    assert sd["temp_embed"].shape == (1, 30, 1, 256) and sd["pos_embed"].shape == (1, 1, 25, 256)
    assert {k for k in sd if k.startswith("blocks.7.")} == {
        f"blocks.7.{n}.{w}" for n in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
        for w in ("weight", "bias")}
    assert {"norm.weight", "norm.bias"} <= set(sd) and not any(k.startswith("blocks.8.") for k in sd)
    assert m.blocks[0].attn.scale == 32 ** -0.5
    mlp = SkeletonTransformer(NTU, EncoderConfig(graph="transformer"))  # default MLP projector 256-256-128
    assert count_parameters(mlp) - 6_336_000 == 256 * 256 + 256 + 256 * 128 + 128
    assert mlp.feature_dim == 128 and m.feature_dim == 256


def test_initialisation_statistics() -> None:
    torch.manual_seed(0)
    m = SkeletonTransformer(NTU, EncoderConfig(graph="transformer", projector="none"))
    for name in ("temp_embed", "pos_embed"):
        t = getattr(m, name)
        assert abs(t.std().item() - 0.02) < 0.0015 and abs(t.mean().item()) < 0.002
    for name, prm in m.named_parameters():
        if name.startswith("blocks") and name.endswith(".bias") or name == "norm.bias":
            assert torch.count_nonzero(prm) == 0, name
        if ".norm" in name and name.endswith(".weight") or name == "norm.weight":
            assert torch.all(prm == 1), name
    qkv = m.blocks[0].attn.qkv.weight  # xavier-uniform: U(±sqrt(6 / (fan_in + fan_out)))
    bound = math.sqrt(6 / (256 + 768))
    assert qkv.abs().max() <= bound and abs(qkv.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    conv = m.joints_embed.proj.weight  # PyTorch's default conv init: U(±1/sqrt(fan_in)), fan_in = 3·4
    assert conv.abs().max() <= 1 / math.sqrt(12) and conv.abs().max() > 0.8 / math.sqrt(12)


def test_input_validation() -> None:
    with pytest.raises(CrossclrError, match="frames 18 is not a positive multiple of t_patch 4"):
        SkeletonTransformer(NTU, EncoderConfig(**TINY), frames=18)
    with pytest.raises(CrossclrError, match="graph"):
        SkeletonTransformer(NTU, EncoderConfig(), frames=16)
    m = tiny()
    for shape, msg in (((1, 3, FRAMES, 20, 2), "expected 25 joints V, got 20"),
                       ((1, 3, 12, 25, 2), "expected 16 frames T, got 12"),
                       ((1, 2, FRAMES, 25, 2), "expected 3 channels C, got 2"),
                       ((1, 3, FRAMES, 25), "expected a 5-d input")):
        with pytest.raises(CrossclrError, match=msg):
            m.forward_features(torch.zeros(shape, dtype=torch.float64))
    with pytest.raises(CrossclrError, match="expected 25 joints V, got 24"):
        m.forward_tokens(torch.zeros(2, 3, FRAMES, 24, dtype=torch.float64))


def test_drop_path_linear_rule_and_train_only() -> None:
    assert drop_path_rates(0.3, 4) == pytest.approx([0.0, 0.1, 0.2, 0.3])
    m = tiny(drop_path=0.5, depth=3)
    assert [getattr(b.drop_path, "p", 0.0) for b in m.blocks] == pytest.approx([0.0, 0.25, 0.5])
    x = torch.randn(8, 3, FRAMES, 25, 1, dtype=torch.float64)
    ref = m.forward_features(x)
    assert torch.equal(m.eval().forward_features(x), ref)
    torch.manual_seed(1)
    assert not torch.allclose(m.train().forward_features(x), ref)


def test_projector_head() -> None:
    m = tiny(projector="mlp", feature_dim=8)
    x = torch.randn(2, 3, FRAMES, 25, 2, dtype=torch.float64)
    assert m(x).shape == (2, 8) and torch.equal(m(x), m.forward_head(m.forward_features(x)))
    assert [type(s).__name__ for s in m.fc] == ["Linear", "ReLU", "Linear"]


def test_onnx_export_of_features_matches_torch() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = tiny().float()
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    x = torch.randn(2, 3, FRAMES, 25, 2)
    buf = io.BytesIO()
    torch.onnx.export(m, (x,), buf, input_names=["skeleton"], output_names=["features"], opset_version=17,
                      dynamic_axes={"skeleton": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x3 = torch.randn(3, 3, FRAMES, 25, 2)
    (out,) = sess.run(None, {"skeleton": x3.numpy()})
    ref = m.forward_features(x3).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
