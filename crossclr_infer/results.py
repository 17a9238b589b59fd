"""Typed results of the Python API: what ``Predictor`` and ``StreamPredictor`` return.

Small frozen dataclasses instead of plain dicts: attribute access, type checking and the full probability
vector. ``to_dict()`` gives the record ``crossclr predict --json`` prints (same keys, same numbers), so the
CLI and the API never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ClassScore:
    """One class with its probability."""

    index: int  # 0-based class index
    name: str  # the class name from the model's metadata
    probability: float  # in [0, 1]

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.index, "name": self.name, "probability": self.probability}


@dataclass(frozen=True)
class Prediction:
    """The prediction of one clip: fused classes, each stream's classes, optionally the embedding."""

    input: str  # the clip's name (file name, "clip", "clip[3]", "window 7 (t=...)")
    top: tuple[ClassScore, ...]  # fused top-k, most probable first
    probabilities: np.ndarray = field(repr=False)  # (num_classes,) fused probabilities, sum 1
    streams: dict[str, tuple[ClassScore, ...]]  # {view: that stream's top-k} (a stream model: its one view)
    class_names: tuple[str, ...] = field(repr=False)  # index -> name, as in the model's metadata
    embedding: np.ndarray | None = field(default=None, repr=False)  # the model's ``embedding`` output

    @property
    def label(self) -> int:
        """The fused top-1 class index."""
        return self.top[0].index

    @property
    def name(self) -> str:
        """The fused top-1 class name."""
        return self.top[0].name

    @property
    def probability(self) -> float:
        """The fused top-1 probability."""
        return self.top[0].probability

    def to_dict(self) -> dict[str, Any]:
        """The record of ``crossclr predict --json``: ``{"input", "fused": [...], "streams": {...}}``."""
        return {"input": self.input, "fused": [c.to_dict() for c in self.top],
                "streams": {v: [c.to_dict() for c in top] for v, top in self.streams.items()}}
