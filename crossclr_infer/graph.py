"""Graph partitions of a skeleton layout, built with numpy: arrays (K, V, V) for the ST-GCN einsum.

``A[k, v, w]`` weights how joint ``v``'s features flow to joint ``w`` (the model computes
``einsum('nkctv,kvw->nctw')``).
"""

from __future__ import annotations

import numpy as np

from .layouts import Layout

PARTITIONS = ("uniform", "spatial", "flow")


def adjacency(layout: Layout) -> np.ndarray:
    """Symmetric 0/1 adjacency (V, V) of the skeleton edges, without self loops."""
    v = layout.num_joints
    a = np.zeros((v, v))
    for i, j in layout.edges:
        a[i, j] = a[j, i] = 1
    return a


def hop_distance(layout: Layout, max_hop: int = 1) -> np.ndarray:
    """(V, V) hop distance, ``inf`` beyond ``max_hop``."""
    v = layout.num_joints
    a = adjacency(layout) + np.eye(v)
    dist = np.full((v, v), np.inf)
    reach = [np.linalg.matrix_power(a, d) > 0 for d in range(max_hop + 1)]
    for d in range(max_hop, -1, -1):
        dist[reach[d]] = d
    return dist


def normalize_columns(a: np.ndarray) -> np.ndarray:
    """A·D⁻¹ with D the column sums (ST-GCN's ``normalize_digraph``); empty columns stay 0."""
    col = a.sum(axis=0)
    inv = np.where(col > 0, 1.0 / np.where(col > 0, col, 1.0), 0.0)
    return a * inv[None, :]


def partition(layout: Layout, strategy: str = "spatial", max_hop: int = 1) -> np.ndarray:
    """Stack of normalized adjacency matrices (K, V, V), float32.

    - ``uniform``: K = 1, the normalized adjacency with self loops.
    - ``spatial``: K = 3 (ST-GCN): self, neighbours at the same distance from the center or closer to it,
      neighbours farther from it; exactly the official matrices.
    - ``flow`` (A*): K = 3: identity, inward edges (toward the center), outward edges, each normalized.
    """
    v = layout.num_joints
    if strategy == "flow":
        inward = np.zeros((v, v))
        for child, parent in layout.edges:
            inward[parent, child] = 1  # edge (child -> parent) as in edge2mat: A[j, i] = 1
        outward = inward.T.copy()
        return np.stack([np.eye(v), normalize_columns(inward), normalize_columns(outward)]).astype(np.float32)
    hop = hop_distance(layout, max_hop)
    adj = (hop <= max_hop).astype(float)
    norm = normalize_columns(adj)
    if strategy == "uniform":
        return norm[None].astype(np.float32)
    if strategy != "spatial":
        raise ValueError(f"unknown graph partition {strategy!r}: use one of {PARTITIONS}")
    c = layout.center
    out = []
    for h in range(max_hop + 1):
        mask = hop == h
        # (j, i): j relative to i by distance to the center
        dj = hop[:, c][:, None]
        di = hop[:, c][None, :]
        root = np.where(mask & (dj == di), norm, 0.0)
        close = np.where(mask & (dj > di), norm, 0.0)
        further = np.where(mask & (dj < di), norm, 0.0)
        if h == 0:
            out.append(root)
        else:
            out.append(root + close)
            out.append(further)
    return np.stack(out).astype(np.float32)
