"""torch -> ONNX: one model per stream and one fused ensemble, with metadata, checker and parity checks.

Model contract (docs/design.md §4, crossclr_infer.session): input ``skeleton`` float32 (batch, C, T, V, M),
dynamic batch axis only. Stream models output ``logits`` (batch, classes) and ``embedding`` (batch, hidden) =
the encoder's pooled features of that stream. The ensemble computes every stream's view inside the graph and
outputs ``logits`` = Σ_v w_v·logits_v, ``probabilities`` = softmax(logits), ``logits_<view>`` per stream and
``embedding`` = the mean of the streams' features (batch, hidden).

Every model is written into a temporary folder beside the output folder, checked with ``onnx.checker``, run in
onnxruntime against torch on random and real inputs (max |Δ| on logits ≤ ``tolerance``), and the folder is
renamed into place only when every check passed.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer import __version__
from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import atomic_output_dir
from crossclr_infer.layouts import Layout, layout_from_toml_text
from crossclr_infer.session import INPUT_NAME, ONNX_FORMAT
from training.encoders.transformer import fused_attention
from training.views import compute_view

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
# Opsets measured to export, pass onnx.checker and match torch in onnxruntime for every encoder (spatial,
# flow, adaptive, transformer), both graph forms, fp16 and int8, with torch 2.13 / onnxruntime 1.32:
# Einsum (adaptive graphs, the einsum form) needs 12, the per-channel int8 QDQ nodes 13; below 9 even the
# serving form fails. Above 23 the TorchScript exporter has no symbolic functions.
MIN_OPSET = 13
MAX_OPSET = 23
DYNAMO_MIN_OPSET = 18  # the dynamo exporter writes at least this opset (lower requests are raised to it)
TOLERANCE = 1e-4
# samples per torch / onnxruntime call of the parity check (and of a transformer's int8 accuracy check): the
# official-size transformer (750 tokens, 2 bodies) holds its attention maps per call (a plain graph: 36 MB per
# sample and block), so memory stays bounded whatever the number of inputs
PARITY_CHUNK = 4
# float16 models against torch float32: relative to max(1, |logits|), like TOLERANCE (measured: see README)
FP16_TOLERANCE = 2e-2
PRECISIONS = ("fp32", "fp16")
SUMMARY_NAME = "export.json"


class StreamNet(nn.Module):
    """skeleton (N, C, T, V, M) -> (logits (N, classes), embedding (N, hidden)) of one view."""

    def __init__(self, view: str, layout: Layout, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.view = view
        self.layout = layout
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder.forward_features(compute_view(x, self.view, self.layout))  # (N, hidden)
        return self.head(f), f


class EnsembleNet(nn.Module):
    """All streams in one graph: (logits, probabilities, logits_<view>…, embedding)."""

    def __init__(self, streams: Mapping[str, StreamNet], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.views = tuple(streams)
        self.streams = nn.ModuleDict(dict(streams))
        self.weights = tuple(float(weights[v]) for v in self.views)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, feats = [], []
        for v in self.views:
            lo, f = self.streams[v](x)
            logits.append(lo)
            feats.append(f)
        fused = logits[0] * self.weights[0]
        for w, lo in zip(self.weights[1:], logits[1:], strict=True):
            fused = fused + lo * w
        emb = torch.stack(feats, dim=0).mean(dim=0)  # (S, N, hidden) -> (N, hidden)
        return (fused, torch.softmax(fused, dim=1), *logits, emb)


# ------------------------------------------------------------------------------- serving form of the encoder

GRAPH_FORMS = ("matmul", "einsum")
DEFAULT_GRAPH_FORM = "matmul"
# the last block's temporal convolution runs through real DFT matrices when it has stride 1, at least this
# many channels and at most DFT_MAX_FRAMES frames (official encoder: block 10, 256 channels, 13 frames)
DFT_MIN_CHANNELS = 128
DFT_MAX_FRAMES = 64


def dft_matrices(frames: int, kernel: int, pad: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real DFT matrices (float64) of a zero-padded convolution ``out[t] = Σ_τ w[τ] x[t + τ − pad]`` over
    ``frames`` frames, as products of real matrices: ``out = inv @ (W_b @ (fwd @ x))`` with the per-product
    channel matrices ``W_b = Σ_τ taps[b, τ] w[:, :, τ]``.

    The circular convolution of length L = frames + pad equals the zero-padded one on the ``frames`` outputs
    (no wrapped tap reaches a non-zero frame). Its F = L // 2 + 1 frequencies (Hermitian symmetry) need one
    complex product each; with the kernel spectrum p + iq and the data spectrum r + is, Gauss's three real
    products t1 = p(r + s), t2 = (p + q)s, t3 = (q − p)r give Re = t1 − t2, Im = t1 + t3, and at the
    frequencies where both spectra are real (0, and L/2 for even L) p·r alone. So B = 3F − 2 (odd L) or 3F − 4
    (even L) channel products instead of T·kernel taps: at 13 frames and kernel 9, 25 instead of 117 per
    channel pair. ``fwd`` (B, T) gives each product's data (r + s, s or r), ``inv`` (T, B) sums the products
    back into frames (Re and Im combined, Hermitian weights, 1/L), ``taps`` (B, kernel) gives its kernel
    combination.
    """
    length = frames + pad
    t = torch.arange(frames, dtype=torch.float64)
    k = torch.arange(kernel, dtype=torch.float64)
    fwd, inv, taps = [], [], []
    for f in range(length // 2 + 1):
        ang = 2 * math.pi * f * t / length  # data and output phases (T,)
        ph = 2 * math.pi * f * (pad - k) / length  # kernel phases (K,)
        # data: r = Σ x·cos, s = −Σ x·sin; kernel: p = Σ w·cos, q = −Σ w·sin
        cos, sin, pc, ps = torch.cos(ang), torch.sin(ang), torch.cos(ph), -torch.sin(ph)
        if f == 0 or 2 * f == length:  # real spectra: Re = p·r, Im = 0, counted once
            fwd.append(cos)
            inv.append(cos)
            taps.append(pc)
            continue
        fwd += [cos - sin, -sin, cos]  # r + s, s, r
        inv += [2 * (cos - sin), -2 * cos, -2 * sin]  # t1, t2, t3 into Re·cos − Im·sin, twice (±f)
        taps += [pc, pc + ps, ps - pc]  # p, p + q, q − p
    return torch.stack(fwd), torch.stack(inv).t() / length, torch.stack(taps)


def bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """An eval-mode BatchNorm as ``y = scale·x + shift`` per channel (float64)."""
    scale = 1.0 / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
    return scale, shift


def _fold_conv(conv: nn.Conv2d, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias (float64) of ``bn(conv(x))`` as one convolution."""
    s, b = bn_scale_shift(bn)
    w = conv.weight.double() * s[:, None, None, None]
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(s)
    return w, bias * s + b


class ServingBlock(nn.Module):
    """One ST-GCN block with every BatchNorm folded and the graph product as a MatMul (see ServingSTGCN)."""

    @torch.no_grad()
    def __init__(self, block: nn.Module, a: torch.Tensor, frames_in: int, bias_channel: bool = True,
                 graph_first: bool | None = None) -> None:
        super().__init__()
        gcn = block.gcn
        k, v = a.shape[0], a.shape[1]
        c_out, c_in = gcn.out_channels, gcn.conv.in_channels
        self.k, self.v, self.c_in, self.c_out, self.frames_in = k, v, c_in, c_out, frames_in
        s1, sh1 = bn_scale_shift(block.tcn[0])  # the BN after the graph product
        w = gcn.conv.weight.double().reshape(k, c_out, c_in) * s1[None, :, None]  # (K, Cout, Cin)
        b = (gcn.conv.bias.double().reshape(k, c_out) if gcn.conv.bias is not None
             else torch.zeros(k, c_out, dtype=torch.float64)) * s1[None, :]  # (K, Cout)
        self.register_buffer("a", a.float())  # (K, V, W) with edge importance
        self.aggregate_first = c_in <= c_out if graph_first is None else graph_first
        self.bias_channel = bias_channel and self.aggregate_first
        if self.bias_channel:
            # conv over (k, c) of [x A_k ; β·1ᵀA_k]: the constant channel carries the conv bias through the
            # graph; β makes its weights b/β no larger than the channel's other weights, so that a per-channel
            # int8 weight scale is not set by the bias
            ratio = b.abs().amax(dim=0) / w.abs().amax(dim=(0, 2)).clamp_min(1e-12)  # (Cout,)
            self.bias_value = float(max(1.0, float(ratio.max())))
            wk = torch.cat([w, b[:, :, None] / self.bias_value], dim=2)  # (K, Cout, Cin + 1)
            self.register_buffer("w", wk.permute(1, 0, 2).reshape(c_out, k * (c_in + 1), 1, 1).float())
            self.register_buffer("b", sh1.float())
        elif self.aggregate_first:
            post = torch.einsum("kc,kw->cw", b, a.sum(dim=1)) + sh1[:, None]  # (Cout, W)
            self.register_buffer("w", w.permute(1, 0, 2).reshape(c_out, k * c_in, 1, 1).float())
            self.register_buffer("b", post[:, None, :].float())  # (Cout, 1, W)
        else:  # official order: the conv (bias included) then the graph product, then the BN shift
            self.register_buffer("w", w.reshape(k * c_out, c_in, 1, 1).float())
            self.register_buffer("conv_b", b.reshape(k * c_out).float())
            self.register_buffer("b", sh1[:, None, None].float())  # (Cout, 1, 1)
        conv = block.tcn[2]
        wt, bt = _fold_conv(conv, block.tcn[3])
        self.register_buffer("wt", wt.float())
        self.register_buffer("bt", bt.float())
        self.stride, self.pad = conv.stride[0], conv.padding[0]
        self.frames_out = (frames_in + 2 * self.pad - conv.kernel_size[0]) // self.stride + 1
        self.residual_kind = block.residual_kind
        if self.residual_kind == 2:
            wr, br = _fold_conv(block.residual[0], block.residual[1])
            self.register_buffer("wr", wr.float())
            self.register_buffer("br", br.float())

    def graph_conv(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(BN(graph conv(x))) of the block, (N, Cin, T, V) -> (N, Cout, T, W)."""
        k, v, t = self.k, self.v, self.frames_in
        if self.bias_channel:
            c = self.c_in + 1
            h = F.pad(x, (0, 0, 0, 0, 0, 1), value=self.bias_value)  # (N, Cin + 1, T, V), last channel β
            # (N, 1, C·T, V) @ (K, V, W) -> (N, K, C·T, W)
            h = torch.matmul(h.reshape(-1, 1, c * t, v), self.a)
            return torch.relu(F.conv2d(h.reshape(-1, k * c, t, v), self.w, self.b))
        if self.aggregate_first:
            h = torch.matmul(x.reshape(-1, 1, self.c_in * t, v), self.a)  # (N, K, Cin·T, W)
            return torch.relu(F.conv2d(h.reshape(-1, k * self.c_in, t, v), self.w) + self.b)
        y = F.conv2d(x, self.w, self.conv_b).reshape(-1, k, self.c_out * t, v)  # (N, K, Cout·T, V)
        y = torch.matmul(y, self.a).sum(dim=1).reshape(-1, self.c_out, t, v)  # Σ_k y_k A_k: (N, Cout, T, W)
        return torch.relu(y + self.b)

    def dft_applies(self, min_channels: int | None = None) -> bool:
        """The DFT form pays here: stride 1, wide (``DFT_MIN_CHANNELS``) and short (``DFT_MAX_FRAMES``)."""
        wide = self.c_out >= (DFT_MIN_CHANNELS if min_channels is None else min_channels)
        return self.stride == 1 and wide and self.frames_in <= DFT_MAX_FRAMES

    @torch.no_grad()
    def use_dft(self) -> None:
        """Compute the temporal convolution in the frequency domain from now on (``forward_pooled``): B real
        channel products (``dft_matrices``) instead of ``T·kernel`` taps, 4.7× fewer multiply-adds at 13
        frames and kernel 9; every step is a MatMul in a (T, C, N·V) layout."""
        fwd, inv, taps = dft_matrices(self.frames_in, self.wt.shape[2], self.pad)
        wf = torch.einsum("ock,bk->boc", self.wt.double()[:, :, :, 0], taps)  # (B, Cout, Cin)
        self.register_buffer("wf", wf.float())
        self.register_buffer("dft", fwd.float())
        self.register_buffer("idft", inv.float())
        bias = self.bt.double() + (self.br.double() if self.residual_kind == 2 else 0.0)
        self.register_buffer("bias_t", bias[:, None].float())  # (Cout, 1)
        if self.residual_kind == 2:
            self.register_buffer("wr_t", self.wr[:, :, 0, 0].clone())  # (Cout, Cin)
        self.dft_on = True

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output averaged over frames and joints, (N, Cin, T, V) -> (N, Cout)."""
        if not getattr(self, "dft_on", False):
            return self.forward(x).mean(dim=(2, 3))
        t, c, v = self.frames_in, self.c_out, self.v
        nb = self.wf.shape[0]
        h = self.graph_conv(x).permute(2, 1, 0, 3).reshape(t, -1)  # (N, C, T, V) -> (T, C·N·V)
        spec = torch.matmul(self.dft, h).reshape(nb, c, -1)  # (B, C, N·V)
        spec = torch.matmul(self.wf, spec).reshape(nb, -1)  # (B, Cout·N·V)
        y = torch.matmul(self.idft, spec).reshape(t, c, -1)  # (T, Cout, N·V)
        xt = x.permute(2, 1, 0, 3).reshape(t, self.c_in, -1)  # (T, Cin, N·V)
        res = torch.matmul(self.wr_t, xt) if self.residual_kind == 2 else xt if self.residual_kind == 1 else 0
        y = torch.relu(y + res + self.bias_t)
        return y.reshape(t, c, -1, v).mean(dim=(0, 3)).t()  # (T, Cout, N, V) -> (N, Cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(self.graph_conv(x), self.wt, self.bt, stride=(self.stride, 1), padding=(self.pad, 0))
        if self.residual_kind == 1:
            y = y + x
        elif self.residual_kind == 2:
            y = y + F.conv2d(x, self.wr, self.br, stride=(self.stride, 1))
        return torch.relu(y)


class ServingSTGCN(nn.Module):
    """Export-only form of an eval-mode ``STGCN`` (spatial or flow graph), the same map:

    - every BatchNorm folded: the input BN into one scale and shift per (channel, joint), the BN after each
      graph product into the block's 1×1 convolution, the temporal and residual BNs into their convolutions
      (all in float64, then float32);
    - the graph product ``einsum('nkctv,kvw->nctw')`` as one broadcast MatMul ``(N, 1, C·T, V) @ (K, V, W)``
      on the input side of the 1×1 convolution (the official order when C_in > C_out), so that no Einsum,
      Transpose or BatchNormalization is left in the graph, and the block's ReLU fuses into its convolution;
    - static shapes everywhere but the batch axis (no Shape/Gather chains in the graph);
    - with ``dft`` (default), the last block's temporal convolution through real DFT matrices when it is wide
      and short (``ServingBlock.use_dft``: the official encoder's last block, 65 % of its multiply-adds),
      followed directly by the pooling.
    """

    @torch.no_grad()
    def __init__(self, encoder: nn.Module, frames: int, *, dft: bool = True, bias_channel: bool = True,
                 graph_first: bool | None = None, dft_min_channels: int | None = None) -> None:
        super().__init__()
        a = encoder.A.double()  # (K, V, V)
        c, v = encoder.in_channels, a.shape[1]
        self.in_channels, self.num_joints, self.frames = c, v, frames
        self.num_person, self.hidden = encoder.num_person, encoder.cfg.hidden_dim
        s, b = bn_scale_shift(encoder.data_bn)  # channel index v·C + c
        self.register_buffer("in_scale", s.reshape(v, c).t()[:, None, :].float().contiguous())  # (C, 1, V)
        self.register_buffer("in_shift", b.reshape(v, c).t()[:, None, :].float().contiguous())
        blocks, t = [], frames
        for i, blk in enumerate(encoder.st_gcn_networks):
            ai = a if encoder.edge_importance is None else a * encoder.edge_importance[i].double()
            blocks.append(ServingBlock(blk, ai, t, bias_channel, graph_first))
            t = blocks[-1].frames_out
        self.blocks = nn.ModuleList(blocks)
        self.half_body = False
        if dft and blocks[-1].dft_applies(dft_min_channels):
            blocks[-1].use_dft()

    def with_half_body(self) -> ServingSTGCN:
        """A copy whose blocks compute in float16; the input affine and the pooling stay float32."""
        if getattr(self.blocks[-1], "dft_on", False):
            raise CrossclrError("a float16 serving encoder needs the direct temporal convolution; build it "
                                "with dft=False")
        out = copy.deepcopy(self)
        out.blocks.half()
        out.half_body = True
        return out

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        c, t, v = self.in_channels, self.frames, self.num_joints
        x = x.permute(0, 4, 1, 2, 3).reshape(-1, c, t, v)  # (N, C, T, V, M) -> (N·M, C, T, V)
        x = x * self.in_scale + self.in_shift
        if self.half_body:
            x = x.half()
        for block in self.blocks[:-1]:
            x = block(x)
        if self.half_body:
            x = self.blocks[-1](x).float().mean(dim=(2, 3))  # pooled in float32
        else:
            x = self.blocks[-1].forward_pooled(x)  # (N·M, hidden)
        return x.reshape(-1, self.num_person, self.hidden).mean(dim=1)  # (N, hidden)


# ----------------------------------------------------------------- fused attention of the transformer encoder

# How the transformer's attention is written into the graph (export_models(attention=...)):
# - "mha": onnxruntime's contrib com.microsoft.MultiHeadAttention (q, k, v and the qkv bias as inputs; its CPU
#   kernel never holds the (L, L) attention map of all heads at once);
# - "contrib-attention": com.microsoft.Attention (the packed qkv weight and bias are its inputs);
# - "onnx-attention": the standard Attention op of opset 23;
# - "plain": the training module as it is (MatMul, Softmax, MatMul).
# OpenVINO 2026.4 reads and runs all four. Measured in benchmarks/bench_attention_export.py (see the README).
ATTENTION_FORMS = ("mha", "contrib-attention", "onnx-attention", "plain")
DEFAULT_ATTENTION = "mha"
ONNX_ATTENTION_OPSET = 23
CONTRIB_DOMAIN = "com.microsoft"


class _AttentionOp(torch.autograd.Function):
    """softmax(q·kᵀ·scale)·v of ``x @ w + b`` split into q, k, v (official (B, L, 3, H, D/H) order) in torch;
    one fused attention node (``form``) in a TorchScript ONNX export."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, heads: int, scale: float,
                form: str) -> torch.Tensor:
        return fused_attention(torch.matmul(x, w) + b, heads, scale)  # (B, L, D)

    @staticmethod
    def symbolic(g: Any, x: Any, w: Any, b: Any, heads: int, scale: float, form: str) -> Any:
        if form == "contrib-attention":
            out = g.op(f"{CONTRIB_DOMAIN}::Attention", x, w, b, num_heads_i=heads, scale_f=scale)
        else:
            d = int(w.type().sizes()[0])
            sizes = g.op("Constant", value_t=torch.tensor([d, d, d], dtype=torch.int64))
            if form == "mha":  # the bias is added inside the op
                q, k, v = g.op("Split", g.op("MatMul", x, w), sizes, axis_i=-1, outputs=3)
                out = g.op(f"{CONTRIB_DOMAIN}::MultiHeadAttention", q, k, v, b, num_heads_i=heads,
                           scale_f=scale)
            else:  # ONNX Attention (opset 23) on (B, L, D) q, k, v
                q, k, v = g.op("Split", g.op("Add", g.op("MatMul", x, w), b), sizes, axis_i=-1, outputs=3)
                out = g.op("Attention", q, k, v, q_num_heads_i=heads, kv_num_heads_i=heads, scale_f=scale)
        out.setType(x.type())
        return out


class FusedAttention(nn.Module):
    """Export form of ``transformer.Attention`` built from its parameters only (``qkv``, ``proj``,
    ``num_heads``, ``scale``), whatever its forward is: (B, L, D) -> (B, L, D), the attention one node of
    kind ``form`` (see ATTENTION_FORMS) followed by the output projection."""

    def __init__(self, attn: nn.Module, form: str = DEFAULT_ATTENTION) -> None:
        super().__init__()
        if form not in ATTENTION_FORMS or form == "plain":
            raise CrossclrError(f"fused attention {form!r}: expected one of {list(ATTENTION_FORMS[:-1])}")
        self.form, self.num_heads, self.scale = form, int(attn.num_heads), float(attn.scale)
        self.register_buffer("w", attn.qkv.weight.detach().t().contiguous())  # (D, 3D): x @ w
        self.register_buffer("b", attn.qkv.bias.detach().clone())  # (3D,)
        self.proj = copy.deepcopy(attn.proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(_AttentionOp.apply(x, self.w, self.b, self.num_heads, self.scale, self.form))


class ServingTransformer(nn.Module):
    """Export form of ``SkeletonTransformer``: a copy whose blocks' ``attn`` modules are
    FusedAttention (``form``); everything else is the training module. ``source`` is the original encoder
    (the float16 export keeps its plain graph: onnxruntime's CPU attention kernels are float32)."""

    def __init__(self, encoder: nn.Module, form: str = DEFAULT_ATTENTION) -> None:
        super().__init__()
        self.form = form
        self.encoder = copy.deepcopy(encoder).eval()
        for blk in self.encoder.blocks:
            blk.attn = FusedAttention(blk.attn, form)
        self.source = [encoder]  # a list: not a submodule, not exported twice

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x)


def attention_form(module: nn.Module) -> str:
    """The attention form of a module to export: that of its ServingTransformer(s), else ``plain``."""
    forms = {m.form for m in module.modules() if isinstance(m, ServingTransformer)}
    return forms.pop() if len(forms) == 1 else "plain"


class HalfEncoder(nn.Module):
    """Any encoder in float16 behind float32 inputs and features (for encoders without a serving form)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(encoder).half().eval()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(x.half()).float()


def half_encoder(encoder: nn.Module) -> nn.Module:
    """The float16 form of a serving encoder: float32 at its input and output, float16 inside."""
    if isinstance(encoder, ServingSTGCN):
        return encoder.with_half_body().eval()
    if isinstance(encoder, ServingTransformer):
        return HalfEncoder(encoder.source[0])
    return HalfEncoder(encoder)


def serving_encoder(encoder: nn.Module, frames: int, form: str = DEFAULT_GRAPH_FORM, *, dft: bool = True,
                    bias_channel: bool = True, graph_first: bool | None = None,
                    attention: str = DEFAULT_ATTENTION) -> nn.Module:
    """The module to export for ``encoder``: ServingSTGCN for spatial/flow ST-GCNs when ``form`` is
    ``matmul`` (``dft``: its last block's temporal convolution in the frequency domain where that applies),
    ServingTransformer for transformers unless ``attention`` is ``plain``, else the encoder itself (adaptive
    graphs have no folded form)."""
    if form not in GRAPH_FORMS:
        raise CrossclrError(f"graph form {form!r}: expected one of {GRAPH_FORMS}")
    if attention not in ATTENTION_FORMS:
        raise CrossclrError(f"attention {attention!r}: expected one of {list(ATTENTION_FORMS)}")
    from training.encoders.stgcn import STGCN

    if form == "matmul" and isinstance(encoder, STGCN) and encoder.cfg.graph in ("spatial", "flow"):
        return ServingSTGCN(encoder, frames, dft=dft, bias_channel=bias_channel,
                            graph_first=graph_first).eval()
    if is_transformer(encoder) and attention != "plain":
        return ServingTransformer(encoder, attention).eval()
    return encoder


def output_names(kind: str, streams: Sequence[str]) -> list[str]:
    if kind == "stream":
        return ["logits", "embedding"]
    return ["logits", "probabilities", *[f"logits_{v}" for v in streams], "embedding"]


@dataclass(frozen=True)
class ExportMeta:
    """What the ONNX metadata needs, from a linear checkpoint's meta dict."""

    layout: Layout
    layout_toml: str
    class_names: tuple[str, ...]
    frames: int
    num_person: int
    in_channels: int
    fusion_weights: dict[str, float] = field(hash=False)
    preprocess: dict = field(hash=False)
    config: dict = field(hash=False)

    @staticmethod
    def from_checkpoint_meta(meta: Mapping[str, Any], streams: Sequence[str], source: str) -> ExportMeta:
        for key in ("layout", "class_names"):
            if not meta.get(key):
                raise CrossclrError(f"{source}: checkpoint has no {key!r}; expected a linear checkpoint "
                                    "(crossclr linear)")
        frames = int(meta.get("frames") or 0)
        if frames < 1:
            raise CrossclrError(f"{source}: checkpoint has no 'frames'; expected the cache's frame count")
        weights = dict(meta.get("fusion_weights") or {})
        missing = [v for v in streams if v not in weights]
        if missing:
            log.warning("%s: no fusion weight for %s; using 1.0", source, missing)
        text = meta["layout"]
        return ExportMeta(layout=layout_from_toml_text(text, f"{source} (layout)"), layout_toml=text,
                          class_names=tuple(meta["class_names"]), frames=frames,
                          num_person=int(meta.get("num_person") or 2),
                          in_channels=int(meta.get("in_channels") or 3),
                          fusion_weights={v: float(weights.get(v, 1.0)) for v in streams},
                          preprocess=dict(meta.get("preprocess") or {}),
                          config=dict(meta.get("config") or {}))

    def input_shape(self, batch: int) -> tuple[int, int, int, int, int]:
        return (batch, self.in_channels, self.frames, self.layout.num_joints, self.num_person)

    def props(self, kind: str, streams: Sequence[str], extra: Mapping[str, str] | None = None) -> dict[str,
                                                                                                       str]:
        out = {"crossclr_format": ONNX_FORMAT, "kind": kind, "layout": self.layout_toml,
               "frames": str(self.frames), "num_person": str(self.num_person),
               "streams": json.dumps(list(streams)),
               "class_names": json.dumps(list(self.class_names)),
               "fusion_weights": json.dumps({v: self.fusion_weights[v] for v in streams}),
               "preprocess": json.dumps(self.preprocess), "config": json.dumps(self.config, default=str),
               "version": __version__}
        out.update(extra or {})
        return out


def check_opset(opset: int, dynamo: bool) -> int:
    """The opset the models are written with: ``opset`` (or ``DYNAMO_MIN_OPSET`` for the dynamo exporter
    when lower); one-line CrossclrError naming --opset outside ``MIN_OPSET``..``MAX_OPSET``."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        why = ("Einsum needs 12 and per-channel int8 13" if opset < MIN_OPSET
               else "the exporter knows no later one")
        raise CrossclrError(f"--opset {opset}: outside the opsets our models export at ({why}); expected an "
                            f"opset from {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    if dynamo and opset < DYNAMO_MIN_OPSET:
        log.info("--opset %d with --dynamo: the dynamo exporter writes opset %d", opset, DYNAMO_MIN_OPSET)
        return DYNAMO_MIN_OPSET
    return opset


def check_attention(attention: str, opset: int, dynamo: bool) -> str:
    """The attention form the transformers are written with: ``attention`` (one of ATTENTION_FORMS), or
    ``plain`` with the dynamo exporter (the fused forms are TorchScript symbolic functions); one-line
    CrossclrError for an unknown form or ``onnx-attention`` below opset 23."""
    if attention not in ATTENTION_FORMS:
        raise CrossclrError(f"attention {attention!r}: expected one of {list(ATTENTION_FORMS)}")
    if dynamo and attention != "plain":
        log.info("attention %s with --dynamo: the dynamo exporter writes the plain attention graph",
                 attention)
        return "plain"
    if attention == "onnx-attention" and opset < ONNX_ATTENTION_OPSET:
        raise CrossclrError(f"attention onnx-attention needs --opset {ONNX_ATTENTION_OPSET} (the first opset "
                            f"with the ONNX Attention op); got --opset {opset}")
    return attention


def export_graph(module: nn.Module, path: Path, names: Sequence[str], example: torch.Tensor, *, opset: int,
                 dynamo: bool) -> None:
    """torch.onnx.export with the ``skeleton`` input and a dynamic batch axis only."""
    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            prog = torch.onnx.export(module, (example,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=list(names), opset_version=max(opset, DYNAMO_MIN_OPSET),
                                     dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False)
            prog.save(str(path))
        else:
            contrib = attention_form(module) in ("mha", "contrib-attention")
            torch.onnx.export(module, (example,), str(path), input_names=[INPUT_NAME],
                              output_names=list(names),
                              dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
                              opset_version=opset, custom_opsets={CONTRIB_DOMAIN: 1} if contrib else None,
                              dynamo=False, do_constant_folding=True)


def set_metadata(path: Path, props: Mapping[str, str]) -> None:
    """Replace the model's metadata_props and validate it with onnx.checker."""
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "crossclr"
    model.producer_version = __version__
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def compare(module: nn.Module, path: Path, names: Sequence[str], inputs: Mapping[str, np.ndarray], *,
            optimize: bool = True, chunk: int = PARITY_CHUNK) -> dict[str, dict[str, float]]:
    """Max |ORT − torch| per output, for each named input batch, and the output's scale max(1, max|torch|)
    under ``"<output>:scale"``. ``optimize=False`` runs onnxruntime without graph optimizations: a float16
    model then keeps every cast that onnxruntime's CPU provider inserts around the float16 nodes it runs in
    float32, so activations are rounded to float16 between operations as float16 storage on a GPU does.
    Both run ``chunk`` samples at a time, so that memory does not grow with the size of an input batch."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    out: dict[str, dict[str, float]] = {}
    module.eval()
    for label, x in inputs.items():
        per = out[label] = {n: 0.0 for n in names} | {f"{n}:scale": 1.0 for n in names}
        for s in range(0, len(x), chunk):
            xs = x[s:s + chunk]
            got = sess.run(list(names), {INPUT_NAME: xs})
            with torch.no_grad():
                want = module(torch.from_numpy(xs))
            for n, g, w in zip(names, got, want, strict=True):
                if g.size:
                    per[n] = max(per[n], float(np.max(np.abs(g - w.numpy()))))
                    per[f"{n}:scale"] = max(per[f"{n}:scale"], float(np.max(np.abs(w.numpy()))))
    return out


def random_skeletons(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random inputs on the scale of preprocessed skeletons: a random pose per joint plus a slow random walk
    over frames, so motion and acceleration stay as small as real ones (independent noise per frame would
    give motion logits hundreds of times larger than any real input and test fp32 rounding, not the export).
    """
    n, c, t, v, m = shape
    pose = 0.3 * rng.standard_normal((n, c, 1, v, m))
    walk = np.cumsum(0.01 * rng.standard_normal((n, c, t, v, m)), axis=2)  # (N, C, T, V, M)
    return (pose + walk).astype(np.float32)


def parity_failures(diffs: Mapping[str, Mapping[str, float]], tolerance: float) -> list[str]:
    """Outputs whose |ORT − torch| exceeds ``tolerance`` × max(1, max|logits|): absolute for logits up to 1,
    relative beyond (fp32 rounding grows with the logits' magnitude; a wrong op differs by O(1))."""
    return [f"{label}/{n}: {d:.2e} (|logits| up to {per[n + ':scale']:.3g})"
            for label, per in diffs.items() for n, d in per.items()
            if n.startswith("logits") and ":" not in n and not d <= tolerance * per[f"{n}:scale"]]


@dataclass(frozen=True)
class ExportResult:
    out_dir: Path
    files: dict[str,
                str] = field(hash=False)          # model name ("joint", "ensemble", "ensemble.int8") -> file
    parity: dict[str, Any] = field(hash=False)         # model name -> {inputs: {output: max abs diff}}
    quantization: dict[str, Any] = field(hash=False)   # model name -> accuracy change etc.


def read_real_inputs(cache_path: str | Path | None, meta: ExportMeta, n: int = 8, split: str | None = None
                     ) -> np.ndarray | None:
    """Up to ``n`` samples (N, C, T, V, M) of a cache (val split when present) for the parity check."""
    if cache_path is None:
        return None
    from crossclr_infer.cache import open_cache

    with open_cache(cache_path) as cache:
        if cache.layout.num_joints != meta.layout.num_joints:
            raise CrossclrError(f"{cache_path}: cache layout has {cache.layout.num_joints} joints, the "
                                f"checkpoint {meta.layout.num_joints}")
        name = split or ("val" if "val" in cache.splits else cache.splits[0])
        sp = cache.split(name)
        idx = np.linspace(0, len(sp) - 1, num=min(n, len(sp))).round().astype(np.int64)
        x = sp.read(np.unique(idx)).astype(np.float32)
    if x.shape[1:] != meta.input_shape(1)[1:]:
        raise CrossclrError(f"{cache_path}: samples {x.shape[1:]}, the checkpoint expects "
                            f"{meta.input_shape(1)[1:]}")
    return x


def export_models(encoders: Mapping[str, nn.Module], heads: Mapping[str, nn.Module], meta: Mapping[str, Any],
                  out_dir: str | Path, *, streams: Sequence[str] | None = None, ensemble: bool = True,
                  opset: int = DEFAULT_OPSET, dynamo: bool = False, data: str | Path | None = None,
                  quantize: str | None = None, calibration: str | Path | None = None,
                  tolerance: float = TOLERANCE, overwrite: bool = False, seed: int = 0,
                  graph_form: str = DEFAULT_GRAPH_FORM, precision: str = "fp32",
                  fp16_tolerance: float = FP16_TOLERANCE, int8_config: Any = None,
                  source: str = "checkpoint", attention: str = DEFAULT_ATTENTION) -> ExportResult:
    """Export stream models (and the ensemble) of ``encoders``/``heads`` into ``out_dir``.

    ``meta``: the linear checkpoint's fields (layout TOML, class_names, frames, num_person, fusion_weights,
    preprocess, config). ``data``: a cache whose samples are the real inputs of the parity check (and, with
    ``quantize="int8"``, the calibration and accuracy data unless ``calibration`` is given).
    ``graph_form``: ``matmul`` exports ServingSTGCN (BatchNorm folded, graph product as MatMul), ``einsum``
    the training modules as they are. ``precision="fp16"`` also writes ``NAME.fp16.onnx`` (float16 inside,
    float32 inputs and outputs), checked against torch float32 within ``fp16_tolerance``. Parity is always
    measured against the training modules in float32. ``int8_config``: an export.quantize.Int8Config
    (default: its DEFAULT_INT8); int8 models are quantized from the serving form without the DFT block.
    ``attention``: how a transformer's attention is written (ATTENTION_FORMS; default one fused
    MultiHeadAttention node per block for onnxruntime's kernel; the dynamo exporter keeps ``plain``; the
    float16 models keep ``plain``); recorded in the metadata key ``attention``.
    """
    streams = list(streams) if streams else list(heads)
    absent = [v for v in streams if v not in encoders or v not in heads]
    if absent:
        raise CrossclrError(f"{source}: no encoder/head for stream {absent[0]!r}; it holds {list(heads)}")
    if quantize not in (None, "int8"):
        raise CrossclrError(f"--quantize {quantize!r}: only 'int8' is supported")
    if quantize and not (calibration or data):
        raise CrossclrError("--quantize int8 needs --calibration CACHE.h5 (samples to calibrate on)")
    if precision not in PRECISIONS:
        raise CrossclrError(f"--precision {precision!r}: expected one of {list(PRECISIONS)}")
    opset = check_opset(opset, dynamo)
    attention = check_attention(attention, opset, dynamo)
    em = ExportMeta.from_checkpoint_meta(meta, streams, source)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise CrossclrError(f"{out_dir}: output folder exists and is not empty; pass --overwrite or another "
                            f"--out")
    refs = {v: StreamNet(v, em.layout, encoders[v], heads[v]).eval() for v in streams}
    serving = {v: serving_encoder(encoders[v], em.frames, graph_form, attention=attention) for v in streams}
    nets = {v: StreamNet(v, em.layout, serving[v], heads[v]).eval() for v in streams}
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {"random": random_skeletons(rng, em.input_shape(3))}
    real = read_real_inputs(data or calibration, em)
    if real is not None:
        inputs["real"] = real
    else:
        log.warning("no --data cache given: parity checked on random inputs only")
    example = torch.from_numpy(random_skeletons(rng, em.input_shape(2)))
    models = model_plan(refs, nets, em.fusion_weights, streams, ensemble, precision, em.frames, graph_form,
                        attention)
    with atomic_output_dir(out_dir) as tmp:  # the folder appears complete or not at all
        files, parity = {}, {}
        for name, plan in models.items():
            path = tmp / f"{name}.onnx"
            names = output_names(plan.kind, plan.streams)
            export_graph(plan.module, path, names, example, opset=opset, dynamo=dynamo)
            extra = {"opset": str(opset), "precision": plan.precision, "graph_form": graph_form,
                     "attention": attention_form(plan.module)}
            set_metadata(path, em.props(plan.kind, plan.streams, extra))
            tol = fp16_tolerance if plan.precision == "fp16" else tolerance
            parity[name] = check_parity(plan.reference, path, names, inputs, tol, f"{source}: {name}.onnx",
                                        optimize=plan.precision == "fp32")
            files[name] = path.name
        quant: dict[str, Any] = {}
        if quantize:
            fp32 = {n: plan for n, plan in models.items() if plan.precision == "fp32"}
            quant = quantize_from_sources(tmp, fp32, em, example, calibration or data, parity, opset=opset,
                                          dynamo=dynamo, config=int8_config,
                                          transformer=any(is_transformer(encoders[v]) for v in streams))
            files.update({f"{n}.int8": q["file"] for n, q in quant.items()})
        summary = {"source": source, "streams": streams, "files": files, "parity": parity,
                   "tolerance": tolerance, "fp16_tolerance": fp16_tolerance if precision == "fp16" else None,
                   "graph_form": graph_form, "precision": precision, "attention": attention,
                   "quantization": quant, "opset": opset, "exporter": "dynamo" if dynamo else "torchscript",
                   "version": __version__}
        (tmp / SUMMARY_NAME).write_text(json.dumps(summary, indent=1), encoding="utf-8")
    return ExportResult(out_dir, files, parity, quant)


def is_transformer(encoder: nn.Module) -> bool:
    """The encoder is MAMP's transformer (``[model] graph = "transformer"``)."""
    return getattr(getattr(encoder, "cfg", None), "graph", "") == "transformer"


def quantize_from_sources(folder: Path, plans: Mapping[str, ModelPlan], em: ExportMeta, example: torch.Tensor,
                          cache: str | Path, parity: Mapping[str, Any], *, opset: int, dynamo: bool,
                          config: Any = None, transformer: bool = False) -> dict[str, Any]:
    """``NAME.int8.onnx`` for every plan, quantized from its ``int8_source``: the serving form with the
    direct temporal convolution (export.quantize quantizes convolutions; the DFT form's MatMuls would stay
    float32). Transformer encoders get dynamic int8 of their MatMul/Gemm weights instead
    (``quantize.transformer_int8``). The source files are removed afterwards."""
    from .quantize import DEFAULT_INT8, quantize_models, transformer_int8

    config = config or DEFAULT_INT8
    if transformer:
        config = transformer_int8(config)

    sources: dict[str, str] = {}
    for name, plan in plans.items():
        src = folder / f"{name}.int8-source.onnx"
        export_graph(plan.int8_source, src, output_names(plan.kind, plan.streams), example, opset=opset,
                     dynamo=dynamo)
        set_metadata(src, em.props(plan.kind, plan.streams, {"opset": str(opset), "precision": "fp32",
                                                             "attention": attention_form(plan.int8_source)}))
        sources[name] = src.name
    try:
        return quantize_models(folder, sources, cache, em, float_parity={n: parity[n] for n in plans},
                               config=config, eval_batch=PARITY_CHUNK if transformer else 64)
    finally:
        for fname in sources.values():
            (folder / fname).unlink(missing_ok=True)


@dataclass(frozen=True)
class ModelPlan:
    """One ONNX file to write: the module to export, the float32 training module it must equal, and the
    module whose export int8 quantizes (the same map)."""

    module: nn.Module
    reference: nn.Module
    kind: str
    streams: list[str]
    precision: str
    int8_source: nn.Module | None = None


def model_plan(refs: Mapping[str, StreamNet], nets: Mapping[str, StreamNet], weights: Mapping[str, float],
               streams: Sequence[str], ensemble: bool, precision: str, frames: int,
               graph_form: str = DEFAULT_GRAPH_FORM, attention: str = DEFAULT_ATTENTION
               ) -> dict[str, ModelPlan]:
    """File stem -> ModelPlan: the stream models, the ensemble, and their ``.fp16`` twins when asked (the
    direct temporal convolution in float16: the DFT form is for CPUs)."""
    direct = {v: StreamNet(v, nets[v].layout, serving_encoder(refs[v].encoder, frames, graph_form, dft=False,
                                                              attention=attention),
                           nets[v].head).eval() for v in streams}  # no DFT: for int8 and float16
    plans = {v: ModelPlan(nets[v], refs[v], "stream", [v], "fp32", direct[v]) for v in streams}
    if ensemble:
        plans["ensemble"] = ModelPlan(EnsembleNet(nets, weights).eval(), EnsembleNet(refs, weights).eval(),
                                      "ensemble", list(streams), "fp32", EnsembleNet(direct, weights).eval())
    if precision == "fp16":
        half = {v: StreamNet(v, nets[v].layout, half_encoder(direct[v].encoder), nets[v].head).eval()
                for v in streams}
        for name, plan in list(plans.items()):
            module = EnsembleNet(half, weights).eval() if plan.kind == "ensemble" else half[name]
            plans[f"{name}.fp16"] = ModelPlan(module, plan.reference, plan.kind, plan.streams, "fp16")
    return plans


def check_parity(reference: nn.Module, path: Path, names: Sequence[str], inputs: Mapping[str, np.ndarray],
                 tolerance: float, what: str, *, optimize: bool = True) -> dict[str, Any]:
    """Compare onnxruntime with the torch reference; raise when beyond ``tolerance``, else the summary."""
    diffs = compare(reference, path, names, inputs, optimize=optimize)
    bad = parity_failures(diffs, tolerance)
    if bad:
        raise CrossclrError(f"{what} differs from torch beyond {tolerance:g} × max(1, |logits|) "
                            f"({'; '.join(bad)}); export aborted, nothing written")
    worst = max(d for per in diffs.values() for n, d in per.items()
                if n.startswith("logits") and ":" not in n)
    log.info("%s: max |ORT - torch| on logits %.2e (%s)", what, worst, ", ".join(inputs))
    return {"max_abs_diff_logits": worst, "tolerance": tolerance, "per_input": diffs}


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, **kwargs: Any) -> ExportResult:
    """Export a linear checkpoint (EVAL's ``training.protocols.io.load_linear``)."""
    from training.protocols.io import load_linear

    check_opset(kwargs.get("opset", DEFAULT_OPSET), kwargs.get("dynamo", False))  # before the slow part
    encoders, heads, meta = load_linear(checkpoint)
    return export_models(encoders, heads, meta, out_dir, source=str(checkpoint), **kwargs)
