"""Preprocessing against independent plain-Python references and hand values (docs/design.md §2)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.ntu import read_skeleton
from crossclr_infer.preprocess import (
    MODES,
    center_sequence,
    fill_missing_joints,
    normalize_sequence,
    preprocess_raw,
    resize_frames,
    rotate_y,
    rotation_angles,
    select_bodies,
    sequence_length,
    valid_length,
)
from crossclr_infer.skeleton import RawSkeleton
from tests.conftest import shared_path

NTU = get_layout("ntu-rgb+d")
CENTER, (LEFT, RIGHT) = 20, (4, 8)  # 1-based joints 21, 5 and 9 of the NTU documentation


def _real_raws() -> list[tuple[str, RawSkeleton]]:
    root = shared_path("ntu_skeleton_samples")
    return [(p.name, read_skeleton(p)) for p in sorted(root.rglob("*.skeleton"))]


# ------------------------------------------------------------------- independent plain-loop references
def _select_loop(raw: RawSkeleton, frames: int | None = None) -> np.ndarray:
    t = raw.num_frames if frames is None else frames
    out = np.zeros((3, t, raw.num_joints, 2), np.float32)
    k = 0
    for f in range(raw.num_frames):
        for m in range(int(raw.bodies_per_frame[f])):
            if m < 2 and f < t:
                for j in range(raw.num_joints):
                    out[:, f, j, m] = raw.xyz[k, j]
            k += 1
    return out


def _resize_loop(seq: list[list[float]], length: int, frames: int) -> list[list[float]]:
    """OpenCV INTER_LINEAR (half-pixel) written out with scalar math, one output frame at a time."""
    out = []
    for d in range(frames):
        s = (d + 0.5) * length / frames - 0.5
        i0 = math.floor(s)
        w = s - i0
        if i0 < 0:
            i0, w = 0, 0.0
        if i0 >= length - 1:
            i0, w = length - 1, 0.0
        nxt = seq[min(i0 + 1, length - 1)]
        out.append([(1 - w) * a + w * b for a, b in zip(seq[i0], nxt, strict=True)])
    return out


def _official_loop(raw: RawSkeleton, frames: int = 50) -> np.ndarray:
    """Steps 1-5 of docs/design.md §2 with explicit loops over frames, bodies and joints."""
    x = _select_loop(raw).astype(np.float64)  # (3, T, V, 2)
    t_all, v = x.shape[1], x.shape[2]
    length = sum(1 for t in range(t_all) if abs(x[:, t, 0, 0]).sum() != 0)
    out = np.zeros((3, frames, v, 2))
    for m in range(2):
        for t in range(t_all):
            c = x[:, t, CENTER, m].copy()
            for j in range(v):
                x[:, t, j, m] -= c
        seq = [list(x[:, t, :, m].reshape(-1)) for t in range(length)]
        res = _resize_loop(seq, length, frames)
        body = np.array(res).reshape(frames, 3, v)  # (T, 3*V) -> (T, 3, V)
        vz_sum = sum(body[t, 2, RIGHT] - body[t, 2, LEFT] for t in range(frames))
        for t in range(frames):
            vx = body[t, 0, RIGHT] - body[t, 0, LEFT]
            vz = body[t, 2, RIGHT] - body[t, 2, LEFT]
            theta = math.acos(vx / (math.sqrt(vx * vx + vz * vz) + 1e-4))
            if vz_sum >= 0:
                theta = -theta
            for j in range(v):
                px, py, pz = body[t, :, j]
                out[:, t, j, m] = [math.cos(theta) * px - math.sin(theta) * pz, py,
                                   math.sin(theta) * px + math.cos(theta) * pz]
    return out.astype(np.float32)


# ------------------------------------------------------------------- body selection
def test_select_bodies_official_matches_loop() -> None:
    for name, raw in _real_raws():
        x = select_bodies(raw, "official")
        assert x.shape == (3, raw.num_frames, 25, 2) and x.dtype == np.float32, name
        np.testing.assert_array_equal(x, _select_loop(raw))


def _three_body_raw(raw: RawSkeleton, extra_frames: int) -> RawSkeleton:
    """Add a third body (ID 7, a shifted copy of body 0) to the first ``extra_frames`` frames."""
    per = raw.bodies_per_frame.copy()
    ids, xyz = [], []
    k = 0
    for f in range(raw.num_frames):
        for _ in range(per[f]):
            ids.append(raw.body_ids[k])
            xyz.append(raw.xyz[k])
            k += 1
        if f < extra_frames:
            ids.append(7)
            xyz.append(raw.xyz[k - per[f]] + np.float32(2.0))
    per[:extra_frames] += 1
    return RawSkeleton(raw.num_frames, per, np.array(ids, np.int64), np.array(xyz, np.float32))


def test_select_bodies_third_body_dropped_in_official_mode() -> None:
    raw = read_skeleton(shared_path("ntu_skeleton_samples", "PhotonicTree", "S017C003P020R002A054.skeleton"))
    three = _three_body_raw(raw, 5)
    assert three.bodies_per_frame[:5].tolist() == [3] * 5
    np.testing.assert_array_equal(select_bodies(three, "official"), select_bodies(raw, "official"))


def test_select_bodies_energy_drops_short_noise_body_and_orders_by_motion() -> None:
    raw = read_skeleton(shared_path("ntu_skeleton_samples", "PhotonicTree", "S017C003P020R002A054.skeleton"))
    three = _three_body_raw(raw, 5)  # body 7 appears in 5 frames only: noise
    x = select_bodies(three, "energy", max_bodies=2)
    ids = np.unique(raw.body_ids)
    energy = [raw.xyz[raw.body_ids == b].std(axis=0).sum() for b in ids]  # hand-computed motion energy
    order = ids[np.argsort(energy)[::-1]]
    expected = np.zeros_like(x)
    for slot, body in enumerate(order):
        for k in np.flatnonzero(raw.body_ids == body):
            expected[:, raw.frame_index[k], :, slot] = raw.xyz[k].T
    np.testing.assert_array_equal(x, expected)  # nothing of body 7 anywhere


# ------------------------------------------------------------------- steps
def test_valid_length_hand_computed() -> None:
    x = np.zeros((3, 10, 25, 2), np.float32)
    x[0, [0, 2, 3, 7], 0, 0] = 1.0  # joint 0 of body 0 present in 4 frames
    x[1, 8, 5, 0] = 1.0  # other joints and body 1 do not count
    x[2, 9, 0, 1] = 1.0
    assert valid_length(x) == 4
    assert sequence_length(x, "official") == 4 and sequence_length(x, "energy") == 6
    assert sequence_length(x, "none") == 10


def test_resize_hand_computed() -> None:
    x = np.zeros((1, 2, 1, 1), np.float32)
    x[0, :, 0, 0] = [0.0, 4.0]
    # s = (d + 0.5)/2 - 0.5 = -0.25, 0.25, 0.75, 1.25 -> clamp, 1, 3, clamp
    np.testing.assert_allclose(resize_frames(x, 2, 4)[0, :, 0, 0], [0.0, 1.0, 3.0, 4.0])
    x = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    # downsampling 6 -> 3: s = 0.5, 2.5, 4.5 -> means of neighbours
    np.testing.assert_allclose(resize_frames(x, 6, 3)[0, :, 0, 0], [0.5, 2.5, 4.5])
    # only the first `length` frames are used
    np.testing.assert_allclose(resize_frames(x, 1, 3)[0, :, 0, 0], [0.0, 0.0, 0.0])


@pytest.mark.parametrize("length", [1, 2, 3, 7, 49, 50, 51, 103, 300])
def test_resize_matches_scalar_loop(length: int) -> None:
    rng = np.random.default_rng(length)
    x = rng.normal(size=(3, length + 5, 4, 2)).astype(np.float32)
    got = resize_frames(x, length, 50)
    for m in range(2):
        seq = [list(x[:, t, :, m].reshape(-1).astype(np.float64)) for t in range(length)]
        ref = np.array(_resize_loop(seq, length, 50)).reshape(50, 3, 4).transpose(1, 0, 2)
        np.testing.assert_allclose(got[..., m], ref, rtol=0, atol=1e-6)


def test_center_puts_center_joint_at_origin_and_keeps_padding() -> None:
    raw = read_skeleton(shared_path("ntu_skeleton_samples", "PhotonicTree", "S001C001P001R001A001.skeleton"))
    x = center_sequence(select_bodies(raw), NTU)
    assert np.all(x[:, :, CENTER, :] == 0)
    assert np.all(x[..., 1] == 0)  # one-body file: body slot 1 is padding
    ref = select_bodies(raw)
    np.testing.assert_allclose(x[:, 5, 3, 0], ref[:, 5, 3, 0] - ref[:, 5, CENTER, 0], atol=1e-7)


def test_rotation_angles_hand_computed() -> None:
    x = np.zeros((3, 2, 25, 1))
    x[:, 0, RIGHT, 0] = [1.0, 5.0, 1.0]  # v = (1, 0, 1) -> 45°, v_z sum > 0 -> negative
    x[:, 1, RIGHT, 0] = [0.0, 0.0, 2.0]  # v = (0, 0, 2) -> 90°
    theta = rotation_angles(x, NTU)[:, 0]
    np.testing.assert_allclose(theta, [-math.acos(1 / (math.sqrt(2) + 1e-4)), -math.acos(0.0)], atol=1e-12)
    y = rotate_y(x, theta[:, None])
    np.testing.assert_allclose(y[:, 0, RIGHT, 0], [math.sqrt(2), 5.0, 0.0], atol=2e-4)
    np.testing.assert_allclose(y[:, 1, RIGHT, 0], [2.0, 0.0, 0.0], atol=1e-6)


# ------------------------------------------------------------------- whole pipeline
def test_official_matches_plain_loop_reference_on_real_files() -> None:
    for name, raw in _real_raws():
        got = preprocess_raw(raw, NTU, "official", 50)
        assert got.shape == (3, 50, 25, 2) and got.dtype == np.float32, name
        np.testing.assert_allclose(got, _official_loop(raw), rtol=0, atol=2e-5, err_msg=name)


def test_official_properties_on_real_files() -> None:
    worst_residual = 0.0
    for name, raw in _real_raws():
        x = select_bodies(raw)
        y = preprocess_raw(raw, NTU, "official", 50)
        assert np.all(y[:, :, CENTER, :] == 0), name  # center joint at the origin
        for m in range(2):
            if not np.any(x[..., m]):
                assert not np.any(y[..., m])
                continue
            before = resize_frames(center_sequence(x, NTU), valid_length(x), 50)[..., m]
            vz = before[2, :, RIGHT] - before[2, :, LEFT]
            agree = (vz >= 0) == (vz.sum() >= 0)  # frames with the sequence's z sign
            after = y[:, :, RIGHT, m] - y[:, :, LEFT, m]  # (3, 50)
            present = np.abs(before).sum(axis=(0, 2)) > 0  # (50,) frames where the body exists
            ok = agree & present
            # shoulders on x, up to the effect of the 1e-4 added to |v|: acos(c·|v|/(|v|+eps)) moves θ by
            # at most sqrt(2·eps/|v|), i.e. z by at most sqrt(2·eps·|v|)
            v_norm = np.hypot(before[0, :, RIGHT] - before[0, :, LEFT], vz)
            assert np.all(np.abs(after[2, ok]) <= np.sqrt(2e-4 * v_norm[ok]) + 1e-6), name
            assert np.all(after[0, ok] > 0)
            if np.any(~agree & present):
                worst_residual = max(worst_residual, float(np.abs(after[2, ~agree & present]).max()))
            # rotation about y keeps heights and lengths
            np.testing.assert_allclose(y[1, ..., m], before[1], atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(y[..., m], axis=0), np.linalg.norm(before, axis=0),
                                       atol=1e-5)
    assert 1e-2 < worst_residual < 0.2, worst_residual  # the official residual is reproduced, not fixed


def test_energy_aligns_every_frame_and_drops_empty_frames() -> None:
    for name, raw in _real_raws():
        y = preprocess_raw(raw, NTU, "energy", 50)
        assert y.shape == (3, 50, 25, 2), name
        for m in range(2):
            after = y[:, :, RIGHT, m] - y[:, :, LEFT, m]
            present = np.abs(y[..., m]).sum(axis=(0, 2)) > 0
            np.testing.assert_allclose(after[2, present], 0.0, atol=1e-5, err_msg=name)
    raw = _real_raws()[0][1]
    empty = RawSkeleton(raw.num_frames + 3, np.r_[[0, 0], raw.bodies_per_frame, [0]], raw.body_ids, raw.xyz)
    np.testing.assert_allclose(preprocess_raw(empty, NTU, "energy"), preprocess_raw(raw, NTU, "energy"),
                               atol=1e-6)


def test_none_mode_is_ntu_gendata_layout() -> None:
    for name, raw in _real_raws():
        got = preprocess_raw(raw, NTU, "none", 300)
        assert got.shape == (3, 300, 25, 2), name
        np.testing.assert_array_equal(got, _select_loop(raw, 300))
        np.testing.assert_array_equal(preprocess_raw(raw, NTU, "none", 20), _select_loop(raw, 20))  # crop


def test_layout_driven_on_kinect_v1() -> None:
    layout = get_layout("kinect-v1")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 37, 20, 2)).astype(np.float32)
    for mode in ("official", "energy"):
        y = normalize_sequence(x, layout, mode=mode, frames=50)
        assert y.shape == (3, 50, 20, 2)
        assert np.all(y[:, :, layout.center, :] == 0)
    y = normalize_sequence(x, layout, mode="energy", frames=50)
    left, right = layout.shoulders
    np.testing.assert_allclose(y[2, :, right] - y[2, :, left], 0.0, atol=1e-5)


def test_layout_without_shoulders_skips_rotation() -> None:
    from dataclasses import replace

    layout = replace(NTU, shoulders=None)
    raw = _real_raws()[0][1]
    x = select_bodies(raw)
    y = normalize_sequence(x, layout, mode="official")
    np.testing.assert_allclose(y, resize_frames(center_sequence(x, NTU), valid_length(x), 50), atol=1e-7)


def test_errors(tmp_path: Path) -> None:
    raw = _real_raws()[0][1]
    with pytest.raises(CrossclrError, match="unknown preprocessing mode"):
        preprocess_raw(raw, NTU, "fancy")
    with pytest.raises(CrossclrError, match="20"):
        preprocess_raw(raw, get_layout("kinect-v1"))
    empty = RawSkeleton(4, np.zeros(4, np.int64), np.zeros(0, np.int64), np.zeros((0, 25, 3), np.float32))
    for mode in ("official", "energy", "mamp", "pose2d"):
        with pytest.raises(CrossclrError, match="no skeleton"):
            preprocess_raw(empty, NTU, mode)
    assert preprocess_raw(empty, NTU, "none", 10).shape == (3, 10, 25, 2)
    with pytest.raises(CrossclrError, match="expected a"):
        normalize_sequence(np.zeros((3, 5, 24, 2)), NTU)
    assert set(MODES) == {"official", "none", "energy", "mamp", "pose2d"}


def test_mode_registry_holds_the_defaults_and_the_scored_mode() -> None:
    assert {m.name: m.default_frames for m in MODES.values()} == {
        "official": 50, "none": 300, "energy": 50, "mamp": 120, "pose2d": 50}
    assert [m.name for m in MODES.values() if m.scored] == ["pose2d"]
    assert all(name == m.name for name, m in MODES.items())
    with pytest.raises(CrossclrError, match=r"unknown preprocessing mode 'nope'; expected one of \['offic"):
        normalize_sequence(np.zeros((3, 5, 25, 2)), NTU, mode="nope")


def _mamp_reference(x: np.ndarray, origin_joint: int, frames: int) -> np.ndarray:
    """MAMP/CTR-GCN's steps written as plain loops: drop frames without bodies, subtract body 0's origin joint
    of its first frame from every present body, keep the central 95 % of the frames
    (bias = int(0.05 · T / 2)), resize with torch-bilinear (align_corners=False) arithmetic per frame."""
    keep = [t for t in range(x.shape[1]) if np.any(x[:, t] != 0)]
    x = x[:, keep].astype(np.float64)
    t_len = x.shape[1]
    first = next(t for t in range(t_len) if np.any(x[:, t, :, 0] != 0))
    origin = x[:, first, origin_joint, 0].copy()
    for t in range(t_len):
        for m in range(x.shape[3]):
            if np.any(x[:, t, :, m] != 0):
                x[:, t, :, m] -= origin[:, None]
    bias = int((1 - 0.95) * t_len / 2)
    x = x[:, bias:t_len - bias]
    n = x.shape[1]
    out = np.zeros((3, frames) + x.shape[2:])
    for d in range(frames):
        src = max((d + 0.5) * n / frames - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, n - 1)
        w = src - i0
        out[:, d] = (1 - w) * x[:, i0] + w * x[:, i1]
    return out


def test_mamp_mode_matches_a_loop_reference_on_real_files() -> None:
    for name, raw in _real_raws():
        y = preprocess_raw(raw, NTU, "mamp", 120)
        ref = _mamp_reference(select_bodies(raw, "energy"), 1, 120)
        assert y.shape == (3, 120, 25, 2), name
        np.testing.assert_allclose(y, ref, atol=2e-6, err_msg=name)
        assert NTU.origin_joint == 1 and NTU.joint_names[1] == "spine_mid"


# ------------------------------------------------------------------------------------------ pose2d (2-D)
COCO = get_layout("coco-17")


def _pose2d_loop(x: np.ndarray, layout, frames: int) -> np.ndarray:
    """The pose2d steps as plain loops (scale: the median torso length, present in the test data)."""
    _, t_len, v, m = x.shape
    seen = [[[bool(x[2, t, j, b] > 0) for b in range(m)] for j in range(v)] for t in range(t_len)]
    keep = [t for t in range(t_len) if any(seen[t][j][b] for j in range(v) for b in range(m))]
    (ls, rs), (lh, rh) = layout.shoulders, layout.hips
    lengths = []
    for t in keep:
        for b in range(m):
            if all(seen[t][j][b] for j in (ls, rs, lh, rh)):
                mid_s = (x[:2, t, ls, b].astype(np.float64) + x[:2, t, rs, b]) / 2
                mid_h = (x[:2, t, lh, b].astype(np.float64) + x[:2, t, rh, b]) / 2
                lengths.append(math.dist(mid_s, mid_h))
    scale = float(np.median(lengths))
    out = np.zeros((3, len(keep), v, m))
    for k, t in enumerate(keep):
        for b in range(m):
            js = [j for j in range(v) if seen[t][j][b]]
            if not js:
                continue
            if seen[t][lh][b] and seen[t][rh][b]:
                root = (x[:2, t, lh, b].astype(np.float64) + x[:2, t, rh, b]) / 2
            elif seen[t][layout.center][b]:
                root = x[:2, t, layout.center, b].astype(np.float64)
            else:
                root = np.mean([x[:2, t, j, b] for j in js], axis=0)
            for j in js:
                out[:2, k, j, b] = (x[:2, t, j, b] - root) / scale
                out[2, k, j, b] = x[2, t, j, b]
    return resize_frames(out.astype(np.float32), len(keep), frames)


def _coco_sequence(seed: int = 0, frames: int = 30) -> np.ndarray:
    """(3, T, 17, 2) pixels and scores: missing joints, a body that leaves, an empty frame, a lost hip."""
    rng = np.random.default_rng(seed)
    x = np.zeros((3, frames, 17, 2), np.float32)
    x[:2] = rng.uniform(50, 600, (2, frames, 17, 2))
    x[2] = rng.uniform(0.2, 1.0, (frames, 17, 2))
    miss = rng.random((frames, 17, 2)) < 0.1
    x[:, miss] = 0  # undetected joints: (0, 0, 0)
    x[:, 20:, :, 1] = 0  # the second body leaves
    x[:, 7] = 0  # nobody in frame 7
    x[:, 3, 11, 0] = 0  # frame 3: left hip lost -> the nose is the root
    x[:, 4, [0, 11], 0] = 0  # frame 4: nose and a hip lost -> the mean of the seen joints
    x[:, 5, [5, 6, 11, 12], 0] = 0
    return x


def test_pose2d_matches_a_loop_reference() -> None:
    x = _coco_sequence()
    y = normalize_sequence(x, COCO, mode="pose2d", frames=40)
    np.testing.assert_allclose(y, _pose2d_loop(x, COCO, 40), atol=1e-5)
    assert y.shape == (3, 40, 17, 2)
    assert sequence_length(x, "pose2d") == 29


def test_pose2d_ignores_position_and_image_scale_keeps_scores() -> None:
    x = _coco_sequence(1)
    moved = x.copy()
    seen = x[2] > 0
    moved[:2] = np.where(seen, 3.5 * x[:2] + np.array([40.0, -25.0])[:, None, None, None], 0)
    y, y2 = (normalize_sequence(a, COCO, mode="pose2d", frames=29) for a in (x, moved))
    np.testing.assert_allclose(y2, y, atol=1e-5)
    keep = np.any(x[2] > 0, axis=(1, 2))
    np.testing.assert_array_equal(y[2], x[2, keep])  # 29 kept frames -> 29 frames: scores as given
    assert np.all(y[:, ~(x[2, keep] > 0)] == 0)  # missing joints are (0, 0, 0)


def test_pose2d_scale_fallbacks_and_no_rotation() -> None:
    x = np.zeros((3, 2, 17, 1), np.float32)
    x[:, 0, 5, 0], x[:, 0, 6, 0] = (10, 0, 1), (30, 0, 1)  # only the shoulders: width 20 is the scale
    x[:, 1, 5, 0], x[:, 1, 6, 0] = (10, 5, 1), (30, 5, 1)
    y = normalize_sequence(x, COCO, mode="pose2d", frames=2)
    np.testing.assert_allclose(y[:2, 0, [5, 6], 0], [[-0.5, 0.5], [0.0, 0.0]], atol=1e-6)  # mean-centred
    x[:, :, 6] = 0
    x[:, 0, 7, 0], x[:, 1, 7, 0] = (10, 40, 0.5), (10, 45, 0.5)  # shoulder + elbow: box diagonal 40
    y = normalize_sequence(x, COCO, mode="pose2d", frames=2)
    np.testing.assert_allclose(y[1, 0, [5, 7], 0], [-0.5, 0.5], atol=1e-6)


def test_select_bodies_pose2d_orders_by_summed_score() -> None:
    xyz = np.ones((5, 17, 3), np.float32)
    xyz[:, :, 2] = [[0.2], [0.9], [0.3], [0.9], [0.2]]  # bodies 4, 8, 4, 8, 5 by frame below
    raw = RawSkeleton(3, np.array([2, 2, 1]), np.array([4, 8, 4, 8, 5]), xyz)
    out = select_bodies(raw, "pose2d", 2)
    np.testing.assert_allclose(out[2, :, 0, 0], [0.9, 0.9, 0])  # body 8 (score 30.6) first
    np.testing.assert_allclose(out[2, :, 0, 1], [0.2, 0.3, 0])  # then body 4 (8.5); body 5 (3.4) dropped


def test_fill_missing_joints_hand_computed() -> None:
    from crossclr_infer.layouts import Layout

    lay = Layout("chain", ("a", "b", "c", "d"), (0, 0, 1, 0), 0)
    x = np.zeros((3, 5, 4, 1), np.float32)
    seen = np.zeros((5, 4, 1), bool)
    for t in range(4):  # present in frames 0..3, absent in frame 4
        x[:, t, 0, 0], seen[t, 0, 0] = (t, 0, 0), True
    x[:, 0, 1, 0], x[:, 3, 1, 0] = (0, 1, 0), (3, 1, 0)  # b seen in frames 0 and 3
    seen[[0, 3], 1, 0] = True
    x[:, 0, 3, 0], x[:, 2, 3, 0] = (0, 0, 1), (2, 0, 1)  # d seen in 0 and 2: frame 1 is a tie
    seen[[0, 2], 3, 0] = True
    x[:, 1, 2, 0] = 99  # c never seen: a stray value that must not survive
    y = fill_missing_joints(x, seen, lay)
    np.testing.assert_array_equal(y[:, :, 1, 0].T, [[0, 1, 0], [0, 1, 0], [3, 1, 0], [3, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(y[:, :, 2, 0], y[:, :, 1, 0])  # c: its parent's position
    np.testing.assert_array_equal(y[:, 1, 3, 0], [0, 0, 1])  # tie: the earlier frame
    np.testing.assert_array_equal(y[:, 4], 0)  # the absent frame stays empty
    seen[:, 0] = False  # the center never seen: the mean of the seen joints of each frame
    y = fill_missing_joints(x, seen, lay)
    np.testing.assert_allclose(y[:, 0, 0, 0], [0, 0.5, 0.5])
