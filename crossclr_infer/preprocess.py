"""THE skeleton preprocessing, shared by prepare, synth, training and predict (docs/design.md §2).

Modes:

* ``official`` — what the published CrosSCLR numbers were trained on: first bodies per frame in file
  order, ``length`` from joint 0 of body 0, centering on the layout's center joint, OpenCV-convention
  linear resize of the first ``length`` frames to ``frames``, per-frame rotation about y from the
  shoulders with one sign for the whole sequence (the residual of frames with the other sign is kept).
* ``none`` — raw xyz of the first bodies, zero-padded / cropped to ``frames`` (``frames=300`` is the
  official ``ntu_gendata`` output).
* ``energy`` — the two most active bodies by motion energy across body IDs (noise bodies dropped),
  frames without any kept body removed, then centering, resize and a per-frame rotation that aligns
  the shoulders with the x axis in every frame.
* ``mamp`` — MAMP's (CTR-GCN's) data, as its evaluation feeds the model: the bodies of ``energy``, frames
  without any kept body removed, the origin joint of body 0 in its first frame subtracted from every
  present body in every frame (no per-frame centering, no rotation), the central 95 % of the frames kept
  and linearly resized (half-pixel centres, as torch's bilinear ``align_corners=False``) to ``frames``
  (120 by default). Training then crops and rotates at random (``training.augment.augment_mamp``).

Everything is driven by the layout (center joint, shoulders), so other skeletons use the same code.
Arrays are (C, T, V, M) = (3, frames, joints, bodies).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.ntu import RawSkeleton

log = logging.getLogger(__name__)

PREPROCESS_MODES: tuple[str, ...] = ("official", "none", "energy", "mamp")
Mode = Literal["official", "none", "energy", "mamp"]
DEFAULT_FRAMES = {"official": 50, "none": 300, "energy": 50, "mamp": 120}  # frames per mode by default
MAMP_CENTER_CROP = 0.95  # share of the valid frames MAMP's evaluation keeps (centre crop)

ROTATION_EPS = 1e-4  # added to |v| in the official angle, as in the official code
MIN_BODY_FRAMES = 11  # "energy": a body seen in fewer frames is noise (when another body remains)
MAX_SPREAD_RATIO = 0.8  # "energy": x-spread > 0.8 × y-spread is not a standing/sitting person


def _check_mode(mode: str) -> None:
    if mode not in PREPROCESS_MODES:
        raise CrossclrError(f"unknown preprocessing mode {mode!r}; expected one of {list(PREPROCESS_MODES)}")


# --------------------------------------------------------------------------------------------------
# body selection
# --------------------------------------------------------------------------------------------------
def select_bodies(raw: RawSkeleton, mode: str = "official", max_bodies: int = 2) -> np.ndarray:
    """Raw bodies -> (3, T, V, M) float32 with T = ``raw.num_frames``, M = ``max_bodies``.

    ``official``/``none``: slot m of frame t holds the m-th body listed in that frame (no tracking).
    ``energy``: slot m holds the body ID with the m-th highest motion energy after noise removal,
    zero in the frames where that body is absent.
    """
    _check_mode(mode)
    if max_bodies < 1:
        raise CrossclrError(f"max_bodies must be >= 1, got {max_bodies}")
    t, v = raw.num_frames, raw.num_joints
    out = np.zeros((3, t, v, max_bodies), dtype=np.float32)
    if raw.body_ids.size == 0:
        return out
    frame = raw.frame_index  # (B_total,)
    if mode not in ("energy", "mamp"):
        rank = raw.rank_in_frame  # (B_total,)
        keep = rank < max_bodies
        # the indexed target is (B_kept, 3, V) (advanced axes first): (B_kept, V, 3) -> (B_kept, 3, V)
        out[:, frame[keep], :, rank[keep]] = raw.xyz[keep].transpose(0, 2, 1)
        return out
    for slot, body in enumerate(_energy_order(raw)[:max_bodies]):
        sel = raw.body_ids == body
        out[:, frame[sel], :, slot] = raw.xyz[sel].transpose(0, 2, 1)  # (n, V, 3) -> (n, 3, V)
    return out


def _energy_order(raw: RawSkeleton) -> list[int]:
    """Body IDs, most active first, noise bodies removed (at least one body is always kept)."""
    ids, inverse = np.unique(raw.body_ids, return_inverse=True)
    stats = []
    for i, body in enumerate(ids):
        xyz = raw.xyz[inverse == i]  # (n, V, 3) this body's frames
        n = xyz.shape[0]
        energy = float(xyz.std(axis=0).sum()) if n > 1 else 0.0  # motion energy: spread over time
        span = xyz.max(axis=1) - xyz.min(axis=1)  # (n, 3) per-frame extent
        ratio = float(span[:, 0].mean() / max(span[:, 1].mean(), 1e-6))
        noise = n < MIN_BODY_FRAMES or ratio > MAX_SPREAD_RATIO
        stats.append((noise, -energy, int(body)))
    kept = [s for s in stats if not s[0]] or stats  # keep everything rather than nothing
    if len(kept) < len(stats):
        log.debug("energy selection dropped noise bodies %s", [s[2] for s in stats if s[0]])
    return [body for _, _, body in sorted(kept, key=lambda s: (s[1], s[2]))]


# --------------------------------------------------------------------------------------------------
# the steps, each usable on its own
# --------------------------------------------------------------------------------------------------
def valid_length(x: np.ndarray) -> int:
    """Official ``length``: frames where joint 0 of body 0 is non-zero (sum of |x|,|y|,|z| != 0)."""
    return int(np.count_nonzero(np.abs(x[:, :, 0, 0]).sum(axis=0) != 0))


def sequence_length(x: np.ndarray, mode: str) -> int:
    """Valid frames of selected bodies (3, T, V, M) before resizing, as each mode counts them."""
    _check_mode(mode)
    if mode == "official":
        return valid_length(x)
    if mode in ("energy", "mamp"):
        return int(np.count_nonzero(np.any(x != 0, axis=(0, 2, 3))))
    return int(x.shape[1])


def center_sequence(x: np.ndarray, layout: Layout) -> np.ndarray:
    """Subtract the center joint per frame and body; all-zero (padding) frames stay 0."""
    c = layout.center
    present = np.any(x != 0, axis=(0, 2), keepdims=True)  # (1, T, 1, M)
    return np.where(present, x - x[:, :, c:c + 1, :], 0).astype(x.dtype, copy=False)


def resize_frames(x: np.ndarray, length: int, frames: int) -> np.ndarray:
    """Linear resize of ``x[:, :length]`` to ``frames`` frames, OpenCV INTER_LINEAR convention.

    s = (d + 0.5)·length/frames − 0.5, i0 = ⌊s⌋, w = s − i0; clamped to the first / last frame with w = 0.
    """
    if length < 1:
        raise CrossclrError("cannot resize an empty sequence (length 0)")
    d = np.arange(frames, dtype=np.float64)
    s = (d + 0.5) * (length / frames) - 0.5
    i0 = np.floor(s).astype(np.int64)
    w = s - i0
    low, high = i0 < 0, i0 >= length - 1
    i0 = np.where(low, 0, np.where(high, length - 1, i0))
    w = np.where(low | high, 0.0, w)
    i1 = np.minimum(i0 + 1, length - 1)
    src = x[:, :length].astype(np.float64)
    w = w[None, :, None, None]  # (frames,) -> (1, frames, 1, 1)
    return ((1.0 - w) * src[:, i0] + w * src[:, i1]).astype(np.float32)


def shoulder_vectors(x: np.ndarray, layout: Layout) -> np.ndarray:
    """(3, T, M) right shoulder − left shoulder with the y component set to 0."""
    assert layout.shoulders is not None
    left, right = layout.shoulders
    v = (x[:, :, right, :] - x[:, :, left, :]).astype(np.float64)
    v[1] = 0.0
    return v


def rotation_angles(x: np.ndarray, layout: Layout, *, per_frame_sign: bool = False) -> np.ndarray:
    """(T, M) angles θ_t about y.

    Official (``per_frame_sign=False``): θ_t = arccos(v_x / (|v| + 1e-4)), negated for the whole body
    when Σ_t v_z >= 0. ``per_frame_sign=True``: θ_t = atan2(−v_z, v_x), aligning every frame.
    """
    v = shoulder_vectors(x, layout)  # (3, T, M)
    if per_frame_sign:
        return np.arctan2(-v[2], v[0])
    norm = np.sqrt(v[0] ** 2 + v[2] ** 2)
    theta = np.arccos(np.clip(v[0] / (norm + ROTATION_EPS), -1.0, 1.0))
    sign = np.where(v[2].sum(axis=0) >= 0, -1.0, 1.0)  # (M,) one sign per body for the whole sequence
    return theta * sign[None, :]


def rotate_y(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Apply R(θ) = [[cos, 0, −sin], [0, 1, 0], [sin, 0, cos]] per frame and body; θ is (T, M)."""
    cos, sin = np.cos(theta)[:, None, :], np.sin(theta)[:, None, :]  # (T, M) -> (T, 1, M)
    xx, yy, zz = x.astype(np.float64)
    out = np.stack([cos * xx - sin * zz, yy, sin * xx + cos * zz])
    return out.astype(np.float32)


def pad_or_crop(x: np.ndarray, frames: int) -> np.ndarray:
    """Zero-pad or crop (3, T, V, M) to ``frames`` frames."""
    out = np.zeros((x.shape[0], frames) + x.shape[2:], dtype=np.float32)
    n = min(frames, x.shape[1])
    out[:, :n] = x[:, :n]
    return out


# --------------------------------------------------------------------------------------------------
# the whole pipeline
# --------------------------------------------------------------------------------------------------
def normalize_sequence(x: np.ndarray, layout: Layout, *, mode: str = "official",
                       frames: int = 50) -> np.ndarray:
    """(3, T, V, M) selected bodies -> (3, frames, V, M) float32 (see the module docstring)."""
    _check_mode(mode)
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] != 3 or x.shape[2] != layout.num_joints:
        raise CrossclrError(f"expected a (3, T, {layout.num_joints}, M) sequence for layout {layout.name!r}, "
                            f"got shape {tuple(x.shape)}")
    if frames < 1:
        raise CrossclrError(f"frames must be >= 1, got {frames}")
    if mode == "none":
        return pad_or_crop(x, frames)
    if mode == "mamp":
        return mamp_sequence(x, layout, frames)
    if mode == "official":
        length = valid_length(x)
        if length == 0:
            raise CrossclrError("no skeleton: joint 1 of body 0 is zero in every frame")
    else:  # energy: drop frames where no kept body is present
        present = np.any(x != 0, axis=(0, 2, 3))  # (T,)
        x = x[:, present]
        length = int(present.sum())
        if length == 0:
            raise CrossclrError("no skeleton: no body in any frame")
    x = center_sequence(x.astype(np.float32), layout)
    x = resize_frames(x, length, frames)
    if layout.shoulders is not None:
        x = rotate_y(x, rotation_angles(x, layout, per_frame_sign=(mode == "energy")))
    return x


def mamp_sequence(x: np.ndarray, layout: Layout, frames: int = 120,
                  crop: float = MAMP_CENTER_CROP) -> np.ndarray:
    """(3, T, V, M) selected bodies -> (3, frames, V, M): MAMP's origin translation, centre crop, resize."""
    present = np.any(x != 0, axis=(0, 2, 3))  # (T,) frames with any kept body
    x = x[:, present].astype(np.float32)
    length = int(present.sum())
    if length == 0:
        raise CrossclrError("no skeleton: no body in any frame")
    body = np.any(x != 0, axis=(0, 2))  # (T', M) where each body is present
    first = int(np.argmax(body[:, 0])) if body[:, 0].any() else 0
    origin = x[:, first, layout.origin_joint, 0]  # (3,) body 0 in its first frame
    x = np.where(body[None, :, None, :], x - origin[:, None, None, None], 0).astype(np.float32)
    bias = int((1 - crop) * length / 2)
    return resize_frames(x[:, bias:length - bias], length - 2 * bias, frames)


def preprocess_raw(raw: RawSkeleton, layout: Layout, mode: str = "official", frames: int = 50,
                   max_bodies: int = 2) -> np.ndarray:
    """A parsed raw file -> (3, frames, V, M) float32, exactly as the caches are built."""
    _check_mode(mode)
    if raw.num_joints != layout.num_joints:
        raise CrossclrError(f"the skeleton has {raw.num_joints} joints but layout {layout.name!r} has "
                            f"{layout.num_joints}")
    return normalize_sequence(select_bodies(raw, mode, max_bodies), layout, mode=mode, frames=frames)
