"""Batched, seeded training augmentations on the input's device (DESIGN §3).

Random draws and deterministic transforms are separate functions so each transform can be checked
against a numpy reference given the same parameters. Order: temporal crop, then shear.
"""

from __future__ import annotations

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
