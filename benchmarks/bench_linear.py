"""Linear evaluation speed: heads trained on features encoded once vs re-encoding every epoch (official way).

Both runs use the same frozen encoders (official quarter-width ST-GCN by default), the same data, seed and
schedule, in one process; the cached run's time includes its one-time encoding of both splits. Prints both
times, the speed-up ratio and the largest head difference (the two must agree).

    OMP_NUM_THREADS=2 python benchmarks/bench_linear.py --train 256 --eval 128 --epochs 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from crossclr_infer.layouts import BUILTIN_LAYOUTS
from training.encoders.config import EncoderConfig
from training.encoders.stgcn import STGCN
from training.protocols.io import encode_source
from training.protocols.linear import CachedFeatures, LinearConfig, ReencodingFeatures, train_linear


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=int, default=256, help="training samples")
    ap.add_argument("--eval", type=int, default=128, help="evaluation samples")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--streams", default="joint,motion,bone")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width", type=int, default=16, help="base channels (16 = official quarter width)")
    args = ap.parse_args()

    dev = torch.device(args.device)
    layout = BUILTIN_LAYOUTS["ntu-rgb+d"]
    streams = args.streams.split(",")
    torch.manual_seed(0)
    cfg = EncoderConfig(base_channels=args.width)
    encoders = {v: STGCN(layout, cfg).to(dev).eval() for v in streams}
    rng = np.random.default_rng(0)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(rng.normal(size=(n, 3, args.frames, layout.num_joints, 2)).astype(np.float32))
        return x.to(dev), torch.from_numpy(rng.integers(0, args.classes, n))

    xt, yt = data(args.train)
    xv, yv = data(args.eval)
    lcfg = LinearConfig(epochs=args.epochs, batch_size=args.batch_size)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    sync()
    t0 = time.perf_counter()
    ft = encode_source(encoders, lambda i: xt[i].cpu().numpy(), len(xt), layout, device=dev)
    fv = encode_source(encoders, lambda i: xv[i].cpu().numpy(), len(xv), layout, device=dev)
    cached = train_linear(
        CachedFeatures(ft, yt, dev), CachedFeatures(fv, yv, dev), args.classes, streams, lcfg, device=dev
    )
    sync()
    t_cached = time.perf_counter() - t0

    t0 = time.perf_counter()
    reenc = train_linear(
        ReencodingFeatures(encoders, xt, yt, layout, cfg.hidden_dim, dev),
        ReencodingFeatures(encoders, xv, yv, layout, cfg.hidden_dim, dev),
        args.classes,
        streams,
        lcfg,
        device=dev,
    )
    sync()
    t_reenc = time.perf_counter() - t0

    diff = max((cached.heads[v].weight - reenc.heads[v].weight).abs().max().item() for v in streams)
    print(
        f"device {dev}, streams {streams}, {args.train} train / {args.eval} eval, {args.epochs} epochs, "
        f"width {args.width}"
    )
    print(f"re-encoding every epoch: {t_reenc:8.2f} s")
    print(f"encode once + cached   : {t_cached:8.2f} s")
    print(f"speed-up               : {t_reenc / t_cached:8.2f}x  (max |head difference| {diff:.2e})")


if __name__ == "__main__":
    main()
