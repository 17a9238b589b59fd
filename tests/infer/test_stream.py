"""Live streams: windows equal the offline preprocessing, predictions equal `predict`, imperfect input gets
the documented behaviour (crossclr_infer.stream docstring), slow consumers never block the reader; CLI and
replay."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.predictor import Predictor
from crossclr_infer.preprocess import fill_missing_joints, normalize_sequence
from crossclr_infer.stream import (
    FrameSpec,
    StreamPredictor,
    clip_frames,
    parse_frame,
    read_frames,
)
from tests.helpers import cli_error, run_cli
from tests.infer.test_predict import official, raw_sequence
from tests.infer.test_session import build_model

pytest.importorskip("onnxruntime")
NTU, COCO = get_layout("ntu-rgb+d"), get_layout("coco-17")
STREAMS = ("joint", "motion", "bone")
CLASSES = ("drink", "eat", "brush", "comb", "drop", "pick")
TIMEOUT = 60  # seconds: a CLI run that takes longer is a hang


@pytest.fixture(scope="module")
def ntu_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("stream") / "ntu.onnx"
    build_model(p, streams=STREAMS, class_names=CLASSES)
    return p


@pytest.fixture(scope="module")
def coco_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("stream2d") / "coco.onnx"
    build_model(p, streams=STREAMS, class_names=CLASSES, layout=COCO, frames=30,
                props={"preprocess": json.dumps({"mode": "pose2d", "frames": 30})})
    return p


@pytest.fixture(scope="module")
def ntu(ntu_path) -> Predictor:
    return Predictor(ntu_path, ["cpu"], threads=1)


def frames_of(x: np.ndarray, fps: float = 30.0) -> list[dict]:
    """Frame objects of a clip (3, T, V, M), written by hand: body m has id m, frame i is at i / fps."""
    out = []
    for i in range(x.shape[1]):
        bodies = [{"id": m, "joints": x[:, i, :, m].T.tolist()} for m in range(x.shape[3])
                  if np.any(x[:, i, :, m] != 0)]
        out.append({"t": i / fps, "bodies": bodies})
    return out


def windows_of(sp: StreamPredictor, frames) -> list:
    out = [w for f in frames if (w := sp.push(f)) is not None]
    last = sp.flush()
    return out + ([last] if last is not None else [])


# ------------------------------------------------------------------------------------- window contents
def test_windows_are_the_offline_preprocessing_of_the_same_frames(ntu) -> None:
    x = raw_sequence(frames=80)
    sp = StreamPredictor(ntu, hop=10)
    ws = windows_of(sp, frames_of(x))
    spans = [(round(w.t_start * 30), round(w.t_end * 30)) for w in ws]
    assert spans == [(0, 49), (10, 59), (20, 69), (30, 79)]
    for w in ws:
        a = round(w.t_start * 30)
        np.testing.assert_allclose(w.clip, x[:, a:a + 50], rtol=1e-6)  # float64 JSON values -> float32
        np.testing.assert_allclose(ntu.prepare(w.clip, "CTVM"), official(x[:, a:a + 50]), atol=1e-6)
        assert not w.partial and w.ids == ("0", "1")


def test_span_windows_are_resampled_to_the_models_frames(ntu) -> None:
    x = raw_sequence(frames=70)
    sp = StreamPredictor(ntu, span=1.0, hop=15)
    ws = windows_of(sp, frames_of(x))
    assert [w.clip.shape[1] for w in ws] == [30, 30, 30, 30]  # (t_end - 1 s, t_end] at 30 fps
    first = round(ws[0].t_start * 30)
    assert (first, round(ws[0].t_end * 30)) == (1, 30)
    np.testing.assert_allclose(ntu.prepare(ws[0].clip, "CTVM"), official(x[:, 1:31]), atol=1e-6)
    assert ntu.prepare(ws[0].clip, "CTVM").shape == (3, 50, 25, 2)


def test_stream_prediction_equals_predict_on_the_same_clip(ntu, ntu_path, tmp_path, capsys) -> None:
    x = raw_sequence(frames=64, seed=2)
    sp = StreamPredictor(ntu, hop=7, top_k=4)
    preds = list(sp.run(frames_of(x), lossless=True))
    assert [p.window for p in preds] == [0, 1, 2]  # frames 50, 57 and the end of the stream (64)
    for p in preds:
        a, b = round(p.t_start * 30), round(p.t_end * 30) + 1
        assert p.top == ntu.predict(x[:, a:b], axes="CTVM", top_k=4).top
        assert p.latency_ms >= p.model_ms > 0
    np.save(tmp_path / "last.npy", x[:, 14:64])
    code, out, _ = run_cli(["predict", str(tmp_path / "last.npy"), "--model", str(ntu_path), "--json",
                            "--top-k", "4"], capsys)
    assert code == 0 and json.loads(out)[0]["fused"] == preds[-1].to_dict()["top"]


def test_a_clip_shorter_than_the_window_gives_one_partial_prediction_when_asked(ntu) -> None:
    x = raw_sequence(frames=20, seed=5)
    assert list(StreamPredictor(ntu).run(frames_of(x))) == []  # 20 of 50 frames: below the default half
    [p] = list(StreamPredictor(ntu, min_fill=0.4).run(frames_of(x), lossless=True))
    assert p.partial and p.frames == 20 and p.fill == pytest.approx(0.4)
    assert p.top == ntu.predict(x, top_k=5).top


def test_two_d_stream_keeps_scores_and_zeroes_missing_joints(coco_path) -> None:
    from crossclr_infer.synth import synthesize_raw

    x = synthesize_raw(2, 1, seed=3, layout="coco-17")[0][0][:, :45]  # (3, T, 17, 2): u, v, score
    model = Predictor(coco_path, ["cpu"])
    spec = FrameSpec.for_model(model.info)
    assert spec.scored
    frames = list(clip_frames(x, spec))  # the replay form: undetected joints are null
    assert any(j is None for f in frames for b in f["bodies"] for j in b["joints"])
    sp = StreamPredictor(model, hop=15)
    ws = windows_of(sp, frames)
    for w in ws:
        a = round(w.t_start * 30)
        part = x[:, a:a + 30]
        np.testing.assert_array_equal(w.clip, part)
        by_score = np.argsort(-part[2].sum(axis=(0, 1)), kind="stable")  # pose2d: highest summed score first
        np.testing.assert_array_equal(model.prepare(w.clip, "CTVM"),
                                      normalize_sequence(part[..., by_score], COCO, mode="pose2d", frames=30))
    # scores as a "scores" list and joints as [x, y]: the same frame
    f = {"t": 0, "bodies": [{"joints": x[:2, 0, :, 0].T.tolist(), "scores": x[2, 0, :, 0].tolist()}]}
    parsed = parse_frame(f, spec).bodies[0]
    np.testing.assert_allclose(parsed.values, x[:, 0, :, 0].T, rtol=1e-6)


# ------------------------------------------------------------------------------------ imperfect input
def test_missing_3d_joints_are_filled_from_the_nearest_frame(ntu) -> None:
    x = raw_sequence(frames=50, bodies=1, seed=7)
    frames = frames_of(x)
    frames[10]["bodies"][0]["joints"][6] = None  # not detected
    frames[11]["bodies"][0]["joints"][6] = [float("nan")] * 3
    frames[12]["bodies"][0]["scores"] = [1.0] * 6 + [0.0] + [1.0] * 18  # score 0: missing
    w = windows_of(StreamPredictor(ntu), frames)[0]
    seen = np.ones((50, 25, 1), bool)
    seen[10:13, 6] = False
    np.testing.assert_allclose(w.clip, fill_missing_joints(x, seen, NTU), rtol=1e-6)
    np.testing.assert_allclose(w.clip[:, 10:12, 6, 0], x[:, [9, 9], 6, 0], rtol=1e-6)  # hand: nearest frame
    np.testing.assert_allclose(w.clip[:, 12, 6, 0], x[:, 13, 6, 0], rtol=1e-6)
    assert np.isfinite(w.clip).all()


def test_a_body_vanishing_mid_window_is_zero_there_like_an_array(ntu) -> None:
    x = raw_sequence(frames=60, seed=8)
    x[:, 30:, :, 1] = 0  # body 1 leaves after frame 29
    frames = frames_of(x)
    for f in frames[52:]:
        f["bodies"].append({"id": "new", "joints": (x[:, 0, :, 1] + 1).T.tolist()})  # another one appears
    x3 = np.concatenate([x, np.zeros_like(x[..., :1])], axis=3)
    x3[:, 52:, :, 2] = (x[:, 0, :, 1] + 1)[:, None]
    sp = StreamPredictor(ntu, hop=10)
    ws = windows_of(sp, frames)
    assert [w.ids for w in ws] == [("0", "1"), ("0", "1", "new")]
    np.testing.assert_allclose(ws[0].clip, x[:, :50], rtol=1e-6)
    np.testing.assert_allclose(ws[1].clip, x3[:, 10:60], rtol=1e-6)
    preds = [sp.predict(w) for w in ws]
    assert preds[1].top == ntu.predict(x3[:, 10:60], axes="CTVM").top  # what `predict` does with it
    assert preds[1].bodies == 3


def test_out_of_order_timestamps_are_skipped_with_a_warning(ntu, caplog) -> None:
    x = raw_sequence(frames=60, seed=9)
    clean = frames_of(x)
    messy = clean[:20] + [dict(clean[5])] + [dict(clean[19])] + clean[20:]  # earlier and repeated t
    want = [p.top for p in StreamPredictor(ntu, hop=10).run(clean, lossless=True)]
    sp = StreamPredictor(ntu, hop=10)
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        got = [p.top for p in sp.run(messy, lossless=True)]
    assert got == want and sp.stats.out_of_order == 2
    lines = [r.getMessage() for r in caplog.records if "not after the previous" in r.getMessage()]
    assert len(lines) == 2 and all("\n" not in m for m in lines)


def test_a_long_gap_restarts_the_window(ntu, caplog) -> None:
    x = raw_sequence(frames=90, seed=10)
    frames = frames_of(x)
    for f in frames[60:]:
        f["t"] += 5.0  # 5 s without frames
    sp = StreamPredictor(ntu, hop=10, max_gap=1.0)
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        ws = windows_of(sp, frames)
    assert sp.stats.gaps == 1 and any("window restarted" in r.getMessage() for r in caplog.records)
    assert all(w.t_end < 2.0 or w.t_start >= 7.0 for w in ws)  # never across the gap
    assert ws[-1].partial and ws[-1].clip.shape[1] == 30  # 30 frames after the gap, shorter than a window


MALFORMED = [
    "{not json",
    "[1, 2, 3]",
    '{"bodies": []}',
    '{"t": "soon", "bodies": []}',
    '{"t": 1e999, "bodies": []}',
    '{"t": 0.5}',
    '{"t": 0.5, "bodies": [{"joints": ' + json.dumps([["a", 1, 2]] + [[0, 1, 2]] * 24) + "}]}",
    '{"t": 0.5, "bodies": [7]}',
    '{"t": 0.5, "bodies": [{"id": [1], "joints": ' + json.dumps([[0, 1, 2]] * 25) + "}]}",
    '{"t": 0.5, "bodies": [{"joints": ' + json.dumps([[0, 1, 2]] * 25) + ', "scores": [1, 2]}]}',
    '{"t": 0.5, "bodies": [{"joints": ' + json.dumps([[0, 1, 2]] * 24 + [[1, 2]]) + "}]}",
    '{"t": 0.5, "bodies": [{"id": 1, "joints": ' + json.dumps([[0, 1, 2]] * 25) + '}, {"id": 1, "joints": '
    + json.dumps([[0, 1, 2]] * 25) + "}]}",
]


def test_malformed_lines_are_skipped_with_one_line_warnings(ntu, caplog) -> None:
    x = raw_sequence(frames=55, seed=11)
    lines = [json.dumps(f) for f in frames_of(x)]
    messy = lines[:30] + MALFORMED + ["", "   "] + lines[30:]
    spec = FrameSpec.for_model(ntu.info)
    want = [p.top for p in StreamPredictor(ntu).run(read_frames(lines, spec, "clean"), lossless=True)]
    sp = StreamPredictor(ntu)
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        got = [p.top for p in sp.run(read_frames(messy, spec, "messy", sp.stats), lossless=True)]
    assert got == want and sp.stats.malformed == len(MALFORMED)
    shown = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(shown) == 5 and "further malformed warnings are counted" in shown[-1]  # then only counted
    assert all("\n" not in m and "messy: line" in m for m in shown)
    assert f"{len(MALFORMED)} malformed lines" in caplog.records[-1].getMessage()  # the summary


@pytest.mark.parametrize("bad, match", [
    ({"t": 0, "bodies": [{"joints": [[0, 1, 2]] * 17}]}, "body 0 has 17 joints, the model's layout 'ntu-rgb"),
    ({"t": 0, "bodies": [{"joints": [[0, 1]] * 25}]}, "joints have 2 values, the model takes 3-D"),
])
def test_a_stream_that_does_not_fit_the_model_ends_with_one_error(ntu, bad, match) -> None:
    frames = frames_of(raw_sequence(frames=5)) + [bad]
    with pytest.raises(CrossclrError, match=match) as e:
        list(StreamPredictor(ntu).run(frames))
    assert "\n" not in str(e.value)


def test_windows_without_bodies_are_skipped(ntu, caplog) -> None:
    frames = [{"t": i / 30, "bodies": []} for i in range(60)]
    sp = StreamPredictor(ntu, hop=10)
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        assert list(sp.run(frames)) == []
    assert sp.stats.empty == 2 and any("no body seen" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------ slow consumers
def test_a_slow_consumer_never_blocks_the_reader_and_old_windows_are_dropped(ntu, caplog) -> None:
    frames = frames_of(raw_sequence(frames=200, seed=12))
    read_all = threading.Event()

    def source():
        yield from frames
        read_all.set()

    sp = StreamPredictor(ntu, hop=5)
    got = []
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        for p in sp.run(source(), queue_size=2, live=True):
            got.append(p.window)
            if len(got) == 1:
                assert read_all.wait(10)  # the reader went through every frame while we sat on one prediction
    assert sp.stats.windows == 31 and sp.stats.dropped == 31 - len(got) > 0
    assert got[-2:] == [29, 30]  # the newest windows survive
    assert any("model is behind" in r.getMessage() for r in caplog.records)
    lossless = StreamPredictor(ntu, hop=5)
    assert [p.window for p in lossless.run(source(), queue_size=1)] == list(range(31))  # the default


def test_stopping_early_returns_even_when_the_reader_is_blocked(ntu) -> None:
    release = threading.Event()
    frames = frames_of(raw_sequence(frames=60, seed=13))

    def source():
        yield from frames
        release.wait(30)  # a live source with nothing to say

    t0 = time.perf_counter()
    it = StreamPredictor(ntu, hop=10).run(source())
    first = next(it)
    it.close()
    assert first.window == 0 and time.perf_counter() - t0 < 10
    release.set()


# ------------------------------------------------------------------------------------------------- CLI
def _crossclr(args: list[str], stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], input=stdin, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_cli_stream_from_stdin_with_bad_lines(ntu_path) -> None:
    x = raw_sequence(frames=60, seed=14)
    lines = [json.dumps(f) for f in frames_of(x)]
    lines = lines[:25] + ["garbage", json.dumps({"t": 0.1, "bodies": []})] + lines[25:]
    proc = _crossclr(["predict", "--stream", "--model", str(ntu_path), "--hop", "10", "--top-k", "2"],
                     "\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    preds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["window"] for p in preds] == [0, 1]  # stdin without --live: lossless
    assert set(preds[0]) == {"window", "t_start", "t_end", "frames", "bodies", "partial", "top", "latency_ms",
                             "model_ms", "fill", "streams"}
    model = Predictor(ntu_path, ["cpu"])
    assert preds[1]["top"] == model.predict(x[:, 10:60], axes="CTVM", top_k=2).to_dict()["fused"]
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(err) == 3  # two skipped lines and the summary
    assert "line 26: not JSON" in err[0] and "not after the previous" in err[1] and "stream ended" in err[2]


def test_cli_stream_from_a_file_and_bad_stream_errors(ntu_path, tmp_path, capsys) -> None:
    x = raw_sequence(frames=52, seed=15)
    src = tmp_path / "frames.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in frames_of(x)))
    code, out, _ = run_cli(["predict", "--stream", str(src), "--model", str(ntu_path)], capsys)
    assert code == 0 and len(out.splitlines()) == 2  # frame 50 and the end of the stream
    bad = tmp_path / "coco.jsonl"
    bad.write_text(json.dumps({"t": 0, "bodies": [{"joints": [[0, 0]] * 17}]}) + "\n")
    assert "17 joints" in cli_error(["predict", "--stream", str(bad), "--model", str(ntu_path)], capsys)
    for args, match in [(["--stream", "--preprocessed"], "--preprocessed does not apply"),
                        (["--emit-frames", "x.npy"], "--emit-frames needs --replay"),
                        (["--stream", "--replay", str(src)], "give one of them"),
                        (["--stream", str(tmp_path / "none.jsonl")], "stream source not found"),
                        (["--stream", "--window", "0"], "--window must be >= 1"),
                        (["--replay", str(src)], "unsupported replay file '.jsonl'")]:
        assert match in cli_error(["predict", *args, "--model", str(ntu_path)], capsys)


def test_cli_replay_is_the_stream_of_the_file(ntu_path, tmp_path) -> None:
    x = raw_sequence(frames=66, seed=16)
    x[:, 40:, :, 1] = 0
    x[1, 12, 3, 0] = np.nan  # a missing joint in the recording
    clip = tmp_path / "clip.npy"
    np.save(clip, np.transpose(x, (3, 1, 2, 0)))  # (M, T, V, C)
    emitted = _crossclr(["predict", "--replay", str(clip), "--model", str(ntu_path), "--emit-frames",
                         "--fps", "60", "--no-wait"])
    assert emitted.returncode == 0, emitted.stderr
    frames = [json.loads(line) for line in emitted.stdout.splitlines()]
    assert len(frames) == 66 and frames[1]["t"] == pytest.approx(1 / 60, abs=1e-6)
    assert frames[12]["bodies"][0]["joints"][3] is None and len(frames[45]["bodies"]) == 1
    streamed = _crossclr(["predict", "--stream", "--lossless", "--model", str(ntu_path), "--hop", "8"],
                         emitted.stdout)
    replayed = _crossclr(["predict", "--replay", str(clip), "--model", str(ntu_path), "--hop", "8",
                          "--fps", "60", "--no-wait"])
    assert streamed.returncode == replayed.returncode == 0

    def strip(out: str) -> list[dict]:
        rows = [json.loads(line) for line in out.splitlines()]
        return [{k: v for k, v in row.items() if not k.endswith("_ms")} for row in rows]

    assert strip(streamed.stdout) == strip(replayed.stdout) and len(strip(replayed.stdout)) == 3  # 50, 58, 66
    assert math.isclose(strip(replayed.stdout)[0]["t_end"], 49 / 60, abs_tol=1e-6)


def test_frame_forms_and_models_a_stream_cannot_feed(ntu, tmp_path) -> None:
    spec = FrameSpec.for_model(ntu.info)
    joints = [[0.1 * j, 1.0, 3.0, 0.0 if j == 4 else 0.8] for j in range(25)]  # [x, y, z, score]
    body = parse_frame({"t": 1, "bodies": [{"id": "a", "joints": joints}]}, spec).bodies[0]
    assert body.id == "a" and not body.seen[4] and body.seen.sum() == 24
    np.testing.assert_array_equal(body.values[4], 0)
    np.testing.assert_allclose(body.values[5], [0.5, 1.0, 3.0])
    p = tmp_path / "asis.onnx"
    build_model(p, props={"preprocess": json.dumps({"mode": "as-is", "frames": 50})})
    with pytest.raises(CrossclrError, match="preprocessing 'as-is' cannot be applied to raw frames"):
        StreamPredictor(Predictor(p, ["cpu"]))
    for kwargs, match in [({"window": 10, "span": 1.0}, "not both"), ({"hop": 0}, "--hop"),
                          ({"span": -1.0}, "--span"), ({"max_gap": 0}, "--max-gap"),
                          ({"top_k": 0}, "--top-k")]:
        with pytest.raises(CrossclrError, match=match):
            StreamPredictor(ntu, **kwargs)
