"""Skeleton transformer encoder of MAMP (Mao et al., ICCV 2023), the backbone of masked motion prediction.

Each body is one sequence of tokens: a Conv2d with kernel = stride = (t_patch, 1) cuts (C, T, V) into
(T/t_patch)·V patches of t_patch frames of one joint; a learnable temporal embedding (1, T/p, 1, D) and a
joint embedding (1, 1, V, D) are added; pre-norm blocks attend over all tokens at once; a final LayerNorm.

Submodule and parameter names are the official checkpoint keys (``joints_embed.proj.*``, ``temp_embed``,
``pos_embed``, ``blocks.{i}.norm1|attn.qkv|attn.proj|norm2|mlp.fc1|mlp.fc2``, ``norm``), so official weights
load by name (``training.importers.mamp``). Initialisation is the official one: trunc-normal (std 0.02)
embeddings, xavier-uniform Linear weights with zero biases, LayerNorm ones/zeros, the patch Conv2d at
PyTorch's default.

Shape letters: N batch, M bodies, C channels, T frames, V joints, p = t_patch, L = (T/p)·V tokens,
K kept tokens, D width, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from training.encoders.config import EncoderConfig
from training.encoders.heads import ProjectedEncoder, projector_head
from training.encoders.registry import EncoderKind, encoder_kind, register_encoder


class DropPath(nn.Module):
    """Stochastic depth: zero the whole residual branch of a sample with probability ``p`` (training only),
    scaling kept samples by 1 / (1 − p)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)  # one draw per sample
        mask = torch.floor(keep + torch.rand(shape, dtype=x.dtype, device=x.device))
        return x / keep * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear(D → hidden) – exact GELU – Linear(hidden → D)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def fused_attention(qkv: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
    """softmax(q·kᵀ·scale)·v by ``scaled_dot_product_attention`` from the qkv projection (B, L, 3D), split in
    the official (B, L, 3, H, D/H) order; returns (B, L, D) before the output projection. Shared with the
    export's fused attention node (``export.onnx_export``)."""
    b, n, d3 = qkv.shape
    d = d3 // 3
    qkv = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)  # (B, L, 3D) -> (3, B, H, L, D/H)
    out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], scale=scale)  # (B, H, L, D/H)
    return out.transpose(1, 2).reshape(b, n, d)  # (B, H, L, D/H) -> (B, L, D)


class Attention(nn.Module):
    """Multi-head self-attention softmax(q·kᵀ·scale)·v, (B, L, D) -> (B, L, D); scale = (D/H)^-0.5.

    ``fused`` (default) runs torch's ``scaled_dot_product_attention`` (on CPU its flash kernel: the
    (B, H, L, L) score matrix is never held, forward or backward); ``fused=False`` is the official written-out
    form, bit for bit the official code's arithmetic. The two agree to float rounding (docs/results.md "MAMP
    transformer" gives the measured differences). ONNX export always traces the written-out form
    (``exporting``), the graph the exporter and onnxruntime's attention fusion expect. ``set_fused_attention``
    switches a whole model.
    """

    def __init__(self, dim: int, num_heads: int, fused: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise CrossclrError(f"attention: width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and not exporting():
            return self.forward_fused(x)
        return self.forward_exact(x)

    def forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(fused_attention(self.qkv(x), self.num_heads, self.scale))

    def forward_exact(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.num_heads
        # the official (B, L, 3, H, D/H) split of the qkv output, written per tensor (one ONNX Split, then
        # Reshape + Transpose(0, 2, 1, 3) each: the pattern onnxruntime's attention fusion detects)
        q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2)  # (B, L, D) -> (B, L, H, D/H) -> (B, H, L, D/H)
                   for t in self.qkv(x).chunk(3, dim=-1))
        attn = torch.matmul(q, k.transpose(-2, -1)) * self.scale  # (B, H, L, L)
        attn = attn.softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)  # (B, H, L, D/H) -> (B, L, D)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, fused={self.fused}"


def exporting() -> bool:
    """True while torch.onnx / torch.export / TorchScript tracing records the model."""
    return bool(torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_exporting())


def set_fused_attention(module: nn.Module, fused: bool) -> nn.Module:
    """Switch every ``Attention`` inside ``module`` to the fused (SDPA) or the official written-out form."""
    for m in module.modules():
        if isinstance(m, Attention):
            m.fused = bool(fused)
    return module


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)), each branch under DropPath."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv2d(C → D, kernel = stride = (p, 1)): (B, C, T, V) -> (B, T/p, V, D)."""

    def __init__(self, in_channels: int, dim: int, t_patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=(t_patch, 1), stride=(t_patch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, D, T/p, V) -> (B, T/p, V, D)


def init_vit_weights(module: nn.Module) -> None:
    """The official initialisation of Linear and LayerNorm layers (apply with ``Module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Stochastic depth per block, linear from 0 (first block) to ``rate`` (last block), as in timm."""
    return [float(r) for r in torch.linspace(0.0, float(rate), depth)]


class SkeletonTransformer(ProjectedEncoder, nn.Module):
    """MAMP encoder over (N, C, T, V, M) skeletons; every body is its own sequence of L = (T/p)·V tokens.

    ``forward_features`` -> (N, D): the final-LayerNorm tokens averaged over bodies, time tokens and joints
    (the official linear-probe feature); ``forward_head`` -> the projector output (identity when
    ``projector="none"``); ``forward_tokens`` encodes per-body sequences, optionally only kept tokens (MAMP).
    """

    kind = "transformer"  # the registered encoder kind (training.encoders)
    # the linear probe standardises its features by default (measured: the plain probe at lr 3.0 diverged on
    # every real data set and seed, the standardised one did not; docs/protocols.md)
    probe_standardize = True
    feature_budget_bytes: int = 256 * 2**20  # no-grad forward_features: activation budget per chunk
    feature_chunk: int | None = None  # samples per no-grad forward_features call (None: by budget, 0: all)

    def __init__(self, layout: Layout, cfg: EncoderConfig, num_person: int = 2, in_channels: int = 3,
                 frames: int = 120) -> None:
        super().__init__()
        if encoder_kind(cfg).name != self.kind:
            raise CrossclrError(f"transformer encoder: config graph is {cfg.graph!r}; expected 'transformer'")
        if not isinstance(frames, int) or frames < 1 or frames % cfg.t_patch:
            raise CrossclrError(f"transformer encoder: frames {frames!r} is not a positive multiple of "
                                f"t_patch {cfg.t_patch}; resample sequences to a multiple of it")
        self.cfg = cfg
        self.layout = layout
        self.num_person = num_person
        self.in_channels = in_channels
        self.frames = frames
        self.num_joints = layout.num_joints
        self.t_tokens = frames // cfg.t_patch
        d = cfg.hidden_dim
        self.joints_embed = PatchEmbed(in_channels, d, cfg.t_patch)
        self.blocks = nn.ModuleList([Block(d, cfg.num_heads, cfg.mlp_ratio, r)
                                     for r in drop_path_rates(cfg.drop_path, cfg.depth)])
        self.norm = nn.LayerNorm(d)
        self.temp_embed = nn.Parameter(torch.zeros(1, self.t_tokens, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1, self.num_joints, d))
        nn.init.trunc_normal_(self.temp_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks.apply(init_vit_weights)
        self.norm.apply(init_vit_weights)
        self.fc = projector_head(cfg)

    @property
    def num_tokens(self) -> int:
        """L = (T/p)·V tokens per body."""
        return self.t_tokens * self.num_joints

    def check_input(self, x: torch.Tensor, ndim: int) -> None:
        """CrossclrError unless x is (…, C, T, V[, M]) with this model's C, T and V."""
        if torch.jit.is_tracing():  # sizes are traced values during ONNX export; the graph fixes C, T, V
            return
        want = "(N, C, T, V, M)" if ndim == 5 else "(N·M, C, T, V)"
        if x.dim() != ndim:
            raise CrossclrError(f"transformer encoder: expected a {ndim}-d input {want}, got shape "
                                f"{tuple(x.shape)}")
        c, t, v = x.shape[1], x.shape[2], x.shape[3]
        for name, expected, got in (("channels C", self.in_channels, c), ("frames T", self.frames, t),
                                    ("joints V", self.num_joints, v)):
            if got != expected:
                raise CrossclrError(f"transformer encoder: expected {expected} {name}, got {got} (input "
                                    f"{want} = {tuple(x.shape)}); resample or select joints to match")

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding plus temporal and joint embeddings: (B, C, T, V) -> (B, L, D), token t'·V + v."""
        self.check_input(x, 4)
        tok = self.joints_embed(x) + self.pos_embed + self.temp_embed  # (B, T/p, V, D)
        return tok.flatten(1, 2)  # (B, T/p, V, D) -> (B, L, D)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encode per-body sequences: x (B, C, T, V), keep (B, K) token indices or None (all L tokens).

        Returns the final-LayerNorm tokens, (B, K, D) in the order of ``keep`` (or (B, L, D)).
        """
        tok = self.embed(x)  # (B, L, D)
        if keep is not None:
            idx = keep.unsqueeze(-1).expand(-1, -1, tok.shape[-1])  # (B, K) -> (B, K, D)
            tok = torch.gather(tok, 1, idx)
        for blk in self.blocks:
            tok = blk(tok)
        return self.norm(tok)

    def activation_bytes_per_sample(self) -> int:
        """Peak activation bytes of one sample's (M bodies') no-grad ``forward_features`` (an estimate).

        Per token a block holds about 12·D values at once (residual, norm, qkv and its per-head copy, the
        attention output; then fc1 and GELU at mlp_ratio·D each); the written-out attention adds its
        (H, L, L) scores and their softmax."""
        d, n_tok, h = self.cfg.hidden_dim, self.num_tokens, self.cfg.num_heads
        per_body = n_tok * max(12, 2 * int(self.cfg.mlp_ratio) + 4) * d
        if not all(getattr(b.attn, "fused", False) for b in self.blocks):
            per_body += 2 * h * n_tok * n_tok
        return per_body * self.num_person * 4  # float32

    def feature_chunk_size(self) -> int:
        """Samples per ``forward_features`` call in no-grad use: ``feature_chunk`` when set (0 = no
        chunking), else as many as keep the activations under ``feature_budget_bytes``."""
        if self.feature_chunk is not None:
            return int(self.feature_chunk) or 2**62
        return max(1, self.feature_budget_bytes // self.activation_bytes_per_sample())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> (N, D): mean over bodies, time tokens and joints of the encoded tokens.

        Without autograd (evaluation, feature extraction) the batch is encoded in chunks of
        ``feature_chunk_size()`` samples, so memory stays bounded at any batch size; samples are independent,
        so the features are those of one call (test: tests/training/test_memory_bounded.py)."""
        self.check_input(x, 5)
        chunk = self.feature_chunk_size()
        if not exporting() and not torch.is_grad_enabled() and x.shape[0] > chunk:
            return torch.cat([self.pooled_features(part) for part in x.split(chunk)])
        return self.pooled_features(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features`` of one chunk, (N, C, T, V, M) -> (N, D)."""
        n, c, t, v, m = x.shape
        bodies = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)  # (N, C, T, V, M) -> (N·M, C, T, V)
        tok = self.forward_tokens(bodies)  # (N·M, L, D)
        tok = tok.reshape(n, m * tok.shape[1], tok.shape[2])  # (N·M, L, D) -> (N, M·L, D)
        return tok.mean(dim=1)  # -> (N, D)


def check_config(cfg: EncoderConfig) -> None:
    """The transformer's own config checks (the registry runs them from ``EncoderConfig``)."""
    if cfg.hidden_dim % cfg.num_heads:
        raise CrossclrError(f"encoder config: hidden_dim {cfg.hidden_dim} is not divisible by num_heads "
                            f"{cfg.num_heads}; expected a multiple")


def build_transformer(layout: Layout, cfg: EncoderConfig, *, num_person: int, in_channels: int,
                      frames: int) -> SkeletonTransformer:
    """The registry's constructor (the temporal embedding has one entry per temporal patch of ``frames``)."""
    return SkeletonTransformer(layout, cfg, num_person=num_person, in_channels=in_channels, frames=frames)


register_encoder(EncoderKind(name=SkeletonTransformer.kind, graphs=("transformer",), build=build_transformer,
                             check=check_config))
