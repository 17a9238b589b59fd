"""MAMP: masked motion prediction (Mao et al., ICCV 2023) on the skeleton transformer, as small units.

Per view and per body sequence (B = N·M; the official code encodes every body, all-zero ones included):

1. ``token_motion``: per-token motion = mean |patch(t') − patch(t' − 1)| between consecutive *time tokens*
   (patches of p frames; the first token copies the second);
2. ``motion_aware_keep``: p = softmax(motion / (max·τ + 1e-10)); tokens ranked by log p + Gumbel noise in
   ascending order; the first ``int(L·(1 − mask_ratio))`` are kept. Descending, that order draws tokens
   without replacement with probability p (Gumbel top-k), so p is the *masking* probability: tokens with much
   motion are masked more often (the point of MAMP);
3. the encoder sees only the kept tokens; ``MAMPDecoder`` puts mask tokens back and predicts p·C values
   per token;
4. ``motion_target``: the motion x[t+1] − x[t] (last frame 0) patchified like the tokens, each patch
   normalised by its own mean and (unbiased) variance + 1e-6; ``masked_mse`` averages over masked tokens.

Shape letters: B = N·M body sequences, C channels, T frames, V joints, p = t_patch, L = (T/p)·V tokens,
K kept tokens, D encoder width, E decoder width.

``MAMPObjective`` is the registered objective ``mamp`` that trains ``MAMP``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.views import check_streams
from training.encoders import encoder_kind
from training.encoders.config import EncoderConfig
from training.encoders.transformer import Block, SkeletonTransformer, init_vit_weights
from training.objectives.base import Augment, Objective, ObjectiveTable, TrainConfig, register_objective
from training.views import compute_view


@dataclass(frozen=True)
class MAMPConfig(ObjectiveTable):
    """Masked motion prediction. Defaults: the official NTU-60 values (NTU-120: decoder_depth 5, tau 0.75)."""

    _LABEL = "mamp config"

    mask_ratio: float = 0.9  # share of tokens masked; the encoder keeps int(L·(1 − mask_ratio)) tokens
    tau: float = 0.8  # motion-aware temperature (official motion_aware_tau); 0 = uniform random masking (MAE)
    decoder_depth: int = 3  # decoder blocks (official: 3 on NTU-60, 5 on NTU-120 and PKU-MMD)
    decoder_dim: int = 256  # decoder width E
    decoder_heads: int = 8  # decoder attention heads (decoder_dim must be divisible by it)
    norm_target: bool = True  # normalise each target patch by its mean and variance (official norm_skes_loss)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.mask_ratio) < 1.0:
            raise CrossclrError(f"mamp config: mask_ratio must be in (0, 1), got {self.mask_ratio!r}")
        if not float(self.tau) >= 0.0:
            raise CrossclrError(f"mamp config: tau must be >= 0 (0 = random masking), got {self.tau!r}")
        for name in ("decoder_depth", "decoder_dim", "decoder_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CrossclrError(f"mamp config: {name} must be a positive integer, got {v!r}")
        if self.decoder_dim % self.decoder_heads:
            raise CrossclrError(f"mamp config: decoder_dim {self.decoder_dim} is not divisible by "
                                f"decoder_heads {self.decoder_heads}; expected a multiple")
        if not isinstance(self.norm_target, bool):
            raise CrossclrError(f"mamp config: norm_target must be true or false, got {self.norm_target!r}")


def patchify(x: torch.Tensor, t_patch: int) -> torch.Tensor:
    """(B, C, T, V) -> (B, L, p·C).

    Token l = t'·V + v holds frames t'·p … t'·p + p − 1 of joint v, values ordered (frame, channel).
    """
    b, c, t, v = x.shape
    if t % t_patch:
        raise CrossclrError(f"mamp: {t} frames are not a multiple of t_patch {t_patch}")
    x = x.permute(0, 2, 3, 1).reshape(b, t // t_patch, t_patch, v, c)  # (B, C, T, V) -> (B, T/p, p, V, C)
    x = x.permute(0, 1, 3, 2, 4)  # (B, T/p, p, V, C) -> (B, T/p, V, p, C)
    return x.reshape(b, (t // t_patch) * v, t_patch * c)  # -> (B, L, p·C)


def token_motion(x: torch.Tensor, t_patch: int) -> torch.Tensor:
    """Per-token motion (B, C, T, V) -> (B, L): mean over the p·C values of |patch(t') − patch(t' − 1)|.

    The difference is between consecutive time tokens (frames p apart, value by value); token 0 copies
    token 1.
    """
    b, c, t, v = x.shape
    if t // t_patch < 2:
        raise CrossclrError(f"mamp: motion-aware masking needs at least 2 time tokens, got {t} frames with "
                            f"t_patch {t_patch}")
    patches = patchify(x, t_patch).reshape(b, t // t_patch, v, t_patch * c)  # (B, L, p·C) -> (B, T/p, V, p·C)
    diff = (patches[:, 1:] - patches[:, :-1]).abs()  # (B, T/p − 1, V, p·C)
    diff = torch.cat([diff[:, :1], diff], dim=1)  # (B, T/p, V, p·C): token 0 copies token 1
    return diff.mean(dim=-1).reshape(b, -1)  # (B, T/p, V) -> (B, L)


def mask_probabilities(motion: torch.Tensor, tau: float) -> torch.Tensor:
    """p = softmax over tokens of motion / (max over the sequence · τ + 1e-10): (B, L) -> (B, L).

    Masked tokens are drawn with these probabilities (high motion → masked more often)."""
    scaled = motion / (motion.max(dim=-1, keepdim=True).values * tau + 1e-10)
    return torch.softmax(scaled, dim=-1)


def keep_count(num_tokens: int, mask_ratio: float) -> int:
    """Tokens kept per sequence, ``int(L·(1 − mask_ratio))`` as in the official code (L = 750, 0.9 → 74)."""
    k = int(num_tokens * (1 - mask_ratio))
    if k < 1:
        raise CrossclrError(f"mamp: mask_ratio {mask_ratio} keeps no token of {num_tokens}; lower it")
    return k


class TokenMask(NamedTuple):
    keep: torch.Tensor  # (B, K) int64: kept token indices, in rank order
    restore: torch.Tensor  # (B, L) int64: position of each token in [kept…, masked…] (to unshuffle)
    mask: torch.Tensor  # (B, L) float: 1 = masked (predicted), 0 = kept


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """−log(−log(U + 1e-10) + 1e-10) with U ~ U[0, 1) drawn from ``generator`` (on its own device)."""
    gen_device = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)
    return -torch.log(-torch.log(u + 1e-10) + 1e-10)


def motion_aware_keep(motion: torch.Tensor, mask_ratio: float, tau: float,
                      generator: torch.Generator | None = None) -> TokenMask:
    """Choose the kept tokens of each sequence from its per-token motion (B, L).

    Tokens are sorted by log p + Gumbel noise, ascending, and the first ``int(L·(1 − mask_ratio))`` are kept,
    so high-motion tokens are masked more often. ``tau == 0`` ignores the motion: uniform random masking
    (MAE).
    """
    if tau == 0:
        log_p = torch.zeros_like(motion)
    else:
        log_p = torch.log(mask_probabilities(motion, tau))
    b, n = log_p.shape
    k = keep_count(n, mask_ratio)
    score = log_p + gumbel_noise((b, n), generator, log_p.device, log_p.dtype)  # (B, L)
    order = torch.argsort(score, dim=1)  # ascending: the first K are kept
    restore = torch.argsort(order, dim=1)
    mask = torch.ones(b, n, device=log_p.device, dtype=log_p.dtype)
    mask[:, :k] = 0
    mask = torch.gather(mask, 1, restore)  # back to token order
    return TokenMask(order[:, :k], restore, mask)


def motion_target(x: torch.Tensor, t_patch: int, normalize: bool = True) -> torch.Tensor:
    """Prediction target (B, C, T, V) -> (B, L, p·C): the motion x[t+1] − x[t] (last frame 0), patchified;
    with ``normalize`` each patch becomes (m − mean) / sqrt(var + 1e-6), var unbiased over its p·C values."""
    motion = torch.cat([x[:, :, 1:] - x[:, :, :-1], torch.zeros_like(x[:, :, :1])], dim=2)  # (B, C, T, V)
    target = patchify(motion, t_patch)  # (B, L, p·C)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1.0e-6) ** 0.5
    return target


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of the per-token mean squared error: (B, L, P), (B, L, P), (B, L) -> ()."""
    per_token = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    return (per_token * mask).sum() / mask.sum()


class MAMPDecoder(nn.Module):
    """Kept-token latents (B, K, D) -> predictions (B, L, p·C) for every token.

    Linear(D → E), mask tokens at the masked positions, its own temporal/joint embeddings, ``decoder_depth``
    pre-norm blocks, LayerNorm, Linear(E → p·C). Parameter names are the official top-level keys.
    """

    def __init__(self, width: int, t_tokens: int, num_joints: int, out_dim: int, cfg: MAMPConfig,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        e = cfg.decoder_dim
        self.t_tokens = t_tokens
        self.num_joints = num_joints
        self.decoder_embed = nn.Linear(width, e)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, e))
        self.decoder_blocks = nn.ModuleList([Block(e, cfg.decoder_heads, mlp_ratio)
                                             for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(e)
        self.decoder_temp_embed = nn.Parameter(torch.zeros(1, t_tokens, 1, e))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, 1, num_joints, e))
        self.decoder_pred = nn.Linear(e, out_dim)
        for p in (self.mask_token, self.decoder_temp_embed, self.decoder_pos_embed):
            nn.init.trunc_normal_(p, std=0.02)
        self.apply(init_vit_weights)

    def forward(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """latent (B, K, D) in kept order, restore (B, L) from ``TokenMask`` -> (B, L, p·C)."""
        b, k, _ = latent.shape
        n = self.t_tokens * self.num_joints
        x = self.decoder_embed(latent)  # (B, K, E)
        e = x.shape[-1]
        x = torch.cat([x, self.mask_token.expand(b, n - k, e)], dim=1)  # (B, L, E): [kept…, masked…]
        x = torch.gather(x, 1, restore.unsqueeze(-1).expand(-1, -1, e))  # unshuffle to token order
        x = x.reshape(b, self.t_tokens, self.num_joints, e)  # (B, L, E) -> (B, T/p, V, E)
        x = (x + self.decoder_pos_embed + self.decoder_temp_embed).reshape(b, n, e)  # -> (B, L, E)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))


class ViewOutput(NamedTuple):
    loss: torch.Tensor  # () masked MSE
    pred: torch.Tensor  # (B, L, p·C)
    target: torch.Tensor  # (B, L, p·C)
    tokens: TokenMask


class MAMP(nn.Module):
    """One ``SkeletonTransformer`` (``encoders[view]``) and one ``MAMPDecoder`` (``decoders[view]``) per view.

    Each view's encoder input is ``compute_view(x, view, layout)``; its masking and its motion target are
    computed from that input. Both bodies are separate sequences (B = N·M), all-zero bodies included, as in
    the official code (their target is 0 and their tokens are masked uniformly at random).
    """

    def __init__(self, layout: Layout, encoder_cfg: EncoderConfig | None = None,
                 mamp_cfg: MAMPConfig | None = None, views: tuple[str, ...] = ("joint",), num_person: int = 2,
                 in_channels: int = 3, frames: int = 120) -> None:
        super().__init__()
        self.encoder_cfg = encoder_cfg or EncoderConfig(graph="transformer", projector="none")
        self.mamp_cfg = mamp_cfg or MAMPConfig()
        if self.encoder_cfg.graph != "transformer":
            raise CrossclrError(f"mamp: encoder graph is {self.encoder_cfg.graph!r}; MAMP needs "
                                "graph = 'transformer'")
        if self.encoder_cfg.projector != "none":
            raise CrossclrError(f"mamp: encoder projector is {self.encoder_cfg.projector!r}; MAMP "
                                "pretraining uses no projector, set projector = 'none'")
        self.views = check_streams(views)
        self.layout = layout
        self.encoders = nn.ModuleDict({
            v: SkeletonTransformer(layout, self.encoder_cfg, num_person=num_person, in_channels=in_channels,
                                   frames=frames) for v in self.views})
        enc = self.encoders[self.views[0]]
        self.decoders = nn.ModuleDict({
            v: MAMPDecoder(self.encoder_cfg.hidden_dim, enc.t_tokens, enc.num_joints,
                           self.encoder_cfg.t_patch * in_channels, self.mamp_cfg, self.encoder_cfg.mlp_ratio)
            for v in self.views})

    def forward_view(self, bodies: torch.Tensor, view: str,
                     generator: torch.Generator | None = None) -> ViewOutput:
        """One view on body sequences (B, C, T, V): mask, encode kept tokens, decode, masked loss."""
        enc, cfg, p = self.encoders[view], self.mamp_cfg, self.encoder_cfg.t_patch
        enc.check_input(bodies, 4)
        motion = token_motion(bodies, p) if cfg.tau > 0 else torch.zeros(
            bodies.shape[0], enc.num_tokens, device=bodies.device, dtype=bodies.dtype)
        tokens = motion_aware_keep(motion, cfg.mask_ratio, cfg.tau, generator)
        latent = enc.forward_tokens(bodies, tokens.keep)  # (B, K, D)
        pred = self.decoders[view](latent, tokens.restore)  # (B, L, p·C)
        target = motion_target(bodies, p, cfg.norm_target)
        return ViewOutput(masked_mse(pred, target, tokens.mask), pred, target, tokens)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """x (N, C, T, V, M) joints -> {"loss": sum over views, "loss_<view>": each view's masked MSE}."""
        if x.dim() != 5:
            raise CrossclrError(f"mamp: expected a 5-d input (N, C, T, V, M), got shape {tuple(x.shape)}")
        out: dict[str, torch.Tensor] = {}
        for v in self.views:
            xv = compute_view(x, v, self.layout)
            n, c, t, j, m = xv.shape
            bodies = xv.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, j)  # (N, C, T, V, M) -> (N·M, C, T, V)
            out[f"loss_{v}"] = self.forward_view(bodies, v, generator).loss
        out["loss"] = torch.stack([out[f"loss_{v}"] for v in self.views]).sum()
        return out


@register_objective
class MAMPObjective(Objective):
    """``objective = "mamp"``: masked motion prediction on one augmented view per batch, one transformer
    encoder per stream (docs/design.md §6)."""

    name = "mamp"
    augmentation = "mamp"
    encoder_groups = ("encoders",)

    @classmethod
    def check_config(cls, cfg: TrainConfig) -> None:
        if encoder_kind(cfg.model).name != SkeletonTransformer.kind:
            raise CrossclrError(f"objective = {cls.name!r} needs model.graph = 'transformer', got "
                                f"{cfg.model.graph!r}")

    def build_model(self, layout: Layout, *, num_person: int, in_channels: int, frames: int) -> MAMP:
        cfg = self.cfg
        return MAMP(layout, cfg.model, cfg.mamp, views=tuple(cfg.streams), num_person=num_person,
                    in_channels=in_channels, frames=frames)

    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stage: str, augment: Augment,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One augmentation of ``x``, then the masking noise, both drawn from ``generator``; no labels."""
        return net(augment(x, generator), generator=generator)
