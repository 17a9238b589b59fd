"""One constructor for every encoder kind, so trainers, evaluation, import and export never branch on it.

``EncoderConfig.graph`` picks the kind: ``spatial``/``flow``/``adaptive`` build the ST-GCN
(``training.encoders.stgcn.STGCN``), ``transformer`` the MAMP encoder (``transformer.SkeletonTransformer``),
which also needs the frame count (its temporal embedding has one entry per temporal patch).
"""

from __future__ import annotations

from torch import nn

from crossclr_infer.layouts import Layout
from training.encoders.config import EncoderConfig
from training.encoders.stgcn import STGCN


def is_transformer(cfg: EncoderConfig) -> bool:
    return cfg.graph == "transformer"


def build_encoder(layout: Layout, cfg: EncoderConfig, num_person: int = 2, in_channels: int = 3,
                  frames: int = 50) -> nn.Module:
    """The encoder ``cfg`` describes, for ``layout`` skeletons of ``frames`` frames, ``num_person`` bodies."""
    if is_transformer(cfg):
        from training.encoders.transformer import SkeletonTransformer

        return SkeletonTransformer(layout, cfg, num_person=num_person, in_channels=in_channels, frames=frames)
    return STGCN(layout, cfg, num_person=num_person, in_channels=in_channels)
