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
* ``pose2d`` — 2-D pose-estimator skeletons whose three channels are (x, y, score) (COCO-17, OpenPose
  BODY_25; ST-GCN's input for OpenPose): a joint is missing where its score is <= 0 (or a value is not
  finite) and is (0, 0, 0) in the output; slot m holds the body ID with the m-th highest summed score;
  frames without any kept body are removed; per frame and body, x and y are centred on the root (the
  midpoint of the layout's hips when both are seen, else the center joint when seen, else the mean of the
  seen joints) and divided by one scale for the whole sequence (the median torso length |mid-shoulder −
  mid-hip| over the frames and bodies where all four joints are seen; else the median shoulder width;
  else the median bounding-box diagonal; else 1); the score channel is kept; no rotation; then the linear
  resize of ``official`` to ``frames``.

Each mode is one ``PreprocessMode`` in ``MODES`` (its default frames, how bodies fill the slots, how valid
frames are counted, the normalization, whether channel 3 is a score); adding a mode is one function and one
entry there. Everything is driven by the layout (center joint, shoulders), so other skeletons use the same
code. Arrays are (C, T, V, M) = (3, frames, joints, bodies).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.skeleton import RawSkeleton

log = logging.getLogger(__name__)

MAMP_CENTER_CROP = 0.95  # share of the valid frames MAMP's evaluation keeps (centre crop)

ROTATION_EPS = 1e-4  # added to |v| in the official angle, as in the official code
MIN_BODY_FRAMES = 11  # "energy": a body seen in fewer frames is noise (when another body remains)
MAX_SPREAD_RATIO = 0.8  # "energy": x-spread > 0.8 × y-spread is not a standing/sitting person
POSE2D_MIN_SCALE = 1e-6  # "pose2d": body lengths at or below this are not used as the scale


@dataclass(frozen=True)
class PreprocessMode:
    """One preprocessing mode (the module docstring says what each does), registered in ``MODES``."""

    name: str
    default_frames: int  # frames per sample when the command line gives none
    # (3, T, V, M) selected bodies, layout, frames -> (3, frames, V, M) float32
    normalize: Callable[[np.ndarray, Layout, int], np.ndarray]
    # valid frames of the selected bodies (3, T, V, M) before resizing, as this mode counts them
    length: Callable[[np.ndarray], int]
    # body IDs in slot order (most relevant first); None: slot m holds the m-th body listed in each frame
    body_order: Callable[[RawSkeleton], list[int]] | None = None
    scored: bool = False  # the third channel is a detection score (x, y, score), not z


def get_mode(mode: str) -> PreprocessMode:
    """The registered mode ``mode``, else a CrossclrError listing the modes."""
    try:
        return MODES[mode]
    except KeyError:
        raise CrossclrError(f"unknown preprocessing mode {mode!r}; expected one of {list(MODES)}") from None


# --------------------------------------------------------------------------------------------------
# body selection
# --------------------------------------------------------------------------------------------------
def select_bodies(raw: RawSkeleton, mode: str = "official", max_bodies: int = 2) -> np.ndarray:
    """Raw bodies -> (3, T, V, M) float32 with T = ``raw.num_frames``, M = ``max_bodies``.

    ``official``/``none``: slot m of frame t holds the m-th body listed in that frame (no tracking).
    ``energy``: slot m holds the body ID with the m-th highest motion energy after noise removal,
    zero in the frames where that body is absent. ``pose2d``: slot m holds the body ID with the m-th
    highest summed score (channel 2), zero where that body is absent.
    """
    order_of = get_mode(mode).body_order
    if max_bodies < 1:
        raise CrossclrError(f"max_bodies must be >= 1, got {max_bodies}")
    t, v = raw.num_frames, raw.num_joints
    out = np.zeros((3, t, v, max_bodies), dtype=np.float32)
    if raw.body_ids.size == 0:
        return out
    frame = raw.frame_index  # (B_total,)
    if order_of is None:
        rank = raw.rank_in_frame  # (B_total,)
        keep = rank < max_bodies
        # the indexed target is (B_kept, 3, V) (advanced axes first): (B_kept, V, 3) -> (B_kept, 3, V)
        out[:, frame[keep], :, rank[keep]] = raw.xyz[keep].transpose(0, 2, 1)
        return out
    for slot, body in enumerate(order_of(raw)[:max_bodies]):
        sel = raw.body_ids == body
        out[:, frame[sel], :, slot] = raw.xyz[sel].transpose(0, 2, 1)  # (n, V, 3) -> (n, 3, V)
    return out


def _score_order(raw: RawSkeleton) -> list[int]:
    """Body IDs by summed score (channel 2, values <= 0 or not finite count 0), highest first, then by ID."""
    ids, inverse = np.unique(raw.body_ids, return_inverse=True)
    score = np.nan_to_num(raw.xyz[:, :, 2], nan=0.0, posinf=0.0, neginf=0.0).clip(min=0).sum(axis=1)  # (B,)
    total = np.bincount(inverse, weights=score, minlength=len(ids))
    return [int(ids[i]) for i in sorted(range(len(ids)), key=lambda i: (-total[i], ids[i]))]


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
    return get_mode(mode).length(x)


def frames_with_a_body(x: np.ndarray) -> int:
    """Frames of (3, T, V, M) where any kept body is present (any value non-zero)."""
    return int(np.count_nonzero(np.any(x != 0, axis=(0, 2, 3))))


def all_frames(x: np.ndarray) -> int:
    """Every frame of (3, T, V, M) counts (``none``)."""
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


def pad_or_crop_sequence(x: np.ndarray, layout: Layout, frames: int = 300) -> np.ndarray:
    """(3, T, V, M) -> (3, frames, V, M): the ``none`` mode (raw coordinates, zero-padded or cropped)."""
    return pad_or_crop(x, frames)


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
    normalize = get_mode(mode).normalize
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[0] != 3 or x.shape[2] != layout.num_joints:
        raise CrossclrError(f"expected a (3, T, {layout.num_joints}, M) sequence for layout {layout.name!r}, "
                            f"got shape {tuple(x.shape)}")
    if frames < 1:
        raise CrossclrError(f"frames must be >= 1, got {frames}")
    return normalize(x, layout, frames)


def official_sequence(x: np.ndarray, layout: Layout, frames: int = 50) -> np.ndarray:
    """(3, T, V, M) -> (3, frames, V, M): the ``official`` mode (first ``valid_length`` frames, centering,
    resize, rotation with one sign per body)."""
    length = valid_length(x)
    if length == 0:
        raise CrossclrError("no skeleton: joint 1 of body 0 is zero in every frame")
    return _center_resize_rotate(x, layout, length, frames, per_frame_sign=False)


def energy_sequence(x: np.ndarray, layout: Layout, frames: int = 50) -> np.ndarray:
    """(3, T, V, M) -> (3, frames, V, M): the ``energy`` mode (frames without a kept body dropped, centering,
    resize, rotation aligning every frame)."""
    present = np.any(x != 0, axis=(0, 2, 3))  # (T,)
    x = x[:, present]
    length = int(present.sum())
    if length == 0:
        raise CrossclrError("no skeleton: no body in any frame")
    return _center_resize_rotate(x, layout, length, frames, per_frame_sign=True)


def _center_resize_rotate(x: np.ndarray, layout: Layout, length: int, frames: int, *,
                          per_frame_sign: bool) -> np.ndarray:
    x = center_sequence(x.astype(np.float32), layout)
    x = resize_frames(x, length, frames)
    if layout.shoulders is not None:
        x = rotate_y(x, rotation_angles(x, layout, per_frame_sign=per_frame_sign))
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


def _root_first(layout: Layout) -> list[int]:
    """Joints ordered by their depth in the layout's tree (the center first)."""
    def depth(j: int) -> int:
        d = 0
        while j != layout.center:
            j, d = layout.parents[j], d + 1
        return d

    return sorted(range(layout.num_joints), key=depth)


def fill_missing_joints(x: np.ndarray, seen: np.ndarray, layout: Layout) -> np.ndarray:
    """3-D coordinates (3, T, V, M) with undetected joints (``seen`` (T, V, M) False) -> filled copy.

    Per body, a body being present in the frames where any of its joints is seen: a missing joint takes its
    position in the nearest frame (in time) where it was seen, the earlier one on a tie; a joint seen in no
    frame takes its parent's filled position (a zero-length bone), the center joint the mean of the body's
    seen joints in that frame. Frames where the body is absent stay 0, as absent bodies are everywhere.
    """
    out = np.where(seen[None], x, 0).astype(np.float32)
    _, t, v, m = x.shape
    frames = np.arange(t)
    for b in range(m):
        present = seen[:, :, b].any(axis=1)  # (T,)
        if not present.any() or seen[present, :, b].all():
            continue
        never = []
        for j in range(v):
            obs = np.flatnonzero(seen[:, j, b])
            if obs.size == 0:
                never.append(j)
                continue
            pos = np.searchsorted(obs, frames)  # first observation at or after each frame
            before, after = obs[np.maximum(pos - 1, 0)], obs[np.minimum(pos, obs.size - 1)]
            nearest = np.where((pos > 0) & (frames - before <= after - frames), before, after)  # (T,)
            out[:, :, j, b] = x[:, nearest, j, b]
        if never:
            mean = (out[:, :, :, b] * seen[None, :, :, b]).sum(axis=2) / np.maximum(
                seen[:, :, b].sum(axis=1), 1)  # (3, T) the body's seen joints
            for j in (k for k in _root_first(layout) if k in never):
                out[:, :, j, b] = mean if j == layout.center else out[:, :, layout.parents[j], b]
        out[:, ~present, :, b] = 0
    return out


def joints_seen(x: np.ndarray) -> np.ndarray:
    """(T, V, M): the joints of (x, y, score) data (3, T, V, M) that were detected (score > 0, all finite)."""
    return (np.nan_to_num(x[2], nan=0.0) > 0) & np.isfinite(x).all(axis=0)


def root_points(xy: np.ndarray, seen: np.ndarray, layout: Layout) -> np.ndarray:
    """(2, T, M) per frame and body: the midpoint of the hips when both are seen, else the center joint when
    seen, else the mean of the seen joints (0 where none is). xy: (2, T, V, M), seen: (T, V, M)."""
    cnt = seen.sum(axis=1)  # (T, M)
    root = (xy * seen[None]).sum(axis=2) / np.maximum(cnt, 1)[None]  # (2, T, M) mean of the seen joints
    c = layout.center
    root = np.where(seen[None, :, c], xy[:, :, c], root)
    if layout.hips is not None:
        left, right = layout.hips
        both = seen[:, left] & seen[:, right]  # (T, M)
        root = np.where(both[None], (xy[:, :, left] + xy[:, :, right]) / 2, root)
    return root


def _pair_lengths(xy: np.ndarray, seen: np.ndarray, a: tuple[int, int], b: tuple[int, int] | None
                  ) -> np.ndarray:
    """Lengths |mid(a) − mid(b)| (or |a0 − a1| when b is None) where all those joints are seen, flattened."""
    joints = list(a) + (list(b) if b else [])
    ok = seen[:, joints].all(axis=1)  # (T, M)
    pa = (xy[:, :, a[0]] + xy[:, :, a[1]]) / 2 if b else xy[:, :, a[0]]  # (2, T, M)
    pb = (xy[:, :, b[0]] + xy[:, :, b[1]]) / 2 if b else xy[:, :, a[1]]
    return np.linalg.norm(pa - pb, axis=0)[ok]


def body_scale(xy: np.ndarray, seen: np.ndarray, layout: Layout) -> float:
    """One length for the whole sequence: the median torso length (mid-shoulder to mid-hip), else the median
    shoulder width, else the median bounding-box diagonal of the seen joints; 1.0 when none is > 0."""
    candidates = []
    if layout.shoulders is not None and layout.hips is not None:
        candidates.append(_pair_lengths(xy, seen, layout.shoulders, layout.hips))
    if layout.shoulders is not None:
        candidates.append(_pair_lengths(xy, seen, layout.shoulders, None))
    lo = np.where(seen[None], xy, np.inf).min(axis=2)  # (2, T, M) box corners of the seen joints
    hi = np.where(seen[None], xy, -np.inf).max(axis=2)
    ok = seen.sum(axis=1) >= 2  # (T, M) bodies with an extent
    diag = np.linalg.norm(np.where(ok[None], hi - lo, 0), axis=0)  # (T, M)
    candidates.append(diag[ok])
    for lengths in candidates:
        lengths = lengths[lengths > POSE2D_MIN_SCALE]
        if lengths.size:
            return float(np.median(lengths))
    return 1.0


def pose2d_sequence(x: np.ndarray, layout: Layout, frames: int = 50) -> np.ndarray:
    """(3, T, V, M) selected bodies of (x, y, score) -> (3, frames, V, M): the ``pose2d`` mode (module
    docstring)."""
    seen = joints_seen(x)  # (T, V, M)
    keep = seen.any(axis=(1, 2))  # (T,) frames with any kept body
    length = int(keep.sum())
    if length == 0:
        raise CrossclrError("no skeleton: no joint with a score > 0 in any frame")
    seen = seen[keep]
    xy = np.where(seen[None], x[:2, keep], 0).astype(np.float64)  # (2, T', V, M)
    root = root_points(xy, seen, layout)  # (2, T', M)
    xy = (xy - root[:, :, None, :]) / body_scale(xy, seen, layout)
    out = np.concatenate([xy, x[2:3, keep].astype(np.float64)])  # (3, T', V, M): x, y, score
    out = np.where(seen[None], out, 0.0).astype(np.float32)
    return resize_frames(out, length, frames)


def centre_of(layout: Layout, mode: str) -> str:
    """What ``mode`` puts at the origin for ``layout``, in words (``crossclr info``, docs/conventions.md).

    The layout's ``center`` joint is the root of its tree; ``official``/``energy`` centre on it, ``mamp`` on
    its ``origin`` joint, ``pose2d`` on the hips' midpoint when the layout names hips (the center joint only
    when a hip is not seen)."""
    names = layout.joint_names
    center = names[layout.center]
    if mode in ("official", "energy"):
        return f"{center} (the center joint), per frame and body"
    if mode == "mamp":
        return f"{names[layout.origin_joint]} of body 0 in its first frame, one shift for the whole clip"
    if mode == "pose2d":
        if layout.hips is None:
            return f"{center} (the center joint; no hips in the layout), per frame and body"
        left, right = (names[h] for h in layout.hips)
        return (f"the midpoint of {left} and {right}, per frame and body ({center} when a hip is not seen); "
                "scaled by the median torso length")
    if mode == "none":
        return "not centred (raw coordinates)"
    return f"as stored (preprocessing {mode!r}: not centred by crossclr)"


def preprocess_raw(raw: RawSkeleton, layout: Layout, mode: str = "official", frames: int = 50,
                   max_bodies: int = 2) -> np.ndarray:
    """A parsed raw file -> (3, frames, V, M) float32, exactly as the caches are built."""
    get_mode(mode)
    if raw.num_joints != layout.num_joints:
        raise CrossclrError(f"the skeleton has {raw.num_joints} joints but layout {layout.name!r} has "
                            f"{layout.num_joints}")
    return normalize_sequence(select_bodies(raw, mode, max_bodies), layout, mode=mode, frames=frames)


MODES: dict[str, PreprocessMode] = {m.name: m for m in (
    PreprocessMode("official", 50, official_sequence, valid_length),
    PreprocessMode("none", 300, pad_or_crop_sequence, all_frames),
    PreprocessMode("energy", 50, energy_sequence, frames_with_a_body, body_order=_energy_order),
    PreprocessMode("mamp", 120, mamp_sequence, frames_with_a_body, body_order=_energy_order),
    PreprocessMode("pose2d", 50, pose2d_sequence, frames_with_a_body, body_order=_score_order, scored=True),
)}
