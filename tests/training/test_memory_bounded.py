"""Bounded memory of transformer feature extraction: no-grad ``forward_features`` encodes in chunks whose size
follows the activation budget, with the features of one unchunked call; training and export are untouched."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from crossclr_infer.layouts import get_layout
from training.encoders.config import EncoderConfig
from training.encoders.transformer import SkeletonTransformer, set_fused_attention
from training.protocols.io import encode_source

NTU = get_layout("ntu-rgb+d")
TINY = dict(graph="transformer", projector="none", hidden_dim=32, depth=2, num_heads=4, t_patch=4)
FRAMES = 16


def tiny(seed: int = 0) -> SkeletonTransformer:
    torch.manual_seed(seed)
    m = SkeletonTransformer(NTU, EncoderConfig(**TINY), frames=FRAMES).eval()
    with torch.no_grad():  # away from the initialisation, so that every layer matters
        for prm in m.parameters():
            prm.add_(0.05 * torch.randn_like(prm))
    return m


def batches_seen(m: SkeletonTransformer) -> list[int]:
    """Records the leading size of every input to the first block (body sequences per call)."""
    seen: list[int] = []
    m.blocks[0].register_forward_pre_hook(lambda _mod, args: seen.append(int(args[0].shape[0])))
    return seen


def test_chunked_features_equal_unchunked() -> None:
    m = tiny()
    x = torch.randn(7, 3, FRAMES, 25, 2)
    x[3, ..., 1] = 0  # an absent second body
    seen = batches_seen(m)
    with torch.no_grad():
        m.feature_chunk = 0
        whole = m.forward_features(x)
        assert seen == [14]
        m.feature_chunk = 3
        chunked = m.forward_features(x)
    assert seen[1:] == [6, 6, 2]  # 3 + 3 + 1 samples, 2 bodies each
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-7)


def test_chunk_size_follows_the_budget_and_the_attention_form() -> None:
    m = SkeletonTransformer(NTU, EncoderConfig(graph="transformer", projector="none"), frames=120)
    per = m.activation_bytes_per_sample()
    assert per == 12 * 256 * 750 * 2 * 4  # 12·D values per token, 750 tokens, 2 bodies, float32
    m.feature_budget_bytes = 10 * per + 1
    assert m.feature_chunk_size() == 10
    m.feature_budget_bytes = per // 2
    assert m.feature_chunk_size() == 1  # never below one sample
    set_fused_attention(m, False)  # the written-out attention also holds (H, L, L) scores and softmax
    assert m.activation_bytes_per_sample() == per + 2 * 8 * 750 * 750 * 2 * 4
    m.feature_chunk = 5
    assert m.feature_chunk_size() == 5
    m.feature_chunk = 0
    assert m.feature_chunk_size() >= 2**62


def test_chunking_only_without_autograd() -> None:
    m = tiny()
    m.feature_chunk = 2
    seen = batches_seen(m)
    x = torch.randn(5, 3, FRAMES, 25, 2)
    f = m.forward_features(x)  # with autograd (fine-tuning): one call, one graph
    assert seen == [10] and f.requires_grad
    f.sum().backward()
    assert m.blocks[0].attn.qkv.weight.grad is not None


def test_encode_source_is_independent_of_the_encode_batch_and_of_chunking() -> None:
    m = tiny(1)
    data = np.random.default_rng(0).standard_normal((9, 3, FRAMES, 25, 2)).astype(np.float32)
    m.feature_chunk = 0
    ref = encode_source({"joint": m}, lambda i: data[i], len(data), NTU, batch_size=9)["joint"]
    m.feature_chunk = 2
    seen = batches_seen(m)
    got = encode_source({"joint": m}, lambda i: data[i], len(data), NTU, batch_size=256)["joint"]
    assert max(seen) == 4
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    m.feature_chunk = None
    assert m.feature_chunk_size() >= 9  # the tiny model's default: one chunk
    torch.testing.assert_close(encode_source({"joint": m}, lambda i: data[i], len(data), NTU)["joint"], ref,
                               rtol=1e-6, atol=1e-7)


def test_onnx_export_ignores_chunking() -> None:
    ort = pytest.importorskip("onnxruntime")
    m = tiny(2)
    m.feature_chunk = 1  # would split the traced batch of 2 if export chunked
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(m, (torch.randn(2, 3, FRAMES, 25, 2),), buf, input_names=["skeleton"],
                          output_names=["features"], opset_version=17,
                          dynamic_axes={"skeleton": {0: "batch"}, "features": {0: "batch"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, FRAMES, 25, 2)
    (out,) = sess.run(None, {"skeleton": x.numpy()})
    with torch.no_grad():
        ref = m.forward_features(x).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
