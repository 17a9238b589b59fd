"""Converters for MSR Action3D, UTKinect-Action3D and SBU Kinect, tested on the real files in ../shared/data.

Counts and lengths are checked against independent reads of the raw text (numpy.loadtxt, awk-style counting);
joint orders against anatomy (the head is above the hips, feet lowest, right side on the larger x)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks import real_datasets as rd
from crossclr_infer.errors import CrossclrError
from tests.conftest import shared_path


@pytest.fixture(scope="module")
def msr() -> rd.RealDataset:
    return rd.load_msr_action3d(shared_path("msr_action3d"))


@pytest.fixture(scope="module")
def utk() -> rd.RealDataset:
    return rd.load_utkinect(shared_path("utkinect"))


@pytest.fixture(scope="module")
def sbu() -> rd.RealDataset:
    return rd.load_sbu(shared_path("sbu_kinect"))


def _joint(ds: rd.RealDataset, name: str) -> int:
    return ds.layout.joint_names.index(name)


def _all_frames(ds: rd.RealDataset) -> np.ndarray:
    """Every frame of every body: (3, F, V)."""
    # (3, T, V, M) per sample -> (3, T*M, V) concatenated over samples
    return np.concatenate([s.data.transpose(0, 1, 3, 2).reshape(3, -1, ds.layout.num_joints)
                           for s in ds.samples], axis=1)


# ------------------------------------------------------------------------------------------------- MSR


def test_msr_counts_and_protocol(msr: rd.RealDataset) -> None:
    root = shared_path("msr_action3d")
    listed = sorted(set((root / rd.MSR_FILE_LIST).read_text().split()))
    assert len(listed) == 557
    assert [s.name for s in msr.samples] == listed
    assert msr.skipped == {}  # a13_s09_e02 (all zeros) is not in the CVPR'12 list
    assert msr.layout.num_joints == 20 and msr.num_person == 1
    assert len(msr.class_names) == 20
    assert np.array_equal(np.unique(msr.labels), np.arange(20))
    s = msr.samples[0]
    assert s.name == "a01_s01_e01" and s.label == 0 and s.subject == "s01"
    split = rd.cross_subject_odd_even(msr)
    train_subj = {msr.samples[i].subject for i in split.train}
    test_subj = {msr.samples[i].subject for i in split.test}
    assert train_subj == {"s01", "s03", "s05", "s07", "s09"}
    assert test_subj == {"s02", "s04", "s06", "s08", "s10"}
    assert (len(split.train), len(split.test)) == (284, 273)
    assert rd.standard_splits(msr) == [split]


def test_msr_values_match_loadtxt_and_zero_frames_dropped(msr: rd.RealDataset) -> None:
    root = shared_path("msr_action3d")
    ref = np.loadtxt(root / "a01_s01_e01_skeleton3D.txt").reshape(-1, 20, 4)
    s = msr.samples[0]
    assert s.data.shape == (3, ref.shape[0], 20, 1) and s.data.dtype == np.float32
    np.testing.assert_allclose(s.data[..., 0], ref[..., :3].transpose(2, 0, 1), atol=1e-6)
    # a13_s06_e01: 36 frames, 15 of them untracked (all zero) -> 21 kept, in order
    raw = np.loadtxt(root / "a13_s06_e01_skeleton3D.txt").reshape(-1, 20, 4)[..., :3]
    tracked = raw[np.abs(raw).sum(axis=(1, 2)) > 0]
    assert (len(raw), len(tracked)) == (36, 21)
    bend = next(x for x in msr.samples if x.name == "a13_s06_e01")
    np.testing.assert_allclose(bend.data[..., 0], tracked.transpose(2, 0, 1), atol=1e-6)
    assert msr.dropped_frames == 252
    assert all(np.abs(x.data).sum(axis=(0, 2, 3)).min() > 0 for x in msr.samples)


def test_msr_all_files_skips_the_all_zero_one() -> None:
    ds = rd.load_msr_action3d(shared_path("msr_action3d"), file_list=None)
    assert len(ds.samples) == 566 and ds.skipped == {"all_zero": 1}
    assert "a13_s09_e02" not in {s.name for s in ds.samples}
    # a13_s09_e03 has 936 frames, 740 of them untracked
    raw = rd.read_msr_file(shared_path("msr_action3d", "a13_s09_e03_skeleton3D.txt"))
    long = next(s for s in ds.samples if s.name == "a13_s09_e03")
    assert raw.shape == (936, 20, 3)
    assert long.data.shape[1] == int(np.any(raw != 0, axis=(1, 2)).sum()) == 196


def test_msr_joint_order_anatomy(msr: rd.RealDataset) -> None:
    x = _all_frames(msr)
    y = x[1]
    j = lambda n: _joint(msr, n)  # noqa: E731
    assert np.mean(y[:, j("head")] > y[:, j("hip_center")]) > 0.99
    assert np.mean(y[:, j("neck")] > y[:, j("spine")]) > 0.95
    assert np.mean(y[:, j("spine")] > y[:, j("hip_center")]) > 0.95
    assert np.mean(y[:, j("hip_left")] > y[:, j("knee_left")]) > 0.95
    assert np.mean(y[:, j("knee_right")] > y[:, j("ankle_right")]) > 0.95
    # subjects face the camera: the right side has the larger x (as in Kinect v1 / UTKinect)
    assert np.mean(x[0, :, j("shoulder_right")] > x[0, :, j("shoulder_left")]) > 0.95
    assert np.mean(x[0, :, j("hip_right")] > x[0, :, j("hip_left")]) > 0.95
    # a01 "high arm wave" is done with the right arm: its hand moves most
    waves = [s.data[..., 0] for s in msr.samples if s.label == 0]
    spread = np.mean([w.std(axis=1).sum(axis=0) for w in waves], axis=0)  # (V,)
    assert int(np.argmax(spread)) == j("hand_right")
    # parents are anatomically adjacent: median bone length under 0.6 m (MSR thighs are long, ~0.54 m)
    lengths = np.linalg.norm(x - x[:, :, list(msr.layout.parents)], axis=0)  # (F, V)
    assert np.median(lengths, axis=0).max() < 0.6


# -------------------------------------------------------------------------------------------- UTKinect


def test_utkinect_counts_segments_and_nan(utk: rd.RealDataset) -> None:
    root = shared_path("utkinect")
    labels = rd.parse_utkinect_labels(root / "actionLabel.txt")
    assert len(labels) == 20 and sum(len(v) for v in labels.values()) == 200
    assert np.isnan(dict((a, b) for a, b, _ in labels["s10_e02"])["carry"])
    assert len(utk.samples) == 199 and utk.skipped == {"nan_bounds": 1}
    assert "s10_e02_carry" not in {s.name for s in utk.samples}
    assert np.array_equal(np.bincount(utk.labels), [20, 20, 20, 20, 19, 20, 20, 20, 20, 20])
    assert utk.layout.name == "kinect-v1" and utk.num_person == 1
    # one segment checked by hand: s01_e01 walk = frame ids 252..390, all rows, duplicates included
    raw = np.loadtxt(root / "joints_s01_e01.txt")
    rows = raw[(raw[:, 0] >= 252) & (raw[:, 0] <= 390)]
    walk = utk.samples[0]
    assert walk.name == "s01_e01_walk" and walk.label == 0 and walk.subject == "s01"
    assert walk.data.shape == (3, len(rows), 20, 1)
    want = rows[:, 1:].reshape(-1, 20, 3).transpose(2, 0, 1)  # (F, 60) -> (3, F, 20)
    np.testing.assert_allclose(walk.data[..., 0], want, atol=1e-6)


def test_utkinect_protocols(utk: rd.RealDataset) -> None:
    xsub = rd.standard_splits(utk)[0]
    assert {utk.samples[i].subject for i in xsub.train} == {"s01", "s03", "s05", "s07", "s09"}
    assert len(xsub.train) + len(xsub.test) == 199 and not set(xsub.train) & set(xsub.test)
    loso = rd.standard_splits(utk, utkinect_protocol="loso")
    assert len(loso) == 10
    tested = sorted(i for sp in loso for i in sp.test)
    assert tested == list(range(199))  # every segment tested exactly once
    for sp in loso:
        assert len({utk.samples[i].subject for i in sp.test}) == 1
    with pytest.raises(CrossclrError, match="protocol"):
        rd.standard_splits(utk, utkinect_protocol="random")


def test_utkinect_kinect_v1_joint_order(utk: rd.RealDataset) -> None:
    x = _all_frames(utk)
    y = x[1]
    j = lambda n: _joint(utk, n)  # noqa: E731
    assert np.mean(y[:, j("head")] > y[:, j("shoulder_center")]) > 0.95  # 1.4 % bent over (pick up)
    assert np.mean(y[:, j("shoulder_center")] > y[:, j("hip_center")]) > 0.99
    assert np.mean(y[:, j("hip_center")] > y[:, j("foot_left")]) > 0.95
    assert np.mean(x[0, :, j("shoulder_right")] > x[0, :, j("shoulder_left")]) > 0.9
    lengths = np.linalg.norm(x - x[:, :, list(utk.layout.parents)], axis=0)
    assert np.median(lengths, axis=0).max() < 0.6  # thighs ~0.48 m


# ------------------------------------------------------------------------------------------------- SBU


def test_sbu_counts_folds_and_values(sbu: rd.RealDataset) -> None:
    root = shared_path("sbu_kinect")
    files = sorted(root.glob("*/*/*/skeleton_pos.txt"))
    assert len(sbu.samples) == len(files) == 282
    assert sbu.num_person == 2 and sbu.layout.num_joints == 15
    assert np.array_equal(np.unique(sbu.labels), np.arange(8))
    folds = rd.standard_splits(sbu)
    assert len(folds) == 5
    tested = sorted(i for sp in folds for i in sp.test)
    assert tested == list(range(282))
    pairs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert sorted(p for fold in rd.SBU_FOLDS for p in fold) == pairs and len(pairs) == 21
    for sp, fold in zip(folds, rd.SBU_FOLDS, strict=True):
        assert {sbu.samples[i].subject for i in sp.test} == set(fold)
    # values: the readme's de-normalisation of the raw numbers, / 1000
    raw = np.loadtxt(files[0], delimiter=",")
    s = sbu.samples[0]
    assert s.name == "s01s02_01_001" and s.label == 0 and s.data.shape == (3, len(raw), 15, 2)
    p2_head = raw[:, 1 + 45: 1 + 48]  # person 2, joint 1
    want = np.stack([1280 - 2560 * p2_head[:, 0], 960 - 1920 * p2_head[:, 1],
                     p2_head[:, 2] * 10000 / 7.8125]) / 1000
    np.testing.assert_allclose(s.data[:, :, 0, 1], want, rtol=1e-5, atol=1e-5)


def test_sbu_denormalised_is_metric(sbu: rd.RealDataset) -> None:
    x = _all_frames(sbu)
    y = x[1]
    j = lambda n: _joint(sbu, n)  # noqa: E731
    assert np.mean(y[:, j("head")] > y[:, j("torso")]) > 0.99  # y points up after de-normalisation
    assert np.mean(y[:, j("torso")] > y[:, j("foot_left")]) > 0.99
    height = np.median(y[:, j("head")] - (y[:, j("foot_left")] + y[:, j("foot_right")]) / 2)
    assert 1.2 < height < 1.9  # metres
    # de-normalised coordinates are isotropic: bone lengths vary less over frames than in normalised ones
    raw = rd.load_sbu(shared_path("sbu_kinect"), denormalize=False)

    def bone_cv(ds: rd.RealDataset) -> float:
        cvs = []
        for s in ds.samples:
            for v, p in ds.layout.edges:
                length = np.linalg.norm(s.data[:, :, v] - s.data[:, :, p], axis=0)  # (T, M)
                cvs.append(length.std() / length.mean())
        return float(np.mean(cvs))

    assert bone_cv(sbu) < 0.85 * bone_cv(raw)


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_files_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "a01_s01_e01_skeleton3D.txt"
    bad.write_text("0 0 0 1\n" * 19 + "0 0 0\n")
    with pytest.raises(CrossclrError, match=r"a01_s01_e01_skeleton3D.txt: line 20: expected 4 values"):
        rd.read_msr_file(bad)
    bad.write_text("0 0 0 1\n" * 21)
    with pytest.raises(CrossclrError, match="multiple of 20"):
        rd.read_msr_file(bad)
    sbu = tmp_path / "skeleton_pos.txt"
    sbu.write_text(",".join(["1"] + ["0.5"] * 89 + ["x"]) + "\n")
    with pytest.raises(CrossclrError, match=r"skeleton_pos.txt: data row 1: 'x' is not a number"):
        rd.read_sbu_file(sbu)
    labels = tmp_path / "actionLabel.txt"
    labels.write_text("s01_e01\nfly: 1 2\n")
    with pytest.raises(CrossclrError, match="line 2: unknown action 'fly'"):
        rd.parse_utkinect_labels(labels)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CrossclrError, match="no aAA_sSS_eEE"):
        rd.load_msr_action3d(empty)
    with pytest.raises(CrossclrError, match="cannot read the MSR file list"):
        rd.load_msr_action3d(tmp_path)


def test_write_arrays_npz_reads_back_through_arrays_reader(sbu: rd.RealDataset, tmp_path: Path) -> None:
    from crossclr_infer.arrays import open_arrays
    from crossclr_infer.layouts import get_layout

    split = rd.standard_splits(sbu)[1]
    out = rd.write_arrays_npz(sbu, split, tmp_path / "sbu_fold2.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sbu_fold2.npz"]  # no temporary left behind
    src = open_arrays(out, get_layout(rd.layout_argument(sbu)))
    try:
        assert src.kind == "concatenated" and len(src) == 282
        assert src.splits.count("val") == len(split.test) == 52
        assert src.class_names == list(rd.SBU_ACTIONS) and src.bodies == 2 and src.joints == 15
        order = [*split.train, *split.test]
        assert src.names == [sbu.samples[i].name for i in order]
        assert np.array_equal(src.labels, sbu.labels[order])
        for k, x in enumerate(src.samples()):
            if k in (0, 281):
                np.testing.assert_array_equal(x, sbu.samples[order[k]].data)
    finally:
        src.close()


# ---------------------------------------------------------------------------------------------- real_data.py


def test_small_data_rules_on_the_real_splits(msr: rd.RealDataset, utk: rd.RealDataset,
                                             sbu: rd.RealDataset) -> None:
    from benchmarks.real_data import SmallData

    hp = SmallData()
    sizes = [len(rd.standard_splits(ds)[0].train) for ds in (msr, utk, sbu)]
    assert sizes == [284, 100, 227]
    assert [hp.queue_size(n) for n in sizes] == [256, 64, 128]  # as the real_data docstring says
    assert [hp.epochs(n) for n in sizes] == [12, 34, 15]
    for n in sizes:
        assert hp.queue_size(n) <= n - hp.batch_size  # own older key has left the queue
        assert hp.epochs(n) * (n // hp.batch_size) >= hp.steps


def test_calibrate_bn_sets_statistics_of_the_data() -> None:
    torch = pytest.importorskip("torch")
    from benchmarks.real_data import calibrate_bn
    from crossclr_infer.layouts import get_layout
    from training.encoders.config import EncoderConfig
    from training.encoders.stgcn import STGCN

    torch.manual_seed(0)
    layout = get_layout("kinect-v1")
    enc = STGCN(layout, EncoderConfig(base_channels=4, hidden_dim=8, stage_blocks=(1, 1, 1)), num_person=2)
    x = torch.randn(20, 3, 12, 20, 2) * 0.3 + torch.linspace(-1, 1, 20)[None, None, None, :, None]
    calibrate_bn({"joint": enc}, x, layout)
    # input BN: channel v·C + c over samples, bodies and frames (numpy reference)
    flat = x.numpy().transpose(0, 4, 3, 1, 2).reshape(40, 60, 12)  # (N, C, T, V, M) -> (N·M, V·C, T)
    np.testing.assert_allclose(enc.data_bn.running_mean.numpy(), flat.mean(axis=(0, 2)), atol=1e-5)
    np.testing.assert_allclose(enc.data_bn.running_var.numpy(), flat.transpose(1, 0, 2).reshape(60, -1).var(
        axis=1, ddof=1), rtol=1e-4)
    assert enc.data_bn.momentum == 0.1 and not enc.training  # restored, eval mode
    # in eval mode the calibrated input BN standardises the data
    with torch.no_grad():
        z = enc.data_bn(torch.as_tensor(flat))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 0.05


def _rec(ds: str, row: str, seed: int, lin: float, knn: float, streams: int = 3, split: str = "s") -> dict:
    run = "random" if row.startswith("random") else row
    return {"dataset": ds, "row": row, "run": run, "seed": seed, "split": split, "linear_last": lin,
            "knn": knn, "linear_best": lin, "streams": ["joint", "motion", "bone"][:streams], "train_s": 1.0,
            "eval_s": 1.0}


def test_summary_mean_std_and_paired_differences_match_numpy() -> None:
    from benchmarks.real_data import SmallData, markdown, markdown_cross, summarise

    rng = np.random.default_rng(0)
    rand, sk, cr = rng.uniform(20, 80, (3, 3))  # per seed
    records = []
    for s in range(3):
        records += [_rec("d", "random init (3s)", s, rand[s], rand[s] / 2),
                    _rec("d", "3s-SkeletonCLR", s, sk[s], sk[s] / 2),
                    _rec("d", "3s-CrosSCLR", s, cr[s], cr[s] / 2)]
    summary = {r["row"]: r for r in summarise(records)}
    line = summary["3s-CrosSCLR"]
    assert line["linear_last"]["mean"] == pytest.approx(cr.mean())
    assert line["linear_last"]["std"] == pytest.approx(cr.std(ddof=1))
    d = cr - rand
    vr = line["vs_random"]["linear_last"]
    assert vr["mean"] == pytest.approx(d.mean()) and vr["std"] == pytest.approx(d.std(ddof=1))
    assert (vr["min"], vr["max"]) == pytest.approx((d.min(), d.max()))
    assert line["vs_random"]["baseline"] == "random init (3s)"
    assert line["vs_single"]["knn"]["mean"] == pytest.approx(((cr - sk) / 2).mean())
    assert "vs_random" not in summary["random init (3s)"]
    md = markdown(list(summary.values()), SmallData())
    assert f"{cr.mean():.1f} ± {cr.std(ddof=1):.1f}" in md and f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}" in md
    assert "3s-CrosSCLR" in markdown_cross(list(summary.values()))
    # rows of a run with other first-stage options ({tag}) pair with that run's own single-view stage
    tagged = records + [_rec("d", "3s-SkeletonCLR {x}", s, 50.0 + s, 0.0) for s in range(3)] + [
        _rec("d", "3s-CrosSCLR {x}", s, 52.0 + 2 * s, 0.0) for s in range(3)]
    line = {r["row"]: r for r in summarise(tagged)}["3s-CrosSCLR {x}"]
    assert line["vs_single"]["baseline"] == "3s-SkeletonCLR {x}"
    assert line["vs_single"]["linear_last"]["values"] == pytest.approx([2.0, 3.0, 4.0])


def test_summary_averages_folds_within_a_seed_before_pairing() -> None:
    from benchmarks.real_data import summarise

    rand, sk = "random init (joint)", "SkeletonCLR (joint)"
    records = [_rec("d", rand, 0, 10, 0, 1, "f1"), _rec("d", rand, 0, 30, 0, 1, "f2"),
               _rec("d", sk, 0, 40, 0, 1, "f1"), _rec("d", sk, 0, 60, 0, 1, "f2")]
    line = {r["row"]: r for r in summarise(records)}[sk]
    assert line["linear_last"]["mean"] == 50 and line["linear_last"]["std"] is None
    assert line["vs_random"]["linear_last"]["mean"] == 30 and line["vs_random"]["baseline"] == rand


def test_holdout_split_uses_training_subjects_only(msr: rd.RealDataset) -> None:
    from benchmarks.real_data import holdout_split

    split = rd.standard_splits(msr)[0]
    hold = holdout_split(msr, split, 0.3)
    assert set(hold.train) | set(hold.test) == set(split.train) and not set(hold.train) & set(hold.test)
    subj = {i: msr.samples[i].subject for i in split.train}
    assert not {subj[i] for i in hold.train} & {subj[i] for i in hold.test}  # held out by subject
    assert len(hold.test) >= 0.3 * len(split.train) and len(hold.train) > 0


def test_option_and_variant_parsing() -> None:
    pytest.importorskip("torch")  # ssl_config builds training's SSLConfig
    from benchmarks.real_data import SmallData, parse_options, parse_variants, ssl_config

    assert parse_options("topk=3; mine_on=fused;cross_weight=0.5") == (("topk", 3), ("mine_on", "fused"),
                                                                       ("cross_weight", 0.5))
    (v,) = parse_variants("warm:cross_warmup=50;topk=2")
    assert v.key == "crossclr-3s-warm" and dict(v.options) == {"cross_warmup": 50, "topk": 2}
    with pytest.raises(SystemExit, match="first stage"):
        parse_variants("x:extreme_augment=0.5")
    hp = SmallData(ssl_options=(("topk", 2),))
    cfg = ssl_config(hp, 100, {"mine_on": "fused"})
    assert (cfg.queue_size, cfg.topk, cfg.mine_on, cfg.momentum) == (64, 2, "fused", 0.99)
