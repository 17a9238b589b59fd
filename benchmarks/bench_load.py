"""Training speed beside a competing busy process: ``crossclr train --config tiny`` quiet and loaded, per
thread setting (docs/reliability.md, "Training under load").

Each measurement is one ``crossclr train --config tiny`` run (3 streams, ``--epochs`` epochs, the cross-view
stage in the second half, CPU) in a fresh process on a small synthetic cache; its figure is the run's
samples/s over all its epochs (the samples of every epoch over the sum of ``epoch_time_s`` in
metrics.jsonl: thread tries of the default setting included). "Loaded" runs it beside one
``python -c "while True: pass"`` started just before it and killed after it. Settings:

- ``before``: the thread count fixed at torch's default (every core; ``CROSSCLR_THREADS=<cores>``), what
  training did before ``training.threads``;
- ``auto``: the new default, ``training.threads.ThreadGovernor`` measuring 1 thread against every core;
- ``one``: ``CROSSCLR_THREADS=1``;
- ``passive``: every core with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning);
- ``spin10k``: every core with ``GOMP_SPINCOUNT=10000`` (libgomp spins 10k iterations, not 300k, before it
  sleeps).

Rows run interleaved (round r: every setting quiet then loaded; odd rounds in reverse order) and each figure
is the median over ``--rounds``, so a change of the machine's load hits every setting alike. Ratios, all
from this one run: ``slowdown`` = the setting's quiet / its loaded samples/s; ``vs before quiet`` = the
``before`` quiet figure / this figure (the goal: loaded no more than 2.5, quiet within 1.1).

    python benchmarks/bench_load.py                      # every setting, 1 round (about 5 minutes)
    python benchmarks/bench_load.py --settings before,auto --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = ("before", "auto", "one", "passive", "spin10k")


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def setting_env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("CROSSCLR_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    every = str(cores())
    env.update({"before": {"CROSSCLR_THREADS": every}, "auto": {}, "one": {"CROSSCLR_THREADS": "1"},
                "passive": {"CROSSCLR_THREADS": every, "OMP_WAIT_POLICY": "PASSIVE"},
                "spin10k": {"CROSSCLR_THREADS": every, "GOMP_SPINCOUNT": "10000"}}[name])
    return env


def crossclr(args: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"crossclr {' '.join(args)} failed:\n{proc.stderr[-2000:]}")


def train_rate(cache: Path, out: Path, env: dict[str, str], epochs: int, loaded: bool) -> float:
    """samples/s of one training run (module docstring), beside a busy process when ``loaded``."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if loaded else None
    try:
        if busy is not None:
            time.sleep(0.5)  # the competitor is running before training starts
        crossclr(["train", "--data", str(cache), "--config", "tiny", "--out", str(out), "--streams",
                  "joint,motion,bone", "--epochs", str(epochs), "--cross-epoch", str(epochs // 2),
                  "--device", "cpu", "--no-progress"], env)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ep = [r for r in records if r.get("kind") == "epoch"]
    samples = sum(r["samples_per_s"] * r["epoch_time_s"] for r in ep)
    return samples / sum(r["epoch_time_s"] for r in ep)


def cpu_name() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    return f"{name} ({', '.join(isa)})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--settings", default=",".join(SETTINGS), help=f"comma-separated, from {SETTINGS}")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--per-class", type=int, default=60)
    args = ap.parse_args()
    names = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = set(names) - set(SETTINGS)
    if unknown:
        raise SystemExit(f"unknown settings {sorted(unknown)}; expected some of {SETTINGS}")
    import torch

    print(f"CPU: {cpu_name()}; {cores()} usable cores; load average {os.getloadavg()[0]:.2f} at start; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads by default")
    rates: dict[tuple[str, bool], list[float]] = {(n, ld): [] for n in names for ld in (False, True)}
    with tempfile.TemporaryDirectory(prefix="bench_load_") as tmp:
        cache = Path(tmp) / "synth.h5"
        crossclr(["synth", "--out", str(cache), "--classes", str(args.classes), "--per-class",
                  str(args.per_class)])
        n = 0
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                for loaded in (False, True) if r % 2 == 0 else (True, False):
                    n += 1
                    rate = train_rate(cache, Path(tmp) / f"run{n}", setting_env(name), args.epochs, loaded)
                    rates[(name, loaded)].append(rate)
                    print(f"  round {r + 1} {name:8s} {'loaded' if loaded else 'quiet ':6s} {rate:7.1f} "
                          f"samples/s (load average {os.getloadavg()[0]:.2f})", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nmedian samples/s of {args.rounds} round(s), {args.epochs}-epoch runs, tiny preset, 3 streams")
    print(f"{'setting':10s} {'quiet':>8s} {'loaded':>8s} {'slowdown':>9s} {'quiet vs before':>16s} "
          f"{'loaded vs before quiet':>23s}")
    base = med.get(("before", False))
    for name in names:
        q, ld = med[(name, False)], med[(name, True)]
        vs = (f"{base / q:16.2f}x {base / ld:22.2f}x" if base else f"{'-':>16s} {'-':>23s}")
        print(f"{name:10s} {q:8.1f} {ld:8.1f} {q / ld:8.2f}x {vs}")


if __name__ == "__main__":
    main()
