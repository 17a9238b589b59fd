"""Procedurally generated skeleton actions, for demos and tests without the real data set.

Each class is a distinct motion (waving, clapping, kicking, squatting, jumping, bowing, punching, raising
arms, turning, stepping, side bending, arm circles); beyond 12 classes, classes combine two motions. Every
sample varies the performer's body proportions, speed (cycles per sequence), amplitude, phase, viewpoint
yaw, distance, sensor noise, one or two bodies and raw length. Raw 3-D sequences are built by forward
kinematics over the NTU-25 joint tree in camera coordinates (metres, y up, z depth).

Every built-in layout can be written (``SYNTH_MODES``; docs/conventions.md): the same 3-D performances are
turned into that layout's joints (``LAYOUT_POINTS``: each joint an NTU joint, a weighted sum of NTU joints,
or an offset in the head's or the hips' axes, e.g. the face points) and into the units and axes its real
data uses (``to_layout``):

* ``ntu-rgb+d``, ``kinect-v1``: Kinect camera coordinates, metres, y up, z depth;
* ``azure-kinect-32``: Azure Kinect camera coordinates, millimetres, x right, y down, z forward;
* ``mediapipe-pose-33``: MediaPipe's world landmarks, metres, origin at the hips' midpoint, y down;
* ``coco-17``, ``openpose-body25``: a 2-D pose estimator's keypoints, (x, y) pixels of a pinhole camera
  (640 × 480, y down) and a detection score, a few joints undetected (score 0, coordinates 0).

Each then goes through the one preprocessing, ``preprocess.normalize_sequence`` with the layout's default
mode (``official`` for 3-D layouts, ``pose2d`` for the scored 2-D layouts), exactly like real files.

Names follow NTU's ``SsssCcccPpppRrrrAaaa`` and the split of a sample is given by the NTU cross-subject rule
``ntu.split_of(name, "ntu60-xsub")`` (``ntu120-xsub`` beyond 60 classes), i.e. by its performer; the cache
says ``benchmark: synthetic`` (it is not NTU's data). Generation is vectorized over samples and frames and
deterministic in ``seed``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cache import CacheWriter
from .errors import CrossclrError
from .layouts import BUILTIN_LAYOUTS, Layout

log = logging.getLogger(__name__)

LAYOUT_NAME = "ntu-rgb+d"
FPS = 30.0
RAW_LENGTH = (40, 150)  # raw frames per sample (before resizing to `frames`)
NUM_PERFORMERS = 40
NUM_SETUPS = 17
TRAIN_FRACTION = 0.6
CHUNK = 256  # samples rendered at once (bounds memory)
# variation, tuned so that a linear classifier on raw coordinates stays far from 100%
# (benchmarks/synth_baseline.py)
POSTURE_SD = 0.22  # radians, per-sample random posture of arms, legs, spine
AMPLITUDE = (0.3, 1.2)  # motion amplitude factor
NOISE_M = (0.01, 0.06)  # sensor noise standard deviation, metres

# Rest pose in the body frame (metres; x = the body's right, y up, z forward), by NTU joint name.
# This is anatomy, not topology: the joint tree comes from the layout.
REST_POSE: dict[str, tuple[float, float, float]] = {
    "spine_base": (0.0, 0.95, 0.0), "spine_mid": (0.0, 1.20, 0.0), "spine_shoulder": (0.0, 1.45, 0.0),
    "neck": (0.0, 1.53, 0.0), "head": (0.0, 1.68, 0.02),
    "shoulder_left": (-0.18, 1.42, 0.0), "elbow_left": (-0.18, 1.14, 0.0), "wrist_left": (-0.18, 0.89, 0.0),
    "hand_left": (-0.18, 0.81, 0.0), "thumb_left": (-0.16, 0.80, 0.04), "hand_tip_left": (-0.18, 0.74, 0.0),
    "shoulder_right": (0.18, 1.42, 0.0), "elbow_right": (0.18, 1.14, 0.0), "wrist_right": (0.18, 0.89, 0.0),
    "hand_right": (0.18, 0.81, 0.0), "thumb_right": (0.16, 0.80, 0.04), "hand_tip_right": (0.18, 0.74, 0.0),
    "hip_left": (-0.09, 0.90, 0.0), "knee_left": (-0.09, 0.48, 0.0), "ankle_left": (-0.09, 0.06, 0.0),
    "foot_left": (-0.09, 0.01, 0.12),
    "hip_right": (0.09, 0.90, 0.0), "knee_right": (0.09, 0.48, 0.0), "ankle_right": (0.09, 0.06, 0.0),
    "foot_right": (0.09, 0.01, 0.12),
}
CAMERA_FOCAL = 500.0  # pinhole camera of the 2-D projection, pixels (640 × 480 image, centre (320, 240))
CAMERA_CENTER = (320.0, 240.0)
SCORE_RANGE = (0.5, 1.0)  # detection scores of the 2-D keypoints
MISSED_RATE = 0.03  # share of 2-D keypoints not detected (score 0, coordinates 0)
SYNTHETIC_BENCHMARK = "synthetic"  # the cache's benchmark name (splits follow NTU's cross-subject rule)

# A joint of another layout from the NTU joints: {NTU joint: weight} (weights sum to 1) plus an offset
# (forward, up, the body's right) in metres along the axes of "head" (face points) or "hips" (feet).
Point = tuple[dict[str, float], str, tuple[float, float, float]]
_NO_OFFSET = (0.0, 0.0, 0.0)


def _at(joint: str, axes: str = "head", offset: tuple[float, float, float] = _NO_OFFSET) -> Point:
    return {joint: 1.0}, axes, offset


def _sided(make: dict[str, Point | str]) -> dict[str, Point]:
    """Expand ``{"{s}_wrist": "wrist_{s}", ...}`` over both sides: ``{s}`` is the side ('left'/'right'), and
    an offset's right component is mirrored (given for the left side)."""
    out: dict[str, Point] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        for key, spec in make.items():
            if isinstance(spec, str):
                out[key.format(s=side)] = _at(spec.format(s=side))
            else:
                weights, axes, (f, u, r) = spec
                out[key.format(s=side)] = ({k.format(s=side): w for k, w in weights.items()}, axes,
                                           (f, u, sign * r))
    return out


_FACE = {"nose": _at("head", "head", (0.09, -0.02, 0.0))} | _sided({
    "{s}_eye": _at("head", "head", (0.07, 0.02, -0.035)), "{s}_ear": _at("head", "head", (0.0, 0.0, -0.075))})
_LIMBS = _sided({f"{{s}}_{j}": f"{j}_{{s}}" for j in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle")})
_MID_HIP: Point = ({"hip_left": 0.5, "hip_right": 0.5}, "head", _NO_OFFSET)
_HEEL: Point = ({"ankle_{s}": 1.0}, "hips", (-0.06, -0.04, 0.0))
_OPENPOSE_SIDE = {"L": "left", "R": "right"}
LAYOUT_POINTS: dict[str, dict[str, Point]] = {
    "coco-17": _FACE | _LIMBS,
    "kinect-v1": {"hip_center": _at("spine_base"), "spine": _at("spine_mid"),
                  "shoulder_center": _at("spine_shoulder"), "head": _at("head")} | _sided({
        f"{j}_{{s}}": f"{j}_{{s}}"
        for j in ("shoulder", "elbow", "wrist", "hand", "hip", "knee", "ankle", "foot")}),
    "mediapipe-pose-33": _FACE | _LIMBS | _sided({
        "{s}_eye_inner": _at("head", "head", (0.075, 0.02, -0.015)),
        "{s}_eye_outer": _at("head", "head", (0.065, 0.02, -0.05)),
        "mouth_{s}": _at("head", "head", (0.08, -0.07, -0.025)),
        "{s}_index": "hand_tip_{s}", "{s}_thumb": "thumb_{s}",
        "{s}_pinky": ({"hand_tip_{s}": 0.7, "hand_{s}": 0.8, "thumb_{s}": -0.5}, "head", _NO_OFFSET),
        "{s}_heel": _HEEL, "{s}_foot_index": "foot_{s}"}),
    "openpose-body25": {"Nose": _FACE["nose"], "Neck": _at("spine_shoulder"), "MidHip": _MID_HIP} | {
        f"{c}{j}": _FACE[f"{side}_{j.lower()}"] if j in ("Eye", "Ear") else _LIMBS[f"{side}_{j.lower()}"]
        for c, side in _OPENPOSE_SIDE.items()
        for j in ("Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Eye", "Ear")} | {
        f"{c}{j}": ({f"{nj}_{side}": 1.0}, "hips", (f, u, r if side == "left" else -r))
        for c, side in _OPENPOSE_SIDE.items() for j, nj, (f, u, r) in (
            ("BigToe", "foot", (0.04, 0.0, 0.025)), ("SmallToe", "foot", (0.02, 0.0, -0.03)),
            ("Heel", "ankle", (-0.06, -0.04, 0.0)))},
    "azure-kinect-32": {
        "pelvis": _at("spine_base"), "spine_navel": _at("spine_mid"),
        "spine_chest": ({"spine_mid": 0.5, "spine_shoulder": 0.5}, "head", _NO_OFFSET),
        "neck": _at("neck"), "head": _at("head"), "nose": _FACE["nose"],
        **{f"{part}_{side}": _FACE[f"{side}_{part}"]
           for side in ("left", "right") for part in ("eye", "ear")},
    } | _sided({f"{j}_{{s}}": f"{nj}_{{s}}" for j, nj in (
        ("shoulder", "shoulder"), ("elbow", "elbow"), ("wrist", "wrist"), ("hand", "hand"),
        ("handtip", "hand_tip"), ("thumb", "thumb"), ("hip", "hip"), ("knee", "knee"), ("ankle", "ankle"),
        ("foot", "foot"))}) | _sided({
        "clavicle_{s}": ({"spine_shoulder": 0.6, "shoulder_{s}": 0.4}, "head", _NO_OFFSET)}),
}
# layouts the generator writes -> their preprocessing (the layout's default: pose2d when scored)
SYNTH_MODES = {LAYOUT_NAME: "official", "kinect-v1": "official", "azure-kinect-32": "official",
               "mediapipe-pose-33": "official", "coco-17": "pose2d", "openpose-body25": "pose2d"}

_ARM = ("elbow", "wrist", "hand", "thumb", "hand_tip")
_LEG = ("knee", "ankle", "foot")


def _rot(axis: str, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) about a body axis by ``angle`` (...) radians."""
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(angle), np.zeros_like(angle)
    rows = {"x": [[o, z, z], [z, c, -s], [z, s, c]],
            "y": [[c, z, s], [z, o, z], [-s, z, c]],
            "z": [[c, -s, z], [s, c, z], [z, z, o]]}[axis]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


class Pose:
    """Per-bone local rotations, root yaw and root lift for n samples × t frames.

    Bone ``j`` is the segment from its parent to joint ``j`` (in the tree rooted at ``spine_base``); a
    rotation of bone ``j`` also turns every bone below it.
    """

    def __init__(self, n: int, t: int) -> None:
        self.shape = (n, t)
        self.local: dict[str, np.ndarray] = {}
        self.yaw = np.zeros((n, t))
        self.lift = np.zeros((n, t))

    def rotate(self, joint: str, axis: str, angle: np.ndarray) -> None:
        r = _rot(axis, np.broadcast_to(angle, self.shape))
        self.local[joint] = self.local[joint] @ r if joint in self.local else r

    # helpers in the body frame: limbs hang along -y
    def forward(self, joint: str, angle: np.ndarray) -> None:
        """Swing a hanging limb forward (toward +z)."""
        self.rotate(joint, "x", -angle)

    def sideways(self, side: str, joint: str, angle: np.ndarray) -> None:
        """Swing a hanging limb of ``side`` ('left'/'right') outward."""
        self.rotate(f"{joint}_{side}", "z", angle if side == "right" else -angle)


@dataclass(frozen=True)
class Motion:
    name: str
    periodic: bool  # several cycles per sequence (else about one)
    apply: Callable[[Pose, np.ndarray, np.ndarray], None]  # (pose, u (n, t) radians, amp (n, 1))


def _pulse(u: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 - np.cos(u))


def _wave(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    p.sideways("right", "elbow", 1.45 + 0.1 * a)
    p.sideways("right", "wrist", 1.0 + 0.55 * a * np.sin(u))


def _clap(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    for side in ("left", "right"):
        p.forward(f"elbow_{side}", 0.7 + 0 * u)
        p.forward(f"wrist_{side}", 0.8 + 0 * u)
        p.sideways(side, "wrist", 0.25 - 0.55 * a * _pulse(u))


def _kick(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    s = _pulse(u)
    p.forward("knee_right", 1.3 * a * s)
    p.rotate("ankle_right", "x", 1.2 * a * np.sin(u / 2) ** 2 * (1 - s))


def _squat(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    th = 1.1 * a * _pulse(u)
    for side in ("left", "right"):
        p.forward(f"knee_{side}", th)
        p.rotate(f"ankle_{side}", "x", 2 * th)
        p.forward(f"elbow_{side}", 0.9 * th)
    p.rotate("spine_mid", "x", 0.45 * th)


def _jump(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    crouch = 0.6 * a * np.maximum(0.0, np.sin(u))
    air = np.maximum(0.0, -np.sin(u))
    for side in ("left", "right"):
        p.forward(f"knee_{side}", crouch)
        p.rotate(f"ankle_{side}", "x", 2 * crouch)
        p.forward(f"elbow_{side}", 1.8 * a * air - 0.5 * crouch)
    p.lift += 0.3 * a * air


def _bow(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    s = _pulse(u)
    p.rotate("spine_mid", "x", 1.0 * a * s)
    p.rotate("head", "x", 0.3 * s)


def _punch(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    for side, sign in (("right", 1.0), ("left", -1.0)):
        e = np.maximum(0.0, sign * np.sin(u)) ** 2
        p.forward(f"elbow_{side}", 1.5 * (0.35 + 0.65 * e * a))
        p.forward(f"wrist_{side}", 1.7 * (1 - e))


def _raise_arms(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    s = np.minimum(a, 1.0) * _pulse(u)
    for side in ("left", "right"):
        p.sideways(side, "elbow", 2.8 * s)


def _turn(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    p.yaw += 2.4 * a * _pulse(u / 2)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        step = 0.35 * np.maximum(0.0, sign * np.sin(3 * u))
        p.forward(f"knee_{side}", step)
        p.rotate(f"ankle_{side}", "x", 1.5 * step)


def _step(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    for side, sign in (("left", 1.0), ("right", -1.0)):
        lift = 0.7 * a * np.maximum(0.0, sign * np.sin(u))
        p.forward(f"knee_{side}", lift)
        p.rotate(f"ankle_{side}", "x", 1.3 * lift)
        p.forward(f"elbow_{side}", -0.4 * a * sign * np.sin(u))


def _side_bend(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    p.rotate("spine_mid", "z", 0.45 * a * np.sin(u))
    p.sideways("left", "elbow", 0.2 + 0.2 * a * np.maximum(0.0, np.sin(u)))
    p.sideways("right", "elbow", 0.2 + 0.2 * a * np.maximum(0.0, -np.sin(u)))


def _arm_circles(p: Pose, u: np.ndarray, a: np.ndarray) -> None:
    for side in ("left", "right"):
        p.sideways(side, "elbow", 1.5 + 0.45 * a * np.cos(u))
        p.forward(f"elbow_{side}", 0.45 * a * np.sin(u))


MOTIONS: tuple[Motion, ...] = (
    Motion("waving", True, _wave), Motion("clapping", True, _clap), Motion("kicking", False, _kick),
    Motion("squatting", False, _squat), Motion("jumping", True, _jump), Motion("bowing", False, _bow),
    Motion("punching", True, _punch), Motion("raising arms", False, _raise_arms),
    Motion("turning around", False, _turn), Motion("stepping in place", True, _step),
    Motion("side bending", True, _side_bend), Motion("arm circles", True, _arm_circles),
)
_PAIRS = tuple(combinations(range(len(MOTIONS)), 2))
MAX_CLASSES = len(MOTIONS) + len(_PAIRS)


def class_motions(classes: int) -> list[tuple[int, ...]]:
    """Motion indices of each class: one motion each, then pairs of motions."""
    if not 1 <= classes <= MAX_CLASSES:
        raise CrossclrError(f"synthetic data: {classes} classes requested, expected 1..{MAX_CLASSES}")
    return [(k,) if k < len(MOTIONS) else _PAIRS[k - len(MOTIONS)] for k in range(classes)]


def synth_class_names(classes: int) -> list[str]:
    return [" + ".join(MOTIONS[m].name for m in ms) for ms in class_motions(classes)]


# ---------------------------------------------------------------------------------------------------------
# Skeleton construction


@dataclass(frozen=True)
class _Tree:
    order: tuple[int, ...]  # joints in breadth-first order from the root, root excluded
    parent: tuple[int, ...]  # parent in the tree rooted at spine_base (root: itself)
    offsets: np.ndarray  # (V, 3) rest bone vectors parent -> joint
    groups: dict[str, np.ndarray]  # joint masks for per-segment scaling: "arm", "leg"


def _tree(layout: Layout) -> _Tree:
    names = list(layout.joint_names)
    missing = sorted(set(REST_POSE) - set(names))
    if missing or len(names) != len(REST_POSE):
        raise CrossclrError(f"synthetic data needs the {LAYOUT_NAME} layout (missing joints {missing})")
    idx = {n: i for i, n in enumerate(names)}
    root = idx["spine_base"]
    nbrs: dict[int, list[int]] = {i: [] for i in range(len(names))}
    for a, b in layout.edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    parent = list(range(len(names)))
    order, queue, seen = [], [root], {root}
    while queue:  # re-root the layout's tree at the pelvis (BFS over its edges)
        j = queue.pop(0)
        for k in sorted(nbrs[j]):
            if k not in seen:
                seen.add(k)
                parent[k] = j
                order.append(k)
                queue.append(k)
    rest = np.array([REST_POSE[n] for n in names])
    offsets = rest - rest[parent]
    offsets[root] = rest[root]
    arm = np.array([any(n.startswith(p + "_") for p in _ARM) for n in names])
    leg = np.array([any(n.startswith(p + "_") for p in _LEG) for n in names])
    return _Tree(tuple(order), tuple(parent), offsets, {"arm": arm, "leg": leg})


def _forward_kinematics(tree: _Tree, pose: Pose, names: list[str], scale: np.ndarray) -> np.ndarray:
    """Joint positions (n, t, V, 3) in the body frame; ``scale`` (n, V) per-bone length factors."""
    n, t = pose.shape
    v = len(names)
    glob: list[np.ndarray] = [np.empty(0)] * v
    pos = np.zeros((n, t, v, 3))
    root = next(j for j in range(v) if tree.parent[j] == j)
    glob[root] = _rot("y", pose.yaw)
    pos[:, :, root] = tree.offsets[root] * scale[:, None, root, None]
    for j in tree.order:
        p = tree.parent[j]
        local = pose.local.get(names[j])
        g = glob[p] if local is None else glob[p] @ local
        glob[j] = g
        off = tree.offsets[j] * scale[:, j, None]  # (n, 3)
        pos[:, :, j] = pos[:, :, p] + np.einsum("ntab,nb->nta", g, off)
    return pos


def _mirror_name(name: str) -> str:
    if name.endswith("_left"):
        return name[: -len("_left")] + "_right"
    if name.endswith("_right"):
        return name[: -len("_right")] + "_left"
    return name


def _idle(p: Pose, rng: np.random.Generator, u: np.ndarray) -> None:
    """Per-sample posture variation and slow sway shared by all classes."""
    n = p.shape[0]
    for joint in ("elbow_left", "elbow_right", "wrist_left", "wrist_right", "knee_left", "knee_right"):
        p.rotate(joint, "x", rng.normal(0, 2.0 * POSTURE_SD, (n, 1)))
        p.rotate(joint, "z", rng.normal(0, POSTURE_SD, (n, 1)))
    sway = 0.04 * np.sin(0.3 * u + rng.uniform(0, 6, (n, 1)))
    p.rotate("spine_mid", "x", rng.normal(0, 0.5 * POSTURE_SD, (n, 1)) + sway)
    p.rotate("head", "y", rng.normal(0, 0.2, (n, 1)))


@dataclass(frozen=True)
class _Meta:
    label: np.ndarray  # (N,)
    setup: np.ndarray
    camera: np.ndarray
    performer: np.ndarray
    replication: np.ndarray


def _draw_meta(rng: np.random.Generator, classes: int, per_class: int, train_subjects: list[int]) -> _Meta:
    val_subjects = [s for s in range(1, NUM_PERFORMERS + 1) if s not in train_subjects]
    n_train = int(round(per_class * TRAIN_FRACTION))
    cols: list[list[int]] = [[], [], [], [], []]
    for c in range(classes):
        for subjects, count in ((train_subjects, n_train), (val_subjects, per_class - n_train)):
            grid = NUM_SETUPS * 3 * len(subjects) * 2
            if count > grid:
                raise CrossclrError(f"synthetic data: at most {grid} samples per class and split, "
                                    f"asked for {count}")
            cells = rng.choice(grid, size=count, replace=False)
            s, rest = np.divmod(cells, 3 * len(subjects) * 2)
            cam, rest = np.divmod(rest, len(subjects) * 2)
            perf, rep = np.divmod(rest, 2)
            cols[0] += [c] * count
            cols[1] += (s + 1).tolist()
            cols[2] += (cam + 1).tolist()
            cols[3] += [subjects[i] for i in perf]
            cols[4] += (rep + 1).tolist()
    arr = [np.asarray(x, np.int64) for x in cols]
    return _Meta(*arr)


def xsub_train_subjects() -> list[int]:
    """Performers 1..40 whose samples are in the NTU-60 xsub training set (from ``ntu.split_of``)."""
    from .ntu import split_of  # the one definition of the benchmark splits

    return [p for p in range(1, NUM_PERFORMERS + 1)
            if split_of(f"S001C001P{p:03d}R001A001", "ntu60-xsub") == "train"]


@dataclass(frozen=True)
class _Plan:
    """Everything drawn once for the whole data set: sample metadata and the performers' proportions."""

    classes: int
    seed: int
    meta: _Meta
    height: np.ndarray  # (NUM_PERFORMERS + 1,) per performer
    arm: np.ndarray
    leg: np.ndarray


def _plan(classes: int, per_class: int, seed: int, train_subjects: list[int] | None) -> _Plan:
    if per_class < 1:
        raise CrossclrError(f"synthetic data: per_class must be >= 1, got {per_class}")
    class_motions(classes)  # validates the class count
    rng = np.random.default_rng([seed, 0])
    subjects = xsub_train_subjects() if train_subjects is None else train_subjects
    meta = _draw_meta(rng, classes, per_class, subjects)
    # performers: proportions fixed per subject; samples vary a little around them
    return _Plan(classes, seed, meta, rng.uniform(0.85, 1.12, NUM_PERFORMERS + 1),
                 rng.uniform(0.9, 1.1, NUM_PERFORMERS + 1), rng.uniform(0.9, 1.1, NUM_PERFORMERS + 1))


@dataclass(frozen=True)
class _Timing:
    """How each of n samples plays out in time."""

    lengths: np.ndarray  # (n,) frames of each sample
    progress: np.ndarray  # (n, t_max) 0..1 over each sample
    amp: np.ndarray  # (n, 1) motion amplitude
    phase: np.ndarray  # (n, 1) start phase of periodic motions
    cycles_periodic: np.ndarray  # (n, 1) cycles of periodic motions (and the idle sway)
    cycles_once: np.ndarray  # (n, 1) cycles of one-off motions
    phase_once: np.ndarray  # (n, 1) start phase of one-off motions


def _draw_timing(rng: np.random.Generator, n: int) -> _Timing:
    lengths = rng.integers(RAW_LENGTH[0], RAW_LENGTH[1] + 1, n)
    t_max = int(lengths.max())
    progress = np.arange(t_max)[None, :] / lengths[:, None]  # (n, t): 0..1 over each sample
    amp = rng.uniform(*AMPLITUDE, (n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1))
    cycles_periodic = rng.uniform(1.5, 4.0, (n, 1))
    cycles_once = rng.uniform(0.8, 1.2, (n, 1))
    phase_once = rng.uniform(-0.3, 0.3, (n, 1))
    return _Timing(lengths, progress, amp, phase, cycles_periodic, cycles_once, phase_once)


def _render(plan: _Plan, idx: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Raw sequences of the samples ``idx`` (3, T_i, V, 2) float32, in camera coordinates."""
    layout = BUILTIN_LAYOUTS[LAYOUT_NAME]
    names = list(layout.joint_names)
    tree = _tree(layout)
    label, camera, performer = plan.meta.label[idx], plan.meta.camera[idx], plan.meta.performer[idx]
    n, v = len(idx), len(names)
    scale = plan.height[performer, None] * rng.uniform(0.98, 1.02, (n, 1)) * np.ones((n, v))
    scale = np.where(tree.groups["arm"], scale * plan.arm[performer, None], scale)
    scale = np.where(tree.groups["leg"], scale * plan.leg[performer, None], scale)
    timing = _draw_timing(rng, n)
    body = _perform(plan, label, timing, scale, tree, names, rng)
    two = rng.random(n) < 0.3  # second body for some samples: a bystander swaying in place
    other = _bystanders(two, timing.progress, tree, names, rng)
    return _film(camera, body, other, two, timing.lengths, rng)


def _perform(plan: _Plan, label: np.ndarray, timing: _Timing, scale: np.ndarray, tree: _Tree,
             names: list[str], rng: np.random.Generator) -> np.ndarray:
    """(n, t_max, V, 3) the acting bodies: each class's motions over the idle sway, some mirrored."""
    n, t_max = timing.progress.shape
    progress = timing.progress
    mirror = rng.random(n) < 0.5
    swap = [names.index(_mirror_name(nm)) for nm in names]
    body = np.zeros((n, t_max, len(names), 3))
    for c in np.unique(label):
        sel = np.flatnonzero(label == c)
        pose = Pose(len(sel), t_max)
        u_idle = 2 * np.pi * progress[sel] * timing.cycles_periodic[sel]
        _idle(pose, rng, u_idle)
        for m in class_motions(plan.classes)[c]:
            motion = MOTIONS[m]
            if motion.periodic:
                u = 2 * np.pi * timing.cycles_periodic[sel] * progress[sel] + timing.phase[sel]
            else:
                u = 2 * np.pi * timing.cycles_once[sel] * progress[sel] + timing.phase_once[sel]
            motion.apply(pose, u, timing.amp[sel])
        pos = _forward_kinematics(tree, pose, names, scale[sel])
        flip = mirror[sel]  # left-handed performances: mirror x and swap left/right joints
        pos[flip] = pos[flip][:, :, swap] * np.array([-1.0, 1.0, 1.0])
        ground = pos[..., 1].min(axis=2, keepdims=True)  # feet on the floor, then lift (jumps)
        pos[..., 1] -= ground - pose.lift[..., None]
        body[sel] = pos
    return body


def _bystanders(two: np.ndarray, progress: np.ndarray, tree: _Tree, names: list[str],
                rng: np.random.Generator) -> np.ndarray:
    """(n, t_max, V, 3) a bystander swaying in place beside the samples ``two`` (zeros elsewhere)."""
    n, t_max = progress.shape
    v = len(names)
    other = np.zeros((n, t_max, v, 3))
    if two.any():
        k = int(two.sum())
        pose = Pose(k, t_max)
        _idle(pose, rng, 2 * np.pi * progress[two] * 2.0)
        pos = _forward_kinematics(tree, pose, names, np.ones((k, v)) * rng.uniform(0.85, 1.1, (k, 1)))
        pos[..., 1] -= pos[..., 1].min(axis=2, keepdims=True)
        side = rng.choice([-1.0, 1.0], k)[:, None, None] * rng.uniform(0.7, 1.4, (k, 1, 1))
        pos[..., 0] += side
        pos[..., 2] += rng.uniform(-0.5, 0.5, (k, 1, 1))
        other[two] = pos
    return other


def _film(camera: np.ndarray, body: np.ndarray, other: np.ndarray, two: np.ndarray, lengths: np.ndarray,
          rng: np.random.Generator) -> list[np.ndarray]:
    """Both bodies (n, t_max, V, 3) seen by each sample's camera, with sensor noise -> per sample
    (3, T_i, V, 2) float32."""
    n = len(camera)
    # camera: the body faces the camera (-z) with a camera-dependent yaw, at some distance and height
    cam_yaw = np.array([0.0, -np.pi / 4, 0.0, np.pi / 4])[camera] + rng.normal(0, 0.25, n)
    rot = _rot("x", rng.normal(0.0, 0.08, n)) @ _rot("y", np.pi + cam_yaw)  # (n, 3, 3) pitch · yaw
    shift = np.stack([rng.uniform(-0.6, 0.6, n), rng.uniform(-1.1, -0.6, n), rng.uniform(2.3, 4.2, n)], -1)
    noise = rng.uniform(*NOISE_M, (n, 1, 1, 1))

    seqs = []
    for b, pos in enumerate((body, other)):
        cam = np.einsum("nab,ntvb->ntva", rot, pos) + shift[:, None, None, :]
        cam += noise * rng.standard_normal(cam.shape)
        if b == 1:
            cam *= two[:, None, None, None]
        seqs.append(cam)
    both = np.stack(seqs, axis=-1).astype(np.float32)  # (n, t, V, 3, M)
    # (n, t, V, 3, M) -> per sample (3, T_i, V, M)
    return [np.ascontiguousarray(both[i, : lengths[i]].transpose(2, 0, 1, 3)) for i in range(n)]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=0, keepdims=True), 1e-9)


def _body_axes(j: dict[str, np.ndarray], axes: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(forward, up, the body's right), each (3, T, M) unit vectors: of the head (shoulders and head − neck)
    or of the hips (hips and the spine)."""
    if axes == "head":
        right, up = _unit(j["shoulder_right"] - j["shoulder_left"]), _unit(j["head"] - j["neck"])
    else:
        right, up = _unit(j["hip_right"] - j["hip_left"]), _unit(j["spine_shoulder"] - j["spine_base"])
    return _unit(np.cross(right, up, axis=0)), up, right


def layout_points(seq: np.ndarray, layout: str) -> np.ndarray:
    """An NTU-25 sequence (3, T, 25, M) -> the joints of ``layout`` (3, T, V, M) float64 in the same
    coordinates, from ``LAYOUT_POINTS`` (absent bodies are not masked here)."""
    if layout == LAYOUT_NAME:
        return seq.astype(np.float64)
    j = {n: seq[:, :, i].astype(np.float64) for i, n in enumerate(BUILTIN_LAYOUTS[LAYOUT_NAME].joint_names)}
    axes = {k: _body_axes(j, k) for k in ("head", "hips")}
    pts = []
    for name in BUILTIN_LAYOUTS[layout].joint_names:
        weights, which, offset = LAYOUT_POINTS[layout][name]
        p = sum(w * j[n] for n, w in weights.items())
        pts.append(p + sum(o * a for o, a in zip(offset, axes[which], strict=True)))
    return np.stack(pts, axis=2)  # (3, T, V, M)


def project_2d(xyz: np.ndarray, present: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Joints in camera coordinates (3, T, V, M) (metres, y up) -> what a 2-D pose estimator gives, (3, T, V,
    M): (x, y) pixels of a pinhole camera (y down) and a score; joints of absent bodies (``present`` (T, M)
    False) and missed joints are (0, 0, 0)."""
    z = np.maximum(xyz[2], 1e-3)
    uv = np.stack([CAMERA_CENTER[0] + CAMERA_FOCAL * xyz[0] / z,
                   CAMERA_CENTER[1] - CAMERA_FOCAL * xyz[1] / z])  # (2, T, V, M) pixels, v down
    _, t, v, m = xyz.shape
    score = rng.uniform(*SCORE_RANGE, (t, v, m))
    detected = present[:, None, :] & (rng.random((t, v, m)) >= MISSED_RATE)  # (T, V, M)
    out = np.concatenate([uv, score[None]])  # (3, T, V, M): x, y, score
    return np.where(detected[None], out, 0.0).astype(np.float32)


def to_layout(seq: np.ndarray, layout: str, rng: np.random.Generator) -> np.ndarray:
    """An NTU-25 sequence in camera coordinates (3, T, 25, M) -> raw data of ``layout`` (3, T, V, M)
    float32 in that layout's units and axes (module docstring); absent bodies stay 0."""
    if layout == LAYOUT_NAME:
        return seq
    xyz = layout_points(seq, layout)
    present = np.any(seq != 0, axis=(0, 2))  # (T, M) bodies in each frame
    lay = BUILTIN_LAYOUTS[layout]
    if lay.scored:
        return project_2d(xyz, present, rng)
    flip_y = np.array([1.0, -1.0, 1.0])[:, None, None, None]
    if layout == "azure-kinect-32":  # millimetres, y down
        xyz = 1000.0 * flip_y * xyz
    elif layout == "mediapipe-pose-33":  # world landmarks: metres, origin at the hips' midpoint, y down
        assert lay.hips is not None
        mid_hip = (xyz[:, :, lay.hips[0]] + xyz[:, :, lay.hips[1]]) / 2  # (3, T, M)
        xyz = flip_y * (xyz - mid_hip[:, :, None])
    return np.where(present[None, :, None, :], xyz, 0.0).astype(np.float32)


def iter_raw(classes: int, per_class: int, seed: int = 0, *, chunk: int = CHUNK,
             train_subjects: list[int] | None = None, layout: str = LAYOUT_NAME
             ) -> tuple[_Meta, Iterator[np.ndarray]]:
    """Sample metadata and a generator of raw sequences (3, T_i, V, 2), rendered ``chunk`` at a time.

    ``layout``: any of ``SYNTH_MODES``, in that layout's units and axes (``to_layout``). Memory stays bounded
    by the chunk; the result depends only on ``seed`` (and ``chunk``); the 3-D performances are the same for
    every layout.
    """
    if layout not in SYNTH_MODES:
        raise CrossclrError(f"synthetic data: layout {layout!r}, expected one of {sorted(SYNTH_MODES)}")
    plan = _plan(classes, per_class, seed, train_subjects)

    def gen() -> Iterator[np.ndarray]:
        n = len(plan.meta.label)
        for k, lo in enumerate(range(0, n, chunk)):
            seqs = _render(plan, np.arange(lo, min(lo + chunk, n)), np.random.default_rng([seed, 1 + k]))
            if layout == LAYOUT_NAME:
                yield from seqs
            else:
                rng = np.random.default_rng([seed, 1 + k, 2])
                yield from (to_layout(x, layout, rng) for x in seqs)

    return plan.meta, gen()


def synthesize_raw(classes: int, per_class: int, seed: int = 0,
                   train_subjects: list[int] | None = None, layout: str = LAYOUT_NAME
                   ) -> tuple[list[np.ndarray], _Meta]:
    """All raw sequences, each (3, T_i, V, 2) float32 (second body zero when absent), in the units and axes
    of ``layout`` (``to_layout``)."""
    meta, seqs = iter_raw(classes, per_class, seed, train_subjects=train_subjects, layout=layout)
    return list(seqs), meta


def synth_sample_name(meta: _Meta, i: int) -> str:
    return (f"S{meta.setup[i]:03d}C{meta.camera[i]:03d}P{meta.performer[i]:03d}R{meta.replication[i]:03d}"
            f"A{meta.label[i] + 1:03d}")


def generate_synthetic(out: str | Path, *, classes: int = 10, per_class: int = 60, seed: int = 0,
                       frames: int = 50, layout: str = LAYOUT_NAME) -> Path:
    """Write a synthetic cache (splits train/val by NTU's cross-subject rule; benchmark name ``synthetic``)
    and return its path. ``layout``: any of ``SYNTH_MODES``, preprocessed with the mode given there."""
    from .ntu import split_of
    from .preprocess import normalize_sequence

    out = Path(out)
    meta, seqs = iter_raw(classes, per_class, seed, layout=layout)
    mode = SYNTH_MODES[layout]
    lay = BUILTIN_LAYOUTS[layout]
    split_rule = "ntu60-xsub" if classes <= 60 else "ntu120-xsub"  # splits only: the data is not NTU's
    preprocess = {"mode": mode, "frames": frames, "source": "synthetic", "seed": seed}
    with CacheWriter(out, layout=lay, class_names=synth_class_names(classes), benchmark=SYNTHETIC_BENCHMARK,
                     frames=frames, num_person=2, preprocess=preprocess) as w:
        bar = tqdm(seqs, total=len(meta.label), desc="synth", unit="sample", leave=False, disable=None)
        for i, raw in enumerate(bar):
            name = synth_sample_name(meta, i)
            split = split_of(name, split_rule)
            assert split is not None, name
            x = normalize_sequence(raw, lay, mode=mode, frames=frames)
            w.add(split, x, int(meta.label[i]), name, raw.shape[1])
    log.info("synthetic cache %s: %s", out, w.counts)
    return out
