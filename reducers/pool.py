"""Average pooling of the patch grid: the strong "just downsample" baseline.

VTC-Bench (Liao et al., arXiv 2510.07143) finds that simple image downsampling beats many advanced visual token
compression methods on the usual benchmarks. VTC-Bench downsamples the *image* before the tower (for models
with native resolution, e.g. Qwen2-VL); here the tower's patch features are pooled instead, the feature-level
analogue for a fixed-resolution tower such as LLaVA-1.5's (24×24 → 2×2 cells: 144 tokens, 3×3: 64).

- Target grid h'×w' = `baselines.grid_size(min(budget, N), grid)`: the sub-grid whose size is nearest the
  budget, so the LLM receives h'·w' tokens — the nearest grid, not exactly the budget (the stage says which
  grid).
- Cells: non-overlapping bins, cell row i covers patch rows [⌊i·h/h'⌋, ⌊(i+1)·h/h'⌋) (columns alike); every
  patch lies in exactly one cell and no cell is empty (h' ≤ h). When h' divides h and w' divides w this is
  `avg_pool2d` with kernel = stride = (h/h', w/w'). (torch's adaptive pooling uses overlapping bins
  [⌊i·h/h'⌋, ⌈(i+1)·h/h'⌉) instead; not used.)
- Token of a cell = the mean feature of its patches; cells in raster order.
- kept[i] = the cell's centre patch: row ⌊lo + (hi − lo)/2⌋ of the cell's rows [lo, hi), columns alike —
  the patch `uniform_grid` picks when h' divides h and w' divides w (its centre formula can fall outside an
  uneven cell, this one cannot).
- groups[p] = the cell of patch p, group_weight[p] = 1 / (cell size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, params_or_default
from .baselines import budget_slider, grid_size
from .ops import group_mean


@dataclass(frozen=True)
class PoolParams:
    budget: int = budget_slider("About how many tokens to keep: the LLM receives the h'×w' grid of cells whose "
                                "size is nearest this (at most N, the image's patch count)")

    def __post_init__(self) -> None:
        check_ranges(self)


def bin_edges(size: int, bins: int, device=None) -> Tensor:
    """[bins + 1] edges ⌊i·size/bins⌋ of `bins` non-overlapping bins over 0..size−1 (bins ≤ size)."""
    return torch.arange(bins + 1, device=device) * size // bins


def bin_of(size: int, bins: int, device=None) -> Tensor:
    """[size] the bin of each index: the number of upper edges ⌊(i+1)·size/bins⌋ at or below it."""
    edges = bin_edges(size, bins, device)
    return torch.searchsorted(edges[1:], torch.arange(size, device=device), right=True)


def bin_centres(size: int, bins: int, device=None) -> Tensor:
    """[bins] the middle index lo + ⌊(hi − lo)/2⌋ of each bin [lo, hi)."""
    edges = bin_edges(size, bins, device)
    return edges[:-1] + (edges[1:] - edges[:-1]) // 2


def pool(vt: VisualTokens, params: PoolParams | None = None) -> Reduction:
    """Mean feature of each cell of the h'×w' grid nearest the budget (see the module docstring)."""
    p = params_or_default(params, PoolParams)
    (h, w), device = vt.grid, vt.features.device
    gh, gw = grid_size(min(int(p.budget), vt.n), vt.grid)
    cell = (bin_of(h, gh, device)[:, None] * gw + bin_of(w, gw, device)[None, :]).flatten()  # [N]
    m = gh * gw
    tokens, size = group_mean(vt.features, cell, m)  # [M, d], [M]
    kept = (bin_centres(h, gh, device)[:, None] * w + bin_centres(w, gw, device)[None, :]).flatten()  # [M]
    return Reduction(
        method="pool",
        kept=kept,
        tokens=tokens.to(vt.features.dtype),
        grid=vt.grid,
        stages={"tokens": vt.n, f"{gh}×{gw} grid nearest the budget": m, "to LLM": m},
        groups=cell,
        group_weight=1.0 / size[cell].float(),
    )
