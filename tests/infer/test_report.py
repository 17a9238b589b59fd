"""evaluate / merge-reports: numbers equal an independent numpy computation; shards merge to the whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.cache import CacheWriter
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import BUILTIN_LAYOUTS
from crossclr_infer.metrics import confusion_matrix, fuse_logits, parse_weights, topk_accuracy
from crossclr_infer.report import Shard, evaluate, load_models, merge_reports, summary_markdown
from tests.infer.test_session import build_model, reference_logits

pytest.importorskip("onnxruntime")
NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
CLASSES = ("a", "b", "c", "d", "e", "f")
STREAMS = ("joint", "motion", "bone")
FUSION = {"joint": 0.6, "motion": 0.4, "bone": 0.6}


def write_cache(path: Path, n_val: int = 23, layout=NTU, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    with CacheWriter(path, layout=layout, class_names=CLASSES, benchmark="test", frames=50, num_person=2,
                     preprocess={"mode": "official", "frames": 50}) as w:
        for split, n in (("train", 4), ("val", n_val)):
            for i in range(n):
                x = rng.standard_normal((3, 50, layout.num_joints, 2)).astype(np.float32)
                w.add(split, x, int(rng.integers(0, len(CLASSES))), f"S001C001P001R001A{i + 1:03d}", 50)
    return path


def read_val(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return f["val/data"][()], f["val/label"][()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("report")
    cache = write_cache(d / "c.h5")
    ens = d / "ensemble.onnx"
    w = build_model(ens, streams=STREAMS, class_names=CLASSES, fusion=FUSION)
    singles = []
    for v in STREAMS:  # the same weights as the ensemble's streams (same seed and stream order)
        p = d / f"{v}.onnx"
        wv = build_model(p, kind="stream", streams=STREAMS, class_names=CLASSES, fusion=FUSION)
        build_model(p, kind="stream", streams=(v,), class_names=CLASSES, fusion=FUSION,
                    props={"streams": json.dumps([v])})
        singles.append(p)
        assert np.array_equal(wv[v], w[v])
    return {"dir": d, "cache": cache, "ensemble": ens, "singles": singles, "w": w}


def _stream_model_weights(setup) -> dict[str, np.ndarray]:
    # build_model(kind="stream", streams=(v,)) draws W for its only stream first: recompute them the same way
    from tests.infer.test_session import weights_for

    return {v: weights_for((v,), len(CLASSES))[v] for v in STREAMS}


def numpy_report_numbers(logits: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Independent reference: python sorting per sample, explicit loops."""
    top1 = top5 = 0
    cm = np.zeros((k, k), dtype=np.int64)
    for row, y in zip(logits, labels, strict=True):
        order = sorted(range(k), key=lambda j: (-row[j], j))
        top1 += order[0] == y
        top5 += y in order[:5]
        cm[y, order[0]] += 1
    per = [None if cm[i].sum() == 0 else 100.0 * cm[i, i] / cm[i].sum() for i in range(k)]
    n = len(labels)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "confusion": cm.tolist(),
            "per_class_accuracy": per}


def _check_result(res: dict, ref: dict) -> None:
    assert res["top1"] == pytest.approx(ref["top1"])
    assert res["top5"] == pytest.approx(ref["top5"])
    assert res["confusion"] == ref["confusion"]
    for a, b in zip(res["per_class_accuracy"], ref["per_class_accuracy"], strict=True):
        assert (a is None and b is None) or a == pytest.approx(b)


def test_evaluate_ensemble_equals_numpy(setup) -> None:
    x, y = read_val(setup["cache"])
    ref = reference_logits(x, setup["w"])
    fused = sum(FUSION[v] * ref[v] for v in STREAMS)
    rep = evaluate(setup["cache"], load_models([setup["ensemble"]], ["cpu"]), batch_size=5, progress=False)
    assert rep["num_samples"] == len(y) == 23 and rep["streams"] == list(STREAMS)
    for v in STREAMS:
        _check_result(rep["results"][v], numpy_report_numbers(ref[v], y, len(CLASSES)))
    _check_result(rep["results"]["fused"], numpy_report_numbers(fused, y, len(CLASSES)))
    assert rep["run"]["samples_per_s"] > 0
    md = summary_markdown(rep)
    assert f"| fused | {rep['results']['fused']['top1']:.2f} |" in md


def test_evaluate_separate_stream_models_with_weights(setup) -> None:
    x, y = read_val(setup["cache"])
    w = _stream_model_weights(setup)
    ref = reference_logits(x, w)
    weights = {"joint": 1.0, "motion": 0.25, "bone": 2.0}
    rep = evaluate(setup["cache"], load_models(setup["singles"], ["cpu"]), weights=weights, progress=False)
    fused = sum(weights[v] * ref[v] for v in STREAMS)
    _check_result(rep["results"]["fused"], numpy_report_numbers(fused, y, len(CLASSES)))
    assert rep["fusion_weights"] == weights
    rep2 = evaluate(setup["cache"], load_models(setup["singles"], ["cpu"]), progress=False)
    fused2 = sum(FUSION[v] * ref[v] for v in STREAMS)  # the models' metadata weights
    _check_result(rep2["results"]["fused"], numpy_report_numbers(fused2, y, len(CLASSES)))


def _strip_run(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "run"}


@pytest.mark.parametrize("n", [2, 3, 5])
def test_shards_merge_to_the_unsharded_report(setup, n) -> None:
    models = load_models([setup["ensemble"]], ["cpu"])
    whole = evaluate(setup["cache"], models, progress=False)
    parts = [evaluate(setup["cache"], models, shard=Shard(i, n), progress=False) for i in range(n)]
    assert sum(p["num_samples"] for p in parts) == whole["num_samples"]
    merged = merge_reports(list(reversed(parts)))
    assert json.dumps(_strip_run(merged), sort_keys=True) == json.dumps(_strip_run(whole), sort_keys=True)


def test_merge_rejects_incomplete_or_mixed_shards(setup) -> None:
    models = load_models([setup["ensemble"]], ["cpu"])
    parts = [evaluate(setup["cache"], models, shard=Shard(i, 3), progress=False) for i in range(3)]
    with pytest.raises(CrossclrError, match="exactly once"):
        merge_reports(parts[:2])
    with pytest.raises(CrossclrError, match="exactly once"):
        merge_reports([parts[0], parts[0], parts[2]])
    whole = evaluate(setup["cache"], models, progress=False)
    with pytest.raises(CrossclrError, match="not a shard"):
        merge_reports([whole])
    other = evaluate(setup["cache"], load_models(setup["singles"], ["cpu"]), shard=Shard(1, 3),
                     progress=False)
    with pytest.raises(CrossclrError, match="differ"):
        merge_reports([parts[0], other, parts[2]])


def test_shard_parse() -> None:
    assert Shard.parse("0/4") == Shard(0, 4)
    for bad in ("4/4", "-1/2", "a/b", "3", "1/0"):
        with pytest.raises(CrossclrError, match="--shard"):
            Shard.parse(bad)
    assert np.concatenate([Shard(i, 4).indices(10) for i in range(4)]).tolist() == list(range(10))


def test_cache_of_another_layout_is_rejected(setup, tmp_path) -> None:
    other = write_cache(tmp_path / "kinect.h5", n_val=3, layout=BUILTIN_LAYOUTS["kinect-v1"])
    with pytest.raises(CrossclrError, match="layout 'kinect-v1'"):
        evaluate(other, load_models([setup["ensemble"]], ["cpu"]), progress=False)


def test_models_that_do_not_fit_together(setup, tmp_path) -> None:
    with pytest.raises(CrossclrError, match="ensemble model cannot be combined"):
        load_models([setup["singles"][0], setup["ensemble"]], ["cpu"])
    with pytest.raises(CrossclrError, match="given twice"):
        load_models([setup["singles"][0], setup["singles"][0]], ["cpu"])
    with pytest.raises(CrossclrError, match="need one weight each"):
        evaluate(setup["cache"], load_models(setup["singles"], ["cpu"]), weights={"joint": 1.0},
                 progress=False)


# --------------------------------------------------------------------------------------------- metrics


def test_metrics_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((40, 7)).astype(np.float32)
    labels = rng.integers(0, 7, 40)
    for k in (1, 3, 5, 9):
        brute = np.mean([labels[i] in np.argsort(-logits[i])[:k] for i in range(40)])
        assert topk_accuracy(logits, labels, k) == pytest.approx(brute)
    pred = logits.argmax(1)
    cm = confusion_matrix(labels, pred, 7)
    for i in range(7):
        for j in range(7):
            assert cm[i, j] == np.sum((labels == i) & (pred == j))
    a, b = rng.standard_normal((2, 5, 3)).astype(np.float32)
    np.testing.assert_allclose(fuse_logits({"x": a, "y": b}, {"x": 0.6, "y": 0.4}), 0.6 * a + 0.4 * b,
                               atol=1e-6)
    assert parse_weights("joint=0.6, motion=0.4,bone=.6") == {"joint": 0.6, "motion": 0.4, "bone": 0.6}
    for bad in ("joint", "joint=x", "=1", ","):
        with pytest.raises(CrossclrError, match="--weights"):
            parse_weights(bad)


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_evaluate_shards_merge_and_plots(setup, tmp_path, capsys) -> None:
    import cli

    d = tmp_path
    base = ["evaluate", "--data", str(setup["cache"]), "--model", str(setup["ensemble"]), "--no-progress",
            "--providers", "cpu", "--batch-size", "4"]
    cli.main([*base, "--report", str(d / "whole.json"), "--plots", str(d / "plots")])
    out = capsys.readouterr().out
    assert "| fused |" in out and "samples/s" in out
    assert (d / "plots" / "confusion_fused.png").stat().st_size > 0
    for i in range(2):
        cli.main([*base, "--shard", f"{i}/2", "--report", str(d / f"s{i}.json")])
    cli.main(["merge-reports", str(d / "s1.json"), str(d / "s0.json"), "--out", str(d / "merged.json")])
    whole = json.loads((d / "whole.json").read_text())
    merged = json.loads((d / "merged.json").read_text())
    assert _strip_run(whole) == _strip_run(merged)
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("extra,match", [
    (["--shard", "2/2"], "--shard"),
    (["--weights", "joint=1"], "need one weight each"),
    (["--split", "test"], "test"),
    (["--batch-size", "0"], "batch-size"),
])
def test_cli_evaluate_bad_options_one_line(setup, capsys, extra, match) -> None:
    import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--data", str(setup["cache"]), "--model", str(setup["ensemble"]),
                  "--no-progress", *extra])
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_cli_evaluate_missing_cache_one_line(setup, tmp_path, capsys) -> None:
    import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["evaluate", "--data", str(tmp_path / "none.h5"), "--model", str(setup["ensemble"])])
    assert e.value.code != 0 and len(capsys.readouterr().err.strip().splitlines()) == 1
