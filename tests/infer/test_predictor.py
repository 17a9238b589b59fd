"""Predictor: the Python API gives what `crossclr predict` gives, for one clip and batches, 3-D and 2-D."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.metrics import softmax
from crossclr_infer.predictor import Predictor
from crossclr_infer.preprocess import normalize_sequence
from tests.helpers import run_cli
from tests.infer.test_predict import official, raw_sequence
from tests.infer.test_session import build_model, reference_logits

pytest.importorskip("onnxruntime")
STREAMS = ("joint", "motion", "bone")
FUSION = {"joint": 0.6, "motion": 0.4, "bone": 0.6}
CLASSES = ("drink", "eat", "brush", "comb", "drop", "pick")
COCO = get_layout("coco-17")


@pytest.fixture(scope="module")
def ntu_model(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    p = tmp_path_factory.mktemp("predictor") / "ensemble.onnx"
    return p, build_model(p, streams=STREAMS, class_names=CLASSES, fusion=FUSION)


@pytest.fixture(scope="module")
def coco_model(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("predictor2d") / "coco.onnx"
    build_model(p, streams=STREAMS, class_names=CLASSES, fusion=FUSION, layout=COCO, frames=30,
                props={"preprocess": json.dumps({"mode": "pose2d", "frames": 30})})
    return p


def fused_probabilities(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """numpy reference: the hand-built model's fused softmax for prepared inputs (N, C, T, V, M)."""
    ref = reference_logits(x, w)
    return softmax(sum(FUSION[v] * ref[v] for v in STREAMS))


def test_one_clip_in_every_axis_order_is_the_official_preprocessing_and_fusion(ntu_model) -> None:
    path, w = ntu_model
    model = Predictor(path, ["cpu"], threads=1)
    x = raw_sequence(frames=70)  # (C, T, V, M)
    want = official(x)
    np.testing.assert_allclose(model.prepare(x), want, atol=1e-6)
    probs = fused_probabilities(want[None], w)[0]
    for clip in (x, np.transpose(x, (3, 1, 2, 0))):  # (C, T, V, M) and (M, T, V, C)
        r = model.predict(clip, top_k=3)
        assert [c.index for c in r.top] == list(np.argsort(-probs)[:3])
        got = [c.probability for c in r.top]
        np.testing.assert_allclose(got, np.sort(probs)[::-1][:3], atol=1e-5)
        assert set(r.streams) == set(STREAMS) and r.name == CLASSES[int(np.argmax(probs))]
    for order in itertools.permutations("CTVM"):  # all 24 axis orders, named with axes=
        clip = np.transpose(x, ["CTVM".index(a) for a in order])  # (C, T, V, M) -> the named order
        np.testing.assert_allclose(model.prepare(clip, "".join(order)), want, atol=1e-6)
        r = model.predict(clip, top_k=3, axes="".join(order))
        assert [c.index for c in r.top] == list(np.argsort(-probs)[:3]), order
    one = np.transpose(x[..., 0], (1, 2, 0))  # (T, V, C)
    r = model.predict(one, axes="TVC")
    np.testing.assert_allclose(r.probability, fused_probabilities(official(x[..., :1])[None],
                                                                                 w)[0].max(), atol=1e-5)


def test_equals_the_predict_command(ntu_model, tmp_path, capsys) -> None:
    path, _ = ntu_model
    x = raw_sequence(frames=45, seed=3)
    np.save(tmp_path / "clip.npy", x)
    code, out, _ = run_cli(["predict", str(tmp_path / "clip.npy"), "--model", str(path), "--json",
                            "--top-k", "4", "--providers", "cpu"], capsys)
    assert code == 0
    [cli] = json.loads(out)
    got = Predictor(path, ["cpu"]).predict(x, top_k=4)
    assert got.to_dict()["fused"] == cli["fused"] and got.to_dict()["streams"] == cli["streams"]


def test_batches_keep_their_order(ntu_model) -> None:
    path, w = ntu_model
    model = Predictor(path, ["cpu"], threads=1)
    clips = [raw_sequence(frames=40 + 10 * i, seed=i) for i in range(3)]
    many = model.predict(clips, top_k=6)
    assert [r.input for r in many] == ["clip[0]", "clip[1]", "clip[2]"]
    for clip, r in zip(clips, many, strict=True):
        assert r.top == model.predict(clip, top_k=6).top
    same_length = np.stack([raw_sequence(frames=40, seed=i) for i in range(2)])  # (N, C, T, V, M)
    by_array = model.predict(same_length, top_k=2)
    by_axes = model.predict(np.transpose(same_length[..., 0], (0, 2, 3, 1)), axes="NTVC", top_k=2)
    assert len(by_array) == len(by_axes) == 2
    probs = fused_probabilities(np.stack([official(c[..., :1]) for c in same_length]), w)
    np.testing.assert_allclose([r.probability for r in by_axes], probs.max(axis=1), atol=1e-5)


def test_two_d_model_gets_the_pose2d_preprocessing(coco_model, tmp_path, capsys) -> None:
    from crossclr_infer.synth import synthesize_raw

    x = synthesize_raw(2, 1, seed=4, layout="coco-17")[0][0]  # (C, T, V, M): u, v, score
    model = Predictor(coco_model, ["cpu"])
    np.testing.assert_array_equal(model.prepare(x), normalize_sequence(x, COCO, mode="pose2d", frames=30))
    np.save(tmp_path / "coco.npy", np.transpose(x, (3, 1, 2, 0)))  # (M, T, V, C) as a pose estimator gives
    code, out, _ = run_cli(["predict", str(tmp_path / "coco.npy"), "--model", str(coco_model), "--json"],
                           capsys)
    assert code == 0 and json.loads(out)[0]["fused"] == model.predict(x).to_dict()["fused"]


def test_bad_clips_are_one_line_errors(ntu_model) -> None:
    path, _ = ntu_model
    model = Predictor(path, ["cpu"])
    x = raw_sequence(frames=20)
    x[0, 3, 4, 0] = np.nan
    cases = [(x, "NaN or Inf"), (raw_sequence(frames=20, joints=17), "17 joints"), ([], "empty batch"),
             (np.zeros((3, 10, 25, 1), np.float32), "every coordinate is 0"),
             (np.array(["a"] * 3), "dtype")]
    for clip, match in cases:
        with pytest.raises(CrossclrError, match=match) as e:
            model.predict(clip)
        assert "\n" not in str(e.value)
    with pytest.raises(CrossclrError, match="model file not found"):
        Predictor(path.parent / "missing.onnx")
