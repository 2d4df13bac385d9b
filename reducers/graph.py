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
    return x >= exact_threshold(x.dtype, threshold)


def exact_threshold(dtype, threshold: float) -> float:
    """The smallest value of `dtype` (float16 / float32; others unchanged) that is ≥ `threshold`: comparing
    values of that dtype with `>=` against it is comparing them with the real threshold (see `at_least`)."""
    kind = _NUMPY_FLOAT.get(dtype)
    t = float(threshold)
    if kind is not None and np.isfinite(t):
        c = kind(t)
        if float(c) < t:
            c = np.nextafter(c, kind(np.inf))
        t = float(c)
    return t


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


def spanning_tree(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, weight), each [N − 1]: the edges of a maximum spanning tree of the complete graph on N nodes with
    edge i–j weighted max(S_ij, S_ji) (undirected, as `components` reads the mask); weights in s's dtype.
    Prim's algorithm over the dense matrix: N steps, each one vectorised update over the nodes not yet in the
    tree, O(N²) in all (Kruskal over the N²/2 edges is O(N² log N) and builds a sparse copy of the matrix)."""
    n = s.shape[0]
    rest = np.arange(1, n)  # nodes not yet in the tree
    best = np.maximum(s[0, 1:], s[1:, 0])  # their best link into the tree …
    via = np.zeros(n - 1, dtype=np.int64)  # … and the tree node at its other end
    u, v = np.empty(n - 1, dtype=np.int64), np.empty(n - 1, dtype=np.int64)
    weight = np.empty(n - 1, dtype=s.dtype)
    for step in range(n - 1):
        k = int(best.argmax())
        j = rest[k]
        u[step], v[step], weight[step] = via[k], j, best[k]
        last = rest.size - 1
        rest[k], best[k], via[k] = rest[last], best[last], via[last]  # drop j (order does not matter)
        rest, best, via = rest[:last], best[:last], via[:last]
        if last:
            link = np.maximum(s[j, rest], s[rest, j])
            closer = link > best
            best[closer], via[closer] = link[closer], j
    return u, v, weight


class ClusterSweep:
    """Connected components of {S ≥ γ} for any γ, from one maximum-spanning-forest pass.

    sim [N, N] (symmetric); `grid` restricts the graph to 4-neighbour edges as `components` does. Two nodes
    are connected in {S ≥ γ} exactly when the forest path between them has every edge ≥ γ, so the components
    at γ are those of the forest's edges ≥ γ: `count` for many γ at once from the sorted edge weights, and
    `labels` at one γ from N − 1 edges instead of the N² matrix. All maximum spanning forests give the same
    components at every γ, so ties do not matter; scipy numbers components by their lowest node, so the
    labels equal `components`' labels exactly.
    """

    def __init__(self, sim: Tensor, grid: tuple[int, int] | None = None):
        s = sim.detach().float().cpu().numpy()
        n = s.shape[0]
        self.n = n
        if n == 1:
            self.u = self.v = np.zeros(0, np.int64)
            self.w = np.zeros(0, np.float32)
        elif grid is not None:  # sparse 4-neighbour graph: Kruskal on MST of (2 − S) > 0 (0 = "no edge")
            rows, cols = grid_edges(grid)
            w = np.maximum(s[rows, cols], s[cols, rows])
            forest = minimum_spanning_tree(sp.csr_matrix((2.0 - w.astype(np.float64), (rows, cols)), shape=(n, n))).tocoo()
            self.u, self.v = forest.row.astype(np.int64), forest.col.astype(np.int64)
            lookup = sp.csr_matrix((np.arange(1, rows.size + 1), (rows, cols)), shape=(n, n))  # edge id + 1
            self.w = w[np.asarray(lookup[self.u, self.v]).ravel() - 1]
        else:
            self.u, self.v, self.w = spanning_tree(s)
        self.weights = np.sort(self.w.astype(np.float64))  # [F] forest edge similarities, ascending

    def count(self, thresholds) -> np.ndarray:
        """[T] number of components at each threshold: N − #(forest edges with similarity ≥ γ)."""
        t = np.asarray(thresholds, dtype=np.float64)
        linked = self.weights.size - np.searchsorted(self.weights, t, side="left")
        return self.n - linked

    def labels(self, threshold: float) -> tuple[int, np.ndarray]:
        """(count, labels [N]) of the components of {S ≥ threshold}, equal to `components(sim, threshold)`."""
        keep = at_least(self.w, threshold)
        adj = sp.csr_matrix((np.ones(int(keep.sum())), (self.u[keep], self.v[keep])), shape=(self.n, self.n))
        count, labels = connected_components(adj, directed=False)
        return int(count), labels.astype(np.int64)
