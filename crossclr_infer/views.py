"""Views (streams) of a skeleton array (..., C, T, V, M), as numpy functions (docs/design.md §2).

Training computes the same views in torch after augmentation and the exported graphs compute them
inside ONNX; tests hold both to these definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np

from .errors import CrossclrError
from .layouts import Layout

VIEWS = ("joint", "motion", "bone", "accel")

A = TypeVar("A")  # np.ndarray here, torch.Tensor in training.views


def check_view(view: str) -> str:
    """``view`` when it is one of VIEWS, else CrossclrError listing them."""
    if view not in VIEWS:
        raise CrossclrError(f"unknown view {view!r}: use one of {VIEWS}")
    return view


def apply_view(x: A, view: str, layout: Layout, *, motion: Callable[[A], A], bone: Callable[[A, Layout], A],
               accel: Callable[[A], A]) -> A:
    """The dispatch shared by the numpy and torch views: joint is ``x`` itself, the others call the given
    implementation."""
    check_view(view)
    if view == "motion":
        return motion(x)
    if view == "bone":
        return bone(x, layout)
    if view == "accel":
        return accel(x)
    return x


def motion(x: np.ndarray) -> np.ndarray:
    """m[..., t, :, :] = x[..., t + 1, :, :] − x[..., t, :, :]; the last frame is 0."""
    out = np.zeros_like(x)
    out[..., :-1, :, :] = x[..., 1:, :, :] - x[..., :-1, :, :]
    return out


def accel(x: np.ndarray) -> np.ndarray:
    """Second difference x[t + 2] − 2·x[t + 1] + x[t]; the last two frames are 0."""
    out = np.zeros_like(x)
    out[..., :-2, :, :] = x[..., 2:, :, :] - 2 * x[..., 1:-1, :, :] + x[..., :-2, :, :]
    return out


def bone(x: np.ndarray, layout: Layout) -> np.ndarray:
    """bone[v] = x[v] − x[parent(v)] along the joint axis; the center joint's bone is 0."""
    if x.shape[-2] != layout.num_joints:
        raise ValueError(f"bone view: array has {x.shape[-2]} joints, layout {layout.name!r} has "
                         f"{layout.num_joints}")
    return x - x[..., np.asarray(layout.parents), :]


def compute_view(x: np.ndarray, view: str, layout: Layout) -> np.ndarray:
    """One named view of a (..., C, T, V, M) array."""
    return apply_view(x, view, layout, motion=motion, bone=bone, accel=accel)
