"""Layout mapping: skeleton arrays of one layout turned into another by joint name (docs/conventions.md,
"Layout mapping").

A target joint is filled, in this order:

1. **by name**: a source joint with the same name once spelling is set aside (``canonical``: case,
   ``-``/space/CamelCase as ``_``, the side ``left``/``right``/``L``/``R`` in front or behind: ``LShoulder``,
   ``left_shoulder`` and ``shoulder_left`` are one name);
2. **by alias**: a source joint whose name is listed in the same group of ``ALIASES`` (names data sets give
   one joint: Kinect v1's ``hip_center`` is NTU's ``spine_base``, Azure Kinect's ``pelvis``, OpenPose's
   ``MidHip``), the side kept. A source joint fills at most one target joint by name or alias: name matches
   come first, then the alias pairs nearest the front of their group (NTU -> Kinect v1 takes
   ``spine_shoulder``, not ``neck``, for ``shoulder_center``);
3. **by fill** (only when asked): ``fill={"spine_base": ["hip_left", "hip_right"]}`` gives a target joint the
   named source joint, or the mean of several (``--fill spine_base=hip_left+hip_right``); a named fill also
   replaces a name or alias match;
4. **by parent** (only when asked: ``fill_missing=True``, ``--fill-missing``): a target joint still empty
   copies its nearest filled ancestor in the target's tree (Kinect v1 -> NTU: ``thumb_left`` and
   ``hand_tip_left`` become ``hand_left``, ``neck`` becomes ``shoulder_center``).

A target joint left empty refuses the mapping: one CrossclrError naming every such joint. Source joints the
target lacks are dropped. A mean over joints of which any is all zero (missing, or an absent body) is zero,
so absent stays absent.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import CrossclrError
from .layouts import Layout, get_layout

log = logging.getLogger(__name__)

# Groups of names that data sets give one joint (side-less; a sided joint keeps its side). Earlier names in a
# group are preferred when several source joints could fill one target joint (and the other way round).
ALIASES: tuple[tuple[str, ...], ...] = (
    ("hip_center", "spine_base", "pelvis", "mid_hip"),  # Kinect v1, NTU (Kinect v2), Azure Kinect, OpenPose
    ("spine", "spine_mid", "spine_navel"),  # Kinect v1, NTU, Azure Kinect
    ("shoulder_center", "spine_shoulder", "neck", "spine_chest"),  # Kinect v1, NTU, MSR / OpenPose, Azure
    ("hand_tip", "handtip"),  # NTU, Azure Kinect
    ("foot", "foot_index", "big_toe"),  # Kinect, MediaPipe, OpenPose: the front of the foot
)
_GROUP = {name: (g, rank) for g, names in enumerate(ALIASES) for rank, name in enumerate(names)}
_SIDES = {"left": "left", "l": "left", "right": "right", "r": "right"}

Canonical = tuple[str, str | None]  # (side-less name, side)


def canonical(name: str) -> Canonical:
    """A joint name without its spelling: ``LBigToe`` -> (``big_toe``, ``left``), ``left_eye`` and
    ``eye_left`` -> (``eye``, ``left``), ``MidHip`` -> (``mid_hip``, None)."""
    n, side = name.strip(), None
    m = re.fullmatch(r"([LR])([A-Z].*)", n)  # OpenPose: LShoulder, RBigToe
    if m:
        side, n = ("left" if m.group(1) == "L" else "right"), m.group(2)
    n = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", n).lower()  # CamelCase -> snake_case
    parts = [p for p in re.split(r"[_\-\s.]+", n) if p]
    if side is None and len(parts) > 1 and parts[0] in _SIDES:
        side, parts = _SIDES[parts[0]], parts[1:]
    elif side is None and len(parts) > 1 and parts[-1] in _SIDES:
        side, parts = _SIDES[parts[-1]], parts[:-1]
    return "_".join(parts), side


@dataclass(frozen=True)
class LayoutMap:
    """How each joint of ``target`` is made from ``source``: ``sources[j]`` the source joints whose mean it
    is (one joint for a name or alias match), ``how[j]`` one of ``name``, ``alias``, ``fill``, ``parent``."""

    source: Layout
    target: Layout
    sources: tuple[tuple[int, ...], ...]
    how: tuple[str, ...]

    @property
    def is_identity(self) -> bool:
        """Whether the map changes nothing (same joints in the same order)."""
        return self.sources == tuple((j,) for j in range(self.source.num_joints))

    def describe(self) -> list[str]:
        """One line per target joint: ``spine_base <- hip_center (alias)``."""
        names = self.source.joint_names
        return [f"{t} <- {' + '.join(names[i] for i in s)} ({h})"
                for t, s, h in zip(self.target.joint_names, self.sources, self.how, strict=True)]

    def apply(self, x: np.ndarray, axes: str = "CTVM", source: str = "skeleton") -> np.ndarray:
        """``x`` with named ``axes`` (``V`` the joints, ``C`` the coordinates; e.g. ``CTVM``, ``TVC``,
        ``MTVC``) in the source layout -> the same axes in the target layout, same dtype."""
        axes = axes.upper()
        if len(axes) != x.ndim or "V" not in axes or "C" not in axes:
            raise CrossclrError(f"{source}: axes {axes!r} do not fit an array of shape {x.shape} with joints "
                                "(V) and coordinates (C)")
        v, c = axes.index("V"), axes.index("C")
        if x.shape[v] != self.source.num_joints:
            raise CrossclrError(f"{source}: {x.shape[v]} joints, layout {self.source.name!r} (mapped to "
                                f"{self.target.name!r}) has {self.source.num_joints}")
        y = np.moveaxis(x, (v, c), (-2, -1))  # (..., V, C)
        out = y[..., [s[0] for s in self.sources], :]  # (..., V_target, C)
        for j, s in enumerate(self.sources):
            if len(s) > 1:
                part = y[..., list(s), :]  # (..., len(s), C)
                present = np.any(part != 0, axis=-1).all(axis=-1)  # (...,): every averaged joint there
                out[..., j, :] = np.where(present[..., None], part.mean(axis=-2), 0)
        return np.ascontiguousarray(np.moveaxis(out, (-2, -1), (v, c)), dtype=x.dtype)


def _index(layout: Layout) -> dict[Canonical, int]:
    """Canonical name -> joint index (the first joint of a name)."""
    out: dict[Canonical, int] = {}
    for i, n in enumerate(layout.joint_names):
        out.setdefault(canonical(n), i)
    return out


def _alias_pairs(src: dict[Canonical, int], target: Layout, filled: dict[int, int],
                 claimed: set[int]) -> list[tuple[int, int, int, int]]:
    """(rank cost, rank sum, target joint, source joint) for every alias pair among the empty target joints
    and the unclaimed source joints."""
    pairs = []
    for j, name in enumerate(target.joint_names):
        base, side = canonical(name)
        if j in filled or base not in _GROUP:
            continue
        group, rank_t = _GROUP[base]
        for rank_s, other in enumerate(ALIASES[group]):
            i = src.get((other, side))
            if other != base and i is not None and i not in claimed:
                pairs.append((max(rank_t, rank_s), rank_t + rank_s, j, i))
    return sorted(pairs)


def match_by_name(source: Layout, target: Layout) -> dict[int, tuple[int, str]]:
    """Target joint -> (source joint, ``name`` or ``alias``) for the joints names and aliases fill."""
    src = _index(source)
    filled: dict[int, int] = {}
    how: dict[int, str] = {}
    for j, name in enumerate(target.joint_names):
        i = src.get(canonical(name))
        if i is not None and i not in filled.values():
            filled[j], how[j] = i, "name"
    claimed = set(filled.values())
    for _, _, j, i in _alias_pairs(src, target, filled, claimed):
        if j not in filled and i not in claimed:
            filled[j], how[j] = i, "alias"
            claimed.add(i)
    return {j: (i, how[j]) for j, i in filled.items()}


def find_joint(layout: Layout, name: str, what: str) -> int:
    """The joint of ``layout`` called ``name`` (any spelling ``canonical`` sets aside, or an alias)."""
    if name in layout.joint_names:
        return layout.joint_names.index(name)
    index = _index(layout)
    base, side = canonical(name)
    group = ALIASES[_GROUP[base][0]] if base in _GROUP else (base,)
    for other in (base, *group):
        if (other, side) in index:
            return index[(other, side)]
    raise CrossclrError(f"{what}: {name!r} is not a joint of layout {layout.name!r} (joints: "
                        f"{', '.join(layout.joint_names)})")


FillSpec = Mapping[str, str | Sequence[str]]


def _named_fills(source: Layout, target: Layout, fill: FillSpec, option: str) -> dict[int, tuple[int, ...]]:
    """``fill`` (target joint -> source joint or joints) as joint indices."""
    out: dict[int, tuple[int, ...]] = {}
    for t, s in fill.items():
        j = find_joint(target, t, f"{option} (target joint)")
        names = [s] if isinstance(s, str) else list(s)
        if not names or not all(isinstance(n, str) for n in names):
            raise CrossclrError(f"{option}: joint {t!r} needs one or more source joint names, got {s!r:.60}")
        out[j] = tuple(find_joint(source, n, f"{option} (source joint of {t!r})") for n in names)
    return out


def _parent_fill(target: Layout, sources: dict[int, tuple[int, ...]]) -> dict[int, tuple[int, ...]]:
    """Each empty target joint -> the sources of its nearest filled ancestor (none for a root chain)."""
    out = dict(sources)
    for j in range(target.num_joints):
        k = j
        while k not in sources and target.parents[k] != k:
            k = target.parents[k]
        if j not in sources and k in sources:
            out[j] = sources[k]
    return out


def plan_mapping(source: Layout, target: Layout, *, fill: FillSpec | None = None, fill_missing: bool = False,
                 cli: bool = False) -> LayoutMap:
    """The map from ``source`` to ``target`` (module docstring), or a one-line CrossclrError naming every
    target joint it cannot fill. ``cli``: errors name the command-line options (``--fill``) rather than the
    Python arguments (``fill=``)."""
    fill_opt, missing_opt = ("--fill", "--fill-missing") if cli else ("fill", "fill_missing")
    matched = match_by_name(source, target)
    sources = {j: (i,) for j, (i, _) in matched.items()}
    how = {j: h for j, (_, h) in matched.items()}
    for j, s in _named_fills(source, target, fill or {}, fill_opt).items():
        sources[j], how[j] = s, "fill"
    if fill_missing:
        for j, s in _parent_fill(target, sources).items():
            if j not in sources:
                sources[j], how[j] = s, "parent"
    empty = [n for j, n in enumerate(target.joint_names) if j not in sources]
    if empty:
        ask = (f"name a source joint for each ({fill_opt} JOINT=SOURCE, or SOURCE+SOURCE for a mean)" if cli
               else "name a source joint for each (fill={'JOINT': 'SOURCE' or ['SOURCE', 'SOURCE']})")
        parent = "" if fill_missing else f" or fill them from their parent joint ({missing_opt})"
        raise CrossclrError(f"cannot map layout {source.name!r} to {target.name!r}: {source.name!r} has no "
                            f"joint for {', '.join(empty)} ({len(empty)} of {target.num_joints}); {ask}"
                            f"{parent}")
    if source.scored != target.scored:
        log.warning("layout %r has %s, %r %s: mapping joints does not change what the channels mean",
                    source.name, "(x, y, score)" if source.scored else "(x, y, z)", target.name,
                    "(x, y, score)" if target.scored else "(x, y, z)")
    order = range(target.num_joints)
    return LayoutMap(source, target, tuple(sources[j] for j in order), tuple(how[j] for j in order))


def input_mapping(from_layout: str | Layout | None, model_layout: Layout, *, fill: FillSpec | None = None,
                  fill_missing: bool = False, cli: bool = False) -> LayoutMap | None:
    """The map from the inputs' layout ``from_layout`` to a model's (``Predictor(from_layout=...)``,
    ``predict --from-layout``): None without ``from_layout`` or when the map changes nothing; ``fill`` /
    ``fill_missing`` without ``from_layout`` are refused. ``cli``: errors name the options, as in
    ``plan_mapping``."""
    if from_layout is None:
        if fill or fill_missing:
            raise CrossclrError("--fill/--fill-missing apply with --from-layout (the inputs' skeleton layout)"
                                if cli else
                                "fill/fill_missing apply with from_layout (the layout of the clips given)")
        return None
    source = load_layout(from_layout, "--from-layout" if cli else "from_layout")
    mapping = plan_mapping(source, model_layout, fill=fill, fill_missing=fill_missing, cli=cli)
    return None if mapping.is_identity else mapping


def load_layout(name_or_path: str | Layout, option: str) -> Layout:
    """A built-in layout name or a ``.toml`` file (or a Layout as it is); errors name ``option``."""
    if isinstance(name_or_path, Layout):
        return name_or_path
    try:
        return get_layout(name_or_path)
    except ValueError as e:
        raise CrossclrError(f"{option}: {e}") from None


def parse_fill(items: Sequence[str], option: str = "--fill") -> dict[str, list[str]]:
    """``["spine_base=hip_left+hip_right", "neck=shoulder_center"]`` -> {target joint: [source joints]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        target, eq, rest = item.partition("=")
        names = [n.strip() for n in rest.split("+")]
        if not eq or not target.strip() or not all(names):
            raise CrossclrError(f"{option} {item!r}: expected JOINT=SOURCE or JOINT=SOURCE+SOURCE (a target "
                                "joint and the source joints it is the mean of)")
        out[target.strip()] = names
    return out
