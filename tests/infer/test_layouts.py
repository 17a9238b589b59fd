"""Skeleton layouts: the NTU and Kinect topology, TOML round trips, custom layouts and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from crossclr_infer.layouts import BUILTIN_LAYOUTS, Layout, get_layout, layout_from_toml_text, layout_to_toml

# docs/design.md §2: NTU bone pairs (v1, v2), 1-based, bone[v1] = x[v1] - x[v2]
DESIGN_BONES = [
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (21, 21), (22, 23), (23, 8),
    (24, 25), (25, 12)]


def test_ntu_bone_pairs_equal_the_design_list() -> None:
    ntu = get_layout("ntu-rgb+d")
    assert [(v + 1, p + 1) for v, p in ntu.bone_pairs] == DESIGN_BONES
    assert ntu.num_joints == 25 and ntu.center == 20 and ntu.shoulders == (4, 8)
    assert ntu.joint_names[20] == "spine_shoulder" and ntu.joint_names[4] == "shoulder_left"
    assert len(ntu.edges) == 24 and (20, 20) not in ntu.edges


def test_kinect_v1() -> None:
    k = get_layout("kinect-v1")
    assert k.num_joints == 20 and k.joint_names[k.center] == "shoulder_center"
    assert len(k.edges) == 19
    assert k.joint_names[k.parents[k.joint_names.index("head")]] == "shoulder_center"


@pytest.mark.parametrize("name", sorted(BUILTIN_LAYOUTS))
def test_toml_round_trip(name: str) -> None:
    lay = BUILTIN_LAYOUTS[name]
    assert layout_from_toml_text(layout_to_toml(lay)) == lay


def test_custom_layout_file(tmp_path: Path) -> None:
    p = tmp_path / "arm.toml"
    p.write_text('name = "arm"\njoints = ["chest", "shoulder", "elbow", "hand", "other_shoulder"]\n'
                 'parents = ["chest", "chest", "shoulder", "elbow", "chest"]\ncenter = "chest"\n'
                 'shoulders = ["shoulder", "other_shoulder"]\n')
    lay = get_layout(p)
    assert lay == Layout("arm", ("chest", "shoulder", "elbow", "hand", "other_shoulder"), (0, 0, 1, 2, 0), 0,
                         (1, 4))
    assert lay.bone_pairs == ((0, 0), (1, 0), (2, 1), (3, 2), (4, 0))
    p2 = tmp_path / "noname.toml"
    p2.write_text('joints = ["a", "b"]\nparents = ["a", "a"]\ncenter = "a"\n')
    assert get_layout(p2).name == "noname" and get_layout(p2).shoulders is None


@pytest.mark.parametrize("text, match", [
    ('joints = ["a", "b"]\nparents = ["a", "a"]\n', "needs 'center'"),
    ('joints = ["a", "b"]\nparents = ["a", "c"]\ncenter = "a"\n', "parent 'c' is not one of the joints"),
    ('joints = ["a", "a"]\nparents = ["a", "a"]\ncenter = "a"\n', "unique"),
    ('joints = ["a", "b", "c"]\nparents = ["a", "c", "b"]\ncenter = "a"\n', "cycle"),
    ('joints = ["a", "b"]\nparents = ["a", "b"]\ncenter = "a"\n', "only the center joint may be the root"),
    ('joints = ["a", "b"]\nparents = ["a"]\ncenter = "a"\n', "1 parents for 2 joints"),
    ('joints = ["a", "b", "c"]\nparents = ["b", "a", "a"]\ncenter = "a"\n',
     "center joint must be its own parent"),
    ('joints = ["a"]\nparents = ["a"]\ncenter = "a"\ncolour = 1\n', r"unknown layout keys \['colour'\]"),
    ('joints = ["a"]\nparents = ["a"]\ncenter = "a"\nshoulders = ["a"]\n',
     r"'shoulders' must be \[left, right\]"),
    ('joints = [\n', "not valid TOML"),
])
def test_custom_layout_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        get_layout(p)
    assert str(p) in str(e.value)


def test_unknown_layout_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown layout 'nope': use one of \['kinect-v1', 'ntu-rgb\+d'\]"):
        get_layout("nope")
    with pytest.raises(ValueError, match="cannot read layout file"):
        get_layout(tmp_path / "missing.toml")
