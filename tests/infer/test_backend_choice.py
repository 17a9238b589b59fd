"""Backend choice and session safety that need no OpenVINO: the ``auto`` rule, ``--backend openvino`` without
the extra, non-finite model outputs, thread counts bounded by the machine (docs/reliability.md), the
precision check's figures against a numpy reference and its sidecar read defensively."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer import backends
from crossclr_infer import precision as checks
from crossclr_infer import precision_records as records
from crossclr_infer.errors import CrossclrError
from crossclr_infer.hardware import cpu_caps
from crossclr_infer.session import ModelSession
from tests.helpers import cli_error, run_cli

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.infer.test_session import build_model  # noqa: E402  (needs onnx)


def set_initializer(path: Path, name: str, value: np.ndarray) -> None:
    """Replace one weight of a saved model (keeps its metadata)."""
    from onnx import numpy_helper

    m = onnx.load(str(path))
    for i, init in enumerate(m.graph.initializer):
        if init.name == name:
            m.graph.initializer[i].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    onnx.save(m, str(path))


@pytest.mark.parametrize(("kwargs", "want"), [
    ({"transformer": True, "model_precision": "fp32", "providers_given": False, "precision": "auto",
      "openvino_ok": True}, "openvino"),
    ({"transformer": False, "model_precision": "fp32", "providers_given": False, "precision": "auto",
      "openvino_ok": True}, "onnxruntime"),  # ST-GCN: onnxruntime is the fastest
    ({"transformer": False, "model_precision": "fp32", "providers_given": False, "precision": "bf16",
      "openvino_ok": True}, "openvino"),  # bf16 asked for: only OpenVINO has it
    ({"transformer": True, "model_precision": "int8", "providers_given": False, "precision": "auto",
      "openvino_ok": True}, "onnxruntime"),
    ({"transformer": True, "model_precision": "fp32", "providers_given": True, "precision": "auto",
      "openvino_ok": True}, "onnxruntime"),  # --providers are onnxruntime's
    ({"transformer": True, "model_precision": "fp32", "providers_given": False, "precision": "auto",
      "openvino_ok": False}, "onnxruntime"),
])
def test_auto_backend_rule(kwargs, want) -> None:
    assert backends.choose_backend("auto", **kwargs) == want
    assert backends.choose_backend("onnxruntime", **kwargs) == "onnxruntime"


def test_transformer_is_read_from_either_config_form() -> None:
    assert backends.is_transformer({"model": {"graph": "transformer"}})
    assert backends.is_transformer({"graph": "transformer"})
    assert not backends.is_transformer({"model": {"graph": "spatial"}})
    assert not backends.is_transformer({})


def test_backend_openvino_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "m.onnx"
    build_model(path, props={"config": json.dumps({"model": {"graph": "transformer"}})})
    np.save(tmp_path / "x.npy", np.zeros((3, 50, 25, 2), np.float32))
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setattr(backends, "openvino_installed", lambda: False)
    line = cli_error(["predict", str(tmp_path / "x.npy"), "--preprocessed", "--model", str(path),
                      "--backend", "openvino"], capsys)
    assert "crossclr[openvino]" in line and "--backend openvino" in line
    s = ModelSession(path)  # auto: onnxruntime as before
    assert (s.backend, s.precision) == ("onnxruntime", "fp32")
    code, out, _ = run_cli(["predict", str(tmp_path / "x.npy"), "--preprocessed", "--model", str(path),
                            "--json"], capsys)
    assert code == 0 and json.loads(out)[0]["runtime"]["backend"] == "onnxruntime"


def test_providers_do_not_combine_with_backend_openvino(tmp_path) -> None:
    path = tmp_path / "m.onnx"
    build_model(path)
    with pytest.raises(CrossclrError, match="--providers cpu.*do not apply to --backend openvino"):
        ModelSession(path, ["cpu"], backend="openvino")
    with pytest.raises(CrossclrError, match="--backend 'tensorflow': expected one of auto, onnxruntime"):
        ModelSession(path, backend="tensorflow")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_logits_are_an_error_naming_the_model(tmp_path, capsys, bad) -> None:
    path = tmp_path / "broken.onnx"
    build_model(path, kind="ensemble", streams=("joint", "motion"))
    w = np.ones((3, 6), np.float32)
    w[1, 2] = bad
    set_initializer(path, "W_joint", w)
    sess = ModelSession(path, backend="onnxruntime")
    x = np.full((2, 3, 50, 25, 2), 0.5, np.float32)
    with pytest.raises(CrossclrError, match=r"broken\.onnx: model output 'logits' holds NaN or Inf"):
        sess.run(x)
    np.save(tmp_path / "x.npy", x[0])
    line = cli_error(["predict", str(tmp_path / "x.npy"), "--preprocessed", "--model", str(path), "--json"],
                     capsys)
    assert "broken.onnx" in line and "NaN or Inf" in line


def test_evaluate_of_a_nan_model_fails_instead_of_reporting(tmp_path, capsys) -> None:
    from crossclr_infer.synth import generate_synthetic

    data = generate_synthetic(tmp_path / "s.h5", classes=4, per_class=6, seed=0, frames=50)
    path = tmp_path / "nan.onnx"
    build_model(path, kind="stream", streams=("joint",), class_names=("a", "b", "c", "d"))
    set_initializer(path, "W_joint", np.full((3, 4), np.nan, np.float32))
    report = tmp_path / "r.json"
    line = cli_error(["evaluate", "--data", str(data), "--model", str(path), "--report", str(report),
                      "--no-progress", "--backend", "onnxruntime"], capsys)
    assert "nan.onnx" in line and "NaN or Inf" in line and not report.exists()


def test_thread_counts_are_clamped_to_the_machine(tmp_path, caplog) -> None:
    path = tmp_path / "m.onnx"
    build_model(path)
    cores = cpu_caps().cores
    with caplog.at_level(logging.WARNING):
        s = ModelSession(path, ["cpu"], intra_op_threads=100000, inter_op_threads=100000)
    assert s.plan.intra_op_threads == cores and s.plan.inter_op_threads == cores
    assert f"--threads 100000: this process may run on {cores} CPUs" in caplog.text
    s = ModelSession(path, ["cpu"], intra_op_threads=100000, use="throughput")
    assert s.plan.workers * s.plan.intra_op_threads <= cores


def test_compare_against_a_numpy_count() -> None:
    rng = np.random.default_rng(0)
    fp32 = {"logits": rng.standard_normal((200, 5)), "logits_joint": rng.standard_normal((200, 5))}
    low = {k: v.copy() for k, v in fp32.items()}
    low["logits_joint"][:3] = -low["logits_joint"][:3]  # flips the argmax of (almost surely) 3 samples
    labels = np.argmax(fp32["logits"], axis=1)
    labels[:50] = (labels[:50] + 1) % 5  # 150 / 200 correct at fp32
    flipped = int(np.sum(np.argmax(fp32["logits_joint"][:3], 1) != np.argmax(low["logits_joint"][:3], 1)))
    res = checks.compare(fp32, low, labels)
    assert res["agreement_pct"] == pytest.approx(100.0 * (200 - flipped) / 200)
    assert res["top1_fp32"] == pytest.approx(75.0) and res["drop_pt"] == pytest.approx(0.0)
    assert res["passed"] is (res["agreement_pct"] >= 99.5)
    res = checks.compare(fp32, fp32, labels, min_samples=201)
    assert not res["passed"]  # too few samples never pass
    nan = {k: np.full_like(v, np.nan) for k, v in fp32.items()}
    assert not checks.compare(fp32, nan, labels)["passed"]


@pytest.fixture(autouse=True)
def _no_remembered_checks(monkeypatch) -> None:
    monkeypatch.setattr(records, "_MEMORY", {})


@pytest.mark.parametrize(("content", "warns"), [
    ("not json", True), ("[" * 100000, True), (json.dumps({"format": "other", "checks": {}}), True),
    ("x" * (records.MAX_SIDECAR_BYTES + 1), True),
    (json.dumps({"format": records.CHECKS_FORMAT, "checks": {"k": {"passed": "yes"}}}), False),
])
def test_a_bad_sidecar_is_ignored(tmp_path, caplog, content, warns) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    records.sidecar_path(model).write_text(content)
    with caplog.at_level(logging.WARNING):
        assert records.lookup(model, "0" * 64, "openvino", "bf16", "v") is None
    assert ("ignoring the precision check record" in caplog.text) is warns


def test_a_record_under_a_key_it_does_not_match_is_not_trusted(tmp_path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    key = records.check_key("a" * 64, "openvino", "bf16", "v")
    rec = {"model_sha256": "b" * 64, "backend": "openvino", "precision": "bf16", "backend_version": "v",
           "cpu": records.cpu_key(), "passed": True}
    records.sidecar_path(model).write_text(json.dumps({"format": records.CHECKS_FORMAT,
                                                       "checks": {key: rec}}))
    assert records.lookup(model, "a" * 64, "openvino", "bf16", "v") is None
    rec["model_sha256"] = "a" * 64
    records.sidecar_path(model).write_text(json.dumps({"format": records.CHECKS_FORMAT,
                                                       "checks": {key: rec}}))
    assert records.lookup(model, "a" * 64, "openvino", "bf16", "v")["passed"] is True
    assert records.lookup(model, "a" * 64, "openvino", "bf16", "other version") is None
