"""The encoder registry: which module builds the encoder a ``[model]`` table describes.

An encoder kind is one module that defines its ``nn.Module`` and registers an ``EncoderKind``: its name,
the values of ``EncoderConfig.graph`` that select it, a ``build`` function and an optional config
``check``. ``training/encoders/__init__.py`` imports the built-in kinds (``stgcn``, ``transformer``) so
that they are registered whenever the package is imported; a test or a plug-in registers its own kind by
calling ``register_encoder`` (and ``unregister_encoder`` to clean up). Nothing else needs changing:
configs accept the new graph name, ``build_encoder`` builds it, and training, evaluation and export only use
the interface below.

What an encoder module must provide (timm's split of features and head):

- ``kind: str`` — class attribute, the registered kind name;
- ``hidden_dim: int`` — width of ``forward_features`` (what linear, kNN and fine-tuning see);
- ``feature_dim: int`` — width of ``forward_head`` (the contrastive embedding);
- ``forward_features(x)`` — (N, C, T, V, M) skeletons -> (N, hidden_dim) pooled features;
- ``forward_head(f)`` — (N, hidden_dim) -> (N, feature_dim), the projector (identity when none);
- ``forward(x)`` — ``forward_head(forward_features(x))``.

``build(layout, cfg, *, num_person, in_channels, frames)`` returns such a module for ``layout`` skeletons
of ``in_channels`` channels, ``frames`` frames and ``num_person`` bodies (a kind that does not depend on the
frame count ignores it). ``check(cfg)`` raises ``CrossclrError`` (one line, naming the key) for settings
only this kind refuses; ``EncoderConfig`` runs it after its own checks.

This module imports no encoder kind (they import it), so it can never sit in an import circle with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import nn

from crossclr_infer.errors import CrossclrError

if TYPE_CHECKING:
    from crossclr_infer.layouts import Layout


class EncoderConfig(Protocol):
    """What the registry reads of ``training.encoders.config.EncoderConfig`` (which imports this module)."""

    graph: str


@dataclass(frozen=True)
class EncoderKind:
    """One registered encoder family."""

    name: str  # the kind name (the encoder class's ``kind``)
    graphs: tuple[str, ...]  # values of EncoderConfig.graph that select this kind
    build: Callable[..., nn.Module]  # build(layout, cfg, *, num_person, in_channels, frames) -> encoder
    check: Callable[[EncoderConfig], None] | None = None  # kind-specific config checks (CrossclrError)


_KINDS: dict[str, EncoderKind] = {}


def register_encoder(kind: EncoderKind) -> EncoderKind:
    """Make ``kind`` selectable by each of its graph names. Registering a kind again under the same name
    replaces it; a graph name another kind owns is refused (ValueError)."""
    if not kind.name or not kind.graphs:
        raise ValueError(f"encoder kind {kind!r} needs a name and at least one graph name")
    for other in _KINDS.values():
        taken = sorted(set(kind.graphs) & set(other.graphs))
        if other.name != kind.name and taken:
            raise ValueError(f"encoder kind {kind.name!r}: graph names {taken} already belong to kind "
                             f"{other.name!r}")
    _KINDS[kind.name] = kind
    return kind


def unregister_encoder(name: str) -> None:
    """Remove the kind ``name`` (tests that register a toy kind clean up with this)."""
    _KINDS.pop(name, None)


def graph_names() -> tuple[str, ...]:
    """Every graph name of every registered kind, in registration order."""
    return tuple(g for kind in _KINDS.values() for g in kind.graphs)


def kind_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def encoder_kind(cfg: EncoderConfig) -> EncoderKind:
    """The kind ``cfg.graph`` selects; one line listing the known graph names otherwise."""
    for kind in _KINDS.values():
        if cfg.graph in kind.graphs:
            return kind
    raise CrossclrError(f"encoder config: graph {cfg.graph!r} is unknown; expected one of {graph_names()}")


def build_encoder(layout: Layout, cfg: EncoderConfig, num_person: int = 2, in_channels: int = 3,
                  frames: int = 50) -> nn.Module:
    """The encoder ``cfg`` describes, for ``layout`` skeletons of ``frames`` frames, ``num_person`` bodies."""
    return encoder_kind(cfg).build(layout, cfg, num_person=num_person, in_channels=in_channels, frames=frames)
