"""CrosSCLR / SkeletonCLR composition: init, momentum in both stages, own projectors, losses, queue."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from tests.helpers import momentum_stepped_copy
from training.encoders.config import EncoderConfig
from training.objectives.crossclr import CrosSCLR, SSLConfig
from training.objectives.ssl import cross_view_loss, info_nce
from training.views import compute_view

NTU = get_layout("ntu-rgb+d")
ENC = EncoderConfig(base_channels=4, hidden_dim=8, feature_dim=6, stage_blocks=(1, 1, 1), dropout=0.0)
VIEWS3 = ("joint", "motion", "bone")


def make(views=VIEWS3, **ssl) -> CrosSCLR:
    torch.manual_seed(0)
    cfg = SSLConfig(**{"queue_size": 16, "momentum": 0.9, **ssl})
    return CrosSCLR(NTU, ENC, cfg, views)


def batch(n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 25, 2, generator=g), torch.randn(n, 3, 8, 25, 2, generator=g)


def test_init_key_encoders_are_copies_and_frozen() -> None:
    m = make()
    for v in VIEWS3:
        sq, sk = m.encoders_q[v].state_dict(), m.encoders_k[v].state_dict()
        assert sq.keys() == sk.keys() and all(torch.equal(sq[k], sk[k]) for k in sq)
        assert all(not p.requires_grad for p in m.encoders_k[v].parameters())
        assert all(p.requires_grad for p in m.encoders_q[v].parameters())
    # every view has its own projector (no shared modules or storage)
    ptrs = {m.encoders_q[v].fc[2].weight.data_ptr() for v in VIEWS3}
    assert len(ptrs) == 3
    assert not torch.equal(m.encoders_q["joint"].fc[2].weight, m.encoders_q["motion"].fc[2].weight)
    assert {"queue.keys_joint", "queue.keys_motion", "queue.keys_bone", "queue.labels", "queue.ptr"} <= set(
        m.state_dict())


def _reference(m: CrosSCLR, x1, x2, cross: bool) -> dict[str, torch.Tensor]:
    """Recompute the losses by hand on a copy of the model taken before the step."""
    ref = momentum_stepped_copy(m)
    cfg = ref.ssl_cfg
    q = {v: F.normalize(ref.encoders_q[v](compute_view(x1, v, NTU)), dim=1) for v in ref.views}
    with torch.no_grad():
        k = {v: F.normalize(ref.encoders_k[v](compute_view(x2, v, NTU)), dim=1) for v in ref.views}
    queue = {v: ref.queue.keys(v).clone() for v in ref.views}
    out = {}
    for u in ref.views:
        if not cross or len(ref.views) == 1:
            out[u] = info_nce(q[u], k[u], queue[u], cfg.temperature)
        else:
            terms = [cross_view_loss((q[u] * k[u]).sum(1), q[u] @ queue[u].t(), q[w] @ queue[w].t(),
                                     temperature=cfg.temperature, topk=cfg.topk, form=cfg.cross_loss)
                     for w in ref.views if w != u]
            out[u] = sum(terms) / len(terms)
    return out, k, ref


@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("views", [VIEWS3, ("joint",), ("motion", "accel")])
def test_losses_momentum_and_queue(cross: bool, views: tuple[str, ...]) -> None:
    m = make(views)
    x1, x2 = batch()
    expect, keys, ref = _reference(m, x1, x2, cross)
    before_q = {v: [p.detach().clone() for p in m.encoders_q[v].parameters()] for v in views}
    before_k = {v: [p.detach().clone() for p in m.encoders_k[v].parameters()] for v in views}
    labels = torch.tensor([0, 1, 2, 3])
    out = m(x1, x2, cross=cross, labels=labels)
    for v in views:
        torch.testing.assert_close(out[f"loss_{v}"], expect[v], rtol=1e-5, atol=1e-6)
        # every key encoder got its EMA update, in both stages
        for pk, bk, bq in zip(m.encoders_k[v].parameters(), before_k[v], before_q[v], strict=True):
            torch.testing.assert_close(pk, 0.9 * bk + 0.1 * bq)
        # the keys were enqueued at the old pointer, index-aligned across views
        torch.testing.assert_close(m.queue.keys(v)[:4], keys[v])
    torch.testing.assert_close(out["loss"], sum(expect[v] for v in views))
    assert int(m.queue.ptr) == 4 and m.queue.labels[:4].tolist() == [0, 1, 2, 3]
    assert "mining_precision" in out
    out["loss"].backward()
    for v in views:
        assert all(p.grad is not None for p in m.encoders_q[v].parameters() if p.requires_grad)
        assert all(p.grad is None for p in m.encoders_k[v].parameters())


def test_mining_precision_counts_same_class_entries() -> None:
    m = make(("joint",), topk=1)
    x1, _ = batch()
    labels = torch.tensor([0, 1, 2, 3])
    out = m(x1, x1, cross=False, labels=labels)
    assert torch.isnan(out["mining_precision"])  # queue labels still unknown
    # the queue now holds this batch's keys (rows 0..3, labels 0..3): the same inputs mine themselves back
    with torch.no_grad():
        m.queue.labels[4:] = -1
        emb = F.normalize(m.encoders_k["joint"](x1), dim=1)  # (N, D), the keys the queue holds
        assert (emb @ m.queue.keys("joint").T).argmax(1).tolist() == [0, 1, 2, 3]
        out = m(x1, x1, cross=False, labels=labels)
        assert float(out["mining_precision"]) == 1.0  # each one mined its own entry
        out = m(x1, x1, cross=False, labels=torch.tensor([1, 2, 3, 0]))
        assert float(out["mining_precision"]) == 0.0  # ... whose label no longer matches
    assert "mining_precision" not in m(x1, x1, cross=False)


def test_context_gradient_reaches_partner_view_in_cross_stage() -> None:
    m = make(("joint", "motion"))
    x1, x2 = batch()
    out = m(x1, x2, cross=True)
    out["loss_joint"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.encoders_q["motion"].parameters())


def test_seed_form_and_queue_larger_than_batch_wraparound() -> None:
    m = make(VIEWS3, cross_loss="seed", queue_size=6)
    for s in range(3):
        x1, x2 = batch(4, s)
        out = m(x1, x2, cross=True)
        assert torch.isfinite(out["loss"])
    assert int(m.queue.ptr) == 12 % 6


def test_bf16_autocast_keeps_loss_and_queue_fp32() -> None:
    m = make(("joint", "motion"))
    x1, x2 = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x1, x2, cross=True, labels=torch.tensor([0, 1, 0, 1]))
    assert out["loss"].dtype == torch.float32
    assert m.queue.keys("joint").dtype == torch.float32
    out["loss"].backward()


def test_bad_views_and_config() -> None:
    with pytest.raises(CrossclrError, match="unknown streams"):
        CrosSCLR(NTU, ENC, SSLConfig(queue_size=8), ("joint", "speed"))
    with pytest.raises(CrossclrError, match="repeat"):
        CrosSCLR(NTU, ENC, SSLConfig(queue_size=8), ("joint", "joint"))
    with pytest.raises(CrossclrError, match="cross_loss"):
        SSLConfig(cross_loss="x")
    with pytest.raises(CrossclrError, match="unknown keys"):
        SSLConfig.from_dict({"K": 3})
    assert SSLConfig.from_dict(SSLConfig().to_dict()) == SSLConfig()
