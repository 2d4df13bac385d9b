"""Similarity graphs over visual tokens and their connected components (PAR's clustering).

`components` is the direct definition: edge i–j iff S_ij ≥ γ (optionally only between 4-neighbour patches),
clusters = scipy's connected components. `ClusterSweep` answers the same question for every γ at once: the
components of {S ≥ γ} are the components of the maximum spanning forest's edges with weight ≥ γ
(single-linkage), so one spanning-forest pass per image gives the cluster count for a whole threshold sweep.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from torch import Tensor


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
        keep = s[rows, cols] >= threshold
        adj = sp.csr_matrix((np.ones(int(keep.sum()), bool), (rows[keep], cols[keep])), shape=(n, n))
    else:
        adj = sp.csr_matrix((sim >= threshold).cpu().numpy())
    count, labels = connected_components(adj, directed=False)
    return int(count), labels.astype(np.int64)


class ClusterSweep:
    """Number of connected components of {S ≥ γ} for any γ, from one maximum-spanning-forest pass.

    sim [N, N] (symmetric); `grid` restricts the graph to 4-neighbour edges as `components` does.
    """

    def __init__(self, sim: Tensor, grid: tuple[int, int] | None = None):
        s = sim.detach().double().cpu().numpy()
        n = s.shape[0]
        self.n = n
        if n == 1:
            self.weights = np.zeros(0)
            return
        # Spanning forest of max similarity = MST of (2 − S) > 0; zero entries mean "no edge" to scipy.
        if grid is not None:
            rows, cols = grid_edges(grid)
            cost = sp.csr_matrix((2.0 - s[rows, cols], (rows, cols)), shape=(n, n))
        else:
            cost = sp.csr_matrix(np.triu(2.0 - s, k=1))
        forest = minimum_spanning_tree(cost)
        self.weights = np.sort(2.0 - forest.data)  # [F] forest edge similarities, ascending

    def count(self, thresholds) -> np.ndarray:
        """[T] number of components at each threshold: N − #(forest edges with similarity ≥ γ)."""
        t = np.asarray(thresholds, dtype=np.float64)
        at_least = self.weights.size - np.searchsorted(self.weights, t, side="left")
        return self.n - at_least
