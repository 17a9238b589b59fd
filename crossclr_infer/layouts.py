"""Skeleton layouts as data: joint names, the parent of each joint, the center joint.

This module is the one source of truth for skeleton topology. Bone pairs and graph edges are
derived from ``parents``; nothing else in the project types them a second time.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Layout:
    """A skeleton: ``parents[v]`` is the joint that bone ``v`` points from (0-based).

    The center joint is its own parent (the root of the tree); every other joint reaches it by
    following parents. ``shoulders`` = (left, right) joint indices, used to rotate sequences.
    ``origin``: the joint whose first-frame position becomes the coordinate origin in the ``mamp``
    preprocessing (NTU: spine_mid, as in MAMP/CTR-GCN); None = the center joint.
    """

    name: str
    joint_names: tuple[str, ...]
    parents: tuple[int, ...]
    center: int
    shoulders: tuple[int, int] | None = None
    origin: int | None = None

    def __post_init__(self) -> None:
        v = len(self.joint_names)
        if v == 0:
            raise ValueError(f"layout {self.name!r}: no joints")
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
        for j in range(v):  # every joint reaches the center, no cycles
            seen, k = 0, j
            while k != self.center:
                k = self.parents[k]
                seen += 1
                if seen > v:
                    raise ValueError(f"layout {self.name!r}: joint {self.joint_names[j]!r} does not reach "
                                     "the center joint through its parents (cycle)")
        if self.shoulders is not None:
            for s in self.shoulders:
                if not 0 <= s < v:
                    raise ValueError(f"layout {self.name!r}: shoulder joint {s} outside 0..{v - 1}")
        if self.origin is not None and not 0 <= self.origin < v:
            raise ValueError(f"layout {self.name!r}: origin joint {self.origin} outside 0..{v - 1}")

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

BUILTIN_LAYOUTS: dict[str, Layout] = {
    "ntu-rgb+d": _from_one_based("ntu-rgb+d", NTU_JOINTS, _NTU_PAIRS, center=21, shoulders=(5, 9), origin=2),
    "kinect-v1": _from_one_based("kinect-v1", KINECT_V1_JOINTS, _KINECT_V1_PAIRS, center=3, shoulders=(5, 9),
                                 origin=2),
}


def load_layout_toml(path: str | Path) -> Layout:
    """Read a custom layout::

        name = "my-skeleton"
        joints = ["pelvis", "chest", "head", ...]
        parents = ["chest", "chest", "chest", ...]   # the center names itself
        center = "chest"
        shoulders = ["l_shoulder", "r_shoulder"]      # optional, for the rotation step
        origin = "pelvis"                             # optional, origin of the mamp preprocessing
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: cannot read layout file ({e})") from None
    return layout_from_toml_text(text, str(path), default_name=path.stem)


def layout_from_toml_text(text: str, source: str = "<metadata>", default_name: str = "custom") -> Layout:
    """Parse layout TOML text (a file's, or as stored in caches and model metadata)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML ({e})") from None
    known = {"name", "joints", "parents", "center", "shoulders", "origin"}
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
    shoulders = doc.get("shoulders")
    if shoulders is not None and (not isinstance(shoulders, list) or len(shoulders) != 2):
        raise ValueError(f"{source}: 'shoulders' must be [left, right]")
    try:
        return Layout(
            name=str(doc.get("name", default_name)),
            joint_names=tuple(joints),
            parents=tuple(idx(p, "parent") for p in parents),
            center=idx(doc["center"], "center"),
            shoulders=None if shoulders is None
            else (idx(shoulders[0], "shoulder"), idx(shoulders[1], "shoulder")),
            origin=None if doc.get("origin") is None else idx(doc["origin"], "origin"),
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
    def q(items: list[str]) -> str:
        return "[" + ", ".join(f'"{s}"' for s in items) + "]"

    names = list(layout.joint_names)
    lines = [f'name = "{layout.name}"', f"joints = {q(names)}",
             f"parents = {q([names[p] for p in layout.parents])}", f'center = "{names[layout.center]}"']
    if layout.shoulders is not None:
        lines.append(f"shoulders = {q([names[s] for s in layout.shoulders])}")
    if layout.origin is not None:
        lines.append(f'origin = "{names[layout.origin]}"')
    return "\n".join(lines) + "\n"
