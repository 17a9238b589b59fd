"""The encoder registry: a kind registered inside a test is configured, built and refused like a built-in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout, get_layout
from training.encoders import (
    EncoderKind,
    build_encoder,
    encoder_kind,
    graph_names,
    register_encoder,
    unregister_encoder,
)
from training.encoders.config import EncoderConfig
from training.encoders.stgcn import STGCN
from training.encoders.transformer import SkeletonTransformer

NTU = get_layout("ntu-rgb+d")


class ToyMLP(nn.Module):
    """The smallest encoder with the registry's interface: mean over frames and bodies, one Linear."""

    kind = "toy-mlp"

    def __init__(self, layout: Layout, cfg: EncoderConfig, num_person: int, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.body = nn.Linear(in_channels * layout.num_joints, cfg.hidden_dim)
        self.fc = nn.Linear(cfg.hidden_dim, cfg.feature_dim)

    @property
    def hidden_dim(self) -> int:
        return self.cfg.hidden_dim

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        n, c, t, v, m = x.shape
        pooled = x.mean(dim=(2, 4)).reshape(n, c * v)  # (N, C, T, V, M) -> (N, C, V) -> (N, C·V)
        return self.body(pooled)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _build_toy(layout: Layout, cfg: EncoderConfig, *, num_person: int, in_channels: int,
               frames: int) -> ToyMLP:
    return ToyMLP(layout, cfg, num_person, in_channels)


def _check_toy(cfg: EncoderConfig) -> None:
    if cfg.hidden_dim > 64:
        raise CrossclrError(f"encoder config: toy-mlp hidden_dim {cfg.hidden_dim} is over 64; expected <= 64")


@pytest.fixture
def toy_kind() -> Iterator[EncoderKind]:
    kind = register_encoder(EncoderKind(name="toy-mlp", graphs=("toy-mlp",), build=_build_toy,
                                        check=_check_toy))
    yield kind
    unregister_encoder("toy-mlp")


def test_builtin_kinds_are_registered() -> None:
    assert {"spatial", "flow", "adaptive", "transformer"} <= set(graph_names())
    assert EncoderConfig().kind == "stgcn" and EncoderConfig(graph="adaptive").kind == "stgcn"
    assert EncoderConfig(graph="transformer", hidden_dim=32, num_heads=4).kind == "transformer"
    assert isinstance(build_encoder(NTU, EncoderConfig(base_channels=4, hidden_dim=16)), STGCN)
    cfg = EncoderConfig(graph="transformer", hidden_dim=16, num_heads=2, depth=1)
    enc = build_encoder(NTU, cfg, frames=8)
    assert isinstance(enc, SkeletonTransformer) and enc.frames == 8 and enc.kind == cfg.kind


def test_transformer_check_runs_from_the_registry() -> None:
    with pytest.raises(CrossclrError, match="hidden_dim 30 is not divisible by num_heads 8"):
        EncoderConfig(graph="transformer", hidden_dim=30)
    EncoderConfig(graph="spatial", hidden_dim=30)  # the ST-GCN has no heads: accepted


def test_toy_kind_is_configured_built_and_run(toy_kind: EncoderKind) -> None:
    assert "toy-mlp" in graph_names()
    cfg = EncoderConfig.from_dict({"graph": "toy-mlp", "hidden_dim": 12, "feature_dim": 5})
    assert cfg.kind == "toy-mlp" and encoder_kind(cfg) is toy_kind
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg  # the config round-trips like a built-in's
    enc = build_encoder(NTU, cfg, num_person=2, in_channels=3, frames=10)
    assert isinstance(enc, ToyMLP) and enc.kind == cfg.kind
    x = torch.randn(4, 3, 10, NTU.num_joints, 2)
    f = enc.forward_features(x)
    assert f.shape == (4, 12) and enc(x).shape == (4, 5)
    want = x.mean(dim=(2, 4)).reshape(4, -1) @ enc.body.weight.T + enc.body.bias  # independent of forward
    torch.testing.assert_close(f, want)


def test_toy_kind_check_refuses_its_own_settings(toy_kind: EncoderKind) -> None:
    with pytest.raises(CrossclrError, match="toy-mlp hidden_dim 128 is over 64"):
        EncoderConfig(graph="toy-mlp", hidden_dim=128)


def test_unregistered_graph_is_refused_in_one_line(toy_kind: EncoderKind) -> None:
    EncoderConfig(graph="toy-mlp", hidden_dim=8)
    unregister_encoder("toy-mlp")
    assert "toy-mlp" not in graph_names()
    with pytest.raises(CrossclrError, match=r"graph 'toy-mlp' is unknown; expected one of .*'spatial'") as e:
        EncoderConfig(graph="toy-mlp", hidden_dim=8)
    assert "\n" not in str(e.value) and "transformer" in str(e.value)


def test_a_graph_name_of_another_kind_is_refused(toy_kind: EncoderKind) -> None:
    with pytest.raises(ValueError, match=r"graph names \['toy-mlp'\] already belong to kind 'toy-mlp'"):
        register_encoder(EncoderKind(name="other", graphs=("toy-mlp", "other"), build=_build_toy))
    with pytest.raises(ValueError, match="already belong to kind 'stgcn'"):
        register_encoder(EncoderKind(name="other", graphs=("spatial",), build=_build_toy))
    assert "other" not in graph_names() and encoder_kind(EncoderConfig()).name == "stgcn"
    register_encoder(toy_kind)  # registering the same kind again is harmless
    assert graph_names().count("toy-mlp") == 1


def test_projector_head_is_shared_by_both_kinds() -> None:
    from training.encoders import heads, stgcn, transformer

    assert stgcn.projector_head is heads.projector_head  # the old import path still works
    assert transformer.projector_head is heads.projector_head
    cfg = EncoderConfig(hidden_dim=6, feature_dim=4)
    assert [type(m).__name__ for m in heads.projector_head(cfg)] == ["Linear", "ReLU", "Linear"]
    assert isinstance(heads.projector_head(EncoderConfig(projector="none")), nn.Identity)
