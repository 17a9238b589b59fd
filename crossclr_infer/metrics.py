"""Classification metrics and stream fusion on logits (numpy): the one implementation, used by the ONNX
reports and (on tensors converted to numpy) by training's linear, kNN and fine-tuning protocols.

Ranking convention: the classes of a sample are ordered by descending score, ties broken by the lower class
index (a stable sort), so top-k results are deterministic.

Fusion is always ``Σ_v w_v · logits_v``. ``fusion="joint"`` (official: heads trained on the mean of their
logits) uses ``w_v = 1 / S``; ``fusion="separate"`` uses the user's weights, defaulting to
``DEFAULT_FUSION_WEIGHTS`` (joint 0.6, motion 0.4, bone 0.6, accel 0.4).
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np

from .errors import CrossclrError

log = logging.getLogger(__name__)

FUSED = "fused"  # the key of fused logits / results beside the stream names
FUSIONS = ("joint", "separate")
DEFAULT_FUSION_WEIGHTS: dict[str, float] = {"joint": 0.6, "motion": 0.4, "bone": 0.6, "accel": 0.4}


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax."""
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def ranked_classes(scores: np.ndarray, k: int | None = None) -> np.ndarray:
    """(N, K) scores -> (N, k) class indices, best first (ties: lower index first)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    return order if k is None else order[:, :k]


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many samples have their label among the k best-scored classes."""
    _check(logits, labels)
    k = min(k, logits.shape[1])
    return int((ranked_classes(logits, k) == labels[:, None]).any(axis=1).sum())


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose label is among the k best-scored classes (0.0 for no samples)."""
    return topk_correct(logits, labels, k) / len(labels) if len(labels) else 0.0


def topk_percent(logits: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k accuracy in percent for several k: {"top1": ..., "top5": ...} (k capped at the class count;
    NaN for no samples)."""
    logits, labels = np.asarray(logits), np.asarray(labels)
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    return {f"top{k}": 100.0 * topk_correct(logits, labels, k) / len(labels) for k in ks}


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_class: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    for what, a in (("label", labels), ("prediction", predictions)):
        if a.size and (a.min() < 0 or a.max() >= num_class):
            raise CrossclrError(f"{what} outside 0..{num_class - 1} (got {a.min()}..{a.max()})")
    cm = np.zeros((num_class, num_class), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def per_class_accuracy(cm: np.ndarray) -> list[float | None]:
    """Recall of each class from a confusion matrix; None for a class without samples."""
    totals = cm.sum(axis=1)
    return [None if n == 0 else float(cm[i, i] / n) for i, n in enumerate(totals)]


def parse_weights(text: str) -> dict[str, float]:
    """'joint=0.6,motion=0.4,bone=0.6' -> {'joint': 0.6, 'motion': 0.4, 'bone': 0.6}."""
    out: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            out[name.strip()] = float(value)
        except ValueError:
            raise CrossclrError(f"--weights: cannot read {part!r}; expected STREAM=NUMBER pairs separated by "
                                "commas, e.g. joint=0.6,motion=0.4,bone=0.6") from None
    if not out:
        raise CrossclrError("--weights: no weights given; expected e.g. joint=0.6,motion=0.4,bone=0.6")
    return check_fusion_weights(out, "--weights", partial=True)


def check_fusion_weights(weights: Mapping[str, object], source: str, *, partial: bool = False
                         ) -> dict[str, float]:
    """Fusion weights as {stream: float}: each a finite real number >= 0 and (unless ``partial``: a subset
    that defaults complete) not all zero; else a CrossclrError naming ``source`` (an option or a file).

    The one check of fusion weights: ``--weights`` of evaluate / linear / finetune, model metadata, and
    linear checkpoints before they are stored."""
    out: dict[str, float] = {}
    for name, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, numbers.Real):
            raise CrossclrError(f"{source}: fusion weight of {name!r:.40} is {w!r:.40}, expected a number")
        if not math.isfinite(float(w)) or float(w) < 0:
            raise CrossclrError(f"{source}: fusion weight of {name!r:.40} is {float(w)!r}; expected a finite "
                                "number >= 0")
        out[str(name)] = float(w)
    if not partial and (not out or not any(out.values())):
        raise CrossclrError(f"{source}: fusion weights {str(out):.200} are all zero; expected at least one "
                            "weight > 0")
    return out


def fusion_weights_for(
    fusion: str, streams: Sequence[str], weights: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Weights w_v so that fused logits = Σ_v w_v · logits_v for the given fusion mode."""
    if fusion not in FUSIONS:
        raise CrossclrError(f"unknown fusion {fusion!r}: use one of {FUSIONS}")
    weights = dict(weights or {})
    unknown = sorted(set(weights) - set(streams))
    if unknown:
        raise CrossclrError(f"--weights names {unknown}, which are not among the streams {list(streams)}")
    if fusion == "joint":
        if weights:
            log.warning("--fusion joint fuses by the mean of the logits; --weights is ignored")
        return {v: 1.0 / len(streams) for v in streams}
    return check_fusion_weights({v: weights.get(v, DEFAULT_FUSION_WEIGHTS.get(v, 1.0)) for v in streams},
                                "--weights")


def fuse_logits(logits: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted sum Σ_v w_v · logits_v over the streams of ``logits`` (all need a weight)."""
    if not logits:
        raise CrossclrError("fusion needs at least one stream")
    missing = [v for v in logits if v not in weights]
    if missing:
        raise CrossclrError(f"fusion weights lack streams {missing}; have {sorted(weights)}")
    out = np.zeros_like(next(iter(logits.values())), dtype=np.float64)
    for view, value in logits.items():
        out += float(weights[view]) * value.astype(np.float64)
    return out.astype(np.float32)


def _check(logits: np.ndarray, labels: np.ndarray) -> None:
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(f"expected logits (N, K) and labels (N,), got {logits.shape} and {labels.shape}")
