"""The Python API as a program uses it: package exports, a light import, every input form, xy clips for 2-D
layouts, errors worded for Python (no CLI flags), typed results, the embedding and sharing across threads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import crossclr_infer
from crossclr_infer.layouts import get_layout
from crossclr_infer.predict import load_inputs
from crossclr_infer.preprocess import normalize_sequence
from tests.conftest import shared_path
from tests.helpers import run_cli
from tests.infer.test_predict import official, raw_sequence
from tests.infer.test_session import build_model

pytest.importorskip("onnxruntime")
STREAMS = ("joint", "motion", "bone")
FUSION = {"joint": 0.6, "motion": 0.4, "bone": 0.6}
CLASSES = ("drink", "eat", "brush", "comb", "drop", "pick")
COCO = get_layout("coco-17")
PACKAGE = Path(crossclr_infer.__file__).parent


@pytest.fixture(scope="module")
def ntu(tmp_path_factory) -> crossclr_infer.Predictor:
    p = tmp_path_factory.mktemp("api") / "ensemble.onnx"
    build_model(p, streams=STREAMS, class_names=CLASSES, fusion=FUSION)
    return crossclr_infer.Predictor(p, ["cpu"], threads=1)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> crossclr_infer.Predictor:
    p = tmp_path_factory.mktemp("api2d") / "coco.onnx"
    build_model(p, streams=STREAMS, class_names=CLASSES, fusion=FUSION, layout=COCO, frames=30,
                props={"preprocess": json.dumps({"mode": "pose2d", "frames": 30})})
    return crossclr_infer.Predictor(p, ["cpu"], threads=1)


def tvc(x_ctvm: np.ndarray) -> np.ndarray:
    """(C, T, V, M) -> the first body as (T, V, C)."""
    return np.ascontiguousarray(np.transpose(x_ctvm[..., 0], (1, 2, 0)))


def coco_clip(seed: int = 4) -> np.ndarray:
    """A synthetic COCO-17 clip (T, V, 3) of (x, y, score) in pixels, one body, every joint seen."""
    from crossclr_infer.synth import synthesize_raw

    x = tvc(synthesize_raw(2, 1, seed=seed, layout="coco-17")[0][0])
    x[..., :2] += 1.0  # no joint exactly at (0, 0) (synth writes missing joints there)
    x[..., 2] = np.linspace(0.3, 0.9, x.shape[1])  # scores other than 1
    return x


# ------------------------------------------------------------------------------------------ the package


def test_every_public_name_resolves_and_is_the_submodules_own() -> None:
    from crossclr_infer import errors, predictor, results, session, stream

    exported = {n for n in crossclr_infer.__all__ if n != "__version__"}
    assert exported == set(crossclr_infer._EXPORTS)
    homes = {"errors": errors, "predictor": predictor, "results": results, "session": session,
             "stream": stream}
    for name in exported:
        assert getattr(crossclr_infer, name) is getattr(homes[crossclr_infer._EXPORTS[name]], name), name
    assert issubclass(crossclr_infer.CrossclrError, ValueError)
    assert set(crossclr_infer.__all__) <= set(dir(crossclr_infer))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        crossclr_infer.Nope  # noqa: B018


def test_typing_marker_and_stub_list_the_same_names() -> None:
    assert (PACKAGE / "py.typed").is_file()
    stub = ast.parse((PACKAGE / "__init__.pyi").read_text(encoding="utf-8"))
    stubbed = {a.asname for node in stub.body if isinstance(node, ast.ImportFrom) for a in node.names}
    assert stubbed == set(crossclr_infer._EXPORTS)


def test_importing_the_package_loads_nothing_heavy() -> None:
    """A fresh interpreter: ``import crossclr_infer`` imports no submodule, numpy or inference library;
    ``from crossclr_infer import Predictor`` still no onnxruntime, openvino, h5py or torch (loaded when a
    model is opened)."""
    code = ("import sys; import crossclr_infer; a = sorted(sys.modules); "
            "from crossclr_infer import Predictor, Prediction, CrossclrError; b = sorted(sys.modules); "
            "import json; print(json.dumps([a, b]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    after_package, after_names = json.loads(out.stdout)
    heavy = ("onnxruntime", "openvino", "h5py", "torch", "training", "export")
    top = {m.split(".")[0] for m in after_package}
    assert not top & {*heavy, "numpy"}, top & {*heavy, "numpy"}
    assert [m for m in after_package if m.startswith("crossclr_infer.")] == []
    assert not {m.split(".")[0] for m in after_names} & set(heavy)


# ------------------------------------------------------------------------------------------ input forms


def test_paths_arrays_and_nested_lists_give_the_same_prediction(ntu, tmp_path) -> None:
    x = raw_sequence(frames=40, seed=1)  # (C, T, V, M)
    want = ntu.predict(x, top_k=6)
    np.save(tmp_path / "clip.npy", x)
    for form in (str(tmp_path / "clip.npy"), tmp_path / "clip.npy"):
        got = ntu.predict(form, top_k=6)
        assert got.input == str(tmp_path / "clip.npy")
        np.testing.assert_array_equal(got.probabilities, want.probabilities)
    got = ntu.predict(x.tolist(), top_k=6)  # a nested list in a clip shape: one clip
    assert got.input == "clip"
    np.testing.assert_array_equal(got.probabilities, want.probabilities)


def test_a_list_of_frames_is_one_clip_and_a_list_of_clips_a_batch(ntu) -> None:
    clips = [tvc(raw_sequence(frames=30 + 5 * i, seed=i)) for i in range(3)]  # each (T, V, C)
    one = ntu.predict(clips[0])
    for frames in (clips[0].tolist(), list(clips[0])):  # a list of (V, C) frames, as lists or arrays
        got = ntu.predict(frames)
        assert not isinstance(got, list) and got.input == "clip"
        np.testing.assert_array_equal(got.probabilities, one.probabilities)
    batch = ntu.predict(clips)
    assert [r.input for r in batch] == ["clip[0]", "clip[1]", "clip[2]"]
    for clip, r in zip(clips, batch, strict=True):
        np.testing.assert_allclose(r.probabilities, ntu.predict(clip).probabilities, atol=1e-6)
    same = np.stack(clips[:1] * 2)  # (N, T, V, C): a batch only when the axes say N
    assert len(ntu.predict(same, axes="NTVC")) == 2
    assert len(ntu.predict([c.tolist() for c in clips[:2]], axes="TVC")) == 2
    assert not isinstance(ntu.predict(clips[0].tolist(), axes="TVC"), list)


def test_real_skeleton_file_and_a_folder(ntu, tmp_path) -> None:
    f = shared_path("ntu_skeleton_samples", "gardiens", "S001C001P001R001A001.skeleton")
    got = ntu.predict(f, top_k=3)
    [sample] = load_inputs([f], ntu.info)  # what `crossclr predict` feeds the model
    np.testing.assert_allclose(got.probabilities, ntu.predict_prepared(sample.data).probabilities, atol=1e-6)
    assert got.input == str(f)
    np.save(tmp_path / "a.npy", raw_sequence(frames=30))
    (tmp_path / "b.skeleton").write_bytes(f.read_bytes())
    batch = ntu.predict(tmp_path)
    assert [r.input for r in batch] == [str(tmp_path / "a.npy"), str(tmp_path / "b.skeleton")]
    np.testing.assert_array_equal(batch[1].probabilities, got.probabilities)


def test_xy_without_scores_for_a_2d_model_is_score_one(coco) -> None:
    x = coco_clip()  # (T, V, 3)
    xy = x[..., :2]  # (T, 17, 2) as a 2-D estimator without scores gives it
    with_one = np.concatenate([xy, np.ones_like(x[..., :1])], axis=-1)
    ctvm = np.zeros((3, *xy.shape[:2], 2), np.float32)  # (C, T, V, M), the second body padding
    ctvm[..., 0] = np.transpose(with_one, (2, 0, 1))  # (T, V, C) -> (C, T, V)
    np.testing.assert_array_equal(coco.prepare(xy), normalize_sequence(ctvm, COCO, mode="pose2d", frames=30))
    got = coco.predict(xy)
    assert not np.allclose(got.probabilities, coco.predict(x).probabilities, atol=1e-4)  # the scores matter
    np.testing.assert_array_equal(got.probabilities, coco.predict(with_one).probabilities)
    two = np.stack([xy, np.zeros_like(xy)])  # (M, T, V, 2): an all-zero second body stays absent
    with pytest.raises(crossclr_infer.CrossclrError, match="fits both .* pass axes='MTVC' or axes='CTVM'"):
        coco.predict(two)  # (2, T, 17, 2) is also (C = 2, T, V, M = 2)
    np.testing.assert_array_equal(coco.predict(two, axes="MTVC").probabilities, got.probabilities)
    np.testing.assert_array_equal(coco.predict(np.transpose(xy, (2, 0, 1)), axes="CTV").probabilities,
                                  got.probabilities)
    missing = xy.copy()
    missing[5:9, 3] = 0  # a joint not found in 4 frames, as pose estimators write it: score 0
    scored = np.concatenate([missing, np.ones_like(x[..., :1])], axis=-1)
    scored[5:9, 3, 2] = 0
    np.testing.assert_array_equal(coco.prepare(missing), coco.prepare(scored))


def test_xy_for_a_3d_model_and_other_bad_clips_are_python_worded(ntu) -> None:
    x = raw_sequence(frames=20, bodies=3)  # (3, T, 25, 3) fits (M, T, V, C) and (C, T, V, M)
    cases = [(tvc(x)[..., :2], "2 coordinates per joint (x, y)"),
             (x, "pass axes='MTVC' or axes='CTVM'"),
             (np.zeros((20, 25, 4), np.float32) + 1, "pass axes= to name the axes, e.g. axes='TVC'"),
             (np.ones((20, 25), np.float32), "Predictor.predict_prepared"),
             ("missing.npy", "missing.npy: file not found"),
             ([[1.0, 2.0], [3.0]], "not an array of numbers")]
    for clip, match in cases:
        with pytest.raises(crossclr_infer.CrossclrError, match=match.replace("(", r"\(").replace(")", r"\)")
                           ) as e:
            ntu.predict(clip)
        assert "--" not in str(e.value) and "\n" not in str(e.value), str(e.value)
    for kwargs, match in (({"axes": "TVX"}, "axes 'TVX' does not fit"), ({"top_k": 0}, "top_k must be")):
        with pytest.raises(crossclr_infer.CrossclrError, match=match) as e:
            ntu.predict(tvc(x), **kwargs)
        assert "--" not in str(e.value)


def test_the_cli_keeps_its_own_wording(ntu, tmp_path, capsys) -> None:
    np.save(tmp_path / "amb.npy", raw_sequence(frames=20, bodies=3))
    code, _, err = run_cli(["predict", str(tmp_path / "amb.npy"), "--model", ntu.session.path], capsys)
    assert code == 1 and "pass --axes MTVC or --axes CTVM" in err


# ------------------------------------------------------------------------------------------ results


def test_typed_results_hold_every_probability_and_equal_the_cli_json(ntu, tmp_path, capsys) -> None:
    x = raw_sequence(frames=45, seed=3)
    np.save(tmp_path / "clip.npy", x)
    got = ntu.predict(tmp_path / "clip.npy", top_k=2)
    assert isinstance(got, crossclr_infer.Prediction) and isinstance(got.top[0], crossclr_infer.ClassScore)
    assert got.probabilities.shape == (len(CLASSES),)
    assert got.probabilities.sum() == pytest.approx(1, abs=1e-5)
    order = np.argsort(-got.probabilities, kind="stable")
    assert [c.index for c in got.top] == list(order[:2])
    assert [c.probability for c in got.top] == [float(got.probabilities[j]) for j in order[:2]]
    assert (got.label, got.name, got.probability) == (got.top[0].index, CLASSES[got.top[0].index],
                                                      got.top[0].probability)
    assert got.class_names == CLASSES and set(got.streams) == set(STREAMS) and got.embedding is None
    assert all(len(top) == 2 for top in got.streams.values())
    code, out, _ = run_cli(["predict", str(tmp_path / "clip.npy"), "--model", ntu.session.path, "--json",
                            "--top-k", "2", "--providers", "cpu"], capsys)
    [record] = json.loads(out)
    assert code == 0 and {k: v for k, v in record.items() if k != "runtime"} == got.to_dict()


def test_embedding_of_ensemble_and_stream_models(ntu, tmp_path) -> None:
    x = raw_sequence(frames=40, seed=2)
    prepared = official(x)  # (C, T, V, M)
    got = ntu.predict(x, embedding=True)
    # the hand-built model's embedding is its pooled feature: the mean over T, V, M per channel
    assert got.embedding.shape == (3,)
    np.testing.assert_allclose(got.embedding, prepared.mean(axis=(1, 2, 3)), atol=1e-6)
    batch = ntu.predict([x, x], embedding=True)
    np.testing.assert_array_equal(batch[0].embedding, batch[1].embedding)
    build_model(tmp_path / "joint.onnx", kind="stream", streams=("joint",), class_names=CLASSES)
    one = crossclr_infer.Predictor(tmp_path / "joint.onnx", ["cpu"]).predict(x, embedding=True)
    assert set(one.streams) == {"joint"} and one.embedding.shape == (3,)
    np.testing.assert_allclose(one.probabilities.sum(), 1, atol=1e-5)


def test_one_predictor_shared_by_threads_gives_the_serial_results(ntu) -> None:
    clips = [raw_sequence(frames=30 + 3 * i, seed=i) for i in range(16)]
    serial = [ntu.predict(c).probabilities for c in clips]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda c: ntu.predict(c).probabilities, clips))
    for a, b in zip(serial, threaded, strict=True):
        np.testing.assert_array_equal(a, b)
