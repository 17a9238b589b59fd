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


def check_streams(views: tuple[str, ...] | list[str], source: str = "") -> tuple[str, ...]:
    """The one check of a stream list (from a flag, a config or a caller): at least one view, every one in
    VIEWS, none twice; else a CrossclrError, prefixed with ``source`` (e.g. the flag) when given."""
    views = tuple(views)
    where = f"{source}: " if source else ""
    if not views:
        raise CrossclrError(f"{where}no streams given; use one or more of {VIEWS}")
    bad = [v for v in views if v not in VIEWS]
    if bad:
        raise CrossclrError(f"{where}unknown streams {bad}; use some of {VIEWS}")
    if len(set(views)) != len(views):
        raise CrossclrError(f"{where}{list(views)} repeat a view (one named twice); list each once")
    return views


def parse_streams(text: str | None, flag: str = "--streams") -> list[str] | None:
    """The one parser of stream lists: ``'joint, motion'`` -> ``['joint', 'motion']``; None or blank -> None;
    an unknown or repeated view, or a list without any name, is a CrossclrError naming ``flag``."""
    if text is None or not text.strip():
        return None
    streams = [s.strip() for s in text.split(",") if s.strip()]
    if not streams:
        raise CrossclrError(f"{flag}: expected a comma-separated list of views, e.g. joint,motion,bone")
    return list(check_streams(streams, flag))


def check_view_name(value: object, source: str, what: str = "stream") -> str:
    """A stream name read from a file (model metadata, report, checkpoint): one of VIEWS, else a CrossclrError
    naming ``source``. File names are built only from names that passed this check."""
    if not isinstance(value, str) or value not in VIEWS:
        raise CrossclrError(f"{source}: {what} name {value!r:.60} is not a known view; expected one of "
                            f"{VIEWS}")
    return value


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
