"""Baselines for a matched-budget comparison: all tokens, random, uniform grid, top-M CLS attention.

Each keeps `budget` patches (uniform: the nearest h'×w' grid) and hands X[kept] in raster order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, slider


@dataclass(frozen=True)
class NoParams:
    """The identity reducer has nothing to tune."""


@dataclass(frozen=True)
class BudgetParams:
    budget: int = slider(64, 1, 100_000, 1, "How many visual tokens the baseline keeps (capped at N)")
    seed: int = 0  # random baseline only

    def __post_init__(self) -> None:
        check_ranges(self)
        if int(self.budget) != self.budget or int(self.seed) != self.seed:
            raise ValueError("BudgetParams.budget and seed must be integers")


def _reduction(vt: VisualTokens, method: str, kept: Tensor, attn: Tensor | None = None) -> Reduction:
    kept = torch.sort(kept).values.to(vt.features.device)
    tokens = vt.features[kept]
    stages = {"tokens": vt.n, "to LLM": tokens.shape[0]}
    return Reduction(method=method, kept=kept, tokens=tokens, grid=vt.grid, stages=stages, attn=attn)


def identity(vt: VisualTokens, params: NoParams | None = None) -> Reduction:
    """All N tokens, unchanged."""
    return _reduction(vt, "all", torch.arange(vt.n))


def random_tokens(vt: VisualTokens, params: BudgetParams | None = None) -> Reduction:
    """`budget` patches drawn uniformly without replacement, reproducible from `seed`."""
    p = params if params is not None else BudgetParams()
    gen = torch.Generator().manual_seed(int(p.seed))
    kept = torch.randperm(vt.n, generator=gen)[: min(int(p.budget), vt.n)]
    return _reduction(vt, "random", kept)


def grid_size(budget: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The h'×w' sub-grid (h' ≤ h, w' ≤ w) with the grid's aspect whose size is nearest the budget."""
    h, w = grid
    best = (1, 1)
    for gh in range(1, h + 1):
        gw = min(w, max(1, round(budget / gh)))
        if abs(gh * gw - budget) < abs(best[0] * best[1] - budget) or (
            abs(gh * gw - budget) == abs(best[0] * best[1] - budget)
            and abs(math.log(gh / gw) - math.log(h / w)) < abs(math.log(best[0] / best[1]) - math.log(h / w))
        ):
            best = (gh, gw)
    return best


def uniform_grid(vt: VisualTokens, params: BudgetParams | None = None) -> Reduction:
    """Patches at the centres of an h'×w' grid of cells (h'·w' ≈ budget), evenly spread over the image."""
    p = params if params is not None else BudgetParams()
    h, w = vt.grid
    gh, gw = grid_size(min(int(p.budget), vt.n), vt.grid)
    rows = ((torch.arange(gh) + 0.5) * h / gh).long()  # [h']
    cols = ((torch.arange(gw) + 0.5) * w / gw).long()  # [w']
    kept = (rows[:, None] * w + cols[None, :]).flatten()
    return _reduction(vt, "uniform", kept)


def top_attention(vt: VisualTokens, params: BudgetParams | None = None) -> Reduction:
    """The `budget` patches with the largest CLS attention (FasterVLM-style), in raster order."""
    p = params if params is not None else BudgetParams()
    vt.require("cls_attn", method="top-attention")
    kept = vt.cls_attn.float().topk(min(int(p.budget), vt.n)).indices
    return _reduction(vt, "top-attention", kept, attn=vt.cls_attn)
