"""Exported transformer attention: the plain graph vs the fused forms, every figure a ratio in this one run.

    python benchmarks/bench_attention_export.py [--threads 2] [--batches 1,8] [--rounds 5] [--frames 120]

The official-size MAMP encoder (120 frames, 25 joints, 2 bodies, width 256, 8 heads, 8 blocks: 750 tokens per
body) with random weights plus a linear head is exported by ``export.onnx_export`` once per attention form
(``ATTENTION_FORMS``: plain MatMul/Softmax/MatMul, onnxruntime's contrib MultiHeadAttention and Attention, the
ONNX Attention op of opset 23). Prints the CPU probe line, then per form:

- parity: max |ORT − torch| on the logits of 2 samples against the training module;
- OpenVINO (when installed): whether ``openvino.Core().read_model`` reads the file and its f32 logits agree;
- per batch: onnxruntime fp32 samples/s, timed in interleaved rounds (the order rotated each round, so load
  from other processes hits every form), its ratio to the plain graph at that batch, the ratio of the
  per-sample rate at this batch to batch 1 of the same form, and the peak resident memory of a fresh
  process that opens the session and runs that batch (no torch in it);
- the peak resident memory of ``export_models`` (parity check and dynamic int8 with its predictions on a
  cache) on the official size, in a fresh process (``--export-rss none`` skips it, ``--export-rss plain,mha``
  compares forms).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import interleaved  # noqa: E402


def peak_rss_gb() -> float:
    """This process's peak resident memory in GiB: VmHWM (getrusage's ru_maxrss would start from the parent's
    peak at fork, which the child inherits)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kB -> GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # no procfs: KiB -> GiB


def child_session_rss(path: str, batch: int, frames: int, threads: int) -> None:
    """(child process) open ``path`` in onnxruntime, run one batch twice, print the peak RSS in GiB and that
    after importing onnxruntime (the baseline every row shares)."""
    import onnxruntime as ort

    base = peak_rss_gb()

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = (np.random.default_rng(0).standard_normal((batch, 3, frames, 25, 2)) * 0.3).astype(np.float32)
    for _ in range(2):
        sess.run(None, {"skeleton": x})
    print(json.dumps({"rss_gb": peak_rss_gb(), "import_gb": base}))


def child_export_rss(folder: str, frames: int, attention: str) -> None:
    """(child process) export_models of an official-size transformer (one stream, int8 too) with the parity
    check on 3 random + 8 real samples and the int8 predictions on the val split; print peak RSS."""
    import torch

    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    torch.set_num_threads(2)
    torch.manual_seed(0)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig(graph="transformer", projector="none")
    data = generate_synthetic(Path(folder) / "s.h5", classes=4, per_class=40, seed=0, frames=frames)
    meta = {"layout": layout_to_toml(ntu), "class_names": ["a", "b", "c", "d"], "frames": frames,
            "num_person": 2, "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official"},
            "config": {"model": cfg.to_dict()}}
    enc = {"joint": SkeletonTransformer(ntu, cfg, frames=frames).eval()}
    head = {"joint": torch.nn.Linear(256, 4).eval()}
    res = export_models(enc, head, meta, Path(folder) / "m", data=data, ensemble=False, quantize="int8",
                        attention=attention)
    q = res.quantization["joint"]
    print(json.dumps({"rss_gb": peak_rss_gb(), "parity": res.parity["joint"]["max_abs_diff_logits"],
                      "eval_samples": q["eval_samples"],
                      "int8_agreement_pct": q["prediction_agreement_pct"]}))


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def openvino_check(path: Path, x: np.ndarray, want: np.ndarray) -> str:
    """'reads, max |Δ| vs torch …' or why OpenVINO could not read/run the file."""
    try:
        import openvino as ov
    except ImportError:
        return "openvino not installed"
    try:
        model = ov.Core().read_model(str(path))
    except Exception as e:  # noqa: BLE001 - a benchmark reports any failure in one line
        return f"read_model FAILED: {str(e).splitlines()[0][:120]}"
    try:
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        got = compiled({"skeleton": x})[0]
    except Exception as e:  # noqa: BLE001
        return f"reads, run FAILED: {str(e).splitlines()[0][:120]}"
    return f"reads and runs (f32), max |OV - torch| {float(np.abs(got - want).max()):.1e}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frames", type=int, default=120, help="input frames (multiple of 4)")
    p.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per batch")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per form and round")
    p.add_argument("--forms", default=None, help="attention forms, comma-separated (default: all)")
    p.add_argument("--export-rss", default="default",
                   help="attention forms of the export_models memory rows, comma-separated ('default': the "
                        "default form; 'none' skips them; each takes minutes on 2 cores)")
    p.add_argument("--child-session", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--child-export", nargs=2, metavar=("FOLDER", "ATTENTION"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_session:
        return child_session_rss(args.child_session[0], int(args.child_session[1]), args.frames, args.threads)
    if args.child_export:
        return child_export_rss(args.child_export[0], args.frames, args.child_export[1])
    batches = [int(b) for b in args.batches.split(",")]

    import onnxruntime as ort
    import torch

    from crossclr_infer.hardware import cpu_caps
    from crossclr_infer.layouts import BUILTIN_LAYOUTS
    from export.config import DEFAULT_OPSET
    from export.onnx_export import export_graph
    from export.serving import (
        ATTENTION_FORMS,
        DEFAULT_ATTENTION,
        ONNX_ATTENTION_OPSET,
        StreamNet,
        serving_encoder,
    )
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    forms = args.forms.split(",") if args.forms else ["plain", *[f for f in ATTENTION_FORMS if f != "plain"]]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {cpu_caps().line()}; torch {torch.__version__}, onnxruntime {ort.__version__}, "
          f"{args.threads} threads; default attention form: {DEFAULT_ATTENTION}")
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    enc = SkeletonTransformer(ntu, EncoderConfig(graph="transformer", projector="none"), frames=args.frames)
    head = torch.nn.Linear(256, 60)
    ref = StreamNet("joint", ntu, enc, head).eval()
    x2 = (np.random.default_rng(1).standard_normal((2, 3, args.frames, 25, 2)) * 0.3).astype(np.float32)
    with torch.no_grad():
        want = ref(torch.from_numpy(x2))[0].numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as td:
        paths, sessions = {}, {}
        print("\n## export (logits of 2 samples)")
        for form in forms:
            net = StreamNet("joint", ntu, serving_encoder(enc, args.frames, attention=form), head).eval()
            path = paths[form] = Path(td) / f"{form}.onnx"
            opset = ONNX_ATTENTION_OPSET if form == "onnx-attention" else DEFAULT_OPSET
            export_graph(net, path, ["logits", "embedding"], torch.from_numpy(x2), opset=opset, dynamo=False)
            sessions[form] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            got = sessions[form].run(["logits"], {"skeleton": x2})[0]
            print(f"{form:18s} opset {opset}: max |ORT - torch| {float(np.abs(got - want).max()):.1e} "
                  f"(|logits| up to {float(np.abs(want).max()):.2f}); OpenVINO: "
                  f"{openvino_check(path, x2, want)}")

        rates: dict[int, dict[str, float]] = {}
        rss: dict[tuple[str, int], float] = {}
        rng = np.random.default_rng(0)
        for b in batches:
            x = (rng.standard_normal((b, 3, args.frames, 25, 2)) * 0.3).astype(np.float32)
            calls = {f: (lambda s=sessions[f], x=x: s.run(None, {"skeleton": x})) for f in forms}
            rates[b] = interleaved(calls, b, args.min_time * args.rounds, args.rounds)[0]
            for f in forms:
                r = run_child(["--child-session", str(paths[f]), str(b), "--frames", str(args.frames),
                               "--threads", str(args.threads)])
                rss[(f, b)], base_rss = r["rss_gb"], r["import_gb"]
        print(f"\n## onnxruntime fp32, samples/s (interleaved, median of {args.rounds} rounds); peak RSS "
              f"of a fresh process (onnxruntime imported: {base_rss:.2f} GiB)")
        print("| attention | batch | samples/s | vs plain, same batch | per-sample rate vs batch "
              f"{batches[0]}, same form | peak RSS (GiB) |\n|---|---:|---:|---:|---:|---:|")
        for f in forms:
            for b in batches:
                print(f"| {f} | {b} | {rates[b][f]:.2f} | {rates[b][f] / rates[b]['plain']:.2f}x | "
                      f"{rates[b][f] / rates[batches[0]][f]:.2f}x | {rss[(f, b)]:.2f} |")
        export_forms = {"default": [DEFAULT_ATTENTION], "none": []}.get(args.export_rss,
                                                                        args.export_rss.split(","))
        if export_forms:
            print("\n## export_models, official size, one stream + int8 (parity on 3 random + 8 real "
                  "samples, int8 predictions on the val split)")
            for f in export_forms:
                with tempfile.TemporaryDirectory() as ed:
                    r = run_child(["--child-export", ed, f, "--frames", str(args.frames)])
                print(f"attention {f}: peak RSS {r['rss_gb']:.2f} GiB, parity {r['parity']:.1e}, int8 "
                      f"agreement {r['int8_agreement_pct']:.1f}% on {r['eval_samples']} samples")


if __name__ == "__main__":
    main()
