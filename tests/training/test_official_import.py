"""Official-checkpoint import: state dicts built in the official key layout, proven by identical outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from training.checkpoint import load_encoders
from training.encoders.config import EncoderConfig
from training.encoders.stgcn import STGCN
from training.encoders.transformer import SkeletonTransformer
from training.importers import convert_official_file
from training.importers.crossclr import build_imported, convert_official_state

NTU = get_layout("ntu-rgb+d")
OFFICIAL = EncoderConfig(projector="mlp")  # quarter width, 10 blocks: what official checkpoints hold
K = 64


def _randomize(m: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                mod.running_mean.copy_(0.1 * torch.randn(mod.running_mean.shape, generator=g))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))


def official_encoder(seed: int, fc: nn.Module | None = None, num_class: int | None = None) -> nn.Module:
    """A module with the official encoder's structure and names (st_gcn.Model: A, data_bn, ..., fc)."""
    torch.manual_seed(seed)
    if num_class is not None:
        enc = STGCN(NTU, EncoderConfig(projector="linear", feature_dim=num_class))
    else:
        enc = STGCN(NTU, OFFICIAL)
    if fc is not None:
        enc.fc = fc
    _randomize(enc, seed)
    return enc.eval()


def official_3view_pretrain() -> tuple[dict[str, torch.Tensor], dict[str, nn.Module]]:
    """Key layout of CrosSCLR 3-view pretraining: motion/bone projectors nest the joint projector."""
    q = official_encoder(1)
    k = official_encoder(2)
    mods = {"encoder_q": q, "encoder_k": k}
    for i, suffix in enumerate(("_motion", "_bone")):
        for w, j, shared in (("q", 3, q.fc), ("k", 5, k.fc)):
            nested = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), shared)
            mods[f"encoder_{w}{suffix}"] = official_encoder(j + i, nested)
    sd: dict[str, torch.Tensor] = {}
    for name, m in mods.items():
        sd.update({f"{name}.{n}": t for n, t in m.state_dict().items()})
    g = torch.Generator().manual_seed(9)
    for suffix in ("", "_motion", "_bone"):
        sd[f"queue{suffix}"] = nn.functional.normalize(torch.randn(128, K, generator=g), dim=0)
        sd[f"queue_ptr{suffix}"] = torch.tensor([32])
    return sd, mods


def test_three_view_pretrain_import_identical_features() -> None:
    sd, mods = official_3view_pretrain()
    assert "encoder_q_motion.fc.2.0.weight" in sd and "encoder_q_motion.fc.2.2.weight" in sd
    ours, meta = convert_official_state(sd)
    assert meta["kind"] == "pretrain" and meta["views"] == ["joint", "motion", "bone"]
    assert meta["queue_size"] == K and meta["in_channels"] == 3
    assert EncoderConfig.from_dict(meta["encoder_config"]) == OFFICIAL
    assert sorted({k.split(".")[1] for k in meta["fresh_keys"]}) == ["bone", "motion"]
    model = build_imported(ours, meta, NTU)["model"]
    x = torch.randn(3, 3, 50, 25, 2)
    for view, suffix in (("joint", ""), ("motion", "_motion"), ("bone", "_bone")):
        for w, ours_enc in (("q", model.encoders_q[view]), ("k", model.encoders_k[view])):
            off = mods[f"encoder_{w}{suffix}"]
            torch.testing.assert_close(ours_enc.forward_features(x), off.forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(model.queue.keys(view), sd[f"queue{suffix}"].t())
    # the joint projector is imported exactly
    torch.testing.assert_close(model.encoders_q["joint"](x), mods["encoder_q"](x), rtol=0, atol=0)
    assert int(model.queue.ptr) == 32 and bool((model.queue.labels == -1).all())


def test_skeletonclr_pretrain_import_as_chosen_view() -> None:
    q, k = official_encoder(1), official_encoder(2)
    sd = {**{f"encoder_q.{n}": t for n, t in q.state_dict().items()},
          **{f"encoder_k.{n}": t for n, t in k.state_dict().items()},
          "queue": nn.functional.normalize(torch.randn(128, K), dim=0), "queue_ptr": torch.tensor([0])}
    sd = {f"module.{n}": t for n, t in sd.items()}  # DataParallel prefix is tolerated
    ours, meta = convert_official_state(sd, single_view="motion")
    assert meta["views"] == ["motion"] and meta["fresh_keys"] == []
    model = build_imported(ours, meta)["model"]
    x = torch.randn(2, 3, 50, 25, 2)
    torch.testing.assert_close(model.encoders_q["motion"](x), q(x), rtol=0, atol=0)
    torch.testing.assert_close(model.encoders_k["motion"](x), k(x), rtol=0, atol=0)


def test_linear_eval_import_gives_heads() -> None:
    encs = {s: official_encoder(10 + i, num_class=60) for i, s in enumerate(("", "_motion", "_bone"))}
    sd = {f"encoder_q{s}.{n}": t for s, m in encs.items() for n, t in m.state_dict().items()}
    ours, meta = convert_official_state(sd)
    assert meta["kind"] == "linear" and meta["num_class"] == 60
    assert meta["encoder_config"]["projector"] == "none"
    built = build_imported(ours, meta)
    x = torch.randn(2, 3, 50, 25, 2)
    for view, s in (("joint", ""), ("motion", "_motion"), ("bone", "_bone")):
        f = built["encoders"][view].forward_features(x)
        torch.testing.assert_close(f, encs[s].forward_features(x), rtol=0, atol=0)
        torch.testing.assert_close(built["heads"][view](f), encs[s](x), rtol=0, atol=0)
        assert built["heads"][view].weight.shape == (60, 256)


def test_unknown_and_missing_keys_refused_with_listing() -> None:
    sd, _ = official_3view_pretrain()
    bad = dict(sd, **{"encoder_q.extra.weight": torch.zeros(1), "something_else": torch.zeros(1)})
    with pytest.raises(CrossclrError, match="unknown keys .*something_else"):
        convert_official_state(bad)
    bad = dict(sd, **{"encoder_q.extra.weight": torch.zeros(1)})
    with pytest.raises(CrossclrError, match=r"unknown keys encoder_q\.extra\.weight"):
        convert_official_state(bad)
    bad = {k: v for k, v in sd.items() if k != "encoder_k_bone.st_gcn_networks.3.tcn.2.weight"}
    with pytest.raises(CrossclrError, match=r"missing keys encoder_k_bone\.st_gcn_networks\.3\.tcn\.2\.w"):
        convert_official_state(bad)
    bad = {k: v for k, v in sd.items() if k != "queue_ptr_motion"}
    with pytest.raises(CrossclrError, match="queue_ptr_motion"):
        convert_official_state(bad)
    with pytest.raises(CrossclrError, match="no encoder_q"):
        convert_official_state({"queue": torch.zeros(128, 4)})
    with pytest.raises(CrossclrError, match="not a tensor"):
        convert_official_state({"encoder_q.A": [1, 2]})


def test_wrong_layout_refused() -> None:
    sd, _ = official_3view_pretrain()
    with pytest.raises(CrossclrError, match="spatial partition of layout 'kinect-v1'"):
        convert_official_state(sd, layout=get_layout("kinect-v1"))


def test_imported_pretrain_loads_query_and_key_encoders(tmp_path) -> None:
    sd, mods = official_3view_pretrain()
    torch.save(sd, tmp_path / "official.pt")
    out = convert_official_file(tmp_path / "official.pt", tmp_path / "pretrain.pt")
    x = torch.randn(2, 3, 50, 25, 2)
    for which in ("q", "k"):
        encs, meta = load_encoders(out, which=which)
        assert list(encs) == ["joint", "motion", "bone"] and meta["train_config"].objective == "crossclr"
        for view, suffix in (("joint", ""), ("motion", "_motion"), ("bone", "_bone")):
            want = mods[f"encoder_{which}{suffix}"].forward_features(x)
            torch.testing.assert_close(encs[view].forward_features(x), want, rtol=0, atol=0)
    encs, _ = load_encoders(out, ["bone"])
    assert list(encs) == ["bone"]
    with pytest.raises(ValueError, match="which must be 'q'"):
        load_encoders(out, which="key")


def test_imported_mamp_has_query_encoders_only(tmp_path) -> None:
    cfg = EncoderConfig(graph="transformer", projector="none", hidden_dim=16, depth=1, t_patch=4)
    torch.manual_seed(0)
    official = SkeletonTransformer(NTU, cfg, frames=8).eval()  # official MAMP keys are its own names
    torch.save({"model": official.state_dict()}, tmp_path / "mamp.pth")
    out = convert_official_file(tmp_path / "mamp.pth", tmp_path / "pretrain.pt")
    encs, meta = load_encoders(out)
    assert meta["train_config"].objective == "mamp" and meta["frames"] == 8
    x = torch.randn(2, 3, 8, 25, 2)
    with torch.no_grad():
        want = official.forward_features(x)
        torch.testing.assert_close(encs["joint"].forward_features(x), want, rtol=0, atol=0)
    with pytest.raises(CrossclrError, match=r"pretrain\.pt: objective 'mamp' keeps no key encoders"):
        load_encoders(out, which="k")
