"""The OpenVINO backend behind ModelSession (extra ``openvino``): the same metadata checks and outputs as
onnxruntime, the ``auto`` choice, hostile files, and bf16 only after a recorded passing check on real samples
(a trained tiny transformer passes; a model with near-tie logits fails and runs fp32)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import precision as checks
from crossclr_infer import precision_records as records
from crossclr_infer.errors import CrossclrError
from crossclr_infer.session import ModelSession
from tests.helpers import cli_error, run_cli

pytest.importorskip("openvino", reason="OpenVINO is not installed (extra 'openvino'): the OpenVINO backend "
                                       "tests need it")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crossclr_infer.backends import openvino_native_bf16  # noqa: E402
from tests.infer.test_backend_choice import set_initializer  # noqa: E402
from tests.infer.test_session import build_model, reference_logits  # noqa: E402

TRANSFORMER = {"config": json.dumps({"model": {"graph": "transformer"}})}
needs_bf16 = pytest.mark.skipif(not openvino_native_bf16(), reason="this CPU has no native bf16 for OpenVINO "
                                "(AVX512-BF16 or AMX, not capped by ONEDNN_MAX_CPU_ISA)")


@pytest.fixture(autouse=True)
def _no_remembered_checks(monkeypatch) -> None:
    monkeypatch.setattr(records, "_MEMORY", {})


@pytest.mark.parametrize("kind", ["ensemble", "stream"])
def test_openvino_reads_the_same_model_as_onnxruntime(tmp_path, kind) -> None:
    path = tmp_path / "m.onnx"
    streams = ("joint", "motion") if kind == "ensemble" else ("joint",)
    w = build_model(path, kind=kind, streams=streams)
    ort_s = ModelSession(path, backend="onnxruntime")
    ov_s = ModelSession(path, backend="openvino", precision="fp32")
    assert ov_s.info == ort_s.info and ov_s.output_names == ort_s.output_names
    assert (ov_s.backend, ov_s.precision, ort_s.backend) == ("openvino", "fp32", "onnxruntime")
    assert ov_s.backend_version and ov_s.providers == ["OpenVINO:CPU"]
    x = np.random.default_rng(0).standard_normal((5, 3, 50, 25, 2)).astype(np.float32)
    a, b = ort_s.run(x), ov_s.run(x)
    for name in a:
        np.testing.assert_allclose(b[name], a[name], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b["logits_joint" if kind == "ensemble" else "logits"],
                               reference_logits(x, w)["joint"], rtol=1e-4, atol=1e-5)
    with pytest.raises(CrossclrError, match="skeleton has 24 joints"):  # the same input checks
        ov_s.run(x[:, :, :, :24])


def test_auto_serves_transformers_with_openvino_and_the_rest_with_onnxruntime(tmp_path) -> None:
    """fp32: OpenVINO for a transformer graph without a fused attention op (plain MatMul/Softmax: faster
    there), onnxruntime for the rest; the fused-attention case is in the bf16 test below."""
    tr, gcn = tmp_path / "tr.onnx", tmp_path / "gcn.onnx"
    build_model(tr, props=TRANSFORMER)
    build_model(gcn)
    assert ModelSession(tr).backend == "openvino"
    assert ModelSession(gcn).backend == "onnxruntime"
    assert ModelSession(tr, ["cpu"]).backend == "onnxruntime"  # explicit providers are onnxruntime's
    assert ModelSession(tr, backend="onnxruntime").backend == "onnxruntime"
    assert ModelSession(gcn, backend="openvino").backend == "openvino"


@pytest.mark.parametrize("props", [{"crossclr_format": "other"}, {"class_names": "[]"},
                                   {"streams": json.dumps(["joint", "joint"])}])
def test_metadata_checks_are_the_same_under_openvino(tmp_path, props) -> None:
    path = tmp_path / "m.onnx"
    build_model(path, props=props)
    with pytest.raises(CrossclrError) as ort_e:
        ModelSession(path, backend="onnxruntime")
    with pytest.raises(CrossclrError) as ov_e:
        ModelSession(path, backend="openvino")
    assert str(ov_e.value) == str(ort_e.value)


def test_hostile_files_are_refused_in_one_line(tmp_path, capsys) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 50, 25, 2), np.float32))
    (tmp_path / "zero.onnx").write_bytes(b"")
    good = tmp_path / "good.onnx"
    build_model(good, kind="stream", streams=("joint",))
    (tmp_path / "cut.onnx").write_bytes(good.read_bytes()[:300])
    for name in ("zero.onnx", "cut.onnx"):
        line = cli_error(["predict", str(tmp_path / "x.npy"), "--preprocessed", "--model",
                          str(tmp_path / name), "--backend", "openvino"], capsys)
        assert name in line and "not a loadable ONNX model" in line
    # a tensor in an external file (here: a file of the working directory) is never read by OpenVINO
    ext = tmp_path / "ext.onnx"
    m = onnx.load(str(good))
    init = m.graph.initializer[0]
    init.ClearField("raw_data")
    init.ClearField("float_data")
    init.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "secret.bin"), ("offset", "0"), ("length", "72")):
        e = init.external_data.add()
        e.key, e.value = k, v
    ext.write_bytes(m.SerializeToString())
    with pytest.raises(CrossclrError, match="ext.onnx: the model keeps tensors in external files"):
        ModelSession(ext, backend="openvino")


def test_nan_weights_are_an_error_under_openvino(tmp_path) -> None:
    path = tmp_path / "nan.onnx"
    build_model(path, props=TRANSFORMER)
    set_initializer(path, "W_motion", np.full((3, 6), np.nan, np.float32))
    s = ModelSession(path)
    assert s.backend == "openvino"
    with pytest.raises(CrossclrError, match=r"nan\.onnx: model output 'logits' holds NaN or Inf"):
        s.run(np.ones((1, 3, 50, 25, 2), np.float32))


# ------------------------------------------------------------------------------------------- bf16 checks


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A trained tiny transformer (encoder and head trained together, 40 full-batch steps on the train split,
    one torch thread: seconds) exported as a stream model, and its cache (4 classes, 8 frames, 208 val
    samples: one disagreement still passes 99.5 %). A random encoder with a fitted head is not enough: its
    logits hang on feature differences below bf16's resolution (95 % agreement)."""
    torch = pytest.importorskip("torch")
    from crossclr_infer.cache import open_cache
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml
    from crossclr_infer.synth import generate_synthetic
    from export.onnx_export import export_models
    from training.encoders.config import EncoderConfig
    from training.encoders.transformer import SkeletonTransformer

    tmp = tmp_path_factory.mktemp("bf16")
    data = generate_synthetic(tmp / "s.h5", classes=4, per_class=130, seed=0, frames=8)
    with open_cache(data) as c:
        names = list(c.class_names)
        xt, yt = c.split("train").read_all(), np.asarray(c.split("train").labels)
        xv, yv = c.split("val").read_all(), np.asarray(c.split("val").labels)
    torch.manual_seed(0)
    ntu = BUILTIN_LAYOUTS["ntu-rgb+d"]
    cfg = EncoderConfig(graph="transformer", hidden_dim=16, depth=1, num_heads=2, mlp_ratio=2.0, t_patch=4,
                        projector="none")
    enc = SkeletonTransformer(ntu, cfg, num_person=2, frames=8)
    head = torch.nn.Linear(16, len(names))
    opt = torch.optim.Adam([*enc.parameters(), *head.parameters()], lr=1e-2)
    x, y = torch.from_numpy(xt), torch.from_numpy(yt).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 5x faster than 2 threads on a loaded 2-core machine
    try:
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(head(enc.forward_features(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    enc.eval()
    with torch.no_grad():
        acc = float((head(enc.forward_features(torch.from_numpy(xv))).argmax(1).numpy() == yv).mean())
    assert acc > 0.5, acc  # trained: well above the 25 % of chance
    meta = {"layout": layout_to_toml(ntu), "class_names": names, "frames": 8, "num_person": 2,
            "fusion_weights": {"joint": 1.0}, "preprocess": {"mode": "official", "frames": 8},
            "config": {"model": cfg.to_dict()}}
    res = export_models({"joint": enc}, {"joint": head.eval()}, meta, tmp / "m", ensemble=False)
    return res.out_dir / res.files["joint"], data


@needs_bf16
def test_bf16_serves_a_trained_model_only_after_its_check_passed(trained, tmp_path, capsys, caplog) -> None:
    import shutil

    src, data = trained
    model = tmp_path / "joint.onnx"
    shutil.copy(src, model)
    before = ModelSession(model)  # auto, unchecked: fp32, on onnxruntime (the export's fused attention)
    assert (before.backend, before.precision) == ("onnxruntime", "fp32")
    with caplog.at_level(logging.WARNING):
        explicit = ModelSession(model, precision="bf16")
    assert explicit.precision == "fp32" and "bf16 has not been checked" in caplog.text
    # evaluate runs the check the first time, records it beside the model and serves bf16
    code, out, err = run_cli(["evaluate", "--data", str(data), "--model", str(model), "--no-progress",
                              "--report", str(tmp_path / "r.json")], capsys)
    assert code == 0 and "bf16 check passed" in err, err
    rec = json.loads(records.sidecar_path(model).read_text())
    [(key, r)] = rec["checks"].items()
    assert r["passed"] and r["samples"] >= checks.MIN_CHECK_SAMPLES and r["agreement_pct"] >= 99.5
    assert r["drop_pt"] <= 0.3 and r["model_sha256"] == records.model_sha256(model) and key.startswith(
        r["model_sha256"] + "|openvino|bf16|")
    run = json.loads((tmp_path / "r.json").read_text())["run"]
    assert run["backends"][0]["backend"] == "openvino" and run["backends"][0]["precision"] == "bf16"
    records._MEMORY.clear()  # from the sidecar alone, as a later process would
    after = ModelSession(model)
    assert (after.backend, after.precision) == ("openvino", "bf16") and after.precision_check["passed"]
    x = np.random.default_rng(0).standard_normal((4, 3, 8, 25, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", x[0])
    code, out, _ = run_cli(["predict", str(tmp_path / "x.npy"), "--preprocessed", "--model", str(model),
                            "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["runtime"]["precision"] == "bf16"
    np.testing.assert_allclose(after.run(x)["logits"], before.run(x)["logits"], rtol=0.05, atol=0.05)
    assert ModelSession(model, precision="fp32").precision == "fp32"
    assert ModelSession(model, backend="onnxruntime").precision == "fp32"
    # another model file (one weight changed): the record does not apply
    m = onnx.load(str(model))
    m.graph.initializer[-1].raw_data = bytes(len(m.graph.initializer[-1].raw_data))
    onnx.save(m, str(model))
    assert ModelSession(model).precision == "fp32"


@needs_bf16
def test_a_failing_check_keeps_fp32(tmp_path, caplog) -> None:
    """Near-tie logits: the classes' weights differ by less than bf16 resolves, so bf16 changes the top-1
    class; the check fails, ``auto`` stays fp32 and an explicit bf16 warns and runs fp32."""
    from crossclr_infer.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "s.h5", classes=6, per_class=6, seed=0, frames=50)
    model = tmp_path / "tie.onnx"
    build_model(model, kind="stream", streams=("joint",), props=TRANSFORMER)
    base = np.random.default_rng(1).standard_normal((3, 1)).astype(np.float32)
    steps = np.random.default_rng(2).standard_normal((3, 6)).astype(np.float32) * 1e-4
    set_initializer(model, "W_joint", base + steps)
    rec = checks.run_check(model, data, "val", min_samples=10)
    assert not rec["passed"] and rec["agreement_pct"] < 99.5, rec
    assert records.sidecar_path(model).is_file()
    assert ModelSession(model).precision == "fp32"
    with caplog.at_level(logging.WARNING):
        s = ModelSession(model, precision="bf16")
    assert s.precision == "fp32" and "bf16 refused, its recorded check failed" in caplog.text
    # a threshold nobody can meet fails a model that passes otherwise
    rec = checks.run_check(model, data, "val", min_samples=10, min_agreement=100.1, record=False)
    assert not rec["passed"]


@needs_bf16
def test_check_runs_once_and_not_for_onnxruntime_models(trained, tmp_path, monkeypatch) -> None:
    import shutil

    src, data = trained
    model = tmp_path / "joint.onnx"
    shutil.copy(src, model)
    calls = []
    real = checks.run_check
    monkeypatch.setattr(checks, "run_check", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert checks.ensure_checked(model, data, "val") is not None
    assert checks.ensure_checked(model, data, "val") is None and len(calls) == 1  # recorded
    assert checks.ensure_checked(model, data, "val", backend="onnxruntime") is None
    assert checks.ensure_checked(model, data, "val", precision="fp32") is None


def test_no_native_bf16_means_fp32_and_no_check(tmp_path, monkeypatch, caplog) -> None:
    from crossclr_infer import backends

    model = tmp_path / "m.onnx"
    build_model(model, props=TRANSFORMER)
    monkeypatch.setattr(backends, "openvino_native_bf16", lambda: False)
    with caplog.at_level(logging.WARNING):
        s = ModelSession(model, precision="bf16")
    assert s.precision == "fp32" and "no native bf16" in caplog.text
    assert checks.ensure_checked(model, tmp_path / "unused.h5") is None


@needs_bf16
def test_export_offers_the_check(trained, tmp_path) -> None:
    import shutil

    src, data = trained
    out = tmp_path / "m"
    out.mkdir()
    shutil.copy(src, out / "joint.onnx")
    lines = checks.check_exported(out, {"joint": "joint.onnx"}, data)
    assert len(lines) == 1 and "joint.onnx" in lines[0] and "bf16 check passed" in lines[0]
    assert records.sidecar_path(out / "joint.onnx").is_file()


def test_predictor_and_stream_take_the_backend(tmp_path, capsys) -> None:
    from crossclr_infer.predictor import Predictor
    from tests.infer.test_predict import raw_sequence

    path = tmp_path / "tr.onnx"
    build_model(path, props=TRANSFORMER)
    x = raw_sequence(frames=60, seed=1)
    ov_p = Predictor(path, backend="openvino", precision="fp32")
    ort_p = Predictor(path, backend="onnxruntime")
    assert ov_p.backend["backend"] == "openvino" and ort_p.backend["backend"] == "onnxruntime"
    a, b = ov_p.predict(x, axes="CTVM", top_k=2), ort_p.predict(x, axes="CTVM", top_k=2)
    assert [c.index for c in a.top] == [c.index for c in b.top]
    assert a.probability == pytest.approx(b.probability, abs=1e-5)
    np.save(tmp_path / "clip.npy", x)
    code, out, _ = run_cli(["predict", "--replay", str(tmp_path / "clip.npy"), "--axes", "CTVM", "--no-wait",
                            "--model", str(path), "--backend", "openvino", "--precision", "fp32"], capsys)
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert code == 0 and lines and "top" in lines[-1]
