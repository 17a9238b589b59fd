"""Click commands for evaluation protocols (registered by cli.py). Torch is imported inside the commands.

``linear``, ``knn``, ``finetune``, ``tsne``, ``plot-metrics``: each prints a compact table and can write the
same figures as JSON (``--json FILE``) for scripts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import check_outputs, output_lock
from crossclr_infer.views import parse_streams


def _int_list(value: str, flag: str, what: str) -> list[int]:
    """'80,90' -> [80, 90]; CrossclrError '<flag>: '<value>': expected comma-separated <what>'."""
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise CrossclrError(f"{flag}: {value!r}: expected comma-separated {what}") from None


def _weights(text: str | None) -> dict[str, float] | None:
    """--weights text -> {stream: weight} (crossclr_infer.metrics.parse_weights), None when not given."""
    from crossclr_infer.metrics import parse_weights

    return parse_weights(text) if text else None


def _apply(f: Callable, opts: list[Callable]) -> Callable:
    for opt in reversed(opts):
        f = opt(f)
    return f


@dataclass(frozen=True)
class ProtocolArgs:
    """The options every protocol command shares (``_common``), streams parsed."""

    data: Path  # --data: the HDF5 cache
    checkpoint: Path  # --checkpoint: pretrain.pt or linear.pt
    streams: list[str] | None  # --streams (None: all in the checkpoint)
    device: str | None  # --device
    train_split: str  # --train-split
    eval_split: str  # --eval-split
    json_out: Path | None  # --json

    def source(self) -> dict[str, Any]:
        """The keyword arguments of ``run_linear`` / ``run_knn`` / ``run_finetune`` these options give."""
        return {"data": self.data, "checkpoint": self.checkpoint, "streams": self.streams,
                "device": self.device, "train_split": self.train_split, "eval_split": self.eval_split}

    def check_outputs(self, outputs: dict[str, Path | None]) -> None:
        """``--json`` and ``outputs`` are none of the inputs (``crossclr_infer.fileio.check_outputs``)."""
        inputs = {"--data": self.data, "--checkpoint": self.checkpoint}
        check_outputs({**outputs, "--json": self.json_out}, inputs)


_data_option = click.option(
    "--data",
    "data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="HDF5 cache (crossclr prepare / synth).",
)


def _checkpoint_option(help_text: str | None) -> Callable:
    return click.option(
        "--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=help_text,
    )


def _json_option(help_text: str | None) -> Callable:
    return click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False, path_type=Path),
                        help=help_text)


def _common(f: Callable) -> Callable:
    """--data, --checkpoint, --streams, --device, --json, split names: passed to ``f`` as one
    ``ProtocolArgs``."""

    @functools.wraps(f)
    def command(*, data: Path, checkpoint: Path, streams: str | None, device: str | None, train_split: str,
                eval_split: str, json_out: Path | None, **rest: Any) -> None:
        views = parse_streams(streams)
        return f(ProtocolArgs(data, checkpoint, views, device, train_split, eval_split, json_out), **rest)

    opts = [
        _data_option,
        _checkpoint_option("runs/NAME/pretrain.pt (or a linear.pt)."),
        click.option(
            "--streams", default=None, help="Comma list of streams (default: all in the checkpoint)."
        ),
        click.option("--device", default=None, help="torch device (default: cuda when available, else cpu)."),
        click.option("--train-split", default="train", show_default=True),
        click.option("--eval-split", default="val", show_default=True),
        _json_option("Also write the results as JSON to this file."),
    ]
    return _apply(command, opts)


def _head_training(
    *, lr: float, fusion_help: str | None, weights_help: str
) -> Callable[[Callable], Callable]:
    """--fusion, --weights, --epochs, --lr (default ``lr``), --batch-size, --seed of linear and finetune."""
    opts = [
        click.option(
            "--fusion",
            type=click.Choice(["joint", "separate"]),
            default="joint",
            show_default=True,
            help=fusion_help,
        ),
        click.option("--weights", default=None, help=weights_help),
        click.option("--epochs", type=int, default=100, show_default=True),
        click.option("--lr", type=float, default=lr, show_default=True),
        click.option("--batch-size", type=int, default=128, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
    ]
    return lambda f: _apply(f, opts)


def _emit(report: dict[str, Any], table: str, json_out: Path | None) -> None:
    from training.protocols.io import write_json

    click.echo(table)
    if json_out is not None:
        write_json(report, json_out)
        click.echo(f"results: {json_out}")


def _emit_accuracy(report: dict[str, Any], footer: str, json_out: Path | None, num_classes: int) -> None:
    """The best/last accuracy table of linear / finetune, a footer line, and the JSON file."""
    _emit(report, _acc_table(report, num_classes) + "\n" + footer, json_out)


NOT_ALONE = "(not trained alone)"  # the label of a per-stream row whose head trained only through the fusion


def _num_classes(data: Path) -> int:
    """The class count of a cache (for which top-k columns mean something)."""
    from crossclr_infer.cache import open_cache

    with open_cache(data) as cache:
        return len(cache.class_names)


def shows_topk(k: int, num_classes: int) -> bool:
    """A top-k figure says something only when k < the number of classes (else it is 100 % by
    construction)."""
    return k < num_classes


def stream_rows(report: dict[str, Any]) -> tuple[list[tuple[str, str]], str | None]:
    """The rows of an accuracy table as (result key, shown name), fused first (the headline), and a note.
    Under joint fusion of several streams each head trained only through the mean of the logits, so its
    own accuracy is not that of a stream classifier: those rows say so and the note explains."""
    from crossclr_infer.metrics import FUSED

    keys = list(report["last"])
    streams = [k for k in keys if k != FUSED]
    ordered = [k for k in keys if k == FUSED] + streams
    if report.get("fusion") != "joint" or len(streams) < 2:
        return [(k, k) for k in ordered], None
    note = ("per-stream rows: heads trained jointly on the mean of their logits (--fusion joint), never as "
            "classifiers on their own; the fused row is the result (--fusion separate scores each stream)")
    return [(k, k if k == FUSED else f"{k} {NOT_ALONE}") for k in ordered], note


def _acc_table(report: dict[str, Any], num_classes: int) -> str:
    """best/last top-1 (and top-5 when 5 < classes) per result key, fused first, with the joint-fusion
    note."""
    from training.protocols.io import format_table

    top5 = shows_topk(5, num_classes)
    best = report.get("best", {})
    rows = []
    keys, note = stream_rows(report)
    for key, name in keys:
        last, b = report["last"][key], best.get(key)
        cells_b = [b["top1"], *([b["top5"]] if top5 else []), int(b["epoch"])] if b else []
        rows.append([name, *cells_b, last["top1"], *([last["top5"]] if top5 else [])])
    five = (["best top5"] if top5 else [])
    headers = (["stream", "best top1", *five, "epoch", "last top1", *(["last top5"] if top5 else [])] if best
               else ["stream", "top1", *(["top5"] if top5 else [])])
    return format_table(headers, rows) + (f"\n{note}" if note else "")


@click.command("linear")
@_common
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder for linear.pt (required unless --eval-only).",
)
@_head_training(
    lr=3.0,
    fusion_help="joint: heads trained on the mean of their logits (official); separate: each alone, fused "
    "with --weights.",
    weights_help="Fusion weights for --fusion separate, e.g. joint=0.6,motion=0.4,bone=0.6 (accel default "
    "0.4).",
)
@click.option("--momentum", type=float, default=0.9, show_default=True)
@click.option("--milestones", default=None, help="Comma list of lr-drop epochs (default: 0.8 · epochs).")
@click.option("--plots", is_flag=True, help="Write confusion.png and linear_curves.png (viz extra).")
@click.option("--eval-only", is_flag=True, help="Score an existing linear.pt (--checkpoint) on --eval-split.")
@click.option("--standardize/--no-standardize", default=None,
              help="MAMP's probe: standardise features by the training split's statistics (BatchNorm without "
                   "affine) before the heads; folded into the saved heads. Default: what the encoder family "
                   "asks for (see docs/protocols.md, 'Standardised probe').")
def linear_cmd(args: ProtocolArgs, out: Path | None, fusion: str, epochs: int, lr: float, momentum: float,
               batch_size: int, milestones: str | None, weights: str | None, seed: int, plots: bool,
               eval_only: bool, standardize: bool | None) -> None:
    """Linear evaluation: frozen encoders, a linear head per stream on features encoded once."""
    from training.protocols.linear import LinearConfig, evaluate_linear, run_linear

    args.check_outputs({"--out": out if plots or not eval_only else None})
    if eval_only:
        report = evaluate_linear(args.data, args.checkpoint, split=args.eval_split, device=args.device,
                                 streams=args.streams, plots_dir=out if plots else None)
        _emit(report, _acc_table(report, _num_classes(args.data)), args.json_out)
        return
    if out is None:
        raise CrossclrError("--out is required (the folder for linear.pt), unless --eval-only")
    ms = tuple(_int_list(milestones, "--milestones", "epochs")) if milestones else None
    cfg = LinearConfig(epochs=epochs, lr=lr, momentum=momentum, batch_size=batch_size, fusion=fusion,
                       seed=seed, milestones=ms, standardize=standardize)
    with output_lock(out, "--out", mkdir=True):
        report = run_linear(out=out, cfg=cfg, weights=_weights(weights), plots=plots, **args.source())
    footer = f"fusion {report['fusion']} {report['fusion_weights']}; checkpoint: {report['output']}"
    _emit_accuracy(report, footer, args.json_out, _num_classes(args.data))


@click.command("knn")
@_common
@click.option("-k", "ks", default="1,10,20,200", show_default=True, help="Comma list of neighbour counts.")
@click.option("-t", "--temperature", type=float, default=0.1, show_default=True)
@click.option(
    "--plots",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for knn_confusion.png (largest k, fused when several streams).",
)
def knn_cmd(args: ProtocolArgs, ks: str, temperature: float, plots: Path | None) -> None:
    """Weighted kNN (cosine, votes exp(sim/t)) on frozen features, per stream and fused."""
    from training.protocols.io import format_table
    from training.protocols.knn import KnnConfig, run_knn

    args.check_outputs({"--plots": plots})
    cfg = KnnConfig(ks=tuple(_int_list(ks, "-k", "integers")), t=temperature)
    report = run_knn(ks=cfg.ks, t=cfg.t, plots_dir=plots, **args.source())
    kmax = str(max(cfg.ks))
    top5 = shows_topk(5, _num_classes(args.data))
    rows = [
        [key, *(per_k[str(k)]["top1"] for k in cfg.ks), *([per_k[kmax]["top5"]] if top5 else [])]
        for key, per_k in report["results"].items()
    ]
    table = format_table(["stream", *(f"top1@{k}" for k in cfg.ks), *([f"top5@{kmax}"] if top5 else [])],
                         rows)
    _emit(report, table + f"\nt={temperature}; fused = {report['fusion']}", args.json_out)


@click.command("finetune")
@_common
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder for finetune.pt (linear format).",
)
@click.option(
    "--label-fraction",
    type=float,
    default=1.0,
    show_default=True,
    help="Stratified fraction of labelled training samples, in (0, 1] (0.01, 0.1, 1.0).",
)
@_head_training(lr=0.1, fusion_help=None, weights_help="Fusion weights for --fusion separate.")
@click.option("--weight-decay", type=float, default=1e-4, show_default=True)
@click.option(
    "--optimizer",
    type=click.Choice(["sgd", "adamw"]),
    default="sgd",
    show_default=True,
    help="SGD, momentum 0.9 (the ST-GCN protocol), or AdamW (transformers: --lr 1e-3 --weight-decay 0.05).",
)
@click.option(
    "--augment/--no-augment",
    default=False,
    show_default=True,
    help="Temporal crop + shear on the labelled samples.",
)
@click.option("--eval-every", type=int, default=5, show_default=True)
@click.option("--plots", is_flag=True, help="Write finetune_confusion.png (viz extra).")
def finetune_cmd(args: ProtocolArgs, out: Path, label_fraction: float, fusion: str, weights: str | None,
                 epochs: int, lr: float, weight_decay: float, optimizer: str, batch_size: int, augment: bool,
                 eval_every: int, seed: int, plots: bool) -> None:
    """Semi-supervised / full fine-tuning of encoders + heads on a stratified labelled subset."""
    from training.protocols.finetune import FinetuneConfig, run_finetune

    cfg = FinetuneConfig(label_fraction=label_fraction, epochs=epochs, lr=lr, weight_decay=weight_decay,
                         batch_size=batch_size, fusion=fusion, augment=augment, seed=seed,
                         eval_every=eval_every, optimizer=optimizer)
    args.check_outputs({"--out": out})
    with output_lock(out, "--out", mkdir=True):
        report = run_finetune(out=out, cfg=cfg, weights=_weights(weights), plots=plots, **args.source())
    _emit_accuracy(
        report,
        f"{report['num_labelled']} of {report['num_train']} training samples labelled ({label_fraction:g}); "
        f"checkpoint: {report['output']}",
        args.json_out,
        _num_classes(args.data),
    )


@click.command("tsne")
@_data_option
@_checkpoint_option(None)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for tsne_<stream>.png.",
)
@click.option("--streams", default=None, help="Comma list of streams (default: all).")
@click.option("--split", default="val", show_default=True)
@click.option("--max-samples", type=int, default=2000, show_default=True, help="Seeded random subset size.")
@click.option("--classes", "max_classes", type=int, default=None, help="Only the first N classes (e.g. 10).")
@click.option("--perplexity", type=float, default=30.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None)
@_json_option(None)
def tsne_cmd(data: Path, checkpoint: Path, out: Path, streams: str | None, split: str, max_samples: int,
             max_classes: int | None, perplexity: float, seed: int, device: str | None,
             json_out: Path | None) -> None:
    """t-SNE of frozen encoder features coloured by class (one PNG per stream)."""
    from training.protocols.io import format_table
    from training.protocols.tsne import TsneConfig, run_tsne, write_tsne_plots

    check_outputs({"--out": out, "--json": json_out}, {"--data": data, "--checkpoint": checkpoint})
    cfg = TsneConfig(split=split, max_samples=max_samples, max_classes=max_classes, perplexity=perplexity,
                     seed=seed)
    result = run_tsne(data, checkpoint, streams=parse_streams(streams), cfg=cfg, device=device)
    files = write_tsne_plots(result, out, str(checkpoint))
    report = {**result.report, "plots": files}
    n = report["num_samples"]
    rows = [[v, n, result.num_classes, f] for v, f in zip(result.points, files, strict=True)]
    _emit(report, format_table(["stream", "samples", "classes", "png"], rows), json_out)


@click.command("plot-metrics")
@click.argument("metrics", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG path (default: curves.png beside the metrics file).",
)
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--rows", "max_rows", type=click.IntRange(min=1), default=12, show_default=True,
              help="Epoch rows in the table.")
def plot_metrics_cmd(metrics: Path, out: Path | None, json_out: Path | None, max_rows: int) -> None:
    """Training curves (loss, per-view losses, lr) from runs/NAME/metrics.jsonl (or the run folder)."""
    import numpy as np

    from training.plots import plot_metrics, read_metrics, stage_starts, summarize_metrics
    from training.protocols.io import format_table

    path = metrics / "metrics.jsonl" if metrics.is_dir() else metrics
    out = out or path.with_name("curves.png")
    check_outputs({"--out": out, "--json": json_out}, {"METRICS": path})
    rows = read_metrics(path)
    per_epoch = summarize_metrics(rows)  # before the plot: a bad row is refused with nothing written
    png = plot_metrics(rows, out, title=path.parent.name or "training")
    keys = sorted({k for r in per_epoch for k in r if k.startswith("loss") or k == "mining_precision"})
    stages = ["stage"] if any("stage" in r for r in per_epoch) else []
    shown = (
        per_epoch
        if len(per_epoch) <= max_rows
        else [
            per_epoch[i] for i in np.unique(np.linspace(0, len(per_epoch) - 1, max_rows).round().astype(int))
        ]
    )
    table = format_table(
        ["epoch", "step", *stages, *keys, "lr"],
        [
            [r["epoch"], r["step"], *(r.get(k, "") for k in stages), *(r.get(k, "") for k in keys),
             f"{r['lr']:.4g}" if "lr" in r else ""]
            for r in shown
        ],
    )
    starts = [f"{label} at epoch {x:g}" for x, label in stage_starts(rows, "epoch")]
    report = {"metrics": str(path), "plot": str(png), "epochs": per_epoch, "stage_starts": starts}
    _emit(report, table + "".join(f"\n{s}" for s in starts) + f"\nplot: {png}", json_out)


COMMANDS: list = [linear_cmd, knn_cmd, finetune_cmd, tsne_cmd, plot_metrics_cmd]
