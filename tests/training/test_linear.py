"""Linear evaluation: frozen encoders stay untouched, cached == re-encoded heads, fusion, linear.pt, errors.

The tiny encoder config, hand-made caches and pretrain checkpoints come from tests/helpers.py (shared with
test_knn.py, test_finetune.py and test_plots.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from crossclr_infer.cache import open_cache  # noqa: E402
from tests.helpers import NTU, STREAMS3, protocol_args, run_cli, write_cache, write_pretrain  # noqa: E402
from tests.training.protocol_helpers import protocol_setup, run_protocol  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return protocol_setup(tmp_path_factory.mktemp("linear"))


def _split_tensors(cache: Path, split: str):
    with open_cache(cache) as c:
        sp = c.split(split)
        return torch.from_numpy(sp.read_all()), torch.as_tensor(sp.labels, dtype=torch.long)


# --------------------------------------------------------------------------------------------- metrics
def test_topk_percent_on_tensor_scores_matches_numpy():
    from crossclr_infer.metrics import topk_percent
    from training.protocols.io import to_numpy

    rng = np.random.default_rng(1)
    s, y = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    ref = {k: 100 * np.mean([y[i] in np.argsort(-s[i])[:k] for i in range(50)]) for k in (1, 5)}
    got = topk_percent(to_numpy(torch.from_numpy(s)), to_numpy(torch.from_numpy(y)))
    assert got["top1"] == pytest.approx(ref[1]) and got["top5"] == pytest.approx(ref[5])


def test_fusion_weights_and_parse():
    from crossclr_infer.errors import CrossclrError
    from crossclr_infer.metrics import fuse_logits, fusion_weights_for, parse_weights

    assert fusion_weights_for("joint", ["joint", "bone"]) == {"joint": 0.5, "bone": 0.5}
    assert fusion_weights_for("separate", list(STREAMS3) + ["accel"]) == {
        "joint": 0.6,
        "motion": 0.4,
        "bone": 0.6,
        "accel": 0.4,
    }
    w = fusion_weights_for("separate", ["joint", "accel"], parse_weights("accel=0.25"))
    assert w == {"joint": 0.6, "accel": 0.25}
    z = {"joint": np.ones((2, 3)), "accel": 2 * np.ones((2, 3))}
    np.testing.assert_allclose(fuse_logits(z, w), np.full((2, 3), 0.6 + 0.5), rtol=1e-6)
    with pytest.raises(CrossclrError, match="not among the streams"):
        fusion_weights_for("separate", ["joint"], {"bone": 1.0})
    with pytest.raises(CrossclrError, match="STREAM=NUMBER"):
        parse_weights("joint:0.6")


def test_milestone_scales_with_epochs():
    from training.protocols.linear import LinearConfig

    assert LinearConfig().resolved_milestones() == (80,)
    assert LinearConfig(epochs=10).resolved_milestones() == (8,)
    assert LinearConfig(epochs=10, milestones=(3, 6)).resolved_milestones() == (3, 6)


# ----------------------------------------------------------------------------------------- frozen encoders
def test_linear_training_leaves_encoder_weights_and_bn_stats_unchanged(setup):
    from training.protocols.io import load_any_encoders
    from training.protocols.linear import LinearConfig, ReencodingFeatures, train_linear

    encoders, _, _ = load_any_encoders(setup["ckpt"], None)
    before = {v: {k: t.clone() for k, t in e.state_dict().items()} for v, e in encoders.items()}
    x, y = _split_tensors(setup["cache"], "train")
    xv, yv = _split_tensors(setup["cache"], "val")
    for e in encoders.values():  # the protocol must put them in eval mode itself
        e.train()
    train = ReencodingFeatures(encoders, x, y, NTU, in_features=32)
    val = ReencodingFeatures(encoders, xv, yv, NTU, in_features=32)
    train_linear(train, val, 4, list(encoders), LinearConfig(epochs=3, batch_size=8))
    for v, e in encoders.items():
        after = e.state_dict()
        assert set(after) == set(before[v])
        for k, t in before[v].items():
            assert torch.equal(after[k], t), f"{v}.{k} changed"
        assert all(p.grad is None for p in e.parameters())
    # the check has teeth: a train-mode forward does move the running statistics
    enc = encoders["joint"].train()
    enc.forward_features(x[:8])
    assert not torch.equal(enc.data_bn.running_mean, before["joint"]["data_bn.running_mean"])


def test_cli_linear_checkpoint_holds_the_pretrained_encoders_unchanged(setup, capsys):
    out = setup["dir"] / "lin"
    code, stdout, err = run_protocol(capsys, "linear", setup, "--out", str(out), "--epochs", "4",
                                     "--batch-size", "8", "--json", str(out / "r.json"), "--device", "cpu")
    assert code == 0, err
    assert "best top1" in stdout and "fused" in stdout
    pre = torch.load(setup["ckpt"], weights_only=True)["model"]
    lin = torch.load(out / "linear.pt", weights_only=True)
    assert lin["format"] == "crossclr-linear-v1" and lin["streams"] == list(STREAMS3)
    for v in STREAMS3:
        for k, t in lin["encoders"][v].items():
            assert torch.equal(t, pre[f"encoders_q.{v}.{k}"]), f"{v}.{k} differs from the pretrained encoder"
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temp files left behind"
    report = json.loads((out / "r.json").read_text())
    assert len(report["history"]) == 4 and set(report["best"]) == {*STREAMS3, "fused"}
    for key, b in report["best"].items():
        assert b["top1"] >= report["last"][key]["top1"] - 1e-9


# ----------------------------------------------------------------------------------- cached == re-encoded
@pytest.mark.parametrize("fusion", ["joint", "separate"])
def test_cached_and_reencoding_training_give_the_same_heads(setup, fusion):
    from crossclr_infer.metrics import fusion_weights_for
    from training.protocols.io import encode_source, load_any_encoders
    from training.protocols.linear import CachedFeatures, LinearConfig, ReencodingFeatures, train_linear

    encoders, _, _ = load_any_encoders(setup["ckpt"], ["joint", "bone"])
    x, y = _split_tensors(setup["cache"], "train")
    xv, yv = _split_tensors(setup["cache"], "val")
    cfg = LinearConfig(epochs=5, batch_size=8, fusion=fusion, seed=3)
    w = fusion_weights_for(fusion, list(encoders))
    cached = train_linear(
        CachedFeatures(encode_source(encoders, lambda i: x[i].numpy(), len(x), NTU, batch_size=13), y),
        CachedFeatures(encode_source(encoders, lambda i: xv[i].numpy(), len(xv), NTU), yv),
        4,
        list(encoders),
        cfg,
        w,
    )
    reenc = train_linear(
        ReencodingFeatures(encoders, x, y, NTU, in_features=32),
        ReencodingFeatures(encoders, xv, yv, NTU, in_features=32),
        4,
        list(encoders),
        cfg,
        w,
    )
    for v in encoders:
        for name in ("weight", "bias"):
            a, b = getattr(cached.heads[v], name), getattr(reenc.heads[v], name)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for ra, rb in zip(cached.history, reenc.history, strict=True):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-4, abs=1e-6)
    # a different seed gives a different head (the comparison is not vacuous)
    other = train_linear(
        CachedFeatures(encode_source(encoders, lambda i: x[i].numpy(), len(x), NTU), y),
        None,
        4,
        list(encoders),
        LinearConfig(epochs=5, batch_size=8, fusion=fusion, seed=4),
        w,
    )
    assert not torch.allclose(other.heads["joint"].weight, cached.heads["joint"].weight, atol=1e-3)


def test_separate_fusion_trains_each_head_alone(setup):
    from training.protocols.io import encode_source, load_any_encoders
    from training.protocols.linear import CachedFeatures, LinearConfig, train_linear

    encoders, _, _ = load_any_encoders(setup["ckpt"], ["joint", "motion"])
    x, y = _split_tensors(setup["cache"], "train")
    feats = encode_source(encoders, lambda i: x[i].numpy(), len(x), NTU)
    cfg = LinearConfig(epochs=4, batch_size=8, fusion="separate", seed=1)
    both = train_linear(CachedFeatures(feats, y), None, 4, ["joint", "motion"], cfg)
    alone = train_linear(CachedFeatures({"joint": feats["joint"]}, y), None, 4, ["joint"], cfg)
    torch.testing.assert_close(both.heads["joint"].weight, alone.heads["joint"].weight, rtol=1e-5, atol=1e-6)
    joint = train_linear(
        CachedFeatures(feats, y),
        None,
        4,
        ["joint", "motion"],
        LinearConfig(epochs=4, batch_size=8, fusion="joint", seed=1),
    )
    assert not torch.allclose(joint.heads["joint"].weight, alone.heads["joint"].weight, atol=1e-4)


def test_lr_drops_tenfold_at_the_scaled_milestone(setup):
    from training.protocols.linear import CachedFeatures, LinearConfig, train_linear

    feats = {"joint": torch.randn(16, 32)}
    res = train_linear(
        CachedFeatures(feats, torch.arange(16) % 4), None, 4, ["joint"], LinearConfig(epochs=10)
    )
    assert [r["lr"] for r in res.history] == pytest.approx([3.0] * 8 + [0.3] * 2)


def test_load_linear_and_eval_only_reproduce_the_last_epoch(setup, capsys):
    from crossclr_infer.metrics import fuse_logits, topk_percent
    from training.protocols.io import encode_split, load_linear

    out = setup["dir"] / "lin2"
    code, _, err = run_protocol(capsys, "linear", setup, "--out", str(out), "--epochs", "3", "--batch-size",
                                "8", "--fusion", "separate", "--weights", "joint=0.5,motion=0.2,bone=0.3",
                                "--streams", "joint,motion,bone")
    assert code == 0, err
    encoders, heads, meta = load_linear(out / "linear.pt")
    assert meta["fusion"] == "separate" and meta["fusion_weights"] == {
        "joint": 0.5,
        "motion": 0.2,
        "bone": 0.3,
    }
    assert meta["class_names"] == [f"class {c}" for c in range(4)] and meta["frames"] == 16
    assert all(not e.training for e in encoders.values())
    with open_cache(setup["cache"]) as c:
        feats = encode_split(encoders, c.split("val"), c.layout)
        y = torch.as_tensor(c.split("val").labels)
    with torch.no_grad():
        fused = fuse_logits({v: heads[v](feats[v]).numpy() for v in heads}, meta["fusion_weights"])
    ref = topk_percent(fused, y.numpy())
    assert ref == pytest.approx(meta["metrics"]["last"]["fused"])
    code, _, err = run_cli(
        [
            "linear",
            "--eval-only",
            "--data",
            str(setup["cache"]),
            "--checkpoint",
            str(out / "linear.pt"),
            "--json",
            str(out / "e.json"),
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads((out / "e.json").read_text())["last"]["fused"] == pytest.approx(ref)


# ---------------------------------------------------------------------------------------------- bad input
def test_checkpoint_without_the_requested_stream_is_a_one_line_error(setup, capsys):
    ck = write_pretrain(setup["dir"] / "joint_only.pt", setup["cache"], streams=["joint"])
    code, _, err = run_protocol(capsys, "linear", setup, "--out", str(setup["dir"] / "bad"), "--streams",
                                "joint,bone", "--epochs", "1", checkpoint=ck)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "bone" in err, err
    assert not (setup["dir"] / "bad" / "linear.pt").exists()


def test_cache_with_other_classes_than_the_heads_is_a_one_line_error(setup, capsys):
    out = setup["dir"] / "lin3"
    code, _, err = run_protocol(capsys, "linear", setup, "--out", str(out), "--epochs", "1",
                                "--streams", "joint")
    assert code == 0, err
    other = write_cache(setup["dir"] / "other.h5", classes=5, train=1, val=1)
    for cmd in (
        ["linear", "--eval-only"],
        ["finetune", "--out", str(setup["dir"] / "ft_bad"), "--epochs", "1"],
    ):
        code, _, err = run_cli([*cmd, "--data", str(other), "--checkpoint", str(out / "linear.pt")], capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and "classes" in err, err


def test_foreign_checkpoint_and_bad_flags_are_one_line_errors(setup, capsys):
    junk = setup["dir"] / "junk.pt"
    torch.save({"state_dict": {}}, junk)
    for args in (
        protocol_args("linear", setup["cache"], junk, "--out", "o"),
        protocol_args("linear", setup["cache"], setup["ckpt"], "--out", "o", "--streams", "elbow"),
        protocol_args("linear", setup["cache"], setup["ckpt"], "--out", "o", "--fusion", "separate",
                      "--weights", "joint"),
    ):
        code, _, err = run_cli(args, capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1, err


# ------------------------------------------------------------------------------------ pretrained vs random
@pytest.mark.slow
def test_pretrained_encoder_beats_a_random_one_on_synthetic_data(tmp_path):
    """Linear and kNN on a briefly pretrained encoder (TRAIN's trainer, tiny preset, ~10 s) vs the same
    protocol on a randomly initialized encoder of the same architecture."""
    from crossclr_infer.synth import generate_synthetic
    from training.config import load_config
    from training.objectives.crossclr import CrosSCLR
    from training.protocols.knn import run_knn
    from training.protocols.linear import LinearConfig, run_linear
    from training.trainer import train

    cache = generate_synthetic(tmp_path / "s.h5", classes=4, per_class=24, seed=0)
    cfg = load_config(
        "tiny",
        {
            "epochs": 8,
            "cross_epoch": 8,
            "lr_steps": [8],
            "streams": ["joint"],
            "save_every": 8,
            "batch_size": 16,
            "tensorboard": False,
            "device": "cpu",
        },
    )
    train(cfg, cache, tmp_path / "run", progress=False)
    pre = tmp_path / "run" / "pretrain.pt"
    ckpt = torch.load(pre, weights_only=True)
    torch.manual_seed(123)
    ckpt["model"] = CrosSCLR(NTU, cfg.model, cfg.ssl, ("joint",)).state_dict()
    rnd = tmp_path / "random.pt"
    torch.save(ckpt, rnd)
    lin_cfg = LinearConfig(epochs=30, lr=0.3, batch_size=16)
    acc = {}
    for name, ck in (("pretrained", pre), ("random", rnd)):
        lin = run_linear(cache, ck, tmp_path / name, streams=None, cfg=lin_cfg, device="cpu")
        knn = run_knn(cache, ck, streams=None, ks=(10,), device="cpu")
        acc[name] = (lin["last"]["fused"]["top1"], knn["results"]["joint"]["10"]["top1"])
    assert acc["pretrained"][0] > acc["random"][0] + 10, acc
    assert acc["pretrained"][1] > acc["random"][1], acc


def test_standardized_probe_matches_a_numpy_batchnorm_and_folds_exactly():
    """MAMP's probe: heads see (f − mean) / sqrt(var + 1e-6) with the training features' statistics (numpy);
    the saved plain Linear gives the same logits on raw features."""
    import torch

    from training.protocols.linear import (
        CachedFeatures,
        LinearConfig,
        Standardized,
        feature_stats,
        train_linear,
    )

    rng = np.random.default_rng(0)
    f = torch.from_numpy((rng.normal(size=(40, 6)) * [1, 10, 0.1, 5, 2, 50] + [3, -2, 0, 40, 1, 7])
                         .astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, size=40))
    src = CachedFeatures({"joint": f}, y)
    mean, var = feature_stats(src, ["joint"])["joint"]
    np.testing.assert_allclose(mean.numpy(), f.numpy().astype(np.float64).mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), f.numpy().astype(np.float64).var(0), rtol=1e-5)
    head = torch.nn.Linear(6, 3)
    std = Standardized(head, mean, var)
    z = (f.numpy() - f.numpy().mean(0)) / np.sqrt(f.numpy().var(0) + 1e-6)
    ref = z @ head.weight.detach().numpy().T + head.bias.detach().numpy()
    np.testing.assert_allclose(std(f).detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(std.folded()(f).detach().numpy(), ref, rtol=1e-4, atol=1e-4)
    res = train_linear(src, src, 3, ["joint"], LinearConfig(epochs=3, lr=0.1, batch_size=8, standardize=True))
    assert isinstance(res.heads["joint"], torch.nn.Linear)
    logits = res.heads["joint"](f).argmax(1)
    assert res.last["joint"]["top1"] == pytest.approx(100.0 * float((logits == y).float().mean()))
