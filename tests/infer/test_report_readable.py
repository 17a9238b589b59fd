"""Evaluation a person can read: one-body caches padded as Predictor pads them,
per-sample predictions that add up to the report, --errors, confusion figures that say what they show,
per-stream rows of jointly trained heads kept out of the headline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.cache import CacheWriter, open_cache
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import BUILTIN_LAYOUTS
from crossclr_infer.metrics import FUSED, softmax
from crossclr_infer.report import (
    Shard,
    check_report,
    evaluate,
    fit_bodies,
    load_models,
    merge_reports,
    run_models,
    summary_markdown,
)
from crossclr_infer.report_plots import confusion_plot, png_metadata
from crossclr_infer.report_samples import errors_markdown, worst_errors
from tests.infer.test_session import build_model, reference_logits

pytest.importorskip("onnxruntime")
NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
SIX = ("a", "b", "c", "d", "e", "f")
STREAMS = ("joint", "motion", "bone")
FUSION = {"joint": 0.6, "motion": 0.4, "bone": 0.6}


def write_cache(path: Path, samples: list[tuple[np.ndarray, int]], classes=SIX, num_person: int = 2) -> Path:
    with CacheWriter(path, layout=NTU, class_names=classes, benchmark="test", frames=50,
                     num_person=num_person, preprocess={"mode": "official", "frames": 50}) as w:
        for i, (x, y) in enumerate(samples):
            w.add("val", x, int(y), f"S001C001P001R001A{i + 1:03d}", 50)
    return path


def random_samples(n: int, k: int, m: int = 2, seed: int = 0, labels=None) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    ys = labels if labels is not None else rng.integers(0, k, n)
    return [(rng.standard_normal((3, 50, 25, m)).astype(np.float32), int(y)) for y in ys]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("readable")
    cache = write_cache(d / "c.h5", random_samples(31, len(SIX)))
    ens = d / "ensemble.onnx"
    w = build_model(ens, streams=STREAMS, class_names=SIX, fusion=FUSION)
    return {"dir": d, "cache": cache, "ensemble": ens, "w": w}


def per_class_from_samples(s: dict, k: int) -> list[float | None]:
    out: list[float | None] = []
    for c in range(k):
        rows = [p == y for y, p in zip(s["label"], s["predicted"], strict=True) if y == c]
        out.append(100.0 * (sum(rows) / len(rows)) if rows else None)  # percent of the recall, as reported
    return out


# ------------------------------------------------------------------------- 8: M = 1 caches, M = 2 models


def test_one_body_cache_on_a_two_body_model_equals_predictor(tmp_path) -> None:
    from crossclr_infer.predictor import Predictor

    model = tmp_path / "m.onnx"
    build_model(model, streams=STREAMS, class_names=SIX, fusion=FUSION)  # M = 2
    pred = Predictor(model, ["cpu"], threads=1)
    rng = np.random.default_rng(5)
    clips = [rng.uniform(-0.5, 0.5, (40, 25, 3)).astype(np.float32) for _ in range(7)]  # (T, V, C), 1 body
    prepared = [pred.prepare(c) for c in clips]  # (C, T, V, 2): Predictor pads the second body with zeros
    assert all(p.shape[-1] == 2 and not p[..., 1].any() for p in prepared)
    cache = write_cache(tmp_path / "one.h5", [(p[..., :1], i % 6) for i, p in enumerate(prepared)],
                        num_person=1)
    models = load_models([model], ["cpu"])
    rep = evaluate(cache, models, progress=False)
    results = [pred.predict(c) for c in clips]
    s = rep["samples"]
    assert s["predicted"] == [r.label for r in results]
    assert s["probability"] == pytest.approx([r.probability for r in results], abs=1e-4)
    for v in STREAMS:
        assert s["streams"][v] == [r.streams[v][0].index for r in results]
    with open_cache(cache) as c:  # the full probability vectors, not only the top-1
        x = fit_bodies(c.split("val").read(np.arange(7)), models.info)
    assert x.shape[-1] == 2 and not x[..., 1].any()
    probs = softmax(run_models(models, x, "test")[FUSED].astype(np.float64))
    np.testing.assert_allclose(probs, np.stack([r.probabilities for r in results]), atol=1e-6)


def test_more_bodies_than_the_model_takes_is_refused(tmp_path, capsys) -> None:
    import cli

    model = tmp_path / "m.onnx"
    build_model(model, streams=STREAMS, class_names=SIX, fusion=FUSION)
    cache = write_cache(tmp_path / "three.h5", random_samples(3, 6, m=3), num_person=3)
    with pytest.raises(CrossclrError, match=r"three\.h5: cache samples hold M = 3 bodies, the model takes at "
                                            r"most 2"):
        evaluate(cache, load_models([model], ["cpu"]), progress=False)
    with pytest.raises(SystemExit):
        cli.main(["evaluate", "--data", str(cache), "--model", str(model), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "M = 3 bodies" in err


# ----------------------------------------------------------------------- 9: per-sample predictions


def test_per_sample_records_add_up_to_the_report(env) -> None:
    rep = evaluate(env["cache"], load_models([env["ensemble"]], ["cpu"]), batch_size=4, progress=False)
    s, n, k = rep["samples"], rep["num_samples"], len(SIX)
    with open_cache(env["cache"]) as c:
        sp = c.split("val")
        x, y, names = sp.read(np.arange(n)), np.asarray(sp.labels), sp.names
    assert s["name"] == names and s["label"] == y.tolist()
    hits = sum(p == t for p, t in zip(s["predicted"], s["label"], strict=True))
    assert hits == rep["results"][FUSED]["correct_top1"]
    assert 100.0 * hits / n == rep["results"][FUSED]["top1"]  # exactly the headline number
    assert per_class_from_samples(s, k) == rep["results"][FUSED]["per_class_accuracy"]
    for v in STREAMS:
        assert sum(p == t for p, t in zip(s["streams"][v], s["label"], strict=True)) == \
            rep["results"][v]["correct_top1"]
    ref = reference_logits(x, env["w"])  # independent numpy: the tiny model's logits
    fused = sum(FUSION[v] * ref[v] for v in STREAMS)
    assert s["predicted"] == np.argmax(fused, axis=1).tolist()
    e = np.exp(fused - fused.max(axis=1, keepdims=True))
    assert s["probability"] == pytest.approx((e.max(axis=1) / e.sum(axis=1)).tolist(), abs=1e-4)
    json.dumps(rep, allow_nan=False)  # valid JSON


def test_shard_samples_merge_in_split_order_and_old_reports_still_merge(env) -> None:
    models = load_models([env["ensemble"]], ["cpu"])
    whole = evaluate(env["cache"], models, progress=False)
    parts = [evaluate(env["cache"], models, shard=Shard(i, 3), progress=False) for i in range(3)]
    merged = merge_reports([parts[2], parts[0], parts[1]])
    assert merged["samples"] == whole["samples"] and merged["format"] == whole["format"]
    old = json.loads(json.dumps(parts[1]))  # a v1 report: neither samples nor fusion
    old["format"] = "crossclr-eval-report-v1"
    del old["samples"], old["fusion"]
    check_report(old, "old.json")
    mixed = merge_reports([parts[0], old, parts[2]])
    assert mixed["samples"] is None and mixed["results"] == whole["results"]
    assert "older crossclr" in errors_markdown(mixed, 3)


def test_samples_that_do_not_add_up_are_refused(env) -> None:
    rep = evaluate(env["cache"], load_models([env["ensemble"]], ["cpu"]), progress=False)
    bad = json.loads(json.dumps(rep))
    bad["samples"]["predicted"][0] = (bad["samples"]["predicted"][0] + 1) % len(SIX)
    with pytest.raises(CrossclrError, match=r"samples\.predicted' disagrees with results\.fused\.confusion"):
        check_report(bad, "r.json")
    bad = json.loads(json.dumps(rep))
    bad["samples"]["probability"][0] = 1.5
    with pytest.raises(CrossclrError, match=r"r\.json: field 'samples\.probability'"):
        check_report(bad, "r.json")
    bad = json.loads(json.dumps(rep))
    bad["samples"]["streams"]["bone"] = bad["samples"]["streams"]["bone"][:-1]
    with pytest.raises(CrossclrError, match=r"samples\.streams\.bone"):
        check_report(bad, "r.json")


def test_errors_lists_the_most_confident_mistakes(env, capsys) -> None:
    import cli

    rep = evaluate(env["cache"], load_models([env["ensemble"]], ["cpu"]), progress=False)
    s = rep["samples"]
    wrong = [(-p, i) for i, (p, y, q) in enumerate(zip(s["probability"], s["label"], s["predicted"],
                                                       strict=True)) if y != q]
    want = [s["name"][i] for _, i in sorted(wrong)[:4]]  # independent: sort by (-probability, index)
    assert [e["name"] for e in worst_errors(rep, 4)] == want
    assert all(e["true"] != e["predicted"] for e in worst_errors(rep, 4))
    cli.main(["evaluate", "--data", str(env["cache"]), "--model", str(env["ensemble"]), "--no-progress",
              "--providers", "cpu", "--errors", "4"])
    out = capsys.readouterr().out
    assert f"worst 4 of {len(wrong)} mistakes" in out
    rows = [line for line in out.splitlines() if line.startswith("| S001")]
    assert [r.split(" | ")[0][2:] for r in rows] == want
    first = worst_errors(rep, 1)[0]
    assert f"| {first['name']} | {first['true']} | {first['predicted']} | " \
           f"{100 * first['probability']:.1f} % |" in out


# ------------------------------------------------------------------------------------------ 10: plots


def test_shard_figure_says_shard_counts_and_greys_absent_classes(tmp_path) -> None:
    labels = [0, 1, 2, 0, 1, 2, 3, 4, 5, 3, 4, 5]  # shard 0/2 holds classes 0-2 only
    cache = write_cache(tmp_path / "c.h5", random_samples(12, 6, labels=labels))
    model = tmp_path / "m.onnx"
    build_model(model, streams=STREAMS, class_names=SIX, fusion=FUSION)
    rep = evaluate(cache, load_models([model], ["cpu"]), shard=Shard(0, 2), progress=False)
    plot = confusion_plot(rep, FUSED)
    assert "val split, shard 0/2 (this shard only)" in plot.title
    assert "top-5" in plot.title  # 6 classes: top-5 says something
    assert "each row normalised" in plot.normalisation and "numbers: counts" in plot.normalisation
    assert plot.greyed_rows == (3, 4, 5) and np.isnan(plot.fractions[3:]).all()
    cm = np.asarray(rep["results"][FUSED]["confusion"])
    assert plot.cell_texts == tuple(tuple(str(c) if c else "" for c in row) for row in cm.tolist())
    np.testing.assert_allclose(plot.fractions[:3], cm[:3] / cm[:3].sum(axis=1, keepdims=True))


def test_written_pngs_carry_what_they_show(env, tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from PIL import Image

    import cli

    base = ["evaluate", "--data", str(env["cache"]), "--model", str(env["ensemble"]), "--no-progress",
            "--providers", "cpu"]
    for i in range(2):
        cli.main([*base, "--shard", f"{i}/2", "--report", str(tmp_path / f"s{i}.json"), "--plots",
                  str(tmp_path / f"p{i}")])
    cli.main(["merge-reports", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out",
              str(tmp_path / "m.json"), "--plots", str(tmp_path / "pm"), "--errors", "2"])
    assert "worst 2 of" in capsys.readouterr().out
    merged = json.loads((tmp_path / "m.json").read_text())
    for name in (*STREAMS, FUSED):
        meta = Image.open(tmp_path / "pm" / f"confusion_{name}.png").text
        want = png_metadata(confusion_plot(merged, name))
        assert {key: meta.get(key) for key in want} == want
        assert "val split" in meta["Title"] and "shard" not in meta["Title"]
        assert json.loads(meta["Cell counts"]) == merged["results"][name]["confusion"]
    shard_meta = Image.open(tmp_path / "p1" / "confusion_fused.png").text
    assert "shard 1/2 (this shard only)" in shard_meta["Title"]


def test_top5_only_when_fewer_than_five_is_not_all(tmp_path) -> None:
    four = ("a", "b", "c", "d")
    cache = write_cache(tmp_path / "c.h5", random_samples(9, 4), classes=four)
    model = tmp_path / "m.onnx"
    build_model(model, streams=STREAMS, class_names=four, fusion=FUSION)
    rep = evaluate(cache, load_models([model], ["cpu"]), progress=False)
    md = summary_markdown(rep)
    assert "top-5" not in md and "| stream | top-1 (%) |" in md
    assert "top-5" not in confusion_plot(rep, FUSED).title


# ----------------------------------------------------------------------- 11: jointly trained heads


@pytest.mark.parametrize("props,fusion", [({"fusion": "joint"}, FUSION), ({}, {v: 1 / 3 for v in STREAMS})])
def test_streams_of_joint_fusion_are_labelled_and_kept_out_of_the_headline(env, tmp_path, props,
                                                                           fusion) -> None:
    model = tmp_path / "joint.onnx"
    build_model(model, streams=STREAMS, class_names=SIX, fusion=fusion, props=props)
    rep = evaluate(env["cache"], load_models([model], ["cpu"]), progress=False)
    assert rep["fusion"] == "joint"
    md = summary_markdown(rep)
    headline = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0] for line in headline[1:]] == ["| fused"]
    assert "not trained alone" in md
    for v in STREAMS:
        assert f"{v} {rep['results'][v]['top1']:.2f} %" in md
    from crossclr_infer.report import stream_notes

    titles = {n: confusion_plot(rep, n, note=stream_notes(rep).get(n, "")).title for n in rep["results"]}
    assert all("(not trained alone)" in titles[v] for v in STREAMS)
    assert "not trained alone" not in titles[FUSED]


def test_separately_trained_streams_stay_in_the_headline(env, tmp_path) -> None:
    model = tmp_path / "sep.onnx"
    build_model(model, streams=STREAMS, class_names=SIX, fusion=FUSION, props={"fusion": "separate"})
    rep = evaluate(env["cache"], load_models([model], ["cpu"]), progress=False)
    assert rep["fusion"] == "separate"
    md = summary_markdown(rep)
    assert "not trained alone" not in md and "| stream | top-1 (%) | top-5 (%) |" in md  # 6 classes
    assert all(f"| {v} |" in md for v in (*STREAMS, FUSED))
    unknown = evaluate(env["cache"], load_models([env["ensemble"]], ["cpu"]), progress=False)
    assert unknown["fusion"] is None and "not trained alone" not in summary_markdown(unknown)


@pytest.mark.parametrize("command", ["evaluate", "merge-reports"])
def test_negative_errors_count_is_one_line(env, tmp_path, capsys, command) -> None:
    import cli

    args = (["evaluate", "--data", str(env["cache"]), "--model", str(env["ensemble"]), "--no-progress"]
            if command == "evaluate" else ["merge-reports", str(tmp_path / "a.json"), "--out",
                                           str(tmp_path / "m.json")])
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--errors", "-1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code != 0 and len(err.splitlines()) == 1 and "--errors must be >= 0" in err
