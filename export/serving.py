"""Serving modules: what export writes into the ONNX graph for each encoder, and the registry that picks it.

``StreamNet`` (one view: logits and pooled features) and ``EnsembleNet`` (every stream in one graph) wrap an
encoder's serving form. The serving form of an encoder is chosen by its ``kind`` class attribute through
``register_serving``; the two built-in kinds are registered at the bottom of this module:

- ``STGCN``: ``ServingSTGCN`` (every BatchNorm folded, the graph product as MatMul, the last block's temporal
  convolution through DFT matrices) for fixed graphs in the ``matmul`` graph form; static int8;
- ``SkeletonTransformer``: ``ServingTransformer`` (each block's attention as one fused node of a form in
  ``ATTENTION_FORMS``); dynamic int8 (static calibration would record every attention map).

An encoder whose kind has no registered serving form is exported as it is (its own ``forward_features``) and
quantized statically, so a new encoder kind exports without a change here. ``half_encoder`` gives the float16
twin of any serving form.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from training.encoders.stgcn import STGCN
from training.encoders.transformer import SkeletonTransformer, fused_attention
from training.views import compute_view


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

    @staticmethod
    def folds(encoder: nn.Module) -> bool:
        """The encoder's graph is fixed (no block learns a per-sample adjacency): it folds into this form."""
        return not any(blk.gcn.adaptive for blk in encoder.st_gcn_networks)

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
# OpenVINO 2026.4 reads and runs all four. Measured in benchmarks/bench_attention_export.py (docs/figures.md).
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


# ------------------------------------------------------------------------ serving registry, by encoder kind

INT8_MODES = ("static", "dynamic")


@dataclass(frozen=True)
class ServingOptions:
    """How the export asks for an encoder's serving form (``serving_encoder``'s arguments)."""

    frames: int                           # frames of the exported input
    graph_form: str = DEFAULT_GRAPH_FORM  # GRAPH_FORMS: matmul (folded serving form) or einsum (as trained)
    dft: bool = True                      # ST-GCN: the last block's temporal convolution through DFT matrices
    bias_channel: bool = True             # ST-GCN: the conv bias carried through the graph as a channel
    graph_first: bool | None = None       # ST-GCN: graph product before the 1×1 conv (None: when cheaper)
    attention: str = DEFAULT_ATTENTION    # transformers: ATTENTION_FORMS


@dataclass(frozen=True)
class ServingSpec:
    """How one encoder kind is exported. ``build(encoder, options)`` returns the module to export (the
    encoder itself where it has no other form for those options); ``int8``: ``static`` (calibrated QDQ of the
    convolutions) or ``dynamic`` (MatMul/Gemm weights, activations quantized at run time); ``has_attention``:
    the encoder holds (L, L) attention maps, so its int8 accuracy check runs a few samples a call."""

    build: Callable[[nn.Module, ServingOptions], nn.Module]
    int8: str = "static"
    has_attention: bool = False


def _as_is(encoder: nn.Module, options: ServingOptions) -> nn.Module:
    return encoder


AS_IS = ServingSpec(build=_as_is)  # encoder kinds without a registered serving form
_SERVING: dict[str, ServingSpec] = {}


def register_serving(kind: str, build: Callable[[nn.Module, ServingOptions], nn.Module], *,
                     int8: str = "static", has_attention: bool = False) -> ServingSpec:
    """Register the serving form of the encoders whose class attribute ``kind`` is ``kind``."""
    if int8 not in INT8_MODES:
        raise CrossclrError(f"serving form of {kind!r}: int8 {int8!r}, expected one of {list(INT8_MODES)}")
    if kind in _SERVING:
        raise CrossclrError(f"serving form of encoder kind {kind!r} is already registered")
    spec = _SERVING[kind] = ServingSpec(build=build, int8=int8, has_attention=has_attention)
    return spec


def serving_spec(encoder: nn.Module) -> ServingSpec:
    """The registered serving form of ``encoder``'s kind, else ``AS_IS`` (exported as it is, static int8)."""
    return _SERVING.get(getattr(encoder, "kind", None), AS_IS)


def serving_encoder(encoder: nn.Module, frames: int, form: str = DEFAULT_GRAPH_FORM, *, dft: bool = True,
                    bias_channel: bool = True, graph_first: bool | None = None,
                    attention: str = DEFAULT_ATTENTION) -> nn.Module:
    """The module to export for ``encoder``, from the serving form registered for its ``kind``: ServingSTGCN
    for fixed-graph ST-GCNs when ``form`` is ``matmul`` (``dft``: its last block's temporal convolution in the
    frequency domain where that applies), ServingTransformer for transformers unless ``attention`` is
    ``plain``, else the encoder itself (adaptive graphs and unregistered kinds have no other form)."""
    if form not in GRAPH_FORMS:
        raise CrossclrError(f"graph form {form!r}: expected one of {GRAPH_FORMS}")
    if attention not in ATTENTION_FORMS:
        raise CrossclrError(f"attention {attention!r}: expected one of {list(ATTENTION_FORMS)}")
    options = ServingOptions(frames=frames, graph_form=form, dft=dft, bias_channel=bias_channel,
                             graph_first=graph_first, attention=attention)
    return serving_spec(encoder).build(encoder, options)


def _serving_stgcn(encoder: nn.Module, options: ServingOptions) -> nn.Module:
    if options.graph_form != "matmul" or not ServingSTGCN.folds(encoder):
        return encoder
    return ServingSTGCN(encoder, options.frames, dft=options.dft, bias_channel=options.bias_channel,
                        graph_first=options.graph_first).eval()


def _serving_transformer(encoder: nn.Module, options: ServingOptions) -> nn.Module:
    return encoder if options.attention == "plain" else ServingTransformer(encoder, options.attention).eval()


register_serving(STGCN.kind, _serving_stgcn, int8="static")
register_serving(SkeletonTransformer.kind, _serving_transformer, int8="dynamic", has_attention=True)
