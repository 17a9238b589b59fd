"""Figures (``viz`` extra): t-SNE of embeddings, training curves, confusion matrices, linear-eval curves.

matplotlib and scikit-learn are imported lazily with the Agg backend; PNGs are written to a temp name in
the target folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import atomic_output

log = logging.getLogger(__name__)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise CrossclrError("plots need matplotlib: pip install 'crossclr[viz]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def stream_png(folder: str | Path, prefix: str, stream: str, source: str) -> Path:
    """``folder/<prefix>_<stream>.png`` once ``stream`` (read from ``source``, e.g. a checkpoint) is a known
    view or "fused": no file name is built from unchecked text."""
    from crossclr_infer.metrics import FUSED
    from crossclr_infer.views import check_view_name

    if stream != FUSED:
        check_view_name(stream, source)
    return Path(folder) / f"{prefix}_{stream}.png"


def _save(fig: Any, out: str | Path) -> Path:
    out = Path(out)
    try:
        with atomic_output(out, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return out


def tsne_embed(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """(N, D) -> (N, 2) t-SNE of L2-normalized features (perplexity capped below N)."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise CrossclrError("crossclr tsne needs scikit-learn: pip install 'crossclr[viz]'") from None
    x = np.asarray(features, np.float64)
    n = x.shape[0]
    if n < 3:
        raise CrossclrError(f"t-SNE needs at least 3 samples, got {n}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(x)


def plot_tsne(
    points: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    out: str | Path,
    *,
    title: str = "t-SNE",
) -> Path:
    """Scatter of 2-D points coloured by class (legend when ≤ 20 classes)."""
    plt = _pyplot()
    labels = np.asarray(labels)
    classes = np.unique(labels)
    cmap = plt.get_cmap("tab20" if len(classes) <= 20 else "gist_ncar")
    fig, ax = plt.subplots(figsize=(7, 6))
    for i, c in enumerate(classes):
        m = labels == c
        ax.scatter(
            points[m, 0],
            points[m, 1],
            s=6,
            color=cmap(i / max(len(classes) - 1, 1)),
            label=class_names[c] if c < len(class_names) else str(c),
        )
    if len(classes) <= 20:
        ax.legend(fontsize=6, markerscale=2, loc="best", frameon=False)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    return _save(fig, out)


MAX_CELL_TEXT = 30  # counts are written in the cells (and class names on the axes) up to this many classes


@dataclass(frozen=True)
class ConfusionFigure:
    """What a confusion plot shows, decided before anything is drawn (tested without matplotlib)."""

    title: str  # names the split, the top-1 and the normalisation
    shares: np.ndarray  # (K, K) share of each true class's samples; NaN rows for classes without samples
    cells: list[list[str]] | None  # the count in each cell ("" for 0); None above MAX_CELL_TEXT classes
    ticks: list[str] | None  # class names on both axes; None above MAX_CELL_TEXT classes
    absent: list[int]  # classes without samples in the split: their rows are greyed


def confusion_figure(cm: np.ndarray, class_names: Sequence[str], *, title: str,
                     split: str | None = None) -> ConfusionFigure:
    """The content of a confusion plot of counts ``cm`` (K, K), rows = true class: colours are the share
    of the true class's samples, the numbers are counts, absent classes are greyed, and the title states
    the split, the sample count and top-1, and that normalisation."""
    cm = np.asarray(cm, np.int64)
    totals = cm.sum(axis=1)
    absent = [int(i) for i in np.flatnonzero(totals == 0)]
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals[:, None] > 0, cm / totals[:, None], np.nan)
    n = int(cm.sum())
    acc = 100.0 * np.trace(cm) / n if n else float("nan")
    where = f" on {split}" if split else ""
    head = f"{title}{where}: top-1 {acc:.1f}% of {n} samples"
    note = "colour: share of the true class (rows sum to 100%)"
    k = cm.shape[0]
    if k <= MAX_CELL_TEXT:
        note += "; numbers: counts"
    if absent:
        note += f"; grey: {len(absent)} class{'es' if len(absent) > 1 else ''} without samples"
    small = k <= MAX_CELL_TEXT
    cells = [[str(v) if v else "" for v in row] for row in cm.tolist()] if small else None
    ticks = [str(c) for c in class_names[:k]] if small else None
    return ConfusionFigure(f"{head}\n{note}", shares, cells, ticks, absent)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], out: str | Path, *,
                   title: str = "confusion matrix", split: str | None = None) -> Path:
    """Draw ``confusion_figure`` as a PNG (rows = true class)."""
    return draw_confusion(confusion_figure(cm, class_names, title=title, split=split), out)


def draw_confusion(spec: ConfusionFigure, out: str | Path) -> Path:
    """Shares as colours (NaN rows grey), counts as text, the title of ``spec``."""
    plt = _pyplot()
    c = spec.shares.shape[0]
    size = min(4 + 0.18 * c, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.8")
    im = ax.imshow(np.ma.masked_invalid(spec.shares), cmap=cmap, vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    if spec.ticks is not None:
        ax.set_xticks(range(c), spec.ticks, rotation=90, fontsize=6)
        ax.set_yticks(range(c), spec.ticks, fontsize=6)
    if spec.cells is not None:
        for i, row in enumerate(spec.cells):
            for j, text in enumerate(row):
                if text:
                    dark = np.nan_to_num(spec.shares[i, j]) > 0.5
                    ax.text(j, i, text, ha="center", va="center", fontsize=8 if c <= 10 else 6,
                            color="white" if dark else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(spec.title, fontsize=9)
    return _save(fig, out)


def plot_predictions(labels: np.ndarray, predicted: np.ndarray, class_names: Sequence[str],
                     out: str | Path, *, title: str, split: str | None = None) -> str:
    """The confusion matrix of ``predicted`` (N,) against ``labels`` (N,) on ``split`` as a PNG; returns its
    path."""
    from crossclr_infer.metrics import confusion_matrix

    cm = confusion_matrix(np.asarray(labels), np.asarray(predicted), len(class_names))
    return str(plot_confusion(cm, class_names, out, title=title, split=split))


def plot_linear_curves(history: Sequence[dict[str, float]], streams: Sequence[str], out: str | Path) -> Path:
    """Loss and eval top-1 per stream and fused over the epochs of a linear/fine-tune run."""
    plt = _pyplot()
    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [r["loss"] for r in history])
    a1.set_xlabel("epoch")
    a1.set_ylabel("loss")
    for key in (*streams, "fused"):
        pts = [(r["epoch"], r[f"{key}_top1"]) for r in history if f"{key}_top1" in r]
        if pts:
            a2.plot(*zip(*pts, strict=True), label=key)
    a2.set_xlabel("epoch")
    a2.set_ylabel("eval top-1 (%)")
    a2.legend(fontsize=8)
    return _save(fig, out)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of a metrics.jsonl file (one per line; blank lines skipped)."""
    path = Path(path)
    if not path.is_file():
        raise CrossclrError(
            f"{path}: no such metrics file; expected runs/NAME/metrics.jsonl from crossclr train"
        )
    rows = []
    with path.open(encoding="utf-8") as f:
        n = 0
        try:
            for n, line in enumerate(f, 1):  # noqa: B007 - n: the last line read, for a decoding error
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CrossclrError(f"{path}: line {n}: not JSON ({e.msg})") from None
                except (RecursionError, ValueError):  # deep nesting; integers of over 4,300 digits
                    raise CrossclrError(f"{path}: line {n}: JSON nested too deeply or a number too long; "
                                        "expected one flat record per line as crossclr train writes"
                                        ) from None
                if not isinstance(row, dict):
                    raise CrossclrError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
                _check_row(row, path, n)
                rows.append(row)
        except UnicodeDecodeError:
            raise CrossclrError(f"{path}: not UTF-8 text (after line {n}); expected the metrics.jsonl "
                                "written by crossclr train") from None
    if not rows:
        raise CrossclrError(f"{path}: no metrics rows")
    return rows


def _check_row(row: dict[str, Any], path: Path, n: int) -> None:
    """The numbers of a metrics row are within float range (a 400-digit epoch overflowed when plotted)."""
    for key, value in row.items():
        if _is_number(value) and isinstance(value, int) and abs(value) > 2**53:
            raise CrossclrError(f"{path}: line {n}: {key!r} is a {len(str(abs(value)))}-digit number, out "
                                "of range; expected the metrics.jsonl written by crossclr train")
        if key in ("epoch", "step") and not _is_number(value):
            raise CrossclrError(f"{path}: line {n}: {key!r} is {type(value).__name__}, expected a number")


def summarize_metrics(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per epoch: the trainer's own epoch record (``"kind": "epoch"``) when there is one, else the
    mean of that epoch's step rows: last step, loss, every loss_<view>, mining_precision, last lr, stage."""
    by_epoch: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        if "epoch" in r:
            by_epoch.setdefault(r["epoch"], []).append(r)
    out = []
    for ep, rs in sorted(by_epoch.items(), key=lambda kv: float(kv[0])):
        epoch_rows = [r for r in rs if r.get("kind") == "epoch"]
        rs = epoch_rows[-1:] if epoch_rows else rs
        keys = sorted(
            {k for r in rs for k in r if k in ("loss", "mining_precision") or k.startswith("loss_")}
        )
        row: dict[str, Any] = {"epoch": ep, "step": max(int(r.get("step", 0)) for r in rs)}
        for k in keys:
            vals = [float(r[k]) for r in rs if _is_number(r.get(k))]
            if vals:
                row[k] = float(np.mean(vals))
        lrs = [r["lr"] for r in rs if _is_number(r.get("lr"))]
        if lrs:
            row["lr"] = float(lrs[-1])
        stages = [r["stage"] for r in rs if isinstance(r.get("stage"), str)]
        if stages:
            row["stage"] = stages[-1]
        out.append(row)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


STAGE_TEXT = {"cross": "cross-view stage starts"}  # how a stage's start is labelled (else "stage <name>")


def stage_starts(rows: Sequence[dict[str, Any]], xkey: str) -> list[tuple[float, str]]:
    """Where each stage after the first begins: (``xkey`` value of its first record, label). Records
    carry ``stage`` (the trainer writes it); a run of one stage, or rows without it, give []."""
    out: list[tuple[float, str]] = []
    current = None
    for r in rows:
        stage = r.get("stage")
        if not isinstance(stage, str) or not _is_number(r.get(xkey)):
            continue
        if current is not None and stage != current:
            out.append((float(r[xkey]), STAGE_TEXT.get(stage, f"stage {stage}")))
        current = stage
    return out


def _mark_stages(axes: Sequence[Any], starts: Sequence[tuple[float, str]]) -> None:
    """A dashed vertical line at each stage start on every panel, labelled on the first."""
    for x, label in starts:
        for ax in axes:
            ax.axvline(x, color="0.4", ls="--", lw=0.8)
        axes[0].annotate(label, xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(-3, -4),
                         textcoords="offset points", rotation=90, ha="right", va="top", fontsize=7,
                         color="0.3")


def plot_metrics(rows: Sequence[dict[str, Any]], out: str | Path, *, title: str = "pretraining") -> Path:
    """Loss (total and per view), learning rate and, when logged, mining precision against the step.

    Step records are drawn as lines; the trainer's epoch records (``"kind": "epoch"``) as markers; the start
    of each later stage (e.g. the cross-view stage) as a dashed line (``stage_starts``)."""
    plt = _pyplot()
    steps = [r for r in rows if r.get("kind") != "epoch"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    xkey = "step" if all("step" in r for r in rows) else "epoch"
    has_mining = any(_is_number(r.get("mining_precision")) for r in rows)
    fig, axes = plt.subplots(1, 3 if has_mining else 2, figsize=(16 if has_mining else 11, 4))
    keys = sorted({k for r in rows for k in r if k == "loss" or k.startswith("loss_")})

    def series(rs: Sequence[dict[str, Any]], k: str) -> list[tuple[Any, float]]:
        return [(r[xkey], r[k]) for r in rs if _is_number(r.get(k)) and xkey in r]

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, k in enumerate(keys):
        c = colors[i % len(colors)]
        if pts := series(steps, k):
            axes[0].plot(*zip(*pts, strict=True), label=k, lw=1.2 if k == "loss" else 0.8, color=c)
        if pts := series(epochs, k):
            axes[0].plot(*zip(*pts, strict=True), "o", ms=3, color=c, label=None if series(steps, k) else k)
    axes[0].set_xlabel(xkey)
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=8)
    axes[0].set_title(title)
    if pts := series(steps or rows, "lr"):
        axes[1].plot(*zip(*pts, strict=True))
    axes[1].set_xlabel(xkey)
    axes[1].set_ylabel("learning rate")
    if has_mining:
        if pts := series(epochs or steps, "mining_precision"):
            axes[2].plot(*zip(*pts, strict=True), "o-" if epochs else "-", ms=3)
        axes[2].set_xlabel(xkey)
        axes[2].set_ylabel("mining precision (same class)")
    _mark_stages(list(axes), stage_starts(rows, xkey))
    return _save(fig, out)
