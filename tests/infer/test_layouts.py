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
    ('joints = ["a", "b"]\nparents = ["a", "a"]\ncenter = "a"\nhips = ["a", "c"]\n',
     "hip 'c' is not one of the joints"),
    ('joints = ["a"]\nparents = ["a"]\ncenter = "a"\nhips = "a"\n', r"'hips' must be \[left, right\]"),
    ('joints = [\n', "not valid TOML"),
])
def test_custom_layout_errors_name_the_file(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as e:
        get_layout(p)
    assert str(p) in str(e.value)


def test_unknown_layout_and_missing_file(tmp_path: Path) -> None:
    builtins = (r"\['azure-kinect-32', 'coco-17', 'kinect-v1', 'mediapipe-pose-33', 'ntu-rgb\+d', "
                r"'openpose-body25'\]")
    with pytest.raises(ValueError, match=r"unknown layout 'nope': use one of " + builtins):
        get_layout("nope")
    with pytest.raises(ValueError, match="cannot read layout file"):
        get_layout(tmp_path / "missing.toml")


# ------------------------------------------------------------------------------- pose-estimator layouts
# Independent references, typed from the sources named in crossclr_infer/layouts.py (0-based edges).
PYSKL_COCO_INWARD = [(15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8),
                     (8, 6), (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2)]  # pyskl utils/graph.py, 'coco'
MEDIAPIPE_POSE_CONNECTIONS = {
    (0, 1), (1, 2), (2, 3), (3, 7), (0, 4), (4, 5), (5, 6), (6, 8), (9, 10), (11, 12), (11, 13), (13, 15),
    (15, 17), (15, 19), (15, 21), (17, 19), (12, 14), (14, 16), (16, 18), (16, 20), (16, 22), (18, 20),
    (11, 23), (12, 24), (23, 24), (23, 25), (24, 26), (25, 27), (26, 28), (27, 29), (28, 30), (29, 31),
    (30, 32), (27, 31), (28, 32)}
BODY25_PAIRS_RENDER = [1, 8, 1, 2, 1, 5, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 8, 12, 12, 13, 13, 14,
                       1, 0, 0, 15, 15, 17, 0, 16, 16, 18, 14, 19, 19, 20, 14, 21, 11, 22, 22, 23, 11, 24]
# Azure Kinect body tracking docs, "Joint hierarchy" table: parent index of joints 0..31 (pelvis: root)
AZURE_PARENT_INDEX = [0, 0, 1, 2, 2, 4, 5, 6, 7, 8, 7, 2, 11, 12, 13, 14, 15, 14, 0, 18, 19, 20, 0, 22, 23,
                      24, 3, 26, 26, 26, 26, 26]


def _undirected(edges) -> set[frozenset[int]]:
    return {frozenset(e) for e in edges}


def test_coco17_is_pyskls_coco_graph() -> None:
    coco = get_layout("coco-17")
    assert coco.num_joints == 17 and coco.joint_names[coco.center] == "nose"
    assert coco.joint_names[5] == "left_shoulder" and coco.joint_names[16] == "right_ankle"
    assert sorted(coco.edges) == sorted(PYSKL_COCO_INWARD)  # (child, parent) = pyskl's inward pairs
    assert coco.shoulders == (5, 6) and coco.hips == (11, 12)


def test_mediapipe33_keeps_pose_connections_without_cycles() -> None:
    mp = get_layout("mediapipe-pose-33")
    names = mp.joint_names
    assert mp.num_joints == 33 and names[0] == "nose" and names[9] == "mouth_left"
    assert names[17] == "left_pinky" and names[32] == "right_foot_index"
    edges = _undirected(mp.edges)
    added = _undirected([(9, 0), (10, 0), (11, 0), (12, 0)])  # mouth corners and shoulders to the nose
    assert edges - added <= _undirected(MEDIAPIPE_POSE_CONNECTIONS)
    dropped = _undirected(MEDIAPIPE_POSE_CONNECTIONS) - edges
    assert dropped == _undirected([(11, 12), (23, 24), (17, 19), (18, 20), (29, 31), (30, 32), (9, 10)])
    assert mp.shoulders == (11, 12) and mp.hips == (23, 24)


def test_openpose_body25_is_its_render_pairs_rooted_at_the_neck() -> None:
    op = get_layout("openpose-body25")
    pairs = list(zip(BODY25_PAIRS_RENDER[::2], BODY25_PAIRS_RENDER[1::2], strict=True))
    assert _undirected(op.edges) == _undirected(pairs) and len(op.edges) == 24
    assert op.joint_names[op.center] == "Neck" and op.joint_names[op.origin_joint] == "MidHip"
    named = [op.joint_names[i] for i in (*op.shoulders, *op.hips)]
    assert named == ["LShoulder", "RShoulder", "LHip", "RHip"]


def test_azure_kinect32_is_the_sdk_hierarchy() -> None:
    az = get_layout("azure-kinect-32")
    assert list(az.parents) == AZURE_PARENT_INDEX
    assert [az.joint_names[i] for i in (0, 1, 26, 31)] == ["pelvis", "spine_navel", "head", "ear_right"]
    assert az.center == 0 and az.shoulders == (5, 12) and az.hips == (18, 22)


def test_hips_travel_in_toml() -> None:
    text = 'joints = ["p", "l", "r"]\nparents = ["p", "p", "p"]\ncenter = "p"\nhips = ["l", "r"]\n'
    lay = layout_from_toml_text(text)
    assert lay.hips == (1, 2) and "hips = [\"l\", \"r\"]" in layout_to_toml(lay)
    with pytest.raises(ValueError, match="hip joint 5 outside"):
        Layout("x", ("a", "b"), (0, 0), 0, hips=(0, 5))


def test_scored_is_a_field_of_the_2d_builtin_layouts() -> None:
    assert sorted(n for n, lay in BUILTIN_LAYOUTS.items() if lay.scored) == ["coco-17", "openpose-body25"]


@pytest.mark.parametrize("name", sorted(BUILTIN_LAYOUTS))
def test_builtin_toml_has_no_scored_key_and_old_files_read_as_before(name: str) -> None:
    """Caches, models and checkpoints written before ``scored`` existed hold exactly this text (no key): it
    must read back with the built-in's ``scored``, and the text written today must be the same bytes."""
    text = layout_to_toml(BUILTIN_LAYOUTS[name])
    assert "scored" not in text
    assert layout_from_toml_text(text).scored is BUILTIN_LAYOUTS[name].scored


def test_scored_travels_in_toml_only_where_it_differs_from_the_default() -> None:
    text = 'name = "my-2d"\njoints = ["p", "l", "r"]\nparents = ["p", "p", "p"]\ncenter = "p"\n'
    assert layout_from_toml_text(text).scored is False
    scored = layout_from_toml_text(text + "scored = true\n")
    assert scored.scored is True and layout_to_toml(scored) == text + "scored = true\n"
    assert layout_from_toml_text(layout_to_toml(scored)) == scored
    # a custom layout named like a built-in 2-D one is scored unless it says otherwise
    coco_named = text.replace('"my-2d"', '"coco-17"')
    assert layout_from_toml_text(coco_named).scored is True
    unscored = layout_from_toml_text(coco_named + "scored = false\n")
    assert unscored.scored is False and layout_to_toml(unscored) == coco_named + "scored = false\n"
    with pytest.raises(ValueError, match="'scored' must be true or false"):
        layout_from_toml_text(text + 'scored = "yes"\n')
