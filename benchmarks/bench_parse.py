"""Speed of the vectorized NTU ``.skeleton`` reader against plain line-by-line Python readers.

All readers parse the same real files (../shared/data/ntu_skeleton_samples, read into memory first, so
disk speed does not count) in the same run; every baseline's xyz is checked equal to ours first.

Baselines:
  gendata-style  every field of every line into a dict (what the usual NTU gendata scripts do)
  minimal        only what we keep: counts, body IDs, float() of x, y, z
  line-reader    crossclr's own validating line reader (the fallback for unusual files)

    python benchmarks/bench_parse.py [--repeat 20] [--dir PATH]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from crossclr_infer.ntu import parse_skeleton_bytes, parse_skeleton_lines

DEFAULT_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ntu_skeleton_samples"
BODY_KEYS = ("bodyID", "clippedEdges", "handLeftConfidence", "handLeftState", "handRightConfidence",
             "handRightState", "isRestricted", "leanX", "leanY", "trackingState")
JOINT_KEYS = ("x", "y", "z", "depthX", "depthY", "colorX", "colorY", "orientationW", "orientationX",
              "orientationY", "orientationZ", "trackingState")


def gendata_style(data: bytes) -> np.ndarray:
    """Plain reader building dicts of every field, then the (B_total, 25, 3) xyz."""
    lines = iter(data.decode("ascii").splitlines())
    frames = []
    for _ in range(int(next(lines))):
        bodies = []
        for _ in range(int(next(lines))):
            body = {k: float(v) for k, v in zip(BODY_KEYS, next(lines).split(), strict=True)}
            body["joints"] = [{k: float(v) for k, v in zip(JOINT_KEYS, next(lines).split(), strict=True)}
                              for _ in range(int(next(lines)))]
            bodies.append(body)
        frames.append(bodies)
    return np.array([[[j["x"], j["y"], j["z"]] for j in b["joints"]] for f in frames for b in f], np.float32)


def minimal(data: bytes) -> np.ndarray:
    """Plain reader converting only the counts, the body IDs and x, y, z."""
    lines = data.split(b"\n")
    pos = 1
    ids, xyz = [], []
    for _ in range(int(lines[0])):
        n = int(lines[pos])
        pos += 1
        for _ in range(n):
            ids.append(int(lines[pos].split(None, 1)[0]))
            joints = int(lines[pos + 1])
            pos += 2
            for line in lines[pos:pos + joints]:
                x, y, z = line.split(None, 3)[:3]
                xyz.append((float(x), float(y), float(z)))
            pos += joints
    return np.array(xyz, np.float32).reshape(-1, 25, 3)  # (B*V, 3) -> (B, V, 3)


def best_of(fn: Callable[[bytes], object], files: list[bytes], repeat: int) -> float:
    """Seconds for one pass over all files: the median of ``repeat`` passes."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for data in files:
            fn(data)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    paths = sorted(args.dir.rglob("*.skeleton"))
    if not paths:
        raise SystemExit(f"no .skeleton files under {args.dir}")
    files = [p.read_bytes() for p in paths]
    mb = sum(len(d) for d in files) / 1e6
    ours = lambda d: parse_skeleton_bytes(d).xyz  # noqa: E731
    baselines = {"gendata-style": gendata_style, "minimal": minimal,
                 "line-reader": lambda d: parse_skeleton_lines(d).xyz}
    for name, fn in baselines.items():  # same answer first
        for p, d in zip(paths, files, strict=True):
            np.testing.assert_array_equal(fn(d), ours(d), err_msg=f"{name} on {p.name}")
    t_ours = best_of(ours, files, args.repeat)
    print(f"{len(files)} files, {mb:.2f} MB, median of {args.repeat} passes")
    print(f"  vectorized      {t_ours * 1e3:8.2f} ms/pass  {len(files) / t_ours:8.0f} files/s")
    for name, fn in baselines.items():
        t = best_of(fn, files, args.repeat)
        print(f"  {name:15s} {t * 1e3:8.2f} ms/pass  {len(files) / t:8.0f} files/s   "
              f"vectorized is {t / t_ours:5.1f}x faster")


if __name__ == "__main__":
    main()
