"""Pooled pretraining: more unlabeled skeletons from another data set, mapped to one layout.

One command (CPU, fixed seeds)::

    CROSSCLR_THREADS=1 python benchmarks/pooled.py --seeds 3 --out runs/pooled

MSR Action3D (its own 20-joint order, ``benchmarks/layouts/msr-action3d.toml``) is mapped to ``kinect-v1``
by ``crossclr prepare arrays --to-layout kinect-v1``; UTKinect already is ``kinect-v1``. For each evaluated
set (``--eval``, default both) and seed, 3s-CrosSCLR (``real_data.py``'s ``SmallData``, ``--steps``
optimizer steps) is pretrained

- **single**: on that set's training split alone;
- **pooled**: on the training splits of both sets (``crossclr train --data a.h5,b.h5``);

and both are evaluated on that set's own test split: linear (last epoch) and kNN on the frozen encoders
(BatchNorm re-measured on the set's training split, as in ``real_data.py``), and fine-tuning with 10 % of
the labels (``semi_supervised.finetune_cell``). The random init of the seed is evaluated too. The same
number of optimizer steps for both pretrainings (the pooled run has fewer epochs; its queue, the largest
power of two below its training size, is larger).

Never a test sample: the pretraining caches are written from the training splits only (the test part is
left out of the ``.npz``), and ``assert_no_test_ids`` checks the pooled caches' sample names against every
test split before any training (``tests/training/test_pooled_data.py`` asserts it too). Results:
``OUT/results.json``, ``OUT/results.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
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

log = logging.getLogger("pooled")

TARGET_LAYOUT = "kinect-v1"
POOL = ("msr", "utkinect")


def prepare_cache(ds: rd.RealDataset, split: rd.Split, cache: Path, frames: int, *,
                  to_layout: str | None) -> Path:
    """``split`` of ``ds`` -> a cache through ``crossclr prepare arrays`` (``--to-layout`` when the data
    set's layout is not ``to_layout``); a split with no test samples gives a training-only cache."""
    npz = rd.write_arrays_npz(ds, split, cache.with_suffix(".npz"))
    cache.unlink(missing_ok=True)
    args = ["prepare", "arrays", str(npz), "--out", str(cache), "--layout", rd.layout_argument(ds),
            "--frames", str(frames), "--preprocess", "official", "--benchmark", f"{ds.name}-{split.name}"]
    if to_layout is not None and ds.layout.name != to_layout:
        args += ["--to-layout", to_layout]
    exe = Path(sys.executable).with_name("crossclr")
    log.info("crossclr %s", " ".join(args))
    proc = subprocess.run([str(exe) if exe.exists() else "crossclr", *args], cwd=ROOT, capture_output=True,
                          text=True)
    npz.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise SystemExit(f"crossclr prepare arrays failed for {ds.name}: {proc.stderr.strip()}")
    return cache


def train_only(split: rd.Split) -> rd.Split:
    """The training part of ``split`` alone (the pretraining caches never hold a test sample)."""
    return rd.Split(f"{split.name}-train", split.train, ())


def cache_names(cache: Path) -> list[str]:
    """Every sample name of every split of ``cache``."""
    from crossclr_infer.cache import open_cache

    with open_cache(cache) as c:
        return [n for s in c.splits for n in c.split(s).names]


def assert_no_test_ids(caches: list[Path], test_names: set[str]) -> None:
    """Refuse (SystemExit) pretraining caches that hold any test-split sample name."""
    for cache in caches:
        leaked = sorted(set(cache_names(cache)) & test_names)
        if leaked:
            raise SystemExit(f"{cache}: holds {len(leaked)} test samples ({leaked[:3]}); pretraining must "
                             "see training splits only")


def test_names_of(sets: dict[str, tuple[rd.RealDataset, rd.Split]]) -> set[str]:
    return {ds.samples[i].name for ds, split in sets.values() for i in split.test}


def pretrain_on(sources: list[Path], out: Path, hp: rdata.SmallData) -> tuple[Path, float, int]:
    """3s-CrosSCLR on the pooled training splits of ``sources``: (checkpoint, CPU s, training samples)."""
    from training.data import open_train_data
    from training.trainer import train

    data = open_train_data(sources, batch_size=hp.batch_size)
    n = len(data.dataset)
    data.cache.close()
    cfg = rdata.train_config(rdata.Run("crossclr-3s", "ssl", rdata.JMB, cross=True), hp, n)
    c0 = semi.cpu_now()
    result = train(cfg, sources if len(sources) > 1 else sources[0], out, progress=False)
    if result.checkpoint is None:
        raise SystemExit(f"{out}: training wrote no checkpoint")
    return result.checkpoint, semi.cpu_now() - c0, n


def evaluate(eval_cache: Path, ckpt: Path, out: Path, hp: rdata.SmallData, ft_fraction: float,
             ft_steps: int, *, calibrated: bool = False) -> dict[str, Any]:
    """Linear + kNN on the frozen encoders, their BN statistics re-measured on the training split (unless
    ``calibrated`` already), and a ``ft_fraction`` fine-tuning."""
    clean = ckpt if calibrated else rdata.recalibrate(ckpt, eval_cache)
    rec = rdata.evaluate(eval_cache, clean, rdata.JMB, out / "linear", hp)
    labels = semi.train_labels(eval_cache)
    ft = semi.finetune_cell(eval_cache, ckpt, out / "ft", rdata.JMB, ft_fraction, hp.seed, steps=ft_steps,
                            lr=hp.supervised_lr, hp=hp, num_train_labels=labels)
    shutil.rmtree(out / "ft", ignore_errors=True)
    return {"linear": rec["linear_last"], "knn": rec["knn"], "finetune": ft["top1"],
            "finetune_labels": ft["num_labelled"], "finetune_cpu_s": ft["cpu_s"]}


def run_seed(target: str, sets: dict[str, tuple[rd.RealDataset, rd.Split]], caches: dict[str, Path],
             eval_caches: dict[str, Path], work: Path, hp: rdata.SmallData, args: argparse.Namespace
             ) -> list[dict[str, Any]]:
    """random / single / pooled for one evaluated set and one seed."""
    base = work / f"{target}-seed{hp.seed}"
    shutil.rmtree(base, ignore_errors=True)
    ds, split = sets[target]
    out = []
    random_ckpt = rdata.random_init(eval_caches[target], base / "random", hp, len(split.train))
    runs = [("random init", random_ckpt, 0.0, 0)]
    for kind, sources in (("single", [caches[target]]), ("pooled", [caches[target]] +
                                                         [c for k, c in caches.items() if k != target])):
        ckpt, cpu, n = pretrain_on(sources, base / kind, hp)
        runs.append((kind, ckpt, cpu, n))
    for kind, ckpt, cpu, n in runs:
        log.info("%s seed %d: evaluating %s", ds.name, hp.seed, kind)
        rec = evaluate(eval_caches[target], ckpt, base / f"eval-{kind}", hp, args.ft_fraction, args.ft_steps,
                       calibrated=kind == "random init")
        out.append({"dataset": ds.name, "seed": hp.seed, "pretraining": kind, "pretrain_samples": n,
                    "pretrain_cpu_s": cpu, **rec})
    return out


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (data set, pretraining): mean ± std over seeds; pooled and single paired with each other, and
    both with the random init of the same seed."""
    def by_seed(ds: str, kind: str, key: str) -> dict[int, float]:
        return rdata.seed_means(records, key, dataset=ds, pretraining=kind)

    out = []
    for ds, kind in dict.fromkeys((r["dataset"], r["pretraining"]) for r in records):
        line: dict[str, Any] = {"dataset": ds, "pretraining": kind}
        for key in ("linear", "knn", "finetune"):
            mine = by_seed(ds, kind, key)
            line[key] = rdata._stats(list(mine.values()))
            for other in ("random init", "single"):
                if kind != "random init" and other != kind:
                    line[f"{key}_vs_{other.split()[0]}"] = rdata.paired_stats(mine, by_seed(ds, other, key))
        group = [r for r in records if r["dataset"] == ds and r["pretraining"] == kind]
        line["pretrain_cpu_s"] = sum(r["pretrain_cpu_s"] for r in group) / len(group)
        line["pretrain_samples"] = group[0]["pretrain_samples"]
        out.append(line)
    return out


def markdown(summary: list[dict[str, Any]], ft_fraction: float) -> str:
    lines = rdata.table_head(["evaluated on", "pretraining (samples)", "linear", "kNN",
                             f"fine-tune {ft_fraction:.0%} labels", "Δ linear / kNN / fine-tune vs single",
                             "pretrain CPU s"], 2)
    for s in summary:
        vs = " / ".join(rdata._diff(s.get(f"{k}_vs_single")) for k in ("linear", "knn", "finetune"))
        lines.append(f"| {s['dataset']} | {s['pretraining']} ({s['pretrain_samples']}) | "
                     f"{rdata._pm(s['linear'])} | {rdata._pm(s['knn'])} | {rdata._pm(s['finetune'])} | "
                     f"{vs if s['pretraining'] == 'pooled' else '—'} | {s['pretrain_cpu_s']:.0f} |")
    return "\n".join(lines)


def load_sets(args: argparse.Namespace) -> dict[str, tuple[rd.RealDataset, rd.Split]]:
    out = {}
    for name in POOL:
        ds = rd.load_dataset(name, args.data)
        out[name] = (ds, rd.standard_splits(ds)[0])  # MSR and UTKinect: odd subjects train
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / ".." / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pooled")
    p.add_argument("--eval", default="msr,utkinect", help="the sets evaluated (comma list of msr,utkinect)")
    p.add_argument("--steps", type=int, default=rdata.SmallData.steps, help="pretraining optimizer steps")
    p.add_argument("--ft-fraction", type=float, default=0.1, help="labels of the fine-tuning evaluation")
    p.add_argument("--ft-steps", type=int, default=rdata.SmallData.steps)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="tiny encoders (a smoke run; not a result)")
    p.add_argument("--merge", type=Path, nargs="+", default=None,
                   help="only merge these results.json files (seeds run in separate processes)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.merge:
        parts = [json.loads(f.read_text()) for f in args.merge]
        unique = {(r["dataset"], r["seed"], r["pretraining"]): r for x in parts for r in x["records"]}
        meta = {k: parts[0][k] for k in ("machine", "hyperparameters")}
        meta.update(command="; ".join(x["command"] for x in parts), total_s=sum(x["total_s"] for x in parts),
                    cpu_s=sum(x["cpu_s"] for x in parts))
        print(write_results(args.out, list(unique.values()), meta, args.ft_fraction))
        return 0
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    hp, _ = semi.hyperparameters(argparse.Namespace(steps=args.steps, frames=rdata.SmallData.frames,
                                                    seed=args.seed, tiny=args.tiny,
                                                    supervised_steps=rdata.SmallData.supervised_steps))
    sets = load_sets(args)
    args.out.mkdir(parents=True, exist_ok=True)
    caches = {k: prepare_cache(ds, train_only(sp), args.out / f"{k}-pretrain.h5", hp.frames,
                               to_layout=TARGET_LAYOUT) for k, (ds, sp) in sets.items()}
    assert_no_test_ids(list(caches.values()), test_names_of(sets))
    eval_caches = {k: prepare_cache(ds, sp, args.out / f"{k}-eval.h5", hp.frames, to_layout=TARGET_LAYOUT)
                   for k, (ds, sp) in sets.items()}
    t0, c0 = time.perf_counter(), rdata.cpu_seconds()
    records: list[dict[str, Any]] = []
    for target in [t.strip() for t in args.eval.split(",") if t.strip()]:
        for seed in range(args.seed, args.seed + args.seeds):
            records += run_seed(target, sets, caches, eval_caches, args.out, replace(hp, seed=seed), args)
    machine = rdata.machine_line()
    meta = {"command": "python benchmarks/pooled.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "machine": machine, "hyperparameters": asdict(hp), "total_s": time.perf_counter() - t0,
            "cpu_s": rdata.cpu_seconds() - c0}
    print(write_results(args.out, records, meta, args.ft_fraction))
    return 0


def write_results(out: Path, records: list[dict[str, Any]], meta: dict[str, Any], ft_fraction: float) -> str:
    summary = summarise(records)
    md = (f"{markdown(summary, ft_fraction)}\n\nSeeds {sorted({r['seed'] for r in records})}; "
          f"{meta['hyperparameters']['steps']} pretraining steps for both; machine: {meta['machine']}; "
          f"CPU {meta['cpu_s'] / 60:.1f} min. Command: `{meta['command']}`.\n")
    return rdata.write_report(out, {**meta, "summary": summary, "records": records}, md)


if __name__ == "__main__":
    sys.exit(main())
