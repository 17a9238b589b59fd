"""Stream defaults of the application developer's path: `run()` over frames in memory is
lossless, partial windows below `min_fill` are not predicted and every window says how full it was, the
optional smoothing equals an independent numpy EMA and its hysteresis ignores single-window spikes,
stream results carry the whole prediction, and `--emit-frames` runs without a model."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

import crossclr_infer.stream as stream_mod
from crossclr_infer.errors import CrossclrError
from crossclr_infer.results import Prediction
from crossclr_infer.stream import Smoother, StreamPredictor
from tests.helpers import cli_error, run_cli
from tests.infer import test_stream as base
from tests.infer.test_predict import raw_sequence
from tests.infer.test_stream import CLASSES, STREAMS, frames_of

pytest.importorskip("onnxruntime")
ntu_path, coco_path, ntu = base.ntu_path, base.coco_path, base.ntu  # the module-scoped model fixtures


# ------------------------------------------------------------------------------------ item 4: lossless
@pytest.mark.parametrize("container", [list, tuple, iter])
def test_run_over_frames_in_memory_predicts_every_window(ntu, container) -> None:
    frames = frames_of(raw_sequence(frames=200, seed=21))
    sp = StreamPredictor(ntu, hop=10)
    got = []
    for p in sp.run(container(frames)):  # the README's loop, with a consumer slower than the reader
        time.sleep(0.01)
        got.append(p.window)
    assert got == list(range(16))  # windows ending at frames 50, 60, ..., 200: none dropped
    assert sp.stats.dropped == 0 and sp.stats.windows == 16


def test_live_and_lossless_spellings(ntu) -> None:
    frames = frames_of(raw_sequence(frames=60, seed=22))
    with pytest.raises(CrossclrError, match="not both"):
        list(StreamPredictor(ntu).run(frames, live=True, lossless=True))
    assert [p.window for p in StreamPredictor(ntu, hop=10).run(frames, lossless=False)] == [0, 1]


@pytest.mark.parametrize(("args", "stdin", "live"), [([], True, False), (["--live"], True, True),
                                                     (["--drop-late"], True, True), ([], False, False),
                                                     (["--lossless"], False, False)])
def test_cli_stream_is_lossless_unless_the_source_is_marked_live(ntu_path, tmp_path, capsys, monkeypatch,
                                                                 args, stdin, live) -> None:
    seen = []
    real = StreamPredictor.run

    def spy(self, frames, **kwargs):
        seen.append(kwargs["live"])
        return real(self, frames, **kwargs)

    monkeypatch.setattr(StreamPredictor, "run", spy)
    src = tmp_path / "frames.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in frames_of(raw_sequence(frames=55, seed=23))))
    if stdin:
        import io
        import sys

        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(src.read_bytes())))
    code, out, _ = run_cli(["predict", "--stream", *([] if stdin else [str(src)]), "--model",
                            str(ntu_path), *args], capsys)
    assert code == 0 and seen == [live] and len(out.splitlines()) == 2  # frames 50 and 55


def test_cli_replay_is_live_only_when_paced(ntu_path, tmp_path, capsys, monkeypatch) -> None:
    seen = []
    real = StreamPredictor.run
    monkeypatch.setattr(StreamPredictor, "run",
                        lambda self, frames, **kw: seen.append(kw["live"]) or real(self, frames, **kw))
    clip = tmp_path / "clip.npy"
    np.save(clip, np.transpose(raw_sequence(frames=52, seed=24), (3, 1, 2, 0)))  # (M, T, V, C)
    for args in (["--no-wait"], ["--fps", "1000"], ["--fps", "1000", "--lossless"]):
        code, _, _ = run_cli(["predict", "--replay", str(clip), "--model", str(ntu_path), *args], capsys)
        assert code == 0
    assert seen == [False, True, False]


# ------------------------------------------------------------------------------- item 5: partial windows
def test_a_three_frame_tail_is_predicted_only_when_asked(ntu) -> None:
    frames = frames_of(raw_sequence(frames=3, seed=25))
    sp = StreamPredictor(ntu)
    assert list(sp.run(frames)) == [] and sp.stats.short == 1
    assert "1 windows below --min-fill not predicted" in sp.stats.summary()
    [p] = list(StreamPredictor(ntu, min_fill=0).run(frames))
    assert p.partial and p.frames == 3 and p.fill == pytest.approx(3 / 50)
    assert p.to_dict()["fill"] == pytest.approx(0.06)


def test_every_window_says_how_full_it_was(ntu) -> None:
    x = raw_sequence(frames=80, seed=26)
    full = list(StreamPredictor(ntu, hop=25).run(frames_of(x)))  # frames 50, 75 and the end (80): all full
    assert [(p.fill, p.partial) for p in full] == [(1.0, False)] * 3
    tail = list(StreamPredictor(ntu, window=100, hop=25).run(frames_of(x)))  # never fills: 80 of 100
    assert [(p.fill, p.partial) for p in tail] == [(0.8, True)]
    span = list(StreamPredictor(ntu, span=4.0).run(frames_of(x)))  # 79 / 30 s covered of 4 s
    assert len(span) == 1 and span[0].fill == pytest.approx(79 / 30 / 4.0) and span[0].partial
    assert list(StreamPredictor(ntu, window=100, min_fill=0.81).run(frames_of(x))) == []
    with pytest.raises(CrossclrError, match="--min-fill must be from 0 to 1"):
        StreamPredictor(ntu, min_fill=1.5)


# ------------------------------------------------------------------------------------ results (item 3)
def test_stream_results_carry_the_whole_prediction(ntu) -> None:
    x = raw_sequence(frames=50, seed=27)
    [p] = list(StreamPredictor(ntu, top_k=3).run(frames_of(x)))
    want = ntu.predict(x, axes="CTVM", top_k=3)
    assert isinstance(p.prediction, Prediction) and p.top == want.top and p.streams == want.streams
    np.testing.assert_allclose(p.probabilities, want.probabilities, rtol=1e-6)
    assert p.probabilities.shape == (len(CLASSES),) and set(p.streams) == set(STREAMS)
    d = p.to_dict()
    assert d["top"] == [c.to_dict() for c in want.top] and set(d["streams"]) == set(STREAMS)
    assert "smoothed" not in d and "label" not in d  # only with smoothing
    json.dumps(d)


# -------------------------------------------------------------------------------------- item 6: smoothing
def ema_reference(probs: np.ndarray, alpha: float) -> np.ndarray:
    """EMA as explicit weights: s_n = (1 - a)^(n-1) p_1 + sum_{i=2..n} a (1 - a)^(n-i) p_i."""
    n = len(probs)
    out = np.zeros_like(probs)
    for k in range(n):
        w = np.array([(1 - alpha) ** k if i == 0 else alpha * (1 - alpha) ** (k - i) for i in range(k + 1)])
        out[k] = w @ probs[: k + 1]  # (k+1,) @ (k+1, K) -> (K,)
    return out


def test_the_smoother_equals_a_numpy_ema_and_marks_its_warm_up() -> None:
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(6), size=12)  # (12, 6), each row sums to 1
    for alpha in (0.3, 0.5, 1.0):
        sm = Smoother(alpha)
        steps = [sm.update(p) for p in probs]
        np.testing.assert_allclose([s.probabilities for s in steps], ema_reference(probs, alpha), rtol=1e-12)
        warm = [s.warming_up for s in steps]
        assert warm == [k + 1 < 1 / alpha for k in range(12)]  # 0.3: 3 windows, 0.5: 1, 1.0: none
    sm.reset()
    np.testing.assert_allclose(sm.update(probs[5]).probabilities, probs[5])  # starts over from one window
    for bad in ({"alpha": 0}, {"alpha": 1.5}, {"alpha": 0.5, "margin": -0.1}, {"alpha": 0.5, "hold": 0}):
        with pytest.raises(CrossclrError, match="--smooth"):
            Smoother(**bad)


def test_the_label_does_not_flip_on_a_single_window_spike() -> None:
    a, b = np.array([0.8, 0.1, 0.1]), np.array([0.05, 0.9, 0.05])
    flicker = [a, a, a, b, a, a, b, a, a]  # single-window spikes of class 1
    sm = Smoother(0.6, margin=0.1, hold=2)
    labels = [sm.update(p).label for p in flicker]
    s = ema_reference(np.array(flicker), 0.6)
    assert (s.argmax(axis=1) == 1).any()  # the smoothed top-1 itself flickers to 1 ...
    assert labels == [0] * len(flicker)  # ... the held label does not
    switch = [a, a, b, b, b, b]
    sm = Smoother(0.6, margin=0.1, hold=2)
    labels = [sm.update(p).label for p in switch]
    s = ema_reference(np.array(switch), 0.6)
    lead = s[:, 1] - s[:, 0] >= 0.1  # (6,) the new class leads by the margin
    first = next(i for i in range(1, 6) if lead[i] and lead[i - 1])  # the second window in a row
    assert labels == [0] * first + [1] * (6 - first) and first == 3
    sm = Smoother(1.0, margin=0.0, hold=1)  # no smoothing, no hysteresis: the raw top-1
    assert [sm.update(p).label for p in [a, b, a]] == [0, 1, 0]


def test_smoothed_stream_results_and_a_gap_restarts_the_smoothing(ntu) -> None:
    x = raw_sequence(frames=120, seed=28)
    frames = frames_of(x)
    for f in frames[60:]:
        f["t"] += 5.0  # a 5 s gap after frame 59: the window and the smoothing restart
    raw = list(StreamPredictor(ntu, hop=10).run(frames))
    sm = list(StreamPredictor(ntu, hop=10, smooth=0.5).run(frames))
    assert [p.window for p in sm] == [p.window for p in raw] and len(sm) == 4  # 50, 60 | 110, 120
    assert [p.top for p in sm] == [p.top for p in raw]  # the raw top-k is kept beside the smoothed one
    probs = np.array([p.probabilities for p in raw])  # (4, K)
    want = np.concatenate([ema_reference(probs[:2], 0.5), ema_reference(probs[2:], 0.5)])
    for p, w in zip(sm, want, strict=True):
        idx = [c.index for c in p.smoothed]
        assert idx == list(np.argsort(-w, kind="stable")[:5])  # the top-5 of the reference EMA
        np.testing.assert_allclose([c.probability for c in p.smoothed], w[idx], rtol=1e-6)
    assert [p.warming_up for p in sm] == [True, False, True, False]
    d = sm[0].to_dict()
    assert d["label"]["class"] == d["smoothed"][0]["class"] and d["warming_up"] is True


def test_cli_smooth_adds_the_smoothed_record(ntu_path, tmp_path, capsys) -> None:
    src = tmp_path / "frames.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in frames_of(raw_sequence(frames=70, seed=29))))
    code, out, _ = run_cli(["predict", "--stream", str(src), "--model", str(ntu_path), "--hop", "10",
                            "--smooth", "0.4", "--smooth-margin", "0.05", "--smooth-hold", "3"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 3
    assert all({"smoothed", "label", "warming_up", "fill", "streams", "top"} <= set(r) for r in rows)
    assert [r["warming_up"] for r in rows] == [True, True, False]  # windows 1, 2 < 1 / 0.4
    assert "--smooth must be from" in cli_error(["predict", "--stream", str(src), "--model", str(ntu_path),
                                                 "--smooth", "0"], capsys)
    assert "--min-fill must be from" in cli_error(["predict", "--stream", str(src), "--model", str(ntu_path),
                                                   "--min-fill", "2"], capsys)


# ------------------------------------------------------------------- --emit-frames runs without a model
def test_emit_frames_needs_no_model(ntu_path, coco_path, tmp_path, capsys) -> None:
    x = raw_sequence(frames=12, seed=30)
    x[1, 4, 3, 0] = np.nan
    clip = tmp_path / "clip.npy"
    np.save(clip, np.transpose(x, (3, 1, 2, 0)))  # (M, T, V, C)
    args = ["predict", "--replay", str(clip), "--emit-frames", "--no-wait"]
    code, without, _ = run_cli(args, capsys)
    assert code == 0
    code, with_model, _ = run_cli([*args, "--model", str(ntu_path)], capsys)
    assert code == 0 and without == with_model and len(without.splitlines()) == 12
    assert json.loads(without.splitlines()[4])["bodies"][0]["joints"][3] is None
    from crossclr_infer.synth import synthesize_raw

    c = synthesize_raw(2, 1, seed=3, layout="coco-17")[0][0][:, :10]  # (3, T, 17, M): u, v, score
    np.save(tmp_path / "coco.npy", c)
    coco = ["predict", "--replay", str(tmp_path / "coco.npy"), "--emit-frames", "--no-wait", "--axes", "CTVM"]
    code, by_layout, _ = run_cli([*coco, "--layout", "coco-17"], capsys)
    code2, by_model, _ = run_cli([*coco, "--model", str(coco_path)], capsys)
    assert code == code2 == 0 and by_layout == by_model
    assert "--layout applies to --replay --emit-frames without --model" in cli_error(
        [*coco, "--layout", "coco-17", "--model", str(coco_path)], capsys)
    assert "unknown layout 'nope'" in cli_error([*coco, "--layout", "nope"], capsys)
    assert "--model is required to classify" in cli_error(["predict", "--replay", str(clip)], capsys)
    assert "--model is required to classify" in cli_error(["predict", "--stream"], capsys)
    assert "Missing option '--model'" in cli_error(["predict", str(clip)], capsys)  # plain predict: as before
    assert stream_mod.FrameSpec.for_layout("coco-17").scored
