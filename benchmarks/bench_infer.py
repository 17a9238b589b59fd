"""Inference speed of exported models, every ratio measured against a baseline in the same run.

    python benchmarks/bench_infer.py [--checkpoint runs/NAME/linear/linear.pt --data CACHE.h5] [--threads N]
    python benchmarks/bench_infer.py --torch-isa avx2     # torch capped to AVX2 (onnxruntime cannot be)

Without a checkpoint: official-width encoders (EncoderConfig defaults, 3 streams) with random weights and
randomized BN statistics on a synthetic cache; the linear heads are fitted in closed form (ridge regression on
the train split's features) so that the int8 accuracy change is measured on a model that actually classifies.

Every comparison is timed as interleaved rounds (the order flips every round, so load from other processes
hits every contender alike); a row prints the ratio of the medians and the per-round ratios' min and max.
The header prints the CPU probe line and the load average. Rows: ORT vs torch eager (joint stream; batch 1
with the session's latency thread plan, batch 64 with its throughput plan, see crossclr_infer.session; target
>= 2x; torch at the given threads and at 1 thread); the exported graph form (BatchNorm folded, MatMul graph
product; the last block's temporal convolution by real DFT matrices) vs the training modules exported as
they are; onnxruntime's thread settings; the fused ensemble vs three stream sessions, both as onnxruntime's
defaults leave them and as crossclr configures them; int8 vs fp32 ORT; the float16 models' parity with
torch float32; nominal GFLOP/s vs the CPU's estimated peak; on CUDA machines the card, torch-CUDA and
ORT-CUDA (fp32 and fp16 models, I/O binding); with the ``openvino`` extra, the OpenVINO column (f32, bf16
where native, its default) and ``crossclr --backend auto`` beside ORT (``bench_backends.py``).

``--torch-isa avx2`` re-runs the script with ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
MKL_ENABLE_INSTRUCTIONS=AVX2`` (torch's BLAS is MKL, which the first two do not cap): torch then runs its
AVX2 kernels as on an AVX2-only CPU, but onnxruntime's MLAS picks its kernels from cpuid and has no
such cap, so ORT keeps AVX-512 and the ORT/torch ratios are *not* those of an AVX2 machine.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STREAMS = ("joint", "motion", "bone")
NAME_WIDTH = 84
# torch's three kernel families: ATen's vectorized kernels, oneDNN (convolutions) and MKL (BLAS: matmul)
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def timeit(fn: Callable[[], object], batch: int, min_time: float, min_iters: int = 5) -> float:
    """Samples/s: median over iterations after 3 warm-up calls, at least ``min_time`` seconds in all (CUDA
    rows only; every ratio uses ``interleaved``)."""
    for _ in range(3):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / float(np.median(times))


def interleaved(fns: Mapping[str, Callable[[], object]], batch: int, seconds: float, rounds: int
                ) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Samples/s of each function, timed in ``rounds`` alternating rounds (order rotated every round: with two
    functions, reversed every other round; ``seconds / rounds`` per function per round, at least one call), so
    that load from other processes hits all of them; returns (median samples/s per name, per-round times per
    name). The one timer of the benchmarks (bench_transformer, bench_backends, bench_attention_export)."""
    names = list(fns)
    for n in names:
        fns[n]()
        fns[n]()
    per: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            k, t0 = 0, time.perf_counter()
            while k < 1 or time.perf_counter() - t0 < seconds / rounds:
                fns[n]()
                k += 1
            per[n].append((time.perf_counter() - t0) / k)
    return {n: batch / float(np.median(per[n])) for n in names}, per


def int8_config(args: argparse.Namespace):
    """export.quantize.Int8Config from the --int8-* options."""
    from export.quantize import Int8Config

    return Int8Config(op_types=tuple(args.int8_ops.split(",")), per_channel=not args.int8_per_tensor,
                      target=args.int8_target, reduce_range=True if args.int8_reduce_range else None,
                      calibration=args.int8_calibration, calib_count=args.int8_calib,
                      quant_format=args.int8_format, activation_symmetric=args.int8_act_sym,
                      preprocess=not args.int8_no_preprocess, symbolic_shape=args.int8_symbolic_shape)


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


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
    """Nominal FLOPs of one forward pass per sample: the official operations (direct convolutions, einsum
    graph product) counted by torch's FlopCounterMode, 2 per MAC. The fast torch ops and the exported DFT
    block do fewer multiply-adds for the same map, so GFLOP/s from this count are nominal."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from training.encoders.stgcn import set_fast_ops

    set_fast_ops(False)
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            module(x)
    finally:
        set_fast_ops(True)
    return fc.get_total_flops() / x.shape[0]


def random_encoder(layout, cfg):
    """An ST-GCN with random weights and randomized BatchNorm statistics (so folding them at export is not a
    no-op), in eval mode."""
    import torch

    from training.encoders.stgcn import STGCN

    enc = STGCN(layout, cfg, num_person=2)
    for m in enc.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return enc.eval()


def export_meta(layout, names: list[str], cfg) -> dict:
    """The linear-checkpoint fields ``export_models`` needs for these benchmark models (official
    preprocessing, 50 frames, 2 bodies, the official fusion weights)."""
    from crossclr_infer.layouts import layout_to_toml

    return {"layout": layout_to_toml(layout), "class_names": names, "frames": 50, "num_person": 2,
            "fusion_weights": {"joint": 0.6, "motion": 0.4, "bone": 0.6},
            "preprocess": {"mode": "official", "frames": 50}, "config": {"model": cfg.to_dict()}}


def build_default(cache: Path, classes: int, threads: int):
    """Official-width encoders (random, BN stats randomized) + ridge-regression heads on the train split."""
    import torch

    from crossclr_infer.cache import open_cache
    from crossclr_infer.views import compute_view
    from training.encoders.config import EncoderConfig

    torch.manual_seed(0)
    cfg = EncoderConfig()
    with open_cache(cache) as c:
        layout, names = c.layout, list(c.class_names)
        xtr, ytr = c.split("train").read_all(), np.asarray(c.split("train").labels)
    encoders, heads = {}, {}
    for v in STREAMS:
        enc = random_encoder(layout, cfg)
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
    return encoders, heads, export_meta(layout, names, cfg)


class Table:
    """Rows ``baseline samples/s, new samples/s, ratio`` with the per-round spread, printed as they come."""

    def __init__(self, cpu: str) -> None:
        self.rows: list[tuple[str, float, float, float]] = []
        print(f"\n{'comparison (samples/s; ' + cpu + ')':<{NAME_WIDTH}s} {'baseline':>9s} {'new':>9s} "
              f"{'ratio':>7s}  per-round ratio min-max")

    def add(self, name: str, base: float, new: float, per: Mapping[str, list[float]] | None = None,
            keys: tuple[str, str] | None = None, target: float | None = None) -> float:
        r = new / base
        self.rows.append((name, base, new, r))
        spread = ""
        if per is not None and keys is not None:
            rr = np.array(per[keys[0]]) / np.array(per[keys[1]])  # time(base) / time(new) per round
            spread = f"  {rr.min():.2f}-{rr.max():.2f}"
        goal = "" if target is None else f"  (target >= {target:g}x: {'OK' if r >= target else 'BELOW'})"
        print(f"{name:<{NAME_WIDTH}s} {base:9.1f} {new:9.1f} {r:6.2f}x{spread}{goal}")
        return r


def reexec_with_isa(isa: str) -> None:
    """Run this script again with torch capped to ``isa`` (the variables must be set before torch loads)."""
    env = dict(os.environ, **ISA_ENV[isa], CROSSCLR_BENCH_ISA=isa)
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def main() -> None:
    from export.quantize import CALIBRATION_METHODS, DEFAULT_INT8, INT8_CONFIG_TARGETS, QUANT_FORMATS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a linear.pt to export (default: official-width random encoders)")
    ap.add_argument("--data", help="cache for calibration/accuracy (default: a synthetic cache)")
    ap.add_argument("--threads", type=int, default=0, help="cores to use (default: all this process may use)")
    ap.add_argument("--min-time", type=float, default=3.0, help="seconds per contender per comparison")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds per comparison")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--flops-per-cycle", type=float, default=None, help="override the peak estimate")
    ap.add_argument("--torch-isa", choices=sorted(ISA_ENV), default=None,
                    help="cap torch's kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA); ORT can't be capped")
    d = DEFAULT_INT8
    ap.add_argument("--int8-ops", default=",".join(d.op_types), help="op types to quantize, e.g. Conv,MatMul")
    ap.add_argument("--int8-calib", type=int, default=d.calib_count, help="calibration samples")
    ap.add_argument("--int8-calibration", choices=CALIBRATION_METHODS, default=d.calibration)
    ap.add_argument("--int8-format", choices=QUANT_FORMATS, default=d.quant_format)
    ap.add_argument("--int8-target", choices=INT8_CONFIG_TARGETS, default=d.target)
    ap.add_argument("--int8-per-tensor", action="store_true", help="per-tensor, not per-channel weights")
    ap.add_argument("--int8-reduce-range", action="store_true", help="7-bit weights (reduce_range)")
    ap.add_argument("--int8-act-sym", action="store_true", help="symmetric activation ranges")
    ap.add_argument("--int8-no-preprocess", action="store_true", help="skip quant_pre_process")
    ap.add_argument("--int8-symbolic-shape", action="store_true",
                    help="quant_pre_process with symbolic shape inference")
    args = ap.parse_args()
    if args.torch_isa and os.environ.get("CROSSCLR_BENCH_ISA") != args.torch_isa:
        reexec_with_isa(args.torch_isa)
    qcfg = int8_config(args)

    import onnxruntime as ort
    import torch

    from crossclr_infer.hardware import cpu_caps
    from crossclr_infer.layouts import layout_from_toml_text
    from crossclr_infer.metrics import fuse_logits
    from crossclr_infer.session import ModelSession, ThreadPlan, plan_threads
    from export.onnx_export import export_models
    from export.serving import EnsembleNet, StreamNet
    from training.encoders.stgcn import set_fast_ops

    caps = cpu_caps()
    threads = args.threads or caps.cores
    torch.set_num_threads(threads)
    cpu = caps.model
    work = Path(tempfile.mkdtemp(prefix="bench_infer."))
    cache = Path(args.data) if args.data else None
    if cache is None:
        from crossclr_infer.synth import generate_synthetic

        cache = generate_synthetic(work / "synth.h5", classes=args.classes, per_class=args.per_class, seed=0)
    if args.checkpoint:
        from training.protocols.io import load_linear

        encoders, heads, meta = load_linear(args.checkpoint)
        streams = tuple(v for v in STREAMS if v in heads) or tuple(heads)
    else:
        encoders, heads, meta = build_default(cache, args.classes, threads)
        streams = STREAMS
    j = streams[0]
    t0 = time.perf_counter()
    res = export_models(encoders, heads, meta, work / "models", streams=streams, data=cache, precision="fp16",
                        quantize="int8", int8_config=qcfg)
    old = export_models(encoders, heads, meta, work / "einsum", streams=[j], data=cache, ensemble=False,
                        graph_form="einsum")
    out, quant = res.out_dir, res.quantization
    print(f"# bench_infer  (threads {threads}, torch {torch.__version__} with CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, onnxruntime {ort.__version__}, export with fp16 and "
          f"int8 {time.perf_counter() - t0:.1f}s, work dir {work})")
    print(f"CPU: {caps.line()}")
    print(f"load average at start: {load_average()} (other processes share these cores: figures are noisy; "
          "ratios come from interleaved rounds of one run)")
    if args.torch_isa:
        env = ", ".join(f"{k}={v}" for k, v in ISA_ENV[args.torch_isa].items())
        print(f"torch capped to {args.torch_isa.upper()} ({env}); "
              "onnxruntime cannot be capped: MLAS picks its kernels from cpuid, so ORT still runs AVX-512 "
              "kernels here and the ORT/torch ratios are not those of an AVX2-only CPU")
    print(f"int8: {qcfg.describe()}, {quant['ensemble']['calibration_samples']} calibration samples")
    print("parity max |ORT - torch fp32| on logits: " + ", ".join(
        f"{k} {v['max_abs_diff_logits']:.1e}" for k, v in res.parity.items() if not k.endswith(".fp16"))
        + f"; training modules exported as they are ({j}) {old.parity[j]['max_abs_diff_logits']:.1e}")
    lat, thr = plan_threads("latency", cores=threads), plan_threads("throughput", cores=threads)
    ort_defaults = ThreadPlan(intra_op_threads=threads, allow_spinning=True)  # onnxruntime's own defaults
    print(f"thread plans: latency = {lat.describe()}; throughput = {thr.describe()}; onnxruntime defaults = "
          f"{ort_defaults.describe()}")

    def session(name: str, plan: ThreadPlan, folder: Path = out) -> ModelSession:
        return ModelSession(folder / f"{name}.onnx", ["cpu"], plan=plan)

    layout = layout_from_toml_text(meta["layout"])
    nets = {v: StreamNet(v, layout, encoders[v], heads[v]).eval() for v in streams}
    ens_lat = session("ensemble", lat)
    weights = dict(ens_lat.info.fusion_weights)
    ens_torch = EnsembleNet(nets, weights).eval()
    shape = ens_lat.info.input_shape
    rng = np.random.default_rng(0)
    xs = {b: (0.5 * rng.standard_normal((b, *shape))).astype(np.float32) for b in (1, 64)}
    plans = {1: lat, 64: thr}
    secs, rounds = args.min_time, args.rounds
    tab = Table(cpu)

    def torch_run(net, x: np.ndarray, fast: bool = True, n_threads: int = threads) -> Callable[[], object]:
        xt = torch.from_numpy(x)

        def fn() -> None:
            set_fast_ops(fast)
            torch.set_num_threads(n_threads)
            try:
                with torch.inference_mode():
                    net(xt)
            finally:
                set_fast_ops(True)
                torch.set_num_threads(threads)
        return fn

    # 1. ORT vs torch eager
    for b in (1, 64):
        x = xs[b]
        s = session(j, plans[b])
        fns = {"torch": torch_run(nets[j], x), "torch1": torch_run(nets[j], x, n_threads=1),
               "official": torch_run(nets[j], x, fast=False), "ort": lambda s=s, x=x: s.run(x, ["logits"])}
        if b > 1:
            whole = session(j, lat)
            fns["ort whole"] = lambda s=whole, x=x: s.run(x, ["logits"])
        sps, per = interleaved(fns, b, secs * len(fns), rounds)
        plan = "latency" if b == 1 else "throughput"
        tab.add(f"ORT {j} ({plan} plan) vs torch eager ({threads} threads), batch {b}", sps["torch"],
                sps["ort"], per, ("torch", "ort"), 2.0)
        if threads > 1:
            tab.add(f"ORT {j} ({plan} plan) vs torch eager (1 thread), batch {b}", sps["torch1"], sps["ort"],
                    per, ("torch1", "ort"), 2.0)
        tab.add(f"ORT {j} vs torch eager with the official ops, batch {b}", sps["official"], sps["ort"], per,
                ("official", "ort"), 2.0)
        tab.add(f"torch eager fast ops vs official ops, batch {b}", sps["official"], sps["torch"], per,
                ("official", "torch"))
        if b > 1:
            tab.add(f"ORT {j} whole batch in one call (latency plan) vs torch eager, batch {b}", sps["torch"],
                    sps["ort whole"], per, ("torch", "ort whole"))
            tab.add(f"ORT {j}: throughput plan vs one call per batch, batch {b}", sps["ort whole"],
                    sps["ort"], per, ("ort whole", "ort"))
            ort64, torch64 = sps["ort"], max(sps["torch"], sps["torch1"])

    # 2. graph form: BN folded + MatMul (+ DFT last block) vs the training modules exported as they are
    direct = export_direct(nets[j], meta, work / "direct", torch.from_numpy(xs[1]))
    for b in (1, 64):
        x = xs[b]
        ss = {"einsum": session(j, plans[b], old.out_dir), "direct": session(j, plans[b], direct),
              "dft": session(j, plans[b])}
        sps, per = interleaved({k: lambda s=s, x=x: s.run(x, ["logits"]) for k, s in ss.items()}, b, 3 * secs,
                               rounds)
        tab.add(f"ORT {j}: folded BN + MatMul graph vs training modules as exported, batch {b}",
                sps["einsum"], sps["direct"], per, ("einsum", "direct"))
        tab.add(f"ORT {j}: last block's temporal conv by DFT vs direct, batch {b}", sps["direct"], sps["dft"],
                per, ("direct", "dft"))

    # 3. onnxruntime thread settings, one model, batch 1
    x1 = xs[1]
    cand = {"spin": ort_defaults, "nospin": lat, "one": ThreadPlan(intra_op_threads=1)}
    ss = {k: session(j, p) for k, p in cand.items()}
    sps, per = interleaved({k: lambda s=s: s.run(x1, ["logits"]) for k, s in ss.items()}, 1, 3 * secs, rounds)
    tab.add(f"ORT {j} {threads} threads: spinning off vs on (onnxruntime default), batch 1", sps["spin"],
            sps["nospin"], per, ("spin", "nospin"))
    tab.add(f"ORT {j}: 1 thread vs {threads} threads spinning off, batch 1", sps["nospin"], sps["one"], per,
            ("nospin", "one"))

    # 4. fused ensemble vs three stream sessions
    def three(sessions: Mapping[str, ModelSession], x: np.ndarray) -> Callable[[], object]:
        def fn() -> None:
            fuse_logits({v: sessions[v].run(x, ["logits"])["logits"] for v in streams}, weights)
        return fn

    for b, plan, label in ((1, ort_defaults, "onnxruntime defaults (spinning pools)"),
                           (1, lat, "latency plan"), (64, thr, "throughput plan")):
        x = xs[b]
        sep = {v: session(v, plan) for v in streams}
        ens = session("ensemble", plan)
        sps, per = interleaved({"three": three(sep, x), "ens": lambda s=ens, x=x: s.run(x, ["logits"])}, b,
                               2 * secs, rounds)
        tab.add(f"fused ensemble vs {len(streams)} separate sessions, both {label}, batch {b}", sps["three"],
                sps["ens"], per, ("three", "ens"), 1.2 if plan is not ort_defaults else None)
    sps, per = interleaved({"torch": torch_run(ens_torch, x1),
                            "torch1": torch_run(ens_torch, x1, n_threads=1),
                            "ens": lambda: ens_lat.run(x1, ["logits"])}, 1, 3 * secs, rounds)
    tab.add(f"ORT ensemble (latency plan) vs torch eager ensemble ({threads} threads), batch 1", sps["torch"],
            sps["ens"], per, ("torch", "ens"), 2.0)
    if threads > 1:
        tab.add("ORT ensemble (latency plan) vs torch eager ensemble (1 thread), batch 1", sps["torch1"],
                sps["ens"], per, ("torch1", "ens"), 2.0)

    # 5. int8 vs fp32 ORT, same plan on both sides
    for b in (1, 64):
        x = xs[b]
        for name in ("ensemble", j):
            fp, q8 = session(name, plans[b]), session(f"{name}.int8", plans[b])
            sps, per = interleaved({"fp32": lambda s=fp, x=x: s.run(x, ["logits"]),
                                    "int8": lambda s=q8, x=x: s.run(x, ["logits"])}, b, 2 * secs, rounds)
            tab.add(f"int8 vs fp32 ORT {name}, batch {b}", sps["fp32"], sps["int8"], per, ("fp32", "int8"),
                    1.3)
    for name in ("ensemble", j):
        q = quant[name]
        print(f"int8 accuracy ({name}, {q['eval_samples']} samples of {cache.name}): top-1 fp32 "
              f"{q['top1_fp32']:.2f}%, int8 {q['top1_int8']:.2f}%, change {q['top1_change_pt']:+.2f} pt "
              f"(target drop <= 0.5 pt: {'OK' if q['top1_change_pt'] >= -0.5 else 'ABOVE'}); same prediction "
              f"as fp32 on {q['prediction_agreement_pct']:.1f}%")

    # 6. float16 models: parity with torch float32 (CPU onnxruntime, casts kept between operations)
    print(f"\nfloat16 models vs torch float32 (onnxruntime CPU without graph optimizations; tolerance "
          f"{res.parity[j + '.fp16']['tolerance']:g} x max(1, |logits|)):")
    for name, pr in res.parity.items():
        if name.endswith(".fp16"):
            scale = max(v for per_in in pr["per_input"].values() for k, v in per_in.items()
                        if k.startswith("logits") and k.endswith(":scale"))
            print(f"  {name + '.onnx':<22s} max |ORT fp16 - torch fp32| on logits "
                  f"{pr['max_abs_diff_logits']:.2e} (|logits| up to {scale:.3g}; inputs: "
                  f"{', '.join(pr['per_input'])})")
    agree = fp16_agreement(out / "ensemble.onnx", out / "ensemble.fp16.onnx", cache)
    print(f"  ensemble.fp16 vs ensemble fp32 on {cache.name}: same top-1 class on {agree[0]:.1f}% of "
          f"{agree[1]} samples; max |Δ probability| {agree[2]:.1e}")

    # 7. achieved GFLOP/s vs peak
    x64 = torch.from_numpy(xs[64])
    fl = flops_per_sample(nets[j], x64[:2])
    peak, how = cpu_peak_gflops(threads, args.flops_per_cycle)
    print(f"\nnominal FLOPs per sample ({j} stream, official ops, torch FlopCounterMode, 2 per MAC): "
          f"{fl / 1e9:.3f} GFLOP (the DFT block and torch's fast ops do fewer for the same map)")
    print(f"peak estimate: {how}")
    for name, sps_ in (("ORT fp32 batch 64", ort64), ("torch eager batch 64 (best)", torch64)):
        g = fl * sps_ / 1e9
        print(f"nominal {name:<29s} {g:8.1f} GFLOP/s = {100 * g / peak:5.1f}% of peak")
    print(f"load average at end: {load_average()}")
    cuda_rows(args, torch, encoders, heads, layout, out, shape, j, rng)

    # 8. the OpenVINO column: the exported stream model on every backend (bench_backends.py), when installed
    from crossclr_infer.backends import openvino_installed

    if openvino_installed():
        from bench_backends import run as backend_rows

        print("\n## backends: onnxruntime vs OpenVINO (f32, bf16 where native, its default) vs crossclr auto")
        backend_rows("st-gcn", [1, 64], threads, secs / 2, rounds, paths={"model": str(out / f"{j}.onnx")})


def export_direct(net, meta, folder: Path, example) -> Path:
    """The stream model in the serving form without the DFT block (folder/NAME.onnx), for the graph rows."""
    from export.onnx_export import ExportMeta, export_graph, set_metadata
    from export.serving import StreamNet, serving_encoder

    em = ExportMeta.from_checkpoint_meta(meta, [net.view], "bench")
    encoder = serving_encoder(net.encoder, em.frames, dft=False)
    module = StreamNet(net.view, em.layout, encoder, net.head).eval()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{net.view}.onnx"
    export_graph(module, path, ["logits", "embedding"], example, opset=17, dynamo=False)
    set_metadata(path, em.props("stream", [net.view], {"graph_form": "matmul"}))
    return folder


def fp16_agreement(fp32: Path, fp16: Path, cache: Path, max_samples: int = 1024) -> tuple[float, int, float]:
    """(% same argmax, samples, max |Δ probability|) of two ensemble models on the cache's val split."""
    from crossclr_infer.cache import open_cache
    from crossclr_infer.session import ModelSession

    with open_cache(cache) as c:
        sp = c.split("val" if "val" in c.splits else c.splits[0])
        x = sp.read(np.arange(min(len(sp), max_samples)))
    a = ModelSession(fp32, ["cpu"], use="throughput").run_batched(x, 64, ["probabilities"])["probabilities"]
    b = ModelSession(fp16, ["cpu"], use="throughput").run_batched(x, 64, ["probabilities"])["probabilities"]
    return 100.0 * float((a.argmax(1) == b.argmax(1)).mean()), len(x), float(np.abs(a - b).max())


def cuda_rows(args, torch, encoders, heads, layout, out: Path, shape, j: str, rng) -> None:
    """torch-CUDA and ORT-CUDA (fp32 and fp16 models, I/O binding) where a GPU exists."""
    from export.serving import StreamNet

    if not torch.cuda.is_available():
        print("\nCUDA: not available on this machine (torch.cuda.is_available() is False)")
        return
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
    from crossclr_infer.session import ModelSession, available_providers

    if "CUDAExecutionProvider" not in available_providers():
        print("onnxruntime-gpu not installed: ORT on CUDA not measured")
        return
    for name in (j, f"{j}.fp16"):
        sg = ModelSession(out / f"{name}.onnx", ["cuda"])
        for b in (1, 64):
            x = (0.5 * rng.standard_normal((b, *shape))).astype(np.float32)
            print(f"ORT CUDA {name} (I/O binding), batch {b}: "
                  f"{timeit(lambda x=x, sg=sg: sg.run(x, ['logits']), b, args.min_time):.1f} samples/s")


if __name__ == "__main__":
    main()
