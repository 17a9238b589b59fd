"""Batched, seeded training augmentations on the input's device (docs/design.md §3).

Random draws and deterministic transforms are separate functions so each transform can be checked
against a numpy reference given the same parameters. Order: temporal crop, then shear.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from crossclr_infer.errors import CrossclrError


def _gen_device(generator: torch.Generator | None, x: torch.Tensor) -> torch.device:
    return generator.device if generator is not None else x.device


def draw_crop_starts(n: int, frames: int, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """(n,) int64 crop starts, uniform in [0, 2p] with p = frames // 6, drawn on ``device``."""
    p = frames // 6
    return torch.randint(0, 2 * p + 1, (n,), generator=generator, device=device)


def draw_shear(n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu",
               magnitude: float = 0.5) -> torch.Tensor:
    """(n, 6) shear values U(−magnitude, magnitude): columns (a1, a2, a3, b1, b2, b3)."""
    return (torch.rand(n, 6, generator=generator, device=device) * 2 - 1) * magnitude


def temporal_crop(x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """Pad p = T // 6 frames on each side in numpy's ``symmetric`` mode, then take T frames from ``starts``.

    x: (N, C, T, V, M); starts: (N,) in [0, 2p].
    """
    n, c, t, v, m = x.shape
    p = t // 6
    if p == 0:
        return x
    padded = torch.cat([x[:, :, :p].flip(2), x, x[:, :, t - p:].flip(2)], dim=2)  # (N, C, T + 2p, V, M)
    idx = starts.to(x.device).view(n, 1) + torch.arange(t, device=x.device).view(1, t)  # (N, T)
    idx = idx.view(n, 1, t, 1, 1).expand(n, c, t, v, m)
    return torch.gather(padded, 2, idx)


def shear_matrices(params: torch.Tensor) -> torch.Tensor:
    """(N, 6) -> (N, 3, 3) R = [[1, a1, b1], [a2, 1, b2], [a3, b3, 1]]."""
    a1, a2, a3, b1, b2, b3 = params.unbind(dim=1)
    one = torch.ones_like(a1)
    rows = [torch.stack([one, a1, b1], 1), torch.stack([a2, one, b2], 1), torch.stack([a3, b3, one], 1)]
    return torch.stack(rows, dim=1)


def shear(x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """x' = R·x for every joint, frame and body; one R per sample. x: (N, 3, T, V, M)."""
    if x.shape[1] != 3:
        raise CrossclrError(f"shear augmentation needs 3 coordinate channels, got {x.shape[1]}")
    r = shear_matrices(params.to(device=x.device, dtype=x.dtype))
    return torch.einsum("nij,njtvm->nitvm", r, x)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Temporal crop (symmetric pad T // 6) then shear, parameters drawn independently per sample."""
    n, t = x.shape[0], x.shape[2]
    dev = _gen_device(generator, x)
    starts = draw_crop_starts(n, t, generator, dev)
    params = draw_shear(n, generator, dev)
    return shear(temporal_crop(x, starts.to(x.device)), params.to(x.device))


# ---------------------------------------------------------------------------------------------------------
# MAMP's training augmentation (docs/design.md §6): random valid crop + linear resize, then a random
# 3-axis rotation

MAMP_CROP = (0.5, 1.0)  # share of the valid frames kept, uniform
MAMP_MIN_CROP = 64  # the crop keeps at least this many frames (or all valid frames when fewer)
MAMP_ROTATION = 0.3  # radians, uniform in ±this about each axis


def valid_lengths(x: torch.Tensor) -> torch.Tensor:
    """(N,) frames with any non-zero value (MAMP counts valid frames this way). x: (N, C, T, V, M)."""
    return (x != 0).any(dim=4).any(dim=3).any(dim=1).sum(dim=1)


def draw_mamp_crops(valid: torch.Tensor, generator: torch.Generator | None = None,
                    interval: tuple[float, float] = MAMP_CROP, min_frames: int = MAMP_MIN_CROP
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, lengths), each (N,) int64: length = clip(⌊valid·p⌋, min_frames, valid) with p ~ U(interval),
    start uniform in [0, valid − length]."""
    n = valid.shape[0]
    dev = generator.device if generator is not None else valid.device
    valid = valid.to(dev).clamp(min=1)
    p = torch.rand(n, generator=generator, device=dev, dtype=torch.float64) * (interval[1] - interval[0])
    length = torch.floor(valid.double() * (p + interval[0])).long()
    length = torch.minimum(torch.clamp(length, min=min_frames), valid)
    u = torch.rand(n, generator=generator, device=dev, dtype=torch.float64)
    start = torch.floor(u * (valid - length + 1).double()).long().clamp(max=(valid - length))
    return start, length


def crop_resize(x: torch.Tensor, starts: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """Frames [start, start + length) of each sample, linearly resized to ``frames`` with half-pixel centres
    (torch ``interpolate(..., mode='bilinear', align_corners=False)`` along time). x: (N, C, T, V, M)."""
    n, c, t, v, m = x.shape
    starts = starts.to(x.device).view(n, 1).double()
    lengths = lengths.to(x.device).view(n, 1).double()
    d = torch.arange(frames, device=x.device, dtype=torch.float64).view(1, frames)
    src = ((d + 0.5) * lengths / frames - 0.5).clamp(min=0.0)  # (N, frames), relative to the start
    i0 = src.floor()
    w = (src - i0).to(x.dtype)
    i1 = torch.minimum(i0 + 1, lengths - 1)
    i0 = (i0 + starts).long()  # (N, frames) absolute frame indices
    i1 = (i1 + starts).long()

    def take(idx: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 2, idx.view(n, 1, frames, 1, 1).expand(n, c, frames, v, m))

    w = w.view(n, 1, frames, 1, 1)
    return take(i0) * (1 - w) + take(i1) * w


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(N, 3) angles (about x, y, z) -> (N, 3, 3) R = Rz·Ry·Rx in MAMP's sign convention:
    Rx = [[1,0,0],[0,c,s],[0,−s,c]], Ry = [[c,0,−s],[0,1,0],[s,0,c]], Rz = [[c,s,0],[−s,c,0],[0,0,1]]."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)  # (N, 3, 3)

    rx = mat([[one, zero, zero], [zero, c[:, 0], s[:, 0]], [zero, -s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, -s[:, 1]], [zero, one, zero], [s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], s[:, 2], zero], [-s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """x' = R·x for every frame, joint and body, one R per sample. x: (N, 3, T, V, M); angles: (N, 3)."""
    if x.shape[1] != 3:
        raise CrossclrError(f"rotation augmentation needs 3 coordinate channels, got {x.shape[1]}")
    r = rotation_matrices(angles.to(device=x.device, dtype=x.dtype))
    return torch.einsum("nij,njtvm->nitvm", r, x)


def augment_mamp(x: torch.Tensor, generator: torch.Generator | None = None,
                 min_frames: int = MAMP_MIN_CROP) -> torch.Tensor:
    """MAMP's training augmentation: random valid crop (share U(0.5, 1), at least ``min_frames``), linear
    resize back to T frames, random rotation U(±0.3 rad) about x, y and z. x: (N, 3, T, V, M)."""
    n, t = x.shape[0], x.shape[2]
    dev = _gen_device(generator, x)
    starts, lengths = draw_mamp_crops(valid_lengths(x), generator, min_frames=min_frames)
    angles = (torch.rand(n, 3, generator=generator, device=dev) * 2 - 1) * MAMP_ROTATION
    return rotate(crop_resize(x, starts, lengths, t), angles)


# ---------------------------------------------------------------------------------------------------------
# AimCLR-style extreme augmentations (Guo et al., AAAI 2022), an option of the contrastive objective
# (SSLConfig.extreme_augment): each applied to a sample with probability 1/2, in this order

EXTREME_ROTATION = 0.5236  # radians (30°), uniform in ±this about each axis
EXTREME_NOISE = 0.05  # Gaussian noise std, as a share of the sample's coordinate std
EXTREME_BLUR_KERNEL = 15  # temporal Gaussian blur: kernel size and sigma range (frames)
EXTREME_BLUR_SIGMA = (0.1, 2.0)


def gaussian_blur_time(x: torch.Tensor, sigmas: torch.Tensor, kernel: int = EXTREME_BLUR_KERNEL
                       ) -> torch.Tensor:
    """Blur along time with a normalised Gaussian of std ``sigmas`` (N,) frames, ``kernel`` taps (odd),
    edges padded by replication. x: (N, C, T, V, M)."""
    n, c, t, v, m = x.shape
    half = kernel // 2
    offs = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)  # (kernel,)
    w = torch.exp(-0.5 * (offs.view(1, -1) / sigmas.to(device=x.device, dtype=x.dtype).view(n, 1)) ** 2)
    w = w / w.sum(dim=1, keepdim=True)  # (N, kernel)
    idx = (torch.arange(t, device=x.device).view(t, 1) + torch.arange(-half, half + 1, device=x.device)
           ).clamp(0, t - 1)  # (T, kernel)
    windows = x[:, :, idx]  # (N, C, T, kernel, V, M)
    return torch.einsum("nctkvm,nk->nctvm", windows, w)


def axis_mask(x: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Zero coordinate channel ``axes[n]`` of sample n (−1: none). x: (N, C, T, V, M); axes: (N,) int64."""
    keep = torch.arange(x.shape[1], device=x.device).view(1, -1) != axes.to(x.device).view(-1, 1)  # (N, C)
    return x * keep.to(x.dtype).view(x.shape[0], x.shape[1], 1, 1, 1)


def add_noise(x: torch.Tensor, noise: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x + noise · scale[n] (noise (N, C, T, V, M) standard normal, scale (N,)); zero (padding) entries of x
    stay zero."""
    return torch.where(x != 0, x + noise * scale.to(x.dtype).view(-1, 1, 1, 1, 1), x)


def augment_extreme(x: torch.Tensor, generator: torch.Generator | None = None,
                    p: float = 1.0) -> torch.Tensor:
    """AimCLR's extreme augmentations on a share ``p`` of the samples: each of rotation (U(±30°) about x, y
    and z), Gaussian noise (std 5 % of the sample's coordinate std), temporal Gaussian blur (15 taps,
    sigma U(0.1, 2)) and a mask of one coordinate axis, applied with probability 1/2. x: (N, 3, T, V, M)."""
    n = x.shape[0]
    dev = _gen_device(generator, x)
    chosen = torch.rand(n, generator=generator, device=dev) < p  # (N,)
    coins = (torch.rand(n, 4, generator=generator, device=dev) < 0.5) & chosen.view(n, 1)  # (N, 4)
    angles = (torch.rand(n, 3, generator=generator, device=dev) * 2 - 1) * EXTREME_ROTATION
    angles = angles * coins[:, 0:1]
    noise = torch.randn(x.shape, generator=generator, device=dev)
    sigmas = EXTREME_BLUR_SIGMA[0] + torch.rand(n, generator=generator, device=dev) * (
        EXTREME_BLUR_SIGMA[1] - EXTREME_BLUR_SIGMA[0])
    axes = torch.randint(0, x.shape[1], (n,), generator=generator, device=dev)
    axes = torch.where(coins[:, 3], axes, torch.full_like(axes, -1))
    out = rotate(x, angles.to(x.device))
    std = out.flatten(1).std(dim=1) * EXTREME_NOISE * coins[:, 1].to(x.device)  # (N,)
    out = add_noise(out, noise.to(x.device), std)
    blurred = gaussian_blur_time(out, sigmas.to(x.device))
    out = torch.where(coins[:, 2].to(x.device).view(n, 1, 1, 1, 1), blurred, out)
    return axis_mask(out, axes.to(x.device))


# ---------------------------------------------------------------------------------------------------------
# the augmentations a run can name (TrainConfig.augment; "auto" picks its objective's ``augmentation``)


def no_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The batch as it is (``augment = "none"``)."""
    return x


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]] = {
    "crossclr": augment,  # temporal crop + shear (CrosSCLR, SkeletonCLR)
    "mamp": augment_mamp,  # valid crop + resize + rotation (MAMP)
    "none": no_augment,
}
