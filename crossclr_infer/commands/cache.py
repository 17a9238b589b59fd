"""Click commands of the cache layer: ``prepare arrays``, ``prepare official``, ``info``, ``synth``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cache import open_cache
from ..errors import printable
from ..fileio import check_outputs, output_lock
from ..layouts import BUILTIN_LAYOUTS, Layout
from ..preprocess import MODES, centre_of
from .layout_options import fill_options

_PREPROCESS_CHOICES = [*MODES, "as-is"]
_out_option = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
                           help="Cache file to write (appears only when complete).")


def _summary(out: Path, counts: dict[str, int]) -> str:
    return f"wrote {out}: " + ", ".join(f"{s} {n}" for s, n in counts.items())


@click.command("arrays")
@click.argument("npz", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--layout", required=True,
              help=f"Built-in layout name ({', '.join(sorted(BUILTIN_LAYOUTS))}) or a layout .toml file.")
@_out_option
@click.option("--preprocess", type=click.Choice(_PREPROCESS_CHOICES), default=None,
              help="Preprocessing of each sample (default: as-is for fixed-size data, official for "
                   "sequences; pose2d for 2-D keypoints with scores).")
@click.option("--frames", type=click.IntRange(min=1), default=None,
              help="Frames per sample after preprocessing (default: 120 for mamp, 300 for none, else 50).")
@click.option("--benchmark", default="custom", show_default=True, help="Benchmark name stored in the cache.")
@click.option("--bodies", type=click.IntRange(min=1), default=None,
              help="Bodies M per sample in the cache (default: the data's). More than the data has adds zero "
                   "bodies (e.g. --bodies 2 for a one-body data set and a two-body model); fewer keeps the "
                   "first ones.")
@click.option("--to-layout", default=None, metavar="NAME|FILE",
              help="Map the joints to this layout by name (built-in name or .toml file; docs/conventions.md, "
                   "Layout mapping) before the preprocessing; the cache holds this layout.")
@fill_options
def prepare_arrays(npz: Path, layout: str, out: Path, preprocess: str | None, frames: int | None,
                   benchmark: str, bodies: int | None, to_layout: str | None, fill: tuple[str, ...],
                   fill_missing: bool) -> None:
    """Import generic skeleton arrays from an .npz (fixed-size or variable-length; keys: data, label, name,
    split, class_names; see crossclr_infer.arrays)."""
    frames = frames or (MODES[preprocess].default_frames if preprocess in MODES else 50)
    from ..arrays import import_arrays
    from ..layout_map import parse_fill

    layout_file = Path(layout) if layout not in BUILTIN_LAYOUTS else None
    to_file = Path(to_layout) if to_layout is not None and to_layout not in BUILTIN_LAYOUTS else None
    check_outputs({"--out": out}, {"NPZ": npz, "--layout": layout_file, "--to-layout": to_file})
    with output_lock(out):
        counts = import_arrays(npz, out, layout=layout, preprocess=preprocess, frames=frames,
                               benchmark=benchmark, bodies=bodies, to_layout=to_layout,
                               fill=parse_fill(fill), fill_missing=fill_missing)
    click.echo(_summary(out, counts))


@click.command("official")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@_out_option
@click.option("--layout", default="ntu-rgb+d", show_default=True, help="Layout of the arrays.")
@click.option("--benchmark", default=None,
              help="Benchmark name stored in the cache (default: the folder name).")
def prepare_official(folder: Path, out: Path, layout: str, benchmark: str | None) -> None:
    """Import the official code's processed files ({train,val}_position.npy or _data.npy + _label.pkl)."""
    from ..official import prepare_official

    check_outputs({"--out": out}, {"FOLDER": folder})
    with output_lock(out):
        counts = prepare_official(folder, out, layout=layout, benchmark=benchmark)
    click.echo(_summary(out, counts))


def _layout_text(lay: Layout) -> str:
    """``coco-17 (17 joints, tree root nose, shoulders ..., hips ...)``: the layout's fields, named."""
    def pair(p: tuple[int, int] | None) -> str:
        return "none" if p is None else ", ".join(lay.joint_names[j] for j in p)

    scored = ", channels x, y, score" if lay.scored else ""
    return (f"{lay.name} ({lay.num_joints} joints, tree root {lay.joint_names[lay.center]}, "
            f"shoulders {pair(lay.shoulders)}, hips {pair(lay.hips)}{scored})")


@click.command("info")
@click.argument("cache", type=click.Path(dir_okay=False, path_type=Path), required=False)
@click.option("--system", is_flag=True,
              help="Describe this machine instead: CPU instruction sets that set the defaults (AVX2, "
                   "AVX-512, "
                   "AVX512-BF16, AMX, VNNI), cores, library versions and onnxruntime providers.")
def info(cache: Path | None, system: bool) -> None:
    """Describe a cache: layout, classes, splits with counts, frames and preprocessing (or --system).
    Names from the file are printable text (checked when the cache is opened)."""
    if system:
        from ..backends import system_lines

        for line in system_lines():
            click.echo(line)
        if cache is None:
            return
    if cache is None:
        raise click.UsageError("give a CACHE file, or --system")
    with open_cache(cache) as c:
        lay = c.layout
        splits = {s: c.split(s) for s in c.splits}
        # every name below passed errors.check_name when the cache was opened; the path is the user's
        click.echo(f"file:        {printable(c.path)}  (crossclr-cache v{c.format_version}"
                   + (f", written by crossclr {c.crossclr_version})" if c.crossclr_version else ")"))
        click.echo(f"layout:      {_layout_text(lay)}")
        click.echo(f"centred on:  {centre_of(lay, str(c.preprocess.get('mode', 'as-is')))}")
        click.echo(f"benchmark:   {c.benchmark}")
        click.echo(f"samples:     (C, T, V, M) = {c.sample_shape} float32; frames {c.frames}, "
                   f"bodies {c.num_person}")
        click.echo(f"preprocess:  {json.dumps(c.preprocess, sort_keys=True)}")
        click.echo("splits:      " + ", ".join(f"{s} {len(sp)}" for s, sp in splits.items()))
        counts = {s: sp.class_counts(c.num_class) for s, sp in splits.items()}
        click.echo(f"classes:     {c.num_class}")
        width = max(len(s) for s in c.splits)
        for k, name in enumerate(c.class_names):
            per = "  ".join(f"{s:>{width}} {int(counts[s][k]):6d}" for s in c.splits)
            click.echo(f"  {k:4d}  {per}  {name}")


@click.command("synth")
@_out_option
@click.option("--classes", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--per-class", type=click.IntRange(min=2, max=10_000), default=60, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--frames", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--layout", type=click.Choice(sorted(BUILTIN_LAYOUTS)), default="ntu-rgb+d", show_default=True,
              help="Skeleton and units of the data (docs/conventions.md): ntu-rgb+d, kinect-v1 (metres, "
                   "y up), azure-kinect-32 (millimetres, y down), mediapipe-pose-33 (world landmarks, "
                   "metres), coco-17, openpose-body25 (x, y pixels and a score; pose2d preprocessing).")
def synth(out: Path, classes: int, per_class: int, seed: int, frames: int, layout: str) -> None:
    """Generate a synthetic cache of procedurally animated actions (train/val by NTU's cross-subject rule;
    benchmark name 'synthetic')."""
    from ..synth import generate_synthetic

    with output_lock(out):
        generate_synthetic(out, classes=classes, per_class=per_class, seed=seed, frames=frames, layout=layout)
    with open_cache(out) as c:
        click.echo(_summary(out, {s: len(c.split(s)) for s in c.splits}))


COMMANDS: list = [info, synth]
PREPARE_COMMANDS: list = [prepare_arrays, prepare_official]
