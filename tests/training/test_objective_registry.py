"""Objectives are registered units: a toy objective registered inside the test trains through the public
``training.trainer.train`` and its encoders load back through ``training.checkpoint.load_encoders``; the
configuration accepts exactly the registered names; the loop never compares objective names."""

from __future__ import annotations

import ast
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from training.checkpoint import load_encoders
from training.config import config_from_dict, config_to_dict, load_config
from training.encoders import build_encoder
from training.objectives import (
    Objective,
    objective_class,
    objective_names,
    register_objective,
    unregister_objective,
)
from training.trainer import augmentation_for, train
from training.views import compute_view

from .test_trainer import TINY_OVERRIDES, make_toy_cache

TOY = "toy-test"
TOY_WARNING = "toy-test: a note about this configuration"
TRAINER = Path(__file__).resolve().parents[2] / "training" / "trainer.py"


class ToyModel(nn.Module):
    """One encoder per stream under ``backbones``; the loss pulls every pooled feature towards zero."""

    def __init__(self, layout: Layout, encoders: dict[str, nn.Module]) -> None:
        super().__init__()
        self.layout = layout
        self.backbones = nn.ModuleDict(encoders)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for v, enc in self.backbones.items():
            f = enc.forward_features(compute_view(x, v, self.layout)).float()  # (N, hidden_dim)
            out[f"loss_{v}"] = nn.functional.mse_loss(f, torch.zeros_like(f))
        out["loss"] = torch.stack(list(out.values())).sum()
        return out


class ToyObjective(Objective):
    name = TOY
    augmentation = "none"
    encoder_groups = ("backbones",)

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.batch_size > 64:
            raise CrossclrError(f"objective = {TOY!r} trains with batch_size <= 64, got {cfg.batch_size}")

    def build_model(self, layout: Layout, *, num_person: int, in_channels: int, frames: int) -> nn.Module:
        encoders = {v: build_encoder(layout, self.cfg.model, num_person=num_person, in_channels=in_channels,
                                     frames=frames) for v in self.cfg.streams}
        return ToyModel(layout, encoders)

    def step(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, *, stage: str, augment,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
        return net(augment(x, generator))

    def warnings(self) -> list[str]:
        return [TOY_WARNING]


@pytest.fixture
def toy_objective() -> Iterator[type[Objective]]:
    register_objective(ToyObjective)
    try:
        yield ToyObjective
    finally:
        unregister_objective(TOY)


@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_cache(tmp_path_factory.mktemp("toy") / "toy.h5")


def toy_cfg(**extra: object):
    return load_config("tiny", {**TINY_OVERRIDES, "objective": TOY, "epochs": 1, "deterministic": True,
                                "streams": ["joint", "bone"], **extra})


def test_built_in_objectives_are_registered_with_their_encoder_groups() -> None:
    assert {"crossclr", "mamp"} <= set(objective_names())
    assert objective_class("crossclr").encoder_groups == ("encoders_q", "encoders_k")
    assert objective_class("mamp").encoder_groups == ("encoders",)


def test_a_toy_objective_trains_through_the_public_path_and_its_encoders_load_back(
        toy_objective: type[Objective], toy_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = toy_cfg()
    assert augmentation_for(cfg) == "none"  # "auto" resolves to the objective's own augmentation
    with caplog.at_level(logging.INFO, logger="training.trainer"):
        result = train(cfg, toy_cache, tmp_path / "run", progress=False)
    assert TOY_WARNING in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(r.getMessage().startswith(f"{TOY} on cpu") for r in caplog.records)
    assert result.epochs_done == 1 and result.checkpoint == tmp_path / "run" / "pretrain.pt"
    assert isinstance(result.model, ToyModel)
    records = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["kind"] == "epoch"]
    steps = [r for r in records if r["kind"] == "step"]
    assert len(epochs) == 1 and epochs[0]["stage"] == TOY  # the default stage: the objective's name
    assert len(steps) == 3 and all(r["stage"] == TOY and r["loss"] >= 0 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]  # the features move towards zero

    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["config"]["objective"] == TOY
    assert {k.split(".")[0] for k in ckpt["model"]} == {"backbones"}
    encoders, meta = load_encoders(result.checkpoint)
    assert set(encoders) == {"joint", "bone"} and meta["train_config"].objective == TOY
    x = torch.randn(2, 3, 12, 25, 2)
    for v, enc in encoders.items():
        trained = result.model.backbones[v].eval()
        with torch.no_grad():
            assert torch.equal(enc.forward_features(x), trained.forward_features(x)), v


def test_registering_checks_the_augmentation_and_name_clashes() -> None:
    class Jitter(ToyObjective):
        augmentation = "jitter"

    class Clash(ToyObjective):
        name = "crossclr"

    with pytest.raises(ValueError, match="augmentation 'jitter' is not one of"):
        register_objective(Jitter)
    with pytest.raises(ValueError, match="'crossclr' is already registered by CrosSCLRObjective"):
        register_objective(Clash)
    assert TOY not in objective_names() and objective_class("crossclr").__name__ == "CrosSCLRObjective"


def test_config_accepts_registered_names_only(toy_objective: type[Objective]) -> None:
    cfg = toy_cfg()
    assert cfg.objective == TOY and config_from_dict(config_to_dict(cfg)) == cfg
    with pytest.raises(CrossclrError) as e:
        toy_cfg(batch_size=65)  # the objective's own check_config runs with the config's
    assert "\n" not in str(e.value) and "batch_size <= 64" in str(e.value)
    with pytest.raises(CrossclrError) as e:
        load_config("tiny", {"objective": "jepa"})
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--objective: objective 'jepa' is unknown")
    assert all(name in msg for name in ("crossclr", "mamp", TOY))


def test_an_unregistered_objective_is_refused() -> None:
    assert TOY not in objective_names()
    with pytest.raises(CrossclrError, match=r"objective 'toy-test' is unknown; expected one of .*crossclr"):
        config_from_dict({"objective": TOY})


def _compared_strings(tree: ast.AST) -> set[str]:
    """Every string constant inside a comparison (==, !=, in, ...) of ``tree``."""
    return {c.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
            for operand in (node.left, *node.comparators) for c in ast.walk(operand)
            if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def test_the_trainer_never_names_an_objective() -> None:
    tree = ast.parse(TRAINER.read_text(encoding="utf-8"))
    names = {"crossclr", "mamp"}
    assert not _compared_strings(tree) & names
    constants = {c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    assert not constants & names  # not as a literal anywhere (a dict key, an argument) either
    probe = ast.parse("def f(cfg):\n    return cfg.objective == 'mamp' or cfg.augment in ('x', 'crossclr')\n")
    assert _compared_strings(probe) & names == names  # the check sees both forms
