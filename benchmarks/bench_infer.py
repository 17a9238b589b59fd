"""Inference speed of exported models, every ratio measured against a baseline in the same run.

    python benchmarks/bench_infer.py [--checkpoint runs/NAME/linear/linear.pt --data CACHE.h5] [--threads N]

Without a checkpoint: official-width encoders (EncoderConfig defaults, 3 streams) with random weights and
randomized BN statistics on a synthetic cache; the linear heads are fitted in closed form (ridge regression on
the train split's features) so that the int8 accuracy change is measured on a model that actually classifies.

Prints: ORT vs torch eager samples/s (joint stream, batch 1 and 64; target ≥ 2×), the fused ensemble vs three
separate sessions at batch 1 (target ≥ 1.2×), int8 static quantization vs fp32 ORT (target ≥ 1.3× with
≤ 0.5 pt top-1 drop; export.quantize.DEFAULT_INT8 unless the --int8-* options say otherwise; timed as
interleaved A/B rounds, with the per-round ratios' median, min and max), achieved GFLOP/s vs the CPU's
estimated peak, and on CUDA machines the card and torch-CUDA / ORT-CUDA.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STREAMS = ("joint", "motion", "bone")


def timeit(fn: Callable[[], object], batch: int, min_time: float, min_iters: int = 5) -> float:
    """Samples/s: median over iterations after 3 warm-up calls, at least ``min_time`` seconds in all."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def interleaved(fn_a: Callable[[], object], fn_b: Callable[[], object], batch: int, min_time: float,
                rounds: int) -> tuple[float, float, list[float]]:
    """Samples/s of A and B timed in alternating rounds (order flipped every round, ``min_time / rounds`` s
    each), so that load from other processes hits both; returns (A median, B median, per-round A/B times)."""
    for _ in range(3):
        fn_a()
        fn_b()
    per: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        for k in ((0, 1) if r % 2 == 0 else (1, 0)):
            fn = fn_a if k == 0 else fn_b
            n, t0 = 0, time.perf_counter()
            while n < 2 or time.perf_counter() - t0 < min_time / rounds:
                fn()
                n += 1
            per[k].append((time.perf_counter() - t0) / n)
    a, b = np.array(per[0]), np.array(per[1])
    return batch / float(np.median(a)), batch / float(np.median(b)), list(a / b)


def int8_config(args: argparse.Namespace):
    """export.quantize.Int8Config from the --int8-* options."""
    from export.quantize import Int8Config

    return Int8Config(op_types=tuple(args.int8_ops.split(",")), per_channel=not args.int8_per_tensor,
                      reduce_range=args.int8_reduce_range, calibration=args.int8_calibration,
                      calib_count=args.int8_calib, quant_format=args.int8_format,
                      activation_symmetric=args.int8_act_sym, preprocess=not args.int8_no_preprocess,
                      symbolic_shape=args.int8_symbolic_shape)


def cpu_peak_gflops(threads: int, fpc_override: float | None) -> tuple[float, str]:
    """Peak fp32 GFLOP/s = cores × GHz × FLOPs/cycle, from lscpu (and /proc/cpuinfo for the clock)."""
    try:
        info = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        info = ""
    fields = dict(re.findall(r"^([^:]+):\s*(.*)$", info, flags=re.M))
    cores = int(fields.get("Core(s) per socket", os.cpu_count() or 1)) * int(fields.get("Socket(s)", 1))
    cores = min(cores, threads)
    mhz = float(fields.get("CPU max MHz", 0) or 0)
    src = "lscpu 'CPU max MHz'"
    if not mhz:
        try:
            m = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text())
            mhz, src = (float(m.group(1)), "/proc/cpuinfo 'cpu MHz'") if m else (0.0, "")
        except OSError:
            pass
    if not mhz:
        mhz, src = float(fields.get("BogoMIPS", 0) or 0) / 2, "BogoMIPS / 2"
    flags = fields.get("Flags", "")
    family = fields.get("CPU family", "")
    vendor = fields.get("Vendor ID", "")
    if fpc_override:
        fpc, why = fpc_override, "given by --flops-per-cycle"
    elif "avx512f" in flags:
        # 16 fp32 lanes × 2 (FMA) × 2 pipes; AMD Zen 4 (family 25) runs 512-bit ops on 256-bit pipes: half
        fpc = 32.0 if (vendor == "AuthenticAMD" and family == "25") else 64.0
        why = "AVX-512: 16 lanes × 2 (FMA) × 2 pipes" + (" / 2 (Zen 4 double-pumped)" if fpc == 32 else "")
    elif "avx2" in flags and "fma" in flags:
        fpc, why = 32.0, "AVX2: 8 lanes × 2 (FMA) × 2 pipes"
    else:
        fpc, why = 8.0, "SSE: 4 lanes × 2 pipes"
    peak = cores * mhz / 1000 * fpc
    how = (f"{cores} cores × {mhz / 1000:.2f} GHz ({src}) × {fpc:g} FLOP/cycle ({why}) = {peak:.0f} GFLOP/s; "
           f"CPU {fields.get('Model name', '?')}, family {family}")
    return peak, how


def flops_per_sample(module, x) -> float:
    """FLOPs of one forward pass per sample (torch's FlopCounterMode: convs, matmuls, einsums; 2 per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        module(x)
    return fc.get_total_flops() / x.shape[0]


def build_default(cache: Path, classes: int, threads: int):
    """Official-width encoders (random, BN stats randomized) + ridge-regression heads on the train split."""
    import torch

    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import layout_to_toml
    from crossclr_infer.views import compute_view
    from training.stgcn import STGCN, EncoderConfig

    torch.manual_seed(0)
    cfg = EncoderConfig()
    with open_cache(cache) as c:
        layout, names = c.layout, list(c.class_names)
        xtr, ytr = c.split("train").read_all(), np.asarray(c.split("train").labels)
    encoders, heads = {}, {}
    for v in STREAMS:
        enc = STGCN(layout, cfg, num_person=2)
        for m in enc.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        enc.eval()
        feats = []
        with torch.inference_mode():
            for s in range(0, len(xtr), 64):
                xv = torch.from_numpy(np.ascontiguousarray(compute_view(xtr[s:s + 64], v, layout)))
                feats.append(enc.forward_features(xv).numpy())
        f = np.concatenate(feats).astype(np.float64)
        f1 = np.concatenate([f, np.ones((len(f), 1))], axis=1)
        y = np.eye(len(names))[ytr]
        w = np.linalg.solve(f1.T @ f1 + 1e-2 * np.eye(f1.shape[1]), f1.T @ y)  # (hidden + 1, classes)
        head = torch.nn.Linear(cfg.hidden_dim, len(names))
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(w[:-1].T.astype(np.float32)))
            head.bias.copy_(torch.from_numpy(w[-1].astype(np.float32)))
        encoders[v], heads[v] = enc, head.eval()
    meta = {"layout": layout_to_toml(layout), "class_names": names, "frames": 50, "num_person": 2,
            "fusion_weights": {"joint": 0.6, "motion": 0.4, "bone": 0.6},
            "preprocess": {"mode": "official", "frames": 50}, "config": {"model": cfg.to_dict()}}
    return encoders, heads, meta


def main() -> None:
    from training.stgcn import set_fast_ops

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a linear.pt to export (default: official-width random encoders)")
    ap.add_argument("--data", help="cache for calibration/accuracy (default: a synthetic cache)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--flops-per-cycle", type=float, default=None, help="override the peak estimate")
    from export.quantize import CALIBRATION_METHODS, DEFAULT_INT8, QUANT_FORMATS

    d = DEFAULT_INT8
    ap.add_argument("--int8-ops", default=",".join(d.op_types),
                    help="op types to quantize, e.g. Conv,MatMul,Gemm")
    ap.add_argument("--int8-calib", type=int, default=d.calib_count, help="calibration samples")
    ap.add_argument("--int8-calibration", choices=CALIBRATION_METHODS, default=d.calibration)
    ap.add_argument("--int8-format", choices=QUANT_FORMATS, default=d.quant_format)
    ap.add_argument("--int8-per-tensor", action="store_true",
                    help="per-tensor instead of per-channel weights")
    ap.add_argument("--int8-reduce-range", action="store_true", help="7-bit weights (reduce_range)")
    ap.add_argument("--int8-act-sym", action="store_true", help="symmetric activation ranges")
    ap.add_argument("--int8-no-preprocess", action="store_true", help="skip quant_pre_process")
    ap.add_argument("--int8-symbolic-shape", action="store_true",
                    help="quant_pre_process with symbolic shape inference")
    ap.add_argument("--rounds", type=int, default=8, help="interleaved A/B rounds of the int8 comparison")
    args = ap.parse_args()
    qcfg = int8_config(args)

    import torch

    from crossclr_infer.session import ModelSession
    from export.onnx_export import EnsembleNet, StreamNet, export_models
    from export.quantize import quantize_models

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_infer."))
    cache = Path(args.data) if args.data else None
    if cache is None:
        from crossclr_infer.synth import generate_synthetic

        cache = generate_synthetic(work / "synth.h5", classes=args.classes, per_class=args.per_class, seed=0)
    if args.checkpoint:
        from training.evaluate import load_linear

        encoders, heads, meta = load_linear(args.checkpoint)
        streams = tuple(v for v in STREAMS if v in heads) or tuple(heads)
    else:
        encoders, heads, meta = build_default(cache, args.classes, args.threads)
        streams = STREAMS
    t0 = time.perf_counter()
    res = export_models(encoders, heads, meta, work / "models", streams=streams, data=cache)
    out = res.out_dir
    t_export = time.perf_counter() - t0
    quant = quantize_models(out, {n: f"{n}.onnx" for n in ("ensemble", streams[0])}, cache, meta, config=qcfg)
    print(f"# bench_infer  (threads {args.threads}, torch {torch.__version__}, export {t_export:.1f}s, "
          f"quantize+accuracy {time.perf_counter() - t0 - t_export:.1f}s, work dir {work})")
    print(f"int8: {qcfg.describe()}, {quant['ensemble']['calibration_samples']} calibration samples")
    print("parity max |ORT - torch| on logits: " + ", ".join(f"{k} {v['max_abs_diff_logits']:.1e}"
                                                             for k, v in res.parity.items()))
    sess = {n: ModelSession(out / f"{n}.onnx", ["cpu"], intra_op_threads=args.threads)
            for n in (*streams, "ensemble", "ensemble.int8", f"{streams[0]}.int8")}
    from crossclr_infer.layouts import layout_from_toml_text

    layout = layout_from_toml_text(meta["layout"])
    nets = {v: StreamNet(v, layout, encoders[v], heads[v]).eval() for v in streams}
    ens_torch = EnsembleNet(nets, res_weights(sess["ensemble"])).eval()
    shape = sess["ensemble"].info.input_shape
    rng = np.random.default_rng(0)
    rows = []

    def ratio(name: str, base: float, new: float, target: float) -> None:
        r = new / base
        rows.append((name, base, new, r, target))
        print(f"{name:<52s} {base:10.1f} {new:10.1f} {r:6.2f}x  (target >= {target:g}x) "
              f"{'OK' if r >= target else 'BELOW'}")

    print(f"\n{'comparison (samples/s)':<52s} {'baseline':>10s} {'new':>10s} {'ratio':>7s}")
    j = streams[0]
    for b in (1, 64):
        x = (0.5 * rng.standard_normal((b, *shape))).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            t_torch = timeit(lambda xt=xt: nets[j](xt), b, args.min_time)
        t_ort = timeit(lambda x=x: sess[j].run(x, ["logits"]), b, args.min_time)
        ratio(f"ORT {j} vs torch eager, batch {b}", t_torch, t_ort, 2.0)
        set_fast_ops(False)  # the official operations (einsum graph conv) in torch, same weights
        try:
            with torch.inference_mode():
                t_official = timeit(lambda xt=xt: nets[j](xt), b, args.min_time)
        finally:
            set_fast_ops(True)
        ratio(f"ORT {j} vs torch eager official ops, batch {b}", t_official, t_ort, 2.0)
        ratio(f"torch eager fast ops vs official ops, batch {b}", t_official, t_torch, 1.0)
    x1 = (0.5 * rng.standard_normal((1, *shape))).astype(np.float32)

    def three() -> None:
        from crossclr_infer.metrics import fuse_logits

        fuse_logits({v: sess[v].run(x1, ["logits"])["logits"] for v in streams},
                    sess["ensemble"].info.fusion_weights)

    t_three = timeit(three, 1, args.min_time)
    t_ens = timeit(lambda: sess["ensemble"].run(x1), 1, args.min_time)
    ratio(f"fused ensemble vs {len(streams)} separate sessions, batch 1", t_three, t_ens, 1.2)
    with torch.inference_mode():
        t_ens_torch = timeit(lambda: ens_torch(torch.from_numpy(x1)), 1, args.min_time)
    ratio("ORT ensemble vs torch eager ensemble, batch 1", t_ens_torch, t_ens, 2.0)
    for b in (1, 64):
        x = (0.5 * rng.standard_normal((b, *shape))).astype(np.float32)
        for name in ("ensemble", j):
            t_fp, t_q, per_round = interleaved(lambda x=x, n=name: sess[n].run(x, ["logits"]),
                                               lambda x=x, n=name: sess[f"{n}.int8"].run(x, ["logits"]), b,
                                               2 * args.min_time, args.rounds)
            ratio(f"int8 vs fp32 ORT {name}, batch {b} (interleaved)", t_fp, t_q, 1.3)
            print(f"{'':<52s} median of {len(per_round)} rounds {np.median(per_round):.2f}x, "
                  f"min {min(per_round):.2f}x, max {max(per_round):.2f}x")
    for name in ("ensemble", j):
        q = quant[name]
        print(f"{'' if name != 'ensemble' else chr(10)}int8 accuracy ({name}, {q['eval_samples']} samples of "
              f"{cache.name}): top-1 fp32 {q['top1_fp32']:.2f}%, int8 {q['top1_int8']:.2f}%, change "
              f"{q['top1_change_pt']:+.2f} pt (target drop <= 0.5 pt: "
              f"{'OK' if q['top1_change_pt'] >= -0.5 else 'ABOVE'}); same prediction as fp32 on "
              f"{q['prediction_agreement_pct']:.1f}%")

    # achieved GFLOP/s vs peak
    x64 = torch.from_numpy((0.5 * rng.standard_normal((64, *shape))).astype(np.float32))
    fl = flops_per_sample(nets[j], x64[:2])
    peak, how = cpu_peak_gflops(args.threads, args.flops_per_cycle)
    ort64 = next(r[2] for r in rows if r[0] == f"ORT {j} vs torch eager, batch 64")
    tor64 = next(r[1] for r in rows if r[0] == f"ORT {j} vs torch eager, batch 64")
    print(f"\nFLOPs per sample ({j} stream, torch FlopCounterMode, 2 per MAC): {fl / 1e9:.3f} GFLOP")
    print(f"peak estimate: {how}")
    for name, sps in (("ORT fp32 batch 64", ort64), ("torch eager batch 64", tor64)):
        g = fl * sps / 1e9
        print(f"achieved {name:<22s} {g:8.1f} GFLOP/s = {100 * g / peak:5.1f}% of peak")

    # CUDA
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        print(f"\nCUDA card: {torch.cuda.get_device_name(dev)}")
        net = StreamNet(j, layout, encoders[j], heads[j]).to(dev).eval()
        for b in (1, 64):
            xg = torch.randn((b, *shape), device=dev)

            def run_gpu(xg=xg) -> None:
                net(xg)
                torch.cuda.synchronize()

            with torch.inference_mode():
                print(f"torch CUDA eager {j}, batch {b}: {timeit(run_gpu, b, args.min_time):.1f} samples/s")
        from crossclr_infer.session import available_providers

        if "CUDAExecutionProvider" in available_providers():
            sg = ModelSession(out / f"{j}.onnx", ["cuda"])
            for b in (1, 64):
                x = (0.5 * rng.standard_normal((b, *shape))).astype(np.float32)
                print(f"ORT CUDA {j}, batch {b}: {timeit(lambda x=x: sg.run(x), b, args.min_time):.1f} "
                      f"samples/s")
        else:
            print("onnxruntime-gpu not installed: ORT on CUDA not measured")
    else:
        print("\nCUDA: not available on this machine (torch.cuda.is_available() is False)")


def res_weights(session) -> dict[str, float]:
    return dict(session.info.fusion_weights)


if __name__ == "__main__":
    main()
