"""How hard is the synthetic data? Linear classifiers on raw flattened coordinates, train -> val (xsub).

    python benchmarks/synth_baseline.py [--classes 10] [--per-class 60] [--seeds 0 1 2]

Prints validation top-1 of a logistic regression and of a ridge least-squares classifier on the
preprocessed (3, 50, 25, 2) joints flattened, next to chance; a nearest-neighbour figure is printed for
context. The generator is tuned so that the linear figures stay well below 100% (docs/design.md: learnable,
not trivial).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from crossclr_infer.cache import open_cache
from crossclr_infer.synth import generate_synthetic


def ridge(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, k: int, lam: float = 10.0) -> np.ndarray:
    w = np.linalg.solve(xtr @ xtr.T + lam * np.eye(len(xtr)), np.eye(k)[ytr])  # kernel form (N, K)
    return (xva @ xtr.T @ w).argmax(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # pragma: no cover - the viz extra
        LogisticRegression = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            t0 = time.perf_counter()
            path = generate_synthetic(Path(tmp) / f"s{seed}.h5", classes=args.classes,
                                      per_class=args.per_class, seed=seed)
            gen_s = time.perf_counter() - t0
            with open_cache(path) as c:
                tr, va = c.split("train"), c.split("val")
                xtr = tr.read_all().reshape(len(tr), -1)  # (N, C, T, V, M) -> (N, C·T·V·M)
                xva = va.read_all().reshape(len(va), -1)
                ytr, yva = tr.labels, va.labels
            mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
            ztr, zva = (xtr - mu) / sd, (xva - mu) / sd
            acc_ridge = float((ridge(ztr, ytr, zva, args.classes) == yva).mean())
            acc_lr = float("nan")
            if LogisticRegression is not None:
                clf = LogisticRegression(C=0.1, max_iter=3000).fit(ztr, ytr)
                acc_lr = float(clf.score(zva, yva))
            d = (zva ** 2).sum(1)[:, None] - 2 * zva @ ztr.T + (ztr ** 2).sum(1)[None]
            acc_1nn = float((ytr[d.argmin(1)] == yva).mean())
            rows.append((acc_lr, acc_ridge, acc_1nn))
            print(f"seed {seed}: {len(tr)} train / {len(va)} val, generated in {gen_s:.2f} s; val top-1: "
                  f"logistic {acc_lr:.3f}, ridge {acc_ridge:.3f}, 1-NN {acc_1nn:.3f}, "
                  f"chance {1 / args.classes:.3f}")
    m = np.nanmean(np.array(rows), axis=0)
    print(f"mean over {len(rows)} seeds: logistic {m[0]:.3f}, ridge {m[1]:.3f}, 1-NN {m[2]:.3f} "
          f"(chance {1 / args.classes:.3f}; ratio logistic/chance {m[0] * args.classes:.1f}x)")


if __name__ == "__main__":
    main()
