"""Graph partitions against an independent re-implementation of the ST-GCN Graph and hand-checked values."""

from __future__ import annotations

import numpy as np
import pytest

from crossclr_infer.graph import partition
from crossclr_infer.layouts import get_layout

NTU = get_layout("ntu-rgb+d")
KINECT = get_layout("kinect-v1")
# the NTU neighbour list of the ST-GCN paper's code, 1-based (child, parent) without the root's self pair
NTU_NEIGHBOURS_1BASED = [
    (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9), (11, 10), (12, 11),
    (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25),
    (25, 12)]


def reference_spatial(num_node: int, neighbours: list[tuple[int, int]], center: int,
                      max_hop: int = 1) -> np.ndarray:
    """The ST-GCN ``Graph(strategy='spatial')`` algorithm, written out from its description."""
    edges = [(i, i) for i in range(num_node)] + neighbours
    adj = np.zeros((num_node, num_node))
    for i, j in edges:
        adj[i, j] = adj[j, i] = 1
    hop_dis = np.full((num_node, num_node), np.inf)
    powers = [np.linalg.matrix_power(adj, d) for d in range(max_hop + 1)]
    reach = np.stack(powers) > 0
    for d in range(max_hop, -1, -1):
        hop_dis[reach[d]] = d
    adjacency = np.zeros((num_node, num_node))
    for hop in range(max_hop + 1):
        adjacency[hop_dis == hop] = 1
    col = adjacency.sum(0)
    dn = np.zeros((num_node, num_node))
    for i in range(num_node):
        if col[i] > 0:
            dn[i, i] = col[i] ** -1
    norm = adjacency @ dn
    out = []
    for hop in range(max_hop + 1):
        a_root = np.zeros((num_node, num_node))
        a_close = np.zeros((num_node, num_node))
        a_further = np.zeros((num_node, num_node))
        for i in range(num_node):
            for j in range(num_node):
                if hop_dis[j, i] == hop:
                    if hop_dis[j, center] == hop_dis[i, center]:
                        a_root[j, i] = norm[j, i]
                    elif hop_dis[j, center] > hop_dis[i, center]:
                        a_close[j, i] = norm[j, i]
                    else:
                        a_further[j, i] = norm[j, i]
        if hop == 0:
            out.append(a_root)
        else:
            out.append(a_root + a_close)
            out.append(a_further)
    return np.stack(out)


def test_spatial_equals_the_st_gcn_graph_for_ntu() -> None:
    ref = reference_spatial(25, [(i - 1, j - 1) for i, j in NTU_NEIGHBOURS_1BASED], center=21 - 1)
    a = partition(NTU, "spatial")
    assert a.shape == (3, 25, 25) and a.dtype == np.float32
    np.testing.assert_allclose(a, ref, atol=1e-7)


def test_spatial_equals_the_reference_for_kinect_v1() -> None:
    neighbours = list(KINECT.edges)
    ref = reference_spatial(KINECT.num_joints, neighbours, center=KINECT.center)
    np.testing.assert_allclose(partition(KINECT, "spatial"), ref, atol=1e-7)


def test_spatial_hand_checked_values() -> None:
    a = partition(NTU, "spatial").astype(np.float64)
    c, neck, head, spine_mid = 20, 2, 3, 1
    # spine_shoulder (21) has 4 neighbours (2, 3, 5, 9) + itself: every entry of its column is 1/5
    assert a[0, c, c] == pytest.approx(1 / 5)
    for nb in (spine_mid, neck, 4, 8):
        assert a[1, nb, c] == pytest.approx(1 / 5)  # neighbours farther from the center than joint 21
    # neck (3): neighbours 21 (closer to the center) and head 4 (farther), plus itself -> 1/3 each
    assert a[0, neck, neck] == pytest.approx(1 / 3)
    assert a[2, c, neck] == pytest.approx(1 / 3)  # the center is nearer: the third matrix
    assert a[1, head, neck] == pytest.approx(1 / 3)
    # head (4) is a leaf: itself and the neck -> 1/2
    assert a[0, head, head] == pytest.approx(1 / 2) and a[2, neck, head] == pytest.approx(1 / 2)
    # every column sums to 1 over the three matrices; non-neighbours are 0
    np.testing.assert_allclose(a.sum(axis=(0, 1)), 1.0, atol=1e-6)
    assert a[:, head, c].sum() == 0


def test_uniform_is_the_normalized_adjacency_with_self_loops() -> None:
    adj = np.eye(25)
    for i, j in NTU.edges:
        adj[i, j] = adj[j, i] = 1
    u = partition(NTU, "uniform")
    assert u.shape == (1, 25, 25)
    np.testing.assert_allclose(u[0], adj / adj.sum(0, keepdims=True), atol=1e-7)


def test_flow_is_identity_inward_outward_normalized() -> None:
    inward = np.zeros((25, 25))
    for child, parent in NTU_NEIGHBOURS_1BASED:  # A[j, i] = 1 for the link i -> j (child -> parent)
        inward[parent - 1, child - 1] = 1
    outward = inward.T

    def norm(m: np.ndarray) -> np.ndarray:
        col = m.sum(0)
        return m / np.where(col > 0, col, 1)[None, :]

    f = partition(NTU, "flow")
    assert f.shape == (3, 25, 25) and f.dtype == np.float32
    np.testing.assert_array_equal(f[0], np.eye(25))
    np.testing.assert_allclose(f[1], norm(inward), atol=1e-7)
    np.testing.assert_allclose(f[2], norm(outward), atol=1e-7)
    # hand-checked: joint 3 (neck) flows inward fully to 21; 21's four children share its outward column
    assert f[1, 20, 2] == 1.0
    assert [f[2, k, 20] for k in (1, 2, 4, 8)] == [0.25] * 4
    # spine_base (1): its parent is 2, its children are 13 and 17 -> 1/2 each
    assert f[2, 12, 0] == 0.5 and f[2, 16, 0] == 0.5


def test_unknown_partition() -> None:
    with pytest.raises(ValueError, match="unknown graph partition 'nope'"):
        partition(NTU, "nope")
