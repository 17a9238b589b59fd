"""Torch views equal the numpy views of crossclr_infer, also after ONNX export."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from crossclr_infer import views as npviews
from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import get_layout
from training.views import ViewTransform, compute_view

NTU = get_layout("ntu-rgb+d")


@pytest.mark.parametrize("layout_name", ["ntu-rgb+d", "kinect-v1"])
@pytest.mark.parametrize("view", npviews.VIEWS)
def test_equals_numpy(view: str, layout_name: str) -> None:
    layout = get_layout(layout_name)
    x = np.random.default_rng(1).normal(size=(3, 3, 10, layout.num_joints, 2)).astype(np.float32)
    got = compute_view(torch.from_numpy(x), view, layout).numpy()
    np.testing.assert_allclose(got, npviews.compute_view(x, view, layout), rtol=1e-6, atol=1e-6)
    # unbatched (C, T, V, M) works too
    np.testing.assert_allclose(compute_view(torch.from_numpy(x[0]), view, layout).numpy(),
                               npviews.compute_view(x[0], view, layout), rtol=1e-6, atol=1e-6)


def test_hand_computed_values() -> None:
    x = torch.zeros(1, 3, 4, 25, 1)
    x[0, 0, :, 0, 0] = torch.tensor([0.0, 1.0, 3.0, 6.0])  # spine_base x over time
    m = compute_view(x, "motion", NTU)[0, 0, :, 0, 0]
    assert m.tolist() == [1.0, 2.0, 3.0, 0.0]
    a = compute_view(x, "accel", NTU)[0, 0, :, 0, 0]
    assert a.tolist() == [1.0, 1.0, 0.0, 0.0]
    x = torch.zeros(1, 3, 1, 25, 1)
    x[0, :, 0, 1, 0] = torch.tensor([1.0, 2.0, 3.0])  # spine_mid; its child is spine_base (joint 0)
    b = compute_view(x, "bone", NTU)[0, :, 0, :, 0]
    assert b[:, 0].tolist() == [-1.0, -2.0, -3.0]  # bone(1) = x1 − x2 (1-based): spine_base − spine_mid
    assert b[:, 1].tolist() == [1.0, 2.0, 3.0]  # bone(2) = x2 − x21
    assert b[:, 20].tolist() == [0.0, 0.0, 0.0]  # the center's bone is zero


def test_errors() -> None:
    with pytest.raises(CrossclrError, match="unknown view"):
        compute_view(torch.zeros(1, 3, 4, 25, 1), "speed", NTU)
    with pytest.raises(CrossclrError, match="24 joints"):
        compute_view(torch.zeros(1, 3, 4, 24, 1), "bone", NTU)


@pytest.mark.parametrize("view", ["motion", "bone", "accel"])
def test_onnx_export(view: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    mod = ViewTransform(view, NTU)
    buf = io.BytesIO()
    torch.onnx.export(mod, (torch.randn(2, 3, 8, 25, 2),), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).normal(size=(4, 3, 8, 25, 2)).astype(np.float32)
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], npviews.compute_view(x, view, NTU), atol=1e-6)
