"""Pretraining throughput on CPU: samples/s per stage, fast vs official operations, fp32 vs bf16, mallopt.

Every measurement runs the real training loop (``training.trainer.train``: DataLoader workers reading an
HDF5 cache, augmentation, CrosSCLR forward/backward, SGD step) for ``--warmup + --steps`` steps on a synthetic
cache in a fresh subprocess (mallopt cannot be undone inside a process) and reads the per-step records of
metrics.jsonl, dropping the warmup steps. The cases run ``--repeats`` times, interleaved (round 1: every case,
round 2: every case in reverse order, ...), and each figure is the median over the rounds, so a load change on
a shared machine hits all cases alike. Every ratio is between measurements of this one run.

Baselines: ``stgcn.set_fast_ops(False)`` runs the official operations one for one (einsum graph conv,
``nn.Dropout``, conv2d temporal convolutions in NCHW), in fp32, with and without glibc mallopt; the fast
operations (``training.encoders.fastops``) are measured with mallopt, as the trainer runs by default.

``--isa avx2`` runs the children as on an AVX2-only CPU (AMD Zen 3 class): ``ATEN_CPU_CAPABILITY=avx2``
(torch's own kernels), ``ONEDNN_MAX_CPU_ISA=AVX2`` (convolutions, bf16 then refused) and
``MKL_ENABLE_INSTRUCTIONS=AVX2`` (GEMMs). The header names the CPU, torch's kernel level as the children see
it and whether AVX2 was emulated. ``--profile`` prints the top operations by self CPU time of a training step
(torch.profiler, official and fast operations) instead.

    python benchmarks/bench_train.py                       # official 3-view preset (batch 32) and tiny preset
    python benchmarks/bench_train.py --isa avx2 --only official
    python benchmarks/bench_train.py --profile --isa avx2

Profile (``--profile --steps 3``, official preset, batch 32, 2 threads, an Intel Xeon KVM guest with AVX-512
and AMX, quiet; self CPU time per step, AVX-512 / AVX2-emulated). Official operations, 4.19 / 4.87 s:
convolution forward + backward 46 / 53 %, ``bernoulli_`` (nn.Dropout's mask, a serial RNG) 24 / 20 %, bmm of
the einsum 8 / 7 %, batch norm 8 / 7 %, copies 6 / 5 %. Fast operations, 1.94 / 2.37 s: GEMMs (bmm, baddbmm_,
mm, addmm: the DFT temporal convolution of the last block, the graph sums, the 1×1 convolutions) 39 / 44 %,
oneDNN convolutions 22 / 24 %, batch norm 15 / 12 %, copies 4 / 3.5 %, dropout mask (bitwise_and) 2 %. The
last block's 256×256×9 temporal convolution was ~25 % of the step before it went through DFTs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
OFFICIAL_PRESET = "crossclr-ntu60-xsub"


def _child_env(isa: str) -> dict[str, str]:
    env = dict(os.environ)
    if isa == "avx2":
        env.update(AVX2_ENV)
    return env


def _set_threads(n: int) -> None:
    if n > 0:
        import torch

        torch.set_num_threads(n)


def _probe() -> None:
    import torch

    from crossclr_infer.hardware import cpu_caps

    emulated = {k: os.environ[k] for k in AVX2_ENV if k in os.environ}
    print(json.dumps({"line": cpu_caps().line(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "native_bf16": cpu_caps().native_bf16, "emulated": emulated}))


def _worker(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.encoders.stgcn import set_fast_ops
    from training.trainer import train

    _set_threads(args.threads)
    set_fast_ops(not args.reference_ops)
    over = {"epochs": 1, "cross_epoch": 0 if args.stage == "cross" else 1, "batch_size": args.batch,
            "bf16": args.bf16, "mallopt": args.mallopt, "device": "cpu", "num_workers": args.workers,
            "tensorboard": False, "save_every": 1000, "preload": False, "track_mining": False}
    cfg = load_config(args.preset, over)
    out = Path(args.out)
    train(cfg, args.data, out, progress=False, resume=False, stop_after_steps=args.warmup + args.steps)
    steps = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"][args.warmup:args.warmup + args.steps]
    times = [args.batch / r["samples_per_s"] for r in steps]
    wait = sum(r["data_wait_s"] for r in steps)
    print(json.dumps({"samples_per_s": args.batch * len(times) / sum(times), "wait_share": wait / sum(times),
                      "steps": len(times), "loss": steps[-1]["loss"]}))


def _profile_worker(args: argparse.Namespace) -> None:
    """A training step without the data loader (random batch), profiled: top operations by self CPU time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from crossclr_infer.layouts import get_layout
    from training.augment import augment
    from training.config import load_config
    from training.encoders.stgcn import set_fast_ops
    from training.objectives.crossclr import CrosSCLR
    from training.trainer import apply_mallopt, build_optimizer

    apply_mallopt()
    _set_threads(args.threads)
    set_fast_ops(not args.reference_ops)
    cfg = load_config(args.preset, {"batch_size": args.batch, "device": "cpu"})
    torch.manual_seed(0)
    model = CrosSCLR(get_layout("ntu-rgb+d"), cfg.model, cfg.ssl, views=tuple(cfg.streams)).train()
    opt = build_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 3, 50, 25, 2)

    def step() -> None:
        out = model(augment(x, gen), augment(x, gen), cross=args.stage == "cross")
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    rows = [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count / args.steps}
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.top]]
    print(json.dumps({"step_s": total / 1e6 / args.steps, "rows": rows}))


def _run(cmd: list[str], env: dict[str, str]) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _case_name(case: tuple) -> str:
    preset, stage, bf16, mallopt, fast = case
    return (f"{preset:20s} {stage:6s} {'bf16' if bf16 else 'fp32'} mallopt {'on ' if mallopt else 'off'} "
            f"{'fast ops    ' if fast else 'official ops'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--profile-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default=OFFICIAL_PRESET, help=argparse.SUPPRESS)
    p.add_argument("--stage", default="single", choices=("single", "cross"), help=argparse.SUPPRESS)
    p.add_argument("--data", default="", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    p.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mallopt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--reference-ops", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help="batch of the official 3-view model (default 32)")
    p.add_argument("--tiny-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6, help="measured steps per case and round (official preset)")
    p.add_argument("--tiny-steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all cases (medians)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="torch threads of the children (0: default)")
    p.add_argument("--only", choices=("official", "tiny"), default=None)
    p.add_argument("--no-bf16", action="store_true", help="skip the bf16 cases")
    p.add_argument("--isa", choices=("native", "avx2"), default="native",
                   help="avx2: run the children as on an AVX2-only CPU (env caps for torch, oneDNN and MKL)")
    p.add_argument("--profile", action="store_true", help="print a per-op profile of training steps instead")
    p.add_argument("--top", type=int, default=15, help="operations listed by --profile")
    args = p.parse_args()
    if args.probe:
        _set_threads(args.threads)
        _probe()
        return
    if args.worker:
        _worker(args)
        return
    if args.profile_worker:
        _profile_worker(args)
        return

    env = _child_env(args.isa)
    threads = ["--threads", str(args.threads)]
    probe = _run([sys.executable, __file__, "--probe", *threads], env)
    emulated = " ".join(f"{k}={v}" for k, v in probe["emulated"].items())
    print(f"cpu: {probe['line']}")
    print(f"torch {probe['torch']}: kernels {probe['capability']}, {probe['threads']} threads; "
          f"AVX2 emulated: {'yes (' + emulated + ')' if emulated else 'no'}", flush=True)

    if args.profile:
        for fast in (False, True):
            cmd = [sys.executable, __file__, "--profile-worker", "--batch", str(args.batch), "--steps",
                   str(args.steps), "--warmup", str(args.warmup), "--top", str(args.top), *threads]
            r = _run(cmd + ([] if fast else ["--reference-ops"]), env)
            print(f"\n{'fast' if fast else 'official'} operations: {r['step_s']:.2f} s per step "
                  f"(profiled, no data loader), top ops by self CPU time")
            for row in r["rows"]:
                print(f"  {row['op']:42s} {100 * row['share']:5.1f} %  {row['calls']:6.0f} calls/step")
        return

    from crossclr_infer.synth import generate_synthetic

    bf16_ok = probe["native_bf16"] and not args.no_bf16
    if not bf16_ok:
        why = "--no-bf16" if args.no_bf16 else "no native bf16 as the children see it"
        print(f"bf16 cases skipped: {why}")
    plan: list[tuple] = []  # (preset, stage, bf16, mallopt, fast ops)
    if args.only in (None, "official"):
        o = OFFICIAL_PRESET
        plan += [(o, "single", False, False, False), (o, "single", False, True, False)]
        plan += [(o, s, False, True, True) for s in ("single", "cross")]
        plan += [(o, s, True, True, True) for s in ("single", "cross") if bf16_ok]
    if args.only in (None, "tiny"):
        plan += [("tiny", s, b, True, True) for s in ("single", "cross") for b in (False, True)
                 if bf16_ok or not b]
        plan += [("tiny", "single", False, True, False)]
    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        need = max(args.batch * (args.steps + args.warmup), args.tiny_batch * (args.tiny_steps + args.warmup))
        per_class = int(need / 0.55 / 10) + 8  # ~60% of the synthetic samples fall in the train split
        data = generate_synthetic(tmp / "bench.h5", classes=10, per_class=per_class, seed=0)
        runs: dict[tuple, list[dict]] = {case: [] for case in plan}
        for rnd in range(args.repeats):
            for case in (plan if rnd % 2 == 0 else plan[::-1]):
                preset, stage, bf16, mallopt, fast = case
                tiny = preset == "tiny"
                batch, steps = (args.tiny_batch, args.tiny_steps) if tiny else (args.batch, args.steps)
                out = tempfile.mkdtemp(dir=tmp) + "/run"
                cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--stage", stage,
                       "--data", str(data), "--out", out, "--batch", str(batch), "--steps", str(steps),
                       "--warmup", str(args.warmup), "--workers", str(args.workers), *threads]
                cmd += (["--bf16"] if bf16 else []) + (["--mallopt"] if mallopt else [])
                cmd += [] if fast else ["--reference-ops"]
                r = _run(cmd, env)
                runs[case].append(r)
                print(f"round {rnd + 1}  {_case_name(case)}  batch {batch:3d}  {r['samples_per_s']:7.2f} "
                      f"samples/s  data wait {100 * r['wait_share']:4.1f}%  ({r['steps']} steps)", flush=True)

    med = {case: statistics.median(r["samples_per_s"] for r in rs) for case, rs in runs.items()}
    best = {case: max(r["samples_per_s"] for r in rs) for case, rs in runs.items()}
    print(f"\nmedian and best of {args.repeats} interleaved rounds (samples/s)")
    for case in plan:
        print(f"  {_case_name(case)}  {med[case]:7.2f}  {best[case]:7.2f}   rounds: "
              + ", ".join(f"{r['samples_per_s']:.2f}" for r in runs[case]))
    isa = f"{probe['capability']}{' (AVX2 emulated)' if emulated else ''}"
    print(f"\nratios (same run; {probe['line'].split(' (')[0]}, torch kernels {isa}): median, best round "
          "(load from other jobs only slows a case down, so the best rounds are the least disturbed)")

    def ratio(label: str, num: tuple, den: tuple) -> None:
        if num in med and den in med:
            print(f"  {label:82s} {med[num] / med[den]:5.2f}x  {best[num] / best[den]:5.2f}x")

    for preset in (OFFICIAL_PRESET, "tiny"):
        ref_plain = (preset, "single", False, False, False)
        ref_malloc = (preset, "single", False, True, False)
        for stage in ("single", "cross"):
            fp32, bf16 = (preset, stage, False, True, True), (preset, stage, True, True, True)
            ratio(f"{preset} {stage}: fast fp32 vs official ops (fp32, no mallopt, single)", fp32, ref_plain)
            ratio(f"{preset} {stage}: fast fp32 vs official ops (fp32, mallopt, single)", fp32, ref_malloc)
            ratio(f"{preset} {stage}: fast bf16 vs official ops (fp32, no mallopt, single)", bf16, ref_plain)
            ratio(f"{preset} {stage}: bf16 vs fp32 (fast ops)", bf16, fp32)
        ratio(f"{preset} single: official ops, mallopt on vs off (fp32)", ref_malloc, ref_plain)


if __name__ == "__main__":
    main()
