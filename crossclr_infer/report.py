"""Accuracy reports of crossclr ONNX models on a cache split: per stream and fused, shardable and mergeable.

A report is a JSON dict. Everything except its ``run`` section (timing, providers, shard bookkeeping) is a
deterministic function of integer counts (correct top-1/top-5, confusion matrices), so the reports of the
shards ``0/n … n-1/n`` merge into exactly the report of the whole split.

A report names the cache split it was computed on (``data_id``: file size, split, sample count, hash of
the sample names and labels; ``Cache.identity``), and ``merge_reports`` refuses shards of different caches.
An empty shard (more shards than samples, e.g. ``--shard 50/100`` of 16 samples) gives a valid report with
``num_samples`` 0, zero counts and ``top1``/``top5`` null (no accuracy is claimed); it merges like any
other shard. Reports read from files are checked field by field (``check_report``) before they are used.

Format v2 adds the per-sample predictions (``samples``, report_samples.py) and ``fusion`` (how the models'
heads were trained: ``joint`` = only through the fused logits, so per-stream rows are "not trained alone").
v1 reports (without them) are still read and merged; a merge of v1 and v2 shards has no ``samples``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import skeleton
from .errors import CrossclrError, check_name, printable
from .fileio import file_sha256
from .metrics import (
    FUSED,
    FUSIONS,
    check_fusion_weights,
    confusion_matrix,
    fuse_logits,
    per_class_accuracy,
    ranked_classes,
    topk_correct,
)
from .report_plots import save_confusion_plots
from .report_samples import build_samples, check_samples, merge_samples
from .session import ModelInfo, ModelSession, iter_batches
from .views import check_view_name

log = logging.getLogger(__name__)

REPORT_FORMAT = "crossclr-eval-report-v2"
READ_FORMATS = ("crossclr-eval-report-v1", REPORT_FORMAT)  # v1: no samples, no fusion
TOPK = 5
NOT_ALONE = "not trained alone"


@dataclass(frozen=True)
class Shard:
    """Slice ``index`` (0-based) of ``count`` near-equal contiguous slices of a split."""

    index: int
    count: int

    @staticmethod
    def parse(text: str) -> Shard:
        """'i/n' with 0 <= i < n."""
        try:
            i_text, n_text = text.split("/")
            shard = Shard(int(i_text), int(n_text))
        except ValueError:
            raise CrossclrError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None
        if not 0 <= shard.index < shard.count:
            raise CrossclrError(f"--shard {text!r}: expected I/N with 0 <= I < N (shards count from 0)")
        return shard

    def indices(self, n: int) -> np.ndarray:
        return np.array_split(np.arange(n), self.count)[self.index]


def stream_result(logits: np.ndarray, labels: np.ndarray, num_class: int) -> dict[str, Any]:
    """Integer counts of one stream (or the fusion) on a set of samples."""
    cm = confusion_matrix(labels, ranked_classes(logits, 1)[:, 0], num_class)
    return {"correct_top1": topk_correct(logits, labels, 1), "correct_top5": topk_correct(logits, labels,
                                                                                          TOPK),
            "confusion": cm.tolist()}


def finish_result(counts: Mapping[str, Any], num_samples: int) -> dict[str, Any]:
    """Counts -> the reported result (accuracies in percent derived from the counts)."""
    cm = np.asarray(counts["confusion"], dtype=np.int64)
    pct = (lambda c: 100.0 * c / num_samples) if num_samples else (lambda c: None)  # empty: no accuracy
    return {"top1": pct(counts["correct_top1"]), "top5": pct(counts["correct_top5"]),
            "correct_top1": int(counts["correct_top1"]), "correct_top5": int(counts["correct_top5"]),
            "per_class_accuracy": [None if a is None else 100.0 * a for a in per_class_accuracy(cm)],
            "confusion": cm.tolist()}


def build_report(*, data: str, split: str, model_ids: Sequence[Mapping[str, str]], streams: Sequence[str],
                 weights: Mapping[str, float], class_names: Sequence[str], labels: np.ndarray,
                 logits: Mapping[str, np.ndarray], num_samples_total: int, shard: Shard | None,
                 run: Mapping[str, Any], data_id: Mapping[str, Any] | None = None,
                 names: Sequence[str] | None = None, fusion: str | None = None) -> dict[str, Any]:
    """The report dict from per-stream and fused logits (keys: the streams and FUSED); ``data_id`` is
    ``Cache.identity(split)``; ``names`` (one per sample) adds the per-sample predictions; ``fusion`` says
    how the heads were trained (``joint``, ``separate`` or None when the models do not say)."""
    k = len(class_names)
    results = {name: finish_result(stream_result(value, labels, k), len(labels)) for name,
               value in logits.items()}
    samples = build_samples(names, labels, logits, streams) if names is not None and FUSED in logits else None
    return {
        "format": REPORT_FORMAT, "data": data, "split": split, "data_id": dict(data_id or {}),
        "models": [dict(m) for m in model_ids], "streams": list(streams),
        "fusion_weights": {s: float(weights[s]) for s in streams} if weights else {},
        "fusion": fusion, "class_names": list(class_names), "num_samples_total": int(num_samples_total),
        "num_samples": int(len(labels)),
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "results": results, "samples": samples, "run": dict(run),
    }


def merge_reports(reports: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> dict[str,
                                                                                                      Any]:
    """Combine the reports of shards 0/n … n-1/n (any order) into the report of the whole split.

    Every report is checked (``check_report``); the shards must come from one evaluation: the same models,
    cache split (``data_id``), streams, weights and classes. Empty shards merge like any other. The
    per-sample predictions are concatenated in shard order (none when a shard has none: a v1 report)."""
    sources = list(sources) if sources is not None else [f"report {i}" for i in range(len(reports))]
    if not reports:
        raise CrossclrError("merge-reports: no reports given")
    _check_shards(reports, sources)
    first = reports[0]
    count = first["shard"]["count"]
    seen = sorted(r["shard"]["index"] for r in reports)
    if any(r["shard"]["count"] != count for r in reports) or seen != list(range(count)):
        raise CrossclrError(f"merge-reports: shards {seen} of {count}; expected each of 0..{count - 1} "
                            f"exactly once")
    total = sum(r["num_samples"] for r in reports)
    if total != first["num_samples_total"]:
        raise CrossclrError(f"merge-reports: shards hold {total} samples, the split has "
                            f"{first['num_samples_total']}")
    results = {}
    for name in first["results"]:
        counts = {"correct_top1": sum(r["results"][name]["correct_top1"] for r in reports),
                  "correct_top5": sum(r["results"][name]["correct_top5"] for r in reports),
                  "confusion": np.sum([np.asarray(r["results"][name]["confusion"], dtype=np.int64)
                                       for r in reports], axis=0)}
        results[name] = finish_result(counts, total)
    inf_s = sum(float(r.get("run", {}).get("inference_seconds") or 0.0) for r in reports)
    run = {"inference_seconds": inf_s, "samples_per_s": total / inf_s if inf_s > 0 else None,
           "merged_from": len(reports), "providers": first.get("run", {}).get("providers"),
           "backends": first.get("run", {}).get("backends")}
    keep = ("data", "split", "data_id", "models", "streams", "fusion_weights")
    fusion = next((r["fusion"] for r in reports if r.get("fusion")), None)  # v1 shards have none
    out = {"format": REPORT_FORMAT, **{k: first[k] for k in keep}, "fusion": fusion,
           "class_names": first["class_names"], "num_samples_total": first["num_samples_total"]}
    ordered = sorted(reports, key=lambda r: r["shard"]["index"])
    samples = merge_samples([r.get("samples") for r in ordered], first["streams"])
    out.update({"num_samples": total, "shard": None, "results": results, "samples": samples, "run": run})
    return out


def _check_shards(reports: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> None:
    """Every report is a checked shard report of the same evaluation as the first."""
    for src, r in zip(sources, reports, strict=True):
        check_report(r, src)
        if r.get("shard") is None:
            raise CrossclrError(f"{src}: report of a whole split, not a shard; merge only --shard reports")
    first = reports[0]
    same = ("split", "data_id", "streams", "fusion_weights", "class_names", "num_samples_total")
    for src, r in zip(sources, reports, strict=True):
        if [m["sha256"] for m in r["models"]] != [m["sha256"] for m in first["models"]]:
            raise CrossclrError(f"{src}: models differ from {sources[0]}'s (sha256); merge reports of one "
                                f"evaluation")
        for key in same:
            if r[key] != first[key]:
                what = " (the shards were evaluated on different caches)" if key == "data_id" else ""
                raise CrossclrError(f"{src}: {key!r} differs from {sources[0]}'s{what}; merge reports of one "
                                    f"evaluation")
        if r.get("fusion") != first.get("fusion") and r.get("format") == first.get("format"):
            raise CrossclrError(f"{src}: 'fusion' differs from {sources[0]}'s; merge reports of one "
                                "evaluation")


def read_report(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise CrossclrError(f"{path}: report file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CrossclrError(f"{path}: not a JSON report ({e})") from None
    except (OSError, RecursionError) as e:
        raise CrossclrError(f"{path}: cannot read the report ({type(e).__name__}: {e})") from None
    return check_report(obj, str(path))


def _field(src: str, name: str, problem: str) -> CrossclrError:
    return CrossclrError(f"{src}: field {name!r} {problem}; expected a report written by `crossclr evaluate`")


def _brief(value: Any) -> str:
    """A value for a message: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _count(r: Mapping[str, Any], key: str, src: str, name: str, limit: int | None = None) -> int:
    """An integer field >= 0 (and <= limit)."""
    v = r.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or (limit is not None and v > limit):
        bound = f" and <= {limit}" if limit is not None else ""
        raise _field(src, name, f"is {_brief(v)}, not an integer >= 0{bound}")
    return v


def _check_result(res: Any, src: str, name: str, k: int, n: int) -> None:
    """One result's counts: correct top-1 <= top-5 <= n, a K × K confusion matrix of counts summing to n
    whose diagonal is the correct top-1 count."""
    if not isinstance(res, dict):
        raise _field(src, name, f"is a {type(res).__name__}, not an object")
    top1 = _count(res, "correct_top1", src, f"{name}.correct_top1", n)
    top5 = _count(res, "correct_top5", src, f"{name}.correct_top5", n)
    if top5 < top1:
        raise _field(src, f"{name}.correct_top5", f"is {top5}, below correct_top1 {top1}")
    cm = res.get("confusion")
    if (not isinstance(cm, list) or len(cm) != k
            or not all(isinstance(row, list) and len(row) == k for row in cm)
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for row in cm for c in row)):
        raise _field(src, f"{name}.confusion",
                     f"is not a {k} × {k} matrix of counts >= 0 (one row and column per class)")
    total, trace = sum(map(sum, cm)), sum(cm[i][i] for i in range(k))
    if total != n or trace != top1:
        raise _field(src, f"{name}.confusion", f"sums to {total} with {trace} on the diagonal, inconsistent "
                                               f"with num_samples {n} and correct_top1 {top1}")


def check_report(obj: Any, src: str) -> dict[str, Any]:
    """``obj`` when it is a well-formed evaluation report, else a CrossclrError naming ``src`` and the field.

    Checked: format, data and split text, data_id object, models with sha256, streams (known views),
    fusion_weights (finite, >= 0), class_names, sample counts, shard (null or {index, count} with
    0 <= index < count), results per stream (and fused) with consistent counts, fusion (v2: null, joint or
    separate), samples (v2: null or per-sample records that rebuild the confusion matrices), run object."""
    if not isinstance(obj, dict) or obj.get("format") not in READ_FORMATS:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CrossclrError(f"{src}: not a crossclr evaluation report (format {_brief(found)}, expected "
                            f"{REPORT_FORMAT})")
    streams, classes = _check_identity(obj, src)
    total = _count(obj, "num_samples_total", src, "num_samples_total")
    n = _count(obj, "num_samples", src, "num_samples", total)
    shard = obj.get("shard")
    if shard is not None:
        if not isinstance(shard, dict):
            raise _field(src, "shard", f"is {_brief(shard)}, not null or an object {{index, count}}")
        count = _count(shard, "count", src, "shard.count")
        if count < 1:
            raise _field(src, "shard.count", "is 0, expected at least 1 shard")
        _count(shard, "index", src, "shard.index", count - 1)
    results = obj.get("results")
    if not isinstance(results, dict):
        raise _field(src, "results", f"is {_brief(results)}, not an object with one result per stream")
    want = [*streams, *([FUSED] if FUSED in results else [])]
    if sorted(results) != sorted(want):
        raise _field(src, "results", f"has keys {_brief(list(results))}, expected {want} (the streams and "
                                     "fused)")
    for name, res in results.items():
        _check_result(res, src, f"results.{name}", len(classes), n)
    if obj.get("samples") is not None:
        check_samples(obj["samples"], src, results, streams, len(classes), n)
    if obj.get("fusion") not in (None, *FUSIONS):
        raise _field(src, "fusion", f"is {_brief(obj.get('fusion'))}, expected null or one of {FUSIONS}")
    if not isinstance(obj.get("run", {}), dict):
        raise _field(src, "run", f"is {_brief(obj.get('run'))}, not an object")
    return obj


def _check_identity(obj: Mapping[str, Any], src: str) -> tuple[list[str], list[str]]:
    """data, split, data_id, models, streams, fusion weights and class names; returns (streams, classes)."""
    for key in ("data", "split"):
        if not isinstance(obj.get(key), str):
            raise _field(src, key, f"is {_brief(obj.get(key))}, not a string")
    if not isinstance(obj.get("data_id"), dict):
        raise _field(src, "data_id", f"is {_brief(obj.get('data_id'))}, not an object (reports of older "
                                     "crossclr versions: evaluate again)")
    models = obj.get("models")
    if (not isinstance(models, list) or not models
            or not all(isinstance(m, dict) and isinstance(m.get("sha256"), str) for m in models)):
        raise _field(src, "models", "is not a list of {path, sha256} objects")
    streams = obj.get("streams")
    if not isinstance(streams, list) or not streams:
        raise _field(src, "streams", f"is {_brief(streams)}, not a list of stream names")
    for v in streams:
        check_view_name(v, f"{src}: field 'streams'")
    weights = obj.get("fusion_weights")
    if not isinstance(weights, dict):
        raise _field(src, "fusion_weights", f"is {_brief(weights)}, not an object")
    check_fusion_weights(weights, f"{src}: field 'fusion_weights'", partial=True)
    classes = obj.get("class_names")
    if not isinstance(classes, list) or not classes:
        raise _field(src, "class_names", f"is {_brief(classes)}, not a list of class names")
    for c in classes:
        check_name(c, f"{src}: field 'class_names'", "class name")
    return streams, classes


# ---------------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class ModelSet:
    """Either one ensemble model or one stream model per stream, all describing the same data."""

    sessions: tuple[ModelSession, ...]
    streams: tuple[str, ...]
    info: ModelInfo  # the first model's; the others agree on layout, frames, persons, classes

    @property
    def is_ensemble(self) -> bool:
        return self.info.kind == "ensemble"


def load_models(paths: Sequence[str | Path], providers: Sequence[str] | None = None, *,
                intra_op_threads: int = 0, use: str = "throughput", backend: str = "auto",
                precision: str = "auto") -> ModelSet:
    """Open the models of an evaluation and check they fit together.

    Every session gets the same thread plan (``session.plan_threads``; ``intra_op_threads`` > 0 = the cores
    to use): the models run one after the other on each batch, and no thread spins between runs, so several
    stream models do not compete for the cores.
    """
    if not paths:
        raise CrossclrError("no --model given; pass an ensemble.onnx or one stream model per stream")
    sessions = tuple(ModelSession(p, providers, intra_op_threads=intra_op_threads, use=use, backend=backend,
                                  precision=precision) for p in paths)
    first = sessions[0].info
    if len(sessions) == 1:
        return ModelSet(sessions, first.streams, first)
    streams: list[str] = []
    for s in sessions:
        i = s.info
        if i.kind != "stream":
            raise CrossclrError(f"{i.path}: an ensemble model cannot be combined with other models; pass it "
                                f"alone")
        for key in ("layout", "frames", "num_person", "num_channels", "class_names"):
            if getattr(i, key) != getattr(first, key):
                raise CrossclrError(f"{i.path}: {key} differs from {first.path}'s; pass models of one export")
        dup = [v for v in i.streams if v in streams]
        if dup:
            raise CrossclrError(f"{i.path}: stream {dup[0]!r} given twice; pass one model per stream")
        streams.extend(i.streams)
    return ModelSet(sessions, tuple(streams), first)


def check_cache_fits(cache: Any, info: ModelInfo, data: str) -> None:
    """The cache's layout, frames, channels and classes must be the model's; its bodies M at most the model's
    (fewer are padded with zero bodies by ``fit_bodies``, as ``Predictor`` pads a one-body clip)."""
    lay = cache.layout
    if lay.num_joints != info.layout.num_joints or tuple(lay.parents) != tuple(info.layout.parents):
        raise CrossclrError(f"{data}: cache layout {lay.name!r} ({lay.num_joints} joints) is not the model's "
                            f"layout {info.layout.name!r} ({info.layout.num_joints} joints)")
    got = (cache.num_channels, cache.frames)
    want = (info.num_channels, info.frames)
    if got != want:
        raise CrossclrError(f"{data}: cache samples are (C, T) = {got}, the model expects {want}")
    if cache.num_person > info.num_person:
        raise CrossclrError(f"{data}: cache samples hold M = {cache.num_person} bodies, the model takes at "
                            f"most {info.num_person}; prepare the cache with {info.num_person} bodies (or "
                            f"use a model of {cache.num_person})")
    if cache.num_person < info.num_person:
        log.info("%s: %d-body samples, the model takes %d; adding zero bodies as Predictor does", data,
                 cache.num_person, info.num_person)
    if cache.num_class != info.num_class:
        raise CrossclrError(f"{data}: cache has {cache.num_class} classes, the model {info.num_class}")
    if list(cache.class_names) != list(info.class_names):
        log.warning("%s: class names differ from the model's (same count %d); reporting the model's names",
                    data, info.num_class)
    if dict(cache.preprocess) != dict(info.preprocess):
        log.warning("%s: cache preprocessing %s differs from the model's %s", data, cache.preprocess,
                    info.preprocess)


def fit_bodies(x: np.ndarray, info: ModelInfo) -> np.ndarray:
    """A cache batch (B, C, T, V, m) with m <= the model's M bodies -> (B, C, T, V, M): zero bodies appended
    after the recorded ones (``skeleton.fit_bodies``, the rule ``Predictor`` pads a clip with)."""
    return x if x.shape[-1] == info.num_person else skeleton.fit_bodies(x, info.num_person)


def run_models(models: ModelSet, x: np.ndarray, source: str) -> dict[str, np.ndarray]:
    """Per-stream logits of one batch (keys: stream names) plus FUSED from an ensemble model."""
    out: dict[str, np.ndarray] = {}
    if models.is_ensemble:
        names = ["logits"] + [f"logits_{v}" for v in models.streams]
        res = models.sessions[0].run(x, names, source)
        out = {v: res[f"logits_{v}"] for v in models.streams}
        out[FUSED] = res["logits"]
        return out
    for s in models.sessions:
        res = s.run(x, ["logits"], source)
        out[s.info.streams[0]] = res["logits"]
    return out


def resolve_weights(models: ModelSet, weights: Mapping[str, float] | None) -> dict[str, float]:
    """Given weights (must cover exactly the streams), else the models' metadata weights."""
    if weights is not None:
        extra = sorted(set(weights) - set(models.streams))
        missing = sorted(set(models.streams) - set(weights))
        if extra or missing:
            raise CrossclrError(f"--weights: streams {list(models.streams)} need one weight each "
                                f"(missing {missing}, unknown {extra})")
        return check_fusion_weights({v: weights[v] for v in models.streams}, "--weights")
    out = {}
    for s in models.sessions:
        for v in s.info.streams:
            if v not in s.info.fusion_weights:
                raise CrossclrError(f"{s.info.path}: metadata has no fusion weight for stream {v!r}; pass "
                                    f"--weights")
            out[v] = s.info.fusion_weights[v]
    paths = ", ".join(s.info.path for s in models.sessions)
    return check_fusion_weights(out, f"{paths}: model metadata 'fusion_weights' (pass --weights)")


def evaluate(data: str | Path, models: ModelSet, *, split: str = "val", weights: Mapping[str,
                                                                                         float] | None = None,
             batch_size: int = 64, shard: Shard | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the models over a cache split (or one shard of it) and build the report."""
    from .cache import open_cache

    data = str(data)
    w = resolve_weights(models, weights)
    with open_cache(data) as cache:
        check_cache_fits(cache, models.info, data)
        sp = cache.split(split)
        n_total = len(sp)
        data_id = cache.identity(split)
        idx = shard.indices(n_total) if shard is not None else np.arange(n_total)
        if len(idx) == 0:
            where = f"shard {shard.index}/{shard.count} of " if shard is not None else ""
            log.warning("%s%s split %r (%d samples) is empty: the report holds 0 samples and no accuracy",
                        where, data, split, n_total)
        labels = np.asarray(sp.labels, dtype=np.int64)[idx]
        names = [sp.names[i] for i in idx]
        parts, inference_s, wall_s = _run_split(models, sp, idx, batch_size, f"{data}[{split}]",
                                                f"evaluate {split}" if progress else None)
    k = models.info.num_class
    logits = {name: (np.concatenate(parts[name]) if name in parts else np.zeros((0, k), np.float32))
              for name in (*models.streams, *([FUSED] if models.is_ensemble else []))}
    if not models.is_ensemble or weights is not None:
        logits[FUSED] = fuse_logits({v: logits[v] for v in models.streams}, w)
    run = {"inference_seconds": inference_s, "wall_seconds": wall_s,
           "samples_per_s": len(idx) / inference_s if inference_s > 0 else None, "batch_size": batch_size,
           "providers": list(models.sessions[0].providers), "threads": models.sessions[0].plan.describe(),
           "backends": [s.describe_backend() for s in models.sessions]}
    model_ids = [{"path": s.path, "sha256": file_sha256(s.path)} for s in models.sessions]
    return build_report(data=data, split=split, model_ids=model_ids, streams=models.streams, weights=w,
                        class_names=models.info.class_names, labels=labels, logits=logits,
                        num_samples_total=n_total, shard=shard, run=run, data_id=data_id, names=names,
                        fusion=head_fusion(models))


def _run_split(models: ModelSet, sp: Any, idx: np.ndarray, batch_size: int, source: str,
               progress: str | None) -> tuple[dict[str, list[np.ndarray]], float, float]:
    """The models' outputs on samples ``idx`` of a cache split, batch by batch: (outputs by name,
    inference seconds, wall seconds); ``progress`` is the progress bar's text (None: no bar)."""
    parts: dict[str, list[np.ndarray]] = {}
    inference_s = 0.0
    wall0 = time.perf_counter()
    batches = list(iter_batches(len(idx), batch_size))
    for b in tqdm(batches, desc=progress, unit="batch", disable=progress is None, leave=False):
        x = fit_bodies(sp.read(idx[b]), models.info)  # (B, C, T, V, m) -> (B, C, T, V, M)
        t0 = time.perf_counter()
        res = run_models(models, x, source)
        inference_s += time.perf_counter() - t0
        for k, v in res.items():
            parts.setdefault(k, []).append(v)
    return parts, inference_s, time.perf_counter() - wall0


def head_fusion(models: ModelSet) -> str | None:
    """How the models' per-stream heads were trained: the metadata's ``fusion`` (``joint``: only through the
    fused logits; ``separate``: each alone); for models exported without it, ``joint`` when the fusion
    weights are the joint fusion's 1/S each (S >= 2 streams), else None (not known)."""
    said = {getattr(s.info, "fusion", None) for s in models.sessions} - {None}
    if len(said) == 1:
        return said.pop()
    weights = [s.info.fusion_weights.get(v) for s in models.sessions for v in s.info.streams]
    n = len(weights)
    if not said and n >= 2 and all(w is not None and abs(w - 1.0 / n) < 1e-6 for w in weights):
        return "joint"
    return None


def stream_notes(report: Mapping[str, Any]) -> dict[str, str]:
    """{stream: "not trained alone"} for every stream of a report whose heads were trained jointly (fusion
    ``joint``: each stream's head only learnt through the fused logits, so its own row is no measure of the
    stream alone); empty otherwise."""
    if report.get("fusion") != "joint" or FUSED not in report["results"]:
        return {}
    return {v: NOT_ALONE for v in report["streams"]}


def summary_markdown(report: Mapping[str, Any], worst: int = 5) -> str:
    """A short markdown summary: the headline table (the fusion and every stream trained alone), streams
    not trained alone on a line of their own, then the weakest classes. Top-5 only when 5 < classes."""
    shard = report.get("shard")
    where = f"{printable(report['data'], 200)} [{report['split']}]"
    if shard:
        where += f", shard {shard['index']}/{shard['count']} (this shard only)"
    k = len(report["class_names"])
    top5 = TOPK < k
    notes = stream_notes(report)
    lines = [f"### Evaluation: {where}", "",
             f"{report['num_samples']} samples, {k} classes, streams {', '.join(report['streams'])}, fusion "
             "weights " + (", ".join(f"{a}={b:g}" for a, b in report["fusion_weights"].items()) or "-"), "",
             "| stream | top-1 (%) |" + (" top-5 (%) |" if top5 else ""),
             "|---|---:|" + ("---:|" if top5 else "")]
    if not report["num_samples"]:
        lines[2] = f"0 samples: {'this shard' if shard else 'the split'} is empty, no accuracy to report"
    for name, r in report["results"].items():
        if name not in notes:
            lines.append(f"| {name} | {_percent(r['top1'])} |"
                         + (f" {_percent(r['top5'])} |" if top5 else ""))
    if notes:
        lines += ["", f"per-stream heads {NOT_ALONE} (joint fusion: they learnt only through the fused "
                  "logits; their rows measure no stream by itself): "
                  + ", ".join(f"{v} {_percent(report['results'][v]['top1'])} %" for v in notes)]
    sps = report.get("run", {}).get("samples_per_s")
    if sps:
        lines += ["", f"throughput: {sps:.1f} samples/s on {', '.join(report['run'].get('providers') or [])}"
                  + _backend_text(report["run"].get("backends"))]
    lines += _weakest(report, worst)
    return "\n".join(lines) + "\n"


def _weakest(report: Mapping[str, Any], worst: int) -> list[str]:
    """The summary's line of the fused result's weakest classes (none without a fused result)."""
    fused = report["results"].get(FUSED)
    if not fused:
        return []
    acc = [(a, report["class_names"][i]) for i, a in enumerate(fused["per_class_accuracy"]) if a is not None]
    acc.sort(key=lambda t: t[0])
    if not acc:
        return []
    return ["", "weakest classes (fused): " + ", ".join(f"{n} {a:.1f}%" for a, n in acc[:worst])]


def _backend_text(backends: Any) -> str:
    """`` (openvino 2026.4.1, bf16)`` for the report's text form, from its ``run.backends`` (checked text)."""
    if not isinstance(backends, list) or not backends or not isinstance(backends[0], dict):
        return ""
    b = backends[0]
    parts = [str(b.get(k, "")) for k in ("backend", "backend_version", "precision")]
    if not all(re.fullmatch(r"[A-Za-z0-9._+/-]{1,80}", p) for p in parts):  # from a file: plain text only
        return ""
    return f" ({parts[0]} {parts[1]}, {parts[2]})"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def save_plots(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Confusion-matrix PNGs (one per stream and the fusion; report_plots.py); needs matplotlib (extra
    `viz`). Streams not trained alone say so in their title. File names are checked before anything is
    written."""
    notes = stream_notes(report) if "streams" in report else {}
    return save_confusion_plots(report, out_dir, notes)
