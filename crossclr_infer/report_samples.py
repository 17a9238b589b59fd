"""Per-sample predictions of an evaluation report: which clips were right, which were wrong and how sure.

Stored in the report as column arrays (one list per field, one entry per sample, in split order), which
keeps a report of 100,000 samples a few megabytes::

    "samples": {"name": [...], "label": [...], "predicted": [...], "probability": [...],
                "streams": {"joint": [...], "motion": [...]}}

``predicted`` is the fused top-1 class, ``probability`` its softmax probability (rounded to
``PROB_DIGITS`` decimals), ``streams`` each stream's top-1 class. ``check_samples`` requires them to rebuild
the report's confusion matrices exactly, so the per-sample records always add up to its accuracies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import CrossclrError, printable
from .metrics import FUSED, confusion_matrix, ranked_classes, softmax

PROB_DIGITS = 4
FIELDS = ("name", "label", "predicted", "probability", "streams")


def build_samples(names: Sequence[str], labels: np.ndarray, logits: Mapping[str, np.ndarray],
                  streams: Sequence[str]) -> dict[str, Any]:
    """The ``samples`` section from the fused and per-stream logits (N, K) of N samples."""
    fused = np.asarray(logits[FUSED], dtype=np.float64)
    top = ranked_classes(fused, 1)[:, 0] if len(fused) else np.zeros(0, np.int64)
    prob = softmax(fused)[np.arange(len(top)), top] if len(fused) else np.zeros(0)
    return {"name": [str(n) for n in names], "label": [int(y) for y in labels],
            "predicted": [int(p) for p in top], "probability": [round(float(p), PROB_DIGITS) for p in prob],
            "streams": {v: [int(p) for p in (ranked_classes(logits[v], 1)[:, 0] if len(fused) else [])]
                        for v in streams}}


def merge_samples(parts: Sequence[Mapping[str, Any] | None], streams: Sequence[str]) -> dict[str, Any] | None:
    """The shards' sections concatenated in shard order; None when any shard has none (an older report)."""
    if any(p is None for p in parts):
        return None
    out: dict[str, Any] = {key: [x for p in parts for x in p[key]] for key in FIELDS if key != "streams"}
    out["streams"] = {v: [x for p in parts for x in p["streams"][v]] for v in streams}
    return out


def _bad(src: str, field: str, problem: str) -> CrossclrError:
    return CrossclrError(f"{src}: field 'samples.{field}' {problem}; expected a report written by "
                         "`crossclr evaluate`")


def _classes(values: Any, src: str, field: str, n: int, k: int) -> np.ndarray:
    """A list of n class indices 0..k-1."""
    if (not isinstance(values, list) or len(values) != n
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c < k for c in values)):
        raise _bad(src, field, f"is not a list of {n} class indices 0..{k - 1}")
    return np.asarray(values, dtype=np.int64)


def check_samples(obj: Any, src: str, results: Mapping[str, Any], streams: Sequence[str], k: int,
                  n: int) -> None:
    """The ``samples`` section: n entries per field, valid classes and probabilities, and the confusion
    matrices of ``results`` (fused and every stream) rebuilt exactly from the per-sample classes."""
    if not isinstance(obj, dict) or sorted(obj) != sorted(FIELDS):
        raise _bad(src, "*", f"has keys {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}, "
                             f"expected {list(FIELDS)}")
    names = obj["name"]
    if not isinstance(names, list) or len(names) != n or not all(isinstance(s, str) for s in names):
        raise _bad(src, "name", f"is not a list of {n} sample names")
    probs = obj["probability"]
    if (not isinstance(probs, list) or len(probs) != n
            or not all(isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p)
                       and 0 <= p <= 1 for p in probs)):
        raise _bad(src, "probability", f"is not a list of {n} probabilities in [0, 1]")
    labels = _classes(obj["label"], src, "label", n, k)
    per = obj["streams"]
    if not isinstance(per, dict) or sorted(per) != sorted(streams):
        raise _bad(src, "streams", f"is not one list of top-1 classes per stream {list(streams)}")
    tops = {name: _classes(per[name], src, f"streams.{name}", n, k) for name in streams}
    if FUSED in results:
        tops[FUSED] = _classes(obj["predicted"], src, "predicted", n, k)
    for name, top in tops.items():
        if confusion_matrix(labels, top, k).tolist() != results[name]["confusion"]:
            field = "predicted" if name == FUSED else f"streams.{name}"
            raise _bad(src, field, f"disagrees with results.{name}.confusion (the per-sample records must "
                                   "add up to the report's counts)")


def worst_errors(report: Mapping[str, Any], count: int) -> list[dict[str, Any]]:
    """The ``count`` wrong fused predictions with the highest probability (ties: split order first)."""
    s = report.get("samples")
    if not s or count < 1:
        return []
    wrong = [i for i, (y, p) in enumerate(zip(s["label"], s["predicted"], strict=True)) if y != p]
    wrong.sort(key=lambda i: -s["probability"][i])  # stable: equal probabilities keep split order
    names = report["class_names"]
    return [{"name": s["name"][i], "true": names[s["label"][i]], "predicted": names[s["predicted"][i]],
             "probability": s["probability"][i]} for i in wrong[:count]]


def _cell(text: str, limit: int) -> str:
    """Text from a file for a markdown table cell: escaped (``printable``) and ``|`` quoted."""
    return printable(text, limit).replace("|", "\\|")


def errors_markdown(report: Mapping[str, Any], count: int) -> str:
    """The text of ``evaluate --errors N``: the worst mistakes as a markdown table (names escaped)."""
    if report.get("samples") is None:
        return ("\nno per-sample predictions in this report (written by an older crossclr): evaluate again "
                "for --errors\n")
    rows = worst_errors(report, count)
    s = report["samples"]
    wrong = sum(y != p for y, p in zip(s["label"], s["predicted"], strict=True))
    if not rows:
        return "\nno wrong fused predictions\n"
    lines = ["", f"worst {len(rows)} of {wrong} mistakes (fused; highest probability first):", "",
             "| sample | true | predicted | probability |", "|---|---|---|---:|"]
    lines += [f"| {_cell(r['name'], 80)} | {_cell(r['true'], 40)} | {_cell(r['predicted'], 40)} "
              f"| {100 * r['probability']:.1f} % |" for r in rows]
    return "\n".join(lines) + "\n"
