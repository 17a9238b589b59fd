"""Click commands for export (registered by cli.py). Torch is imported inside the commands."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from crossclr_infer.fileio import check_outputs, output_lock
from crossclr_infer.views import parse_streams

if TYPE_CHECKING:
    from .onnx_export import ExportResult


@click.command("export")
@click.option("--checkpoint", required=True, type=click.Path(path_type=str),
              help="A linear checkpoint, e.g. runs/NAME/linear/linear.pt (crossclr linear).")
@click.option("--out", "out", required=True, type=click.Path(path_type=str), help="Output folder, e.g. "
                                                                                  "models/NAME.")
@click.option("--streams", default=None, help="Comma-separated streams to export (default: all in the "
                                              "checkpoint).")
@click.option("--ensemble/--no-ensemble", default=True, show_default=True,
              help="Also write ensemble.onnx (all streams fused in one graph).")
@click.option("--data", default=None, type=click.Path(path_type=str),
              help="A cache whose samples are the real inputs of the ONNX-vs-torch parity check.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write static QDQ int8 models (NAME.int8.onnx) and report the accuracy change.")
@click.option("--int8-target", type=click.Choice(["auto", "vnni", "portable"]), default="auto",
              show_default=True,
              help="CPUs the int8 models must be accurate on: vnni (full-range weights), portable (7-bit "
                   "weights, every x86 CPU), auto (vnni when this CPU has VNNI, else portable).")
@click.option("--calibration", default=None, type=click.Path(path_type=str),
              help="Cache to calibrate int8 on and measure its accuracy change (default: --data).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True,
              help="fp16: also write float16 models for GPU serving (NAME.fp16.onnx; float32 inputs and "
                   "outputs), checked against torch float32 within --fp16-tolerance.")
@click.option("--fp16-tolerance", default=2e-2, show_default=True, type=float,
              help="Largest allowed |onnxruntime fp16 − torch fp32| on logits, × max(1, |logits|).")
@click.option("--graph-form", type=click.Choice(["matmul", "einsum"]), default="matmul", show_default=True,
              help="matmul: BatchNorm folded and the graph product as MatMul (fast); einsum: the training "
                   "modules as they are.")
@click.option("--attention", type=click.Choice(["mha", "contrib-attention", "onnx-attention", "plain"]),
              default="mha", show_default=True,
              help="Transformers: how each block's attention is written (mha: onnxruntime's fused "
                   "MultiHeadAttention; onnx-attention needs --opset 23; plain: MatMul/Softmax).")
@click.option("--opset", default=17, show_default=True, type=int,
              help="ONNX opset, 13 to 23 (--dynamo writes at least 18).")
@click.option("--dynamo", is_flag=True, help="Use torch's dynamo exporter (default: the TorchScript "
                                             "exporter).")
@click.option("--tolerance", default=1e-4, show_default=True, type=float,
              help="Largest allowed |onnxruntime − torch| on logits, relative to their scale: the check is "
                   "|Δ| ≤ tolerance × max(1, max |logits|) (absolute only while every logit is within ±1).")
@click.option("--overwrite", is_flag=True, help="Replace an existing non-empty output folder.")
def export_cmd(checkpoint: str, out: str, streams: str | None, ensemble: bool, data: str | None,
               quantize: str | None, int8_target: str, calibration: str | None, precision: str,
               fp16_tolerance: float, graph_form: str, attention: str, opset: int, dynamo: bool,
               tolerance: float, overwrite: bool) -> None:
    """Export encoders + linear heads to ONNX: one model per stream and a fused ensemble.

    Every model is checked by onnx.checker and compared with torch on random (and, with --data, real) inputs;
    a failed comparison writes nothing. The float32 models are always written (CPU serving, the int8
    source); --precision fp16 adds NAME.fp16.onnx for GPUs.
    """
    from .config import ExportConfig
    from .onnx_export import export_checkpoint
    from .quantize import Int8Config

    cfg = ExportConfig(streams=parse_streams(streams), ensemble=ensemble, opset=opset, dynamo=dynamo,
                       data=data, quantize=quantize, calibration=calibration, tolerance=tolerance,
                       precision=precision, fp16_tolerance=fp16_tolerance, graph_form=graph_form,
                       attention=attention, int8_config=Int8Config(target=int8_target), overwrite=overwrite,
                       source=checkpoint)
    check_outputs({"--out": out}, {"--checkpoint": checkpoint, "--data": data, "--calibration": calibration})
    with output_lock(out, "--out", mkdir=True):
        res = export_checkpoint(checkpoint, out, cfg)
    echo_result(res, data)


def echo_result(res: ExportResult, data: str | None) -> None:
    """One line per written file: its parity with torch, and for int8 models the accuracy change."""
    click.echo(f"exported to {res.out_dir}")
    for name, fname in res.files.items():
        p = res.parity.get(name)
        line = f"  {fname:<24s}"
        if p is not None:
            line += f" max |ORT - torch| on logits {p['max_abs_diff_logits']:.2e}"
            if name.endswith(".fp16"):
                line += " (float16 model vs torch float32)"
        q = res.quantization.get(name.removesuffix(".int8")) if name.endswith(".int8") else None
        if q is not None:
            line += (f" top-1 {q['top1_int8']:.2f}% vs fp32 {q['top1_fp32']:.2f}% "
                     f"({q['top1_change_pt']:+.2f} pt, {q['eval_samples']} samples)")
        click.echo(line)
    if data:  # where bf16 may serve the models here, check it on the cache now (crossclr_infer.precision)
        from crossclr_infer.precision import check_exported

        for line in check_exported(res.out_dir, res.files, data):
            click.echo(line)

COMMANDS: list = [export_cmd]
