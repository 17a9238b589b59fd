"""Augmentations against numpy references given the same drawn parameters."""

from __future__ import annotations

import numpy as np
import torch

from crossclr_infer.layouts import get_layout
from crossclr_infer.views import compute_view as np_view
from training.augment import augment, draw_crop_starts, draw_shear, shear, shear_matrices, temporal_crop
from training.views import compute_view

NTU = get_layout("ntu-rgb+d")


def np_crop(x: np.ndarray, start: int) -> np.ndarray:
    """One sample (C, T, V, M): numpy 'symmetric' pad of T // 6 frames, then T frames from start."""
    t = x.shape[1]
    p = t // 6
    padded = np.pad(x, ((0, 0), (p, p), (0, 0), (0, 0)), mode="symmetric")
    return padded[:, start:start + t]


def np_shear(x: np.ndarray, s: np.ndarray) -> np.ndarray:
    r = np.array([[1, s[0], s[3]], [s[1], 1, s[4]], [s[2], s[5], 1]])
    return np.einsum("ij,jtvm->itvm", r, x)


def test_temporal_crop_matches_numpy_symmetric_pad() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 50, 25, 2)).astype(np.float32)
    starts = torch.tensor([0, 16, 8, 3, 12])  # p = 8: the full range [0, 16]
    got = temporal_crop(torch.from_numpy(x), starts).numpy()
    for i in range(5):
        np.testing.assert_array_equal(got[i], np_crop(x[i], int(starts[i])))


def test_crop_hand_example() -> None:
    x = torch.arange(12.0).view(1, 1, 12, 1, 1)  # T = 12, p = 2: padded 1 0 | 0..11 | 11 10
    assert temporal_crop(x, torch.tensor([0])).flatten().tolist() == [1, 0] + list(range(10))
    assert temporal_crop(x, torch.tensor([4])).flatten().tolist() == list(range(2, 12)) + [11, 10]


def test_draws_in_range_and_seeded() -> None:
    g = torch.Generator().manual_seed(3)
    s = draw_crop_starts(4000, 50, g)
    assert int(s.min()) == 0 and int(s.max()) == 16
    sh = draw_shear(4000, g)
    assert sh.shape == (4000, 6) and float(sh.min()) >= -0.5 and float(sh.max()) < 0.5
    assert abs(float(sh.mean())) < 0.02
    a = draw_shear(3, torch.Generator().manual_seed(7))
    b = draw_shear(3, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_shear_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 3, 6, 25, 2))
    params = rng.uniform(-0.5, 0.5, size=(4, 6))
    got = shear(torch.from_numpy(x), torch.from_numpy(params)).numpy()
    for i in range(4):
        np.testing.assert_allclose(got[i], np_shear(x[i], params[i]), rtol=1e-12)
    r = shear_matrices(torch.from_numpy(params[:1]))[0].numpy()
    assert np.allclose(np.diag(r), 1) and r[0, 1] == params[0, 0] and r[2, 1] == params[0, 5]


def test_augment_is_crop_then_shear_with_drawn_params_and_seeded() -> None:
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.normal(size=(3, 3, 24, 25, 2)).astype(np.float32))
    out = augment(x, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    starts, params = draw_crop_starts(3, 24, g), draw_shear(3, g)
    for i in range(3):
        ref = np_shear(np_crop(x[i].numpy().astype(np.float64), int(starts[i])), params[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(out, augment(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(out, augment(x, torch.Generator().manual_seed(6)))
    assert out.dtype == x.dtype and out.shape == x.shape


def test_views_after_augmentation_equal_numpy() -> None:
    x = torch.randn(2, 3, 30, 25, 2)
    xa = augment(x, torch.Generator().manual_seed(0))
    for view in ("motion", "bone", "accel"):
        np.testing.assert_allclose(compute_view(xa, view, NTU).numpy(), np_view(xa.numpy(), view, NTU),
                                   rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# MAMP augmentation

def _np_rot(a: np.ndarray) -> np.ndarray:
    """Rz·Ry·Rx for angles (x, y, z) in the MAMP sign convention, element by element."""
    cx, cy, cz = np.cos(a)
    sx, sy, sz = np.sin(a)
    rx = np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]])
    ry = np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
    rz = np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _np_crop_resize(x: np.ndarray, start: int, length: int, frames: int) -> np.ndarray:
    seg = x[:, start:start + length]
    out = np.zeros((x.shape[0], frames) + x.shape[2:])
    for d in range(frames):
        src = max((d + 0.5) * length / frames - 0.5, 0.0)
        i0 = int(np.floor(src))
        i1 = min(i0 + 1, length - 1)
        out[:, d] = (1 - (src - i0)) * seg[:, i0] + (src - i0) * seg[:, i1]
    return out


def test_mamp_rotation_matches_numpy() -> None:
    from training.augment import rotate, rotation_matrices

    rng = np.random.default_rng(0)
    angles = rng.uniform(-0.3, 0.3, size=(4, 3))
    r = rotation_matrices(torch.from_numpy(angles)).numpy()
    for i in range(4):
        np.testing.assert_allclose(r[i], _np_rot(angles[i]), atol=1e-12)
    x = rng.normal(size=(4, 3, 6, 5, 2))
    got = rotate(torch.from_numpy(x), torch.from_numpy(angles)).numpy()
    ref = np.stack([np.einsum("ij,jtvm->itvm", _np_rot(angles[i]), x[i]) for i in range(4)])
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_mamp_crop_resize_matches_torch_interpolate_and_numpy() -> None:
    from training.augment import crop_resize

    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 3, 40, 4, 2))
    starts, lengths = np.array([0, 5, 13]), np.array([40, 20, 27])
    got = crop_resize(torch.from_numpy(x), torch.from_numpy(starts), torch.from_numpy(lengths), 16).numpy()
    for i in range(3):
        ref = _np_crop_resize(x[i], int(starts[i]), int(lengths[i]), 16)
        np.testing.assert_allclose(got[i], ref, atol=1e-12)
        # the official code's resize: bilinear interpolate of (C·V·M, length) to (C·V·M, 16)
        seg = torch.from_numpy(x[i, :, starts[i]:starts[i] + lengths[i]])  # (C, L, V, M)
        flat = seg.permute(0, 2, 3, 1).reshape(1, 1, -1, int(lengths[i]))  # (1, 1, C·V·M, L)
        off = torch.nn.functional.interpolate(flat, size=(flat.shape[2], 16), mode="bilinear",
                                              align_corners=False)
        off = off.reshape(3, 4, 2, 16).permute(0, 3, 1, 2).numpy()  # (C, 16, V, M)
        np.testing.assert_allclose(got[i], off, atol=1e-12)


def test_mamp_crops_respect_bounds_and_seed() -> None:
    from training.augment import augment_mamp, draw_mamp_crops, valid_lengths

    valid = torch.tensor([120, 100, 70, 30] * 50)
    g = torch.Generator().manual_seed(0)
    starts, lengths = draw_mamp_crops(valid, g)
    assert torch.all(lengths <= valid) and torch.all(starts >= 0) and torch.all(starts + lengths <= valid)
    assert torch.all(lengths >= torch.clamp(valid, max=64))  # at least 64 frames, or all when fewer
    assert torch.all(lengths[valid == 120] >= 64) and lengths[valid == 120].max() > 100
    assert torch.all(lengths[valid == 30] == 30)
    x = torch.zeros(2, 3, 20, 4, 2)
    x[0, :, :12] = 1.0
    x[1] = 1.0
    assert valid_lengths(x).tolist() == [12, 20]
    y = torch.randn(3, 3, 32, 4, 2)
    a = augment_mamp(y, torch.Generator().manual_seed(5), min_frames=8)
    b = augment_mamp(y, torch.Generator().manual_seed(5), min_frames=8)
    c = augment_mamp(y, torch.Generator().manual_seed(6), min_frames=8)
    assert torch.equal(a, b) and not torch.equal(a, c) and a.shape == y.shape


def test_augment_settings_are_the_named_augmentations() -> None:
    """``augment`` in a config accepts "auto" and exactly the names of ``AUGMENTATIONS`` (which the trainer
    and the objectives' ``augmentation`` look up); "none" leaves the batch as it is."""
    import typing

    from training.augment import AUGMENTATIONS, augment_mamp
    from training.config import TrainConfig
    from training.objectives import objective_class, objective_names

    settings = set(typing.get_args(typing.get_type_hints(TrainConfig)["augment"]))
    assert settings - {"auto"} == set(AUGMENTATIONS)
    assert {objective_class(n).augmentation for n in objective_names()} <= set(AUGMENTATIONS)
    assert AUGMENTATIONS["crossclr"] is augment and AUGMENTATIONS["mamp"] is augment_mamp
    x = torch.randn(2, 3, 8, 25, 2)
    assert AUGMENTATIONS["none"](x, torch.Generator().manual_seed(0)) is x
