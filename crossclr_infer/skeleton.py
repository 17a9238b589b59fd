"""What every skeleton source shares: the parsed raw file (``RawSkeleton``) and the coordinate bound.

The neutral bottom of the data path: the NTU reader (``ntu.py``) builds ``RawSkeleton``; preprocessing
(``preprocess.py``) selects bodies from it; the array importer (``arrays.py``), the caches (``cache.py``),
``prepare official`` / ``prepare ntu``, ``predict`` and ``stream`` check coordinates against
``MAX_ABS_COORDINATE``. It imports nothing else of the project but ``errors``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CrossclrError

# Largest |coordinate| accepted from any input. Units differ by source (metres: NTU, Kinect v1; millimetres:
# Azure Kinect; pixels: 2-D pose estimators), so the bound is the physical one of the largest unit: 100 m in
# millimetres. It refuses corrupt or forged values (×1e30, float64 beyond float32) before preprocessing.
MAX_ABS_COORDINATE = 1e5


@dataclass(frozen=True)
class RawSkeleton:
    """A parsed ``.skeleton`` file. Bodies are listed frame by frame, in file order within a frame."""

    num_frames: int
    bodies_per_frame: np.ndarray  # (F,) int64
    body_ids: np.ndarray  # (B_total,) int64
    xyz: np.ndarray  # (B_total, V, 3) float32

    @property
    def num_joints(self) -> int:
        return int(self.xyz.shape[1])

    @property
    def frame_index(self) -> np.ndarray:
        """(B_total,) the frame each listed body belongs to."""
        return np.repeat(np.arange(self.num_frames), self.bodies_per_frame)

    @property
    def rank_in_frame(self) -> np.ndarray:
        """(B_total,) position of each listed body within its frame (0 = first in the file)."""
        starts = np.cumsum(self.bodies_per_frame) - self.bodies_per_frame  # (F,) first body of each frame
        return np.arange(self.body_ids.size) - np.repeat(starts, self.bodies_per_frame)


def check_coordinates(x: np.ndarray, source: str) -> None:
    """Real, finite coordinates within ±MAX_ABS_COORDINATE, else a CrossclrError naming ``source``."""
    if x.dtype.kind not in "iuf":
        raise CrossclrError(f"{source}: array dtype {x.dtype}, expected real numbers (float32)")
    if x.size == 0:
        return
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise CrossclrError(f"{source}: skeleton contains NaN or Inf values; expected finite coordinates")
    peak = float(np.abs(x).max())
    if peak > MAX_ABS_COORDINATE:
        raise CrossclrError(f"{source}: coordinate of magnitude {peak:.3g} beyond ±{MAX_ABS_COORDINATE:g} "
                            "(MAX_ABS_COORDINATE); expected skeleton coordinates in metres, millimetres or "
                            "pixels")


def fit_bodies(x: np.ndarray, bodies: int) -> np.ndarray:
    """(..., M) -> (..., ``bodies``) on the last (body) axis: the first bodies kept, missing ones added as
    zeros (an absent body, as everywhere in the project). One rule for arrays, predict, evaluate."""
    if bodies < 1:
        raise CrossclrError(f"bodies must be >= 1, got {bodies}")
    out = np.zeros(x.shape[:-1] + (bodies,), dtype=x.dtype)
    n = min(bodies, x.shape[-1])
    out[..., :n] = x[..., :n]
    return out
