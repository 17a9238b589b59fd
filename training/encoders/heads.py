"""Pieces the built-in encoder kinds share: the contrastive projector and the head half of the interface."""

from __future__ import annotations

import torch
from torch import nn

from training.encoders.config import EncoderConfig


def projector_head(cfg: EncoderConfig) -> nn.Module:
    """The contrastive projector after the pooled features (``cfg.projector``: mlp, linear or none)."""
    if cfg.projector == "mlp":
        return nn.Sequential(nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.ReLU(),
                             nn.Linear(cfg.hidden_dim, cfg.feature_dim))
    if cfg.projector == "linear":
        return nn.Linear(cfg.hidden_dim, cfg.feature_dim)
    return nn.Identity()


class ProjectedEncoder:
    """``hidden_dim``, ``feature_dim``, ``forward_head`` and ``forward`` of an encoder module whose config is
    ``self.cfg`` and whose projector is ``self.fc`` (``projector_head``); the module itself defines
    ``forward_features``. Mix in before ``nn.Module``: ``class STGCN(ProjectedEncoder, nn.Module)``."""

    cfg: EncoderConfig
    fc: nn.Module

    @property
    def hidden_dim(self) -> int:
        """Width of ``forward_features`` (what linear, kNN and fine-tuning see)."""
        return self.cfg.hidden_dim

    @property
    def feature_dim(self) -> int:
        """Width of ``forward_head`` (the hidden width itself when there is no projector)."""
        return self.cfg.hidden_dim if self.cfg.projector == "none" else self.cfg.feature_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward_features")

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """(N, hidden_dim) -> (N, feature_dim)."""
        return self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, T, V, M) -> (N, feature_dim): the head on the pooled features."""
        return self.forward_head(self.forward_features(x))
