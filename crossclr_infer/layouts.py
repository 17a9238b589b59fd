"""Skeleton layouts as data: joint names, the parent of each joint, the center joint.

This module is the one source of truth for skeleton topology. Bone pairs and graph edges are
derived from ``parents``; nothing else in the project types them a second time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from .errors import check_name
from .fileio import require_regular_file

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# Most joints a layout may have (built-in layouts have 17 to 33; whole-body pose estimators about 133).
# Bounds the work of validating a layout read from a file, a cache or a model's metadata.
MAX_JOINTS = 1000


@dataclass(frozen=True)
class Layout:
    """A skeleton: ``parents[v]`` is the joint that bone ``v`` points from (0-based).

    The center joint is its own parent (the root of the tree); every other joint reaches it by
    following parents. The ``official``/``energy`` preprocessing centres on it; ``pose2d`` centres on the
    hips' midpoint when ``hips`` is set (``preprocess.centre_of`` says which, per mode; docs/conventions.md).
    ``shoulders`` = (left, right) joint indices, used to rotate sequences.
    ``origin``: the joint whose first-frame position becomes the coordinate origin in the ``mamp``
    preprocessing (NTU: spine_mid, as in MAMP/CTR-GCN); None = the center joint.
    ``hips`` = (left, right) joint indices: the ``pose2d`` preprocessing centres each body on their
    midpoint and scales by the shoulder-to-hip (torso) length; None = centre on the center joint.
    ``scored``: the third channel of this skeleton's data is a detection score (x, y, score; 2-D pose
    estimators), not depth; such data is preprocessed with ``pose2d`` by default.
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    center: int
    shoulders: tuple[int, int] | None = None
    origin: int | None = None
    hips: tuple[int, int] | None = None
    scored: bool = False

    def __post_init__(self) -> None:
        # joint names are checked here; the layout's own name by its readers (cache, model, CacheWriter),
        # which name the attribute it came from
        v = len(self.joint_names)
        if v == 0:
            raise ValueError(f"layout {self.name!r}: no joints")
        if v > MAX_JOINTS:
            raise ValueError(f"layout {self.name!r}: {v} joints, more than the maximum of {MAX_JOINTS} "
                             "(MAX_JOINTS)")
        for j in self.joint_names:
            check_name(j, f"layout {self.name!r:.80}", "joint name")
        if len(self.parents) != v:
            raise ValueError(f"layout {self.name!r}: {len(self.parents)} parents for {v} joints")
        if not 0 <= self.center < v:
            raise ValueError(f"layout {self.name!r}: center {self.center} outside 0..{v - 1}")
        for j, p in enumerate(self.parents):
            if not 0 <= p < v:
                raise ValueError(f"layout {self.name!r}: parent {p} of joint {j} outside 0..{v - 1}")
            if p == j and j != self.center:
                raise ValueError(f"layout {self.name!r}: joint {self.joint_names[j]!r} is its own parent "
                                 "but only the center joint may be the root")
        if self.parents[self.center] != self.center:
            raise ValueError(f"layout {self.name!r}: the center joint must be its own parent")
        self._check_tree()
        for what, pair in (("shoulder", self.shoulders), ("hip", self.hips)):
            for s in pair or ():
                if not 0 <= s < v:
                    raise ValueError(f"layout {self.name!r}: {what} joint {s} outside 0..{v - 1}")
        if self.origin is not None and not 0 <= self.origin < v:
            raise ValueError(f"layout {self.name!r}: origin joint {self.origin} outside 0..{v - 1}")

    def _check_tree(self) -> None:
        """Every joint reaches the center through its parents (no cycle), in O(V): each joint is walked
        once, then marked as reaching the center."""
        reaches = [False] * len(self.parents)
        reaches[self.center] = True
        on_path = [False] * len(self.parents)
        for j in range(len(self.parents)):
            path, k = [], j
            while not reaches[k]:
                if on_path[k]:
                    raise ValueError(f"layout {self.name!r}: joint {self.joint_names[j]!r} does not reach "
                                     "the center joint through its parents (cycle)")
                on_path[k] = True
                path.append(k)
                k = self.parents[k]
            for k in path:
                reaches[k] = True

    @property
    def origin_joint(self) -> int:
        """The ``mamp`` preprocessing's origin joint (``origin``, else the center)."""
        return self.center if self.origin is None else self.origin

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def bone_pairs(self) -> tuple[tuple[int, int], ...]:
        """(v, parent[v]) for every joint, 0-based; the center's pair is (c, c) (a zero bone)."""
        return tuple((j, p) for j, p in enumerate(self.parents))

    @property
    def edges(self) -> tuple[tuple[int, int], ...]:
        """Undirected skeleton edges (child, parent), 0-based, self loop of the root excluded."""
        return tuple((j, p) for j, p in enumerate(self.parents) if j != p)


def _from_one_based(name: str, names: list[str], pairs: list[tuple[int, int]], center: int,
                    shoulders: tuple[int, int], origin: int) -> Layout:
    parents = [0] * len(names)
    for child, parent in pairs:
        parents[child - 1] = parent - 1
    return Layout(name, tuple(names), tuple(parents), center - 1, (shoulders[0] - 1, shoulders[1] - 1),
                  origin - 1)


NTU_JOINTS = [
    "spine_base", "spine_mid", "neck", "head", "shoulder_left", "elbow_left", "wrist_left", "hand_left",
    "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left", "knee_left", "ankle_left",
    "foot_left", "hip_right", "knee_right", "ankle_right", "foot_right", "spine_shoulder", "hand_tip_left",
    "thumb_left", "hand_tip_right", "thumb_right",
]
# (joint, parent), 1-based as in the NTU documentation; (21, 21) is the root.
_NTU_PAIRS = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10),
              (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19),
              (21, 21),
              (22, 23), (23, 8), (24, 25), (25, 12)]

KINECT_V1_JOINTS = [
    "hip_center", "spine", "shoulder_center", "head", "shoulder_left", "elbow_left", "wrist_left",
    "hand_left",
    "shoulder_right", "elbow_right", "wrist_right", "hand_right", "hip_left", "knee_left", "ankle_left",
    "foot_left", "hip_right", "knee_right", "ankle_right", "foot_right",
]
_KINECT_V1_PAIRS = [(1, 2), (2, 3), (3, 3), (4, 3), (5, 3), (6, 5), (7, 6), (8, 7), (9, 3), (10, 9), (11, 10),
                    (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19)]



def _from_names(name: str, names: list[str], parent: dict[str, str], center: str, shoulders: tuple[str, str],
                hips: tuple[str, str], origin: str | None = None, scored: bool = False) -> Layout:
    """A layout from joint names and {joint: parent} (the center joint is left out of ``parent``)."""
    idx = {n: i for i, n in enumerate(names)}
    parents = tuple(idx[parent.get(n, n)] for n in names)
    return Layout(name, tuple(names), parents, idx[center], (idx[shoulders[0]], idx[shoulders[1]]),
                  None if origin is None else idx[origin], (idx[hips[0]], idx[hips[1]]), scored)


# Pose estimators. 2-D layouts (COCO-17, OpenPose BODY_25) give (x, y, score) per joint: the three channels
# of the model input, as ST-GCN feeds OpenPose skeletons; they go with the ``pose2d`` preprocessing.
#
# COCO-17 (COCO keypoints; MMPose, Detectron2, YOLO-pose, ViTPose), names and order as in the COCO
# annotations' "keypoints" list. COCO's drawing "skeleton" has cycles; the tree and its center (the nose)
# are pyskl's ``coco`` graph (pyskl/utils/graph.py: inward edges (15,13),(13,11),(16,14),(14,12),(11,5),
# (12,6),(9,7),(7,5),(10,8),(8,6),(5,0),(6,0),(1,0),(3,1),(2,0),(4,2), center 0).
COCO17_JOINTS = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee",
    "left_ankle", "right_ankle",
]
_COCO17_PARENT = {
    "left_eye": "nose", "right_eye": "nose", "left_ear": "left_eye", "right_ear": "right_eye",
    "left_shoulder": "nose", "right_shoulder": "nose", "left_elbow": "left_shoulder",
    "right_elbow": "right_shoulder", "left_wrist": "left_elbow", "right_wrist": "right_elbow",
    "left_hip": "left_shoulder", "right_hip": "right_shoulder", "left_knee": "left_hip",
    "right_knee": "right_hip", "left_ankle": "left_knee", "right_ankle": "right_knee",
}
# MediaPipe Pose (BlazePose) 33 landmarks, 3-D: pose_world_landmarks (x, y, z metres, origin at the hips'
# midpoint, y down; visibility is not a channel; docs/conventions.md), names and order of mediapipe's
# PoseLandmark enum. Its POSE_CONNECTIONS is not a tree (cycles at the shoulders,
# hips, hands and feet; the face and the mouth are not joined to the body): the tree below keeps every
# connection except the cycle-closing (11,12), (23,24), (17,19), (18,20), (29,31), (30,32) and (9,10), and
# joins the mouth corners and the shoulders to the nose, as pyskl's COCO tree joins the shoulders.
MEDIAPIPE33_JOINTS = [
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder",
    "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky",
    "left_index", "right_index", "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee",
    "right_knee", "left_ankle", "right_ankle", "left_heel", "right_heel", "left_foot_index",
    "right_foot_index",
]
_MEDIAPIPE33_PARENT = {
    "left_eye_inner": "nose", "left_eye": "left_eye_inner", "left_eye_outer": "left_eye",
    "left_ear": "left_eye_outer", "right_eye_inner": "nose", "right_eye": "right_eye_inner",
    "right_eye_outer": "right_eye", "right_ear": "right_eye_outer", "mouth_left": "nose",
    "mouth_right": "nose", "left_shoulder": "nose", "right_shoulder": "nose",
    **{f"{s}_{j}": f"{s}_{p}" for s in ("left", "right") for j, p in (
        ("elbow", "shoulder"), ("wrist", "elbow"), ("pinky", "wrist"), ("index", "wrist"), ("thumb", "wrist"),
        ("hip", "shoulder"), ("knee", "hip"), ("ankle", "knee"), ("heel", "ankle"), ("foot_index", "ankle"))},
}
# OpenPose BODY_25 (2-D with scores), names and order of OpenPose's POSE_BODY_25_BODY_PARTS; the tree is
# its POSE_BODY_25_PAIRS_RENDER (24 pairs, already a tree), rooted at the neck as ST-GCN roots OpenPose.
BODY25_JOINTS = [
    "Nose", "Neck", "RShoulder", "RElbow", "RWrist", "LShoulder", "LElbow", "LWrist", "MidHip", "RHip",
    "RKnee", "RAnkle", "LHip", "LKnee", "LAnkle", "REye", "LEye", "REar", "LEar", "LBigToe", "LSmallToe",
    "LHeel", "RBigToe", "RSmallToe", "RHeel",
]
_BODY25_PARENT = {
    "Nose": "Neck", "RShoulder": "Neck", "RElbow": "RShoulder", "RWrist": "RElbow", "LShoulder": "Neck",
    "LElbow": "LShoulder", "LWrist": "LElbow", "MidHip": "Neck", "RHip": "MidHip", "RKnee": "RHip",
    "RAnkle": "RKnee", "LHip": "MidHip", "LKnee": "LHip", "LAnkle": "LKnee", "REye": "Nose", "LEye": "Nose",
    "REar": "REye", "LEar": "LEye", "LBigToe": "LAnkle", "LSmallToe": "LBigToe", "LHeel": "LAnkle",
    "RBigToe": "RAnkle", "RSmallToe": "RBigToe", "RHeel": "RAnkle",
}
# Azure Kinect Body Tracking SDK, 32 joints (3-D, millimetres), order of k4abt_joint_id_t (names lower-case
# without the K4ABT_JOINT_ prefix); parents from the SDK's joint hierarchy table (root: the pelvis).
AZURE_KINECT32_JOINTS = [
    "pelvis", "spine_navel", "spine_chest", "neck", "clavicle_left", "shoulder_left", "elbow_left",
    "wrist_left", "hand_left", "handtip_left", "thumb_left", "clavicle_right", "shoulder_right",
    "elbow_right", "wrist_right", "hand_right", "handtip_right", "thumb_right", "hip_left", "knee_left",
    "ankle_left", "foot_left", "hip_right", "knee_right", "ankle_right", "foot_right", "head", "nose",
    "eye_left", "ear_left", "eye_right", "ear_right",
]
_AZURE_KINECT32_PARENT = {
    "spine_navel": "pelvis", "spine_chest": "spine_navel", "neck": "spine_chest", "head": "neck",
    "nose": "head", "eye_left": "head", "ear_left": "head", "eye_right": "head", "ear_right": "head",
    **{f"{j}_{s}": f"{p}_{s}" for s in ("left", "right") for j, p in (
        ("shoulder", "clavicle"), ("elbow", "shoulder"), ("wrist", "elbow"), ("hand", "wrist"),
        ("handtip", "hand"), ("thumb", "wrist"), ("knee", "hip"), ("ankle", "knee"), ("foot", "ankle"))},
    "clavicle_left": "spine_chest", "clavicle_right": "spine_chest", "hip_left": "pelvis",
    "hip_right": "pelvis",
}

BUILTIN_LAYOUTS: dict[str, Layout] = {
    "ntu-rgb+d": _from_one_based("ntu-rgb+d", NTU_JOINTS, _NTU_PAIRS, center=21, shoulders=(5, 9), origin=2),
    "kinect-v1": _from_one_based("kinect-v1", KINECT_V1_JOINTS, _KINECT_V1_PAIRS, center=3, shoulders=(5, 9),
                                 origin=2),
    "coco-17": _from_names("coco-17", COCO17_JOINTS, _COCO17_PARENT, "nose",
                           ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"), scored=True),
    "mediapipe-pose-33": _from_names("mediapipe-pose-33", MEDIAPIPE33_JOINTS, _MEDIAPIPE33_PARENT, "nose",
                                     ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")),
    "openpose-body25": _from_names("openpose-body25", BODY25_JOINTS, _BODY25_PARENT, "Neck",
                                   ("LShoulder", "RShoulder"), ("LHip", "RHip"), origin="MidHip",
                                   scored=True),
    "azure-kinect-32": _from_names("azure-kinect-32", AZURE_KINECT32_JOINTS, _AZURE_KINECT32_PARENT, "pelvis",
                                   ("shoulder_left", "shoulder_right"), ("hip_left", "hip_right")),
}


def default_scored(name: str) -> bool:
    """``scored`` of a layout whose TOML has no ``scored`` key: the built-in layout's of that name (files
    written before the key existed carry built-in 2-D layouts without it), else False."""
    builtin = BUILTIN_LAYOUTS.get(name)
    return builtin is not None and builtin.scored


def load_layout_toml(path: str | Path) -> Layout:
    """Read a custom layout::

        name = "my-skeleton"
        joints = ["pelvis", "chest", "head", ...]
        parents = ["chest", "chest", "chest", ...]   # the center names itself
        center = "chest"
        shoulders = ["l_shoulder", "r_shoulder"]      # optional, for the rotation step
        origin = "pelvis"                             # optional, origin of the mamp preprocessing
        hips = ["l_hip", "r_hip"]                     # optional, root and torso length of pose2d
        scored = true                                 # optional, channel 3 is a score (x, y, score)
    """
    path = require_regular_file(path, "layout file", missing_ok=True)  # a FIFO would block the read
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read layout file ({e})") from None
    layout = layout_from_toml_text(text, str(path), default_name=path.stem)
    check_name(layout.name, str(path), "layout name")
    return layout


def layout_from_toml_text(text: str, source: str = "<metadata>", default_name: str = "custom") -> Layout:
    """Parse layout TOML text (a file's, or as stored in caches and model metadata)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML ({e})") from None
    except RecursionError:
        raise ValueError(f"{source}: not a layout (arrays or tables nested too deeply)") from None
    known = {"name", "joints", "parents", "center", "shoulders", "origin", "hips", "scored"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ValueError(f"{source}: unknown layout keys {unknown}; expected {sorted(known)}")
    for key in ("joints", "parents", "center"):
        if key not in doc:
            raise ValueError(f"{source}: layout needs {key!r} "
                             "(keys: name, joints, parents, center, shoulders)")
    joints = doc["joints"]
    if not isinstance(joints, list) or not all(isinstance(j, str) for j in joints):
        raise ValueError(f"{source}: 'joints' must be a list of joint names")
    if len(joints) > MAX_JOINTS:
        raise ValueError(f"{source}: {len(joints)} joints, more than the maximum of {MAX_JOINTS} per layout "
                         "(MAX_JOINTS)")
    if len(set(joints)) != len(joints):
        raise ValueError(f"{source}: joint names must be unique")
    index = {n: i for i, n in enumerate(joints)}

    def idx(n: object, what: str) -> int:
        if not isinstance(n, str) or n not in index:
            raise ValueError(f"{source}: {what} {n!r} is not one of the joints")
        return index[n]

    parents = doc["parents"]
    if not isinstance(parents, list):
        raise ValueError(f"{source}: 'parents' must be a list of joint names, one per joint")
    pairs: dict[str, tuple[int, int] | None] = {}
    for key, what in (("shoulders", "shoulder"), ("hips", "hip")):
        pair = doc.get(key)
        if pair is not None and (not isinstance(pair, list) or len(pair) != 2):
            raise ValueError(f"{source}: {key!r} must be [left, right]")
        pairs[key] = None if pair is None else (idx(pair[0], what), idx(pair[1], what))
    name = str(doc.get("name", default_name))
    scored = doc.get("scored", default_scored(name))
    if not isinstance(scored, bool):
        raise ValueError(f"{source}: 'scored' must be true or false, got {scored!r:.40}")
    try:
        return Layout(
            name=name,
            joint_names=tuple(joints),
            parents=tuple(idx(p, "parent") for p in parents),
            center=idx(doc["center"], "center"),
            shoulders=pairs["shoulders"],
            origin=None if doc.get("origin") is None else idx(doc["origin"], "origin"),
            hips=pairs["hips"],
            scored=scored,
        )
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(source) else f"{source}: {msg}") from None


def get_layout(name_or_path: str | Path) -> Layout:
    """A built-in layout by name, or a custom one from a ``.toml`` file."""
    key = str(name_or_path)
    if key in BUILTIN_LAYOUTS:
        return BUILTIN_LAYOUTS[key]
    if key.endswith(".toml"):
        return load_layout_toml(key)
    raise ValueError(f"unknown layout {key!r}: use one of {sorted(BUILTIN_LAYOUTS)} or a .toml layout file")


def layout_to_toml(layout: Layout) -> str:
    """The TOML text of a layout (stored in caches and model metadata so custom layouts travel)."""
    def q(text: str) -> str:  # a TOML basic string, escaped by tomli-w ('s = "..."\n' minus key and newline)
        return tomli_w.dumps({"s": text})[4:-1]

    def arr(items: list[str]) -> str:
        return "[" + ", ".join(q(t) for t in items) + "]"

    names = list(layout.joint_names)
    lines = [f"name = {q(layout.name)}", f"joints = {arr(names)}",
             f"parents = {arr([names[p] for p in layout.parents])}", f"center = {q(names[layout.center])}"]
    if layout.shoulders is not None:
        lines.append(f"shoulders = {arr([names[s] for s in layout.shoulders])}")
    if layout.origin is not None:
        lines.append(f"origin = {q(names[layout.origin])}")
    if layout.hips is not None:
        lines.append(f"hips = {arr([names[h] for h in layout.hips])}")
    if layout.scored != default_scored(layout.name):  # only then: existing files stay byte-identical
        lines.append(f"scored = {'true' if layout.scored else 'false'}")
    return "\n".join(lines) + "\n"
