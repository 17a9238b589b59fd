"""Peak resident memory of ``crossclr linear`` on an official-size MAMP transformer: chunked vs unchunked.

    python benchmarks/bench_memory.py [--per-class 216] [--threads 2] [--keep DIR]

Builds a synthetic cache with MAMP's 120 frames (``crossclr synth --frames 120``; 2 classes, ``--per-class``
samples each, so that the training split holds at least 256 samples and feature extraction really encodes
batches of 256) and a random-init checkpoint of the ``mamp-ntu60-xsub`` preset (official sizes: width 256,
8 blocks, 8 heads, 750 tokens per body, 2 bodies). Then runs ``crossclr linear --batch-size 256 --epochs 1``
in a subprocess per row and reads the peak RSS as ``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a small
launcher process (the launcher holds no torch, so the fork-time RSS a child inherits is negligible):

- ``chunked``: today's code (fused attention; no-grad ``forward_features`` in chunks sized by the activation
  budget);
- ``unchunked``: the same with ``SkeletonTransformer.feature_chunk = 0`` (one forward per encode batch of
  256), the batching of before with fused attention;
- ``before`` (computed, not run): the code before fused attention held one (256·2, 8, 750, 750) float32 score
  tensor per block, and its softmax beside it; the row prints that size (running it needs more memory than
  a shared 23 GB machine should give).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A launcher without torch: runs one command, prints its children's peak RSS (KiB on Linux) as JSON.
LAUNCHER = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print(json.dumps({'rc': r.returncode, "
            "'maxrss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def linear_code(data: Path, ckpt: Path, out: Path, chunk: int | None, threads: int) -> str:
    """Python source that runs ``crossclr linear --batch-size 256`` in-process, feature_chunk set first."""
    args = ["linear", "--data", str(data), "--checkpoint", str(ckpt), "--out", str(out),
            "--batch-size", "256", "--epochs", "1", "--device", "cpu"]
    return (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import torch; torch.set_num_threads({threads}); "
            "from training.encoders.transformer import SkeletonTransformer; "
            f"SkeletonTransformer.feature_chunk = {chunk!r}; import cli; cli.main({args!r})")


def run_row(code: str) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``python -c code`` run under the launcher."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", code], check=True,
                         capture_output=True, text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        raise RuntimeError(f"crossclr linear failed (exit {res['rc']}):\n{out.stderr[-2000:]}")
    return res["maxrss_kib"] / 1024, time.perf_counter() - t


def make_inputs(work: Path, per_class: int) -> tuple[Path, Path, int]:
    """(cache, random-init official-size MAMP checkpoint, training-split size)."""
    from benchmarks.real_data import initial_checkpoint
    from crossclr_infer.cache import open_cache
    from training.config import load_config

    cache = work / "synth120.h5"
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "synth", "--out", str(cache), "--classes", "2",
                    "--per-class", str(per_class), "--frames", "120"], check=True, capture_output=True)
    cfg = load_config("mamp-ntu60-xsub", {"device": "cpu", "tensorboard": False, "batch_size": 8})
    ckpt = initial_checkpoint(cache, work / "random", cfg, calibrate=False)
    with open_cache(cache) as c:
        n_train = len(c.split("train"))
    return cache, ckpt, n_train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--per-class", type=int, default=216, help="samples per class (2 classes; 60 %% train)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    p.add_argument("--skip-unchunked", action="store_true", help="only the chunked row")
    args = p.parse_args()

    from crossclr_infer.hardware import cpu_caps

    print(f"# {cpu_caps().line()}; {args.threads} threads; pid {os.getpid()}")
    with tempfile.TemporaryDirectory() as td:
        work = args.keep or Path(td)
        work.mkdir(parents=True, exist_ok=True)
        cache, ckpt, n_train = make_inputs(work, args.per_class)
        batch = min(256, n_train)
        print(f"cache: {n_train} training samples of (3, 120, 25, 2); encode batch {batch}; "
              f"checkpoint: mamp-ntu60-xsub, random init")
        rows = [("chunked", None)] + ([] if args.skip_unchunked else [("unchunked", 0)])
        res = {}
        for name, chunk in rows:
            res[name] = run_row(linear_code(cache, ckpt, work / f"lin-{name}", chunk, args.threads))
        print("\n## crossclr linear --batch-size 256, peak resident memory (ru_maxrss of the child)")
        for name, (rss, secs) in res.items():
            print(f"{name:10s} {rss:8.0f} MiB  ({secs:.0f} s)")
        score = batch * 2 * 8 * 750 * 750 * 4
        print(f"before     one (B·M, H, L, L) = ({batch * 2}, 8, 750, 750) float32 score tensor = "
              f"{score / 2**30:.1f} GiB per block, its softmax another {score / 2**30:.1f} GiB (not run)")
        if "unchunked" in res:
            print(f"chunked / unchunked peak RSS: {res['chunked'][0] / res['unchunked'][0]:.2f}x")


if __name__ == "__main__":
    main()
