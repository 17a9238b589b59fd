"""Encoders: one registry of kinds, so trainers, evaluation, import and export never branch on the kind.

``EncoderConfig.graph`` picks the kind (``training.encoders.registry``): ``spatial``/``flow``/``adaptive``
build the ST-GCN (``training.encoders.stgcn.STGCN``), ``transformer`` the MAMP encoder
(``training.encoders.transformer.SkeletonTransformer``). Importing this package registers both; a new kind
is one module that calls ``register_encoder`` (see the registry's docstring for the encoder interface).
"""

from __future__ import annotations

from training.encoders import stgcn, transformer  # noqa: F401 - importing them registers their kinds
from training.encoders.registry import (
    EncoderKind,
    build_encoder,
    encoder_kind,
    graph_names,
    kind_names,
    register_encoder,
    unregister_encoder,
)

__all__ = ["EncoderKind", "build_encoder", "encoder_kind", "graph_names", "kind_names", "register_encoder",
           "unregister_encoder"]
