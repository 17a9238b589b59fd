"""The shared protocol context (training/protocols/context.py), the t-SNE protocol and the protocol configs'
own checks of their numbers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from crossclr_infer.cache import CacheWriter  # noqa: E402
from crossclr_infer.errors import CrossclrError  # noqa: E402
from crossclr_infer.layouts import BUILTIN_LAYOUTS  # noqa: E402
from tests.helpers import write_cache  # noqa: E402
from tests.training.protocol_helpers import protocol_setup, run_protocol  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return protocol_setup(tmp_path_factory.mktemp("context"), ["joint", "bone"], train=3, val=3)


def _write_layout_cache(path: Path, layout_name: str) -> Path:
    """A 4-class cache of random poses in another built-in layout."""
    layout = BUILTIN_LAYOUTS[layout_name]
    rng = np.random.default_rng(0)
    with CacheWriter(path, layout=layout, class_names=[f"class {c}" for c in range(4)], benchmark="test",
                     frames=16, num_person=2, preprocess={"mode": "none", "frames": 16}) as w:
        for split in ("train", "val"):
            for c in range(4):
                x = rng.normal(size=(3, 16, layout.num_joints, 2)).astype(np.float32)
                w.add(split, x, c, f"{split}-{c}", 16)
    return path


@pytest.fixture()
def calls(monkeypatch) -> dict[str, list]:
    """Records every encoder load, cache open and cache close of the protocols."""
    import crossclr_infer.cache as cache_mod
    import training.protocols.context as context_mod

    seen: dict[str, list] = {"load": [], "open": [], "close": []}
    load, open_, close = context_mod.load_any_encoders, cache_mod.open_cache, cache_mod.Cache.close

    def counting_load(*a, **kw):
        seen["load"].append(a[0])
        return load(*a, **kw)

    def counting_open(path):
        cache = open_(path)
        seen["open"].append(cache)
        return cache

    def counting_close(self):
        seen["close"].append(self)
        return close(self)

    monkeypatch.setattr(context_mod, "load_any_encoders", counting_load)
    monkeypatch.setattr(cache_mod, "open_cache", counting_open)
    monkeypatch.setattr(cache_mod.Cache, "close", counting_close)
    return seen


# ----------------------------------------------------------------------------------------------- context
def test_context_holds_the_checked_pieces_and_closes_the_cache(setup, calls):
    from training.protocols.context import open_protocol

    with open_protocol(setup["cache"], setup["ckpt"], streams=["bone"], splits=("train", "val"),
                       device="cpu") as ctx:
        assert ctx.streams == ["bone"] and ctx.heads is None and ctx.num_class == 4
        assert ctx.class_names == [f"class {c}" for c in range(4)] and ctx.layout.name == "ntu-rgb+d"
        assert ctx.info == {"frames": 16, "num_person": 2, "preprocess": {"mode": "none", "frames": 16},
                            "benchmark": "test"}
        feats = ctx.encode("val")
        assert feats["bone"].shape == (12, ctx.encoders["bone"].hidden_dim) == (12, 32)
        np.testing.assert_array_equal(ctx.labels("train").numpy(), np.tile(np.arange(4), 3))
        assert ctx.header("knn") == {"protocol": "knn", "data": str(setup["cache"]),
                                     "checkpoint": str(setup["ckpt"])}
        with pytest.raises(CrossclrError, match="split 'test' was not opened"):
            ctx.split("test")
        assert calls["close"] == []
    assert calls["close"] == calls["open"] == [ctx.cache]
    assert ctx.cache._handle._file is None  # the HDF5 file was closed (it reopens only on a later read)


@pytest.mark.parametrize("protocol", ["linear", "knn", "finetune", "tsne"])
def test_each_protocol_loads_the_checkpoint_and_opens_the_cache_once(setup, calls, protocol, tmp_path):
    from training.protocols.finetune import FinetuneConfig, run_finetune
    from training.protocols.knn import run_knn
    from training.protocols.linear import LinearConfig, run_linear
    from training.protocols.tsne import TsneConfig, run_tsne

    data, ckpt = setup["cache"], setup["ckpt"]
    src = {"streams": ["joint"], "device": "cpu"}
    run = {
        "linear": lambda: run_linear(data, ckpt, tmp_path, cfg=LinearConfig(epochs=1), **src),
        "knn": lambda: run_knn(data, ckpt, ks=(1,), **src),
        "finetune": lambda: run_finetune(data, ckpt, tmp_path, cfg=FinetuneConfig(epochs=1), **src),
        "tsne": lambda: run_tsne(data, ckpt, cfg=TsneConfig(perplexity=3), **src),
    }[protocol]
    run()
    assert calls["load"] == [setup["ckpt"]]
    assert len(calls["open"]) == 1 and calls["close"] == calls["open"]


def test_a_cache_of_another_layout_is_refused_in_one_line_and_closed(setup, calls, tmp_path, capsys):
    from training.protocols.context import open_protocol

    other = _write_layout_cache(tmp_path / "body25.h5", "openpose-body25")  # 25 joints, another tree
    with pytest.raises(CrossclrError) as e:
        open_protocol(other, setup["ckpt"], device="cpu")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(str(other))
    assert "layout 'openpose-body25' (25 joints) differs from the checkpoint's 'ntu-rgb+d'" in msg
    assert len(calls["open"]) == 1 and calls["close"] == calls["open"]
    outs = {command: ["--out", str(tmp_path / command[0])] for command in ("linear", "finetune", "tsne")}
    for command, rest in (("knn", []), *outs.items()):
        code, _, err = run_protocol(capsys, command, {**setup, "cache": other}, *rest)
        assert code != 0 and err.strip().splitlines() == [f"error: {msg}"], (command, err)
    assert not (tmp_path / "l" / "linear.pt").exists() and not (tmp_path / "t").exists()


def test_heads_on_a_cache_of_other_classes_are_refused_in_one_line(setup, tmp_path, capsys):
    from training.protocols.context import open_protocol

    code, _, err = run_protocol(capsys, "linear", setup, "--out", str(tmp_path / "lin"), "--epochs", "1")
    assert code == 0, err
    lin = tmp_path / "lin" / "linear.pt"
    other = write_cache(tmp_path / "five.h5", classes=5, train=1, val=1)
    with pytest.raises(CrossclrError) as e:
        open_protocol(other, lin, need_classes=None, device="cpu")  # None: the heads decide
    msg = str(e.value)
    assert msg == (f"{other}: 5 classes differ from the 4 classes of the heads in {lin}; use a cache of the "
                   "same benchmark/classes")
    with open_protocol(other, lin, need_classes=False, device="cpu") as ctx:  # linear retrains the heads
        assert ctx.heads is not None and ctx.num_class == 5


def test_a_linear_checkpoint_is_read_from_disk_once(setup, tmp_path, capsys, monkeypatch):
    import training.protocols.io as io

    code, _, err = run_protocol(capsys, "linear", setup, "--out", str(tmp_path / "lin"), "--epochs", "1")
    assert code == 0, err
    reads = []
    real = io.torch_load_safe
    monkeypatch.setattr(io, "torch_load_safe", lambda path, **kw: reads.append(path) or real(path, **kw))
    encoders, heads, meta = io.load_any_encoders(tmp_path / "lin" / "linear.pt", ["bone"])
    assert reads == [tmp_path / "lin" / "linear.pt"]
    assert list(encoders) == list(heads) == ["bone"] and meta["format"] == io.LINEAR_FORMAT


def test_encoder_config_from_reads_only_the_model_table():
    from training.encoders.config import EncoderConfig
    from training.protocols.io import encoder_config_from

    model = {"base_channels": 8, "hidden_dim": 32, "stage_blocks": [1, 1, 1]}
    want = EncoderConfig(base_channels=8, hidden_dim=32, stage_blocks=(1, 1, 1))
    assert encoder_config_from({"model": model}, "x.pt") == want
    assert encoder_config_from(model, "x.pt") == want  # an old linear.pt stored the model table alone
    # settings an older or newer version wrote beside the model table do not matter
    assert encoder_config_from({"model": model, "retired_setting": 1, "epochs": "many"}, "x.pt") == want
    with pytest.raises(CrossclrError, match=r"^x\.pt \(config\): unknown key 'model\.width'"):
        encoder_config_from({"model": {"width": 3}}, "x.pt")
    with pytest.raises(CrossclrError, match="has no encoder settings"):
        encoder_config_from({"model": 3}, "x.pt")


def test_encoding_no_sample_gives_the_encoders_width(setup):
    from training.protocols.io import encode_source, load_any_encoders

    encoders, _, _ = load_any_encoders(setup["ckpt"], None)
    feats = encode_source(encoders, lambda idx: None, 0, BUILTIN_LAYOUTS["ntu-rgb+d"])
    assert {v: tuple(f.shape) for v, f in feats.items()} == {"joint": (0, 32), "bone": (0, 32)}


# ------------------------------------------------------------------------------------------------- t-SNE
def test_tsne_protocol_embeds_a_seeded_subset_in_two_dimensions(setup):
    from training.protocols.tsne import TsneConfig, run_tsne, sample_indices

    cfg = TsneConfig(max_samples=5, max_classes=3, perplexity=2, seed=4)
    labels = np.tile(np.arange(4), 3)
    pool = np.flatnonzero(labels < 3)
    want = np.sort(np.random.default_rng(4).permutation(pool)[:5])
    np.testing.assert_array_equal(sample_indices(labels, cfg), want)
    res = run_tsne(setup["cache"], setup["ckpt"], streams=None, cfg=cfg, device="cpu")
    assert {v: p.shape for v, p in res.points.items()} == {"joint": (5, 2), "bone": (5, 2)}
    assert all(np.isfinite(p).all() for p in res.points.values())
    np.testing.assert_array_equal(res.labels, labels[want])
    assert res.num_classes == len(np.unique(labels[want]))
    assert res.report == {"protocol": "tsne", "data": str(setup["cache"]), "checkpoint": str(setup["ckpt"]),
                          "split": "val", "num_samples": 5, "streams": ["joint", "bone"]}
    again = run_tsne(setup["cache"], setup["ckpt"], streams=["bone"], cfg=cfg, device="cpu")
    np.testing.assert_allclose(again.points["bone"], res.points["bone"], rtol=1e-5, atol=1e-5)


def test_tsne_command_writes_one_png_per_stream_and_the_report(setup, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "t"
    code, stdout, err = run_protocol(capsys, "tsne", setup, "--out", str(out), "--perplexity", "3",
                                     "--max-samples", "7", "--json", str(tmp_path / "t.json"))
    assert code == 0, err
    report = json.loads((tmp_path / "t.json").read_text())
    assert report["plots"] == [str(out / "tsne_joint.png"), str(out / "tsne_bone.png")]
    assert report["num_samples"] == 7 and report["streams"] == ["joint", "bone"]
    for png in report["plots"]:
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png in stdout
    assert sorted(p.name for p in out.iterdir()) == ["tsne_bone.png", "tsne_joint.png"]


# --------------------------------------------------------------------------------------- config numbers
@pytest.mark.parametrize("config, kwargs, named", [
    ("linear.LinearConfig", {"lr": float("nan")}, "--lr nan"),
    ("linear.LinearConfig", {"momentum": float("-inf")}, "--momentum -inf"),
    ("finetune.FinetuneConfig", {"weight_decay": float("nan")}, "--weight-decay nan"),
    ("finetune.FinetuneConfig", {"lr": 0.0}, "--lr 0.0"),
    ("knn.KnnConfig", {"t": float("nan")}, "-t/--temperature nan"),
    ("knn.KnnConfig", {"ks": (0, 5)}, "-k: k must be ≥ 1"),
])
def test_protocol_configs_refuse_nan_and_out_of_range_numbers(config, kwargs, named):
    import importlib

    module, name = config.split(".")
    cls = getattr(importlib.import_module(f"training.protocols.{module}"), name)
    with pytest.raises(CrossclrError) as e:
        cls(**kwargs)
    assert str(e.value).startswith(named) and len(str(e.value).splitlines()) == 1


def test_knn_config_sorts_and_deduplicates_k():
    from training.protocols.knn import KnnConfig

    assert KnnConfig(ks=(20, 1, 20)).ks == (1, 20)
