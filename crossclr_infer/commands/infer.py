"""Click commands for the torch-free runtime (registered by cli.py): predict, evaluate, merge-reports."""

from __future__ import annotations

import json
import logging
from typing import Any

import click

from ..backends import BACKENDS, PRECISIONS
from ..errors import CrossclrError
from .layout_options import fill_options, input_layout_map
from .stream import run_stream_command, stream_options

log = logging.getLogger(__name__)

_PROVIDERS_HELP = ("onnxruntime execution providers in order, comma-separated (cpu, cuda, tensorrt or full "
                   "names); default: CUDA when available, then CPU")


_PLOTS_HELP = ("Folder for confusion-matrix PNGs, one per stream and the fusion (needs the viz extra): "
               "counts in the cells up to 30 classes, colours normalised per true class, title with the "
               "split and shard.")
_ERRORS_HELP = ("Also print the N worst mistakes: the wrong fused predictions with the highest probability "
                "(sample name, true class, predicted class, probability).")
MAX_SHARDS = 100_000  # evaluate --shard I/N: N beyond this only makes empty shards (and overflows numpy)


def _providers(text: str | None) -> list[str] | None:
    return [p for p in text.split(",") if p.strip()] if text else None


_BACKEND_OPTIONS = [
    click.option("--backend", type=click.Choice(BACKENDS, case_sensitive=False), default="auto",
                 show_default=True,
                 help="Inference runtime: onnxruntime, openvino (extra 'openvino'), or auto: OpenVINO for "
                      "transformer models where it is faster (bf16 once checked, or a plain-attention "
                      "graph), onnxruntime otherwise (docs/backends.md)."),
    click.option("--precision", type=click.Choice(PRECISIONS, case_sensitive=False), default="auto",
                 show_default=True,
                 help="fp32, bf16 (OpenVINO on a CPU with native bf16, after a recorded accuracy check; "
                      "otherwise a warning and fp32), or auto: bf16 where its check passed, else fp32."),
]


def backend_options(f: Any) -> Any:
    """--backend and --precision, in one decorator (predict, predict --stream, evaluate)."""
    for option in reversed(_BACKEND_OPTIONS):
        f = option(f)
    return f


@click.command("predict")
@click.argument("inputs", nargs=-1, required=False, type=click.Path(path_type=str))
@click.option("--model", "model", default=None, type=click.Path(path_type=str),
              help="An .onnx model written by `crossclr export` (ensemble.onnx or a stream model); required "
                   "except with --replay --emit-frames.")
@click.option("--top-k", default=5, show_default=True, type=int, help="Classes to show per input.")
@click.option("--json", "as_json", is_flag=True, help="Print the predictions as JSON.")
@click.option("--axes", default=None, help="Axes of raw .npy arrays, e.g. TVC, MTVC, CTVM (when not "
                                           "detected).")
@click.option("--preprocessed", is_flag=True,
              help=".npy inputs are already preprocessed (C, T, V, M) arrays.")
@click.option("--providers", default=None, help=_PROVIDERS_HELP)
@click.option("--threads", default=0, show_default=True, type=int,
              help="Cores to use (0 = every core this process may run on): onnxruntime intra-op threads.")
@click.option("--from-layout", default=None, metavar="NAME|FILE",
              help="The inputs' (camera's) skeleton layout when it is not the model's: joints are mapped to "
                   "the model's layout by name before its preprocessing (docs/conventions.md, Layout "
                   "mapping); also for --stream and --replay.")
@fill_options
@backend_options
@stream_options
def predict_cmd(inputs: tuple[str, ...], model: str | None, top_k: int, as_json: bool, axes: str | None,
                preprocessed: bool, providers: str | None, threads: int, backend: str, precision: str,
                from_layout: str | None, fill: tuple[str, ...], fill_missing: bool,
                **stream_opts: Any) -> None:
    """Classify skeletons: .npy arrays, raw .skeleton files, or folders of them.

    Raw inputs get the same preprocessing as `crossclr prepare`, with the model's parameters. Prints the fused
    top-k classes with probabilities and each stream's best class. An input that cannot be read (e.g. one bad
    file in a folder) is reported on stderr, one line each, after the others are predicted; the exit status
    is then 1.
    """
    if stream_opts["stream"] or stream_opts["replay"] or stream_opts["emit_frames"]:  # crossclr_infer.stream
        return run_stream_command(inputs, model=model, top_k=top_k, axes=axes, preprocessed=preprocessed,
                                  providers=_providers(providers), threads=threads, backend=backend,
                                  precision=precision, from_layout=from_layout, fill=fill,
                                  fill_missing=fill_missing, **stream_opts)
    if model is None:
        raise click.UsageError("Missing option '--model'.")
    from ..predict import format_predictions, load_inputs, predict
    from ..session import ModelSession

    if top_k < 1:
        raise CrossclrError(f"--top-k must be >= 1, got {top_k}")
    session = ModelSession(model, _providers(providers), intra_op_threads=threads, use="latency",
                           backend=backend, precision=precision)
    errors: list[str] = []
    mapping = input_layout_map(session.info.layout, from_layout, fill, fill_missing, preprocessed)
    samples = load_inputs(inputs, session.info, axes=axes, preprocessed=preprocessed, errors=errors,
                          layout_map=mapping)
    if samples:
        preds = predict(session, samples, top_k=top_k)
        runtime = session.describe_backend()
        log.info("%s ran on %s %s, %s", model, runtime["backend"], runtime["backend_version"],
                 runtime["precision"])
        ran = {k: runtime[k] for k in ("backend", "backend_version", "precision")}
        records = [{**p.to_dict(), "runtime": ran} for p in preds]  # which backend and precision gave each
        click.echo(json.dumps(records, indent=1, allow_nan=False) if as_json else format_predictions(preds))
    _exit_on_bad_inputs(errors)


def _exit_on_bad_inputs(errors: list[str]) -> None:
    """One line on stderr per input that could not be read, then exit status 1 (the good inputs have been
    predicted already)."""
    if not errors:
        return
    for msg in errors[:-1]:
        click.echo(f"error: {msg}", err=True)
    raise CrossclrError(errors[-1])  # printed like the others by the CLI, which then exits with status 1


@click.command("evaluate")
@click.option("--data", required=True, type=click.Path(path_type=str), help="An HDF5 cache (crossclr "
                                                                            "prepare).")
@click.option("--split", default="val", show_default=True, help="Cache split to evaluate.")
@click.option("--model", "models", multiple=True, required=True, type=click.Path(path_type=str),
              help="ensemble.onnx, or one stream model per stream (repeat --model).")
@click.option("--weights", default=None, help="Fusion weights, e.g. joint=0.6,motion=0.4,bone=0.6 "
              "(default: the models' metadata).")
@click.option("--report", "report_path", default=None, type=click.Path(path_type=str),
              help="Write the report JSON here.")
@click.option("--plots", default=None, type=click.Path(path_type=str), help=_PLOTS_HELP)
@click.option("--errors", "errors", default=0, show_default=True, type=int, help=_ERRORS_HELP)
@click.option("--batch-size", default=64, show_default=True, type=int)
@click.option("--shard", default=None, help="Evaluate slice I of N (0-based), e.g. 0/4; merge with "
                                            "merge-reports.")
@click.option("--providers", default=None, help=_PROVIDERS_HELP)
@click.option("--threads", default=0, show_default=True, type=int,
              help="Cores to use (0 = every core this process may run on; when shards run in parallel on "
                   "one machine, give each its share or pin it with taskset): one worker thread per core, "
                   "each running single samples.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@backend_options
def evaluate_cmd(data: str, split: str, models: tuple[str, ...], weights: str | None, report_path: str | None,
                 plots: str | None, errors: int, batch_size: int, shard: str | None, providers: str | None,
                 threads: int, no_progress: bool, backend: str, precision: str) -> None:
    """Accuracy of exported models on a cache split: per stream and fused top-1/top-5, per-class accuracy,
    confusion matrices, per-sample predictions, samples/s. Prints a markdown summary (and, with --errors N,
    the N worst mistakes)."""
    from ..fileio import check_outputs, write_json_atomic
    from ..metrics import parse_weights
    from ..report import Shard, evaluate, load_models, save_plots

    if batch_size < 1:
        raise CrossclrError(f"--batch-size must be >= 1, got {batch_size}")
    _check_errors(errors)
    check_outputs({"--report": report_path, "--plots": plots}, {"--data": data, "--model": list(models)})
    shard_obj = Shard.parse(shard) if shard else None
    if shard_obj is not None and shard_obj.count > MAX_SHARDS:
        raise CrossclrError(f"--shard {shard}: more than {MAX_SHARDS} shards; expected I/N with N <= "
                            f"{MAX_SHARDS} (shards beyond the sample count are empty)")
    w = parse_weights(weights) if weights else None
    if not providers:  # bf16 candidates are checked on this cache before their first use (precision.py)
        from ..precision import ensure_checked
        from ..precision_records import describe

        for m in models:
            rec = ensure_checked(m, data, split, backend=backend, precision=precision, threads=threads)
            if rec is not None:
                click.echo(f"{m}: {describe(rec)}", err=True)
    model_set = load_models(models, _providers(providers), intra_op_threads=threads, use="throughput",
                            backend=backend, precision=precision)
    report = evaluate(data, model_set, split=split, weights=w, batch_size=batch_size, shard=shard_obj,
                      progress=not no_progress)
    if report_path:
        write_json_atomic(report_path, report)
    if plots:
        save_plots(report, plots)
    _echo_summary(report, errors)


def _check_errors(errors: int) -> None:
    if errors < 0:
        raise CrossclrError(f"--errors must be >= 0 (the number of worst mistakes to list), got {errors}")


def _echo_summary(report: dict[str, Any], errors: int) -> None:
    """The markdown summary, then the ``errors`` worst mistakes when asked for."""
    from ..report import summary_markdown
    from ..report_samples import errors_markdown

    click.echo(summary_markdown(report), nl=False)
    if errors:
        click.echo(errors_markdown(report, errors), nl=False)


@click.command("merge-reports")
@click.argument("reports", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="The merged report JSON.")
@click.option("--plots", default=None, type=click.Path(path_type=str), help=_PLOTS_HELP)
@click.option("--errors", "errors", default=0, show_default=True, type=int, help=_ERRORS_HELP)
def merge_reports_cmd(reports: tuple[str, ...], out: str, plots: str | None, errors: int) -> None:
    """Combine the reports of `evaluate --shard 0/N … N-1/N` into the report of the whole split (per-sample
    predictions included, in split order)."""
    from ..fileio import check_outputs, write_json_atomic
    from ..report import merge_reports, read_report, save_plots

    _check_errors(errors)
    check_outputs({"--out": out, "--plots": plots}, {"REPORTS": list(reports)})
    merged = merge_reports([read_report(p) for p in reports], list(reports))
    write_json_atomic(out, merged)
    if plots:
        save_plots(merged, plots)
    _echo_summary(merged, errors)


COMMANDS: list = [predict_cmd, evaluate_cmd, merge_reports_cmd]
PREPARE_COMMANDS: list = []
