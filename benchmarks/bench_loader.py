"""Random-access read speed of a cache: per-sample reads (CacheSplit) vs h5py fancy indexing.

    python benchmarks/bench_loader.py [CACHE.h5] [--split train] [--batch 128] [--batches 20]

Without a cache a synthetic one is generated (10 classes x 60). Both readers fetch the same random
mini-batches (sorted indices for h5py, which requires increasing order); the figure that matters is the
ratio, measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from crossclr_infer.cache import open_cache
from crossclr_infer.synth import generate_synthetic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cache", nargs="?", type=Path)
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.cache or generate_synthetic(Path(tmp) / "bench.h5", classes=10, per_class=60, seed=0)
        with open_cache(path) as c:
            split = c.split(args.split)
            n = len(split)
            rng = np.random.default_rng(args.seed)
            size = min(args.batch, n)
            batches = [np.sort(rng.choice(n, size=size, replace=False)) for _ in range(args.batches)]
            total = sum(len(b) for b in batches)

            t0 = time.perf_counter()
            per_sample = [split.read(b) for b in batches]
            t_per = time.perf_counter() - t0

            t0 = time.perf_counter()
            single = [np.stack([split[i][0] for i in b]) for b in batches]
            t_item = time.perf_counter() - t0

            with h5py.File(path, "r") as f:
                ds = f[args.split]["data"]
                t0 = time.perf_counter()
                fancy = [ds[b] for b in batches]
                t_fancy = time.perf_counter() - t0
        for a, b, d in zip(per_sample, single, fancy, strict=True):
            assert np.array_equal(a, d) and np.array_equal(b, d)
    print(f"cache {path}: split {args.split!r}, {n} samples of {c.sample_shape}, {args.batches} random "
          f"batches of {args.batch}")
    print(f"CacheSplit.read (per-sample chunk reads): {total / t_per:10.0f} samples/s")
    print(f"CacheSplit[i] one at a time:              {total / t_item:10.0f} samples/s")
    print(f"h5py fancy indexing ds[sorted idx]:       {total / t_fancy:10.0f} samples/s")
    print(f"ratio per-sample / fancy: {t_fancy / t_per:.1f}x   ([i] / fancy: {t_fancy / t_item:.1f}x)")


if __name__ == "__main__":
    main()
