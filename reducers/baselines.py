"""Baselines for a matched-budget comparison: all tokens, random, uniform grid, top-M CLS attention.

Each keeps `budget` patches (uniform: the nearest h'×w' grid) and hands X[kept] in raster order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, TopScoreTrace, Trace, VisualTokens, check_ranges, number, params_or_default, slider

BUDGET_DEFAULT = 64
BUDGET_MAX = 100_000


def budget_slider(info: str = "How many visual tokens the method hands to the LLM (at most N, the image's "
                  "patch count)"):
    """The one token-budget control every budget method shares (one `budget` keyword, one slider)."""
    return slider(BUDGET_DEFAULT, 1, BUDGET_MAX, 1, info, "Token budget M", budget=True)


@dataclass(frozen=True)
class NoParams:
    """The identity reducer has nothing to tune."""


@dataclass(frozen=True)
class BudgetParams:
    budget: int = budget_slider()

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class RandomParams:
    budget: int = budget_slider()
    seed: int = number(0, 0, 2**32 - 1, "The random draw is reproducible from this seed", "Random seed")

    def __post_init__(self) -> None:
        check_ranges(self)


def _reduction(vt: VisualTokens, method: str, kept: Tensor, trace: Trace | None = None) -> Reduction:
    kept = torch.sort(kept).values.to(vt.features.device)
    tokens = vt.features[kept]
    stages = {"tokens": vt.n, "to LLM": tokens.shape[0]}
    return Reduction(method=method, kept=kept, tokens=tokens, grid=vt.grid, stages=stages, trace=trace or Trace())


def identity(vt: VisualTokens, params: NoParams | None = None) -> Reduction:
    """All N tokens, unchanged."""
    return _reduction(vt, "all", torch.arange(vt.n))


def random_tokens(vt: VisualTokens, params: RandomParams | None = None) -> Reduction:
    """`budget` patches drawn uniformly without replacement, reproducible from `seed`."""
    p = params_or_default(params, RandomParams)
    gen = torch.Generator().manual_seed(int(p.seed))
    kept = torch.randperm(vt.n, generator=gen)[: min(int(p.budget), vt.n)]
    return _reduction(vt, "random", kept)


def grid_size(budget: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The h'×w' sub-grid (h' ≤ h, w' ≤ w) whose size is nearest the budget; among equally near sizes the one
    closest to the grid's aspect, then the one with fewer rows."""
    h, w = grid
    aspect = math.log(h / w)
    best, best_score = (1, 1), None
    for gh in range(1, h + 1):
        # for this h' the nearest sizes come from w' = ⌊budget/h'⌋ or ⌈budget/h'⌉ (both, so ties are seen)
        for gw in sorted({min(w, max(1, budget // gh)), min(w, max(1, -(-budget // gh)))}):
            score = (abs(gh * gw - budget), abs(math.log(gh / gw) - aspect))
            if best_score is None or score < best_score:
                best, best_score = (gh, gw), score
    return best


def uniform_grid(vt: VisualTokens, params: BudgetParams | None = None) -> Reduction:
    """Patches at the centres of an h'×w' grid of cells (h'·w' ≈ budget), evenly spread over the image."""
    p = params_or_default(params, BudgetParams)
    h, w = vt.grid
    gh, gw = grid_size(min(int(p.budget), vt.n), vt.grid)
    rows = ((torch.arange(gh) + 0.5) * h / gh).long()  # [h']
    cols = ((torch.arange(gw) + 0.5) * w / gw).long()  # [w']
    kept = (rows[:, None] * w + cols[None, :]).flatten()
    return _reduction(vt, "uniform", kept)


def top_attention(vt: VisualTokens, params: BudgetParams | None = None) -> Reduction:
    """The `budget` patches with the largest CLS attention (FasterVLM-style), in raster order."""
    p = params_or_default(params, BudgetParams)
    vt.require("cls_attn", method="top-attention")
    kept = vt.cls_attn.float().topk(min(int(p.budget), vt.n)).indices
    kept = torch.sort(kept).values.to(vt.features.device)
    return _reduction(vt, "top-attention", kept, TopScoreTrace("CLS → patch attention: the highest are kept",
                                                               vt.cls_attn, kept))
