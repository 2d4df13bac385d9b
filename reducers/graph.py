"""Similarity graphs over visual tokens and their connected components (PAR's clustering).

`components` is the direct definition: edge i–j iff S_ij ≥ γ (optionally only between 4-neighbour patches),
clusters = scipy's connected components. `ClusterSweep` answers the same question for every γ at once: the
components of {S ≥ γ} are the components of the maximum spanning forest's edges with weight ≥ γ
(single-linkage), so one spanning-forest pass per image gives the cluster count for a whole threshold sweep.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from torch import Tensor

_NUMPY_FLOAT = {torch.float16: np.float16, torch.float32: np.float32, np.dtype(np.float16): np.float16,
                np.dtype(np.float32): np.float32}


def at_least(x, threshold: float):
    """`x ≥ threshold` with the threshold taken as the real number it is, for a float16 / float32 / float64
    torch tensor or numpy array. A plain `x >= 0.7` on float32 compares with float32(0.7) < 0.7 and would
    count a similarity of 0.69999999 as ≥ 0.7; here the threshold is raised to the smallest value of x's dtype
    that is ≥ it, so every consumer (components, ClusterSweep, redundancy, routing, the tests' float64
    reference) draws the line in the same place."""
    kind = _NUMPY_FLOAT.get(x.dtype)
    t = float(threshold)
    if kind is not None and np.isfinite(t):
        c = kind(t)
        if float(c) < t:
            c = np.nextafter(c, kind(np.inf))
        t = float(c)
    return x >= t


def grid_edges(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the 4-neighbour edges of an h×w raster grid, each undirected edge once."""
    h, w = grid
    idx = np.arange(h * w).reshape(h, w)
    right = (idx[:, :-1].ravel(), idx[:, 1:].ravel())
    down = (idx[:-1, :].ravel(), idx[1:, :].ravel())
    return np.concatenate([right[0], down[0]]), np.concatenate([right[1], down[1]])


def components(sim: Tensor, threshold: float, grid: tuple[int, int] | None = None) -> tuple[int, np.ndarray]:
    """Connected components of the graph {i–j : S_ij ≥ threshold}; `grid` keeps only 4-neighbour edges.

    sim [N, N] → (number of components, labels [N] int64 numbered by first member in raster order).
    """
    n = sim.shape[0]
    if grid is not None:
        rows, cols = grid_edges(grid)
        s = sim.detach().float().cpu().numpy()
        keep = at_least(s[rows, cols], threshold)
        adj = sp.csr_matrix((np.ones(int(keep.sum())), (rows[keep], cols[keep])), shape=(n, n))
    else:  # CSR straight from the row-major nonzeros of the dense mask (no dense → COO → CSR round trip)
        edges = at_least(sim.detach(), threshold).nonzero()  # [E, 2], sorted by row
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(torch.bincount(edges[:, 0], minlength=n).cpu().numpy(), out=indptr[1:])
        indices = edges[:, 1].cpu().numpy()
        adj = sp.csr_matrix((np.ones(indices.size), indices, indptr), shape=(n, n))
    count, labels = connected_components(adj, directed=False)
    return int(count), labels.astype(np.int64)


def spanning_tree_weights(s: np.ndarray) -> np.ndarray:
    """[N − 1] edge weights of a maximum spanning tree of the complete graph on N nodes with edge i–j
    weighted max(S_ij, S_ji) (undirected, as `components` reads the mask). Prim's algorithm over the dense
    matrix: N steps, each one vectorised update over the nodes not yet in the tree, O(N²) in all (Kruskal over
    the N²/2 edges is O(N² log N) and builds a sparse copy of the whole matrix)."""
    n = s.shape[0]
    rest = np.arange(1, n)  # nodes not yet in the tree
    best = np.maximum(s[0, 1:], s[1:, 0])  # their best link into the tree
    out = np.empty(n - 1, dtype=np.float64)
    for step in range(n - 1):
        k = int(best.argmax())
        j = rest[k]
        out[step] = best[k]
        last = rest.size - 1
        rest[k], best[k] = rest[last], best[last]  # drop j (order does not matter)
        rest, best = rest[:last], best[:last]
        if last:
            np.maximum(best, np.maximum(s[j, rest], s[rest, j]), out=best)
    return out


class ClusterSweep:
    """Number of connected components of {S ≥ γ} for any γ, from one maximum-spanning-forest pass.

    sim [N, N] (symmetric); `grid` restricts the graph to 4-neighbour edges as `components` does.
    All maximum spanning forests share one multiset of edge weights, so the counts do not depend on ties.
    """

    def __init__(self, sim: Tensor, grid: tuple[int, int] | None = None):
        s = sim.detach().float().cpu().numpy()
        n = s.shape[0]
        self.n = n
        if n == 1:
            self.weights = np.zeros(0)
            return
        if grid is not None:  # sparse 4-neighbour graph: Kruskal on MST of (2 − S) > 0 (0 = "no edge")
            rows, cols = grid_edges(grid)
            w = np.maximum(s[rows, cols], s[cols, rows]).astype(np.float64)
            forest = minimum_spanning_tree(sp.csr_matrix((2.0 - w, (rows, cols)), shape=(n, n))).tocoo()
            found = sp.csr_matrix((w, (rows, cols)), shape=(n, n))[forest.row, forest.col]
            weights = np.asarray(found).ravel()
        else:
            weights = spanning_tree_weights(s)
        self.weights = np.sort(weights)  # [F] forest edge similarities, ascending

    def count(self, thresholds) -> np.ndarray:
        """[T] number of components at each threshold: N − #(forest edges with similarity ≥ γ)."""
        t = np.asarray(thresholds, dtype=np.float64)
        linked = self.weights.size - np.searchsorted(self.weights, t, side="left")
        return self.n - linked
