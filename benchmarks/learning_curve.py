"""Learning curve: how much pretraining compute buys how much, against the random init of the same seed.

One command (CPU, fixed seeds)::

    CROSSCLR_THREADS=1 python benchmarks/learning_curve.py --dataset msr --points 100,300,1000,3000,10000 \\
        --seeds 3 --out runs/learning_curve

For one data set and one method of each family, 3s-CrosSCLR (ST-GCN, cross-view mining from half of the
epochs) and 3s-MAMP small (``real_data.SmallTransformer``), a separate pretraining of every budget in
``--points`` optimizer steps (``real_data.SmallData`` otherwise: its epochs, learning-rate drop at 80 % and
cosine schedule follow the budget, so a point is a finished run of that length, not a snapshot of a longer
one; whole epochs, at least 2: the steps run are given beside the asked ones). Each is evaluated as in
``real_data.py``: linear probe (last epoch) and kNN on the frozen encoders, BatchNorm statistics re-measured
on the training split; the score is the paired difference (same seed) to the random init of the same
architecture and streams. CPU time (``time.process_time``, one thread) of each pretraining is recorded per
point. Results: ``OUT/results.json``, ``OUT/results.md`` and ``OUT/learning_curve.png``.

Cost: the sum of the points' steps per seed and method (13,400 steps for the default points). Measured on
MSR Action3D (AMD EPYC, one thread, shared machine): 3s-CrosSCLR about 0.23 CPU s per step of batch 16,
3s-MAMP small about 0.11, so the 10,000-step point is about 40 and 20 CPU minutes per seed, and the whole
default curve about 80 CPU minutes per seed: run the long points in separate processes (``--points 3000``,
``--points 10000``, different ``--out``) and ``--merge`` their results.json files.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import real_data as rdata  # noqa: E402
from benchmarks import real_datasets as rd  # noqa: E402
from benchmarks import semi_supervised as semi  # noqa: E402

log = logging.getLogger("learning_curve")

POINTS = (100, 300, 1000, 3000, 10000)
# method -> (its pretraining in semi.pretrain_all, its random init, label); both evaluated on 3 streams
METHODS: dict[str, tuple[str, str, str]] = {
    "crossclr-3s": ("crossclr-3s", "random", "3s-CrosSCLR"),
    "mamp": ("t-mamp", "t-random", "3s-MAMP small"),
}


def evaluate(cache: Path, ckpt: Path, out: Path, hp: rdata.SmallData, calibrated: bool,
             transformer: bool) -> dict[str, Any]:
    """Linear (last epoch) and kNN top-1 of the 3 streams fused, BN statistics from the training split; the
    transformer's linear probe standardises the features first (MAMP's own probe: the plain one diverged on
    them, docs/protocols.md)."""
    clean = ckpt if calibrated else rdata.recalibrate(ckpt, cache)
    rec = rdata.evaluate(cache, clean, rdata.JMB, out, hp, standardize=transformer)
    probe = "standardized" if transformer else "plain"
    return {"linear": rec["linear_last"], "knn": rec["knn"], "probe": probe}


def run_seed(ds: rd.RealDataset, split: rd.Split, caches: dict[str, Path | None], work: Path,
             hp: rdata.SmallData, th: rdata.SmallTransformer, methods: list[str], points: list[int]
             ) -> list[dict[str, Any]]:
    """The random inits and every (method, point) pretraining of one seed, each evaluated."""
    n = len(split.train)
    base = work / f"{ds.name}-seed{hp.seed}"
    shutil.rmtree(base, ignore_errors=True)
    family = {"random": "stgcn", "crossclr-3s": "stgcn", "t-random": "transformer", "t-mamp": "transformer"}
    randoms = {METHODS[m][1] for m in methods}
    ckpts, _ = semi.pretrain_all(randoms, caches["stgcn"], caches["transformer"], base, hp, th, n)
    records = []
    for r in sorted(randoms):
        rec = evaluate(caches[family[r]], ckpts[r], base / f"eval-{r}", hp, calibrated=r == "random",
                       transformer=family[r] == "transformer")
        records.append({"dataset": ds.name, "seed": hp.seed, "method": r, "steps": 0, "cpu_s": 0.0, **rec})
    for steps in points:
        hps = replace(hp, steps=steps)
        for m in methods:
            start = METHODS[m][0]
            c0, t0 = semi.cpu_now(), time.perf_counter()
            got, cpu = semi.pretrain_all({start}, caches["stgcn"], caches["transformer"], base / f"{steps}",
                                         hps, th, n)
            rec = evaluate(caches[family[start]], got[start], base / f"eval-{m}-{steps}", hps, False,
                           transformer=family[start] == "transformer")
            records.append({"dataset": ds.name, "seed": hp.seed, "method": m, "steps": steps,
                            "epochs": hps.epochs(n), "actual_steps": hps.epochs(n) * (n // hps.batch_size),
                            "cpu_s": cpu[start], "wall_s": time.perf_counter() - t0,
                            "eval_cpu_s": semi.cpu_now() - c0 - cpu[start], **rec})
            shutil.rmtree(base / f"{steps}" / start, ignore_errors=True)
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, steps): top-1 and its paired difference to the method's random init, over seeds."""
    def by_seed(method: str, steps: int, key: str) -> dict[int, float]:
        return rdata.seed_means(records, key, method=method, steps=steps)

    out = []
    for m, steps in sorted({(r["method"], r["steps"]) for r in records if r["method"] in METHODS}):
        line: dict[str, Any] = {"method": m, "label": METHODS[m][2], "steps": steps}
        for key in ("linear", "knn"):
            mine = by_seed(m, steps, key)
            line[key] = rdata._stats(list(mine.values()))
            line[f"{key}_vs_random"] = rdata.paired_stats(mine, by_seed(METHODS[m][1], 0, key))
        cpus = [r["cpu_s"] for r in records if r["method"] == m and r["steps"] == steps]
        line["cpu_s"], line["seeds"] = sum(cpus) / len(cpus), sorted(by_seed(m, steps, "linear"))
        line["actual_steps"] = next(r.get("actual_steps") for r in records
                                    if (r["method"], r["steps"]) == (m, steps))
        out.append(line)
    return out


def markdown(summary: list[dict[str, Any]], dataset: str) -> str:
    lines = rdata.table_head([f"{dataset}: method", "pretraining steps (run)", "linear top-1",
                             "Δ linear vs random init", "kNN top-1", "Δ kNN vs random init", "pretrain CPU s",
                             "seeds"], 1)
    for s in summary:
        lines.append(f"| {s['label']} | {s['steps']} ({s['actual_steps']}) | {rdata._pm(s['linear'])} | "
                     f"{rdata._diff(s['linear_vs_random'])} | {rdata._pm(s['knn'])} | "
                     f"{rdata._diff(s['knn_vs_random'])} | {s['cpu_s']:.0f} | {len(s['seeds'])} |")
    return "\n".join(lines)


def plot_curve(summary: list[dict[str, Any]], out: Path, *, title: str, batch: int) -> Path:
    """Paired Δ top-1 vs random init (mean ± std over seeds) against pretraining steps (log axis), linear and
    kNN side by side, with the training style of ``training.plots``."""
    from training.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key in zip(axes, ("linear", "knn"), strict=True):
        for m in dict.fromkeys(s["method"] for s in summary):
            pts = [s for s in summary if s["method"] == m and s[f"{key}_vs_random"] is not None]
            if not pts:
                continue
            stats = [s[f"{key}_vs_random"] for s in pts]
            ax.errorbar([s.get("actual_steps") or s["steps"] for s in pts], [d["mean"] for d in stats],
                        yerr=[d["std"] or 0.0 for d in stats], marker="o", capsize=3, label=pts[0]["label"])
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(f"pretraining optimizer steps run (batch {batch})")
        ax.set_ylabel(f"Δ {'linear' if key == 'linear' else 'kNN'} top-1 vs random init (points)")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, out)


def write_results(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    summary = summarise(records)
    out.mkdir(parents=True, exist_ok=True)
    dataset = records[0]["dataset"]
    seeds = sorted({r["seed"] for r in records})
    png = plot_curve(summary, out / "learning_curve.png",
                     title=f"{dataset}: pretraining budget vs random init, seeds {seeds} "
                           f"(bars: std over seeds; a point without one ran one seed)",
                     batch=meta["hyperparameters"]["batch_size"])
    md = (f"{markdown(summary, dataset)}\n\nΔ: paired difference to the random init of the same architecture "
          f"(same seed), mean ± std [min, max] over seeds {seeds}; the transformer's linear probe "
          f"standardises its features (MAMP's probe). Plot: {png.name}.\nMachine: "
          f"{meta['machine']}. Command: `{meta['command']}`.\n")
    return rdata.write_report(out, {**meta, "summary": summary, "records": records}, md)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "learning_curve")
    p.add_argument("--dataset", default="msr", choices=list(rd.DATASETS))
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {list(METHODS)}")
    p.add_argument("--points", default=",".join(map(str, POINTS)), help="pretraining steps, comma list")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny encoders (tests; not a result)")
    p.add_argument("--merge", type=Path, nargs="+", default=None, help="only merge these results.json files")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        meta = {"machine": parts[0]["machine"], "command": "; ".join(x["command"] for x in parts),
                "hyperparameters": parts[0]["hyperparameters"], "transformer": parts[0]["transformer"]}
        unique = {(r["seed"], r["method"], r["steps"]): r for x in parts for r in x["records"]}
        print(write_results(args.out, list(unique.values()), meta))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if sorted(set(methods) - set(METHODS)):
        raise SystemExit(f"--methods {args.methods}: expected some of {list(METHODS)}")
    points = [int(x) for x in args.points.split(",") if x.strip()]
    defaults = rdata.SmallData()
    hp, th = semi.hyperparameters(argparse.Namespace(steps=defaults.steps, frames=defaults.frames,
                                                     seed=args.seed, tiny=args.tiny,
                                                     supervised_steps=defaults.supervised_steps))
    ds = rd.load_dataset(args.dataset, args.data)
    split = rd.standard_splits(ds)[0]
    caches = semi.prepare_caches(ds, split, args.out, hp, th, stgcn="crossclr-3s" in methods,
                                 transformer="mamp" in methods)
    given = sys.argv[1:] if argv is None else argv
    meta = {"command": "python benchmarks/learning_curve.py " + " ".join(given),
            "machine": rdata.machine_line(), "hyperparameters": asdict(hp),
            "transformer": asdict(th)}
    records: list[dict[str, Any]] = []
    md = ""
    for seed in range(args.seed, args.seed + args.seeds):
        records += run_seed(ds, split, caches, args.out, replace(hp, seed=seed), th, methods, points)
        md = write_results(args.out, records, meta)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
