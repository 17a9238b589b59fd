"""SkeletonCLR (one view) and CrosSCLR (several views) composed from the units in ``training.ssl``.

Differences from the official code (docs/design.md §3, fixed on purpose): every key encoder gets its momentum
update in both stages; each view has its own projector; key encoders start as exact copies of the query
encoders and are never re-initialised; the queue works for any batch size and all-gathers keys under DDP.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.views import VIEWS

from .encoders import build_encoder
from .ssl import CROSS_LOSSES, MemoryQueue, cross_view_loss, info_nce, mining_precision, momentum_update
from .stgcn import EncoderConfig
from .views import compute_view


@dataclass(frozen=True)
class SSLConfig:
    """Contrastive pretraining. Defaults are the official CrosSCLR values."""

    queue_size: int = 32768  # K, keys kept per view
    momentum: float = 0.999  # EMA of the key encoders
    temperature: float = 0.07  # softmax temperature T
    topk: int = 1  # positives mined per sample in the cross-view stage
    cross_loss: str = "official"  # "official" (mean −log p over positives) or "seed" (−log Σ positive p)
    context: bool = True  # include the context block (q_u·queue_u) ⊙ (q_v·queue_v) in cross-view logits

    def __post_init__(self) -> None:
        if not isinstance(self.queue_size, int) or self.queue_size < 1:
            raise CrossclrError(f"ssl config: queue_size must be a positive integer, got {self.queue_size!r}")
        if not 0.0 <= float(self.momentum) <= 1.0:
            raise CrossclrError(f"ssl config: momentum must be in [0, 1], got {self.momentum!r}")
        if not float(self.temperature) > 0:
            raise CrossclrError(f"ssl config: temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.topk, int) or not 1 <= self.topk <= self.queue_size:
            raise CrossclrError(f"ssl config: topk must be an integer in 1..queue_size, got {self.topk!r}")
        if self.cross_loss not in CROSS_LOSSES:
            raise CrossclrError(f"ssl config: cross_loss {self.cross_loss!r} is unknown; expected one of "
                                f"{CROSS_LOSSES}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SSLConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise CrossclrError(f"ssl config: unknown keys {unknown}; expected some of {sorted(known)}")
        return cls(**d)


def check_views(views: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    views = tuple(views)
    if not views:
        raise CrossclrError(f"no streams given: use one or more of {VIEWS}")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise CrossclrError(f"unknown streams {bad}: use some of {VIEWS}")
    if len(set(views)) != len(views):
        raise CrossclrError(f"streams {list(views)} repeat a view; list each once")
    return views


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
        self.views = check_views(views)
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
        with torch.autocast(device_type=device_type, enabled=False):
            queues = {v: self.queue.keys(v).clone().detach().float() for v in self.views}  # (K, D)
            if cross and len(self.views) > 1:
                l_pos = {v: (q[v] * k[v]).sum(dim=1) for v in self.views}  # (N,)
                l_neg = {v: q[v] @ queues[v].t() for v in self.views}  # (N, K)
                for u in self.views:
                    partners = [w for w in self.views if w != u]
                    terms = [cross_view_loss(l_pos[u], l_neg[u], l_neg[w], temperature=cfg.temperature,
                                             topk=cfg.topk, form=cfg.cross_loss, context=cfg.context)
                             for w in partners]
                    out[f"loss_{u}"] = torch.stack(terms).mean()
            else:
                l_neg = None
                for v in self.views:
                    out[f"loss_{v}"] = info_nce(q[v], k[v], queues[v], cfg.temperature)
            out["loss"] = torch.stack([out[f"loss_{v}"] for v in self.views]).sum()
            if labels is not None:
                with torch.no_grad():
                    prec = []
                    for v in self.views:
                        sim = l_neg[v] if l_neg is not None else q[v] @ queues[v].t()
                        prec.append(mining_precision(sim, self.queue.labels, labels.to(sim.device), cfg.topk))
                    out["mining_precision"] = torch.stack(prec).mean()
        self.queue.enqueue(k, labels)
        return out
