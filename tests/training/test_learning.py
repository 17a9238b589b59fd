"""3-stream CrosSCLR pretraining with the tiny preset learns: a kNN probe on frozen features beats the same
probe on the randomly initialised encoders (same architecture, same seed) on held-out synthetic subjects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossclr_infer.cache import open_cache
from crossclr_infer.synth import generate_synthetic
from training.config import load_config
from training.trainer import build_model, train
from training.views import compute_view


def knn_accuracy(train_f: np.ndarray, train_y: np.ndarray, test_f: np.ndarray, test_y: np.ndarray, *,
                 k: int = 10, t: float = 0.1) -> float:
    """Weighted kNN on cosine similarity (votes exp(sim / t)), in plain numpy."""
    a = train_f / np.linalg.norm(train_f, axis=1, keepdims=True)
    b = test_f / np.linalg.norm(test_f, axis=1, keepdims=True)
    sim = b @ a.T  # (N_test, N_train)
    idx = np.argsort(-sim, axis=1)[:, :k]
    votes = np.zeros((len(b), int(train_y.max()) + 1))
    for i in range(len(b)):
        np.add.at(votes[i], train_y[idx[i]], np.exp(sim[i, idx[i]] / t))
    return float((votes.argmax(1) == test_y).mean())


def test_knn_on_hand_computed_case() -> None:
    tr = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    ty = np.array([0, 0, 1])
    assert knn_accuracy(tr, ty, np.array([[1.0, 0.05], [0.05, 1.0]]), np.array([0, 1]), k=1) == 1.0
    # with k = 3 the two class-0 neighbours outvote the single, closer class-1 one
    assert knn_accuracy(tr, ty, np.array([[0.3, 1.0]]), np.array([0]), k=3, t=10.0) == 1.0


def _features(model: torch.nn.Module, x: torch.Tensor, layout, views) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        return {v: model.encoders_q[v].forward_features(compute_view(x, v, layout)).numpy() for v in views}


@pytest.mark.slow
def test_tiny_crossclr_pretraining_beats_random_init(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = generate_synthetic(tmp_path / "synth.h5", classes=6, per_class=40, seed=0, frames=25)
    cfg = load_config("tiny", {"device": "cpu", "deterministic": True, "tensorboard": False})
    assert cfg.streams == ("joint", "motion", "bone") and 0 < cfg.cross_epoch < cfg.epochs
    result = train(cfg, data, tmp_path / "run", progress=False)
    stages = [r["stage"] for r in result.epoch_records]
    assert "single" in stages and "cross" in stages
    with open_cache(data) as cache:
        tr, va = cache.split("train"), cache.split("val")
        x_tr, x_va = torch.from_numpy(tr.read_all()), torch.from_numpy(va.read_all())
        y_tr, y_va = tr.labels, va.labels
        layout = cache.layout
        torch.manual_seed(cfg.seed)  # the trainer's initial weights
        from training.data import open_train_data

        random_model = build_model(cfg, open_train_data(data))
    accs = {}
    for name, model in (("trained", result.model), ("random", random_model)):
        f_tr, f_va = _features(model, x_tr, layout, cfg.streams), _features(model, x_va, layout, cfg.streams)
        accs[name] = {v: knn_accuracy(f_tr[v], y_tr, f_va[v], y_va) for v in cfg.streams}
    mean = {n: float(np.mean(list(a.values()))) for n, a in accs.items()}
    # measured: trained mean 0.40 vs random 0.27 (joint 0.56/0.49, motion 0.30/0.11, bone 0.32/0.21)
    assert mean["trained"] >= mean["random"] + 0.06, accs
    assert accs["trained"]["motion"] >= accs["random"]["motion"] + 0.08, accs
    # no stream may end clearly below its random init; a tie within 3 of the 96 validation samples is allowed,
    # because per-stream kNN on one seed moves by a sample or two between CPUs (Intel SPR/AMX measured bone
    # 0.292 trained vs 0.313 random, Zen 5 0.32 vs 0.21) while the mean and motion margins above hold on both
    slack = 3 / len(y_va)
    assert all(accs["trained"][v] >= accs["random"][v] - slack for v in cfg.streams), accs


@pytest.mark.slow
def test_tiny_mamp_pretraining_predicts_held_out_motion(tmp_path: Path) -> None:
    """MAMP learns its task: on held-out synthetic subjects, with the same masks, the trained model's masked
    motion error is far below the random init's and of the order of predicting no motion at all.

    What this does not show: that MAMP features beat random ones on tiny data. Measured (kNN, 3 generator
    seeds, 40 epochs): trained 0.61 / 0.49 / 0.47 vs random 0.49 / 0.47 / 0.44, and no gain at 32 frames and
    80 epochs — too weak and seed-dependent to assert (see docs/results.md). The raw motion target is used
    (``norm_target = false``): the generator jitters every joint, so the official per-patch normalisation
    turns still joints into unit-variance noise and the loss sits at its predict-zero level for hundreds of
    steps."""
    from training.objectives.mamp import masked_mse, motion_target

    torch.set_num_threads(1)
    data = generate_synthetic(tmp_path / "synth.h5", classes=6, per_class=20, seed=1, frames=16)
    cfg = load_config("tiny-transformer", {"device": "cpu", "deterministic": True, "tensorboard": False,
                                           "epochs": 10, "lr": 2e-3, "bf16": False,
                                           "mamp.norm_target": False})
    result = train(cfg, data, tmp_path / "run", progress=False)
    with open_cache(data) as cache:
        x_va = torch.from_numpy(cache.split("val").read_all())
        torch.manual_seed(cfg.seed)
        from training.data import open_train_data

        random_model = build_model(cfg, open_train_data(data))
    n, c, t, v, m = x_va.shape
    bodies = x_va.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)  # (N, C, T, V, M) -> (N·M, C, T, V)
    losses, masks = {}, {}
    for name, model in (("trained", result.model), ("random", random_model)):
        model.eval()
        with torch.no_grad():
            out = model.forward_view(bodies, "joint", torch.Generator().manual_seed(7))
        losses[name], masks[name] = float(out.loss), out.tokens.mask
    assert torch.equal(masks["trained"], masks["random"])  # the same masked tokens for both
    target = motion_target(bodies, 4, normalize=False)
    losses["zero"] = float(masked_mse(torch.zeros_like(target), target, masks["trained"]))
    # measured (Intel Xeon, 1 thread): trained 0.0058, random init 1.35, predicting no motion 0.0042 — after
    # 10 epochs the model has learned the scale and the smooth part of the motion but not yet to beat "no
    # motion" on jittered held-out data; that bound is reported, not asserted
    assert losses["trained"] < 0.05 * losses["random"], losses
    assert losses["trained"] < 2.0 * losses["zero"], losses
