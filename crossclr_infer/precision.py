"""Reduced precision (bf16) that is checked, not hoped for: an agreement check on real samples, recorded.

A model runs in bf16 only after this check passed on samples of a cache for the same model file, backend,
backend version, precision and CPU (``choose_precision`` in ``crossclr_infer.session``). The check runs the
model at float32 and at the reduced precision on the same backend, on up to ``CHECK_SAMPLES`` samples of a
cache split spread evenly over it, and passes when

- top-1 agreement of every class-score output (the fused ``logits`` and, for an ensemble, each stream's) with
  float32 is at least ``MIN_AGREEMENT_PCT`` (99.5 %), and
- top-1 accuracy on the split's labels drops by at most ``MAX_DROP_PT`` (0.3 percentage points), and
- at least ``MIN_CHECK_SAMPLES`` (100) samples were compared (fewer cannot resolve 99.5 %).

The result is recorded (``crossclr_infer.precision_records``) in a sidecar JSON beside the model
(``<model>.checks.json``), written atomically and keyed by the model file's SHA-256, the backend and its
version, the precision and the CPU (model name and the flags that change numerics: AVX2, AVX-512,
AVX512-BF16, AMX, VNNI, and any ONEDNN_MAX_CPU_ISA cap): a record of another model file, backend version or
CPU never applies. When the model's folder is read-only the record is kept for the rest of the process (and
a warning says it could not be saved). ``crossclr evaluate`` runs the check the first time a model is opened
for bf16 with a cache; ``crossclr export --data`` offers it at export. A sidecar that is not a well-formed
record file is ignored with a warning (the model then runs in float32).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError
from .precision_records import cpu_key, describe, model_sha256, save
from .report import check_cache_fits, fit_bodies
from .session import ModelSession, bf16_candidate, class_outputs, iter_batches

log = logging.getLogger(__name__)

MIN_AGREEMENT_PCT = 99.5
MAX_DROP_PT = 0.3
CHECK_SAMPLES = 512
MIN_CHECK_SAMPLES = 100  # fewer samples cannot show 99.5 % agreement: such a check never passes


def _top1(x: np.ndarray) -> np.ndarray:
    return np.argmax(x, axis=1)


def compare(fp32: Mapping[str, np.ndarray], reduced: Mapping[str, np.ndarray], labels: np.ndarray, *,
            min_agreement: float = MIN_AGREEMENT_PCT, max_drop: float = MAX_DROP_PT,
            min_samples: int = MIN_CHECK_SAMPLES) -> dict[str, Any]:
    """The check's figures from the class-score outputs of both runs (same keys, (N, K) each) and the labels:
    worst top-1 agreement over the outputs (percent), top-1 of ``logits`` at both precisions, the drop, and
    whether both bounds hold."""
    n = len(labels)
    if n == 0:
        raise CrossclrError("precision check: no samples to compare")
    agreement = min(100.0 * float(np.mean(_top1(fp32[k]) == _top1(reduced[k]))) for k in fp32)
    acc32 = 100.0 * float(np.mean(_top1(fp32["logits"]) == labels))
    acc_r = 100.0 * float(np.mean(_top1(reduced["logits"]) == labels))
    finite = all(np.isfinite(v).all() for v in reduced.values())
    return {"samples": int(n), "agreement_pct": agreement, "top1_fp32": acc32, "top1_reduced": acc_r,
            "drop_pt": acc32 - acc_r, "min_agreement_pct": float(min_agreement),
            "max_drop_pt": float(max_drop), "min_samples": int(min_samples),
            "passed": bool(finite and n >= min_samples and agreement >= min_agreement
                           and acc32 - acc_r <= max_drop)}


def check_samples(n: int, samples: int = CHECK_SAMPLES) -> np.ndarray:
    """Indices of at most ``samples`` samples spread evenly over a split of ``n``."""
    if n <= samples:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, samples).round().astype(np.int64))


def run_check(model: str | Path, data: str | Path, split: str = "val", *, backend: str = "auto",
              precision: str = "bf16", samples: int = CHECK_SAMPLES, min_agreement: float = MIN_AGREEMENT_PCT,
              max_drop: float = MAX_DROP_PT, min_samples: int = MIN_CHECK_SAMPLES, threads: int = 0,
              batch_size: int = 16, record: bool = True) -> dict[str, Any]:
    """Run the check of ``model`` at ``precision`` on ``data[split]`` and (by default) record it.

    Returns the record. Raises CrossclrError when the backend cannot run the precision at all here (no
    native bf16): there is nothing to check then."""
    from .cache import open_cache

    ref = ModelSession(model, intra_op_threads=threads, use="latency", backend=backend, precision="fp32")
    low = ModelSession(model, intra_op_threads=threads, use="latency", backend=ref.backend,
                       precision=precision, trust_precision=True)
    if low.precision != precision:
        raise CrossclrError(f"{model}: {ref.backend} runs {precision} as {low.precision} on this CPU; "
                            "nothing to check")
    names = list(class_outputs(ref.info.kind, ref.info.streams))
    names = [n for n in names if n != "probabilities"]
    t0 = time.perf_counter()
    with open_cache(data) as cache:
        check_cache_fits(cache, ref.info, str(data))
        sp = cache.split(split)
        idx = check_samples(len(sp), samples)
        labels = np.asarray(sp.labels, dtype=np.int64)[idx]
        outs: dict[str, dict[str, list[np.ndarray]]] = {"fp32": {}, "low": {}}
        for b in iter_batches(len(idx), batch_size):
            x = fit_bodies(sp.read(idx[b]), ref.info)  # (B, C, T, V, m) -> (B, C, T, V, M)
            for tag, sess in (("fp32", ref), ("low", low)):
                for k, v in sess.run(x, names, f"{data}[{split}]").items():
                    outs[tag].setdefault(k, []).append(v)
    cat = {tag: {k: np.concatenate(v) for k, v in o.items()} for tag, o in outs.items()}
    figures = compare(cat["fp32"], cat["low"], labels, min_agreement=min_agreement, max_drop=max_drop,
                      min_samples=min_samples)
    rec = {"model_sha256": model_sha256(model), "backend": low.backend, "precision": precision,
           "backend_version": low.backend_version, "cpu": cpu_key(), "data": str(data), "split": split,
           **figures, "seconds": round(time.perf_counter() - t0, 3),
           "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if record:
        save(model, rec)
    return rec


def ensure_checked(model: str | Path, data: str | Path, split: str = "val", *, backend: str = "auto",
                   precision: str = "auto", threads: int = 0) -> dict[str, Any] | None:
    """Before a model is opened on a cache (``evaluate``, ``export --data``): when the model would be a
    bf16 candidate here (see ``session.bf16_candidate``) and no check is recorded for it, run and record
    the check. Returns the new record, or None when nothing was checked."""
    cand = bf16_candidate(model, backend=backend, precision=precision)
    if cand is None:
        return None
    rec = run_check(model, data, split, backend=cand, precision="bf16", threads=threads)
    (log.info if rec["passed"] else log.warning)("%s: %s (%s %s)", model, describe(rec), rec["backend"],
                                                 rec["backend_version"])
    return rec


def check_exported(out_dir: str | Path, files: Mapping[str, str], data: str | Path) -> list[str]:
    """``crossclr export --data``: check every exported float32 model that would be a bf16 candidate here
    on the cache's ``val`` split (else its first split); one line per check for the terminal."""
    from .cache import open_cache

    with open_cache(data) as cache:
        split = "val" if "val" in cache.splits else cache.splits[0]
    lines = []
    for name, fname in files.items():
        if name.endswith((".int8", ".fp16")):
            continue
        path = Path(out_dir) / fname
        rec = ensure_checked(path, data, split)
        if rec is not None:
            lines.append(f"  {fname:<24s} {describe(rec)} ({rec['backend']} {rec['backend_version']})")
    return lines
