"""Click commands for pretraining (registered by cli.py). Torch is imported inside the commands."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import check_outputs, output_lock
from crossclr_infer.hardware import check_worker_count
from crossclr_infer.views import parse_streams

log = logging.getLogger(__name__)

# threads or worker processes per core a torch command may ask for: more only adds memory and switching
def _is_rank0() -> bool:
    """Not a secondary process of a torchrun launch (those share rank 0's output folder)."""
    try:
        return int(os.environ.get("RANK", "0")) == 0
    except ValueError:
        return True


@click.command("train")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="HDF5 cache written by `crossclr prepare` / `crossclr synth`, or a comma list a.h5,b.h5 "
                   "of caches of one layout, pooled (the checkpoint records each).")
@click.option("--config", "config", default=None,
              help="TOML config file or preset name (crossclr-ntu60-xsub, ..., tiny). Default: official "
                   "values, or the checkpoint's config with --resume.")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Run folder: pretrain.pt, metrics.jsonl, config.json.")
@click.option("--streams", default=None, help="Comma-separated views, e.g. joint,motion,bone.")
@click.option("--epochs", type=int, default=None, help="Total epochs.")
@click.option("--cross-epoch", type=int, default=None, help="0-based epoch where cross-view mining starts.")
@click.option("--batch-size", type=int, default=None, help="Samples per step per process.")
@click.option("--lr", type=float, default=None, help="Base learning rate.")
@click.option("--device", default=None, help="auto (default), cpu, cuda or cuda:N.")
@click.option("--num-workers", type=int, default=None, help="DataLoader worker processes.")
@click.option("--save-every", type=int, default=None, help="Write the checkpoint every N epochs.")
@click.option("--seed", type=int, default=None, help="Seed of init, sampling and augmentation.")
@click.option("--bf16/--no-bf16", default=None,
              help="bfloat16 autocast for the encoders (loss and queue fp32). Default (auto): on for CUDA "
                   "and CPUs with native bf16 (AVX512-BF16/AMX), off elsewhere; --bf16 on a CPU without it "
                   "is refused (emulated bf16 runs about 10x slower).")
@click.option("--init-from", "init_from", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="pretrain.pt whose encoders start this run (e.g. MAMP transformers before a cross-view "
                   "stage).")
@click.option("--deterministic/--no-deterministic", default=None, help="Deterministic torch algorithms.")
@click.option("--resume", is_flag=True,
              help="Continue from OUT/pretrain.pt (same weights as an unbroken run) on the same --data; "
                   "refused when OUT has no checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(data: Path, config: str | None, out: Path, streams: str | None, epochs: int | None,
                  cross_epoch: int | None, batch_size: int | None, lr: float | None, device: str | None,
                  num_workers: int | None, save_every: int | None, seed: int | None, bf16: bool | None,
                  deterministic: bool | None, init_from: Path | None, resume: bool,
                  no_progress: bool) -> None:
    """Pretrain SkeletonCLR / CrosSCLR / MAMP encoders on a cache (single process, or torchrun for DDP)."""
    from training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from training.config import load_config
    from training.data import data_sources
    from training.trainer import train

    config_file = Path(config) if config is not None and Path(config).suffix == ".toml" else None
    sources = data_sources(data)  # --data a.h5,b.h5: pooled
    check_outputs({"--out": out}, {"--data": sources, "--init-from": init_from, "--config": config_file})
    check_worker_count(num_workers, "--num-workers")
    overrides = {"streams": parse_streams(streams), "epochs": epochs, "cross_epoch": cross_epoch,
                 "batch_size": batch_size, "lr": lr, "device": device, "num_workers": num_workers,
                 "save_every": save_every, "seed": seed, "bf16": bf16, "deterministic": deterministic,
                 "init_from": None if init_from is None else str(init_from)}
    base = None
    if resume and config is None and (out / CHECKPOINT_NAME).is_file():
        base = load_checkpoint(out / CHECKPOINT_NAME)["config"]
    try:
        cfg = load_config(config, overrides, base=base)
    except RecursionError:
        raise CrossclrError(f"--config {config}: nested too deeply; expected a flat TOML config (see the "
                            "presets in training/presets)") from None
    if num_workers is None:
        check_worker_count(cfg.num_workers, f"{config or 'the config'}: num_workers =")
    if _is_rank0():
        with output_lock(out, "--out", mkdir=True):
            result = train(cfg, data, out, resume=resume, progress=not no_progress)
    else:
        result = train(cfg, data, out, resume=resume, progress=not no_progress)
    line = outcome_line(result, cfg.epochs, out / CHECKPOINT_NAME, rank0=_is_rank0())
    if line is not None:
        click.echo(line)


def outcome_line(result: Any, epochs: int, checkpoint: Path, *, rank0: bool) -> str | None:
    """What ``train`` prints at the end, from rank 0 only (under torchrun every rank runs this command, and
    the others write nothing): the checkpoint written, or, for a resumed run that trained no epoch because it
    already has ``epochs``, that nothing was done. A secondary rank of a fresh run trained epochs but wrote
    nothing: that is not "nothing to train" (it used to say so beside rank 0's "wrote")."""
    if not rank0:
        return None
    if result.checkpoint is not None:
        return f"wrote {result.checkpoint} ({result.epochs_done} epochs)"
    if not result.epoch_records and result.epochs_done >= epochs:
        return (f"{checkpoint}: the run already has {result.epochs_done} epochs (epochs = {epochs}); nothing "
                "to train, nothing written (pass a larger --epochs to continue it)")
    return None


@click.command("import-official")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the converted checkpoint (crossclr-pretrain-v1).")
@click.option("--layout", default="ntu-rgb+d", show_default=True,
              help="Skeleton layout the model was trained on.")
@click.option("--frames", type=int, default=50, show_default=True,
              help="Frames per sample of its training data.")
@click.option("--num-person", type=int, default=2, show_default=True, help="Bodies per sample.")
def import_official_command(file: Path, out: Path, layout: str, frames: int, num_person: int) -> None:
    """Convert an official CrosSCLR / SkeletonCLR or MAMP checkpoint into this project's pretrain format
    (MAMP: the transformer encoder; its decoder is dropped with a note)."""
    from training.importers import convert_official_file

    check_outputs({"--out": out}, {"FILE": file})
    written = convert_official_file(file, out, layout=layout, frames=frames, num_person=num_person)
    click.echo(f"wrote {written}")


COMMANDS: list = [train_command, import_official_command]
