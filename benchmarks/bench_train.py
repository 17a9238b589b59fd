"""Pretraining throughput on CPU: samples/s per stage, fp32 vs bf16, glibc mallopt on vs off, data-wait share.

Every measurement runs the real training loop (``training.trainer.train``: DataLoader workers reading an HDF5
cache, augmentation, CrosSCLR forward/backward, SGD step) for one epoch on a synthetic cache in a fresh
subprocess (mallopt cannot be undone inside a process), and reads the per-step records of metrics.jsonl,
dropping the first ``--warmup`` steps. Ratios are between measurements of this one run; the official
CrosSCLR code's figure on this machine (8.3 samples/s, 3 views, batch 32, fp32) is the external reference.

    python benchmarks/bench_train.py                 # official preset (batch 32) and tiny preset
    python benchmarks/bench_train.py --steps 30 --only official
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

OFFICIAL_REFERENCE = 8.3  # samples/s of the official code, 3 views, batch 32, fp32, this machine (issue 3)


def _worker(args: argparse.Namespace) -> None:
    from training.config import load_config
    from training.stgcn import set_fast_ops
    from training.trainer import train

    set_fast_ops(not args.reference_ops)
    over = {"epochs": 1, "cross_epoch": 0 if args.stage == "cross" else 1, "batch_size": args.batch,
            "bf16": args.bf16, "mallopt": args.mallopt, "device": "cpu", "num_workers": args.workers,
            "tensorboard": False, "save_every": 1000, "preload": False, "track_mining": False}
    if args.stage == "single":
        over["cross_epoch"] = 1
    cfg = load_config(args.preset, over)
    out = Path(args.out)
    train(cfg, args.data, out, progress=False, resume=False, stop_after_steps=args.warmup + args.steps)
    steps = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r["kind"] == "step"][args.warmup:args.warmup + args.steps]
    times = [args.batch / r["samples_per_s"] for r in steps]
    wait = sum(r["data_wait_s"] for r in steps)
    print(json.dumps({"samples_per_s": args.batch * len(times) / sum(times), "wait_share": wait / sum(times),
                      "steps": len(times), "loss": steps[-1]["loss"]}))


def _measure(preset: str, stage: str, bf16: bool, mallopt: bool, data: Path, batch: int, steps: int,
             warmup: int, workers: int, tmp: Path, fast: bool = True) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp))
    cmd = [sys.executable, __file__, "--worker", "--preset", preset, "--stage", stage, "--data", str(data),
           "--out", str(out / "run"), "--batch", str(batch), "--steps", str(steps), "--warmup", str(warmup),
           "--workers", str(workers)]
    cmd += ["--bf16"] if bf16 else []
    cmd += ["--mallopt"] if mallopt else []
    cmd += [] if fast else ["--reference-ops"]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ})
    if r.returncode != 0:
        raise SystemExit(f"worker failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="crossclr-ntu60-xsub")
    p.add_argument("--stage", default="single", choices=("single", "cross"))
    p.add_argument("--data", default="")
    p.add_argument("--out", default="")
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--mallopt", action="store_true")
    p.add_argument("--reference-ops", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch", type=int, default=32, help="batch of the official 3-view model (default 32)")
    p.add_argument("--tiny-batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="measured steps per case (official preset)")
    p.add_argument("--tiny-steps", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    p.add_argument("--only", choices=("official", "tiny"), default=None)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    from crossclr_infer.synth import generate_synthetic

    with tempfile.TemporaryDirectory(prefix="bench_train_") as d:
        tmp = Path(d)
        need = max(args.batch * (args.steps + args.warmup), args.tiny_batch * (args.tiny_steps + args.warmup))
        per_class = int(need / 0.55 / 10) + 8  # ~60% of the synthetic samples fall in the train split
        data = generate_synthetic(tmp / "bench.h5", classes=10, per_class=per_class, seed=0)
        rows: dict[tuple, dict] = {}
        plan = []
        if args.only in (None, "official"):
            o = ("crossclr-ntu60-xsub", args.batch, args.steps)
            plan += [(*o, s, b, True) for s in ("single", "cross") for b in (False, True)]
            plan += [(*o, "single", b, False) for b in (False, True)]
            plan += [(*o, "single", False, False, False)]  # the official operations, fp32, no mallopt
        if args.only in (None, "tiny"):
            t = ("tiny", args.tiny_batch, args.tiny_steps)
            plan += [(*t, s, b, m) for s in ("single", "cross") for b in (False, True) for m in (True, False)
                     if m or s == "single"]
        for preset, batch, steps, stage, bf16, mallopt, *ops in plan:
            fast = not ops or ops[0]
            r = _measure(preset, stage, bf16, mallopt, data, batch, steps, args.warmup, args.workers, tmp,
                         fast)
            rows[(preset, stage, bf16, mallopt) if fast else (preset, "reference")] = r
            print(f"{preset:22s} batch {batch:3d} {stage:6s} {'bf16' if bf16 else 'fp32'} "
                  f"mallopt {'on ' if mallopt else 'off'} {'fast ops' if fast else 'official ops'}  "
                  f"{r['samples_per_s']:8.2f} samples/s  "
                  f"data wait {100 * r['wait_share']:5.1f}%  ({r['steps']} steps)", flush=True)

        print("\nratios (same run)")
        for preset in ("crossclr-ntu60-xsub", "tiny"):
            for stage in ("single", "cross"):
                fp32 = rows.get((preset, stage, False, True))
                bf16 = rows.get((preset, stage, True, True))
                if fp32 and bf16:
                    print(f"  {preset:22s} {stage:6s} bf16 / fp32            "
                          f"{bf16['samples_per_s'] / fp32['samples_per_s']:5.2f}x")
                for prec in (False, True):
                    on, off = rows.get((preset, stage, prec, True)), rows.get((preset, stage, prec, False))
                    if on and off:
                        print(f"  {preset:22s} {stage:6s} mallopt on / off ({'bf16' if prec else 'fp32'})  "
                              f"{on['samples_per_s'] / off['samples_per_s']:5.2f}x")
                ref = rows.get((preset, "reference"))
                for prec in (False, True):
                    r = rows.get((preset, stage, prec, True))
                    if r and ref:
                        print(f"  {preset:22s} {stage:6s} {'bf16' if prec else 'fp32'} vs official ops "
                              f"(fp32, no mallopt, single stage, same run)  "
                              f"{r['samples_per_s'] / ref['samples_per_s']:5.2f}x")
                if preset != "tiny":
                    for prec in (False, True):
                        r = rows.get((preset, stage, prec, True))
                        if r:
                            print(f"  {preset:22s} {stage:6s} {'bf16' if prec else 'fp32'} vs official code "
                                  f"({OFFICIAL_REFERENCE} samples/s, fp32)  "
                                  f"{r['samples_per_s'] / OFFICIAL_REFERENCE:5.2f}x")


if __name__ == "__main__":
    main()
