"""Synthetic NTU-25 actions: names and splits, determinism, the one preprocessing, learnability."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import synth
from crossclr_infer.cache import open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.ntu import parse_ntu_name, split_of
from crossclr_infer.preprocess import normalize_sequence

NTU = get_layout("ntu-rgb+d")
NAME = re.compile(r"S\d{3}C00[1-3]P0[0-4]\dR00[12]A\d{3}")
# NTU-60 cross-subject training subjects (docs/design.md §2)
NTU60_XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}


def test_tiny_cache_names_splits_and_shapes(tiny_cache: Path) -> None:
    with open_cache(tiny_cache) as c:
        assert c.layout == NTU and c.splits == ["train", "val"]
        assert c.class_names == ["waving", "clapping", "kicking", "squatting"]
        assert c.sample_shape == (3, 50, 25, 2) and c.benchmark == "synthetic"
        assert c.preprocess["mode"] == "official" and c.preprocess["frames"] == 50
        names = []
        for split in c.splits:
            s = c.split(split)
            for name, label in zip(s.names, s.labels, strict=True):
                assert NAME.fullmatch(name), name
                n = parse_ntu_name(name)
                assert n.action == label + 1 and 1 <= n.setup <= 17
                assert split_of(name, "ntu60-xsub") == split
                assert (n.performer in NTU60_XSUB_TRAIN) == (split == "train")
            names += s.names
            data = s.read_all()
            assert np.isfinite(data).all()
        assert len(set(names)) == len(names) == 48
        # 60 % of each class's 12 samples in train
        np.testing.assert_array_equal(c.split("train").class_counts(4), [7, 7, 7, 7])


def test_cache_holds_the_official_preprocessing_of_the_raw_sequences(tiny_cache: Path) -> None:
    seqs, meta = synth.synthesize_raw(4, 12, seed=0)
    with open_cache(tiny_cache) as c:
        by_name = {}
        for split in c.splits:
            s = c.split(split)
            by_name.update({n: (s, i) for i, n in enumerate(s.names)})
        for i in (0, 13, 47):
            s, k = by_name[synth.synth_sample_name(meta, i)]
            expected = normalize_sequence(seqs[i], NTU, mode="official", frames=50)
            np.testing.assert_array_equal(s[k][0], expected)
            assert s.lengths[k] == seqs[i].shape[1]
            x = s[k][0]
            # property of the official preprocessing: the center joint (index 20) sits at the origin
            np.testing.assert_allclose(x[:, :, NTU.center, 0], 0.0, atol=1e-6)


def test_raw_sequences_vary_and_bodies_are_rigid() -> None:
    seqs, meta = synth.synthesize_raw(10, 20, seed=3)
    lengths = np.array([s.shape[1] for s in seqs])
    assert lengths.min() >= synth.RAW_LENGTH[0] and lengths.max() <= synth.RAW_LENGTH[1]
    assert len(set(lengths.tolist())) > 20
    two = np.array([np.abs(s[..., 1]).sum() > 0 for s in seqs])
    assert 0.1 < two.mean() < 0.5  # some samples have a second body, most do not
    # camera coordinates: bodies stand 2..4.5 m in front of the camera
    depth = np.array([s[2, :, NTU.center, 0].mean() for s in seqs])
    assert depth.min() > 1.8 and depth.max() < 4.8
    # bone lengths: nearly constant within a sample (sensor noise only), different across performers
    arm = [np.linalg.norm(s[:, :, 5, 0] - s[:, :, 4, 0], axis=0) for s in seqs]  # elbow - shoulder (left)
    within = np.median([a.std() for a in arm])
    by_performer = {}
    for a, p in zip(arm, meta.performer, strict=True):
        by_performer.setdefault(int(p), []).append(np.median(a))
    across = np.std([np.mean(v) for v in by_performer.values()])
    assert within < 0.08 and across > 0.01


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = synth.synthesize_raw(3, 4, seed=5)[0]
    b = synth.synthesize_raw(3, 4, seed=5)[0]
    c = synth.synthesize_raw(3, 4, seed=6)[0]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    p1 = synth.generate_synthetic(tmp_path / "a.h5", classes=3, per_class=4, seed=5, frames=20)
    p2 = synth.generate_synthetic(tmp_path / "b.h5", classes=3, per_class=4, seed=5, frames=20)
    with open_cache(p1) as c1, open_cache(p2) as c2:
        assert c1.frames == 20
        for s in c1.splits:
            np.testing.assert_array_equal(c1.split(s).read_all(), c2.split(s).read_all())
            assert c1.split(s).names == c2.split(s).names


def test_classes_beyond_the_basic_motions_combine_two() -> None:
    names = synth.synth_class_names(14)
    assert names[:12] == [m.name for m in synth.MOTIONS]
    assert names[12] == "waving + clapping" and names[13] == "waving + kicking"
    assert len(set(synth.synth_class_names(synth.MAX_CLASSES))) == synth.MAX_CLASSES
    with pytest.raises(CrossclrError, match="expected 1..78"):
        synth.class_motions(synth.MAX_CLASSES + 1)


def _ridge_accuracy(xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray, yva: np.ndarray, k: int) -> float:
    mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
    a, b = (xtr - mu) / sd, (xva - mu) / sd
    w = np.linalg.solve(a @ a.T + 10.0 * np.eye(len(a)), np.eye(k)[ytr])  # kernel form, (N, K)
    return float(((b @ a.T @ w).argmax(1) == yva).mean())


def test_learnable_but_not_trivial_for_a_linear_model() -> None:
    k = 6
    seqs, meta = synth.synthesize_raw(k, 30, seed=1)
    x = np.stack([normalize_sequence(s, NTU, mode="official", frames=20) for s in seqs])
    x = x.reshape(len(seqs), -1)  # (N, C, T, V, M) -> (N, C·T·V·M)
    train = np.array([p in NTU60_XSUB_TRAIN for p in meta.performer])
    acc = _ridge_accuracy(x[train], meta.label[train], x[~train], meta.label[~train], k)
    assert 2.0 / k < acc < 0.97  # far above chance, below perfect (benchmarks/synth_baseline.py measures it)


def test_synth_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    out = tmp_path / "demo.h5"
    result = CliRunner().invoke(crossclr, ["synth", "--out", str(out), "--classes", "3", "--per-class", "5",
                                           "--seed", "1", "--frames", "30"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}: train 9, val 6" in result.output
    with open_cache(out) as c:
        assert c.num_class == 3 and c.frames == 30


def test_synth_bad_classes_exit_nonzero_without_file(tmp_path: Path, capsys) -> None:
    import cli

    out = tmp_path / "demo.h5"
    with pytest.raises(SystemExit) as e:
        cli.main(["synth", "--out", str(out), "--classes", "500"])
    assert e.value.code != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------- 2-D COCO-17 option
def test_coco17_keypoints_are_the_pinhole_projection_of_the_3d_performances() -> None:
    coco = get_layout("coco-17")
    seqs3, meta3 = synth.synthesize_raw(3, 2, seed=0)
    seqs2, meta2 = synth.synthesize_raw(3, 2, seed=0, layout="coco-17")
    np.testing.assert_array_equal(meta2.label, meta3.label)
    for x3, x2 in zip(seqs3, seqs2, strict=True):
        assert x2.shape == (3, x3.shape[1], 17, 2)
        score = x2[2]
        detected = score > 0
        assert ((score >= 0.5) & (score <= 1.0) | ~detected).all()
        assert 0.9 < detected[:, :, 0].mean() <= 1.0  # a few joints of the performer are missed
        assert np.all(x2[:, ~detected] == 0)
        absent = ~np.any(x3 != 0, axis=(0, 2))  # (T, M) bodies not in the frame
        assert not detected[absent.nonzero()[0], :, absent.nonzero()[1]].any()
        for name in ("left_wrist", "right_knee", "left_shoulder"):  # body joints: the NTU joint projected
            j2 = coco.joint_names.index(name)
            side, part = name.split("_")
            j3 = NTU.joint_names.index(f"{part}_{side}")
            x, y, z = x3[:, :, j3].astype(np.float64)
            z = np.where(z == 0, 1.0, z)  # absent bodies (not detected either)
            ok = detected[:, j2]
            np.testing.assert_allclose(x2[0, :, j2][ok], (320 + 500 * x / z)[ok], rtol=1e-5)
            np.testing.assert_allclose(x2[1, :, j2][ok], (240 - 500 * y / z)[ok], rtol=1e-5)
        nose, head = coco.joint_names.index("nose"), NTU.joint_names.index("head")
        both = detected[:, nose, 0]
        head_u = 320 + 500 * x3[0, :, head, 0] / x3[2, :, head, 0]
        assert np.abs(x2[0, both, nose, 0] - head_u[both]).max() < 40  # the face sits at the head


def test_coco17_cache_holds_the_pose2d_preprocessing(tmp_path: Path) -> None:
    out = synth.generate_synthetic(tmp_path / "coco.h5", classes=3, per_class=4, seed=1, frames=20,
                                   layout="coco-17")
    seqs, meta = synth.synthesize_raw(3, 4, seed=1, layout="coco-17")
    with open_cache(out) as c:
        assert c.layout == get_layout("coco-17") and c.sample_shape == (3, 20, 17, 2)
        assert c.preprocess["mode"] == "pose2d"
        s = c.split("train")
        i = [synth.synth_sample_name(meta, k) for k in range(len(seqs))].index(s.names[0])
        np.testing.assert_array_equal(s[0][0], normalize_sequence(seqs[i], get_layout("coco-17"),
                                                                 mode="pose2d", frames=20))
    with pytest.raises(CrossclrError, match="layout 'kinect-v2'"):
        synth.synthesize_raw(3, 1, layout="kinect-v2")


# ------------------------------------------------------------------------------------- every built-in layout
ALL_LAYOUTS = sorted(synth.SYNTH_MODES)


def test_every_builtin_layout_can_be_synthesized() -> None:
    from crossclr_infer.layouts import BUILTIN_LAYOUTS

    assert set(synth.SYNTH_MODES) == set(BUILTIN_LAYOUTS)
    for name, points in synth.LAYOUT_POINTS.items():
        assert set(points) == set(BUILTIN_LAYOUTS[name].joint_names)
    for name, mode in synth.SYNTH_MODES.items():  # each layout's default preprocessing
        assert mode == ("pose2d" if BUILTIN_LAYOUTS[name].scored else "official")


def _leave_one_out_1nn(x: np.ndarray, y: np.ndarray) -> float:
    d = ((x[:, None] - x[None]) ** 2).sum(-1)  # (N, N) squared distances
    np.fill_diagonal(d, np.inf)
    return float((y[d.argmin(1)] == y).mean())


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_layout_raw_data_units_and_class_dependent_motion(name: str) -> None:
    lay = get_layout(name)
    seqs, meta = synth.synthesize_raw(4, 16, seed=0, layout=name)
    for x in seqs:
        assert x.shape[0] == 3 and x.shape[2:] == (lay.num_joints, 2) and np.isfinite(x).all()
    body = np.concatenate([x[..., 0] for x in seqs], axis=1)  # (3, ΣT, V) the performers
    y = np.where(body[2] > 0, body[1], np.nan) if lay.scored else body[1]  # (ΣT, V) detected joints' y
    height = np.nanmean(np.nanmax(y, axis=1) - np.nanmin(y, axis=1))  # vertical extent of a body per frame
    if lay.scored:  # (x, y) pixels of a 640 × 480 image (a foot may leave it), a score in [0, 1] (0: missed)
        seen = body[2] > 0
        assert ((body[2] >= 0) & (body[2] <= 1)).all() and 0.9 < seen.mean() < 1.0
        assert (body[0][seen] > 0).all() and (body[0][seen] < 640).all()
        assert (body[1][seen] > -48).all() and (body[1][seen] < 528).all() and 150 < height < 450
        hips = [lay.joint_names.index(h) for h in ("left_hip", "right_hip")] if name == "coco-17" else \
            [lay.joint_names.index(h) for h in ("LHip", "RHip")]
        head = lay.joint_names.index("nose" if name == "coco-17" else "Nose")
        ok = seen[:, head] & seen[:, hips].all(1)
        assert (body[1, ok, head] < body[1][:, hips][ok].mean(1)).all()  # image y down: the head is above
    else:
        unit = 1000.0 if name == "azure-kinect-32" else 1.0  # millimetres, else metres
        assert 1.2 < height / unit < 2.0
        head = lay.joint_names.index("nose" if name == "mediapipe-pose-33" else "head")
        foot = lay.joint_names.index({"azure-kinect-32": "foot_left", "mediapipe-pose-33": "left_ankle"}
                                     .get(name, "foot_left"))
        up = 1.0 if name in ("ntu-rgb+d", "kinect-v1") else -1.0  # Kinect v1/v2 y up; Azure, MediaPipe y down
        assert (up * (body[1, :, head] - body[1, :, foot]) > 0).mean() > 0.95
    if name == "mediapipe-pose-33":  # world landmarks: the origin at the hips' midpoint
        mid = (body[:, :, lay.hips[0]] + body[:, :, lay.hips[1]]) / 2
        np.testing.assert_allclose(mid, 0.0, atol=1e-5)
    x = np.stack([normalize_sequence(s, lay, mode=synth.SYNTH_MODES[name], frames=20) for s in seqs])
    assert np.isfinite(x).all()
    acc = _leave_one_out_1nn(x.reshape(len(x), -1), meta.label)  # (N, C·T·V·M) raw features
    assert acc > 0.4  # chance: 0.25; the classes move differently


@pytest.mark.parametrize("name", ALL_LAYOUTS)
def test_synth_and_info_for_every_layout(tmp_path: Path, name: str) -> None:
    from click.testing import CliRunner

    from cli import crossclr
    from crossclr_infer.preprocess import centre_of

    out = tmp_path / f"{name}.h5"
    result = CliRunner().invoke(crossclr, ["synth", "--out", str(out), "--classes", "3", "--per-class", "4",
                                           "--frames", "16", "--layout", name])
    assert result.exit_code == 0, result.output
    lay = get_layout(name)
    mode = synth.SYNTH_MODES[name]
    with open_cache(out) as c:
        assert c.layout == lay and c.sample_shape == (3, 16, lay.num_joints, 2)
        assert c.benchmark == "synthetic" and c.preprocess["mode"] == mode
        data = c.split("train").read_all()
        assert np.isfinite(data).all() and np.abs(data[..., 0]).sum() > 0
        if lay.scored:
            assert ((data[:, 2] >= 0) & (data[:, 2] <= 1)).all()
    info = CliRunner().invoke(crossclr, ["info", str(out)])
    assert info.exit_code == 0, info.output
    assert f"layout:      {name} ({lay.num_joints} joints" in info.output
    assert f"centred on:  {centre_of(lay, mode)}" in info.output
    assert "benchmark:   synthetic" in info.output
