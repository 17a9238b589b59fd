"""t-SNE of frozen encoder features: a seeded subset of one split, embedded in 2-D per stream.

``run_tsne`` encodes a seeded random subset (optionally only the first classes) with the checkpoint's frozen
encoders and embeds each stream's features with ``training.plots.tsne_embed`` (scikit-learn, ``viz`` extra);
``write_tsne_plots`` draws one PNG per stream, coloured by class.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.protocols.context import open_protocol
from training.protocols.io import encode_source


@dataclass(frozen=True)
class TsneConfig:
    split: str = "val"  # the cache split drawn from
    max_samples: int = 2000  # size of the seeded random subset
    max_classes: int | None = None  # only the first N classes (None: all)
    perplexity: float = 30.0  # capped below the sample count by tsne_embed
    seed: int = 0  # subset and t-SNE initialization


@dataclass
class TsneResult:
    points: dict[str, np.ndarray]  # {view: (N, 2)} embedded features
    labels: np.ndarray  # (N,) class of each point
    class_names: list[str]
    report: dict[str, Any]  # protocol, data, checkpoint, split, num_samples, streams

    @property
    def num_classes(self) -> int:
        """Classes present among the points."""
        return len(np.unique(self.labels))


def sample_indices(labels: np.ndarray, cfg: TsneConfig) -> np.ndarray:
    """Sorted indices of at most ``cfg.max_samples`` samples drawn by ``default_rng(cfg.seed)`` among those of
    the first ``cfg.max_classes`` classes (all when None)."""
    labels = np.asarray(labels)
    pool = np.flatnonzero(labels < cfg.max_classes) if cfg.max_classes else np.arange(len(labels))
    rng = np.random.default_rng(cfg.seed)
    return np.sort(rng.permutation(pool)[: cfg.max_samples])


def run_tsne(
    data: str | Path,
    checkpoint: str | Path,
    *,
    streams: Sequence[str] | None,
    cfg: TsneConfig,
    device: str | None = None,
) -> TsneResult:
    """``crossclr tsne``: the t-SNE points of a seeded subset of ``cfg.split`` per stream (writes nothing)."""
    from training.plots import tsne_embed

    with open_protocol(data, checkpoint, streams=streams, splits=(cfg.split,), device=device) as ctx:
        sp = ctx.split(cfg.split)
        labels = np.asarray(sp.labels)
        idx = sample_indices(labels, cfg)
        feats = encode_source(
            ctx.encoders, lambda b: sp.read(idx[b]), len(idx), ctx.layout, device=ctx.device, desc="encode"
        )
    points = {v: tsne_embed(f.numpy(), seed=cfg.seed, perplexity=cfg.perplexity) for v, f in feats.items()}
    report = {**ctx.header("tsne"), "split": cfg.split, "num_samples": len(idx), "streams": list(feats)}
    return TsneResult(points, labels[idx], ctx.class_names, report)


def write_tsne_plots(result: TsneResult, out: str | Path, source: str) -> list[str]:
    """``out/tsne_<stream>.png`` per stream (names checked against ``source``, e.g. the checkpoint)."""
    from training.plots import plot_tsne, stream_png

    pngs = {v: stream_png(out, "tsne", v, f"{source}: stream") for v in result.points}
    split = result.report["split"]
    return [
        str(plot_tsne(pts, result.labels, result.class_names, pngs[v], title=f"t-SNE ({v}, {split})"))
        for v, pts in result.points.items()
    ]
