"""2-D pose-estimator skeletons end to end: synthetic COCO-17 keypoints -> prepare (pose2d) -> train (tiny
preset) -> linear -> export -> predict and stream, each stream prediction equal to `predict` on its frames."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.layouts import get_layout
from tests.helpers import run_cli

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
COCO = get_layout("coco-17")


def _ok(args: list[str], capsys) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out


@pytest.mark.slow
def test_coco17_trains_exports_and_streams(tmp_path: Path, capsys) -> None:
    from crossclr_infer.arrays import import_arrays
    from crossclr_infer.cache import open_cache
    from crossclr_infer.ntu import split_of
    from crossclr_infer.predictor import Predictor
    from crossclr_infer.synth import synth_class_names, synth_sample_name, synthesize_raw

    # the data a 2-D pose estimator would give: (u, v, score) per joint, undetected joints (0, 0, 0)
    seqs, meta = synthesize_raw(4, 12, seed=0, layout="coco-17")
    names = [synth_sample_name(meta, i) for i in range(len(seqs))]
    npz = tmp_path / "coco.npz"
    np.savez(npz, label=meta.label, name=np.array(names), class_names=np.array(synth_class_names(4)),
             split=np.array([split_of(n, "ntu60-xsub") for n in names]),
             **{f"data_{i}": s for i, s in enumerate(seqs)})
    cache = tmp_path / "coco.h5"
    assert import_arrays(npz, cache, layout="coco-17", preprocess="pose2d", frames=32, progress=False) == {
        "train": 28, "val": 20}  # what `crossclr prepare arrays --layout coco-17 --preprocess pose2d` runs
    with open_cache(cache) as c:
        assert c.layout == COCO and c.preprocess["mode"] == "pose2d" and c.sample_shape == (3, 32, 17, 2)

    run, models = tmp_path / "run", tmp_path / "models"
    _ok(["train", "--data", str(cache), "--config", "tiny", "--out", str(run), "--epochs", "2",
         "--cross-epoch", "1", "--batch-size", "8", "--device", "cpu", "--no-progress"], capsys)
    _ok(["linear", "--data", str(cache), "--checkpoint", str(run / "pretrain.pt"), "--out", str(run / "lin"),
         "--epochs", "2", "--device", "cpu"], capsys)
    _ok(["export", "--checkpoint", str(run / "lin" / "linear.pt"), "--out", str(models), "--data",
         str(cache)], capsys)
    model = models / "ensemble.onnx"
    predictor = Predictor(model, ["cpu"], threads=1)
    assert predictor.info.layout == COCO and predictor.info.preprocess["mode"] == "pose2d"

    # a held-out clip as (M, T, V, C) with NaN for undetected joints, as pose-estimator output often is
    x = synthesize_raw(4, 1, seed=99, layout="coco-17")[0][2][:, :70]  # (C, T, V, M)
    raw = np.transpose(x, (3, 1, 2, 0)).copy()  # (C, T, V, M) -> (M, T, V, C)
    raw[raw[..., 2] == 0] = np.nan
    raw[1, :, :, :] = np.where(np.isnan(raw[1]), 0, raw[1])  # absent second body: zeros, not NaN
    clip = tmp_path / "clip.npy"
    np.save(clip, raw)
    args = ["predict", "--replay", str(clip), "--model", str(model), "--no-wait", "--hop", "16", "--top-k",
            "3"]
    proc = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    preds = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [p["window"] for p in preds] == [0, 1, 2, 3]  # frames 32, 48, 64 and the end (70)
    for p in preds:
        a, b = round(p["t_start"] * 30), round(p["t_end"] * 30) + 1
        assert p["frames"] == b - a == 32
        assert p["top"] == predictor.predict(x[:, a:b], axes="CTVM", top_k=3).to_dict()["fused"]
    # the same clip through `crossclr predict` (the whole clip) agrees with the Python API
    whole = tmp_path / "whole.npy"
    np.save(whole, x)  # (C, T, V, M) with zeros for undetected joints
    out = json.loads(_ok(["predict", str(whole), "--model", str(model), "--json", "--top-k", "3"], capsys))
    assert out[0]["fused"] == predictor.predict(x, axes="CTVM", top_k=3).to_dict()["fused"]
