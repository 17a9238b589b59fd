"""Pretraining loop: exact resume, checkpoint contents, encoder loading, metrics, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import cli
from crossclr_infer.cache import CacheWriter
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from training.checkpoint import PRETRAIN_FORMAT, load_encoders
from training.config import load_config
from training.trainer import apply_mallopt, build_optimizer, build_scheduler, param_groups, train

TINY_OVERRIDES = {
    "model.base_channels": 4, "model.hidden_dim": 16, "model.feature_dim": 8, "model.stage_blocks": [1, 1, 1],
    "model.dropout": 0.2, "ssl.queue_size": 24, "ssl.momentum": 0.9, "batch_size": 8, "epochs": 2,
    "cross_epoch": 1, "save_every": 1, "num_workers": 0, "lr_steps": [1], "device": "cpu", "mallopt": False,
    "tensorboard": False,
}


def make_toy_cache(path: Path, *, per_class: int = 8, classes: int = 3, layout: str = "ntu-rgb+d",
                   seed: int = 0, frames: int = 12) -> Path:
    """A small cache of class-dependent oscillations (built with the project's CacheWriter)."""
    lay = get_layout(layout)
    v = lay.num_joints
    rng = np.random.default_rng(seed)
    base = rng.normal(scale=0.3, size=(3, 1, v, 1)).astype(np.float32)
    t = np.arange(frames)[None, :, None, None]
    with CacheWriter(path, layout=lay, class_names=[f"class{c}" for c in range(classes)], benchmark="toy",
                     frames=frames, num_person=2, preprocess={"mode": "none", "frames": frames}) as w:
        for split, n in (("train", per_class), ("val", max(1, per_class // 2))):
            for c in range(classes):
                moving = (np.arange(v) % (c + 2) == 0)[None, None, :, None]
                for i in range(n):
                    x = base + 0.5 * np.sin(2 * np.pi * (c + 1) * t / frames + rng.uniform(0, 6)) * moving
                    x = x + rng.normal(scale=0.05, size=(3, frames, v, 2))
                    x[..., 1] = 0.0  # one body
                    w.add(split, x.astype(np.float32), c, f"S001C001P{i + 1:03d}R001A{c + 1:03d}", frames)
    return path


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_cache(tmp_path_factory.mktemp("toy") / "toy.h5")


def tiny_cfg(**extra: object):
    return load_config("tiny", {**TINY_OVERRIDES, **extra})


def _all_tensors(obj: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_all_tensors(v, f"{prefix}.{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_all_tensors(v, f"{prefix}[{i}]"))
    return out


def test_resume_gives_identical_weights(toy_cache: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(deterministic=True)
    full = train(cfg, toy_cache, tmp_path / "full", progress=False)
    assert full.epochs_done == 2
    killed = train(cfg, toy_cache, tmp_path / "cut", progress=False, stop_after_epochs=1)
    assert killed.epochs_done == 1
    assert torch.load(tmp_path / "cut" / "pretrain.pt", weights_only=True)["epoch"] == 1
    resumed = train(cfg, toy_cache, tmp_path / "cut", resume=True, progress=False)
    assert resumed.epochs_done == 2
    a = torch.load(tmp_path / "full" / "pretrain.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "pretrain.pt", weights_only=True)
    ta, tb = _all_tensors({k: a[k] for k in ("model", "optimizer", "scheduler", "rng")}), _all_tensors(
        {k: b[k] for k in ("model", "optimizer", "scheduler", "rng")})
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    assert a["scheduler"] == b["scheduler"]
    # the run really trained (weights moved) and the cross-view stage ran in epoch 2
    fresh = train(tiny_cfg(epochs=1, deterministic=True), toy_cache, tmp_path / "one", progress=False)
    assert not torch.equal(fresh.model.encoders_q["joint"].fc[0].weight,
                           full.model.encoders_q["joint"].fc[0].weight)
    epochs = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if r["kind"] == "epoch"] == [1, 2]  # resumed log has no duplicates
    assert [r["stage"] for r in epochs if r["kind"] == "epoch"] == ["single", "cross"]


def test_checkpoint_contents_and_load_encoders(toy_cache: Path, tmp_path: Path) -> None:
    res = train(tiny_cfg(epochs=1), toy_cache, tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "pretrain.pt", weights_only=True)
    assert ckpt["format"] == PRETRAIN_FORMAT and ckpt["epoch"] == 1
    assert ckpt["streams"] == ["joint", "motion", "bone"] and ckpt["num_person"] == 2 and ckpt["frames"] == 12
    assert ckpt["class_names"] == ["class0", "class1", "class2"]
    assert ckpt["preprocess"] == {"mode": "none", "frames": 12}
    assert "[layout]" in ckpt["layout"] or "joints" in ckpt["layout"]
    assert ckpt["config"]["model"]["base_channels"] == 4
    assert {"python", "numpy", "torch", "augment"} <= set(ckpt["rng"][0])
    assert any(k.startswith("queue.") for k in ckpt["model"])
    encoders, meta = load_encoders(tmp_path / "run" / "pretrain.pt", ["joint", "bone"])
    assert set(encoders) == {"joint", "bone"} and meta["frames"] == 12 and meta["epoch"] == 1
    x = torch.randn(3, 3, 12, 25, 2)
    res.model.eval()
    for view, enc in encoders.items():
        assert not enc.training
        torch.testing.assert_close(enc.forward_features(x), res.model.encoders_q[view].forward_features(x),
                                   rtol=0, atol=0)
    with pytest.raises(CrossclrError, match="accel"):
        load_encoders(tmp_path / "run" / "pretrain.pt", ["accel"])
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if r["kind"] == "step"]
    assert len(steps) == 3  # 24 samples / batch 8
    for r in steps:
        assert {"loss", "loss_joint", "loss_motion", "loss_bone", "lr", "samples_per_s"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_joint"] + r["loss_motion"] + r["loss_bone"], rel=1e-5)
        assert "mining_precision" in r


def test_load_encoders_refuses_other_architecture(toy_cache: Path, tmp_path: Path) -> None:
    train(tiny_cfg(epochs=1), toy_cache, tmp_path / "run", progress=False)
    p = tmp_path / "run" / "pretrain.pt"
    ckpt = torch.load(p, weights_only=True)
    ckpt["config"]["model"]["base_channels"] = 8  # config now claims a wider encoder than the weights
    torch.save(ckpt, tmp_path / "other.pt")
    with pytest.raises(CrossclrError, match="does not match the model architecture") as e:
        load_encoders(tmp_path / "other.pt")
    assert "\n" not in str(e.value)
    torch.save({"encoder_q.fc.weight": torch.zeros(2, 2)}, tmp_path / "official.pt")
    with pytest.raises(CrossclrError, match="import-official"):
        load_encoders(tmp_path / "official.pt")


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err and "\n" not in err and "Traceback" not in err, err
    return err


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--config", "tiny", "--out", str(out), "--epochs", "1",
            "--batch-size", "8", "--device", "cpu", "--no-progress", *extra]


def test_bad_inputs_are_one_line_errors(toy_cache: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture) -> None:
    # a cache whose skeleton does not fit the chosen graph
    kinect = make_toy_cache(tmp_path / "kinect.h5", layout="kinect-v1", per_class=4)
    cfg_path = tmp_path / "ntu.toml"
    cfg_path.write_text('layout = "ntu-rgb+d"\nepochs = 1\nbatch_size = 4\nnum_workers = 0\n'
                        '[model]\nbase_channels = 4\nhidden_dim = 16\nfeature_dim = 8\n'
                        '[ssl]\nqueue_size = 16\n')
    err = _one_line_error(["train", "--data", str(kinect), "--config", str(cfg_path), "--out",
                           str(tmp_path / "k"), "--no-progress"], capsys)
    assert "kinect" in err and "does not fit" in err
    # an empty cache
    empty = make_toy_cache(tmp_path / "empty.h5", per_class=2)
    with h5py.File(empty, "a") as f:
        for key in ("data", "label", "name", "length"):
            f["train"][key].resize(0, axis=0)
    err = _one_line_error(_train_args(empty, tmp_path / "e"), capsys)
    assert "empty" in err and str(empty) in err
    # fewer samples than one batch
    err = _one_line_error(_train_args(toy_cache, tmp_path / "b", "--batch-size", "100"), capsys)
    assert "fewer than one batch" in err
    # unknown key and wrong type in a config file
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 2\n[model]\nwidht = 3\n")
    err = _one_line_error(["train", "--data", str(toy_cache), "--config", str(bad), "--out",
                           str(tmp_path / "u")], capsys)
    assert "model.widht" in err and str(bad) in err
    bad.write_text('epochs = "many"\n')
    err = _one_line_error(["train", "--data", str(toy_cache), "--config", str(bad), "--out",
                           str(tmp_path / "u")], capsys)
    assert "epochs" in err and "expected int" in err
    # a missing cache, and a file that is not a cache
    err = _one_line_error(_train_args(tmp_path / "nope.h5", tmp_path / "n"), capsys)
    assert "nope.h5" in err
    # resuming with a different architecture; overwriting a run without --resume
    out = tmp_path / "r"
    cli.main(_train_args(toy_cache, out))  # succeeds: no SystemExit
    capsys.readouterr()
    err = _one_line_error(_train_args(toy_cache, out), capsys)
    assert "already exists" in err and "--resume" in err
    err = _one_line_error(_train_args(toy_cache, out, "--resume", "--streams", "joint,motion"), capsys)
    assert "different architecture" in err


def test_cli_resume_without_config_uses_checkpoint_config(toy_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(tiny_cfg(epochs=1), toy_cache, out, progress=False)
    r = subprocess.run([sys.executable, "-m", "cli", "train", "--data", str(toy_cache), "--out", str(out),
                        "--resume", "--epochs", "2", "--no-progress"], capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(cli.__file__).parent)
    assert r.returncode == 0, r.stderr
    ckpt = torch.load(out / "pretrain.pt", weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["config"]["model"]["base_channels"] == 4
    assert ckpt["config"]["epochs"] == 2


def test_optimizer_and_schedule_follow_config(toy_cache: Path) -> None:
    from training.objectives.crossclr import CrosSCLR

    cfg = load_config("crossclr-ntu60-xsub", {"ssl.queue_size": 16})
    model = CrosSCLR(get_layout("ntu-rgb+d"), cfg.model, cfg.ssl, views=cfg.streams)
    opt = build_optimizer(model, cfg)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 1e-4  # official: all params
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is False
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for p in opt.param_groups[0]["params"]) == n_trainable
    groups = param_groups(model, load_config("crossclr-ntu60-xsub", {"weight_decay_on": "matrices"}))
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and all(p.dim() < 2 for p in groups[1]["params"])
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["params"]
    sched = build_scheduler(opt, cfg)
    lrs = []
    for _ in range(300):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[249] == pytest.approx(0.1) and lrs[250] == pytest.approx(0.01)
    assert lrs[299] == pytest.approx(0.01)


def test_mallopt_applies_on_glibc() -> None:
    import platform

    applied = apply_mallopt()
    assert applied == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_import_official_pretrain_and_linear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.training.test_official_import import official_3view_pretrain, official_encoder
    from training.protocols.io import load_linear

    sd, mods = official_3view_pretrain()
    src = tmp_path / "official.pt"
    torch.save(sd, src)
    out = tmp_path / "imported.pt"
    cli.main(["import-official", str(src), "--out", str(out)])
    encoders, meta = load_encoders(out)
    assert meta["streams"] == ["joint", "motion", "bone"] and meta["frames"] == 50
    x = torch.randn(2, 3, 50, 25, 2)
    for view, name in (("joint", "encoder_q"), ("motion", "encoder_q_motion"), ("bone", "encoder_q_bone")):
        torch.testing.assert_close(encoders[view].forward_features(x), mods[name].forward_features(x),
                                   rtol=0, atol=0)
    ckpt = torch.load(out, weights_only=True)
    torch.testing.assert_close(ckpt["model"]["queue.keys_bone"], sd["queue_bone"].t())

    heads = {s: official_encoder(10 + i, num_class=60) for i, s in enumerate(("", "_motion", "_bone"))}
    lin = {f"encoder_q{s}.{n}": t for s, m in heads.items() for n, t in m.state_dict().items()}
    torch.save(lin, tmp_path / "linear_official.pt")
    cli.main(["import-official", str(tmp_path / "linear_official.pt"), "--out", str(tmp_path / "linear.pt")])
    encs, hs, lmeta = load_linear(tmp_path / "linear.pt")
    assert lmeta["class_names"][0] == "drink water" and len(lmeta["class_names"]) == 60
    torch.testing.assert_close(hs["motion"](encs["motion"].forward_features(x)), heads["_motion"](x),
                               rtol=0, atol=0)

    sd["encoder_q.extra_thing"] = torch.zeros(1)
    torch.save(sd, src)
    err = _one_line_error(["import-official", str(src), "--out", str(tmp_path / "bad.pt")], capsys)
    assert "extra_thing" in err and not (tmp_path / "bad.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    err = _one_line_error(["import-official", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "b.pt")],
                          capsys)
    assert "junk.pt" in err
