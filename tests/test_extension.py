"""Adding an encoder kind or a pretraining objective is one module plus its registration.

A toy encoder (an MLP over each frame's joints) and a toy objective (SimSiam: two augmented views, a
predictor, negative cosine similarity against a stopped gradient) are defined and registered inside this
test, then go through the public paths as a user types them: ``crossclr train`` with a TOML config naming
them, ``crossclr knn`` and ``crossclr linear`` on the checkpoint, ``crossclr export`` and
``crossclr evaluate`` on the exported model. Nothing outside this file knows them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossclr_infer.layouts import Layout
from tests.helpers import run_cli, write_cache
from training.encoders import EncoderKind, register_encoder, unregister_encoder
from training.encoders.heads import ProjectedEncoder, projector_head
from training.objectives.base import Objective, register_objective, unregister_objective
from training.views import compute_view

KIND = "toy-frame-mlp"
OBJECTIVE = "toy-simsiam"


class FrameMLP(ProjectedEncoder, nn.Module):
    """Each frame's joints through one hidden layer, averaged over frames and bodies; the projector and the
    head half of the interface come from the shared ``ProjectedEncoder``."""

    kind = KIND

    def __init__(self, layout: Layout, cfg, *, num_person: int, in_channels: int, frames: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.inp = nn.Linear(in_channels * layout.num_joints, cfg.hidden_dim)
        self.fc = projector_head(cfg)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        f = x.permute(0, 4, 2, 1, 3).reshape(n, m, t, c * v)  # (N, C, T, V, M) -> (N, M, T, C·V)
        return torch.relu(self.inp(f)).mean(dim=(1, 2))


class SimSiamModel(nn.Module):
    def __init__(self, encoders: dict[str, nn.Module], dim: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(encoders)
        self.predictor = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


class SimSiam(Objective):
    name = OBJECTIVE
    augmentation = "crossclr"
    encoder_groups = ("encoders",)
    steps = 0

    def build_model(self, layout: Layout, *, num_person: int, in_channels: int, frames: int) -> nn.Module:
        from training.encoders import build_encoder

        encoders = {v: build_encoder(layout, self.cfg.model, num_person=num_person, in_channels=in_channels,
                                     frames=frames) for v in self.cfg.streams}
        self.layout = layout
        return SimSiamModel(encoders, self.cfg.model.feature_dim)

    def step(self, net, x, y, *, stage, augment, generator) -> dict[str, torch.Tensor]:
        SimSiam.steps += 1
        model = getattr(net, "module", net)
        x1, x2 = augment(x, generator), augment(x, generator)
        losses = []
        for v, enc in model.encoders.items():
            z1, z2 = enc(compute_view(x1, v, self.layout)), enc(compute_view(x2, v, self.layout))
            p1, p2 = model.predictor(z1), model.predictor(z2)
            losses.append(-(F.cosine_similarity(p1, z2.detach()).mean()
                            + F.cosine_similarity(p2, z1.detach()).mean()) / 2)
        return {"loss": torch.stack(losses).sum()}


@pytest.fixture
def registered() -> Iterator[None]:
    register_encoder(EncoderKind(KIND, (KIND,), FrameMLP))
    register_objective(SimSiam)
    try:
        yield
    finally:
        unregister_objective(OBJECTIVE)
        unregister_encoder(KIND)


def test_a_toy_encoder_and_objective_train_evaluate_and_export_through_the_cli(
        registered: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = write_cache(tmp_path / "toy.h5", classes=3, train=6, val=3, frames=8)
    config = tmp_path / "toy.toml"
    config.write_text(f'objective = "{OBJECTIVE}"\nstreams = ["joint", "bone"]\nepochs = 2\nbatch_size = 6\n'
                      'lr = 0.05\nnum_workers = 0\npreload = true\ntensorboard = false\n'
                      f'[model]\ngraph = "{KIND}"\nhidden_dim = 16\nfeature_dim = 8\n')
    code, _, err = run_cli(["train", "--config", str(config), "--data", str(cache), "--out",
                            str(tmp_path / "run")], capsys)
    assert code == 0, err
    assert SimSiam.steps >= 2 * 3  # two epochs of three batches each went through the toy objective
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records if r["kind"] == "epoch"] == [OBJECTIVE, OBJECTIVE]

    from training.checkpoint import load_encoders

    encoders, meta = load_encoders(tmp_path / "run" / "pretrain.pt")
    assert sorted(encoders) == ["bone", "joint"] and all(isinstance(e, FrameMLP) for e in encoders.values())

    ckpt = str(tmp_path / "run" / "pretrain.pt")
    code, _, err = run_cli(["knn", "--data", str(cache), "--checkpoint", ckpt], capsys)
    assert code == 0, err
    code, _, err = run_cli(["linear", "--data", str(cache), "--checkpoint", ckpt, "--epochs", "2",
                            "--out", str(tmp_path / "lin")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["export", "--checkpoint", str(tmp_path / "lin" / "linear.pt"), "--out",
                            str(tmp_path / "onnx"), "--data", str(cache)], capsys)
    assert code == 0, err
    report_path = tmp_path / "report.json"
    code, _, err = run_cli(["evaluate", "--model", str(tmp_path / "onnx" / "ensemble.onnx"), "--data",
                            str(cache), "--split", "val", "--report", str(report_path), "--no-progress"],
                           capsys)
    assert code == 0, err
    report = json.loads(report_path.read_text())
    assert report["num_samples"] == 9 and report["streams"] == ["joint", "bone"]
    assert 0.0 <= report["results"]["fused"]["top1"] <= 100.0
