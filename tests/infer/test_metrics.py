"""Metrics shared by the ONNX reports and training's protocols: hand-computed values (no torch here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crossclr_infer.errors import CrossclrError
from crossclr_infer.metrics import DEFAULT_FUSION_WEIGHTS, FUSIONS, fusion_weights_for, topk_percent


def test_topk_percent_hand_values_and_ties_broken_by_lower_index():
    logits = np.array([[0.1, 0.9, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    labels = np.array([1, 1, 2, 0])
    # row 0: 1 first (hit@1); row 1: tie 0/1 -> 0 first, 1 second; row 2: all tied -> order 0, 1, 2;
    # row 3: order 2, 1, 0
    got = topk_percent(logits, labels, ks=(1, 2, 3, 5))
    assert got == pytest.approx({"top1": 25.0, "top2": 50.0, "top3": 100.0, "top5": 100.0})


def test_topk_percent_of_no_samples_is_nan():
    got = topk_percent(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert set(got) == {"top1", "top5"} and all(math.isnan(v) for v in got.values())


def test_fusion_weights_defaults_joint_mean_and_errors():
    assert FUSIONS == ("joint", "separate")
    assert DEFAULT_FUSION_WEIGHTS == {"joint": 0.6, "motion": 0.4, "bone": 0.6, "accel": 0.4}
    assert fusion_weights_for("joint", ["joint", "motion", "bone", "accel"]) == {
        "joint": 0.25, "motion": 0.25, "bone": 0.25, "accel": 0.25}
    assert fusion_weights_for("separate", ["bone", "accel"], {"accel": 0.1}) == {"bone": 0.6, "accel": 0.1}
    with pytest.raises(CrossclrError, match="unknown fusion"):
        fusion_weights_for("mean", ["joint"])
    with pytest.raises(CrossclrError, match="not among the streams"):
        fusion_weights_for("separate", ["joint"], {"bone": 1.0})
