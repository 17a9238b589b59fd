"""Semi-supervised fine-tuning on real data: few labels, with and without self-supervised pretraining.

One command (CPU, fixed seeds)::

    CROSSCLR_THREADS=1 python benchmarks/semi_supervised.py --datasets msr --seeds 3 --out runs/semi

For every data set, split and seed it pretrains the encoders exactly as ``benchmarks/real_data.py`` does
(same ``SmallData`` hyperparameters and ``--steps`` budget: 3s-CrosSCLR = joint + motion + bone, cross-view
mining from half of the epochs; MAMP small = the ``SmallTransformer`` of ``--transformer``), then
fine-tunes each starting point end to end (``training.protocols.finetune.run_finetune``) on 10 %, 25 %, 50 %
and 100 % of the training labels (``--fractions``):

=================================  ====================================================================
method                             starting point
=================================  ====================================================================
random init (3s) / (joint)         the untrained ST-GCN encoders of the seed (``real_data.random_init``)
3s-CrosSCLR / CrosSCLR (joint)     the 3s-CrosSCLR pretraining, all three streams fused / the joint one
transformer, random init (joint)   the untrained small transformer of the seed
MAMP small (joint)                 the small transformer pretrained by MAMP
supervised (joint, all labels)     random init, all labels, ``supervised_steps`` (1000): the upper bound
=================================  ====================================================================

Labels: ``stratified_subset`` (the subsets of ``crossclr finetune --label-fraction``): per class
max(1, round(fraction · n_c)) training samples, drawn with the seed, so every method of a seed fine-tunes
on the SAME samples (the script checks it: the records hold a digest of the label indices). The test split
is the cache's evaluation split; it is never trained on.

Fine-tuning schedule (identical for every method and fraction): ``--ft-steps`` optimizer steps (default
200, the pretraining budget) of batch 16, no augmentation, momentum 0.9, weight decay 1e-4, lr x 0.1 at
80 %; SGD lr 0.1 for the ST-GCN (``SmallData.supervised_lr``); the transformer rows fine-tune with AdamW
(as MAMP does) at the MAMP pretraining's lr 1e-3 and weight decay 0.05 (``--transformer-optimizer sgd``:
SGD at 0.01, ``SmallTransformer.cross_lr``; with it the transformer's loss hardly moved in 200 steps:
ln(20) = 3.0 on MSR). The score is the top-1 at the last epoch (fused over streams for 3s rows), never the
best epoch.

Statistics: mean ± sample std over seeds, and for each pretrained method the paired difference (same seed,
split and fraction) to the random init of the same architecture and streams: mean ± std [min, max]
(``real_data._stats`` / ``_diff``). CPU time: ``time.process_time`` of each fine-tuning (the cell) and of
each pretraining, in seconds; run with ``--threads 1`` (the default) so CPU and wall time agree.
``--seed K --seeds 1`` in several processes, then ``--merge OUT1/results.json OUT2/results.json``, runs
seeds in parallel. Results: ``OUT/results.json``, ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import real_data as rdata  # noqa: E402
from benchmarks import real_datasets as rd  # noqa: E402

log = logging.getLogger("semi_supervised")

JMB = rdata.JMB
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


@dataclass(frozen=True)
class Method:
    """A fine-tuning starting point: the pretraining it comes from, the streams fine-tuned, its baseline."""

    key: str
    label: str
    start: str  # "random" | "crossclr-3s" | "t-random" | "t-mamp": a pretraining (see ``pretrain_all``)
    streams: tuple[str, ...]
    baseline: str | None = None  # the random-init method it is paired with
    transformer: bool = False


METHODS: tuple[Method, ...] = (
    Method("random-3s", "random init (3s)", "random", JMB),
    Method("random-joint", "random init (joint)", "random", ("joint",)),
    Method("crossclr-3s", "3s-CrosSCLR", "crossclr-3s", JMB, baseline="random-3s"),
    Method("crossclr-joint", "CrosSCLR (joint)", "crossclr-3s", ("joint",), baseline="random-joint"),
    Method("t-random", "transformer, random init (joint)", "t-random", ("joint",), transformer=True),
    Method("mamp", "MAMP small (joint)", "t-mamp", ("joint",), baseline="t-random", transformer=True),
)
SUPERVISED = Method("supervised", "supervised (joint, all labels, upper bound)", "random", ("joint",))
METHOD_KEYS = tuple(m.key for m in METHODS) + (SUPERVISED.key,)


# ------------------------------------------------------------------------------------------------ pretraining


def cpu_now() -> float:
    return time.process_time()


def pretrain_all(starts: set[str], cache: Path | None, tcache: Path | None, base: Path, hp: rdata.SmallData,
                 th: rdata.SmallTransformer, n_train: int) -> tuple[dict[str, Path], dict[str, float]]:
    """The checkpoints of the wanted starting points ({start: pretrain.pt}) and the CPU seconds of each:
    ``random`` / ``crossclr-3s`` on the ST-GCN cache, ``t-random`` / ``t-mamp`` on the transformer cache."""
    from training.trainer import train

    ckpts: dict[str, Path] = {}
    cpu: dict[str, float] = {}

    def timed(key: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        log.info("pretraining %s (seed %d, %d steps)", key, hp.seed, hp.steps)
        c0 = cpu_now()
        ckpts[key] = fn(*args, **kwargs)
        cpu[key] = cpu_now() - c0

    if "random" in starts:
        timed("random", rdata.random_init, cache, base / "random", hp, n_train)
    if "crossclr-3s" in starts:
        timed("crossclr-3s", rdata.pretrain, rdata.Run("crossclr-3s", "ssl", JMB, cross=True), cache,
              base / "crossclr-3s", hp, n_train)
    mamp_cfg = rdata.transformer_config("mamp", hp, th, n_train)
    if "t-random" in starts:  # LayerNorm only: nothing to calibrate
        timed("t-random", rdata.initial_checkpoint, tcache, base / "t-random", mamp_cfg, False)
    if "t-mamp" in starts:
        def mamp() -> Path:
            result = train(mamp_cfg, tcache, base / "t-mamp", progress=False)
            if result.checkpoint is None:
                raise SystemExit(f"t-mamp: training wrote no checkpoint in {base / 't-mamp'}")
            return result.checkpoint

        timed("t-mamp", mamp)
    return ckpts, cpu


# ------------------------------------------------------------------------------------------------ fine-tuning


def finetune_epochs(num_labelled: int, steps: int, batch_size: int) -> int:
    """Epochs giving at least ``steps`` optimizer steps over ``num_labelled`` samples (last batch kept)."""
    per_epoch = max(math.ceil(num_labelled / batch_size), 1)
    return max(math.ceil(steps / per_epoch), 1)


def finetune_cell(cache: Path, ckpt: Path, out: Path, streams: tuple[str, ...], fraction: float, seed: int,
                  *, steps: int, lr: float, hp: rdata.SmallData, num_train_labels: Any,
                  optimizer: str = "sgd", weight_decay: float | None = None) -> dict[str, Any]:
    """One fine-tuning: top-1 (last epoch, fused for several streams), labelled count, CPU seconds."""
    from training.protocols.finetune import FinetuneConfig, run_finetune, stratified_subset

    subset = stratified_subset(num_train_labels, fraction, seed)
    epochs = finetune_epochs(len(subset), steps, hp.batch_size)
    wd = hp.weight_decay if weight_decay is None else weight_decay
    cfg = FinetuneConfig(label_fraction=fraction, epochs=epochs, lr=lr, weight_decay=wd, optimizer=optimizer,
                         batch_size=hp.batch_size, augment=False, seed=seed, eval_every=epochs)
    c0, t0 = cpu_now(), time.perf_counter()
    rep = run_finetune(cache, ckpt, out, streams=list(streams), cfg=cfg)
    key = "fused" if len(streams) > 1 else streams[0]
    digest = hashlib.sha1(",".join(map(str, subset.tolist())).encode()).hexdigest()[:12]
    if rep["num_labelled"] != len(subset):
        raise SystemExit(f"{out}: fine-tuned on {rep['num_labelled']} labels, expected {len(subset)}")
    return {"top1": rep["last"][key]["top1"], "num_labelled": len(subset), "epochs": epochs,
            "steps": epochs * math.ceil(len(subset) / hp.batch_size), "labels_sha1": digest,
            "train_loss": rep["history"][-1]["loss"], "cpu_s": cpu_now() - c0,
            "wall_s": time.perf_counter() - t0}


@dataclass(frozen=True)
class Plan:
    """What one process runs: methods, fractions, fine-tuning steps and learning rates."""

    methods: tuple[Method, ...]
    fractions: tuple[float, ...]
    ft_steps: int
    lr_stgcn: float
    lr_transformer: float
    supervised: bool
    transformer_optimizer: str = "adamw"
    transformer_weight_decay: float = 0.05


def train_labels(cache: Path) -> Any:
    from crossclr_infer.cache import open_cache

    with open_cache(cache) as c:
        import numpy as np

        return np.asarray(c.split("train").labels)


def run_split(ds: rd.RealDataset, split: rd.Split, work: Path, hp: rdata.SmallData,
              th: rdata.SmallTransformer, caches: dict[str, Path | None], plan: Plan) -> list[dict[str, Any]]:
    """Every method x fraction on one split of one data set with seed ``hp.seed``; one record per cell."""
    n_train = len(split.train)
    base = work / f"{ds.name}-{split.name}-seed{hp.seed}"
    if base.exists():
        shutil.rmtree(base)
    starts = {m.start for m in plan.methods} | ({"random"} if plan.supervised else set())
    ckpts, pre_cpu = pretrain_all(starts, caches["stgcn"], caches["transformer"], base, hp, th, n_train)
    labels = {k: train_labels(c) for k, c in caches.items() if c is not None}
    if len(labels) == 2 and not (labels["stgcn"] == labels["transformer"]).all():
        raise SystemExit(f"{ds.name} {split.name}: the two caches' training labels differ")
    common = {"dataset": ds.name, "split": split.name, "seed": hp.seed, "num_train": n_train,
              "num_test": len(split.test)}
    cells = [(m, f) for f in plan.fractions for m in plan.methods]
    if plan.supervised:
        cells.append((SUPERVISED, 1.0))
    records = []
    for m, fraction in cells:
        fam = "transformer" if m.transformer else "stgcn"
        sup = m is SUPERVISED
        steps = hp.supervised_steps if sup else plan.ft_steps
        lr = plan.lr_transformer if m.transformer else plan.lr_stgcn
        optim = ({"optimizer": plan.transformer_optimizer, "weight_decay": plan.transformer_weight_decay}
                 if m.transformer else {"optimizer": "sgd", "weight_decay": hp.weight_decay})
        out = base / "ft" / f"{m.key}-{fraction:g}"
        log.info("%s %s seed %d: %s, %g of the labels", ds.name, split.name, hp.seed, m.label, fraction)
        cell = finetune_cell(caches[fam], ckpts[m.start], out, m.streams, fraction, hp.seed, steps=steps,
                             lr=lr, hp=hp, num_train_labels=labels[fam], **optim)
        label = m.label + (f" [{optim['optimizer']}]" if m.transformer else "")
        records.append({**common, "method": m.key, "label": label, "fraction": fraction, **optim,
                        "streams": list(m.streams), "baseline": m.baseline,
                        "pretrain_cpu_s": 0.0 if m.start in ("random", "t-random") else pre_cpu[m.start],
                        **cell})
        shutil.rmtree(out, ignore_errors=True)  # the fine-tuned checkpoints are not kept
    check_same_subsets(records)
    return records


def check_same_subsets(records: list[dict[str, Any]]) -> None:
    """Every method of a (data set, split, seed, fraction) was fine-tuned on the same labelled samples."""
    seen: dict[tuple, str] = {}
    for r in records:
        if r["method"] == SUPERVISED.key:
            continue
        key = (r["dataset"], r["split"], r["seed"], r["fraction"])
        if seen.setdefault(key, r["labels_sha1"]) != r["labels_sha1"]:
            raise SystemExit(f"{key}: methods were fine-tuned on different label subsets")


# ------------------------------------------------------------------------------------------------ report


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (data set, method, fraction): top-1 mean ± std over seeds (SBU folds averaged within a
    seed first), the paired difference to the method's random init, and the mean CPU seconds of a cell."""
    def per_seed(ds: str, method: str | None, fraction: float) -> dict[int, float]:
        return rdata.seed_means(records, "top1", dataset=ds, method=method, fraction=fraction)

    out = []
    for ds, method, fraction in dict.fromkeys((r["dataset"], r["method"], r["fraction"]) for r in records):
        group = [r for r in records if (r["dataset"], r["method"], r["fraction"]) == (ds, method, fraction)]
        acc = per_seed(ds, method, fraction)
        line = {"dataset": ds, "method": method, "label": group[0]["label"], "fraction": fraction,
                "num_labelled": group[0]["num_labelled"], "seeds": sorted(acc),
                "top1": rdata._stats(list(acc.values())),
                "cpu_s": sum(r["cpu_s"] for r in group) / len(group),
                "pretrain_cpu_s": sum(r["pretrain_cpu_s"] for r in group) / len(group)}
        base = group[0]["baseline"]
        if base is not None:
            diff = rdata.paired_stats(acc, per_seed(ds, base, fraction))
            line["vs_random"] = {"baseline": base, "diff": diff}
        out.append(line)
    return out


def markdown(summary: list[dict[str, Any]]) -> str:
    """Rows: data set x method; columns: the label fractions, each 'top-1 mean ± std (Δ vs random init)'."""
    fractions = sorted({s["fraction"] for s in summary if s["method"] != SUPERVISED.key})
    lines = rdata.table_head(["data set", "method", *(f"{f:.0%} labels" for f in fractions),
                        "fine-tune CPU s / cell", "pretrain CPU s"], 2)
    for ds in dict.fromkeys(s["dataset"] for s in summary):
        for method in dict.fromkeys(s["method"] for s in summary if s["dataset"] == ds):
            rows = {s["fraction"]: s for s in summary if s["dataset"] == ds and s["method"] == method}
            cells = []
            for f in fractions:
                s = rows.get(f)
                if s is None:
                    cells.append("—")
                    continue
                d = (s.get("vs_random") or {}).get("diff")
                cells.append(rdata._pm(s["top1"]) + ("" if d is None else f" (Δ {rdata._diff(d)})"))
            any_row = next(iter(rows.values()))
            if method == SUPERVISED.key:
                cells = [rdata._pm(any_row["top1"]) + " (all labels)"] + ["" for _ in fractions[1:]]
            cpu = sum(s["cpu_s"] for s in rows.values()) / len(rows)
            lines.append(f"| {ds} | {any_row['label']} | {' | '.join(cells)} | {cpu:.0f} | "
                         f"{any_row['pretrain_cpu_s']:.0f} |")
    return "\n".join(lines)


def write_results(out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    summary = summarise(records)
    counts = {(s["dataset"], s["fraction"]): s["num_labelled"] for s in summary
              if s["method"] != SUPERVISED.key}
    labelled = "; ".join(f"{ds} {f:.0%}: {n}" for (ds, f), n in counts.items())
    seeds = sorted({r["seed"] for r in records})
    md = (f"{markdown(summary)}\n\nTop-1 % on the test split at the last fine-tuning epoch; seeds {seeds}; "
          "mean ± sample std over seeds; Δ: paired difference to the random init of the same architecture "
          f"and streams (same seed, same labelled samples), mean ± std [min, max]. Labelled samples: "
          f"{labelled}.\nPretraining {meta['hyperparameters']['steps']} steps, fine-tuning "
          f"{meta['plan']['ft_steps']} steps (supervised bound "
          f"{meta['hyperparameters']['supervised_steps']})."
          f"\nMachine: {meta['machine']}. Wall {meta['total_s'] / 60:.1f} min{meta.get('wall_note', '')}, "
          f"CPU {meta['cpu_s'] / 60:.1f} "
          f"min. Command: `{meta['command']}`.\n")
    return rdata.write_report(out, {**meta, "summary": summary, "records": records}, md)


def merge_results(files: list[Path], out: Path) -> int:
    parts = [json.loads(f.read_text()) for f in files]
    unique: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for r in part["records"]:
            unique.setdefault((r["dataset"], r["split"], r["seed"], r["method"], r["fraction"]), r)
    meta = {k: v for k, v in parts[0].items() if k not in ("summary", "records")}
    meta.update(command="; ".join(p["command"] for p in parts), total_s=sum(p["total_s"] for p in parts),
                wall_note=f" summed over {len(parts)} processes",
                cpu_s=sum(p["cpu_s"] for p in parts), seeds=sorted({s for p in parts for s in p["seeds"]}))
    records = list(unique.values())
    check_same_subsets(records)
    print(write_results(out, records, meta))
    return 0


# ------------------------------------------------------------------------------------------------ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data",
                   help="folder holding msr_action3d/, utkinect/, sbu_kinect/ (read only)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "semi_supervised")
    p.add_argument("--datasets", default="msr", help="comma-separated, of msr,utkinect,sbu")
    p.add_argument("--methods", default=",".join(METHOD_KEYS), help=f"comma list of {list(METHOD_KEYS)}")
    p.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                   help="label fractions in (0, 1]")
    p.add_argument("--steps", type=int, default=rdata.SmallData.steps, help="pretraining optimizer steps")
    p.add_argument("--ft-steps", type=int, default=rdata.SmallData.steps, help="fine-tuning optimizer steps")
    p.add_argument("--supervised-steps", type=int, default=rdata.SmallData.supervised_steps)
    p.add_argument("--lr", type=float, default=rdata.SmallData.supervised_lr, help="ST-GCN fine-tuning lr")
    p.add_argument("--transformer-optimizer", choices=["adamw", "sgd"], default="adamw",
                   help="fine-tuning optimizer of the transformer rows (MAMP fine-tunes with AdamW)")
    p.add_argument("--transformer-lr", type=float, default=None,
                   help="default: the MAMP pretraining's AdamW lr (1e-3), or 0.01 with sgd")
    p.add_argument("--transformer-weight-decay", type=float, default=None,
                   help="default: 0.05 (MAMP's AdamW) or 1e-4 with sgd")
    p.add_argument("--frames", type=int, default=rdata.SmallData.frames)
    p.add_argument("--sbu-folds", default="1", help="SBU folds: a comma list of 1..5, or 'all'")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--seeds", type=int, default=3, help="seeds: seed, seed + 1, ...")
    p.add_argument("--tiny", action="store_true",
                   help="a minute-long smoke run: a tiny encoder and transformer (tests; not a result)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only merge these results.json files (seeds run in separate processes)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = sorted(set(keys) - set(METHOD_KEYS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; expected some of {list(METHOD_KEYS)}")
    methods = [m for m in METHODS if m.key in keys]
    for m in list(methods):  # a pretrained method needs its baseline, for the paired difference
        if m.baseline and m.baseline not in {x.key for x in methods}:
            methods.insert(0, next(x for x in METHODS if x.key == m.baseline))
    fractions = tuple(float(f) for f in args.fractions.split(",") if f.strip())
    if not fractions or any(not 0.0 < f <= 1.0 for f in fractions):
        raise SystemExit(f"--fractions {args.fractions}: expected fractions in (0, 1]")
    adamw = args.transformer_optimizer == "adamw"
    t_lr = args.transformer_lr if args.transformer_lr is not None else \
        (rdata.SmallTransformer.lr if adamw else rdata.SmallTransformer.cross_lr)
    t_wd = args.transformer_weight_decay if args.transformer_weight_decay is not None else \
        (0.05 if adamw else rdata.SmallData.weight_decay)
    return Plan(tuple(methods), fractions, args.ft_steps, args.lr, t_lr, SUPERVISED.key in keys,
                args.transformer_optimizer, t_wd)


def hyperparameters(args: argparse.Namespace) -> tuple[rdata.SmallData, rdata.SmallTransformer]:
    hp = replace(rdata.SmallData(), steps=args.steps, frames=args.frames, seed=args.seed,
                 supervised_steps=args.supervised_steps)
    th = rdata.SmallTransformer()
    if args.tiny:
        hp = replace(hp, base_channels=4, hidden_dim=16, frames=8, batch_size=4)
        th = replace(th, width=16, depth=1, heads=2, t_patch=4)
    return hp, th


def splits_of(ds: rd.RealDataset, sbu_folds: str) -> list[rd.Split]:
    splits = rd.standard_splits(ds)
    if ds.name == "sbu-kinect":
        folds = range(1, 6) if sbu_folds == "all" else [int(f) for f in sbu_folds.split(",")]
        splits = [splits[f - 1] for f in folds]
    return splits


def prepare_caches(ds: rd.RealDataset, split: rd.Split, work: Path, hp: rdata.SmallData,
                   th: rdata.SmallTransformer, *, stgcn: bool, transformer: bool) -> dict[str, Path | None]:
    """The ST-GCN cache (``hp.frames``) and the transformer one (frames rounded up to its patch), as
    ``real_data.py`` prepares them; None where not asked for."""
    frames = rdata.transformer_frames(hp, th)
    return {"stgcn": rdata.prepare(ds, split, work, hp) if stgcn else None,
            "transformer": rdata.prepare(ds, split, work, replace(hp, frames=frames), suffix=f"-t{frames}")
            if transformer else None}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        return merge_results(args.merge, args.out)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    plan = make_plan(args)
    hp, th = hyperparameters(args)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    if sorted(set(names) - set(rd.DATASETS)):
        raise SystemExit(f"--datasets {args.datasets}: expected some of {rd.DATASETS}")
    seeds = [args.seed + i for i in range(args.seeds)]
    meta: dict[str, Any] = {
        "command": "python benchmarks/semi_supervised.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": rdata.machine_line(), "seeds": seeds, "hyperparameters": asdict(hp),
        "transformer": asdict(th), "plan": {**asdict(plan), "methods": [m.key for m in plan.methods]}}
    t_all, cpu0 = time.perf_counter(), rdata.cpu_seconds()
    records: list[dict[str, Any]] = []
    md = ""
    for name in names:
        ds = rd.load_dataset(name, args.data)
        for split in splits_of(ds, args.sbu_folds):
            caches = prepare_caches(ds, split, args.out, hp, th,
                                    stgcn=plan.supervised or any(not m.transformer for m in plan.methods),
                                    transformer=any(m.transformer for m in plan.methods))
            for seed in seeds:
                records += run_split(ds, split, args.out, replace(hp, seed=seed), th, caches, plan)
                meta.update(total_s=time.perf_counter() - t_all, cpu_s=rdata.cpu_seconds() - cpu0)
                md = write_results(args.out, records, meta)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
