"""The serving registry (export.serving): each encoder kind's serving form is chosen by its ``kind`` class
attribute, never by a name compared in export/; a kind with no registered form (a toy encoder defined here)
exports as it is through the public export_models path, passes parity, quantizes statically, and opens and
predicts in crossclr_infer's ModelSession; a registered form decides the int8 recipe."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from crossclr_infer.cache import open_cache  # noqa: E402
from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml  # noqa: E402
from crossclr_infer.session import ModelSession  # noqa: E402
from export import serving  # noqa: E402
from export.config import ExportConfig  # noqa: E402
from export.onnx_export import export_models  # noqa: E402
from training.encoders.config import EncoderConfig  # noqa: E402
from training.encoders.stgcn import STGCN  # noqa: E402
from training.encoders.transformer import SkeletonTransformer  # noqa: E402

NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
TOY_KIND = "toy-joint-mlp"


class ToyEncoder(torch.nn.Module):
    """A new encoder kind that export/ has never heard of: a per-joint MLP, mean-pooled over bodies, frames
    and joints."""

    kind = TOY_KIND

    def __init__(self, in_channels: int = 3, hidden_dim: int = 8) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.feature_dim = hidden_dim
        self.mlp = torch.nn.Sequential(torch.nn.Linear(in_channels, hidden_dim), torch.nn.ReLU(),
                                       torch.nn.Linear(hidden_dim, hidden_dim))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x.permute(0, 4, 2, 3, 1))  # (N, C, T, V, M) -> (N, M, T, V, C) -> (N, M, T, V, hidden)
        return h.mean(dim=(1, 2, 3))  # (N, hidden)


def toy_parts(cache: Path, streams: tuple[str, ...] = ("joint", "bone")) -> tuple[dict, dict, dict]:
    with open_cache(cache) as c:
        names, frames = list(c.class_names), int(c.split("train").read(np.arange(1)).shape[2])
    torch.manual_seed(0)
    encoders = {v: ToyEncoder().eval() for v in streams}
    heads = {v: torch.nn.Linear(8, len(names)).eval() for v in streams}
    meta = {"layout": layout_to_toml(NTU), "class_names": names, "frames": frames, "num_person": 2,
            "fusion_weights": {v: 1.0 for v in streams}, "preprocess": {"mode": "official", "frames": frames},
            "config": {"model": {"kind": TOY_KIND, "hidden_dim": 8}}}
    return encoders, heads, meta


def test_built_in_kinds_are_registered_and_unknown_kinds_export_as_they_are() -> None:
    assert serving.serving_spec(STGCN(NTU, EncoderConfig(base_channels=4, hidden_dim=8, feature_dim=4,
                                                          stage_blocks=(1, 1, 1)))).int8 == "static"
    tr = SkeletonTransformer(NTU, EncoderConfig(graph="transformer", hidden_dim=16, depth=1, num_heads=2),
                             frames=16)
    spec = serving.serving_spec(tr)
    assert spec.int8 == "dynamic" and spec.has_attention
    assert isinstance(serving.serving_encoder(tr, 16), serving.ServingTransformer)
    toy = ToyEncoder()
    assert serving.serving_spec(toy) is serving.AS_IS
    assert serving.serving_encoder(toy, 50) is toy
    assert serving.serving_encoder(toy, 50, "einsum", attention="plain") is toy


def test_a_new_encoder_kind_exports_without_touching_export(tiny_cache: Path, tmp_path: Path) -> None:
    encoders, heads, meta = toy_parts(tiny_cache)
    cfg = ExportConfig(data=tiny_cache, quantize="int8", precision="fp16", source="toy")
    res = export_models(encoders, heads, meta, tmp_path / "m", cfg)
    assert {"joint", "bone", "ensemble", "joint.fp16", "ensemble.int8", "joint.int8"} <= set(res.files)
    for name in ("joint", "bone", "ensemble"):
        assert res.parity[name]["max_abs_diff_logits"] <= cfg.tolerance * max(
            1.0, max(p["logits:scale"] for p in res.parity[name]["per_input"].values()))
        assert set(res.parity[name]["per_input"]) == {"random", "real"}
    with open_cache(tiny_cache) as c:
        x = c.split("val").read(np.arange(6)).astype(np.float32)
    sess = ModelSession(tmp_path / "m" / "joint.onnx", ["cpu"])
    assert sess.info.config == meta["config"] and sess.info.kind == "stream"
    got = sess.run(x)
    with torch.no_grad():
        want = heads["joint"](encoders["joint"].forward_features(torch.from_numpy(x))).numpy()
    np.testing.assert_allclose(got["logits"], want, rtol=1e-5, atol=1e-5)
    ens = ModelSession(tmp_path / "m" / "ensemble.onnx", ["cpu"]).run(x)
    assert ens["probabilities"].shape == (6, len(meta["class_names"]))
    int8 = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "joint.int8.onnx")).metadata_props}
    assert int8["quantization"] == "int8-static-qdq"  # no registered form: static int8
    assert ModelSession(tmp_path / "m" / "joint.int8.onnx", ["cpu"]).run(x)["logits"].shape == want.shape
    summary = json.loads((tmp_path / "m" / "export.json").read_text())
    assert summary["source"] == "toy" and summary["attention"] == "mha"


def test_a_registered_form_decides_the_int8_recipe(tiny_cache: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serving, "_SERVING", dict(serving._SERVING))  # registrations end with the test
    built: list[int] = []

    def as_is(encoder: torch.nn.Module, options: serving.ServingOptions) -> torch.nn.Module:
        built.append(options.frames)
        return encoder

    serving.register_serving(TOY_KIND, as_is, int8="dynamic")
    encoders, heads, meta = toy_parts(tiny_cache, ("joint",))
    res = export_models(encoders, heads, meta, tmp_path / "m", ensemble=False, data=tiny_cache,
                        quantize="int8")
    assert built and set(built) == {meta["frames"]}
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m" / "joint.int8.onnx")).metadata_props}
    assert props["quantization"] == "int8-dynamic"
    assert "dynamic int8" in res.quantization["joint"]["method"]
    with pytest.raises(CrossclrError, match="already registered"):
        serving.register_serving(TOY_KIND, as_is)
    with pytest.raises(CrossclrError, match="int8 'fp8'"):
        serving.register_serving("toy-other", as_is, int8="fp8")


def test_export_config_is_checked_when_built() -> None:
    with pytest.raises(CrossclrError, match="--quantize int8 needs --calibration"):
        ExportConfig(quantize="int8")
    with pytest.raises(CrossclrError, match="--precision 'bf16'"):
        ExportConfig(precision="bf16")
    with pytest.raises(CrossclrError, match="--opset 12"):
        ExportConfig(opset=12)
    with pytest.raises(CrossclrError, match="onnx-attention needs --opset 23"):
        ExportConfig(attention="onnx-attention")
    with pytest.raises(CrossclrError, match="graph form 'fast'"):
        ExportConfig(graph_form="fast")
    assert ExportConfig(streams=["joint"]).streams == ("joint",) and ExportConfig(streams=[]).streams is None
    # the request is kept; the dynamo exporter writes plain attention (check_attention)
    assert ExportConfig(dynamo=True, attention="onnx-attention").attention == "onnx-attention"


ENCODER_NAMES = {"stgcn", "transformer", "spatial", "flow", "adaptive", "crossclr", "mamp"}


def _names_in(node: ast.AST) -> set[str]:
    items = node.elts if isinstance(node, ast.Tuple | ast.List | ast.Set) else [node]
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def test_export_compares_no_encoder_or_objective_name() -> None:
    root = Path(__file__).resolve().parents[2] / "export"
    found = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                hit = set().union(*(_names_in(n) for n in [node.left, *node.comparators])) & ENCODER_NAMES
                found += [f"{path.name}:{node.lineno}: {sorted(hit)}"] if hit else []
    assert found == []
