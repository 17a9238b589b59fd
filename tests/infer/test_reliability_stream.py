"""Streams and Predictor under hostile input (docs/reliability.md): every test builds its bad input
itself. A stream holds a bounded number of bodies and frames whatever arrives; a bad line is skipped, counted
and never ends the stream; options and Predictor arguments get one-line errors; coordinates beyond
±MAX_ABS_COORDINATE are refused at every entry (the one check, ``skeleton.check_coordinates``)."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import stream as stream_mod
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from crossclr_infer.predictor import Predictor
from crossclr_infer.skeleton import MAX_ABS_COORDINATE
from crossclr_infer.stream import (
    MAX_STREAM_BODIES,
    Body,
    Frame,
    FrameSpec,
    StreamPredictor,
    frames_to_clip,
    open_lines,
    read_frames,
)
from tests.helpers import cli_error
from tests.infer.test_predict import raw_sequence
from tests.infer.test_session import build_model

pytest.importorskip("onnxruntime")
NTU, COCO = get_layout("ntu-rgb+d"), get_layout("coco-17")
V = NTU.num_joints
TIMEOUT = 60


@pytest.fixture(scope="module")
def ntu_path(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("hostile_stream") / "ntu.onnx"
    build_model(p, streams=("joint", "motion", "bone"))
    return p


@pytest.fixture(scope="module")
def ntu(ntu_path) -> Predictor:
    return Predictor(ntu_path, ["cpu"], threads=1)


def body(body_id: str, seed: int) -> Body:
    xyz = np.random.default_rng(seed).normal(0, 0.3, (V, 3)).astype(np.float32) + np.float32(3.0)
    return Body(body_id, xyz, np.ones(V, bool))


def frame_line(t: float, joints: list, body_id: int = 0) -> str:
    return json.dumps({"t": t, "bodies": [{"id": body_id, "joints": joints}]})


def clean_lines(frames: int = 60, seed: int = 3) -> list[str]:
    x = raw_sequence(frames=frames, bodies=1, seed=seed)  # (3, T, V, 1)
    return [frame_line(i / 30, x[:, i, :, 0].T.tolist()) for i in range(frames)]


def run_lines(ntu: Predictor, lines, **kwargs) -> tuple[list, StreamPredictor]:
    sp = StreamPredictor(ntu, **kwargs)
    preds = list(sp.run(read_frames(lines, sp.spec, "src", sp.stats), lossless=True))
    return [p.top for p in preds], sp


# ------------------------------------------------------------------------------- item 6: bodies bounded
def test_a_thousand_new_bodies_per_frame_hold_bounded_memory_and_are_counted(ntu, caplog) -> None:
    frames, per_frame = 30, 1000
    sp = StreamPredictor(ntu, window=20, hop=10)
    windows = []
    values = [np.full((V, 3), 0.5 + k, np.float32) for k in range(7)]
    seen = np.ones(V, bool)
    tracemalloc.start()
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        for i in range(frames):
            bodies = tuple(Body(f"{i}-{k}", values[k % 7], seen)
                           for k in range(per_frame))  # 1,000 IDs never seen before
            if (w := sp.push(Frame(i / 30, bodies))) is not None:
                windows.append(w)
            assert len(sp._held) <= MAX_STREAM_BODIES
            del bodies
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # unbounded, the 20-frame window held 20,000 bodies: a (3, 20, 25, 20000) float32 clip alone is 120 MB
    assert peak < 40e6, peak
    assert len(windows) == 2 and all(w.clip.shape[3] <= MAX_STREAM_BODIES for w in windows)
    assert windows[-1].ids == tuple(f"{frames - 1}-{k}" for k in range(MAX_STREAM_BODIES))  # the newest
    # per frame: 968 bodies beyond the bound, and from frame 1 on the 32 held before it are evicted
    assert sp.stats.evicted == frames * (per_frame - MAX_STREAM_BODIES) + (frames - 1) * MAX_STREAM_BODIES
    summary = sp.stats.summary()
    assert f"{sp.stats.evicted} bodies evicted (more than {MAX_STREAM_BODIES} held)" in summary
    shown = [r.getMessage() for r in caplog.records if "MAX_STREAM_BODIES" in r.getMessage()]
    assert len(shown) == 5 and all("\n" not in m for m in shown)  # then only counted


def test_eviction_drops_the_least_recently_seen_body_from_the_whole_window(ntu) -> None:
    sp = StreamPredictor(ntu, window=4, hop=4)
    ids = [str(k) for k in range(MAX_STREAM_BODIES)]
    sp.push(Frame(0.0, tuple(body(i, int(i)) for i in ids)))  # 32 bodies: the bound, nothing evicted
    sp.push(Frame(0.1, (body("0", 0),)))  # 0 is now the most recent; 1 the least
    sp.push(Frame(0.2, (body("new", 99),)))  # a 33rd id evicts 1
    window = sp.push(Frame(0.3, (body("0", 0),)))
    assert window is not None and sp.stats.evicted == 1
    assert "1" not in window.ids and "0" in window.ids and "new" in window.ids and len(window.ids) == 32
    # the reference: the same frames with body 1 removed everywhere, through frames_to_clip
    kept = [Frame(0.0, tuple(body(i, int(i)) for i in ids if i != "1")), Frame(0.1, (body("0", 0),)),
            Frame(0.2, (body("new", 99),)), Frame(0.3, (body("0", 0),))]
    want, want_ids = frames_to_clip(kept, sp.spec)
    assert window.ids == want_ids
    np.testing.assert_array_equal(window.clip, want)


def test_undetected_bodies_take_no_slot_and_a_gap_forgets_the_held_ids(ntu) -> None:
    sp = StreamPredictor(ntu, window=3, hop=1, max_gap=0.5)
    ghost = Body("ghost", np.zeros((V, 3), np.float32), np.zeros(V, bool))
    sp.push(Frame(0.0, (body("a", 1), ghost)))
    assert set(sp._held) == {"a"}
    sp.push(Frame(2.0, (body("b", 2),)))  # a gap: the window restarts
    assert set(sp._held) == {"b"} and sp.stats.gaps == 1


def test_a_span_window_keeps_at_most_max_window_frames(ntu, monkeypatch) -> None:
    monkeypatch.setattr(stream_mod, "MAX_WINDOW_FRAMES", 20)
    sp = StreamPredictor(ntu, span=1.0, hop=1000, min_fill=0)  # 0.1 s of the 1 s span: a partial window
    for i in range(100):  # 100 frames 1 ms apart: all within the span
        sp.push(Frame(i * 1e-3, (body("a", i),)))
        assert len(sp._frames) <= 20
    last = sp.flush()
    assert last is not None and last.clip.shape[1] == 20 and last.t_end == pytest.approx(0.099)
    assert sp.stats.trimmed == 80 and "80 frames beyond 20 per window" in sp.stats.summary()


# ------------------------------------------------------------------- items 13, 14, 16: hostile lines
def hostile_lines() -> list[str]:
    ok = [[0.1, 0.2, 3.0]] * V
    return [
        "[" * 100_000 + "]" * 100_000,  # RecursionError in the JSON parser
        '{"t": ' + "1" * 400 + ', "bodies": []}',  # OverflowError: a 400-digit timestamp
        '{"t": ' + "9" * 5000 + ', "bodies": []}',  # ValueError: beyond Python's 4,300-digit int limit
        frame_line(0.5, [[10**400, 0, 0]] + ok[1:]),  # an integer coordinate beyond float64
        frame_line(0.5, [[1e30, 0.2, 3.0]] + ok[1:]),  # beyond ±MAX_ABS_COORDINATE
        frame_line(0.5, [[3e38, 0.2, 3.0]] + ok[1:]),  # beyond float32 after the cast
        frame_line(0.5, [[1.0, 2.0, -2e5]] * V),
        json.dumps({"t": 0.5, "bodies": [{"id": 0, "joints": ok, "scores": [10**400] * V}]}),
        json.dumps({"t": 0.5, "bodies": [{"id": 0, "joints": [[[[[[[[0.1]]]]]]]] * V}]}),
        json.dumps({"t": {"t": [[[[{"t": 1}]]]]}, "bodies": []}),
        "\ufffd\ufffd{not json",
        '"just a string"',
    ]


def test_hostile_lines_are_skipped_counted_and_the_stream_goes_on(ntu, caplog) -> None:
    clean = clean_lines()
    want, _ = run_lines(ntu, clean, hop=10)
    bad = hostile_lines()
    messy = clean[:20] + bad + clean[20:]
    with caplog.at_level(logging.WARNING, "crossclr_infer.stream"):
        got, sp = run_lines(ntu, messy, hop=10)
    assert got == want and len(got) == 2
    assert sp.stats.malformed == len(bad) and sp.stats.frames == len(clean)
    messages = [r.getMessage() for r in caplog.records]
    assert all("\n" not in m for m in messages)
    assert "MAX_ABS_COORDINATE" in messages[4] and "1e+30" in messages[4]  # the coordinate bound names itself
    assert f"{len(bad)} malformed lines" in messages[-1]  # the end-of-stream summary


def test_frame_objects_pushed_by_python_are_checked_the_same_way(ntu) -> None:
    clean = [json.loads(line) for line in clean_lines(seed=4)]
    bad = [{"t": 10**400, "bodies": []}, {"t": 0.7, "bodies": [{"joints": [[1e30, 0, 0]] * V}]},
           {"t": 0.7, "bodies": [{"joints": [[10**400, 0, 0]] * V}]}]
    sp = StreamPredictor(ntu, hop=10)
    got = [p.top for p in sp.run(clean[:30] + bad + clean[30:], lossless=True)]
    want = [p.top for p in StreamPredictor(ntu, hop=10).run(clean, lossless=True)]
    assert got == want and sp.stats.malformed == len(bad)


def test_lines_are_read_bounded_and_bad_bytes_spoil_only_their_line(ntu, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(stream_mod, "MAX_LINE_BYTES", 4096)
    clean = clean_lines(seed=5)  # each line is about 1.5 kB
    src = tmp_path / "frames.jsonl"
    with open(src, "wb") as f:
        for i, line in enumerate(clean):
            if i == 25:
                f.write(b"\xff\xfe\x80garbage\n")  # not UTF-8
                f.write(b'{"t": 0.1, "bodies": [' + b" " * 100_000 + b"]}\n")  # 100 kB: beyond the bound
            f.write(line.encode() + b"\n")
    lines, regular = open_lines(str(src))
    assert regular
    got, sp = run_lines(ntu, lines, hop=10)
    want, _ = run_lines(ntu, clean, hop=10)
    assert got == want and sp.stats.malformed == 2 and sp.stats.frames == len(clean)


def test_stdin_closed_or_unreadable_is_one_line(monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", None)
    with pytest.raises(CrossclrError, match="stdin is closed"):
        open_lines("-")

    class Folder(io.RawIOBase):  # as `crossclr predict --stream < /` reads it
        def readable(self) -> bool:
            return True

        def readinto(self, b) -> int:
            raise IsADirectoryError(21, "Is a directory")

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Folder())))
    lines, regular = open_lines("-")
    with pytest.raises(CrossclrError, match="stdin: cannot be read .Is a directory") as e:
        list(lines)
    assert not regular and "\n" not in str(e.value)


def _crossclr(args: list[str], stdin: str | None = "", **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], input=stdin, capture_output=stdin is not None,
                          text=True, timeout=TIMEOUT, **kwargs)


def test_cli_stream_with_stdin_closed_is_one_error_line(ntu_path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cli", "predict", "--stream", "--model", str(ntu_path)],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          preexec_fn=lambda: os.close(0))
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: --stream: stdin is closed; pipe JSON-lines frames "
                                                "into stdin or give a file or FIFO as INPUT"]


def test_cli_summary_counts_non_json_and_hostile_lines(ntu_path) -> None:
    clean = clean_lines(seed=6)
    bad = hostile_lines()
    proc = _crossclr(["predict", "--stream", "--lossless", "--model", str(ntu_path), "--hop", "10"],
                     "\n".join(clean[:30] + ["garbage", *bad] + clean[30:]) + "\n")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2 and "NaN" not in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(err) == 5 + 1  # 5 shown (then counted), the summary
    assert "further malformed warnings are counted" in err[4]
    assert "stream ended" in err[-1] and f"{len(bad) + 1} malformed lines" in err[-1]


# ------------------------------------------------------------------------------------ options, one line
@pytest.mark.parametrize("kwargs, match", [
    ({"span": 1e-300}, "--span must be from 0.001 to 3600 seconds"),
    ({"span": float("inf")}, "--span must be from"),
    ({"span": float("nan")}, "--span must be from"),
    ({"span": 10**400}, "--span must be from"),
    ({"window": 10**12}, "--window must be >= 1 and <= 4,096"),
    ({"window": 2.5}, "--window must be >= 1 and <= 4,096 .an integer., got 2.5"),
    ({"hop": 0}, "--hop must be >= 1"),
    ({"top_k": 2.5}, "--top-k must be an integer >= 1"),
    ({"top_k": True}, "--top-k must be an integer >= 1"),
    ({"max_gap": float("nan")}, "--max-gap must be > 0"),
])
def test_stream_options_out_of_range_are_one_line_errors(ntu, kwargs, match) -> None:
    with pytest.raises(CrossclrError, match=match) as e:
        StreamPredictor(ntu, **kwargs)
    assert "\n" not in str(e.value)


def test_queue_and_fps_bounds(ntu, tmp_path) -> None:
    with pytest.raises(CrossclrError, match="--queue must be >= 1 and <= 64"):
        list(StreamPredictor(ntu).run([], queue_size=10**6))
    clip = tmp_path / "clip.npy"
    np.save(clip, np.transpose(raw_sequence(frames=5), (3, 1, 2, 0)))  # (M, T, V, C)
    for fps in (1e-300, float("inf"), 0.0, -1.0):
        with pytest.raises(CrossclrError, match="--fps must be from 0.01 to 10000 frames per second"):
            list(stream_mod.replay_frames(clip, ntu.info, fps=fps, wait=False))


@pytest.mark.parametrize("args, match", [
    (["--span", "1e-300"], "--span must be from 0.001 to 3600 seconds, got 1e-300"),
    (["--window", "1000000000000"], "--window must be >= 1 and <= 4,096 (an integer), got 1000000000000"),
    (["--queue", "1000000"], "--queue must be >= 1 and <= 64 (an integer), got 1000000"),
])
def test_cli_stream_options_are_one_line_errors(ntu_path, tmp_path, capsys, args, match) -> None:
    src = tmp_path / "frames.jsonl"
    src.write_text("\n".join(clean_lines(frames=3)) + "\n")
    assert cli_error(["predict", "--stream", str(src), "--model", str(ntu_path), *args], capsys) == \
        f"error: {match}"


# ------------------------------------------------------------------------------------------- Predictor
def test_predictor_arguments_of_the_wrong_type_are_one_line_errors(ntu) -> None:
    x = raw_sequence(frames=20, bodies=1)[..., 0].transpose(1, 2, 0)  # (3, T, V) -> (T, V, C)
    for kwargs, match in [({"top_k": 2.5}, "top_k must be an integer >= 1, got 2.5"),
                          ({"top_k": 0}, "top_k must be an integer >= 1"),
                          ({"top_k": "3"}, "top_k must be an integer"),
                          ({"axes": 5}, "axes 5 is a int, expected a string")]:
        with pytest.raises(CrossclrError, match=match) as e:
            ntu.predict(x, **kwargs)
        assert "\n" not in str(e.value)
    assert len(ntu.predict(x, top_k=np.int64(2)).top) == 2  # numpy integers are integers
    deep: list = []
    inner = deep
    for _ in range(5000):  # nesting numpy cannot take (more than 64 dimensions)
        inner.append([])
        inner = inner[0]
    for clip in (deep, np.array([x, x[:5]], dtype=object)):
        with pytest.raises(CrossclrError, match=r"clip(\[0\])?: (not an array of numbers|array dtype)"):
            ntu.predict(clip)
    with pytest.raises(CrossclrError, match="top_k must be an integer"):
        ntu.predict_prepared(ntu.prepare(x), top_k=2.5)


@pytest.mark.parametrize("value", [1e30, 3e38, -2 * MAX_ABS_COORDINATE])
def test_predictor_refuses_coordinates_beyond_the_bound(ntu, value) -> None:
    x = raw_sequence(frames=20, bodies=1)[..., 0].transpose(1, 2, 0).astype(np.float64)  # (T, V, C)
    x[3, 4, 1] = value
    with pytest.raises(CrossclrError, match=r"clip: coordinate of magnitude .* beyond ±100000 "
                                            r"\(MAX_ABS_COORDINATE\)"):
        ntu.predict(x)
    with pytest.raises(CrossclrError, match=r"clip\[1\]: coordinate of magnitude"):
        ntu.predict([x * 0 + 1, x])
    prepared = ntu.prepare(x * 0 + 1)
    prepared[0, 0, 0, 0] = np.float32(value)
    with pytest.raises(CrossclrError, match="MAX_ABS_COORDINATE"):
        ntu.predict_prepared(prepared)


def test_a_2d_stream_score_beyond_the_bound_is_a_skipped_line(tmp_path) -> None:
    p = tmp_path / "coco.onnx"
    build_model(p, layout=COCO, frames=30, props={"preprocess": json.dumps({"mode": "pose2d", "frames": 30})})
    spec = FrameSpec.for_model(Predictor(p, ["cpu"]).info)
    lines = [json.dumps({"t": 0, "bodies": [{"joints": [[10.0, 20.0, 1e39]] * 17}]}),
             json.dumps({"t": 1, "bodies": [{"joints": [[10.0, 20.0, 0.9]] * 17}]})]
    stats = stream_mod.StreamStats()
    frames = list(read_frames(lines, spec, "coco", stats))
    assert [f.t for f in frames] == [1.0] and stats.malformed == 1


def test_a_replayed_file_beyond_the_bound_is_refused_and_nan_stays_a_missing_joint(ntu, tmp_path) -> None:
    x = np.transpose(raw_sequence(frames=5), (3, 1, 2, 0)).copy()  # (M, T, V, C)
    x[0, 1, 2] = np.nan  # a missing joint: replayed as null
    ok = tmp_path / "ok.npy"
    np.save(ok, x)
    frames = list(stream_mod.replay_frames(ok, ntu.info, wait=False))
    assert len(frames) == 5 and frames[1]["bodies"][0]["joints"][2] is None
    x[1, 3, 4, 0] = 1e30
    bad = tmp_path / "bad.npy"
    np.save(bad, x)
    with pytest.raises(CrossclrError, match=r"bad.npy: coordinate of magnitude 1e\+30 beyond"):
        list(stream_mod.replay_frames(bad, ntu.info, wait=False))
