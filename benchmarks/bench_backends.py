"""Inference backends × precision side by side, every speed a ratio against onnxruntime fp32 in the same run.

    python benchmarks/bench_backends.py --model transformer [--batches 1,8] [--threads 2] [--min-time 2]
    python benchmarks/bench_backends.py --model st-gcn --batches 1,64

The model is exported by ``export.onnx_export.export_models`` exactly as ``crossclr export`` writes it
(random weights, one stream + a linear head, 2 bodies): the MAMP-size transformer (120 frames; its attention
in the export's default form, and the plain MatMul/Softmax graph as the baseline, see docs/backends.md) or the
official-size ST-GCN (50 frames, BatchNorm folded). Rows, each timed in interleaved rounds (order rotated
every round):

- ``ORT fp32``: onnxruntime CPU, ``intra_op_num_threads`` = threads, on the exported graph (the baseline of
  every ratio); for the transformer also ``ORT fp32 plain`` (attention as MatMul/Softmax/MatMul) and
  ``ORT int8 dynamic`` (``quantize_dynamic`` MatMul/Gemm, as ``bench_transformer.py``);
- ``OpenVINO f32`` / ``OpenVINO bf16`` (``INFERENCE_PRECISION_HINT``; bf16 only where
  ``backends.openvino_native_bf16()``) / ``OpenVINO default`` (only ``INFERENCE_NUM_THREADS`` set: what
  OpenVINO picks itself, bf16 on a CPU with AVX512-BF16 or AMX);
- ``crossclr onnxruntime``: ``ModelSession(model, backend="onnxruntime")``, today's path (the thread plan
  of ``predict`` at batch 1, of ``evaluate`` above);
- ``crossclr auto``: ``ModelSession(model)`` as ``crossclr predict`` opens it (unchecked: fp32), and
  ``crossclr auto, bf16 checked``: the same once a bf16 check has passed (the check is *forced* here, the
  weights being random; ``crossclr evaluate`` runs the real one on a cache).

Per row also: top-1 agreement with ORT fp32 on 16 random inputs (``--agree-samples``), the largest logit
deviation as a share of the logit scale, and the peak resident memory (``VmHWM``) of a separate process that
opens only that row's runtime and runs its batch once (printed beside the RSS of the same process before it
opened the model, so the delta is what the runtime and its buffers take). Rows print as they are measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import interleaved  # noqa: E402

Runner = Callable[[np.ndarray], np.ndarray]


def rss_mb() -> float:
    """Peak resident memory of this process so far, MB: ``VmHWM`` (reset at exec, unlike ``ru_maxrss``, which
    a child started by ``subprocess`` inherits from its parent's high-water mark)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_runner(row: str, paths: dict[str, str], threads: int, batch: int) -> Runner | None:
    """The callable of one row (None when the row does not apply on this CPU)."""
    if row.startswith("ORT"):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        key = {"ORT fp32": "model", "ORT fp32 plain": "plain", "ORT int8 dynamic": "int8"}[row]
        if key not in paths:
            return None
        s = ort.InferenceSession(paths[key], so, providers=["CPUExecutionProvider"])
        return lambda x: s.run(["logits"], {"skeleton": x})[0]
    if row.startswith("OpenVINO"):
        import openvino as ov

        from crossclr_infer.backends import openvino_native_bf16

        cfg: dict = {"INFERENCE_NUM_THREADS": threads}
        if row == "OpenVINO f32":
            cfg.update(INFERENCE_PRECISION_HINT="f32", PERFORMANCE_HINT="LATENCY")
        elif row == "OpenVINO bf16":
            if not openvino_native_bf16():
                return None
            cfg.update(INFERENCE_PRECISION_HINT="bf16", PERFORMANCE_HINT="LATENCY")
        core = ov.Core()
        compiled = core.compile_model(core.read_model(paths["model"]), "CPU", cfg)
        req = compiled.create_infer_request()
        out = compiled.outputs[0]
        return lambda x: req.infer({0: x})[out].copy()
    from crossclr_infer.session import ModelSession

    use = "latency" if batch == 1 else "throughput"  # as predict / evaluate open it
    if row == "crossclr auto":
        s = ModelSession(paths["model"], intra_op_threads=threads, use=use)
    elif row == "crossclr onnxruntime":
        s = ModelSession(paths["model"], intra_op_threads=threads, use=use, backend="onnxruntime")
    elif row == "crossclr auto, bf16 checked":
        from crossclr_infer.backends import openvino_native_bf16

        if not openvino_native_bf16():
            return None
        s = ModelSession(paths["model"], intra_op_threads=threads, use=use, precision="bf16",
                         trust_precision=True)
    else:
        raise ValueError(row)
    return lambda x: s.run(x, ["logits"])["logits"]


ROWS = ("ORT fp32", "ORT fp32 plain", "ORT int8 dynamic", "OpenVINO f32", "OpenVINO bf16", "OpenVINO default",
        "crossclr onnxruntime", "crossclr auto", "crossclr auto, bf16 checked")


def export(kind: str, work: Path, frames: int) -> dict[str, str]:
    """The model files of ``kind``: ``model`` (the export's default graph) and, for the transformer, ``plain``
    (attention as MatMul/Softmax) and ``int8`` (dynamic quantization of the plain graph)."""
    import torch

    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    torch.manual_seed(0)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    if kind == "transformer":
        cfg = EncoderConfig(graph="transformer", projector="none")
        enc = SkeletonTransformer(ntu, cfg, num_person=2, frames=frames).eval()
    else:
        from bench_infer import random_encoder

        frames = 50
        cfg = EncoderConfig(projector="none")
        enc = random_encoder(ntu, cfg)  # random weights, randomized BN statistics (bench_infer)
    head = torch.nn.Linear(cfg.hidden_dim, 60).eval()
    meta = {"layout": layout_to_toml(ntu), "class_names": [f"class {i}" for i in range(60)], "frames": frames,
            "num_person": 2, "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official",
                                                                              "frames": frames},
            "config": {"model": cfg.to_dict()}}
    res = export_models({"joint": enc}, {"joint": head}, meta, work / "model", ensemble=False)
    paths = {"model": str(res.out_dir / res.files["joint"])}
    if kind == "transformer":
        try:
            plain = export_models({"joint": enc}, {"joint": head}, meta, work / "plain", ensemble=False,
                                  attention="plain")
            paths["plain"] = str(plain.out_dir / plain.files["joint"])
        except TypeError:  # an export without attention forms writes the plain graph already
            paths["plain"] = paths["model"]
        from onnxruntime.quantization import QuantType, quantize_dynamic

        paths["int8"] = str(work / "int8.onnx")
        quantize_dynamic(paths["plain"], paths["int8"], op_types_to_quantize=["MatMul", "Gemm"],
                         per_channel=True, weight_type=QuantType.QInt8)
    return paths


def child(args: argparse.Namespace) -> None:
    """``--rss-row``: open one row's runtime, run its batch 3 times, print the peak RSS (JSON)."""
    paths = json.loads(args.rss_paths)
    x = (np.random.default_rng(0).standard_normal((args.rss_batch, *json.loads(args.rss_shape))) * 0.3
         ).astype(np.float32)
    before = rss_mb()
    fn = make_runner(args.rss_row, paths, args.threads, args.rss_batch)
    if fn is not None:
        fn(x)  # the first run allocates every buffer: the peak
    print(json.dumps({"before_mb": before, "peak_mb": rss_mb()}))


def peak_rss(row: str, paths: dict[str, str], shape: tuple[int, ...], batch: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--rss-row", row, "--rss-batch", str(batch), "--rss-paths",
           json.dumps(paths), "--rss-shape", json.dumps(list(shape)), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"before_mb": float("nan"), "peak_mb": float("nan")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("transformer", "st-gcn"), default="transformer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=2.0, help="seconds per row per batch (split in rounds)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--frames", type=int, default=120, help="transformer input frames (multiple of 4)")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (64 on request)")
    p.add_argument("--no-rss", action="store_true", help="skip the per-row memory processes")
    p.add_argument("--agree-samples", type=int, default=16, help="random inputs of the agreement columns")
    p.add_argument("--rows", default=None, help="only these rows (names separated by ';'; ORT fp32 always)")
    p.add_argument("--rss-row", help=argparse.SUPPRESS)
    p.add_argument("--rss-batch", type=int, help=argparse.SUPPRESS)
    p.add_argument("--rss-paths", help=argparse.SUPPRESS)
    p.add_argument("--rss-shape", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rss_row:
        child(args)
        return
    run(args.model, [int(b) for b in args.batches.split(",")], args.threads, args.min_time, args.rounds,
        args.frames, rss=not args.no_rss, agree_samples=args.agree_samples,
        rows=args.rows.split(";") if args.rows else None)


def run(kind: str, batches: list[int], threads: int, min_time: float, rounds: int, frames: int = 120,
        rss: bool = True, paths: dict[str, str] | None = None, agree_samples: int = 16,
        rows: list[str] | None = None) -> dict:
    """Print the table (and return it): samples/s ratio vs ORT fp32, agreement, error, peak RSS."""
    import onnxruntime as ort

    from crossclr_infer.backends import openvino_version
    from crossclr_infer.hardware import cpu_caps

    print(f"# {kind}: {cpu_caps().line()}; onnxruntime {ort.__version__}, OpenVINO {openvino_version()}; "
          f"{threads} threads; load average {os.getloadavg()[0]:.1f} (shared machine: ratios of interleaved "
          "rounds are the figures, not absolute rates)")
    with tempfile.TemporaryDirectory() as td:
        if paths is None:
            paths = export(kind, Path(td), frames)
        from crossclr_infer.session import ModelSession

        info = ModelSession(paths["model"], backend="onnxruntime").info
        shape = info.input_shape
        auto = ModelSession(paths["model"])
        fused = b"Attention" in Path(paths["model"]).read_bytes()
        print(f"crossclr auto opens this model with {auto.backend} ({auto.precision}); fused attention op in "
              f"the graph: {fused}")
        del auto
        print("\n| row | batch | samples/s | vs ORT fp32 | top-1 agreement | max logit dev. | "
              "peak RSS MB (before) |")
        print("|---|---:|---:|---:|---:|---:|---:|", flush=True)
        table: dict = {}
        for b in batches:
            x = (np.random.default_rng(b).standard_normal((b, *shape)) * 0.3).astype(np.float32)
            chosen = [r for r in ROWS if rows is None or r in rows or r == "ORT fp32"]
            fns = {r: f for r in chosen if (f := make_runner(r, paths, threads, b)) is not None}
            calls = {r: (lambda f=f, x=x: f(x)) for r, f in fns.items()}
            sps = interleaved(calls, len(x), min_time * len(fns), rounds)[0]
            n = max(b, agree_samples - agree_samples % b)
            xa = (np.random.default_rng(99).standard_normal((n, *shape)) * 0.3).astype(np.float32)
            outs = {r: np.concatenate([fn(xa[i:i + b]) for i in range(0, n, b)]) for r, fn in fns.items()}
            del fns
            ref = outs["ORT fp32"]
            for r, got in outs.items():
                mem = peak_rss(r, paths, shape, b, threads) if rss else {}
                v = table[(r, b)] = {"sps": sps[r], "ratio": sps[r] / sps["ORT fp32"],
                                     "agree": 100.0 * float(np.mean(got.argmax(1) == ref.argmax(1))),
                                     "err": float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-9)),
                                     "samples": n, **mem}
                mem_s = f"{v['peak_mb']:.0f} ({v['before_mb']:.0f})" if "peak_mb" in v else "-"
                print(f"| {r} | {b} | {v['sps']:.2f} | {v['ratio']:.2f}x | {v['agree']:.1f}% of {n} | "
                      f"{v['err']:.2%} | {mem_s} |", flush=True)
    return table


if __name__ == "__main__":
    main()
