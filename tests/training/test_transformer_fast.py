"""Fused attention (torch's scaled_dot_product_attention) against the official written-out form: features,
MAMP loss and gradients agree to float rounding; the switch; ONNX export traces the written-out form."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import pytest
import torch

from crossclr_infer.layouts import get_layout
from training.encoders.config import EncoderConfig
from training.encoders.transformer import Attention, SkeletonTransformer, exporting, set_fused_attention
from training.objectives.mamp import MAMP, MAMPConfig

NTU = get_layout("ntu-rgb+d")
TINY = dict(graph="transformer", projector="none", hidden_dim=32, depth=2, num_heads=4, t_patch=4)
FRAMES = 16
T = TypeVar("T")


def perturbed(m: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in m.parameters():
            prm.add_(0.05 * torch.randn(prm.shape, generator=g, dtype=prm.dtype))
    return m


def forms(m: torch.nn.Module, fn: Callable[[], T]) -> tuple[T, T]:
    """(fn() with fused attention, fn() with the written-out form)."""
    set_fused_attention(m, True)
    a = fn()
    set_fused_attention(m, False)
    b = fn()
    set_fused_attention(m, True)
    return a, b


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def test_fused_is_the_default_and_the_switch_reaches_every_block() -> None:
    m = MAMP(NTU, EncoderConfig(**TINY), MAMPConfig(decoder_dim=16, decoder_heads=2, decoder_depth=1),
             frames=FRAMES)
    attns = [a for a in m.modules() if isinstance(a, Attention)]
    assert len(attns) == 3 and all(a.fused for a in attns)  # 2 encoder blocks + 1 decoder block
    set_fused_attention(m, False)
    assert not any(a.fused for a in attns)
    assert "fused=False" in repr(attns[0])


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_features_agree_between_forms(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    m = perturbed(SkeletonTransformer(NTU, EncoderConfig(**TINY), frames=FRAMES).to(dtype).eval())
    x = torch.randn(3, 3, FRAMES, 25, 2, dtype=dtype)
    x[1, ..., 1] = 0
    with torch.no_grad():
        fused, exact = forms(m, lambda: m.forward_features(x))
        keep = torch.stack([torch.randperm(m.num_tokens)[:11] for _ in range(6)])
        tf, te = forms(m, lambda: m.forward_tokens(x[..., 0].repeat(2, 1, 1, 1), keep))
    assert rel(fused, exact) < tol and rel(tf, te) < tol


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_mamp_loss_and_gradients_agree_between_forms(dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(0)
    mcfg = MAMPConfig(decoder_dim=32, decoder_heads=4, decoder_depth=2)
    m = perturbed(MAMP(NTU, EncoderConfig(**TINY), mcfg, frames=FRAMES).to(dtype))
    x = torch.randn(2, 3, FRAMES, 25, 2, dtype=dtype).cumsum(2) * 0.1  # random walks: real motion

    def run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        m.zero_grad()
        loss = m(x, generator=torch.Generator().manual_seed(3))["loss"]
        loss.backward()
        return loss.detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}

    (lf, gf), (le, ge) = forms(m, run)
    assert rel(lf, le) < tol
    assert gf.keys() == ge.keys() and len(gf) == len(list(m.parameters()))
    worst = max(rel(gf[k], ge[k]) for k in gf)
    assert worst < 50 * tol, worst


def test_export_traces_the_written_out_form() -> None:
    m = SkeletonTransformer(NTU, EncoderConfig(**TINY), frames=FRAMES).eval()
    assert not exporting()
    traced = torch.jit.trace(m, (torch.randn(1, 3, FRAMES, 25, 2),), check_trace=False)
    graph = str(traced.inlined_graph)
    assert "scaled_dot_product_attention" not in graph and "aten::softmax" in graph
