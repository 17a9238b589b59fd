"""MAMP in the trainer: the official schedule, bf16 decided by the CPU, exact resume, a cross-view stage
started from MAMP encoders, every protocol (linear, kNN, fine-tune, t-SNE) and the ONNX path with a
transformer, and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.hardware import CpuCaps
from crossclr_infer.layouts import layout_to_toml
from training.config import load_config
from training.encoders.transformer import SkeletonTransformer
from training.trainer import build_optimizer, build_scheduler, resolve_bf16, train

from .test_trainer import make_toy_cache

MAMP_OVERRIDES = {"batch_size": 8, "epochs": 2, "save_every": 1, "device": "cpu", "mallopt": False,
                  "tensorboard": False, "bf16": False, "warmup_epochs": 1}


@pytest.fixture(scope="module")
def toy16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_cache(tmp_path_factory.mktemp("toy16") / "toy16.h5", frames=16)


def mamp_cfg(**extra: object):
    return load_config("tiny-transformer", {**MAMP_OVERRIDES, **extra})


def official_lr(epoch: float, lr: float, min_lr: float, warmup: int, epochs: int) -> float:
    """maoyunyao/MAMP util/lr_sched.adjust_learning_rate, restated."""
    if epoch < warmup:
        return lr * epoch / warmup
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup) / (epochs - warmup)))


def test_presets_carry_the_official_values() -> None:
    for name, depth, tau in (("mamp-ntu60-xsub", 3, 0.8), ("mamp-ntu60-xview", 3, 0.8),
                             ("mamp-ntu120-xsub", 5, 0.75), ("mamp-ntu120-xset", 5, 0.75)):
        cfg = load_config(name)
        assert cfg.objective == "mamp" and cfg.optimizer == "adamw" and cfg.schedule == "cosine"
        assert (cfg.lr, cfg.min_lr, cfg.warmup_epochs, cfg.epochs) == (1e-3, 5e-4, 20, 400)
        assert cfg.weight_decay == 0.05
        assert cfg.betas == (0.9, 0.95) and cfg.weight_decay_on == "matrices" and cfg.augment == "mamp"
        m = cfg.model
        assert (m.graph, m.hidden_dim, m.depth, m.num_heads, m.mlp_ratio, m.t_patch) == (
            "transformer", 256, 8, 8, 4.0, 4)
        assert (cfg.mamp.mask_ratio, cfg.mamp.tau, cfg.mamp.decoder_depth, cfg.mamp.decoder_dim) == (
            0.9, tau, depth, 256)
    cross = load_config("mamp-crossview")
    assert cross.objective == "crossclr" and cross.cross_epoch == 0 and cross.model.graph == "transformer"


def test_cosine_schedule_follows_the_official_rule_per_step() -> None:
    cfg = load_config("mamp-ntu60-xsub", {"epochs": 10, "warmup_epochs": 2})
    model = torch.nn.Linear(4, 4)
    opt = build_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["betas"] == (0.9, 0.95)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]  # matrices decay, the bias not
    spe = 7
    sched = build_scheduler(opt, cfg, steps_per_epoch=spe)
    for it in range(10 * spe):
        want = official_lr(it / spe, 1e-3, 5e-4, 2, 10)
        assert opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-9, abs=1e-15), it
        opt.step()
        sched.step()


def test_bf16_follows_the_cpu() -> None:
    cpu = torch.device("cpu")
    native = CpuCaps(model="zen5", arch="x86_64", flags=frozenset({"avx2", "avx512f", "avx512_bf16"}))
    avx2 = CpuCaps(model="zen3", arch="x86_64", flags=frozenset({"avx2", "fma"}))
    capped = CpuCaps(model="spr", arch="x86_64", flags=frozenset({"avx512f", "amx_bf16"}), onednn_cap="AVX2")
    assert resolve_bf16("auto", cpu, native) is True
    assert resolve_bf16("auto", cpu, avx2) is False and resolve_bf16("auto", cpu, capped) is False
    assert resolve_bf16(False, cpu, native) is False and resolve_bf16(True, cpu, native) is True
    for caps in (avx2, capped):
        with pytest.raises(CrossclrError, match="emulated.*--no-bf16"):
            resolve_bf16(True, cpu, caps)
    assert load_config("tiny").bf16 == "auto"


def test_mamp_training_resumes_exactly_and_logs(toy16: Path, tmp_path: Path) -> None:
    cfg = mamp_cfg(deterministic=True)
    full = train(cfg, toy16, tmp_path / "full", progress=False)
    train(cfg, toy16, tmp_path / "cut", progress=False, stop_after_epochs=1)
    train(cfg, toy16, tmp_path / "cut", resume=True, progress=False)
    a = torch.load(tmp_path / "full" / "pretrain.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "pretrain.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert any(k.startswith("decoders.joint.") for k in a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["scheduler"] == b["scheduler"]
    recs = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["stage"] for r in epochs] == ["mamp", "mamp"] and all(math.isfinite(r["loss"]) for r in epochs)
    steps = [r for r in recs if r["kind"] == "step"]
    assert steps[0]["lr"] == 0.0 and steps[-1]["lr"] > 0  # warm-up from 0
    # weights moved
    fresh = train(mamp_cfg(epochs=1, deterministic=True), toy16, tmp_path / "one", progress=False)
    enc_a, enc_1 = full.model.encoders["joint"], fresh.model.encoders["joint"]
    assert isinstance(enc_a, SkeletonTransformer)
    assert not torch.equal(enc_a.blocks[0].attn.qkv.weight, enc_1.blocks[0].attn.qkv.weight)


def test_cross_view_stage_starts_from_mamp_encoders_and_every_protocol_runs(toy16: Path, tmp_path: Path
                                                                             ) -> None:
    from training.checkpoint import load_encoders
    from training.config import config_to_dict

    stage1 = train(mamp_cfg(streams=["joint", "motion", "bone"], epochs=1), toy16, tmp_path / "mamp",
                   progress=False)
    cfg2 = load_config("tiny-transformer-crossview", {
        "init_from": str(tmp_path / "mamp" / "pretrain.pt"), "epochs": 1, "batch_size": 8,
        "ssl.queue_size": 16, "device": "cpu", "mallopt": False, "tensorboard": False, "bf16": False})
    # stage 2 at step 0 holds stage 1's encoders (heads new): check with a zero-step run
    from training.data import open_train_data
    from training.trainer import build_model, init_encoders_from

    data = open_train_data(toy16)
    model = build_model(cfg2, data)
    init_encoders_from(model, cfg2, layout_to_toml(data.layout))
    data.cache.close()
    for v in ("joint", "motion", "bone"):
        ref = stage1.model.encoders[v].state_dict()
        for group in (model.encoders_q, model.encoders_k):
            got = group[v].state_dict()
            for k, t in ref.items():
                assert torch.equal(got[k], t), (v, k)
            assert any(k.startswith("fc.") for k in got)  # the contrastive head added at this stage
    res = train(cfg2, toy16, tmp_path / "cross", progress=False)
    assert [r["stage"] for r in res.epoch_records] == ["cross"]
    encs, meta = load_encoders(tmp_path / "cross" / "pretrain.pt")
    assert set(encs) == {"joint", "motion", "bone"} and config_to_dict(meta["train_config"])["init_from"]

    # linear / knn / finetune / tsne / export with transformer encoders, through the CLI
    from click.testing import CliRunner

    import cli

    runner = CliRunner()
    ckpt = str(tmp_path / "cross" / "pretrain.pt")
    r = runner.invoke(cli.crossclr, ["linear", "--data", str(toy16), "--checkpoint", ckpt, "--out",
                                 str(tmp_path / "lin"), "--epochs", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.crossclr, ["knn", "--data", str(toy16), "--checkpoint", str(tmp_path / "mamp" /
                                                                                    "pretrain.pt")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.crossclr, ["finetune", "--data", str(toy16), "--checkpoint", ckpt, "--out",
                                 str(tmp_path / "ft"), "--epochs", "1", "--label-fraction", "0.5"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli.crossclr, ["tsne", "--data", str(toy16), "--checkpoint", ckpt, "--out",
                                 str(tmp_path / "tsne"), "--perplexity", "5"])
    assert r.exit_code == 0, r.output
    for v in ("joint", "motion", "bone"):
        assert (tmp_path / "tsne" / f"tsne_{v}.png").stat().st_size > 0, v
    r = runner.invoke(cli.crossclr, ["export", "--checkpoint", str(tmp_path / "lin" / "linear.pt"), "--out",
                                 str(tmp_path / "onnx"), "--data", str(toy16)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "onnx" / "ensemble.onnx").is_file()
    from crossclr_infer.cache import open_cache
    from crossclr_infer.session import ModelSession

    sess = ModelSession(tmp_path / "onnx" / "ensemble.onnx", ["cpu"])
    with open_cache(toy16) as c:
        x = c.split("val").read_all()
    out = sess.run(x, ["logits"])["logits"]
    assert out.shape == (len(x), 3) and np.isfinite(out).all()


def test_transformer_bad_input_is_one_line(toy16: Path, tmp_path: Path) -> None:
    odd = make_toy_cache(tmp_path / "odd.h5", frames=18)
    with pytest.raises(CrossclrError, match=r"odd\.h5.*t_patch 4"):
        train(mamp_cfg(), odd, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "pretrain.pt").exists()
    kin = make_toy_cache(tmp_path / "kin.h5", frames=16, layout="kinect-v1")
    train(mamp_cfg(epochs=1), toy16, tmp_path / "ntu", progress=False)
    with pytest.raises(CrossclrError, match="layout"):
        train(load_config("tiny-transformer-crossview", {
            "init_from": str(tmp_path / "ntu" / "pretrain.pt"), "streams": ["joint"], "epochs": 1,
            "batch_size": 8, "ssl.queue_size": 16, "device": "cpu", "tensorboard": False, "bf16": False}),
            kin, tmp_path / "bad2", progress=False)
    with pytest.raises(CrossclrError, match="transformer"):
        load_config("tiny", {"objective": "mamp"})


def test_import_official_mamp_checkpoint_gives_identical_embeddings(tmp_path: Path) -> None:
    """A file laid out like maoyunyao/MAMP's ({"model": encoder + decoder_* + mask_token}) imports through the
    CLI; the imported encoder embeds exactly like the model whose weights were written."""
    from click.testing import CliRunner

    import cli
    from crossclr_infer.layouts import get_layout
    from training.checkpoint import load_encoders
    from training.encoders.config import EncoderConfig
    from training.objectives.mamp import MAMP, MAMPConfig

    torch.manual_seed(3)
    cfg = EncoderConfig(graph="transformer", projector="none", hidden_dim=32, depth=2, num_heads=8,
                        mlp_ratio=4.0, t_patch=4)
    src = MAMP(get_layout("ntu-rgb+d"), cfg, MAMPConfig(decoder_depth=1, decoder_dim=32, decoder_heads=8),
               views=("joint",), frames=16)
    official = {k.removeprefix("encoders.joint."): v for k, v in src.state_dict().items()
                if k.startswith("encoders.joint.")}
    official.update({k.removeprefix("decoders.joint."): v for k, v in src.state_dict().items()
                     if k.startswith("decoders.joint.")})
    assert "mask_token" in official and "blocks.1.attn.qkv.weight" in official
    torch.save({"model": official, "epoch": 399}, tmp_path / "mamp_official.pth")
    r = CliRunner().invoke(cli.crossclr, ["import-official", str(tmp_path / "mamp_official.pth"), "--out",
                                          str(tmp_path / "imported.pt")])
    assert r.exit_code == 0, r.output
    encs, meta = load_encoders(tmp_path / "imported.pt")
    assert meta["frames"] == 16 and meta["preprocess"]["mode"] == "mamp"
    x = torch.randn(3, 3, 16, 25, 2)
    src.eval()
    with torch.no_grad():
        want = src.encoders["joint"].forward_features(x)
        got = encs["joint"].forward_features(x)
    assert torch.equal(want, got)
    ck = torch.load(tmp_path / "imported.pt", weights_only=True)
    assert any("decoder" in n for n in ck["import_notes"])
    # another architecture, and a MAMP file for another skeleton, are refused in one line
    bad = dict(official)
    bad["pos_embed"] = torch.zeros(1, 1, 20, 32)
    torch.save({"model": bad}, tmp_path / "bad.pth")
    from training.importers import convert_official_file

    with pytest.raises(CrossclrError, match=r"bad\.pth: .*pos_embed"):
        convert_official_file(tmp_path / "bad.pth", tmp_path / "bad.pt")
    assert not (tmp_path / "bad.pt").exists()
    with pytest.raises(CrossclrError, match="25 joints but layout 'kinect-v1' has 20"):
        convert_official_file(tmp_path / "mamp_official.pth", tmp_path / "kin.pt", layout="kinect-v1")
