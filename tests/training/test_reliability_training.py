"""Training refuses or explains what it does, in one line, and leaves nothing half-written: forged
checkpoints, NaN in the cache, --resume without a run or on another cache, finished runs, a cross-view stage
that never starts, flags blamed for their own values, stale temp files of killed writes; and the epoch means
do not depend on the progress bar."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.fileio import HOST_TAG
from tests.helpers import cli_error, run_cli
from tests.training.test_trainer import _train_args, make_toy_cache, tiny_cfg
from training.checkpoint import load_checkpoint
from training.config import load_config
from training.trainer import train


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_cache(tmp_path_factory.mktemp("toy") / "toy.h5")


@pytest.fixture(scope="module")
def one_epoch_run(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-epoch run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("run") / "r"
    train(tiny_cfg(epochs=1), toy, out, progress=False)
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy_run(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        if p.is_file():
            (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _resume_args(data: Path, out: Path, *extra: str) -> list[str]:
    """``crossclr train --resume`` with the run's own config (from its checkpoint)."""
    return ["train", "--data", str(data), "--out", str(out), "--resume", "--device", "cpu", "--no-progress",
            *extra]


class _Payload:
    """Unpickling this would create the folder ``marker``: proof that the file's code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


# ------------------------------------------------------------------------- item 2: forged checkpoints


def test_forged_checkpoint_is_refused_unread_without_the_weights_only_advice(
        toy: Path, one_epoch_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "payload-ran"
    run = _copy_run(one_epoch_run, tmp_path / "run")
    ckpt = torch.load(run / "pretrain.pt", weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, run / "pretrain.pt")
    before = _snapshot(tmp_path)
    for argv, named in ((_train_args(toy, run, "--resume", "--epochs", "2"), run / "pretrain.pt"),
                        (_resume_args(toy, run, "--epochs", "2"), run / "pretrain.pt"),
                        (["import-official", str(run / "pretrain.pt"), "--out", str(tmp_path / "conv.pt")],
                         run / "pretrain.pt")):
        err = cli_error(argv, capsys)
        assert err.startswith(f"error: {named}: not a trusted checkpoint")
        assert "posix.mkdir" in err and "weights_only" not in err and "arbitrary code" not in err
        assert "expected" in err
    assert not marker.exists()
    assert _snapshot(tmp_path) == before  # nothing written, nothing overwritten
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"garbage that the weights-only unpickler refuses")
    with pytest.raises(CrossclrError) as e:
        load_checkpoint(junk)
    assert str(e.value).startswith(f"{junk}: not a readable checkpoint (")
    assert "weights_only" not in str(e.value)


# ------------------------------------------------------------------------ item 13: NaN in the cache


def _poisoned_cache(path: Path, sample: int) -> tuple[Path, str]:
    make_toy_cache(path)
    with h5py.File(path, "a") as f:
        f["train"]["data"][sample, 1, 2, 3, 0] = np.nan
        name = f["train"]["name"][sample]
    return path, name.decode() if isinstance(name, bytes) else str(name)


def test_nan_in_a_preloaded_cache_is_blamed_on_the_sample(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    cache, name = _poisoned_cache(tmp_path / "nan.h5", 5)
    out = tmp_path / "run"
    err = cli_error(_train_args(cache, out), capsys)  # the tiny preset preloads the split
    assert err.startswith(f"error: {cache}: sample {name!r} (split 'train', index 5)") and "NaN" in err
    assert "learning rate" not in err and "bf16" not in err
    assert not out.exists()


def test_nan_read_per_batch_is_blamed_on_the_sample_not_the_learning_rate(tmp_path: Path) -> None:
    cache, name = _poisoned_cache(tmp_path / "nan.h5", 7)
    out = tmp_path / "run"
    with pytest.raises(CrossclrError) as e:
        train(tiny_cfg(preload=False), cache, out, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{cache}: sample {name!r} (split 'train', index 7)")
    assert "learning rate" not in msg
    assert not (out / "pretrain.pt").exists() and not [p for p in out.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------- item 14: resume, finished runs, stages


def test_resume_without_a_checkpoint_is_refused(toy: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "typo"
    err = cli_error(_train_args(toy, out, "--resume"), capsys)
    assert err.startswith("error: --resume:") and str(out / "pretrain.pt") in err
    assert "leave out --resume" in err
    assert list(tmp_path.iterdir()) == []


def test_resume_of_a_finished_run_says_so_and_writes_nothing(toy: Path, one_epoch_run: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    before = _snapshot(run)
    code, out, err = run_cli(_resume_args(toy, run), capsys)
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{run / 'pretrain.pt'}: the run already has 1 epochs")
    assert "nothing to train" in lines[0] and "--epochs" in lines[0]
    assert _snapshot(run) == before


def test_resume_on_another_cache_is_refused(toy: Path, one_epoch_run: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    run = _copy_run(one_epoch_run, tmp_path / "run")
    other = make_toy_cache(tmp_path / "other.h5", per_class=10, seed=3)
    before = _snapshot(run)
    err = cli_error(_resume_args(other, run, "--epochs", "2"), capsys)
    assert err.startswith(f"error: --data {other}: not the cache {run / 'pretrain.pt'} was trained on")
    assert str(toy.resolve()) in err and "30 samples" in err
    assert _snapshot(run) == before
    # the same samples at another path (a moved cache) resume, with a note
    moved = tmp_path / "moved.h5"
    moved.write_bytes(toy.read_bytes())
    res = train(tiny_cfg(epochs=2), moved, run, resume=True, progress=False)
    assert res.epochs_done == 2


def test_a_cross_view_stage_that_never_starts_is_said_in_one_line(toy: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="training.trainer"):
        train(tiny_cfg(epochs=1, cross_epoch=1), toy, tmp_path / "run", progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "\n" not in warned[0]
    assert warned[0].startswith("cross_epoch 1 >= epochs 1: the cross-view stage never starts")
    assert "--cross-epoch" in warned[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.trainer"):  # one stream: nothing to say
        train(tiny_cfg(epochs=1, cross_epoch=1, streams=["joint"]), toy, tmp_path / "one", progress=False)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -------------------------------------------------------------------- item 18: flags blamed for values


@pytest.mark.parametrize(("flags", "blamed"), [(["--epochs", "0"], "--epochs: epochs = 0"),
                                               (["--cross-epoch", "-1"], "--cross-epoch: cross_epoch = -1"),
                                               (["--lr", "0"], "--lr: lr = 0")])
def test_bad_flag_values_blame_the_flag_not_the_preset(toy: Path, tmp_path: Path, flags: list[str],
                                                       blamed: str, capsys: pytest.CaptureFixture) -> None:
    err = cli_error(_train_args(toy, tmp_path / "run", *flags), capsys)
    assert err.startswith(f"error: {blamed}") and "tiny.toml" not in err
    assert list(tmp_path.iterdir()) == []


def test_bad_file_values_still_blame_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = 0\n")
    with pytest.raises(CrossclrError, match=rf"^{bad}: epochs = 0"):
        load_config(bad, {"lr": 0.1})
    with pytest.raises(CrossclrError, match=r"^override model.base_channels: model.base_channels = 'x'"):
        load_config("tiny", {"model.base_channels": "x"})


# --------------------------------------------------------------- item 16: stale temp files of kill -9


def test_a_checkpoint_temp_left_by_a_killed_run_is_removed_by_the_next_save(toy: Path,
                                                                               tmp_path: Path) -> None:
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    out.mkdir()
    stale = out / f".pretrain.pt.{dead.pid}-{HOST_TAG}.k2j3h4l5.tmp"  # 0 bytes, as kill -9 leaves it
    stale.write_bytes(b"")
    live = out / f".pretrain.pt.{os.getpid()}-{HOST_TAG}.a1b2c3d4.tmp"  # a writer that is still running
    live.write_bytes(b"")
    train(tiny_cfg(epochs=1), toy, out, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert stale.name not in names and live.name in names and "pretrain.pt" in names


# --------------------------------------------------------------------- epoch means, every step


def test_epoch_mean_is_over_every_step_with_or_without_the_bar(toy: Path, tmp_path: Path) -> None:
    def epoch_and_steps(name: str, **kw: object) -> tuple[dict, list[dict]]:
        train(tiny_cfg(epochs=1, deterministic=True, **kw.pop("cfg", {})), toy, tmp_path / name, **kw)
        rows = [json.loads(s) for s in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return [r for r in rows if r["kind"] == "epoch"][0], [r for r in rows if r["kind"] == "step"]

    every, steps = epoch_and_steps("every", progress=False)
    assert len(steps) == 3
    sparse, sparse_steps = epoch_and_steps("sparse", progress=False, cfg={"log_every": 2})
    bar, _ = epoch_and_steps("bar", progress=True, cfg={"log_every": 2})
    assert len(sparse_steps) == 1  # only step 2 logged, yet the mean covers steps 1-3
    for key in ("loss", "loss_joint", "loss_motion", "loss_bone"):
        mean = sum(r[key] for r in steps) / len(steps)
        assert every[key] == pytest.approx(mean, rel=1e-6)
        assert sparse[key] == bar[key] == every[key]


def test_a_diverging_run_on_finite_data_blames_the_learning_rate(toy: Path, tmp_path: Path) -> None:
    with pytest.raises(CrossclrError) as e:
        train(tiny_cfg(epochs=1, lr=1e30, log_every=2), toy, tmp_path / "run", progress=False)
    msg = str(e.value)
    assert msg.startswith("loss is ") and "training samples are finite" in msg and "learning rate" in msg
    assert not (tmp_path / "run" / "pretrain.pt").exists()
