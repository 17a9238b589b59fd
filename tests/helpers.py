"""Helpers shared by several test modules (plain functions; torch is imported inside them).

- tiny models and hand-made caches for the evaluation protocols (linear, kNN, fine-tuning, plots),
- CLI runners: ``run_cli`` (exit code, stdout, stderr) and ``cli_error`` (asserts a one-line error).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from crossclr_infer.cache import CacheWriter, open_cache
from crossclr_infer.layouts import BUILTIN_LAYOUTS, layout_to_toml

NTU = BUILTIN_LAYOUTS["ntu-rgb+d"]
STREAMS3 = ("joint", "motion", "bone")


def tiny_encoder_config():
    from training.encoders.config import EncoderConfig

    return EncoderConfig(
        base_channels=8, hidden_dim=32, feature_dim=16, stage_blocks=(1, 1, 1), temporal_kernel=3
    )


def write_cache(
    path: Path,
    *,
    classes: int = 4,
    train: int = 8,
    val: int = 4,
    frames: int = 16,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    noise: float = 0.3,
) -> Path:
    """A small NTU-layout cache whose classes differ by a mean pose and a temporal frequency."""
    rng = np.random.default_rng(seed)
    names = list(class_names) if class_names is not None else [f"class {c}" for c in range(classes)]
    pose = rng.normal(size=(classes, 3, 1, NTU.num_joints, 1)).astype(np.float32)
    t = np.linspace(0, 2 * np.pi, frames, dtype=np.float32)[None, :, None, None]
    with CacheWriter(
        path,
        layout=NTU,
        class_names=names,
        benchmark="test",
        frames=frames,
        num_person=2,
        preprocess={"mode": "none", "frames": frames},
    ) as w:
        for split, n in (("train", train), ("val", val)):
            for i in range(n):
                for c in range(classes):
                    x = (
                        pose[c]
                        + 0.5 * np.sin(t * (c + 1))
                        + noise * rng.normal(size=(3, frames, NTU.num_joints, 2))
                    )
                    w.add(split, x.astype(np.float32), c, f"{split}-{c}-{i}", frames)
    return path


def make_model(streams: Sequence[str] = STREAMS3, seed: int = 0):
    import torch

    from training.objectives.crossclr import CrosSCLR, SSLConfig

    torch.manual_seed(seed)
    return CrosSCLR(NTU, tiny_encoder_config(), SSLConfig(queue_size=64), tuple(streams))


def momentum_stepped_copy(m):
    """A copy of a CrosSCLR model with every key encoder moved one momentum step towards its query encoder:
    the state its forward pass computes with (the reference of the loss tests)."""
    import copy

    import torch

    ref = copy.deepcopy(m)
    with torch.no_grad():
        for v in ref.views:
            for pk, pq in zip(ref.encoders_k[v].parameters(), ref.encoders_q[v].parameters(), strict=True):
                pk.copy_(ref.ssl_cfg.momentum * pk + (1 - ref.ssl_cfg.momentum) * pq)
    return ref


def write_pretrain(
    path: Path,
    cache: Path,
    model=None,
    streams: Sequence[str] = STREAMS3,
    *,
    perturb_bn: bool = True,
    seed: int = 0,
) -> Path:
    """A crossclr-pretrain-v1 checkpoint of a (random unless given) CrosSCLR model.

    With ``perturb_bn`` the BN running statistics get non-default values, so any update is visible."""
    import torch

    from training.checkpoint import atomic_torch_save, make_checkpoint
    from training.config import TrainConfig, config_to_dict
    from training.objectives.crossclr import SSLConfig

    model = model if model is not None else make_model(streams, seed)
    if perturb_bn:
        g = torch.Generator().manual_seed(seed + 100)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                    m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                    m.num_batches_tracked.fill_(7)
    cfg = TrainConfig(
        model=tiny_encoder_config(),
        ssl=SSLConfig(queue_size=64),
        streams=tuple(streams),
        epochs=1,
        cross_epoch=1,
    )
    with open_cache(cache) as c:
        ckpt = make_checkpoint(
            model_state=model.state_dict(),
            optimizer_state=None,
            scheduler_state=None,
            epoch=1,
            rng=[],
            config=config_to_dict(cfg),
            streams=list(streams),
            layout_toml=layout_to_toml(c.layout),
            num_person=c.num_person,
            frames=c.frames,
            class_names=c.class_names,
            preprocess=c.preprocess,
        )
    atomic_torch_save(ckpt, path)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``crossclr ARGS`` through ``cli.main``: (exit code, stdout, stderr)."""
    import cli

    capsys.readouterr()
    try:
        cli.main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``crossclr ARGV``, assert a non-zero exit with a one-line stderr, return that line."""
    import cli

    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def protocol_args(command: str, data: Path, checkpoint: Path, *rest: str) -> list[str]:
    """``[command, --data DATA, --checkpoint CKPT, *rest]`` for linear / knn / finetune."""
    return [command, "--data", str(data), "--checkpoint", str(checkpoint), *rest]
