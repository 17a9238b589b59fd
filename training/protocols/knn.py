"""Weighted kNN evaluation on frozen features (the instance-discrimination protocol, docs/design.md §3).

For each query: cosine similarity to every training feature (both L2-normalized), the k most similar
neighbours vote for their class with weight exp(sim / t); the class scores are the summed votes.
Defaults k = 200, t = 0.1; k = 1, 10, 20 are reported too.

Fused streams: the per-stream normalized features are concatenated and renormalized, so the fused cosine
similarity is the mean of the per-stream cosine similarities; kNN then runs once on that similarity.

A k above the training-set size N uses all N training samples: ``run_knn`` says so in one warning line and
records the k actually used per requested k in the report (``effective_k``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from crossclr_infer.errors import CrossclrError
from crossclr_infer.metrics import FUSED, topk_percent
from training.protocols.context import open_protocol
from training.protocols.io import check_rate, to_numpy

log = logging.getLogger(__name__)

DEFAULT_KS = (1, 10, 20, 200)


@torch.no_grad()
def knn_scores(
    train_feats: Tensor,
    train_labels: Tensor,
    query_feats: Tensor,
    num_classes: int,
    *,
    k: int = 200,
    t: float = 0.1,
    chunk: int = 1024,
) -> Tensor:
    """Class scores (Q, C): Σ over the k nearest training samples of exp(cos / t), per class.

    ``train_feats`` (N, D), ``query_feats`` (Q, D) (normalized here); k is capped at N. Queries run in
    chunks so memory stays O(chunk · N).
    """
    if not t > 0:  # NaN too
        raise CrossclrError(f"kNN temperature must be > 0, got {t}")
    if k < 1:
        raise CrossclrError(f"kNN k must be ≥ 1, got {k}")
    n = train_feats.shape[0]
    if n == 0:
        raise CrossclrError("kNN: no training samples")
    k = min(k, n)
    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    labels = torch.as_tensor(train_labels, dtype=torch.long, device=bank.device)
    out = []
    for q in F.normalize(query_feats.float(), dim=1).split(chunk):
        sim = q @ bank.T  # (B, D) @ (D, N) -> (B, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        votes.scatter_add_(1, labels[top_idx], torch.exp(top_sim / t))  # (B, C)
        out.append(votes)
    return torch.cat(out) if out else torch.zeros(0, num_classes)


def fuse_features(feats: Mapping[str, Tensor]) -> Tensor:
    """Concatenated L2-normalized stream features (N, Σ D_v): cosine = mean of per-stream cosines."""
    return torch.cat([F.normalize(f.float(), dim=1) for f in feats.values()], dim=1)


def knn_evaluate(
    train_feats: Mapping[str, Tensor],
    train_labels: Tensor,
    eval_feats: Mapping[str, Tensor],
    eval_labels: Tensor,
    num_classes: int,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    t: float = 0.1,
) -> tuple[dict[str, dict[int, dict[str, float]]], dict[str, Tensor]]:
    """Top-1/top-5 per stream (and "fused" when several) for every k: ({key: {k: {top1, top5}}}, scores).

    ``scores`` holds the class scores of the largest k per key, for confusion matrices.
    """
    train = dict(train_feats)
    evals = dict(eval_feats)
    if len(train) > 1:
        train[FUSED] = fuse_features(train_feats)
        evals[FUSED] = fuse_features(eval_feats)
    results: dict[str, dict[int, dict[str, float]]] = {}
    last_scores: dict[str, Tensor] = {}
    for key in train:
        results[key] = {}
        for k in sorted(ks):
            s = knn_scores(train[key], train_labels, evals[key], num_classes, k=k, t=t)
            results[key][k] = topk_percent(to_numpy(s), to_numpy(eval_labels))
            last_scores[key] = s
    return results, last_scores


@dataclass(frozen=True)
class KnnConfig:
    """The neighbour counts and the vote temperature, checked (NaN-safe) before any work."""

    ks: tuple[int, ...] = DEFAULT_KS  # neighbour counts, each ≥ 1 (sorted, without repeats)
    t: float = 0.1  # votes exp(sim / t)

    def __post_init__(self) -> None:
        ks = tuple(sorted(set(self.ks)))
        if not ks or ks[0] < 1:
            raise CrossclrError("-k: k must be ≥ 1")
        check_rate(self.t, "-t/--temperature")
        object.__setattr__(self, "ks", ks)


def run_knn(
    data: str | Path,
    checkpoint: str | Path,
    *,
    streams: Sequence[str] | None,
    ks: Sequence[int] = DEFAULT_KS,
    t: float = 0.1,
    device: str | None = None,
    train_split: str = "train",
    eval_split: str = "val",
    batch_size: int = 256,
    plots_dir: str | Path | None = None,
) -> dict[str, Any]:
    """``crossclr knn``: encode both splits with frozen encoders, weighted kNN per stream and fused."""
    with open_protocol(data, checkpoint, streams=streams, splits=(train_split, eval_split),
                       device=device) as ctx:
        tr_feats = ctx.encode(train_split, batch_size=batch_size, desc="encode train")
        ev_feats = ctx.encode(eval_split, batch_size=batch_size, desc="encode eval")
        tr_y, ev_y = ctx.labels(train_split), ctx.labels(eval_split)
    n_train = len(tr_y)
    capped = sorted(k for k in set(ks) if k > n_train)
    if capped:
        log.warning("-k %s: the training split %r has only %d samples; a k above %d uses all of them",
                    ",".join(map(str, capped)), train_split, n_train, n_train)
    results, scores = knn_evaluate(tr_feats, tr_y, ev_feats, ev_y, ctx.num_class, ks=ks, t=t)
    report: dict[str, Any] = {
        **ctx.header("knn"),
        "streams": ctx.streams,
        "t": t,
        "ks": sorted(ks),
        "effective_k": {str(k): min(k, n_train) for k in sorted(ks)},
        "num_train": len(tr_y),
        "num_eval": len(ev_y),
        "fusion": "concatenated L2-normalized features (cosine = mean of per-stream cosines)",
        "results": {key: {str(k): acc for k, acc in per_k.items()} for key, per_k in results.items()},
    }
    if plots_dir is not None:
        from training.plots import plot_predictions

        key = FUSED if FUSED in scores else next(iter(scores))
        report["plots"] = [
            plot_predictions(ev_y.numpy(), scores[key].argmax(1).numpy(), ctx.class_names,
                             Path(plots_dir) / "knn_confusion.png", title=f"kNN k={max(ks)} ({key})",
                             split=eval_split)
        ]
    return report
