"""SkeletonCLR (one view) and CrosSCLR (several views) composed from the units in ``training.objectives.ssl``,
and the registered objective ``crossclr`` that trains them (``CrosSCLRObjective``).

Differences from the official code (docs/design.md §3, fixed on purpose): every key encoder gets its momentum
update in both stages; each view has its own projector; key encoders start as exact copies of the query
encoders and are never re-initialised; the queue works for any batch size and all-gathers keys under DDP.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.views import check_streams
from training.augment import augment_extreme
from training.encoders import build_encoder
from training.encoders.config import EncoderConfig
from training.objectives.base import Augment, Objective, ObjectiveTable, TrainConfig, register_objective
from training.objectives.ssl import (
    CROSS_LOSSES,
    MINING_SOURCES,
    MemoryQueue,
    cross_view_loss,
    info_nce,
    mining_precision,
    momentum_update,
)
from training.views import compute_view


@dataclass(frozen=True)
class SSLConfig(ObjectiveTable):
    """Contrastive pretraining. Defaults are the official CrosSCLR values."""

    _LABEL = "ssl config"

    queue_size: int = 32768  # K, keys kept per view
    momentum: float = 0.999  # EMA of the key encoders
    temperature: float = 0.07  # softmax temperature T
    topk: int = 1  # positives mined per sample in the cross-view stage
    cross_loss: str = "official"  # "official" (mean −log p over positives) or "seed" (−log Σ positive p)
    context: bool = True  # include the context block (q_u·queue_u) ⊙ (q_v·queue_v) in cross-view logits
    # small-data options (training/presets/crossclr_small.toml); the defaults are the official method
    mining_threshold: float = -1.0  # mined entries must also have cosine similarity ≥ this (−1: all top-k)
    mine_on: str = "other"  # "other": the partner view's similarities; "fused": their mean over all views
    cross_weight: float = 1.0  # loss = (1 − w)·InfoNCE + w·cross-view loss in the cross-view stage
    cross_warmup: int = 0  # w ramps linearly from 0 to cross_weight over this many cross-view steps
    extreme_augment: float = 0.0  # share of query inputs given AimCLR's extreme augmentations (both stages)

    def __post_init__(self) -> None:
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise CrossclrError(f"ssl config: queue_size must be a positive integer, got {self.queue_size!r}")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise CrossclrError(f"ssl config: momentum must be in [0, 1], got {self.momentum!r}")
        if not float(self.temperature) > 0:
            raise CrossclrError(f"ssl config: temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.topk, int) or not 1 <= self.topk <= self.queue_size:
            raise CrossclrError(f"ssl config: topk must be an integer in 1..queue_size, got {self.topk!r}")
        if not -1.0 <= float(self.mining_threshold) <= 1.0:
            raise CrossclrError(f"ssl config: mining_threshold must be a cosine similarity in [-1, 1], got "
                                f"{self.mining_threshold!r}")
        if self.mine_on not in MINING_SOURCES:
            raise CrossclrError(f"ssl config: mine_on {self.mine_on!r} is unknown; expected one of "
                                f"{MINING_SOURCES}")
        if not 0.0 <= float(self.cross_weight) <= 1.0:
            raise CrossclrError(f"ssl config: cross_weight must be in [0, 1], got {self.cross_weight!r}")
        if not isinstance(self.cross_warmup, int) or self.cross_warmup < 0:
            raise CrossclrError(f"ssl config: cross_warmup must be an integer ≥ 0 (steps), got "
                                f"{self.cross_warmup!r}")
        if not 0.0 <= float(self.extreme_augment) <= 1.0:
            raise CrossclrError(f"ssl config: extreme_augment must be a share in [0, 1], got "
                                f"{self.extreme_augment!r}")
        if self.cross_loss not in CROSS_LOSSES:
            raise CrossclrError(f"ssl config: cross_loss {self.cross_loss!r} is unknown; expected one of "
                                f"{CROSS_LOSSES}")


class CrosSCLR(nn.Module):
    """Query encoders ``encoders_q[view]``, momentum key encoders ``encoders_k[view]``, one aligned queue.

    With one view this is SkeletonCLR (MoCo v2 on skeletons); ``cross=True`` has no effect then.
    """

    def __init__(self, layout: Layout, encoder_cfg: EncoderConfig | None = None,
                 ssl_cfg: SSLConfig | None = None, views: tuple[str, ...] = ("joint", "motion", "bone"),
                 num_person: int = 2, in_channels: int = 3, frames: int = 50) -> None:
        super().__init__()
        self.encoder_cfg = encoder_cfg or EncoderConfig()
        self.ssl_cfg = ssl_cfg or SSLConfig()
        if self.encoder_cfg.projector == "none":
            raise CrossclrError("encoder config: pretraining needs a projector ('mlp' or 'linear'), "
                                "not 'none'")
        self.views = check_streams(views)
        self.layout = layout
        self.encoders_q = nn.ModuleDict({
            v: build_encoder(layout, self.encoder_cfg, num_person=num_person, in_channels=in_channels,
                             frames=frames)
            for v in self.views})
        self.encoders_k = nn.ModuleDict({v: copy.deepcopy(self.encoders_q[v]) for v in self.views})
        for p in self.encoders_k.parameters():
            p.requires_grad_(False)
        dim = self.encoders_q[self.views[0]].feature_dim
        self.queue = MemoryQueue(self.views, dim, self.ssl_cfg.queue_size)
        if self.ssl_cfg.cross_warmup > 0:  # only then, so checkpoints of the official method keep their keys
            self.register_buffer("cross_steps", torch.zeros((), dtype=torch.long))

    def cross_weight(self) -> float:
        """The weight w of the cross-view loss at the current cross-view step (``cross_warmup`` ramp)."""
        cfg = self.ssl_cfg
        if cfg.cross_warmup <= 0:
            return float(cfg.cross_weight)
        return float(cfg.cross_weight) * min(1.0, float(self.cross_steps) / cfg.cross_warmup)

    @torch.no_grad()
    def momentum_update(self) -> None:
        for v in self.views:
            momentum_update(self.encoders_k[v], self.encoders_q[v], self.ssl_cfg.momentum)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor, *, cross: bool,
                labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """x1, x2: two augmentations of the same joint batch (N, C, T, V, M); views computed here.

        Returns "loss" (sum over views), "loss_<view>", and with ``labels`` "mining_precision" (share of
        top-k mined queue entries that share the anchor's class; queue entries of unknown class ignored).
        """
        cfg = self.ssl_cfg
        if cfg.extreme_augment > 0 and self.training:
            x1 = augment_extreme(x1, p=cfg.extreme_augment)
        q: dict[str, torch.Tensor] = {}
        k: dict[str, torch.Tensor] = {}
        for v in self.views:
            q[v] = F.normalize(self.encoders_q[v](compute_view(x1, v, self.layout)).float(), dim=1)  # (N, D)
        with torch.no_grad():
            self.momentum_update()
            for v in self.views:
                k[v] = F.normalize(self.encoders_k[v](compute_view(x2, v, self.layout)).float(), dim=1)
        out: dict[str, torch.Tensor] = {}
        device_type = x1.device.type
        cross = cross and len(self.views) > 1
        with torch.autocast(device_type=device_type, enabled=False):
            queues = {v: self.queue.keys(v).clone().detach().float() for v in self.views}  # (K, D)
            l_neg = {v: q[v] @ queues[v].t() for v in self.views}  # (N, K)
            fused = torch.stack(list(l_neg.values())).mean(dim=0) if cfg.mine_on == "fused" else None
            if cross:
                w = self.cross_weight()
                l_pos = {v: (q[v] * k[v]).sum(dim=1) for v in self.views}  # (N,)
                for u in self.views:
                    partners = [p for p in self.views if p != u]
                    terms = [cross_view_loss(l_pos[u], l_neg[u], l_neg[p], temperature=cfg.temperature,
                                             topk=cfg.topk, form=cfg.cross_loss, context=cfg.context,
                                             threshold=cfg.mining_threshold, mining_similarity=fused)
                             for p in partners]
                    loss_u = torch.stack(terms).mean()
                    if w < 1.0:
                        loss_u = w * loss_u + (1.0 - w) * info_nce(q[u], k[u], queues[u], cfg.temperature)
                    out[f"loss_{u}"] = loss_u
                if cfg.cross_warmup > 0:
                    out["cross_weight"] = torch.tensor(w)
                    if self.training:
                        self.cross_steps += 1
            else:
                for v in self.views:
                    out[f"loss_{v}"] = info_nce(q[v], k[v], queues[v], cfg.temperature)
            out["loss"] = torch.stack([out[f"loss_{v}"] for v in self.views]).sum()
            if labels is not None:
                with torch.no_grad():
                    y = labels.to(q[self.views[0]].device)
                    sims = [fused] if fused is not None else [l_neg[v] for v in self.views]
                    prec = [mining_precision(s, self.queue.labels, y, cfg.topk, cfg.mining_threshold)
                            for s in sims]
                    out["mining_precision"] = torch.stack(prec).mean()
        self.queue.enqueue(k, labels)
        return out


STAGE_SINGLE = "single"  # SkeletonCLR: every view on its own (InfoNCE against its own queue)
STAGE_CROSS = "cross"  # CrosSCLR: positives mined across views


@register_objective
class CrosSCLRObjective(Objective):
    """``objective = "crossclr"``: SkeletonCLR single-view epochs, then cross-view mining from the 0-based
    epoch ``cross_epoch`` on when there are several streams (docs/design.md §3); two augmented views per
    batch."""

    name = "crossclr"
    augmentation = "crossclr"
    encoder_groups = ("encoders_q", "encoders_k")  # query encoders, momentum key encoders

    def build_model(self, layout: Layout, *, num_person: int, in_channels: int, frames: int) -> CrosSCLR:
        cfg = self.cfg
        return CrosSCLR(layout, cfg.model, cfg.ssl, views=tuple(cfg.streams), num_person=num_person,
                        in_channels=in_channels, frames=frames)

    def _has_cross_stage(self) -> bool:
        return len(self.cfg.streams) > 1

    def stage(self, epoch: int) -> str:
        return STAGE_CROSS if self._has_cross_stage() and epoch >= self.cfg.cross_epoch else STAGE_SINGLE

    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stage: str, augment: Augment,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Two augmentations of ``x`` (query, then key input; this order of draws from ``generator``);
        labels only count how often mined positives share the class (``track_mining``)."""
        x1 = augment(x, generator)
        x2 = augment(x, generator)
        return net(x1, x2, cross=stage == STAGE_CROSS, labels=y if self.cfg.track_mining else None)

    def warnings(self) -> list[str]:
        """A multi-stream run whose cross-view stage never starts trains separate SkeletonCLR encoders."""
        cfg: TrainConfig = self.cfg
        if not self._has_cross_stage() or cfg.cross_epoch < cfg.epochs:
            return []
        return [f"cross_epoch {cfg.cross_epoch} >= epochs {cfg.epochs}: the cross-view stage never starts, "
                f"so the {len(cfg.streams)} streams train as separate single-view SkeletonCLR encoders (set "
                "--cross-epoch below --epochs for CrosSCLR)"]
