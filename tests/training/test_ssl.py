"""SSL units against plain numpy references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossclr_infer.errors import CrossclrError
from training.objectives.ssl import (
    MemoryQueue,
    cross_view_loss,
    info_nce,
    mining_precision,
    momentum_update,
    topk_positive_mask,
)


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    a = rng.normal(size=shape)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


# ------------------------------------------------------------------------------------------- queue
@pytest.mark.parametrize("size,batches",
                         [(10, [3, 3, 3, 3, 3]), (7, [4, 4, 4]), (5, [12, 2]), (8, [8, 1, 8])])
def test_queue_wraparound_matches_sequential_fifo(size: int, batches: list[int]) -> None:
    torch.manual_seed(0)
    q = MemoryQueue(("joint", "bone"), dim=4, size=size)
    ref = {v: q.keys(v).numpy().copy() for v in q.views}
    ref_labels = np.full(size, -1)
    ptr, counter = 0, 0
    for n in batches:
        keys = {v: torch.randn(n, 4) for v in q.views}
        labels = torch.arange(counter, counter + n)
        counter += n
        for i in range(n):  # one row at a time: the definition of a FIFO ring buffer
            for v in q.views:
                ref[v][ptr] = keys[v][i].numpy()
            ref_labels[ptr] = int(labels[i])
            ptr = (ptr + 1) % size
        q.enqueue(keys, labels)
        assert int(q.ptr) == ptr
        for v in q.views:
            np.testing.assert_array_equal(q.keys(v).numpy(), ref[v])
        np.testing.assert_array_equal(q.labels.numpy(), ref_labels)


def test_queue_initial_state_and_errors() -> None:
    q = MemoryQueue(("joint",), dim=8, size=16)
    np.testing.assert_allclose(np.linalg.norm(q.keys("joint").numpy(), axis=1), 1.0, rtol=1e-6)
    assert (q.labels == -1).all() and int(q.ptr) == 0
    assert {"keys_joint", "labels", "ptr"} == set(dict(q.named_buffers()))
    q.enqueue({"joint": torch.ones(3, 8)})  # no labels: stored as unknown (−1)
    assert (q.labels == -1).all()
    with pytest.raises(CrossclrError, match="expected"):
        q.enqueue({"bone": torch.ones(3, 8)})


# ------------------------------------------------------------------------------------------- EMA
def test_momentum_update_is_ema() -> None:
    torch.manual_seed(0)
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().numpy().copy() for p in dst.parameters()]
    momentum_update(dst, src, 0.9)
    for b, s, d in zip(before, src.parameters(), dst.parameters(), strict=True):
        np.testing.assert_allclose(d.detach().numpy(), 0.9 * b + 0.1 * s.detach().numpy(), rtol=1e-6)
    momentum_update(dst, src, 0.0)
    for s, d in zip(src.parameters(), dst.parameters(), strict=True):
        assert torch.equal(s, d)


# ------------------------------------------------------------------------------------------- losses
def test_info_nce_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    q, k, queue = unit(rng, 6, 5), unit(rng, 6, 5), unit(rng, 11, 5)
    t = 0.07
    logits = np.concatenate([(q * k).sum(1, keepdims=True), q @ queue.T], axis=1) / t
    ref = -np_log_softmax(logits)[:, 0].mean()
    got = info_nce(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(queue), t)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(float(got), ref, rtol=1e-5)


def test_topk_positive_mask() -> None:
    sim = torch.tensor([[0.1, 0.9, 0.3, 0.5], [0.8, 0.2, 0.7, 0.0]])
    assert topk_positive_mask(sim, 1).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]
    assert topk_positive_mask(sim, 2).tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]
    with pytest.raises(CrossclrError, match="top-k"):
        topk_positive_mask(sim, 5)


def np_cross(q_u, k_u, queue_u, q_v, queue_v, t, topk, form, context=True):
    l_pos = (q_u * k_u).sum(1, keepdims=True)
    l_neg = q_u @ queue_u.T
    l_neg_v = q_v @ queue_v.T
    n, kq = l_neg.shape
    mined = np.zeros((n, kq))
    for i in range(n):
        mined[i, np.argsort(-l_neg_v[i])[:topk]] = 1
    if context:
        logits = np.concatenate([l_pos, l_neg, l_neg * l_neg_v], 1) / t
        mask = np.concatenate([np.ones((n, 1)), mined, mined], 1)
    else:
        logits = np.concatenate([l_pos, l_neg], 1) / t
        mask = np.concatenate([np.ones((n, 1)), mined], 1)
    logp = np_log_softmax(logits)
    if form == "official":
        return np.mean([-(logp[i][mask[i] > 0]).mean() for i in range(n)])
    p = np.exp(logp)
    return np.mean([-np.log(p[i][mask[i] > 0].sum()) for i in range(n)])


@pytest.mark.parametrize("form", ["official", "seed"])
@pytest.mark.parametrize("topk,context", [(1, True), (3, True), (2, False)])
def test_cross_view_loss_matches_numpy(form: str, topk: int, context: bool) -> None:
    rng = np.random.default_rng(4)
    q_u, k_u, q_v = unit(rng, 5, 8), unit(rng, 5, 8), unit(rng, 5, 8)
    queue_u, queue_v = unit(rng, 13, 8), unit(rng, 13, 8)
    t = 0.1
    tq_u, tq_v = torch.tensor(q_u, requires_grad=True), torch.tensor(q_v, requires_grad=True)
    tqu, tqv = torch.from_numpy(queue_u), torch.from_numpy(queue_v)
    got = cross_view_loss((tq_u * torch.from_numpy(k_u)).sum(1), tq_u @ tqu.t(), tq_v @ tqv.t(),
                          temperature=t, topk=topk, form=form, context=context)
    np.testing.assert_allclose(float(got), np_cross(q_u, k_u, queue_u, q_v, queue_v, t, topk, form, context),
                               rtol=1e-5)
    got.backward()
    # the context block is not detached: view v's query receives gradient (only through the context)
    v_grad = 0.0 if tq_v.grad is None else float(tq_v.grad.abs().sum())
    assert (v_grad > 0) == context
    assert tq_u.grad.abs().sum() > 0


def test_official_and_seed_forms_differ_and_order() -> None:
    """−log Σp ≤ mean −log p over the same positives (log is concave), equal with one positive."""
    rng = np.random.default_rng(5)
    q_u, k_u, q_v, queue_u, queue_v = (unit(rng, *s) for s in [(4, 6), (4, 6), (4, 6), (9, 6), (9, 6)])
    args = [torch.from_numpy(a) for a in ((q_u * k_u).sum(1), q_u @ queue_u.T, q_v @ queue_v.T)]
    off = float(cross_view_loss(*args, temperature=0.07, form="official"))
    seed = float(cross_view_loss(*args, temperature=0.07, form="seed"))
    assert seed < off
    with pytest.raises(CrossclrError, match="form"):
        cross_view_loss(*args, temperature=0.07, form="nope")


def test_mining_precision() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.2, 0.8], [0.1, 0.9, 0.0]])
    qlab = torch.tensor([2, -1, 1])
    # row 0 mines 0 (label 2 == 2: hit); row 1 mines 2 (label 1 != 0: miss); row 2 mines 1 (unknown: skipped)
    assert float(mining_precision(sim, qlab, torch.tensor([2, 0, 5]), 1)) == pytest.approx(0.5)
    assert torch.isnan(mining_precision(sim, torch.full((3,), -1), torch.tensor([0, 0, 0]), 1))
