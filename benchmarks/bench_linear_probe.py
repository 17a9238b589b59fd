"""Linear probe on real data: the default (SGD lr 3.0 on raw features) against ``--standardize``.

For each data set (MSR Action3D xsub, UTKinect xsub, SBU fold 1) and each encoder family (ST-GCN with its
BatchNorm statistics measured on the training split, and the MAMP transformer; both at random init, the
encoders ``benchmarks/real_data.py`` uses), the three streams are encoded once and the heads of the linear
protocol (joint fusion, 100 epochs, batch 128: the CLI defaults) are trained with and without
standardisation, for a few seeds. Prints a table (last-epoch fused top-1, first and largest epoch loss, and
whether ``training.protocols.linear.divergence`` flags the run when asked not to stop) and writes
``results.json``::

    python benchmarks/bench_linear_probe.py --data ../shared/data --out runs/linear_probe --seeds 3
    python benchmarks/bench_linear_probe.py --pretrained ...   # 3s-SkeletonCLR / 3-stream MAMP first

The figures and what they decided are in docs/protocols.md ("Standardised probe, measured").
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import real_data as bench  # noqa: E402
from benchmarks import real_datasets as rd  # noqa: E402

log = logging.getLogger("bench_linear_probe")
DATASETS = ("msr", "utkinect", "sbu")


def encoders_for(ds: rd.RealDataset, work: Path, family: str, pretrained: bool) -> tuple[Path, Path]:
    """(cache, checkpoint) of an encoder of ``family`` ("stgcn" | "transformer"): at random init, or
    ``pretrained`` as ``benchmarks/real_data.py`` does (3s-SkeletonCLR with BatchNorm re-measured on the
    clean training split; 3-stream MAMP)."""
    from training.trainer import train

    hp, th = bench.SmallData(), bench.SmallTransformer()
    split = rd.standard_splits(ds)[0]
    n_train = len(split.train)
    if family == "stgcn":
        cache = bench.prepare(ds, split, work, hp)
        if pretrained:
            run = bench.Run("skeletonclr-3s", "ssl", bench.JMB)
            return cache, bench.recalibrate(bench.pretrain(run, cache, work / f"{ds.name}-stgcn-ssl", hp,
                                                           n_train), cache)
        return cache, bench.random_init(cache, work / f"{ds.name}-stgcn", hp, n_train)
    frames = bench.transformer_frames(hp, th)
    cache = bench.prepare(ds, split, work, replace(hp, frames=frames), suffix=f"-t{frames}")
    cfg = bench.transformer_config("mamp", hp, th, n_train)
    if pretrained:
        result = train(cfg, cache, work / f"{ds.name}-transformer-mamp", progress=False)
        if result.checkpoint is None:
            raise SystemExit(f"{ds.name}: MAMP pretraining wrote no checkpoint")
        return cache, result.checkpoint
    return cache, bench.initial_checkpoint(cache, work / f"{ds.name}-transformer", cfg, calibrate=False)


def probe(cache: Path, ckpt: Path, seeds: int) -> list[dict[str, Any]]:
    """Default and standardised probes on features encoded once, for ``seeds`` seeds."""
    from training.protocols.context import open_protocol
    from training.protocols.linear import LinearConfig, cached_features, train_linear

    with open_protocol(cache, ckpt, streams=list(bench.JMB), device="cpu") as ctx:
        train = cached_features(ctx, "train")
        val = cached_features(ctx, "val")
        num_class, streams = ctx.num_class, ctx.streams
    out = []
    for seed in range(seeds):
        for std in (False, True):
            cfg = LinearConfig(seed=seed, standardize=std, stop_on_divergence=False)
            t0 = time.process_time()
            res = train_linear(train, val, num_class, streams, cfg)
            losses = [r["loss"] for r in res.history]
            finite = [v for v in losses if math.isfinite(v)]
            out.append({"seed": seed, "standardize": std, "top1": res.last["fused"]["top1"],
                        "loss_first": losses[0], "loss_max": max(finite) if finite else float("nan"),
                        "loss_last": losses[-1], "diverged_at": res.diverged_at,
                        "cpu_s": time.process_time() - t0, "losses": losses})
    return out


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| data set | encoder | probe | top-1 per seed | mean | loss first → max → last | flagged |",
             "|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["family"], r["standardize"]) for r in records})
    for ds, fam, std in keys:
        rs = [r for r in records if (r["dataset"], r["family"], r["standardize"]) == (ds, fam, std)]
        accs = [r["top1"] for r in rs]
        losses = "; ".join(f"{r['loss_first']:.2f}→{r['loss_max']:.1f}→{r['loss_last']:.2f}" for r in rs)
        flagged = ",".join(str(r["diverged_at"]) if r["diverged_at"] else "-" for r in rs)
        lines.append(f"| {ds} | {fam} | {'standardize' if std else 'default'} | "
                     f"{' / '.join(f'{a:.1f}' for a in accs)} | {sum(accs) / len(accs):.1f} | {losses} | "
                     f"{flagged} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "linear_probe")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--families", default="stgcn,transformer")
    p.add_argument("--datasets", default=",".join(DATASETS))
    p.add_argument("--pretrained", action="store_true",
                   help="Pretrain the encoders first (as benchmarks/real_data.py) instead of random init.")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(1)
    records = []
    for name in a.datasets.split(","):
        ds = rd.load_dataset(name, a.data)
        for fam in a.families.split(","):
            cache, ckpt = encoders_for(ds, a.out, fam, a.pretrained)
            for r in probe(cache, ckpt, a.seeds):
                records.append({"dataset": name, "family": fam, "pretrained": a.pretrained, **r})
                print(name, fam, {k: v for k, v in r.items() if k != "losses"}, flush=True)
    text = table(records)
    print(f"CPU: {bench.cpu_model()}; torch {torch.__version__}, 1 thread\n{text}")
    (a.out / "results.json").write_text(json.dumps({"cpu": bench.cpu_model(), "records": records}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
