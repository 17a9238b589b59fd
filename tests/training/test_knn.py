"""Weighted kNN against a brute-force numpy reference; fusion; CLI table/JSON; errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch = pytest.importorskip("torch")

from tests.helpers import protocol_args, run_cli, write_cache, write_pretrain  # noqa: E402


def knn_reference(
    train: np.ndarray, train_y: np.ndarray, query: np.ndarray, num_classes: int, k: int, t: float
) -> np.ndarray:
    """Brute force, one query at a time, in float64: sum of exp(cos/t) over the k most similar."""
    tr = train / np.linalg.norm(train, axis=1, keepdims=True)
    out = np.zeros((len(query), num_classes))
    for i, q in enumerate(query):
        q = q / np.linalg.norm(q)
        sims = np.array([float(np.dot(q, r)) for r in tr])
        nearest = np.argsort(-sims, kind="stable")[: min(k, len(tr))]
        for j in nearest:
            out[i, train_y[j]] += np.exp(sims[j] / t)
    return out


@pytest.mark.parametrize("k", [1, 10, 20, 200])
def test_knn_scores_equal_brute_force_numpy(k):
    from training.protocols.knn import knn_scores

    rng = np.random.default_rng(k)
    train, query = rng.normal(size=(150, 12)), rng.normal(size=(23, 12))
    y = rng.integers(0, 5, 150)
    ref = knn_reference(train, y, query, 5, k, 0.1)
    got = knn_scores(
        torch.tensor(train, dtype=torch.float32),
        torch.tensor(y),
        torch.tensor(query, dtype=torch.float32),
        5,
        k=k,
        t=0.1,
        chunk=7,
    )
    np.testing.assert_allclose(got.numpy(), ref, rtol=2e-4)
    assert (got.argmax(1).numpy() == ref.argmax(1)).all()


def test_knn_evaluate_fused_is_mean_cosine_and_matches_reference():
    from training.protocols.knn import fuse_features, knn_evaluate

    rng = np.random.default_rng(0)
    tr = {v: torch.tensor(rng.normal(size=(60, 8)), dtype=torch.float32) for v in ("joint", "bone")}
    ev = {v: torch.tensor(rng.normal(size=(15, 8)), dtype=torch.float32) for v in ("joint", "bone")}
    ytr, yev = torch.tensor(rng.integers(0, 3, 60)), torch.tensor(rng.integers(0, 3, 15))
    fused_tr, fused_ev = fuse_features(tr), fuse_features(ev)
    # cosine of the concatenation = mean of the per-stream cosines
    cos = torch.nn.functional.cosine_similarity
    mean_cos = sum(cos(tr[v][:, None], ev[v][None], dim=2) for v in tr) / 2
    torch.testing.assert_close(cos(fused_tr[:, None], fused_ev[None], dim=2), mean_cos, rtol=1e-5, atol=1e-6)
    res, _ = knn_evaluate(tr, ytr, ev, yev, 3, ks=(1, 10), t=0.1)
    assert set(res) == {"joint", "bone", "fused"}
    for key in res:
        a = fused_tr.numpy() if key == "fused" else tr[key].numpy()
        b = fused_ev.numpy() if key == "fused" else ev[key].numpy()
        for k in (1, 10):
            pred = knn_reference(a, ytr.numpy(), b, 3, k, 0.1)
            top1 = 100 * np.mean(pred.argmax(1) == yev.numpy())
            assert res[key][k]["top1"] == pytest.approx(top1)


def test_knn_k_larger_than_the_bank_uses_every_sample():
    from training.protocols.knn import knn_scores

    tr = torch.eye(3)
    s = knn_scores(tr, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0, 0.0]]), 2, k=200, t=1.0)
    np.testing.assert_allclose(s.numpy(), [[np.e, 2.0]], rtol=1e-6)


def test_cli_knn_table_and_json(tmp_path, capsys):
    cache = write_cache(tmp_path / "c.h5")
    ck = write_pretrain(tmp_path / "p.pt", cache, streams=["joint", "motion"])
    code, out, err = run_cli(
        protocol_args("knn", cache, ck, "-k", "1,5", "--json", str(tmp_path / "k.json")),
        capsys,
    )
    assert code == 0, err
    assert "top1@1" in out and "fused" in out
    rep = json.loads((tmp_path / "k.json").read_text())
    assert set(rep["results"]) == {"joint", "motion", "fused"} and set(rep["results"]["joint"]) == {"1", "5"}
    code, _, err = run_cli(protocol_args("knn", cache, ck, "--streams", "accel"), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "accel" in err
    code, _, err = run_cli(protocol_args("knn", cache, ck, "-k", "0"), capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1
