"""Click glue of ``crossclr predict --stream`` / ``--replay`` (the stream itself: ``crossclr_infer.stream``).

``stream_options`` adds the options to ``predict``; ``run_stream_command`` is its stream branch.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import click

from ..errors import CrossclrError

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_OPTIONS = [
    click.option("--stream", is_flag=True,
                 help="Classify a live stream: JSON-lines frames from INPUT (a file or FIFO) or stdin (no "
                      "INPUT or -), one JSON prediction per hop on stdout (format: crossclr_infer.stream)."),
    click.option("--replay", default=None, type=click.Path(dir_okay=False, path_type=str),
                 help="Replay a .skeleton/.npy file as a stream at --fps and classify it like --stream (with "
                      "--emit-frames: print the frames as JSON lines instead)."),
    click.option("--fps", default=30.0, show_default=True, type=float,
                 help="--replay: frames per second (timestamps and pace)."),
    click.option("--no-wait", is_flag=True, help="--replay: do not wait between frames (timestamps still at "
                                                 "--fps)."),
    click.option("--emit-frames", is_flag=True,
                 help="--replay: print the frames as JSON lines, no model run (--model or --layout gives the "
                      "skeleton layout)."),
    click.option("--layout", default=None,
                 help="--emit-frames without --model: the file's skeleton layout, a built-in name or a .toml "
                      "file [default: ntu-rgb+d]."),
    click.option("--window", default=None, type=int,
                 help="Stream window in frames (default: the model's frames)."),
    click.option("--span", default=None, type=float,
                 help="Stream window in seconds instead of frames (resampled to the model's frames)."),
    click.option("--hop", default=None, type=int,
                 help="Frames between stream predictions (default: a fifth of the window)."),
    click.option("--max-gap", default=1.0, show_default=True, type=float,
                 help="Seconds without frames after which the stream window restarts."),
    click.option("--queue", "queue_size", default=2, show_default=True, type=int,
                 help="Stream windows waiting for the model (--live: when full the oldest is dropped, "
                      "counted)."),
    click.option("--live/--lossless", "--drop-late", "live", default=None,
                 help="The source is live (a camera or pose tracker): never wait for it, drop the oldest "
                      "waiting window when the model is behind (default for a paced --replay) / predict "
                      "every window, the reader waiting for the model (default for --stream INPUT or stdin, "
                      "and --replay --no-wait)."),
    click.option("--min-fill", default=0.5, show_default=True, type=float,
                 help="Predict a last, partial window only if at least this fraction of the window is filled "
                      "(0 = always)."),
    click.option("--smooth", default=None, type=float, metavar="ALPHA",
                 help="Smooth the probabilities over windows (EMA, weight ALPHA of the newest window, "
                      "0 < ALPHA <= 1) and hold a stable label: adds smoothed, label and warming_up to each "
                      "line."),
    click.option("--smooth-margin", default=0.1, show_default=True, type=float,
                 help="--smooth: the smoothed probability by which a new class must lead the held label..."),
    click.option("--smooth-hold", default=2, show_default=True, type=int,
                 help="--smooth: ...in this many consecutive windows before the label changes."),
]


def stream_options(f: F) -> F:
    """The stream options of ``predict``, in one decorator."""
    for option in reversed(_OPTIONS):
        f = option(f)
    return f


def run_stream_command(inputs: tuple[str, ...], *, model: str | None, top_k: int, axes: str | None,
                       preprocessed: bool, providers: list[str] | None, threads: int, stream: bool,
                       replay: str | None, fps: float, no_wait: bool, emit_frames: bool, layout: str | None,
                       window: int | None, span: float | None, hop: int | None, max_gap: float,
                       queue_size: int, live: bool | None, min_fill: float, smooth: float | None,
                       smooth_margin: float, smooth_hold: int, backend: str = "auto",
                       precision: str = "auto", from_layout: str | None = None, fill: tuple[str, ...] = (),
                       fill_missing: bool = False) -> None:
    """``predict --stream`` / ``--replay``: JSON lines out (predictions, or frames with ``--emit-frames``).

    Lossless unless the source is live: ``--live`` (alias ``--drop-late``), or a paced ``--replay``."""
    from ..predict import check_top_k
    from ..stream import FrameSpec, StreamPredictor, read_frames, replay_frames

    _check_stream_options(inputs, stream=stream, replay=replay, preprocessed=preprocessed,
                          emit_frames=emit_frames, model=model, layout=layout)
    if emit_frames and model is None and from_layout is not None:
        raise CrossclrError("--from-layout maps frames to a model's layout; --emit-frames without --model "
                            "takes the file's layout as --layout")
    if emit_frames and model is None:  # no model runs: the layout alone says what a frame holds
        spec = FrameSpec.for_layout(layout or "ntu-rgb+d")
        _echo_json(replay_frames(str(replay), spec, fps=fps, axes=axes, wait=not no_wait))
        return
    assert model is not None  # _check_stream_options
    check_top_k(top_k)
    predictor = _predictor(model, providers, threads, backend, precision, from_layout, fill, fill_missing)
    if emit_frames:  # the model's layout (or --from-layout); it does not run
        spec = FrameSpec.for_predictor(predictor)
        _echo_json(replay_frames(str(replay), spec, fps=fps, axes=axes, wait=not no_wait))
        return
    sp = StreamPredictor(predictor, window=window, span=span, hop=hop, top_k=top_k, max_gap=max_gap,
                         min_fill=min_fill, smooth=smooth, smooth_margin=smooth_margin,
                         smooth_hold=smooth_hold)
    if replay:
        frames: Iterable[Any] = replay_frames(replay, sp.spec, fps=fps, axes=axes, wait=not no_wait)
        paced = not no_wait  # a paced replay stands for a camera
    else:
        from ..stream import open_lines

        source = inputs[0] if inputs else "-"
        lines, _ = open_lines(source)
        # the stream's own counters: skipped lines are in its end-of-stream summary
        frames = read_frames(lines, sp.spec, "stdin" if source == "-" else source, sp.stats)
        paced = False
    preds = sp.run(frames, queue_size=queue_size, live=paced if live is None else live)
    _echo_json(preds, lambda p: p.to_dict())


def _predictor(model: str, providers: list[str] | None, threads: int, backend: str, precision: str,
               from_layout: str | None, fill: tuple[str, ...], fill_missing: bool) -> Any:
    """The stream's Predictor; with ``--from-layout`` it maps the frames' joints to the model's layout."""
    from ..predictor import Predictor
    from .layout_options import input_layout_map

    predictor = Predictor(model, providers, threads, backend=backend, precision=precision)
    predictor.layout_map = input_layout_map(predictor.info.layout, from_layout, fill, fill_missing, False)
    return predictor


def _check_stream_options(inputs: tuple[str, ...], *, stream: bool, replay: str | None, preprocessed: bool,
                          emit_frames: bool, model: str | None, layout: str | None) -> None:
    """The combinations of stream options that cannot work, each a one-line CrossclrError."""
    if stream and replay:
        raise CrossclrError("--stream reads frames from INPUT or stdin, --replay from a file: give one of "
                            "them")
    if preprocessed:
        raise CrossclrError("--preprocessed does not apply to --stream/--replay: stream frames are raw "
                            "coordinates")
    if emit_frames and not replay:
        raise CrossclrError("--emit-frames needs --replay FILE")
    if replay and inputs:
        raise CrossclrError(f"--replay takes its file as its value; unexpected INPUT {inputs[0]!r}")
    if stream and len(inputs) > 1:
        raise CrossclrError(f"--stream reads one source (a file, a FIFO or - for stdin), got {len(inputs)}")
    if layout is not None and (not emit_frames or model is not None):
        raise CrossclrError("--layout applies to --replay --emit-frames without --model (a model carries its "
                            "own layout)")
    if model is None and not emit_frames:
        raise CrossclrError("--model is required to classify (only --replay --emit-frames runs without one); "
                            "give an .onnx model written by `crossclr export`")


def _echo_json(items: Iterator[Any], to_json: Callable[[Any], Any] = lambda x: x) -> None:
    """Print each item as one JSON line as it comes (flushed); a reader that goes away (``| head``) ends the
    output quietly."""
    try:
        for item in items:
            click.echo(json.dumps(to_json(item)))
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes stdout at exit
        log.info("stdout closed by its reader; stream stopped")
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()
