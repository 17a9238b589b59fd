"""Confusion-matrix PNGs of an evaluation report: what each figure shows is decided by a pure function.

``confusion_plot(report, name)`` returns a ``ConfusionPlot`` — title, normalisation, the colours (rows
normalised to the true class), the count written in each cell (up to ``MAX_ANNOTATED`` classes), the rows
greyed out (classes without a sample in this report, e.g. absent from a shard) — and ``draw`` only renders
it. The PNG carries the same facts as text metadata (``Title``, ``Description``, ``Greyed rows``,
``Cell counts``), so a test or a person can check a written figure without reading pixels.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CrossclrError, printable
from .fileio import atomic_output
from .metrics import FUSED
from .views import check_view_name

MAX_ANNOTATED = 30  # classes up to which every cell shows its count and every class its name
TOPK = 5
NORMALISATION = "colour: share of the true class (each row normalised to 100 %)"


@dataclass(frozen=True)
class ConfusionPlot:
    """Everything one confusion figure draws."""

    name: str                             # a stream or "fused"
    title: str
    normalisation: str                    # what the colours mean, and what the numbers are
    fractions: np.ndarray                 # (K, K) row-normalised shares; NaN rows for greyed classes
    counts: np.ndarray                    # (K, K) int64 counts, rows = true class
    cell_texts: tuple[tuple[str, ...], ...] | None  # the count written in each cell ("" for 0); None: none
    greyed_rows: tuple[int, ...]          # classes without a sample here (drawn grey, not as 0 % rows)
    class_names: tuple[str, ...]


def where_text(report: Mapping[str, Any]) -> str:
    """'val split' or 'val split, shard 1/4' (shards count from 0, as --shard does)."""
    text = f"{printable(report['split'], 40)} split"
    shard = report.get("shard")
    if shard:
        text += f", shard {shard['index']}/{shard['count']} (this shard only)"
    return text


def accuracy_text(result: Mapping[str, Any], num_class: int, num_samples: int) -> str:
    """'top-1 61.00 %, top-5 90.00 % (100 samples)'; top-5 only when 5 < the number of classes."""
    if result.get("top1") is None:
        return "no samples"
    text = f"top-1 {result['top1']:.2f} %"
    if TOPK < num_class:
        text += f", top-{TOPK} {result['top5']:.2f} %"
    return f"{text} ({num_samples} samples)"


def confusion_plot(report: Mapping[str, Any], name: str, *, note: str = "") -> ConfusionPlot:
    """The figure of result ``name`` (a stream or ``fused``) of a checked report; ``note`` is added to the
    title (e.g. 'not trained alone')."""
    counts = np.asarray(report["results"][name]["confusion"], dtype=np.int64)  # (K, K)
    k = len(counts)
    totals = counts.sum(axis=1)
    greyed = tuple(int(i) for i in np.nonzero(totals == 0)[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        fractions = np.where(totals[:, None] > 0, counts / totals[:, None], np.nan)
    cells = None
    if k <= MAX_ANNOTATED:
        cells = tuple(tuple(str(c) if c else "" for c in row) for row in counts.tolist())
    numbers = ("numbers: counts" if cells is not None
               else f"counts not written ({k} > {MAX_ANNOTATED} classes)")
    greyed_text = "; grey rows: classes without samples here" if greyed else ""
    label = f"{name} ({note})" if note else name
    title = (f"{label}: {where_text(report)}\n"
             f"{accuracy_text(report['results'][name], k, int(report['num_samples']))}")
    return ConfusionPlot(name=name, title=title, normalisation=f"{NORMALISATION}; {numbers}{greyed_text}",
                         fractions=fractions, counts=counts, cell_texts=cells, greyed_rows=greyed,
                         class_names=tuple(str(c) for c in report["class_names"]))


def png_metadata(plot: ConfusionPlot) -> dict[str, str]:
    """The PNG text chunks written with the figure."""
    return {"Title": plot.title, "Description": plot.normalisation,
            "Greyed rows": json.dumps([plot.class_names[i] for i in plot.greyed_rows]),
            "Cell counts": json.dumps(plot.counts.tolist())}


def plot_path(out_dir: Path, name: str) -> Path:
    """``out_dir/confusion_<name>.png`` for a stream (a known view) or the fusion; any other name (it came
    from a file) is refused, so no file name is built from unchecked text."""
    if name != FUSED:
        check_view_name(name, f"--plots {out_dir}: report result")
    return out_dir / f"confusion_{name}.png"


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CrossclrError("--plots needs matplotlib: pip install 'crossclr[viz]'") from None
    return plt


def draw(plot: ConfusionPlot, path: Path) -> Path:
    """Render ``plot`` to the PNG ``path`` (atomically), with its text metadata."""
    plt = _pyplot()
    k = len(plot.counts)
    side = max(4.5, k * (0.32 if plot.cell_texts is not None else 0.12) + 3)
    fig, ax = plt.subplots(figsize=(side, side))
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")  # greyed rows are NaN
    im = ax.imshow(np.ma.masked_invalid(plot.fractions), vmin=0, vmax=1, cmap=cmap)
    if plot.cell_texts is not None:
        for i, row in enumerate(plot.cell_texts):
            for j, text in enumerate(row):
                if text:
                    colour = "black" if plot.fractions[i, j] > 0.6 else "white"
                    ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
        names = [printable(n, 30) + (" (no samples)" if i in plot.greyed_rows else "")
                 for i, n in enumerate(plot.class_names)]
        ax.set_xticks(range(k), [printable(n, 30) for n in plot.class_names], rotation=90, fontsize=6)
        ax.set_yticks(range(k), names, fontsize=6)
    ax.set_xlabel("predicted class\n" + plot.normalisation.replace("; ", "\n"), fontsize=7)
    ax.set_ylabel("true class")
    ax.set_title(plot.title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    try:
        with atomic_output(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=120, format="png", metadata=png_metadata(plot))
    finally:
        plt.close(fig)
    return path


def save_confusion_plots(report: Mapping[str, Any], out_dir: str | Path,
                         notes: Mapping[str, str] | None = None) -> list[Path]:
    """One confusion PNG per stream and the fusion of a checked report; ``notes`` adds a word to a result's
    title (e.g. {'joint': 'not trained alone'}). File names are checked before anything is written."""
    _pyplot()
    out_dir = Path(out_dir)
    paths = {name: plot_path(out_dir, name) for name in report["results"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    notes = notes or {}
    return [draw(confusion_plot(report, name, note=notes.get(name, "")), paths[name])
            for name in report["results"]]
