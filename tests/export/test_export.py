"""Export round trips: every encoder variant and stream, the ensemble = fusion of the stream models,
parity failure leaves nothing behind, int8 quantization, and the CLI through a linear checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml  # noqa: E402
from crossclr_infer.metrics import fuse_logits, softmax  # noqa: E402
from crossclr_infer.session import ModelSession  # noqa: E402
from crossclr_infer.views import compute_view  # noqa: E402
from export.onnx_export import export_models  # noqa: E402
from training.encoders.config import EncoderConfig  # noqa: E402
from training.encoders.stgcn import STGCN  # noqa: E402

NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
CLASSES = ["c0", "c1", "c2", "c3"]
ALL_STREAMS = ("joint", "motion", "bone", "accel")


def tiny_parts(graph: str, streams=ALL_STREAMS, seed: int = 0):
    """Tiny encoders with randomized BN statistics (so eval-mode BN is not the identity) and heads."""
    torch.manual_seed(seed)
    cfg = EncoderConfig(graph=graph, base_channels=4, hidden_dim=8, feature_dim=4, stage_blocks=(1, 1, 1))
    encoders, heads = {}, {}
    for v in streams:
        enc = STGCN(NTU, cfg, num_person=2)
        for m in enc.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if graph == "adaptive":
            for blk in enc.st_gcn_networks:
                torch.nn.init.normal_(blk.gcn.B, std=0.1)
        encoders[v] = enc.eval()
        heads[v] = torch.nn.Linear(8, len(CLASSES)).eval()
    meta = {"layout": layout_to_toml(NTU), "class_names": CLASSES, "frames": 50, "num_person": 2,
            "fusion_weights": {"joint": 0.6, "motion": 0.4, "bone": 0.6, "accel": 0.3},
            "preprocess": {"mode": "official", "frames": 50}, "config": {"model": cfg.to_dict()}}
    return encoders, heads, meta


def torch_reference(enc, head, view: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The view computed by numpy (crossclr_infer.views), then the torch encoder and head."""
    xv = torch.from_numpy(np.ascontiguousarray(compute_view(x, view, NTU)))
    with torch.no_grad():
        f = enc.forward_features(xv)
        return head(f).numpy(), f.numpy()


@pytest.mark.parametrize("graph", ["spatial", "flow", "adaptive"])
def test_round_trip_of_each_stgcn_graph_and_stream(graph, tmp_path) -> None:
    encoders, heads, meta = tiny_parts(graph)
    out = tmp_path / "models"
    res = export_models(encoders, heads, meta, out, ensemble=False)
    assert sorted(res.files) == sorted(ALL_STREAMS)
    x = (0.5 * np.random.default_rng(7).standard_normal((5, 3, 50, 25, 2))).astype(np.float32)
    for v in ALL_STREAMS:
        s = ModelSession(out / f"{v}.onnx", ["cpu"])
        assert s.info.kind == "stream" and s.info.streams == (v,) and s.info.class_names == tuple(CLASSES)
        assert s.info.layout == NTU and s.info.config["model"]["graph"] == graph
        assert s._sess.get_inputs()[0].shape == ["batch", 3, 50, 25, 2]  # dynamic batch axis only
        got = s.run(x)
        want_logits, want_emb = torch_reference(encoders[v], heads[v], v, x)
        np.testing.assert_allclose(got["logits"], want_logits, atol=1e-4)
        np.testing.assert_allclose(got["embedding"], want_emb, atol=1e-4)
        assert res.parity[v]["max_abs_diff_logits"] <= 1e-4
    summary = json.loads((out / "export.json").read_text())
    assert set(summary["parity"]) == set(ALL_STREAMS)


def test_ensemble_is_the_fusion_of_the_stream_models(tmp_path) -> None:
    streams = ("joint", "motion", "bone")
    encoders, heads, meta = tiny_parts("spatial", streams)
    out = tmp_path / "m"
    export_models(encoders, heads, meta, out)
    ens = ModelSession(out / "ensemble.onnx", ["cpu"])
    assert ens.info.kind == "ensemble" and ens.info.streams == streams
    assert ens.info.fusion_weights == {"joint": 0.6, "motion": 0.4, "bone": 0.6}
    assert set(ens.output_names) == {"logits", "probabilities", "logits_joint", "logits_motion",
                                     "logits_bone",
                                     "embedding"}
    x = (0.5 * np.random.default_rng(3).standard_normal((4, 3, 50, 25, 2))).astype(np.float32)
    e = ens.run(x)
    per = {v: ModelSession(out / f"{v}.onnx", ["cpu"]).run(x) for v in streams}
    for v in streams:
        np.testing.assert_allclose(e[f"logits_{v}"], per[v]["logits"], atol=1e-5)
    fused = fuse_logits({v: per[v]["logits"] for v in streams}, ens.info.fusion_weights)
    np.testing.assert_allclose(e["logits"], fused, atol=1e-5)
    np.testing.assert_allclose(e["probabilities"], softmax(fused.astype(np.float64)), atol=1e-6)
    np.testing.assert_allclose(e["embedding"], np.mean([per[v]["embedding"] for v in streams], axis=0),
                               atol=1e-5)
    assert ens.run(x[:1])["logits"].shape == (1, 4)  # batch 1 works with the dynamic axis


def test_failed_parity_leaves_nothing_behind(tmp_path) -> None:
    encoders, heads, meta = tiny_parts("spatial", ("joint",))
    out = tmp_path / "models"
    with pytest.raises(CrossclrError, match="differs from torch beyond"):
        export_models(encoders, heads, meta, out, tolerance=-1.0)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_and_bad_streams(tmp_path) -> None:
    encoders, heads, meta = tiny_parts("spatial", ("joint",))
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CrossclrError, match="--overwrite"):
        export_models(encoders, heads, meta, out)
    with pytest.raises(CrossclrError, match="no encoder/head for stream 'bone'"):
        export_models(encoders, heads, meta, tmp_path / "n", streams=["bone"])
    res = export_models(encoders, heads, meta, out, overwrite=True, ensemble=False)
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "joint.onnx"] and res.out_dir == out
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_int8_quantization_and_real_input_parity(tiny_cache, tmp_path) -> None:
    encoders, heads, meta = tiny_parts("spatial", ("joint", "motion"))
    out = tmp_path / "q"
    res = export_models(encoders, heads, meta, out, data=tiny_cache, quantize="int8")
    assert "real" in res.parity["ensemble"]["per_input"]
    q = res.quantization["ensemble"]
    assert q["file"] == "ensemble.int8.onnx" and q["eval_samples"] > 0
    assert q["top1_change_pt"] == pytest.approx(q["top1_int8"] - q["top1_fp32"])
    s = ModelSession(out / "ensemble.int8.onnx", ["cpu"])
    assert s.info.kind == "ensemble"
    import onnx

    model = onnx.load(str(out / "ensemble.int8.onnx"))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in model.graph.node}
    assert {p.key: p.value for p in model.metadata_props}["quantization"] == "int8-static-qdq"


def test_cli_export_from_a_linear_checkpoint(tmp_path, capsys) -> None:
    import cli
    from training.protocols.io import save_linear

    encoders, heads, meta = tiny_parts("flow", ("joint", "bone"))
    ckpt = tmp_path / "linear.pt"
    save_linear(ckpt, encoders, heads, fusion="separate", fusion_weights={"joint": 0.6, "bone": 0.6},
                class_names=CLASSES, layout=NTU, meta=meta, metrics={})
    cli.main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "m"), "--streams", "bone"])
    out = capsys.readouterr().out
    assert "bone.onnx" in out and "ensemble.onnx" in out and "max |ORT - torch|" in out
    s = ModelSession(tmp_path / "m" / "ensemble.onnx", ["cpu"])
    assert s.info.streams == ("bone",)
    assert s.info.fusion == "separate"  # how the heads were trained travels with the model (reports use it)
    x = (0.5 * np.random.default_rng(0).standard_normal((2, 3, 50, 25, 2))).astype(np.float32)
    want, _ = torch_reference(encoders["bone"], heads["bone"], "bone", x)
    np.testing.assert_allclose(s.run(x)["logits_bone"], want, atol=1e-4)
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "x")])
    assert e.value.code != 0 and len(capsys.readouterr().err.strip().splitlines()) == 1
