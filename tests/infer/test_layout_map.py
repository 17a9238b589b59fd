"""Layout mapping (crossclr_infer.layout_map): MSR's joint order -> kinect-v1 against a hand-written index
list, refusals naming every joint a mapping cannot fill, named and parent fills, round trips, and the
mapping in `prepare arrays --to-layout`, `Predictor(from_layout=...)`, `predict --from-layout` and
`--stream`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.cache import open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layout_map import canonical, parse_fill, plan_mapping
from crossclr_infer.layouts import get_layout
from crossclr_infer.preprocess import normalize_sequence
from tests.helpers import cli_error, run_cli

ROOT = Path(__file__).resolve().parents[2]
MSR = get_layout(ROOT / "benchmarks" / "layouts" / "msr-action3d.toml")
KINECT, NTU, COCO = get_layout("kinect-v1"), get_layout("ntu-rgb+d"), get_layout("coco-17")
OPENPOSE, MEDIAPIPE, AZURE = (get_layout(n)
                              for n in ("openpose-body25", "mediapipe-pose-33", "azure-kinect-32"))

# Written by hand from the joint names of benchmarks/layouts/msr-action3d.toml (MSR line k = index k) and the
# Kinect v1 (NUI_SKELETON_POSITION) order of kinect-v1: entry j is the MSR line holding Kinect joint j.
MSR_TO_KINECT = [
    6,   # hip_center      <- hip_center
    3,   # spine           <- spine
    2,   # shoulder_center <- neck (MSR's name for the shoulder centre)
    19,  # head
    0, 7, 9, 11,  # shoulder, elbow, wrist, hand left
    1, 8, 10, 12,  # ... right
    4, 13, 15, 17,  # hip, knee, ankle, foot left
    5, 14, 16, 18,  # ... right
]
# Kinect v1 -> NTU (Kinect v2) by hand: NTU joint j <- Kinect v1 joint; neck, hand tips and thumbs (which
# Kinect v1 lacks) from their parents' sources: neck <- spine_shoulder <- shoulder_center, tips and thumbs <-
# hand.
KINECT_TO_NTU_PARENT_FILLED = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
                               2, 7, 7, 11, 11]
KINECT_LACKS = ["neck", "hand_tip_left", "thumb_left", "hand_tip_right", "thumb_right"]


def clip(v: int, t: int = 12, m: int = 2, seed: int = 0) -> np.ndarray:
    """(3, T, V, M) raw coordinates, no zeros."""
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 0.3, (3, t, v, m)) + np.array([0, 0, 3.0])[:, None, None, None]).astype(np.float32)


# ----------------------------------------------------------------------------------------- the mapping
def test_msr_order_maps_to_kinect_v1_as_written_by_hand() -> None:
    m = plan_mapping(MSR, KINECT)
    assert m.sources == tuple((i,) for i in MSR_TO_KINECT)
    assert m.how[KINECT.joint_names.index("shoulder_center")] == "alias" and m.how.count("name") == 19
    x = clip(20)
    np.testing.assert_array_equal(m.apply(x), x[:, :, MSR_TO_KINECT])
    tvc = x[..., 0].transpose(1, 2, 0)  # (C, T, V) -> (T, V, C)
    np.testing.assert_array_equal(m.apply(tvc, "TVC"), tvc[:, MSR_TO_KINECT])


def test_kinect_v1_to_ntu_is_refused_naming_every_joint_it_lacks() -> None:
    with pytest.raises(CrossclrError) as e:
        plan_mapping(KINECT, NTU)
    msg = str(e.value)
    assert "\n" not in msg and f"no joint for {', '.join(KINECT_LACKS)} (5 of 25)" in msg
    assert "fill=" in msg and "fill_missing" in msg and "--fill" not in msg  # the API's words


def test_parent_fill_and_named_fill_copy_their_neighbours() -> None:
    x = clip(20, seed=1)
    m = plan_mapping(KINECT, NTU, fill_missing=True)
    np.testing.assert_array_equal(m.apply(x), x[:, :, KINECT_TO_NTU_PARENT_FILLED])
    assert [m.how[NTU.joint_names.index(n)] for n in KINECT_LACKS] == ["parent"] * 5
    named = plan_mapping(KINECT, NTU, fill={"neck": "head", "hand_tip_left": "wrist_left",
                                            "thumb_left": "hand_left", "HandTipRight": ["hand_right"],
                                            "right_thumb": "hand_right"})
    y = named.apply(x)
    for target, source in [("neck", "head"), ("hand_tip_left", "wrist_left"), ("thumb_left", "hand_left"),
                           ("hand_tip_right", "hand_right"), ("thumb_right", "hand_right")]:
        np.testing.assert_array_equal(y[:, :, NTU.joint_names.index(target)],
                                      x[:, :, KINECT.joint_names.index(source)])


def test_a_mean_fill_is_the_mean_and_zero_where_a_joint_is_missing() -> None:
    fill = {"spine_base": "left_hip+right_hip".split("+"),
            "spine_shoulder": ["left_shoulder", "right_shoulder"], "head": "nose"}
    m = plan_mapping(COCO, NTU, fill=fill, fill_missing=True)
    x = clip(17, seed=2)
    x[:, 3, 11, 0] = 0  # left hip missing in frame 3, body 0
    y = m.apply(x)
    hips = (x[:, :, 11] + x[:, :, 12]) / 2
    hips[:, 3, 0] = 0
    np.testing.assert_allclose(y[:, :, NTU.joint_names.index("spine_base")], hips, rtol=1e-6)
    np.testing.assert_allclose(y[:, :, NTU.joint_names.index("spine_shoulder")],
                               (x[:, :, 5] + x[:, :, 6]) / 2, rtol=1e-6)
    np.testing.assert_array_equal(y[:, :, NTU.joint_names.index("head")], x[:, :, 0])
    # spine_mid's parent is spine_shoulder: the parent rule copies the mean
    np.testing.assert_array_equal(y[:, :, NTU.joint_names.index("spine_mid")],
                                  y[:, :, NTU.joint_names.index("spine_shoulder")])


@pytest.mark.parametrize(("source", "target", "missing"), [
    (COCO, NTU, "spine_base, spine_mid, neck, head, hand_left, hand_right, foot_left, foot_right, "
                "spine_shoulder, hand_tip_left, thumb_left, hand_tip_right, thumb_right (13 of 25)"),
    (NTU, COCO, "nose, left_eye, right_eye, left_ear, right_ear (5 of 17)"),  # NTU has no face joints
])
def test_impossible_mappings_are_refused_in_one_line(source, target, missing) -> None:
    with pytest.raises(CrossclrError, match=re.escape("no joint for " + missing)):
        plan_mapping(source, target)
    # the parent rule cannot fill a joint whose every ancestor is empty (COCO -> NTU: the root spine_shoulder)
    if source is COCO:
        with pytest.raises(CrossclrError, match=r"no joint for spine_base, spine_mid, neck, head, "
                                                r"spine_shoulder \(5 of 25\)"):
            plan_mapping(source, target, fill_missing=True)


def test_round_trips_keep_the_joints_both_layouts_have() -> None:
    x = clip(20, seed=3)
    there = plan_mapping(KINECT, NTU, fill_missing=True)
    np.testing.assert_array_equal(plan_mapping(NTU, KINECT).apply(there.apply(x)), x)
    np.testing.assert_array_equal(plan_mapping(KINECT, MSR).apply(plan_mapping(MSR, KINECT).apply(x)), x)
    n = clip(25, seed=4)
    back = there.apply(plan_mapping(NTU, KINECT).apply(n))
    shared = [j for j, name in enumerate(NTU.joint_names) if name not in KINECT_LACKS]
    np.testing.assert_array_equal(back[:, :, shared], n[:, :, shared])
    c = clip(17, seed=5)
    to_mp = plan_mapping(COCO, MEDIAPIPE, fill_missing=True)
    np.testing.assert_array_equal(plan_mapping(MEDIAPIPE, COCO).apply(to_mp.apply(c)), c)
    # OpenPose BODY_25 and MediaPipe hold all 17 COCO joints, by name (LShoulder = left_shoulder)
    assert set(plan_mapping(OPENPOSE, COCO).how) == {"name"}
    a = clip(32, seed=6)
    az = plan_mapping(NTU, AZURE, fill_missing=True).apply(plan_mapping(AZURE, NTU).apply(a))
    lacks = ("clavicle", "nose", "eye", "ear")  # Azure joints NTU has not
    kept = [j for j, name in enumerate(AZURE.joint_names) if not name.startswith(lacks)]
    np.testing.assert_array_equal(az[:, :, kept], a[:, :, kept])


def test_alias_table_names_one_joint_per_source_joint() -> None:
    m = plan_mapping(NTU, KINECT)
    src = [NTU.joint_names[s[0]] for s in m.sources[:3]]
    assert src == ["spine_base", "spine_mid", "spine_shoulder"]  # not neck for shoulder_center
    assert canonical("LShoulder") == canonical("left_shoulder") == canonical("shoulder_left") == ("shoulder",
                                                                                                   "left")
    assert canonical("MidHip") == ("mid_hip", None) and canonical("RBigToe") == ("big_toe", "right")


def test_bad_fills_and_arrays_are_one_line_errors() -> None:
    with pytest.raises(CrossclrError, match=r"fill \(target joint\): 'elbow' is not a joint of layout 'ntu"):
        plan_mapping(KINECT, NTU, fill={"elbow": "hand_left"})
    with pytest.raises(CrossclrError, match="fill \\(source joint of 'neck'\\): 'nose' is not a joint of "
                                            "layout 'kinect-v1'"):
        plan_mapping(KINECT, NTU, fill={"neck": "nose"}, fill_missing=True)
    with pytest.raises(CrossclrError, match="--fill 'neck': expected JOINT=SOURCE"):
        parse_fill(["neck"])
    assert parse_fill(["spine_base=hip_left + hip_right"]) == {"spine_base": ["hip_left", "hip_right"]}
    with pytest.raises(CrossclrError, match="25 joints, layout 'kinect-v1'"):
        plan_mapping(KINECT, NTU, fill_missing=True).apply(clip(25))


# ----------------------------------------------------------------------------- prepare arrays --to-layout
def test_prepare_arrays_to_layout_is_the_offline_mapping_then_the_preprocessing(tmp_path, capsys) -> None:
    seqs = [clip(20, t=t, seed=10 + t) for t in (9, 14, 11)]
    np.savez(tmp_path / "k.npz", **{f"data_{i}": x for i, x in enumerate(seqs)}, label=np.array([0, 1, 0]),
             split=np.array(["train", "train", "val"]))
    args = ["prepare", "arrays", str(tmp_path / "k.npz"), "--layout", "kinect-v1", "--to-layout", "ntu-rgb+d",
            "--frames", "16", "--out", str(tmp_path / "c.h5")]
    err = cli_error(args, capsys)
    assert f"no joint for {', '.join(KINECT_LACKS)}" in err and "--fill JOINT=SOURCE" in err
    assert not (tmp_path / "c.h5").exists()
    code, out, _ = run_cli([*args, "--fill-missing"], capsys)
    assert code == 0, out
    m = plan_mapping(KINECT, NTU, fill_missing=True)
    with open_cache(tmp_path / "c.h5") as c:
        assert c.layout == NTU and c.sample_shape == (3, 16, 25, 2)
        got = np.concatenate([c.split("train").read_all(), c.split("val").read_all()])
    want = [normalize_sequence(m.apply(x), NTU, mode="official", frames=16) for x in seqs]
    np.testing.assert_allclose(got, np.stack(want), atol=1e-6)


# ------------------------------------------------------------------------ predict / stream --from-layout
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ntu_model(tmp_path_factory) -> Path:
    from tests.infer.test_session import build_model

    p = tmp_path_factory.mktemp("layoutmap") / "ntu.onnx"
    build_model(p, streams=("joint", "motion", "bone"), class_names=("a", "b", "c", "d", "e", "f"))
    return p


def test_predictor_from_layout_equals_predicting_the_offline_mapped_clip(ntu_model, tmp_path, capsys) -> None:
    from crossclr_infer.predictor import Predictor

    x = clip(20, t=40, seed=7)
    mapped = plan_mapping(KINECT, NTU, fill_missing=True).apply(x)
    plain = Predictor(ntu_model, ["cpu"], threads=1)
    kinect = Predictor(ntu_model, ["cpu"], threads=1, from_layout="kinect-v1", fill_missing=True)
    a, b = kinect.predict(x), plain.predict(mapped)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)
    tvc = x[..., 0].transpose(1, 2, 0)  # one body (T, V, C)
    np.testing.assert_array_equal(kinect.predict(tvc).probabilities,
                                  plain.predict(mapped[..., 0].transpose(1, 2, 0)).probabilities)
    with pytest.raises(CrossclrError, match="no joint for neck, hand_tip_left"):
        Predictor(ntu_model, ["cpu"], from_layout="kinect-v1")
    np.save(tmp_path / "k.npy", x)
    np.save(tmp_path / "n.npy", mapped)
    model = ["--model", str(ntu_model), "--json", "--threads", "1"]
    code, out, _ = run_cli(["predict", str(tmp_path / "k.npy"), *model, "--from-layout", "kinect-v1",
                            "--fill-missing"], capsys)
    code2, out2, _ = run_cli(["predict", str(tmp_path / "n.npy"), *model], capsys)
    assert code == code2 == 0
    [r1], [r2] = json.loads(out), json.loads(out2)
    assert r1.pop("input").endswith("k.npy") and r2.pop("input").endswith("n.npy") and r1 == r2
    err = cli_error(["predict", str(tmp_path / "k.npy"), *model, "--from-layout", "coco-17"], capsys)
    assert "cannot map layout 'coco-17' to 'ntu-rgb+d'" in err and "spine_base, spine_mid, neck, head" in err


def _frames(x: np.ndarray) -> list[dict]:
    """Frame objects of a (3, T, V, M) clip: body m has id m, frame i is at i / 30 s."""
    return [{"t": i / 30, "bodies": [{"id": m, "joints": x[:, i, :, m].T.tolist()}
                                     for m in range(x.shape[3])]} for i in range(x.shape[1])]


def test_stream_through_a_mapping_equals_the_offline_mapping_of_the_frames(ntu_model, tmp_path,
                                                                           capsys) -> None:
    from crossclr_infer.predictor import Predictor
    from crossclr_infer.stream import StreamPredictor

    x = clip(20, t=70, seed=8)
    mapped = plan_mapping(KINECT, NTU, fill_missing=True).apply(x)
    kinect = Predictor(ntu_model, ["cpu"], threads=1, from_layout="kinect-v1", fill_missing=True)
    got = list(StreamPredictor(kinect, hop=10).run(_frames(x)))
    want = list(StreamPredictor(Predictor(ntu_model, ["cpu"], threads=1), hop=10).run(_frames(mapped)))
    assert len(got) == len(want) == 3
    for a, b in zip(got, want, strict=True):
        assert (a.t_start, a.t_end) == (b.t_start, b.t_end)
        np.testing.assert_allclose(a.probabilities, b.probabilities, rtol=1e-6)
    (tmp_path / "k.jsonl").write_text("".join(json.dumps(f) + "\n" for f in _frames(x)))
    code, out, _ = run_cli(["predict", "--stream", str(tmp_path / "k.jsonl"), "--model", str(ntu_model),
                            "--hop", "10", "--from-layout", "kinect-v1", "--fill-missing"], capsys)
    assert code == 0
    lines = [json.loads(s) for s in out.splitlines()]
    assert [ln["top"] for ln in lines] == [p.to_dict()["top"] for p in want]
    np.save(tmp_path / "k.npy", x)
    code, out, _ = run_cli(["predict", "--replay", str(tmp_path / "k.npy"), "--no-wait", "--model",
                            str(ntu_model), "--hop", "10", "--from-layout", "kinect-v1", "--fill-missing"],
                           capsys)
    assert code == 0 and [json.loads(s)["top"] for s in out.splitlines()] == [ln["top"] for ln in lines]


def test_mapping_options_that_do_not_fit_are_one_line_errors(ntu_model, tmp_path, capsys) -> None:
    np.save(tmp_path / "k.npy", clip(20))
    np.savez(tmp_path / "k.npz", data_0=clip(20), label=np.array([0]))
    model = ["--model", str(ntu_model)]
    assert "--fill/--fill-missing apply with --from-layout" in cli_error(
        ["predict", str(tmp_path / "k.npy"), *model, "--fill-missing"], capsys)
    assert "--preprocessed arrays are in the model's layout" in cli_error(
        ["predict", str(tmp_path / "k.npy"), *model, "--preprocessed", "--from-layout", "kinect-v1"], capsys)
    assert "--fill/--fill-missing apply with --to-layout" in cli_error(
        ["prepare", "arrays", str(tmp_path / "k.npz"), "--layout", "kinect-v1", "--fill", "neck=head",
         "--out", str(tmp_path / "c.h5")], capsys)
    assert "--to-layout: unknown layout 'nope'" in cli_error(
        ["prepare", "arrays", str(tmp_path / "k.npz"), "--layout", "kinect-v1", "--to-layout", "nope",
         "--out", str(tmp_path / "c.h5")], capsys)
    assert "--from-layout: unknown layout 'nope'" in cli_error(
        ["predict", "--stream", str(tmp_path / "k.npy"), *model, "--from-layout", "nope"], capsys)
    assert "--emit-frames without --model takes the file's layout as --layout" in cli_error(
        ["predict", "--replay", str(tmp_path / "k.npy"), "--emit-frames", "--from-layout", "kinect-v1"],
        capsys)
    # a mapping from a layout to itself changes nothing and is not applied
    from crossclr_infer.predictor import Predictor

    assert Predictor(ntu_model, ["cpu"], from_layout="ntu-rgb+d").layout_map is None


def test_an_ntu_skeleton_file_through_a_mapping_equals_its_mapped_array(tmp_path) -> None:
    from crossclr_infer.ntu import read_skeleton
    from crossclr_infer.predictor import Predictor
    from tests.infer.test_reliability import skeleton_text
    from tests.infer.test_session import build_model

    build_model(tmp_path / "k.onnx", streams=("joint",), kind="stream", layout=KINECT, num_person=1)
    body = clip(25, t=30, m=1, seed=9)[..., 0].transpose(1, 2, 0)  # (C, T, V) -> (T, V, C)
    (tmp_path / "a.skeleton").write_text(skeleton_text(body))
    xyz = read_skeleton(tmp_path / "a.skeleton").xyz  # (T, 25, 3): one body per frame
    mapped = plan_mapping(NTU, KINECT).apply(xyz, "TVC")
    ntu = Predictor(tmp_path / "k.onnx", ["cpu"], threads=1, from_layout="ntu-rgb+d")
    plain = Predictor(tmp_path / "k.onnx", ["cpu"], threads=1)
    np.testing.assert_allclose(ntu.predict(tmp_path / "a.skeleton").probabilities,
                               plain.predict(mapped).probabilities, rtol=1e-6)
    with pytest.raises(CrossclrError, match="25 joints, the model's layout 'kinect-v1' has 20"):
        plain.predict(tmp_path / "a.skeleton")
