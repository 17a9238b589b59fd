"""Views (streams) in torch, equal to ``crossclr_infer.views`` and exportable to ONNX.

Only slicing, concatenation and ``index_select`` with constant indices (the layout's parents) are used.
Arrays are (..., C, T, V, M): frames on axis -3, joints on axis -2.
"""

from __future__ import annotations

import torch

from crossclr_infer.errors import CrossclrError
from crossclr_infer.layouts import Layout
from crossclr_infer.views import apply_view, check_view


def motion(x: torch.Tensor) -> torch.Tensor:
    """m[t] = x[t + 1] − x[t]; the last frame is 0."""
    diff = x[..., 1:, :, :] - x[..., :-1, :, :]
    return torch.cat([diff, torch.zeros_like(x[..., :1, :, :])], dim=-3)


def accel(x: torch.Tensor) -> torch.Tensor:
    """x[t + 2] − 2·x[t + 1] + x[t]; the last two frames are 0."""
    second = x[..., 2:, :, :] - 2 * x[..., 1:-1, :, :] + x[..., :-2, :, :]
    return torch.cat([second, torch.zeros_like(x[..., :2, :, :])], dim=-3)


def bone(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """bone[v] = x[v] − x[parent(v)] (the center joint's bone is 0)."""
    if x.shape[-2] != layout.num_joints:
        raise CrossclrError(f"bone view: input has {x.shape[-2]} joints, layout {layout.name!r} has "
                            f"{layout.num_joints}")
    parents = torch.tensor(layout.parents, dtype=torch.long, device=x.device)
    return x - x.index_select(-2, parents)


def compute_view(x: torch.Tensor, view: str, layout: Layout) -> torch.Tensor:
    """One named view of a (..., C, T, V, M) tensor."""
    return apply_view(x, view, layout, motion=motion, bone=bone, accel=accel)


class ViewTransform(torch.nn.Module):
    """A view as a module (for composing exported graphs: ``nn.Sequential(ViewTransform(...), encoder)``)."""

    def __init__(self, view: str, layout: Layout) -> None:
        super().__init__()
        self.view = check_view(view)
        self.layout = layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return compute_view(x, self.view, self.layout)
