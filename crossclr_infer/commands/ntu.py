"""``crossclr prepare ntu``: raw NTU RGB+D skeletons -> an HDF5 cache of one benchmark."""

from __future__ import annotations

from pathlib import Path

import click

from crossclr_infer.fileio import check_outputs, output_lock
from crossclr_infer.hardware import check_worker_count
from crossclr_infer.ntu import BENCHMARKS
from crossclr_infer.prepare_ntu import MIN_VALID_FRAMES, prepare_ntu
from crossclr_infer.preprocess import MODES


@click.command("ntu")
@click.argument("raw_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--benchmark", required=True, type=click.Choice(sorted(BENCHMARKS)),
              help="Evaluation protocol: which samples, and which of them are training samples.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The cache to write (e.g. ntu60-xsub.h5); appears only when complete.")
@click.option("--preprocess", "mode", default="official", show_default=True,
              type=click.Choice(list(MODES)),
              help="official: as the published CrosSCLR models; none: raw xyz padded to --frames; energy: "
                   "most active bodies, noise bodies dropped; mamp: MAMP's data (origin joint of the first "
                   "frame, centre crop 95 %, no rotation).")
@click.option("--frames", default=None, type=click.IntRange(min=1),
              help="Frames per sample (default: 50 for official/energy, 120 for mamp, 300 for none; "
                   "--preprocess none --frames 300 gives the official ntu_gendata layout).")
@click.option("--ignore-list", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File of sample names to skip, one per line (e.g. the data set's missing-skeleton list).")
@click.option("--min-frames", default=MIN_VALID_FRAMES, show_default=True, type=click.IntRange(min=1),
              help="Samples with fewer frames holding a body are skipped as missing skeletons.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Parse files in this many processes (the main process writes).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def prepare_ntu_command(raw_dir: Path, benchmark: str, out: Path, mode: str, frames: int | None,
                        ignore_list: Path | None, min_frames: int, workers: int, no_progress: bool) -> None:
    """Read the .skeleton files under RAW_DIR and write the train/val cache of one NTU benchmark."""
    frames = frames or MODES[mode].default_frames
    check_worker_count(workers, "--workers", low=1)  # more parse processes than cores only add memory
    check_outputs({"--out": out}, {"RAW_DIR": raw_dir, "--ignore-list": ignore_list})
    with output_lock(out):
        summary = prepare_ntu(raw_dir, benchmark, out, preprocess=mode, frames=frames,
                              ignore_list=ignore_list, workers=workers, min_frames=min_frames,
                              progress=not no_progress)
    for line in summary.lines():
        click.echo(line)


COMMANDS: list[click.Command] = []
PREPARE_COMMANDS: list[click.Command] = [prepare_ntu_command]
