"""predict: every accepted input form (incl. a real .skeleton file), axis detection, and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import BUILTIN_LAYOUTS
from crossclr_infer.ntu import read_skeleton
from crossclr_infer.predict import collect_files, detect_axes, load_inputs, predict
from crossclr_infer.preprocess import normalize_sequence, preprocess_raw
from crossclr_infer.session import ModelSession
from tests.conftest import shared_path
from tests.helpers import cli_error
from tests.infer.test_session import build_model, reference_logits

pytest.importorskip("onnxruntime")
NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
CLASSES = ("drink", "eat", "brush", "comb", "drop", "pick")
STREAMS = ("joint", "motion", "bone")
FUSION = {"joint": 0.6, "motion": 0.4, "bone": 0.6}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[ModelSession, dict[str, np.ndarray], Path]:
    p = tmp_path_factory.mktemp("predict") / "ensemble.onnx"
    w = build_model(p, streams=STREAMS, class_names=CLASSES, fusion=FUSION)
    return ModelSession(p, ["cpu"]), w, p


def raw_sequence(frames: int = 64, bodies: int = 2, joints: int = 25, seed: int = 0) -> np.ndarray:
    """(C, T, V, M) raw coordinates: a body-shaped random walk, no zero bodies."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.3, (3, 1, joints, bodies)) + np.array([0, 0, 3.0])[:, None, None, None]
    walk = np.cumsum(rng.normal(0, 0.01, (3, frames, joints, bodies)), axis=1)
    return (base + walk).astype(np.float32)


def official(x_ctvm: np.ndarray) -> np.ndarray:
    """Independent path: pad bodies to 2, then the official normalization."""
    c, t, v, m = x_ctvm.shape
    full = np.zeros((c, t, v, 2), np.float32)
    full[..., :m] = x_ctvm[..., :2]
    return normalize_sequence(full, NTU, mode="official", frames=50)


# ------------------------------------------------------------------------------------------ input forms


def test_npy_forms_give_the_official_preprocessing(model, tmp_path) -> None:
    sess, _, _ = model
    x = raw_sequence()  # (C, T, V, M)
    want = official(x)
    forms = {"ctvm.npy": x, "mtvc.npy": np.transpose(x, (3, 1, 2, 0))}
    for name, arr in forms.items():
        np.save(tmp_path / name, arr)
    one = x[..., :1]
    np.save(tmp_path / "tvc.npy", np.transpose(one[..., 0], (1, 2, 0)))  # (C, T, V) -> (T, V, C)
    got = {s.name: s.data for s in load_inputs([tmp_path], sess.info)}
    for name in forms:
        np.testing.assert_allclose(got[str(tmp_path / name)], want, atol=1e-6)
    np.testing.assert_allclose(got[str(tmp_path / "tvc.npy")], official(one), atol=1e-6)
    assert got[str(tmp_path / "tvc.npy")][..., 1].max() == 0  # second body is padding


def test_real_skeleton_file_and_its_array_form(model, tmp_path) -> None:
    sess, w, _ = model
    f = shared_path("ntu_skeleton_samples", "gardiens", "S001C001P001R001A001.skeleton")
    raw = read_skeleton(f)
    want = preprocess_raw(raw, NTU, "official", 50)
    [sample] = load_inputs([f], sess.info)
    np.testing.assert_array_equal(sample.data, want)
    assert np.abs(want).sum() > 0
    if (raw.bodies_per_frame == raw.bodies_per_frame[0]).all():  # the same file as a (M, T, V, C) array
        m = int(raw.bodies_per_frame[0])
        arr = raw.xyz.reshape(raw.num_frames, m, 25, 3).transpose(1, 0, 2, 3)  # (T·M, V, C) -> (M, T, V, C)
        np.save(tmp_path / "same.npy", arr)
        [again] = load_inputs([tmp_path / "same.npy"], sess.info)
        np.testing.assert_allclose(again.data, want, atol=1e-6)
    [pred] = predict(sess, [sample], top_k=3)
    ref = reference_logits(want[None], w)
    fused = sum(FUSION[v] * ref[v] for v in STREAMS)[0]
    p = np.exp(fused - fused.max())
    p /= p.sum()
    best = int(np.argmax(p))
    assert pred.top[0].index == best and pred.top[0].name == CLASSES[best]
    assert pred.top[0].probability == pytest.approx(p[best], abs=1e-5)
    assert [c.probability for c in pred.top] == sorted((c.probability for c in pred.top),
                                                               reverse=True)
    assert set(pred.streams) == set(STREAMS) and len(pred.streams["bone"]) == 3


def test_folder_of_real_skeleton_files(model) -> None:
    sess, _, _ = model
    folder = shared_path("ntu_skeleton_samples", "LevelCA")
    samples = load_inputs([folder], sess.info)
    names = sorted(str(p) for p in folder.iterdir() if p.suffix == ".skeleton")
    assert [s.name for s in samples] == names
    assert all(s.data.shape == (3, 50, 25, 2) for s in samples)


def test_preprocessed_inputs(model, tmp_path) -> None:
    sess, _, _ = model
    x = np.random.default_rng(1).standard_normal((4, 3, 50, 25, 2)).astype(np.float32)
    np.save(tmp_path / "batch.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    got = load_inputs([tmp_path / "batch.npy", tmp_path / "one.npy"], sess.info, preprocessed=True)
    assert [s.name for s in got][:2] == [f"{tmp_path / 'batch.npy'}[0]", f"{tmp_path / 'batch.npy'}[1]"]
    np.testing.assert_array_equal(np.stack([s.data for s in got]), np.concatenate([x, x[:1]]))
    np.save(tmp_path / "bad.npy", x[:, :, :40])
    with pytest.raises(CrossclrError, match="preprocessed array has shape"):
        load_inputs([tmp_path / "bad.npy"], sess.info, preprocessed=True)


def test_axes_detection_and_explicit_axes(model, tmp_path) -> None:
    sess, _, _ = model
    assert detect_axes((60, 25, 3), 25, 3, "f") == "TVC"
    assert detect_axes((2, 60, 25, 3), 25, 3, "f") == "MTVC"
    assert detect_axes((3, 60, 25, 2), 25, 3, "f") == "CTVM"
    x = raw_sequence(bodies=3)  # (3, T, 25, 3): fits (M, T, V, C) and (C, T, V, M)
    np.save(tmp_path / "amb.npy", x)
    with pytest.raises(CrossclrError, match="pass --axes MTVC or --axes CTVM"):
        load_inputs([tmp_path / "amb.npy"], sess.info)
    [s] = load_inputs([tmp_path / "amb.npy"], sess.info, axes="ctvm")
    np.testing.assert_allclose(s.data, official(x), atol=1e-6)
    np.save(tmp_path / "vtc.npy", np.transpose(x[..., 0], (2, 1, 0)))  # (C, T, V) -> (V, T, C)
    with pytest.raises(CrossclrError, match="--axes"):
        load_inputs([tmp_path / "vtc.npy"], sess.info)
    [s2] = load_inputs([tmp_path / "vtc.npy"], sess.info, axes="VTC")
    np.testing.assert_allclose(s2.data, official(x[..., :1]), atol=1e-6)
    for bad in ("TV", "TVV", "TVX", "MTVC"):
        with pytest.raises(CrossclrError, match="--axes"):
            load_inputs([tmp_path / "vtc.npy"], sess.info, axes=bad)


# ------------------------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("arr,match", [
    (np.ones((60, 20, 3), np.float32), "20 joints, the model's layout has 25"),
    (np.ones((2, 60, 20, 3), np.float32), "20 joints"),
    (np.ones((60, 25, 2), np.float32), "--axes"),
    (np.ones((1, 2, 60, 25, 3), np.float32), "5 dimensions|dimensions"),
    (np.zeros((60, 25, 3), np.float32), "every coordinate is 0"),
    (np.array(["a", "b"]), "dtype"),
])
def test_bad_arrays(model, tmp_path, arr, match) -> None:
    sess, _, _ = model
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(CrossclrError, match=match) as e:
        load_inputs([tmp_path / "x.npy"], sess.info)
    assert str(tmp_path / "x.npy") in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_arrays(model, tmp_path, bad) -> None:
    sess, _, _ = model
    x = raw_sequence()
    x[0, 5, 3, 0] = bad
    np.save(tmp_path / "x.npy", x)
    for pre in (False, True):
        with pytest.raises(CrossclrError, match="NaN or Inf"):
            load_inputs([tmp_path / "x.npy"], sess.info, preprocessed=pre)


def test_bad_paths(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrossclrError, match="folder holds no .npy or .skeleton files"):
        collect_files([tmp_path / "empty"])
    with pytest.raises(CrossclrError, match="input not found"):
        collect_files([tmp_path / "none.npy"])
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CrossclrError, match="unsupported input type"):
        collect_files([tmp_path / "a.txt"])
    (tmp_path / "b.npy").write_bytes(b"not numpy")
    from crossclr_infer.predict import load_npy

    with pytest.raises(CrossclrError, match="not a readable .npy"):
        load_npy(tmp_path / "b.npy")


def test_skeleton_file_for_a_model_of_another_layout(tmp_path) -> None:
    p = tmp_path / "kinect.onnx"
    build_model(p, layout=BUILTIN_LAYOUTS["kinect-v1"], class_names=CLASSES)
    sess = ModelSession(p, ["cpu"])
    f = shared_path("ntu_skeleton_samples", "gardiens", "S001C001P001R001A001.skeleton")
    with pytest.raises(CrossclrError, match="25 joints, the model's layout 'kinect-v1' has 20"):
        load_inputs([f], sess.info)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_predict_json_and_text(model, tmp_path, capsys) -> None:
    import cli

    _, _, path = model
    f = shared_path("ntu_skeleton_samples", "gardiens", "S001C001P001R001A001.skeleton")
    np.save(tmp_path / "x.npy", np.transpose(raw_sequence(), (3, 1, 2, 0)))
    cli.main(["predict", str(f), str(tmp_path / "x.npy"), "--model", str(path), "--json", "--top-k", "2",
              "--providers", "cpu"])
    preds = json.loads(capsys.readouterr().out)
    assert [p["input"] for p in preds] == [str(f), str(tmp_path / "x.npy")]
    assert all(len(p["fused"]) == 2 for p in preds)
    cli.main(["predict", str(f), "--model", str(path)])
    out = capsys.readouterr().out
    assert preds[0]["fused"][0]["name"] in out and "streams: joint:" in out


def test_cli_predict_bad_inputs_one_line(model, tmp_path, capsys) -> None:
    _, _, path = model
    (tmp_path / "empty").mkdir()
    assert "folder holds no" in cli_error(["predict", str(tmp_path / "empty"), "--model", str(path)], capsys)
    x = raw_sequence()
    x[1, 2, 3, 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    assert "NaN" in cli_error(["predict", str(tmp_path / "nan.npy"), "--model", str(path)], capsys)
    np.save(tmp_path / "kin.npy", np.ones((30, 20, 3), np.float32))
    assert "20 joints" in cli_error(["predict", str(tmp_path / "kin.npy"), "--model", str(path)], capsys)
    np.save(tmp_path / "shape.npy", np.ones((30, 25), np.float32))
    assert "dimensions" in cli_error(["predict", str(tmp_path / "shape.npy"), "--model", str(path)], capsys)
    assert "--top-k" in cli_error(["predict", str(tmp_path / "shape.npy"), "--model", str(path), "--top-k",
                                  "0"],
                                 capsys)
