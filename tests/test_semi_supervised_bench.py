"""The few-label benchmarks (semi-supervised fine-tuning, learning curve, pooled pretraining) on tiny
synthetic data: the same label subsets for every method of a seed, paired differences against hand
computations, the tables and the learning-curve PNG."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
pytest.importorskip("torch")

from benchmarks import learning_curve as lc  # noqa: E402
from benchmarks import pooled  # noqa: E402
from benchmarks import real_data as rdata  # noqa: E402
from benchmarks import real_datasets as rd  # noqa: E402
from benchmarks import semi_supervised as semi  # noqa: E402
from crossclr_infer.layouts import get_layout  # noqa: E402


def synthetic_set(subjects: int = 4, classes: int = 3, per: int = 4) -> rd.RealDataset:
    """A UTKinect-like set (kinect-v1): class c moves joints with period depending on c."""
    lay = get_layout("kinect-v1")
    rng = np.random.default_rng(0)
    samples = []
    for s in range(1, subjects + 1):
        for c in range(classes):
            for e in range(per):
                t = np.arange(10 + e)[None, :, None, None]
                data = rng.normal(scale=0.05, size=(3, 10 + e, lay.num_joints, 1)) + np.sin(t * (c + 1) / 3)
                samples.append(rd.Sample(f"s{s:02d}_e{e:02d}_c{c}", c, f"s{s:02d}", data.astype(np.float32)))
    return rd.RealDataset("utkinect", lay, tuple(f"action {c}" for c in range(classes)), tuple(samples))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("semi")
    ds = synthetic_set()
    split = rd.cross_subject_odd_even(ds)
    args = semi.parse_args(["--tiny", "--steps", "2", "--ft-steps", "2", "--supervised-steps", "2",
                            "--fractions", "0.25,1", "--methods", "crossclr-joint,mamp,supervised"])
    hp, th = semi.hyperparameters(args)
    plan = semi.make_plan(args)
    caches = semi.prepare_caches(ds, split, work, hp, th, stgcn=True, transformer=True)
    records = semi.run_split(ds, split, work, hp, th, caches, plan)
    return work, records, plan


def test_plan_adds_the_baselines_of_pretrained_methods(tiny_run):
    _, _, plan = tiny_run
    assert [m.key for m in plan.methods] == ["t-random", "random-joint", "crossclr-joint", "mamp"]
    assert plan.supervised and plan.fractions == (0.25, 1.0)


def test_every_method_of_a_seed_fine_tunes_on_the_same_labels(tiny_run):
    _, records, _ = tiny_run
    cells = {(r["method"], r["fraction"]) for r in records}
    methods = ("t-random", "random-joint", "crossclr-joint", "mamp")
    assert cells == {(m, f) for m in methods for f in (0.25, 1.0)} | {("supervised", 1.0)}
    for f in (0.25, 1.0):
        digests = {r["labels_sha1"] for r in records if r["fraction"] == f and r["method"] != "supervised"}
        assert len(digests) == 1
    quarter = next(r for r in records if r["fraction"] == 0.25)
    assert quarter["num_labelled"] == 3 * 2  # 8 training samples per class, 25 % -> 2 each
    assert all(0.0 <= r["top1"] <= 100.0 and r["cpu_s"] > 0 for r in records)
    bad = [dict(records[0]), {**records[1], "fraction": records[0]["fraction"], "labels_sha1": "other"}]
    bad[1]["method"] = "mamp" if bad[0]["method"] != "mamp" else "t-random"
    with pytest.raises(SystemExit, match="different label subsets"):
        semi.check_same_subsets(bad)


def test_summary_pairs_each_method_with_its_random_init(tiny_run, tmp_path):
    _, records, _ = tiny_run
    two_seeds = records + [{**r, "seed": 1, "top1": r["top1"] + (5.0 if r["method"] == "mamp" else 1.0)}
                           for r in records]
    summary = semi.summarise(two_seeds)
    line = next(s for s in summary if s["method"] == "mamp" and s["fraction"] == 1.0)
    mine = {r["seed"]: r["top1"] for r in two_seeds if r["method"] == "mamp" and r["fraction"] == 1.0}
    ref = {r["seed"]: r["top1"] for r in two_seeds if r["method"] == "t-random" and r["fraction"] == 1.0}
    diffs = [mine[s] - ref[s] for s in (0, 1)]
    assert line["vs_random"]["baseline"] == "t-random"
    assert line["vs_random"]["diff"]["mean"] == pytest.approx(np.mean(diffs))
    assert line["vs_random"]["diff"]["std"] == pytest.approx(np.std(diffs, ddof=1))
    assert "vs_random" not in next(s for s in summary if s["method"] == "random-joint")
    meta = {"machine": "test CPU", "command": "x", "total_s": 1.0, "cpu_s": 1.0,
            "hyperparameters": {"steps": 2, "supervised_steps": 2}, "plan": {"ft_steps": 2}}
    md = semi.write_results(tmp_path, two_seeds, meta)
    assert "| utkinect | MAMP small (joint) [adamw] |" in md and "25% labels" in md and "(all labels)" in md
    assert (tmp_path / "results.json").is_file()


def _lc_records():
    recs = []
    for seed, bump in ((0, 0.0), (1, 2.0)):
        recs.append({"dataset": "d", "seed": seed, "method": "random", "steps": 0, "cpu_s": 0.0,
                     "linear": 10.0, "knn": 12.0})
        for steps, gain in ((100, 1.0), (300, 3.0)):
            recs.append({"dataset": "d", "seed": seed, "method": "crossclr-3s", "steps": steps,
                         "actual_steps": steps + 2, "cpu_s": steps / 10, "linear": 10.0 + gain + bump,
                         "knn": 12.0 + gain})
    return recs


def test_learning_curve_summary_table_and_png(tmp_path):
    recs = _lc_records()
    summary = lc.summarise(recs)
    assert [(s["steps"], s["actual_steps"]) for s in summary] == [(100, 102), (300, 302)]
    assert summary[1]["linear_vs_random"]["mean"] == pytest.approx(4.0)  # (3 + 5) / 2
    assert summary[1]["knn_vs_random"]["values"] == [3.0, 3.0]
    meta = {"machine": "test CPU", "command": "x", "hyperparameters": {"batch_size": 16}}
    md = lc.write_results(tmp_path, recs, meta)
    assert "| 3s-CrosSCLR | 300 (302) |" in md and "+4.0 ± 1.4" in md
    png = tmp_path / "learning_curve.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curve_runs_end_to_end_tiny(tmp_path):
    ds = synthetic_set(per=2)
    split = rd.cross_subject_odd_even(ds)
    args = semi.parse_args(["--tiny"])
    hp, th = semi.hyperparameters(args)
    caches = semi.prepare_caches(ds, split, tmp_path, hp, th, stgcn=True, transformer=False)
    recs = lc.run_seed(ds, split, caches, tmp_path, replace(hp, batch_size=2), th, ["crossclr-3s"], [3, 18])
    steps = [(r["steps"], r.get("actual_steps")) for r in recs]
    # 12 training samples, batch 2: 6 steps per epoch; whole epochs, at least 2
    assert steps == [(0, None), (3, 12), (18, 18)]
    assert all(r["cpu_s"] > 0 for r in recs[1:])


def test_pooled_summary_pairs_pooled_with_single():
    recs = []
    for seed in (0, 1):
        for kind, acc in (("random init", 10.0), ("single", 20.0), ("pooled", 23.0 + seed)):
            recs.append({"dataset": "d", "seed": seed, "pretraining": kind, "pretrain_samples": 5,
                         "pretrain_cpu_s": 1.0, "linear": acc, "knn": acc, "finetune": acc})
    line = next(s for s in pooled.summarise(recs) if s["pretraining"] == "pooled")
    assert line["linear_vs_single"]["values"] == [3.0, 4.0]
    assert line["knn_vs_random"]["mean"] == pytest.approx(13.5)
    assert "| d | pooled (5) |" in pooled.markdown(pooled.summarise(recs), 0.1)


def test_finetune_epochs_cover_the_step_budget():
    assert semi.finetune_epochs(33, 200, 16) == 67  # 3 batches per epoch
    assert semi.finetune_epochs(284, 200, 16) == 12
    assert semi.finetune_epochs(1, 5, 16) == 5
    assert rdata.SmallData().steps == 200


def test_transformer_rows_fine_tune_with_adamw_by_default(tiny_run):
    _, records, _ = tiny_run
    for r in records:
        want = ("adamw", 0.05) if r["method"] in ("mamp", "t-random") else ("sgd", 1e-4)
        assert (r["optimizer"], r["weight_decay"]) == want
    plan = semi.make_plan(semi.parse_args(["--transformer-optimizer", "sgd"]))
    got = (plan.transformer_optimizer, plan.lr_transformer, plan.transformer_weight_decay)
    assert got == ("sgd", 0.01, 1e-4)


def test_merge_joins_seeds_run_in_separate_processes(tiny_run, tmp_path, capsys):
    _, records, _ = tiny_run
    meta = {"machine": "test CPU", "command": "x", "total_s": 60.0, "cpu_s": 60.0, "seeds": [0],
            "hyperparameters": {"steps": 2, "supervised_steps": 2}, "plan": {"ft_steps": 2}}
    semi.write_results(tmp_path / "a", records, meta)
    semi.write_results(tmp_path / "b", [{**r, "seed": 1} for r in records], {**meta, "seeds": [1]})
    assert semi.main(["--merge", str(tmp_path / "a" / "results.json"), str(tmp_path / "b" / "results.json"),
                      "--out", str(tmp_path / "m")]) == 0
    md = (tmp_path / "m" / "results.md").read_text()
    assert "seeds [0, 1]" in md and "Wall 2.0 min summed over 2 processes" in md
    capsys.readouterr()


def test_pooled_merge_joins_seeds(tmp_path, capsys):
    meta = {"machine": "test CPU", "hyperparameters": {"steps": 2}, "total_s": 1.0, "cpu_s": 60.0}
    for seed in (0, 1):
        recs = [{"dataset": "d", "seed": seed, "pretraining": kind, "pretrain_samples": 5,
                 "pretrain_cpu_s": 1.0, "linear": acc + seed, "knn": acc, "finetune": acc}
                for kind, acc in (("single", 20.0), ("pooled", 22.0))]
        pooled.write_results(tmp_path / f"s{seed}", recs, {**meta, "command": f"seed {seed}"}, 0.1)
    files = [str(tmp_path / f"s{seed}" / "results.json") for seed in (0, 1)]
    assert pooled.main(["--merge", *files, "--out", str(tmp_path / "m")]) == 0
    md = (tmp_path / "m" / "results.md").read_text()
    assert "Seeds [0, 1]" in md and "+2.0 ± 0.0 [+2.0, +2.0]" in md and "CPU 2.0 min" in md
    capsys.readouterr()
