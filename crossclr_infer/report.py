"""Accuracy reports of crossclr ONNX models on a cache split: per stream and fused, shardable and mergeable.

A report is a JSON dict. Everything except its ``run`` section (timing, providers, shard bookkeeping) is a
deterministic function of integer counts (correct top-1/top-5, confusion matrices), so the reports of the
shards ``0/n … n-1/n`` merge into exactly the report of the whole split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .errors import CrossclrError
from .fileio import atomic_output
from .metrics import FUSED, confusion_matrix, fuse_logits, per_class_accuracy, ranked_classes, topk_correct
from .session import ModelInfo, ModelSession, iter_batches

log = logging.getLogger(__name__)

REPORT_FORMAT = "crossclr-eval-report-v1"
TOPK = 5


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
    pct = (lambda c: 100.0 * c / num_samples) if num_samples else (lambda c: 0.0)
    return {"top1": pct(counts["correct_top1"]), "top5": pct(counts["correct_top5"]),
            "correct_top1": int(counts["correct_top1"]), "correct_top5": int(counts["correct_top5"]),
            "per_class_accuracy": [None if a is None else 100.0 * a for a in per_class_accuracy(cm)],
            "confusion": cm.tolist()}


def build_report(*, data: str, split: str, model_ids: Sequence[Mapping[str, str]], streams: Sequence[str],
                 weights: Mapping[str, float], class_names: Sequence[str], labels: np.ndarray,
                 logits: Mapping[str, np.ndarray], num_samples_total: int, shard: Shard | None,
                 run: Mapping[str, Any]) -> dict[str, Any]:
    """The report dict from per-stream and fused logits (keys: the streams and FUSED)."""
    k = len(class_names)
    results = {name: finish_result(stream_result(value, labels, k), len(labels)) for name,
               value in logits.items()}
    return {
        "format": REPORT_FORMAT, "data": data, "split": split, "models": [dict(m) for m in model_ids],
        "streams": list(streams),
            "fusion_weights": {s: float(weights[s]) for s in streams} if weights else {},
        "class_names": list(class_names), "num_samples_total": int(num_samples_total),
        "num_samples": int(len(labels)),
        "shard": None if shard is None else {"index": shard.index, "count": shard.count},
        "results": results, "run": dict(run),
    }


def merge_reports(reports: Sequence[Mapping[str, Any]], sources: Sequence[str] | None = None) -> dict[str,
                                                                                                      Any]:
    """Combine the reports of shards 0/n … n-1/n (any order) into the report of the whole split."""
    sources = list(sources) if sources is not None else [f"report {i}" for i in range(len(reports))]
    if not reports:
        raise CrossclrError("merge-reports: no reports given")
    for src, r in zip(sources, reports, strict=True):
        if r.get("format") != REPORT_FORMAT:
            raise CrossclrError(f"{src}: not a crossclr evaluation report (format {r.get('format')!r}, "
                                f"expected {REPORT_FORMAT})")
        if r.get("shard") is None:
            raise CrossclrError(f"{src}: report of a whole split, not a shard; merge only --shard reports")
    first = reports[0]
    same = ("split", "streams", "fusion_weights", "class_names", "num_samples_total")
    for src, r in zip(sources, reports, strict=True):
        if [m["sha256"] for m in r["models"]] != [m["sha256"] for m in first["models"]]:
            raise CrossclrError(f"{src}: models differ from {sources[0]}'s (sha256); merge reports of one "
                                f"evaluation")
        for key in same:
            if r[key] != first[key]:
                raise CrossclrError(f"{src}: {key!r} differs from {sources[0]}'s; merge reports of one "
                                    f"evaluation")
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
    inf_s = sum(r["run"].get("inference_seconds", 0.0) for r in reports)
    run = {"inference_seconds": inf_s, "samples_per_s": total / inf_s if inf_s > 0 else None,
           "merged_from": len(reports), "providers": first["run"].get("providers")}
    keep = ("format", "data", "split", "models", "streams", "fusion_weights", "class_names",
            "num_samples_total")
    out = {k: first[k] for k in keep}
    out.update({"num_samples": total, "shard": None, "results": results, "run": run})
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_report(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except FileNotFoundError:
        raise CrossclrError(f"{path}: report file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CrossclrError(f"{path}: not a JSON report ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != REPORT_FORMAT:
        raise CrossclrError(f"{path}: not a crossclr evaluation report (expected format {REPORT_FORMAT})")
    return obj


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
                intra_op_threads: int = 0, use: str = "throughput") -> ModelSet:
    """Open the models of an evaluation and check they fit together.

    Every session gets the same thread plan (``session.plan_threads``; ``intra_op_threads`` > 0 = the cores
    to use): the models run one after the other on each batch, and no thread spins between runs, so several
    stream models do not compete for the cores.
    """
    if not paths:
        raise CrossclrError("no --model given; pass an ensemble.onnx or one stream model per stream")
    sessions = tuple(ModelSession(p, providers, intra_op_threads=intra_op_threads, use=use) for p in paths)
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
    """The cache's layout, frames, persons, channels and classes must be the model's."""
    lay = cache.layout
    if lay.num_joints != info.layout.num_joints or tuple(lay.parents) != tuple(info.layout.parents):
        raise CrossclrError(f"{data}: cache layout {lay.name!r} ({lay.num_joints} joints) is not the model's "
                            f"layout {info.layout.name!r} ({info.layout.num_joints} joints)")
    got = (cache.num_channels, cache.frames, cache.num_person)
    want = (info.num_channels, info.frames, info.num_person)
    if got != want:
        raise CrossclrError(f"{data}: cache samples are (C, T, M) = {got}, the model expects {want}")
    if cache.num_class != info.num_class:
        raise CrossclrError(f"{data}: cache has {cache.num_class} classes, the model {info.num_class}")
    if list(cache.class_names) != list(info.class_names):
        log.warning("%s: class names differ from the model's (same count %d); reporting the model's names",
                    data, info.num_class)
    if dict(cache.preprocess) != dict(info.preprocess):
        log.warning("%s: cache preprocessing %s differs from the model's %s", data, cache.preprocess,
                    info.preprocess)


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
        return {v: float(weights[v]) for v in models.streams}
    out = {}
    for s in models.sessions:
        for v in s.info.streams:
            if v not in s.info.fusion_weights:
                raise CrossclrError(f"{s.info.path}: metadata has no fusion weight for stream {v!r}; pass "
                                    f"--weights")
            out[v] = s.info.fusion_weights[v]
    return out


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
        idx = shard.indices(n_total) if shard is not None else np.arange(n_total)
        labels = np.asarray(sp.labels, dtype=np.int64)[idx]
        parts: dict[str, list[np.ndarray]] = {}
        inference_s = 0.0
        wall0 = time.perf_counter()
        batches = list(iter_batches(len(idx), batch_size))
        for b in tqdm(batches, desc=f"evaluate {split}", unit="batch", disable=not progress, leave=False):
            x = sp.read(idx[b])  # (B, C, T, V, M)
            t0 = time.perf_counter()
            res = run_models(models, x, f"{data}[{split}]")
            inference_s += time.perf_counter() - t0
            for k, v in res.items():
                parts.setdefault(k, []).append(v)
        wall_s = time.perf_counter() - wall0
    k = models.info.num_class
    logits = {name: (np.concatenate(parts[name]) if name in parts else np.zeros((0, k), np.float32))
              for name in (*models.streams, *([FUSED] if models.is_ensemble else []))}
    if not models.is_ensemble or weights is not None:
        logits[FUSED] = fuse_logits({v: logits[v] for v in models.streams}, w)
    run = {"inference_seconds": inference_s, "wall_seconds": wall_s,
           "samples_per_s": len(idx) / inference_s if inference_s > 0 else None, "batch_size": batch_size,
           "providers": list(models.sessions[0].providers), "threads": models.sessions[0].plan.describe()}
    model_ids = [{"path": s.path, "sha256": file_sha256(s.path)} for s in models.sessions]
    return build_report(data=data, split=split, model_ids=model_ids, streams=models.streams, weights=w,
                        class_names=models.info.class_names, labels=labels, logits=logits,
                        num_samples_total=n_total, shard=shard, run=run)


def summary_markdown(report: Mapping[str, Any], worst: int = 5) -> str:
    """A short markdown summary: one row per stream and the fusion, then the weakest classes."""
    shard = report.get("shard")
    where = f"{report['data']} [{report['split']}]"
    if shard:
        where += f", shard {shard['index']}/{shard['count']}"
    lines = [f"### Evaluation: {where}", "",
             f"{report['num_samples']} samples, streams {', '.join(report['streams'])}, fusion weights "
             + (", ".join(f"{k}={v:g}" for k, v in report["fusion_weights"].items()) or "-"), "",
             "| stream | top-1 (%) | top-5 (%) |", "|---|---:|---:|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['top1']:.2f} | {r['top5']:.2f} |")
    sps = report.get("run", {}).get("samples_per_s")
    if sps:
        lines += ["", f"throughput: {sps:.1f} samples/s on {', '.join(report['run'].get('providers') or [])}"]
    fused = report["results"].get(FUSED)
    if fused:
        acc = [(a, report["class_names"][i]) for i,
               a in enumerate(fused["per_class_accuracy"]) if a is not None]
        acc.sort(key=lambda t: t[0])
        if acc:
            lines += ["", "weakest classes (fused): " + ", ".join(f"{n} {a:.1f}%" for a, n in acc[:worst])]
    return "\n".join(lines) + "\n"


def save_plots(report: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """Confusion-matrix PNGs (one per stream and the fusion); needs matplotlib (extra `viz`)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CrossclrError("--plots needs matplotlib: pip install 'crossclr[viz]'") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, r in report["results"].items():
        cm = np.asarray(r["confusion"], dtype=np.float64)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        k = len(cm)
        fig, ax = plt.subplots(figsize=(max(4, k * 0.12 + 3), max(4, k * 0.12 + 3)))
        im = ax.imshow(norm, vmin=0, vmax=1, cmap="viridis")
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{name}: top-1 {r['top1']:.2f}%")
        if k <= 30:
            ax.set_xticks(range(k), report["class_names"], rotation=90, fontsize=6)
            ax.set_yticks(range(k), report["class_names"], fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = out_dir / f"confusion_{name}.png"
        try:
            with atomic_output(path, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=120)
        finally:
            plt.close(fig)
        written.append(path)
    return written
