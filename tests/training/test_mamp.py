"""MAMP pretraining units against numpy: motion-aware masking, normalised motion target, masked loss, decoder
assembly; the composed model; import of official-format state dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from training.encoders.config import EncoderConfig
from training.encoders.transformer import SkeletonTransformer
from training.importers.mamp import convert_mamp_state, decoder_config, token_grid
from training.objectives.mamp import (
    MAMP,
    MAMPConfig,
    MAMPDecoder,
    keep_count,
    mask_probabilities,
    masked_mse,
    motion_aware_keep,
    motion_target,
    patchify,
    token_motion,
)
from training.views import motion

NTU = get_layout("ntu-rgb+d")
ENC = EncoderConfig(graph="transformer", projector="none", hidden_dim=32, depth=2, num_heads=4, t_patch=4)
MCFG = MAMPConfig(decoder_depth=1, decoder_dim=16, decoder_heads=4)
FRAMES = 16  # L = 4 · 25 = 100 tokens; int(100 · (1 − 0.9)) = 9 kept


def p(t: torch.Tensor) -> np.ndarray:
    return t.detach().numpy().astype(np.float64)


def np_patches(x: np.ndarray, t_patch: int) -> np.ndarray:
    """(B, C, T, V) -> (B, T/p, V, p, C) by loops: patch (t', v) = frames t'p … t'p+p−1 of joint v."""
    b, c, t, v = x.shape
    out = np.zeros((b, t // t_patch, v, t_patch, c))
    for tp in range(t // t_patch):
        for j in range(v):
            for k in range(t_patch):
                out[:, tp, j, k, :] = x[:, :, tp * t_patch + k, j]
    return out


def np_token_motion(x: np.ndarray, t_patch: int) -> np.ndarray:
    pt = np_patches(x, t_patch)
    b, tp, v = pt.shape[:3]
    mot = np.zeros((b, tp, v))
    for i in range(tp):
        j = max(i, 1)  # token 0 takes token 1's motion
        mot[:, i] = np.abs(pt[:, j] - pt[:, j - 1]).mean(axis=(-1, -2))
    return mot.reshape(b, -1)


# ---------------------------------------------------------------- masking
def test_token_motion_and_mask_probabilities_match_numpy() -> None:
    x = torch.randn(3, 3, FRAMES, 25, dtype=torch.float64).cumsum(2)
    mot = token_motion(x, 4)
    np.testing.assert_allclose(p(mot), np_token_motion(p(x), 4), rtol=1e-12, atol=1e-12)
    m = p(mot)
    logits = m / (m.max(axis=1, keepdims=True) * 0.8 + 1e-10)
    ref = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(p(mask_probabilities(mot, 0.8)), ref, rtol=1e-12)
    zero = mask_probabilities(torch.zeros(1, 100, dtype=torch.float64), 0.8)  # an absent body: uniform
    assert torch.allclose(zero, torch.full_like(zero, 0.01))
    with pytest.raises(CrossclrError, match="at least 2 time tokens"):
        token_motion(torch.zeros(1, 3, 4, 25), 4)


def test_keep_count_is_the_official_int_truncation() -> None:
    assert keep_count(750, 0.9) == 74  # int(74.99999999999999): the official encoder sees 74 tokens, not 75
    assert keep_count(100, 0.9) == 9 and keep_count(100, 0.75) == 25 and keep_count(750, 0.8) == 149
    with pytest.raises(CrossclrError, match="keeps no token"):
        keep_count(5, 0.9)


def test_motion_aware_keep_ranks_log_p_plus_gumbel_ascending() -> None:
    mot = torch.rand(4, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tm = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(5))
    # reference: the same uniforms, numpy Gumbel transform and ranking
    u = p(torch.rand(4, 100, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))
    m = p(mot)
    logits = m / (m.max(axis=1, keepdims=True) * 0.8 + 1e-10)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    score = log_p - np.log(-np.log(u + 1e-10) + 1e-10)
    order = np.argsort(score, axis=1, kind="stable")
    assert tm.keep.shape == (4, 9)
    np.testing.assert_array_equal(tm.keep.numpy(), order[:, :9])
    mask = np.ones((4, 100))
    np.put_along_axis(mask, order[:, :9], 0.0, axis=1)
    np.testing.assert_array_equal(tm.mask.numpy(), mask)
    assert (tm.mask.sum(1) == 91).all()
    # restore puts every token back: [kept…, masked…][restore] is the token order
    back = np.take_along_axis(order, tm.restore.numpy(), axis=1)
    np.testing.assert_array_equal(back, np.tile(np.arange(100), (4, 1)))


def test_masking_is_seeded() -> None:
    mot = torch.rand(2, 100)
    a = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(3))
    b = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(3))
    c = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(4))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)


def test_high_motion_tokens_are_masked_more_often() -> None:
    """Official MAMP keeps the lowest-ranked tokens: high motion → high log p → masked more often."""
    rows = 2000
    mot = torch.zeros(rows, 100)
    mot[:, :50] = 1.0  # first half moves, second half is still
    tm = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(0))
    kept = 1 - tm.mask
    moving, still = kept[:, :50].mean().item(), kept[:, 50:].mean().item()
    assert moving < still
    # p_moving / p_still = e^(1/0.8) ≈ 3.5: still tokens rank first far more often
    assert still / moving > 2.0
    uniform = 1 - motion_aware_keep(mot, 0.9, 0.0, torch.Generator().manual_seed(0)).mask  # tau 0: random
    assert abs(uniform[:, :50].mean().item() - uniform[:, 50:].mean().item()) < 0.01


# ---------------------------------------------------------------- target and loss
def test_motion_target_matches_numpy() -> None:
    x = torch.randn(2, 3, FRAMES, 25, dtype=torch.float64)
    xn = p(x)
    mot = np.zeros_like(xn)
    mot[:, :, :-1] = xn[:, :, 1:] - xn[:, :, :-1]  # last frame 0
    raw = np_patches(mot, 4).reshape(2, 100, 12)  # values ordered (frame in patch, channel)
    np.testing.assert_allclose(p(patchify(torch.from_numpy(mot), 4)), raw, rtol=0, atol=0)
    np.testing.assert_allclose(p(motion_target(x, 4, normalize=False)), raw, rtol=1e-12, atol=1e-12)
    ref = (raw - raw.mean(-1, keepdims=True)) / np.sqrt(raw.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(p(motion_target(x, 4)), ref, rtol=1e-10, atol=1e-10)
    assert torch.equal(motion_target(torch.zeros(1, 3, FRAMES, 25), 4), torch.zeros(1, 100, 12))


def test_masked_mse_counts_masked_tokens_only() -> None:
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(3, 100, 12, generator=g), torch.randn(3, 100, 12, generator=g)
    mask = (torch.rand(3, 100, generator=g) < 0.9).float()
    per_token = ((p(pred) - p(target)) ** 2).mean(-1)
    ref = (per_token * p(mask)).sum() / p(mask).sum()
    assert masked_mse(pred, target, mask).item() == pytest.approx(ref, rel=1e-6)
    changed = pred.clone()
    changed[mask == 0] += 10.0  # predictions at kept tokens do not count
    assert masked_mse(changed, target, mask).item() == pytest.approx(ref, rel=1e-6)


# ---------------------------------------------------------------- decoder and model
def test_decoder_places_latents_and_mask_tokens() -> None:
    torch.manual_seed(0)
    dec = MAMPDecoder(32, 4, 25, 12, MCFG).double()
    assert {k.split(".")[0] for k in dec.state_dict()} == {
        "decoder_embed", "mask_token", "decoder_blocks", "decoder_norm", "decoder_temp_embed",
        "decoder_pos_embed", "decoder_pred"}
    assert dec.decoder_temp_embed.shape == (1, 4, 1, 16) and dec.decoder_pos_embed.shape == (1, 1, 25, 16)
    mot = torch.rand(2, 100, dtype=torch.float64)
    tm = motion_aware_keep(mot, 0.9, 0.8, torch.Generator().manual_seed(1))
    latent = torch.randn(2, 9, 32, dtype=torch.float64)
    seen = []
    dec.decoder_blocks[0].register_forward_pre_hook(lambda mod, args: seen.append(p(args[0])))
    assert dec(latent, tm.restore).shape == (2, 100, 12)
    sd = {k: p(v) for k, v in dec.state_dict().items()}
    emb = p(latent) @ sd["decoder_embed.weight"].T + sd["decoder_embed.bias"]  # (2, 9, 16)
    ref = np.broadcast_to(sd["mask_token"], (2, 100, 16)).copy()
    for i in range(2):
        ref[i, tm.keep[i].numpy()] = emb[i]
    ref = ref + (sd["decoder_temp_embed"] + sd["decoder_pos_embed"]).reshape(1, 100, 16)  # token t'·25 + v
    np.testing.assert_allclose(seen[0], ref, rtol=1e-12, atol=1e-12)


def make_mamp(views: tuple[str, ...] = ("joint", "motion"), seed: int = 0) -> MAMP:
    torch.manual_seed(seed)
    return MAMP(NTU, ENC, MCFG, views=views, frames=FRAMES)


def test_mamp_forward_composes_the_units() -> None:
    model = make_mamp()
    x = torch.randn(2, 3, FRAMES, 25, 2).cumsum(2)
    x[1, ..., 1] = 0  # absent second body: still a sequence (official), its target is 0
    out = model(x, torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "loss_joint", "loss_motion"}
    assert torch.allclose(out["loss"], out["loss_joint"] + out["loss_motion"])
    # the motion view: its encoder input is the motion, its target the motion of the motion
    g = torch.Generator().manual_seed(0)
    model.forward_view(x.permute(0, 4, 1, 2, 3).reshape(4, 3, FRAMES, 25), "joint", g)  # the same draws
    mv = motion(x).permute(0, 4, 1, 2, 3).reshape(4, 3, FRAMES, 25)
    ref = model.forward_view(mv, "motion", g)
    assert torch.allclose(out["loss_motion"], ref.loss)
    assert torch.equal(ref.target, motion_target(mv, 4))
    assert ref.tokens.keep.shape == (4, 9)
    out["loss"].backward()
    unused = [n for n, prm in model.named_parameters() if prm.grad is None]
    assert unused == []  # every weight takes part (DDP without find_unused_parameters)
    again = model(x, torch.Generator().manual_seed(0))
    assert torch.equal(again["loss"], out["loss"])


def test_mamp_configuration_errors() -> None:
    with pytest.raises(CrossclrError, match="projector"):
        MAMP(NTU, EncoderConfig(graph="transformer", hidden_dim=32, depth=1, num_heads=4), frames=FRAMES)
    with pytest.raises(CrossclrError, match="graph"):
        MAMP(NTU, EncoderConfig(projector="none"), frames=FRAMES)
    with pytest.raises(CrossclrError, match="mask_ratio"):
        MAMPConfig(mask_ratio=1.0)
    with pytest.raises(CrossclrError, match="decoder_heads"):
        MAMPConfig(decoder_dim=30, decoder_heads=8)
    with pytest.raises(CrossclrError, match="unknown keys"):
        MAMPConfig.from_dict({"mask_ratio": 0.8, "bogus": 1})
    cfg = MAMPConfig(tau=0.75, decoder_depth=5)
    assert MAMPConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CrossclrError, match="expected 25 joints V, got 20"):
        make_mamp(("joint",))(torch.zeros(1, 3, FRAMES, 20, 2))


# ---------------------------------------------------------------- official checkpoint import
def official_state(model: MAMP) -> dict:
    """Official layout from our weights: encoder keys at top level, decoder_* and mask_token beside them."""
    own = model.state_dict()
    prefixes = ("encoders.joint.", "decoders.joint.")
    sd = {k.split(".", 2)[2]: v for k, v in own.items() if k.startswith(prefixes)}
    sd["head.fc.weight"], sd["head.fc.bias"] = torch.zeros(60, 32), torch.zeros(60)
    return {"model": {f"module.{k}": v for k, v in sd.items()}, "epoch": 399}


def test_convert_official_state_gives_identical_model() -> None:
    src = make_mamp(("joint",), seed=1)
    state = official_state(src)
    assert {"mask_token", "decoder_pred.weight", "pos_embed", "blocks.1.attn.qkv.bias"} <= {
        k[len("module."):] for k in state["model"]}
    cfg, enc_sd, dec_sd, dropped = convert_mamp_state(state, "mamp.pth", num_heads=4)
    assert (cfg.hidden_dim, cfg.depth, cfg.num_heads, cfg.t_patch, cfg.mlp_ratio) == (32, 2, 4, 4, 4.0)
    assert cfg.graph == "transformer" and cfg.projector == "none"
    assert token_grid(enc_sd) == (FRAMES, 25, 3)
    assert dropped == ["head.fc.bias", "head.fc.weight"]
    dcfg = decoder_config(dec_sd, num_heads=4)
    assert (dcfg.decoder_depth, dcfg.decoder_dim) == (1, 16)
    torch.manual_seed(99)  # different initial weights, then overwritten
    dst = MAMP(NTU, cfg, dcfg, views=("joint",), frames=FRAMES)
    dst.encoders["joint"].load_state_dict(enc_sd, strict=True)
    dst.decoders["joint"].load_state_dict(dec_sd, strict=True)
    x = torch.randn(2, 3, FRAMES, 25, 2)
    assert torch.equal(dst.encoders["joint"].forward_features(x), src.encoders["joint"].forward_features(x))
    loss_src, loss_dst = (m(x, torch.Generator().manual_seed(2))["loss"] for m in (src, dst))
    assert torch.equal(loss_dst, loss_src)
    probe_only = {k: v for k, v in state["model"].items() if "decoder" not in k and "mask_token" not in k}
    _, enc2, dec2, _ = convert_mamp_state(probe_only, "linprobe.pth", num_heads=4)
    assert dec2 == {} and enc2.keys() == enc_sd.keys()
    enc = SkeletonTransformer(NTU, cfg, frames=FRAMES)
    enc.load_state_dict(enc2, strict=True)


def test_convert_rejects_foreign_and_broken_states() -> None:
    from training.encoders.stgcn import STGCN

    stgcn = {f"encoder_q.{k}": v for k, v in STGCN(NTU).state_dict().items()}
    with pytest.raises(CrossclrError, match=r"^crossclr\.pt: not a MAMP transformer checkpoint"):
        convert_mamp_state(stgcn, "crossclr.pt")
    state = official_state(make_mamp(("joint",)))["model"]
    broken = dict(state)
    broken["module.blocks.1.mlp.fc2.weight"] = torch.zeros(32, 7)
    with pytest.raises(CrossclrError, match="blocks.1.mlp.fc2.weight.*has shape"):
        convert_mamp_state(broken, "x.pth", num_heads=4)
    with pytest.raises(CrossclrError, match="not divisible by num_heads 5"):
        convert_mamp_state(state, "x.pth", num_heads=5)
    with pytest.raises(CrossclrError, match="not a tensor"):
        convert_mamp_state({**state, "module.note": "hi"}, "x.pth")
