"""Issue 14 (reliability): forged and hostile inputs give one line naming the file or option, a non-zero exit,
and nothing written or overwritten. Every bad file is made here, in tmp_path."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.arrays import MAX_ARRAY_BYTES
from crossclr_infer.errors import CrossclrError
from crossclr_infer.metrics import check_fusion_weights, parse_weights
from crossclr_infer.report import Shard, evaluate, load_models, merge_reports, save_plots
from crossclr_infer.session import ModelSession
from crossclr_infer.skeleton import MAX_ABS_COORDINATE
from tests.helpers import cli_error, run_cli
from tests.infer.test_report import CLASSES, FUSION, STREAMS, write_cache
from tests.infer.test_session import build_model

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("reliability")
    ens = d / "ensemble.onnx"
    build_model(ens, streams=STREAMS, class_names=CLASSES, fusion=FUSION)
    return {"dir": d, "ensemble": ens, "cache": write_cache(d / "c.h5", n_val=6),
            "other": write_cache(d / "other.h5", n_val=6, seed=1)}


def files_under(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its content (to prove nothing was written or overwritten)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def raw_ctvm(frames: int = 40, seed: int = 0) -> np.ndarray:
    """(C, T, V, M) raw coordinates in metres, two bodies."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 0.3, (3, 1, 25, 2)) + np.array([0, 0, 3.0])[:, None, None, None]
    return (base + np.cumsum(rng.normal(0, 0.01, (3, frames, 25, 2)), axis=1)).astype(np.float32)


def skeleton_text(xyz: np.ndarray) -> str:
    """An NTU .skeleton file of one body: xyz (T, 25, 3); T may be 0."""
    lines = [str(len(xyz))]
    for frame in xyz:
        lines += ["1", "72057594037931101 0 1 1 1 1 0 0.1 0.2 2", "25"]
        lines += [f"{x:g} {y:g} {z:g} 0 0 0 0 0 0 0 0 2" for x, y, z in frame]
    return "\n".join(lines) + "\n"


def forged_npy_bytes(shape: tuple[int, ...]) -> bytes:
    """A .npy header declaring ``shape`` float32, followed by 64 bytes only."""
    import io

    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return f.getvalue() + bytes(64)


# ------------------------------------------------------------------------- 1, 11: names from model files


def test_stream_name_with_a_path_cannot_escape_the_plots_folder(env, tmp_path, capsys) -> None:
    model = tmp_path / "m" / "trav.onnx"
    model.parent.mkdir()
    build_model(model, streams=("joint",), kind="stream", class_names=CLASSES,
                props={"streams": json.dumps(["x/../../TRAV"])})
    before = files_under(tmp_path)
    err = cli_error(["evaluate", "--data", str(env["cache"]), "--model", str(model), "--no-progress",
                     "--plots", str(tmp_path / "m" / "plots"), "--report", str(tmp_path / "r.json")], capsys)
    assert str(model) in err and "'streams'" in err and "not a known view" in err
    assert files_under(tmp_path) == before
    assert not list(tmp_path.parent.rglob("TRAV*"))


def test_save_plots_refuses_a_forged_result_name(tmp_path) -> None:
    report = {"class_names": ["a"], "results": {"../TRAV": {"confusion": [[1]], "top1": 100.0}}}
    with pytest.raises(CrossclrError, match="not a known view"):
        save_plots(report, tmp_path / "plots")
    assert not (tmp_path / "plots").exists() and not list(tmp_path.rglob("TRAV*"))


def test_tsne_png_names_are_checked(tmp_path) -> None:
    from training.plots import stream_png

    assert stream_png(tmp_path, "tsne", "bone", "ck.pt") == tmp_path / "tsne_bone.png"
    with pytest.raises(CrossclrError, match=r"ck\.pt.*not a known view"):
        stream_png(tmp_path, "tsne", "../../x", "ck.pt")


@pytest.mark.parametrize("props,match", [
    ({"class_names": json.dumps(["a", "b\nc", "c", "d", "e", "f"])}, "class name"),
    ({"class_names": json.dumps([])}, "'class_names' is empty"),
    ({"streams": json.dumps(["joint", "joint"])}, "distinct stream names"),
    ({"streams": json.dumps(["walk"])}, "'walk' is not a known view"),
    ({"streams": json.dumps([1])}, "not a known view"),
    ({"fusion_weights": json.dumps({"joint": -1, "motion": 1})}, "finite number >= 0"),
    ({"fusion_weights": json.dumps({"joint": 0, "motion": 0})}, "all zero"),
])
def test_names_and_weights_in_model_metadata_are_checked(tmp_path, capsys, props, match) -> None:
    model = tmp_path / "bad.onnx"
    build_model(model, props=props)
    with pytest.raises(CrossclrError, match=match):
        ModelSession(model, ["cpu"])
    np.save(tmp_path / "x.npy", raw_ctvm())
    err = cli_error(["predict", str(tmp_path / "x.npy"), "--model", str(model)], capsys)
    assert str(model) in err


def test_layout_name_in_metadata_is_checked(tmp_path) -> None:
    from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml

    toml = layout_to_toml(BUILTIN_LAYOUTS["ntu-rgb+d"]).replace('name = "ntu-rgb+d"', 'name = "a\\u0007b"')
    build_model(tmp_path / "m.onnx", props={"layout": toml})
    with pytest.raises(CrossclrError, match=r"m\.onnx: model metadata 'layout'.*layout name"):
        ModelSession(tmp_path / "m.onnx", ["cpu"])


def test_stream_metadata_against_the_graph(tmp_path) -> None:
    """What can be checked of a model's streams: count, known names, their outputs (ModelSession docs)."""
    two = tmp_path / "two.onnx"
    build_model(two, kind="stream", streams=("joint",), props={"streams": json.dumps(["joint", "bone"])})
    with pytest.raises(CrossclrError, match="a stream model has exactly one"):
        ModelSession(two, ["cpu"])
    lacking = tmp_path / "lacking.onnx"
    build_model(lacking, streams=("joint", "motion"), props={"streams": json.dumps(["joint", "bone"])})
    with pytest.raises(CrossclrError, match=r"lack \['logits_bone'\]"):
        ModelSession(lacking, ["cpu"])
    # documented limit: the graph does not say which view a stream model computes, so a relabelled
    # single-stream model passes every check that can be made
    relabelled = tmp_path / "relabelled.onnx"
    build_model(relabelled, kind="stream", streams=("joint",), props={"streams": json.dumps(["motion"])})
    assert ModelSession(relabelled, ["cpu"]).info.streams == ("motion",)


# ------------------------------------------------------------------ 4: class names against the graph


def test_fewer_class_names_than_logits_is_refused_when_the_model_opens(tmp_path, capsys) -> None:
    model = tmp_path / "m.onnx"
    build_model(model, class_names=("a", "b", "c", "d"), props={"class_names": json.dumps(["a", "b"])})
    np.save(tmp_path / "x.npy", raw_ctvm())
    err = cli_error(["predict", str(tmp_path / "x.npy"), "--model", str(model)], capsys)
    assert str(model) in err and "gives 4 class scores" in err and "2 classes" in err


def test_class_count_is_checked_on_each_run_when_the_graph_leaves_it_open(tmp_path, capsys,
                                                                          monkeypatch) -> None:
    from crossclr_infer import session as session_mod

    model = tmp_path / "m.onnx"
    build_model(model, class_names=("a", "b", "c", "d"), props={"class_names": json.dumps(["a", "b"])})
    monkeypatch.setattr(session_mod, "check_output_shapes", lambda info, shapes: None)  # K left open
    sess = ModelSession(model, ["cpu"])
    for n in (1, 3, 1):  # every run of the same session is checked, whatever its batch size
        want = rf"output 'logits' has shape \({n}, 4\), expected \({n}, 2\)"
        with pytest.raises(CrossclrError, match=want):
            sess.run(np.zeros((n, *sess.info.input_shape), np.float32))
    np.save(tmp_path / "x.npy", raw_ctvm())
    err = cli_error(["predict", str(tmp_path / "x.npy"), "--model", str(model)], capsys)
    assert str(model) in err and "class names" in err


# ----------------------------------------------------------------------- 3: forged .npy / .npz headers


def test_forged_npy_header_is_refused_before_allocation(env, tmp_path, capsys) -> None:
    bad = tmp_path / "huge.npy"
    bad.write_bytes(forged_npy_bytes((10**9, 25, 3)))
    err = cli_error(["predict", str(bad), "--model", str(env["ensemble"])], capsys)
    assert str(bad) in err and "279.4 GiB" in err and f"{MAX_ARRAY_BYTES / 2**30:g} GiB" in err


def test_forged_header_inside_npz_is_refused(tmp_path, capsys) -> None:
    npz = tmp_path / "in.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("data.npy", forged_npy_bytes((10**9, 3, 50, 25, 2)))
        z.writestr("label.npy", forged_npy_bytes((1,))[:-60])
    out = tmp_path / "out.h5"
    err = cli_error(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(out)], capsys)
    assert str(npz) in err and "key 'data'" in err and "GiB" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_npz_member_that_is_not_an_array(tmp_path, capsys) -> None:
    npz = tmp_path / "in.npz"
    with zipfile.ZipFile(npz, "w") as z:
        z.writestr("label", b"not an array")
    err = cli_error(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(tmp_path / "o.h5")],
                    capsys)
    assert str(npz) in err and "key 'label'" in err and not (tmp_path / "o.h5").exists()


# ---------------------------------------------------------------------------- 7, 13: coordinate values


@pytest.mark.parametrize("scale,dtype", [(1e30, np.float32), (1e300, np.float64), (1e5, np.float32)])
def test_predict_refuses_coordinates_beyond_the_bound(env, tmp_path, capsys, scale, dtype) -> None:
    f = tmp_path / "far.npy"
    np.save(f, raw_ctvm().astype(dtype) * dtype(scale))
    err = cli_error(["predict", str(f), "--model", str(env["ensemble"])], capsys)
    assert str(f) in err and f"±{MAX_ABS_COORDINATE:g}" in err and "metres" in err


def test_millimetres_and_pixels_are_within_the_bound(env, tmp_path, capsys) -> None:
    f = tmp_path / "mm.npy"
    np.save(f, raw_ctvm() * 1000)  # the same recording in millimetres (Azure Kinect's unit)
    code, out, _ = run_cli(["predict", str(f), "--model", str(env["ensemble"])], capsys)
    assert code == 0 and str(f) in out


def test_predict_refuses_far_coordinates_in_a_skeleton_file(env, tmp_path, capsys) -> None:
    xyz = np.transpose(raw_ctvm(frames=5)[..., 0], (1, 2, 0)) * 1e30  # (C, T, V) -> (T, V, C)
    f = tmp_path / "far.skeleton"
    f.write_text(skeleton_text(xyz))
    err = cli_error(["predict", str(f), "--model", str(env["ensemble"])], capsys)
    assert str(f) in err and "beyond" in err


@pytest.mark.parametrize("value", [1e30, np.nan])
def test_prepare_arrays_refuses_bad_coordinates(tmp_path, capsys, value) -> None:
    data = raw_ctvm()[None].repeat(3, axis=0)  # (N, C, T, V, M)
    data[1, 0, 3, 4, 0] = value
    npz = tmp_path / "in.npz"
    np.savez(npz, data=data, label=np.array([0, 1, 0]), name=np.array(["s0", "s1", "s2"]))
    out = tmp_path / "out.h5"
    err = cli_error(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(out),
                     "--preprocess", "official"], capsys)
    assert str(npz) in err and ("'s1'" in err or "NaN" in err)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


@pytest.mark.parametrize("value,match", [(np.nan, "NaN or Inf"), (-5e5, "beyond")])
def test_prepare_official_refuses_bad_coordinates(tmp_path, capsys, value, match) -> None:
    folder = tmp_path / "xsub"
    folder.mkdir()
    data = np.zeros((2, 3, 50, 25, 2), np.float32)
    data[1, 2, 7, 3, 0] = value
    np.save(folder / "train_position.npy", data)  # (N, C, T, V, M)
    np.save(folder / "train_label.npy", np.array([0, 1]))
    out = tmp_path / "out.h5"
    err = cli_error(["prepare", "official", str(folder), "--out", str(out)], capsys)
    assert str(folder / "train_position.npy") in err and "sample 'train000001'" in err and match in err
    assert not out.exists()


def test_prepare_official_refuses_a_forged_label_header(tmp_path, capsys) -> None:
    folder = tmp_path / "xsub"
    folder.mkdir()
    np.save(folder / "train_position.npy", np.zeros((2, 3, 50, 25, 2), np.float32))
    (folder / "train_label.npy").write_bytes(forged_npy_bytes((10**10,)))
    err = cli_error(["prepare", "official", str(folder), "--out", str(tmp_path / "o.h5")], capsys)
    assert "train_label.npy" in err and "GiB" in err and not (tmp_path / "o.h5").exists()


def test_prepare_ntu_refuses_far_coordinates_naming_the_file(tmp_path, capsys) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    xyz = np.transpose(raw_ctvm(frames=5)[..., 0], (1, 2, 0)) * 1e30  # (C, T, V) -> (T, V, C)
    sk = raw / "S001C001P001R001A001.skeleton"
    sk.write_text(skeleton_text(xyz))
    out = tmp_path / "out.h5"
    err = cli_error(["prepare", "ntu", str(raw), "--benchmark", "ntu60-xsub", "--out", str(out),
                     "--no-progress"], capsys)
    assert str(sk) in err and "beyond" in err and not out.exists()


# ------------------------------------------------------------------------------------ 8: fusion weights


@pytest.mark.parametrize("text,match", [
    ("joint=nan,motion=0.4,bone=0.6", "finite"), ("joint=inf,motion=0.4,bone=0.6", "finite"),
    ("joint=1e400,motion=0.4,bone=0.6", "finite"), ("joint=-0.5,motion=0.4,bone=0.6", ">= 0"),
    ("joint=0,motion=0,bone=0", "all zero"),
])
def test_evaluate_refuses_bad_fusion_weights(env, tmp_path, capsys, text, match) -> None:
    report = tmp_path / "r.json"
    err = cli_error(["evaluate", "--data", str(env["cache"]), "--model", str(env["ensemble"]),
                     "--no-progress", "--weights", text, "--report", str(report)], capsys)
    assert err.startswith("error: --weights:") and match in err
    assert not report.exists()


def test_one_validator_for_fusion_weights() -> None:
    assert check_fusion_weights({"joint": 1, "bone": np.float32(0.5)}, "x") == {"joint": 1.0, "bone": 0.5}
    assert parse_weights("accel=0") == {"accel": 0.0}  # a part: the defaults complete it
    for bad in ({"joint": math.nan}, {"joint": -1.0}, {"joint": 0.0}, {"joint": "1"}, {"joint": True}, {}):
        with pytest.raises(CrossclrError, match="^src: "):
            check_fusion_weights(bad, "src")
    from crossclr_infer.metrics import fusion_weights_for

    with pytest.raises(CrossclrError, match="all zero"):
        fusion_weights_for("separate", ["joint", "bone"], {"joint": 0.0, "bone": 0.0})


def test_linear_refuses_nan_weights_before_storing(env, tmp_path, capsys) -> None:
    pytest.importorskip("torch")
    from training.protocols.linear import LinearConfig, train_linear

    with pytest.raises(CrossclrError, match="fusion weight of 'joint' is nan"):
        train_linear(None, None, 2, ["joint"], LinearConfig(), {"joint": math.nan})  # checked first
    ckpt = tmp_path / "pretrain.pt"
    ckpt.write_bytes(b"unused: the option is refused before the checkpoint is read")
    out = tmp_path / "lin"
    err = cli_error(["linear", "--data", str(env["cache"]), "--checkpoint", str(ckpt), "--out", str(out),
                     "--fusion", "separate", "--weights", "joint=nan"], capsys)
    assert "--weights" in err and "nan" in err and not out.exists()


# ---------------------------------------------------------------------------- 5, 9, 15: merge-reports


@pytest.fixture(scope="module")
def shards(env) -> list[dict]:
    models = load_models([env["ensemble"]], ["cpu"])
    return [evaluate(env["cache"], models, shard=Shard(i, 2), progress=False) for i in range(2)]


def _write(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize("field,value,match", [
    ("shard", "0/2", "field 'shard'"),
    ("results", None, "field 'results'"),
    ("num_samples", "3", "field 'num_samples'"),
    ("streams", ["joint", "../x", "bone"], "'../x' is not a known view"),
    ("fusion_weights", {"joint": "nan"}, "fusion weight of 'joint'"),
    ("data_id", None, "field 'data_id'"),
    ("confusion+1", None, "field 'results.fused.confusion'"),
    ("confusion-shape", None, "field 'results.joint.confusion'"),
    ("top1>n", None, "field 'results.bone.correct_top1'"),
])
def test_merge_reports_checks_each_field(shards, tmp_path, capsys, field, value, match) -> None:
    bad = json.loads(json.dumps(shards[1]))
    if field == "results":
        del bad["results"]
    elif field == "confusion+1":
        bad["results"]["fused"]["confusion"][0][1] += 1
    elif field == "confusion-shape":
        bad["results"]["joint"]["confusion"] = bad["results"]["joint"]["confusion"][:-1]
    elif field == "top1>n":
        bad["results"]["bone"]["correct_top1"] = bad["num_samples"] + 1
    else:
        bad[field] = value
    a, b = _write(tmp_path / "s0.json", shards[0]), _write(tmp_path / "s1.json", bad)
    out = tmp_path / "merged.json"
    err = cli_error(["merge-reports", str(a), str(b), "--out", str(out)], capsys)
    assert str(b) in err and match in err
    assert not out.exists()


def test_merge_refuses_shards_of_two_caches(env, shards, tmp_path, capsys) -> None:
    other = evaluate(env["other"], load_models([env["ensemble"]], ["cpu"]), shard=Shard(1, 2), progress=False)
    assert other["num_samples_total"] == shards[0]["num_samples_total"]
    a, b = _write(tmp_path / "s0.json", shards[0]), _write(tmp_path / "s1.json", other)
    err = cli_error(["merge-reports", str(a), str(b), "--out", str(tmp_path / "m.json")], capsys)
    assert str(b) in err and "'data_id' differs" in err and "different caches" in err
    assert not (tmp_path / "m.json").exists()


def test_empty_shard_reports_no_accuracy_and_merges(env, tmp_path, capsys, caplog) -> None:
    base = ["evaluate", "--data", str(env["cache"]), "--model", str(env["ensemble"]), "--no-progress",
            "--providers", "cpu"]
    code, out, _ = run_cli([*base, "--shard", "50/100", "--report", str(tmp_path / "e.json")], capsys)
    assert code == 0 and "0 samples: this shard is empty" in out and "| fused | – | – |" in out
    assert "shard 50/100 of" in caplog.text and "is empty" in caplog.text
    empty = json.loads((tmp_path / "e.json").read_text())
    assert empty["num_samples"] == 0 and empty["results"]["fused"]["top1"] is None
    assert empty["results"]["fused"]["correct_top1"] == 0
    models = load_models([env["ensemble"]], ["cpu"])
    n = 8  # more shards than the 6 samples: two are empty
    parts = [evaluate(env["cache"], models, shard=Shard(i, n), progress=False) for i in range(n)]
    assert sum(p["num_samples"] == 0 for p in parts) == 2
    whole = evaluate(env["cache"], models, progress=False)
    merged = merge_reports(parts)
    assert {k: v for k, v in merged.items() if k != "run"} == {k: v for k, v in whole.items() if k != "run"}


# -------------------------------------------------------------------- 10: an output that is an input


def test_prepare_arrays_refuses_to_overwrite_its_input(tmp_path, capsys) -> None:
    npz = tmp_path / "in.npz"
    np.savez(npz, data=raw_ctvm()[None], label=np.array([0]))
    before = files_under(tmp_path)
    for out in (npz, tmp_path / "link.npz"):
        if out.name == "link.npz":
            out.symlink_to(npz)
            before = files_under(tmp_path)
        err = cli_error(["prepare", "arrays", str(npz), "--layout", "ntu-rgb+d", "--out", str(out)], capsys)
        assert f"--out {out}" in err and str(npz) in err and "destroy the input" in err
        assert files_under(tmp_path) == before


def test_prepare_official_and_ntu_refuse_to_overwrite_their_inputs(tmp_path, capsys) -> None:
    folder = tmp_path / "xsub"
    folder.mkdir()
    np.save(folder / "train_position.npy", np.zeros((1, 3, 50, 25, 2), np.float32))
    np.save(folder / "train_label.npy", np.array([0]))
    before = files_under(tmp_path)
    err = cli_error(["prepare", "official", str(folder), "--out", str(folder / "train_label.npy")], capsys)
    assert "--out" in err and "train_label.npy" in err and files_under(tmp_path) == before
    raw = tmp_path / "raw"
    raw.mkdir()
    sk = raw / "S001C001P001R001A001.skeleton"
    sk.write_text(skeleton_text(np.ones((3, 25, 3))))
    before = files_under(tmp_path)
    err = cli_error(["prepare", "ntu", str(raw), "--benchmark", "ntu60-xsub", "--out", str(sk)], capsys)
    assert f"--out {sk}" in err and files_under(tmp_path) == before


def test_merge_reports_refuses_to_overwrite_a_shard(shards, tmp_path, capsys) -> None:
    a, b = _write(tmp_path / "s0.json", shards[0]), _write(tmp_path / "s1.json", shards[1])
    before = files_under(tmp_path)
    err = cli_error(["merge-reports", str(a), str(b), "--out", str(a)], capsys)
    assert f"--out {a}" in err and files_under(tmp_path) == before


# ----------------------------------------------------------------------- 12: bad .skeleton in a folder


@pytest.mark.parametrize("text,match", [("0\n", "no frames"), ("2\n0\n0\n", "no body")])
def test_skeleton_without_frames_or_bodies_names_the_file(env, tmp_path, capsys, text, match) -> None:
    f = tmp_path / "S001C001P001R001A001.skeleton"
    f.write_text(text)
    err = cli_error(["predict", str(f), "--model", str(env["ensemble"])], capsys)
    assert str(f) in err and match in err


def test_folder_with_bad_files_predicts_the_good_ones(env, tmp_path, capsys) -> None:
    np.save(tmp_path / "good.npy", raw_ctvm())
    (tmp_path / "empty.skeleton").write_text("0\n")
    (tmp_path / "nobody.skeleton").write_text("3\n0\n0\n0\n")
    code, out, err = run_cli(["predict", str(tmp_path), "--model", str(env["ensemble"]), "--json"], capsys)
    assert code == 1
    assert [p["input"] for p in json.loads(out)] == [str(tmp_path / "good.npy")]
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert str(tmp_path / "empty.skeleton") in lines[0] and str(tmp_path / "nobody.skeleton") in lines[1]


# ------------------------------------------------------------------------------------ 14: kNN with k > N


def test_knn_k_above_the_training_set_says_what_happens(tmp_path, capsys, caplog) -> None:
    pytest.importorskip("torch")
    from tests.helpers import protocol_args, write_pretrain
    from tests.helpers import write_cache as write_train_cache

    cache = write_train_cache(tmp_path / "c.h5", classes=2, train=3, val=2, frames=8)
    ck = write_pretrain(tmp_path / "pre.pt", cache, streams=("joint",))
    js = tmp_path / "k.json"
    args = protocol_args("knn", cache, ck, "-k", "1,50", "--json", str(js), "--device", "cpu")
    code, _, _ = run_cli(args, capsys)
    assert code == 0
    [warning] = [r.getMessage() for r in caplog.records if "-k 50" in r.getMessage()]
    assert "only 6 samples" in warning and "uses all of them" in warning
    assert json.loads(js.read_text())["effective_k"] == {"1": 1, "50": 6}
