"""The ``crossclr`` command line: a Click group whose commands live beside the code they drive.

Each package keeps its commands in a ``commands`` module (``COMMANDS`` and, for the ``prepare`` group,
``PREPARE_COMMANDS``); torch is imported only inside the commands that need it, so ``crossclr predict``
and ``crossclr info`` start without it.
"""

from __future__ import annotations

import logging
import sys

import click

from crossclr_infer import __version__
from crossclr_infer.commands import cache as cache_commands
from crossclr_infer.commands import infer as infer_commands
from crossclr_infer.commands import ntu as ntu_commands
from export import commands as export_commands
from training import commands as train_commands
from training import eval_commands

_MODULES = (ntu_commands, cache_commands, infer_commands, train_commands, eval_commands, export_commands)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crossclr")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def crossclr(verbose: int) -> None:
    """CrosSCLR skeleton action representation learning: prepare, train, evaluate, export, predict."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@crossclr.group()
def prepare() -> None:
    """Turn skeleton data (raw NTU, arrays, official .npy files) into an HDF5 cache."""


for _module in _MODULES:
    for _cmd in getattr(_module, "COMMANDS", []):
        crossclr.add_command(_cmd)
    for _cmd in getattr(_module, "PREPARE_COMMANDS", []):
        prepare.add_command(_cmd)


_DEMO_STEPS = ("synth", "train", "linear", "export", "evaluate", "predict")


def _run_step(args: list[str]) -> None:
    """Run one crossclr command in this process, exactly as a user would type it."""
    click.echo(click.style("$ crossclr " + " ".join(args), bold=True), err=True)
    crossclr.main(args=args, prog_name="crossclr", standalone_mode=False)


@crossclr.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="crossclr-demo",
              show_default=True, help="Folder for everything the demo writes.")
@click.option("--classes", type=click.IntRange(2, 12), default=8, show_default=True)
@click.option("--per-class", type=click.IntRange(10), default=60, show_default=True)
@click.option("--epochs", type=click.IntRange(2), default=30, show_default=True,
              help="Pretraining epochs (the cross-view stage starts halfway).")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out_dir: str, classes: int, per_class: int, epochs: int, seed: int) -> None:
    """End to end on synthetic data: synth → 3-stream CrosSCLR pretraining (tiny preset, with the
    cross-view stage) → linear evaluation → ONNX export → evaluate → predict one raw sample.

    A few minutes on 2 CPU cores."""
    import json
    import time
    from pathlib import Path

    import numpy as np

    from crossclr_infer.synth import synth_class_names, synthesize_raw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache, run, models = out / "synth.h5", out / "run", out / "models"
    times: dict[str, float] = {}

    def step(name: str, args: list[str]) -> None:
        t0 = time.perf_counter()
        _run_step(args)
        times[name] = time.perf_counter() - t0

    step("synth", ["synth", "--out", str(cache), "--classes", str(classes), "--per-class", str(per_class),
                   "--seed", str(seed)])
    step("train", ["train", "--data", str(cache), "--config", "tiny", "--out", str(run),
                   "--streams", "joint,motion,bone", "--epochs", str(epochs),
                   "--cross-epoch", str(epochs // 2), "--seed", str(seed), "--device", "cpu"])
    step("linear", ["linear", "--data", str(cache), "--checkpoint", str(run / "pretrain.pt"),
                    "--out", str(run / "linear"), "--fusion", "separate", "--epochs", "100",
                    "--device", "cpu", "--json", str(out / "linear.json")])
    step("export", ["export", "--checkpoint", str(run / "linear" / "linear.pt"), "--out", str(models),
                    "--data", str(cache), "--overwrite"])
    step("evaluate", ["evaluate", "--data", str(cache), "--model", str(models / "ensemble.onnx"),
                      "--report", str(out / "report.json"), "--no-progress"])
    # one raw, never-seen sequence in camera coordinates, (M, T, V, C) as a sensor would give it
    seqs, meta = synthesize_raw(classes, 1, seed=seed + 1000)
    raw = np.ascontiguousarray(seqs[0].transpose(3, 1, 2, 0))  # (C, T, V, M) -> (M, T, V, C)
    sample = out / "sample_raw.npy"
    np.save(sample, raw)
    step("predict", ["predict", str(sample), "--model", str(models / "ensemble.onnx"), "--top-k", "3"])

    report = json.loads((out / "report.json").read_text())
    linear = json.loads((out / "linear.json").read_text())
    rows = [
        ("synth", str(cache), f"{classes} classes × {per_class} samples"),
        ("train", str(run / "pretrain.pt"),
         f"{epochs} epochs, joint+motion+bone, cross-view from epoch {epochs // 2}"),
        ("linear", str(run / "linear" / "linear.pt"), _demo_linear_score(linear)),
        ("export", str(models), ", ".join(sorted(p.name for p in models.glob("*.onnx")))),
        ("evaluate", str(out / "report.json"), _demo_eval_score(report)),
        ("predict", str(sample), f"true class: {synth_class_names(classes)[int(meta.label[0])]}"),
    ]
    click.echo("\n| step | output | result | seconds |\n|---|---|---|---|")
    for name, path, result in rows:
        click.echo(f"| {name} | {path} | {result} | {times[name]:.1f} |")


def _demo_linear_score(linear: dict) -> str:
    top1 = linear["last"]["fused"]["top1"]
    return f"fused top-1 {top1:.1f}% (last epoch, val)"


def _demo_eval_score(report: dict) -> str:
    top1, sps = report["results"]["fused"]["top1"], report["run"]["samples_per_s"]
    return f"ONNX fused top-1 {top1:.1f}% (val), {sps:.0f} samples/s"

def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit status 1, never a traceback."""
    try:
        crossclr.main(args=argv, prog_name="crossclr", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ValueError, OSError, KeyError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        click.echo(f"error: {msg}", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
