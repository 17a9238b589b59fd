"""Input conventions (docs/conventions.md): units, y direction, the centre of each preprocessing, against the
code that applies them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import synth
from crossclr_infer.layouts import BUILTIN_LAYOUTS, get_layout
from crossclr_infer.preprocess import centre_of, normalize_sequence

COCO = get_layout("coco-17")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "conventions.md"


def _clip(layout: str, seed: int = 5) -> np.ndarray:
    return synth.synthesize_raw(2, 1, seed=seed, layout=layout)[0][0]  # (3, T, V, 2) raw


@pytest.mark.parametrize("layout", ["coco-17", "openpose-body25"])
def test_pose2d_gives_the_same_clip_in_pixels_and_in_normalised_units(layout: str) -> None:
    lay = get_layout(layout)
    px = _clip(layout).astype(np.float64)
    seen = px[2] > 0
    for scale, shift in ((1 / 640, (0.0, 0.0)), (1 / 480, (0.0, 0.0)), (2.5, (-100.0, 37.0))):
        other = px.copy()  # the same skeleton in other units: one scale for x and y, any origin
        other[0] = np.where(seen, px[0] * scale + shift[0], 0)
        other[1] = np.where(seen, px[1] * scale + shift[1], 0)
        np.testing.assert_allclose(normalize_sequence(other, lay, mode="pose2d", frames=20),
                                   normalize_sequence(px, lay, mode="pose2d", frames=20), atol=1e-5)


def test_pose2d_needs_one_scale_for_x_and_y() -> None:
    """(x / width, y / height) of a non-square image squashes the body: convert such coordinates to pixels
    (or divide both by one length) first, as docs/conventions.md says."""
    px = _clip("coco-17").astype(np.float64)
    squashed = px.copy()
    squashed[0], squashed[1] = px[0] / 640, px[1] / 480
    a = normalize_sequence(px, COCO, mode="pose2d", frames=20)
    b = normalize_sequence(squashed, COCO, mode="pose2d", frames=20)
    assert np.abs(a - b).max() > 0.05


def test_pose2d_centres_on_the_hip_midpoint_and_keeps_image_y_down() -> None:
    x = _clip("coco-17")
    out = normalize_sequence(x, COCO, mode="pose2d", frames=x.shape[1])
    # frames where both hips are seen in the input: their midpoint is the origin (the nose is not)
    left, right = COCO.hips
    nose = COCO.joint_names.index("nose")
    both = (out[2, :, left, 0] > 0) & (out[2, :, right, 0] > 0)
    assert both.mean() > 0.8
    mid = (out[:2, :, left, 0] + out[:2, :, right, 0]) / 2  # (2, T)
    np.testing.assert_allclose(mid[:, both], 0.0, atol=1e-5)
    seen = both & (out[2, :, nose, 0] > 0)
    assert (out[1, seen, nose, 0] < 0).all()  # y is not flipped: image y down, so the head is negative


def test_without_a_hip_pose2d_centres_on_the_center_joint() -> None:
    x = _clip("coco-17").copy()
    x[:, :, COCO.hips[0]] = 0  # the left hip never detected
    out = normalize_sequence(x, COCO, mode="pose2d", frames=x.shape[1])
    nose = COCO.center
    seen = out[2, :, nose, 0] > 0
    np.testing.assert_allclose(out[:2, seen, nose, 0], 0.0, atol=1e-6)


@pytest.mark.parametrize("layout", ["ntu-rgb+d", "azure-kinect-32", "mediapipe-pose-33"])
def test_3d_preprocessing_keeps_the_y_direction_and_the_units(layout: str) -> None:
    """``official`` does not flip y (a y-down clip stays y-down) and does not rescale (millimetres stay
    millimetres): data must come in the direction and units the model was trained on."""
    lay = get_layout(layout)
    x = _clip(layout)
    out = normalize_sequence(x, lay, mode="official", frames=20)
    flip = np.array([1.0, -1.0, 1.0], np.float32)[:, None, None, None]
    np.testing.assert_allclose(normalize_sequence(x * flip, lay, mode="official", frames=20), out * flip,
                               atol=1e-3 * np.abs(out).max())
    scaled = normalize_sequence(x * 1000, lay, mode="official", frames=20) / 1000
    # the same clip up to the rotation's 1e-4 guard on |shoulders| (ROTATION_EPS, in the data's units)
    np.testing.assert_allclose(scaled, out, atol=0.02 * np.abs(out).max())
    assert np.linalg.norm(scaled) / np.linalg.norm(out) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(out[:, :, lay.center, 0], 0.0, atol=1e-3 * np.abs(out).max())  # the centre


def test_mediapipe_image_landmarks_as_2d_with_pose2d() -> None:
    """The other MediaPipe output, normalised image landmarks: (x·width, y·height, visibility) through
    ``pose2d`` on the same layout, as docs/conventions.md shows."""
    mp = get_layout("mediapipe-pose-33")
    world = _clip("mediapipe-pose-33")
    px = synth.project_2d(world.astype(np.float64) * np.array([1, -1, 1])[:, None, None, None]
                          + np.array([0, 0, 3.0])[:, None, None, None],
                          np.any(world != 0, axis=(0, 2)), np.random.default_rng(0))  # (3, T, 33, 2)
    out = normalize_sequence(px, mp, mode="pose2d", frames=20)
    assert out.shape == (3, 20, 33, 2) and np.isfinite(out).all()
    assert ((out[2] >= 0) & (out[2] <= 1)).all()


def test_centre_of_names_what_each_mode_really_uses() -> None:
    assert centre_of(COCO, "pose2d").startswith("the midpoint of left_hip and right_hip")
    assert "nose when a hip is not seen" in centre_of(COCO, "pose2d")
    assert centre_of(COCO, "official").startswith("nose (the center joint)")
    ntu = get_layout("ntu-rgb+d")
    assert centre_of(ntu, "official").startswith("spine_shoulder")
    assert centre_of(ntu, "mamp").startswith("spine_mid of body 0")
    assert centre_of(ntu, "none").startswith("not centred")
    assert centre_of(ntu, "as-is").startswith("as stored")


def test_info_names_the_real_centre_of_a_coco17_cache(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import crossclr

    out = tmp_path / "coco.h5"
    synth.generate_synthetic(out, classes=2, per_class=3, frames=10, layout="coco-17")
    result = CliRunner().invoke(crossclr, ["info", str(out)])
    assert result.exit_code == 0, result.output
    lines = {key: value.strip() for key, _, value in (ln.partition(":") for ln in result.output.splitlines())}
    assert lines["centred on"].startswith("the midpoint of left_hip and right_hip, per frame and body")
    assert "center nose" not in result.output and "tree root nose" in lines["layout"]


def test_conventions_doc_covers_every_layout_and_the_code_it_describes() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for name in BUILTIN_LAYOUTS:
        assert f"`{name}`" in text, name
    for phrase in ("pose_world_landmarks", "pose_landmarks", "millimetres", "y down", "y up",
                   "hip midpoint", "--bodies", "benchmark: synthetic", "pixels"):
        assert phrase in text, phrase
