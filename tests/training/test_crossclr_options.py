"""Small-data options of the contrastive objective (SSLConfig) against independent numpy references:
similarity threshold, mining on the fused view, cross-view weight and its warm-up, extreme augmentations,
and the crossclr_small preset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from tests.helpers import momentum_stepped_copy
from training.augment import add_noise, augment_extreme, axis_mask, gaussian_blur_time
from training.encoders.config import EncoderConfig
from training.objectives.crossclr import CrosSCLR, SSLConfig
from training.objectives.ssl import cross_view_loss, mining_precision, topk_positive_mask
from training.views import compute_view

NTU = get_layout("ntu-rgb+d")
ENC = EncoderConfig(base_channels=4, hidden_dim=8, feature_dim=6, stage_blocks=(1, 1, 1), dropout=0.0)
VIEWS3 = ("joint", "motion", "bone")
VIEWS2 = ("joint", "bone")  # the model tests: two views keep them fast
PRESET = Path(__file__).resolve().parents[2] / "training" / "presets" / "crossclr_small.toml"


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    a = rng.normal(size=shape)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def np_mined(sim: np.ndarray, topk: int, threshold: float) -> np.ndarray:
    """Row by row: the topk largest entries, kept when ≥ threshold."""
    mask = np.zeros_like(sim)
    for i, row in enumerate(sim):
        for j in np.argsort(-row)[:topk]:
            if row[j] >= threshold:
                mask[i, j] = 1.0
    return mask


def np_cross(l_pos, l_neg, l_neg_v, mine_sim, t, topk, threshold, form):
    n = l_neg.shape[0]
    mined = np_mined(mine_sim, topk, threshold)
    logits = np.concatenate([l_pos[:, None], l_neg, l_neg * l_neg_v], 1) / t
    mask = np.concatenate([np.ones((n, 1)), mined, mined], 1)
    logp = np_log_softmax(logits)
    if form == "official":
        return np.mean([-(logp[i][mask[i] > 0]).mean() for i in range(n)])
    return np.mean([-np.log(np.exp(logp[i][mask[i] > 0]).sum()) for i in range(n)])


def np_info_nce(q, k, queue, t):
    logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], 1) / t
    return -np_log_softmax(logits)[:, 0].mean()


# ------------------------------------------------------------------------------------- mining rules


def test_threshold_mask_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    sim = rng.uniform(-1, 1, size=(6, 11))
    for topk, thr in [(1, -1.0), (3, 0.2), (5, 0.6), (11, 0.9)]:
        got = topk_positive_mask(torch.from_numpy(sim), topk, thr).numpy()
        np.testing.assert_array_equal(got, np_mined(sim, topk, thr))


@pytest.mark.parametrize("form", ["official", "seed"])
@pytest.mark.parametrize("topk,threshold,fused", [(1, -1.0, True), (3, 0.1, False), (4, 0.0, True)])
def test_cross_view_loss_threshold_and_fused_mining(form: str, topk: int, threshold: float,
                                                    fused: bool) -> None:
    rng = np.random.default_rng(3)
    q_u, k_u, q_v, q_w = unit(rng, 5, 8), unit(rng, 5, 8), unit(rng, 5, 8), unit(rng, 5, 8)
    queue_u, queue_v, queue_w = unit(rng, 13, 8), unit(rng, 13, 8), unit(rng, 13, 8)
    l_pos, l_neg, l_neg_v = (q_u * k_u).sum(1), q_u @ queue_u.T, q_v @ queue_v.T
    mine = (l_neg + l_neg_v + q_w @ queue_w.T) / 3 if fused else l_neg_v
    got = cross_view_loss(torch.from_numpy(l_pos), torch.from_numpy(l_neg), torch.from_numpy(l_neg_v),
                          temperature=0.1, topk=topk, form=form, threshold=threshold,
                          mining_similarity=torch.from_numpy(mine) if fused else None)
    np.testing.assert_allclose(float(got), np_cross(l_pos, l_neg, l_neg_v, mine, 0.1, topk, threshold, form),
                               rtol=1e-6)


def test_threshold_above_every_similarity_leaves_the_own_key_only() -> None:
    rng = np.random.default_rng(1)
    q_u, k_u, q_v, queue_u, queue_v = (unit(rng, *s) for s in [(4, 6), (4, 6), (4, 6), (9, 6), (9, 6)])
    args = [torch.from_numpy(a) for a in ((q_u * k_u).sum(1), q_u @ queue_u.T, q_v @ queue_v.T)]
    got = float(cross_view_loss(*args, temperature=0.07, topk=3, threshold=1.0))
    logits = np.concatenate([(q_u * k_u).sum(1, keepdims=True), q_u @ queue_u.T,
                             (q_u @ queue_u.T) * (q_v @ queue_v.T)], 1) / 0.07
    np.testing.assert_allclose(got, -np_log_softmax(logits)[:, 0].mean(), rtol=1e-6)


def test_mining_precision_with_threshold_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    sim = rng.uniform(-1, 1, size=(7, 10))
    qlab = rng.integers(-1, 3, size=10)
    lab = rng.integers(0, 3, size=7)
    for topk, thr in [(1, -1.0), (3, 0.0), (4, 0.5)]:
        mined = np_mined(sim, topk, thr) > 0
        known = mined & (qlab >= 0)[None, :]
        hits = known & (qlab[None, :] == lab[:, None])
        expect = hits.sum() / known.sum() if known.sum() else np.nan
        got = float(mining_precision(torch.from_numpy(sim), torch.from_numpy(qlab), torch.from_numpy(lab),
                                     topk, thr))
        np.testing.assert_allclose(got, expect, rtol=1e-6)


# ------------------------------------------------------------------------------------------- model


def make(**ssl) -> CrosSCLR:
    torch.manual_seed(0)
    return CrosSCLR(NTU, ENC, SSLConfig(**{"queue_size": 16, "momentum": 0.9, **ssl}), VIEWS2)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 25, 2, generator=g), torch.randn(n, 3, 6, 25, 2, generator=g)


def np_model_losses(m: CrosSCLR, x1: torch.Tensor, x2: torch.Tensor, w: float) -> dict[str, float]:
    """The cross-view stage by hand (numpy losses on the features of a copy of the model before the step)."""
    ref = momentum_stepped_copy(m)
    cfg = ref.ssl_cfg
    with torch.no_grad():
        q = {v: F.normalize(ref.encoders_q[v](compute_view(x1, v, NTU)), dim=1).double().numpy()
             for v in ref.views}
        k = {v: F.normalize(ref.encoders_k[v](compute_view(x2, v, NTU)), dim=1).double().numpy()
             for v in ref.views}
    queue = {v: ref.queue.keys(v).double().numpy() for v in ref.views}
    l_neg = {v: q[v] @ queue[v].T for v in ref.views}
    fused = sum(l_neg.values()) / len(l_neg)
    out = {}
    for u in ref.views:
        terms = [np_cross((q[u] * k[u]).sum(1), l_neg[u], l_neg[p],
                          fused if cfg.mine_on == "fused" else l_neg[p], cfg.temperature, cfg.topk,
                          cfg.mining_threshold, cfg.cross_loss)
                 for p in ref.views if p != u]
        out[u] = w * np.mean(terms) + (1 - w) * np_info_nce(q[u], k[u], queue[u], cfg.temperature)
    return out


@pytest.mark.parametrize("opts,w", [({"mine_on": "fused", "topk": 2}, 1.0),
                                    ({"cross_weight": 0.3, "mining_threshold": 0.0, "topk": 3}, 0.3),
                                    ({"cross_weight": 0.5, "cross_loss": "seed"}, 0.5)])
def test_cross_stage_options_match_numpy(opts: dict, w: float) -> None:
    m = make(**opts)
    x1, x2 = batch()
    m(*batch(seed=5), cross=False, labels=torch.tensor([0, 1, 2, 3]))  # some labelled keys in the queue
    expect = np_model_losses(m, x1, x2, w)
    out = m(x1, x2, cross=True, labels=torch.tensor([0, 1, 1, 2]))
    for v in VIEWS2:
        np.testing.assert_allclose(float(out[f"loss_{v}"].detach()), expect[v], rtol=1e-4)
    assert np.isfinite(float(out["mining_precision"])) or opts.get("mining_threshold", -1) > -1
    out["loss"].backward()


def test_cross_warmup_ramps_with_a_step_counter_buffer() -> None:
    assert "cross_steps" not in make().state_dict()  # the official method keeps its checkpoint keys
    m = make(cross_warmup=4, cross_weight=0.8)
    assert int(m.cross_steps) == 0 and "cross_steps" in m.state_dict()
    x1, x2 = batch()
    m(x1, x2, cross=False)  # the single-view stage does not count
    assert int(m.cross_steps) == 0
    weights = []
    for step in range(6):
        expect = np_model_losses(m, x1, x2, 0.8 * min(1.0, step / 4)) if step in (0, 2) else None
        with torch.no_grad():
            out = m(x1, x2, cross=True)
        weights.append(float(out["cross_weight"]))
        if expect is not None:
            np.testing.assert_allclose(float(out["loss_joint"]), expect["joint"], rtol=1e-4)
    np.testing.assert_allclose(weights, [0.0, 0.2, 0.4, 0.6, 0.8, 0.8])
    assert int(m.cross_steps) == 6
    m.eval()
    with torch.no_grad():
        m(x1, x2, cross=True)  # evaluation passes do not advance the warm-up
    assert int(m.cross_steps) == 6


def test_extreme_augment_changes_the_query_input_only_in_training() -> None:
    x1, x2 = batch()
    with torch.no_grad():
        m = make(extreme_augment=1.0)
        torch.manual_seed(3)
        a = m(x1, x2, cross=False)["loss"]
        b = make(extreme_augment=0.0)(x1, x2, cross=False)["loss"]
        assert float(a) != pytest.approx(float(b))
        m3, m4 = make(extreme_augment=1.0).eval(), make().eval()
        assert float(m3(x1, x2, cross=False)["loss"]) == pytest.approx(float(m4(x1, x2, cross=False)["loss"]))


@pytest.mark.parametrize("bad", [{"mining_threshold": 1.5}, {"mine_on": "joint"}, {"cross_weight": -0.1},
                                 {"cross_warmup": -1}, {"cross_warmup": 2.5}, {"extreme_augment": 2.0}])
def test_bad_options_say_what_to_do(bad: dict) -> None:
    with pytest.raises(CrossclrError, match=next(iter(bad))):
        SSLConfig(**bad)


# ------------------------------------------------------------------------------------ augmentations


def test_gaussian_blur_time_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 20, 4, 2))
    sig = np.array([0.1, 1.0, 2.0])
    got = gaussian_blur_time(torch.from_numpy(x), torch.from_numpy(sig), kernel=7).numpy()
    for n in range(3):
        taps = np.exp(-0.5 * (np.arange(-3, 4) / sig[n]) ** 2)
        taps /= taps.sum()
        padded = np.pad(x[n], ((0, 0), (3, 3), (0, 0), (0, 0)), mode="edge")
        ref = sum(taps[j] * padded[:, j:j + 20] for j in range(7))
        np.testing.assert_allclose(got[n], ref, rtol=1e-10, atol=1e-12)


def test_axis_mask_and_noise_match_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 5, 4, 2))
    x[1, :, 3:] = 0  # padding frames
    got = axis_mask(torch.from_numpy(x), torch.tensor([-1, 0, 2])).numpy()
    ref = x.copy()
    ref[1, 0] = 0
    ref[2, 2] = 0
    np.testing.assert_array_equal(got, ref)
    noise, scale = rng.normal(size=x.shape), np.array([0.0, 0.5, 2.0])
    got = add_noise(torch.from_numpy(x), torch.from_numpy(noise), torch.from_numpy(scale)).numpy()
    ref = np.where(x != 0, x + noise * scale[:, None, None, None, None], x)
    np.testing.assert_allclose(got, ref)


def test_augment_extreme_share_and_determinism() -> None:
    x = torch.randn(6, 3, 12, 25, 2)
    assert torch.equal(augment_extreme(x, torch.Generator().manual_seed(0), p=0.0), x)
    a = augment_extreme(x, torch.Generator().manual_seed(1), p=1.0)
    b = augment_extreme(x, torch.Generator().manual_seed(1), p=1.0)
    assert torch.equal(a, b) and a.shape == x.shape and torch.isfinite(a).all()
    assert not torch.equal(a, x)


# ----------------------------------------------------------------------------------------------- preset


def test_crossclr_small_preset_loads() -> None:
    from training.config import config_from_dict

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    cfg = config_from_dict(tomllib.loads(PRESET.read_text()), str(PRESET))
    assert cfg.objective == "crossclr" and tuple(cfg.streams) == VIEWS3
    assert 0 < cfg.cross_epoch < cfg.epochs and cfg.ssl.queue_size < 32768
