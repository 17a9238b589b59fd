"""The MAMP transformer beside the ST-GCN, every figure a ratio measured in this one run.

    python benchmarks/bench_transformer.py [--threads 2] [--min-time 1.0] [--frames 120]

``--batches 1,8`` keeps a run short on 2 cores (batch 64 of 120-frame transformer inputs takes tens of
seconds per call in torch eager there). Both encoders at their official size with random weights, one
stream (joint) plus a linear head, 2 bodies: the ST-GCN at 50 frames (CrosSCLR's input), the transformer at
``--frames`` (MAMP's 120). Prints the CPU probe line, then

- inference: ORT vs torch eager for each encoder at batch 1 and 64, and the transformer's samples/s as a share
  of the ST-GCN's (ORT, same batch), with the FLOPs per sample of each; dynamic int8 of the transformer
  (MatMul/Gemm) vs its fp32 ORT model;
- training: samples/s of one optimizer step of MAMP pretraining (one view) and of SkeletonCLR (one view, two
  augmented copies), fp32, at batch 8, and their ratio;
- backends (``bench_backends.py``): onnxruntime fp32 / int8 dynamic, OpenVINO f32 / bf16 / its default and
  ``crossclr --backend auto`` on the exported model, ratios vs ORT fp32, top-1 agreement, peak RSS per row.

Timings interleave the two contenders round by round so that load from other processes hits both. Kept apart
from ``bench_infer.py`` / ``bench_train.py``, which drive the ST-GCN protocol figures of docs/figures.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_infer import interleaved  # noqa: E402


def int8_rows(ort: object, so: object, path: Path, td: Path, frames: int, batches: list[int],
              min_time: float) -> dict:
    """Dynamic int8 (onnxruntime's quantize_dynamic on MatMul/Gemm, per-channel weights) of the transformer
    model at ``path`` vs the fp32 model: samples/s ratio per batch and the largest logit deviation."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = td / "transformer.int8.onnx"
    quantize_dynamic(str(path), str(q), op_types_to_quantize=["MatMul", "Gemm"], per_channel=True,
                     weight_type=QuantType.QInt8)
    s32 = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
    out: dict = {}
    rng = np.random.default_rng(0)
    for b in batches:
        x = (rng.standard_normal((b, 3, frames, 25, 2)) * 0.3).astype(np.float32)
        r = interleaved({"fp32": lambda x=x: s32.run(None, {"skeleton": x}),
                         "int8": lambda x=x: s8.run(None, {"skeleton": x})}, b, min_time, 6)[0]
        out[b] = r["int8"] / r["fp32"]
        a, c = s32.run(None, {"skeleton": x})[0], s8.run(None, {"skeleton": x})[0]
        out["err"] = max(out.get("err", 0.0), float(np.abs(a - c).max() / max(np.abs(a).max(), 1e-6)))
    return out


def flops(module: object, x: object) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        module(x)
    return fc.get_total_flops() / x.shape[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement (split in rounds)")
    p.add_argument("--frames", type=int, default=120, help="transformer input frames (multiple of 4)")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--batches", default="1,8", help="inference batch sizes, comma-separated (64 on request)")
    p.add_argument("--no-backends", action="store_true",
                   help="skip the backend x precision rows (benchmarks/bench_backends.py)")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]

    import onnxruntime as ort
    import torch

    from crossclr_infer.hardware import cpu_caps
    from crossclr_infer.layouts import BUILTIN_LAYOUTS
    from training.augment import augment
    from training.encoders.config import EncoderConfig
    from training.encoders.stgcn import STGCN
    from training.encoders.transformer import SkeletonTransformer
    from training.objectives.crossclr import CrosSCLR
    from training.objectives.mamp import MAMP, MAMPConfig

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# {cpu_caps().line()}; torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"onnxruntime {ort.__version__}, {args.threads} threads")
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    t_cfg = EncoderConfig(graph="transformer", projector="none")
    frames_of = {"st-gcn": 50, "transformer": args.frames}
    encoders = {"st-gcn": STGCN(ntu, EncoderConfig(projector="none")).eval(),
                "transformer": SkeletonTransformer(ntu, t_cfg, frames=args.frames).eval()}

    class Net(torch.nn.Module):
        def __init__(self, enc: torch.nn.Module) -> None:
            super().__init__()
            self.enc, self.head = enc, torch.nn.Linear(256, 60)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc.forward_features(x))

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    rows = {}
    with tempfile.TemporaryDirectory() as td:
        for name, enc in encoders.items():
            frames = frames_of[name]
            net = Net(enc).eval()
            x1 = torch.randn(1, 3, frames, 25, 2) * 0.3
            path = Path(td) / f"{name}.onnx"
            torch.onnx.export(net, (x1,), str(path), input_names=["skeleton"], output_names=["logits"],
                              dynamic_axes={"skeleton": {0: "batch"}}, opset_version=17, dynamo=False)
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            for batch in batches:
                x = torch.randn(batch, 3, frames, 25, 2) * 0.3
                xn = x.numpy()

                def eager(net=net, x=x) -> None:
                    with torch.no_grad():
                        net(x)

                def onnx(sess=sess, xn=xn) -> None:
                    sess.run(None, {"skeleton": xn})

                rows[(name, batch)] = interleaved({"torch": eager, "ort": onnx}, batch, args.min_time, 6)[0]
            rows[(name, "flops")] = flops(net, torch.randn(2, 3, frames, 25, 2))
            if name == "transformer":
                rows["int8"] = int8_rows(ort, so, path, Path(td), frames, batches, args.min_time)
    print("\n## inference (samples/s, one stream + head)")
    for name in encoders:
        print(f"{name:12s} {rows[(name, 'flops')] / 1e9:6.2f} GFLOP/sample  " + "  ".join(
            f"b{b}: torch {rows[(name, b)]['torch']:8.1f} ort {rows[(name, b)]['ort']:8.1f} "
            f"({rows[(name, b)]['ort'] / rows[(name, b)]['torch']:.2f}x)" for b in batches))
    for b in batches:
        print(f"transformer / st-gcn samples/s, ORT batch {b}: "
              f"{rows[('transformer', b)]['ort'] / rows[('st-gcn', b)]['ort']:.3f}x")

    print("transformer int8 (dynamic, MatMul/Gemm weights per channel) vs fp32 ORT: " + "  ".join(
        f"b{b}: {rows['int8'][b]:.2f}x" for b in batches) + f"; logits max error {rows['int8']['err']:.2%} "
          "of the logit scale (random weights: a speed check, not an accuracy one)")

    # one optimizer step of each pretraining objective, one view, fp32
    n = args.train_batch
    mamp = MAMP(ntu, t_cfg, MAMPConfig(), views=("joint",), frames=args.frames).train()
    clr = CrosSCLR(ntu, EncoderConfig(), views=("joint",)).train()
    opt_m = torch.optim.AdamW(mamp.parameters(), lr=1e-4)
    opt_c = torch.optim.SGD([p for p in clr.parameters() if p.requires_grad], lr=1e-3)
    xm, xc = torch.randn(n, 3, args.frames, 25, 2) * 0.3, torch.randn(n, 3, 50, 25, 2) * 0.3
    g = torch.Generator().manual_seed(0)

    def step_mamp() -> None:
        loss = mamp(xm, generator=g)["loss"]
        opt_m.zero_grad()
        loss.backward()
        opt_m.step()

    def step_clr() -> None:
        loss = clr(augment(xc, g), augment(xc, g), cross=False)["loss"]
        opt_c.zero_grad()
        loss.backward()
        opt_c.step()

    tr = interleaved({"mamp": step_mamp, "skeletonclr": step_clr}, n, args.min_time * 3, 4)[0]
    print(f"\n## training (samples/s, batch {n}, fp32, one view)")
    print(f"MAMP (transformer, {args.frames} frames) {tr['mamp']:.1f}   SkeletonCLR (ST-GCN, 50 frames) "
          f"{tr['skeletonclr']:.1f}   MAMP / SkeletonCLR {tr['mamp'] / tr['skeletonclr']:.2f}x")
    if not args.no_backends:  # onnxruntime / OpenVINO x fp32 / int8 / bf16, peak RSS per row
        from bench_backends import run as backend_rows

        print("\n## inference backends (the model as `crossclr export` writes it)")
        backend_rows("transformer", batches, args.threads, args.min_time, 4, args.frames)


if __name__ == "__main__":
    main()
