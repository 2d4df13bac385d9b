"""Small pure tensor operations several methods share (torch only).

Grouped sums and means go through `F.embedding_bag` over rows ordered by group (a stable sort): each group's rows
are summed in raster order, in one fixed order on CPU and GPU alike (unlike `index_add_` on CUDA), and no copy
of the grouped rows is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def top_by_score(score: Tensor, m: int) -> Tensor:
    """[m] indices of the m largest scores (ties: lowest index), in ascending (raster) order."""
    best = torch.sort(score.float(), descending=True, stable=True).indices[:m]  # [m]
    return torch.sort(best).values


def bags(target: Tensor, n_out: int) -> tuple[Tensor, Tensor, Tensor]:
    """For an assignment target [n] → 0..n_out−1: the rows ordered by target (stable, so raster order within
    each group) [n], each group's offset into that order [n_out] and its size [n_out] (0 for an empty group)."""
    order = torch.sort(target, stable=True).indices  # [n]
    counts = torch.bincount(target, minlength=n_out)  # [n_out]
    return order, torch.cumsum(counts, 0) - counts, counts


def group_sum(x: Tensor, target: Tensor, n_out: int, rows: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per group, the float32 sum of the rows assigned to it [n_out, d] (zero for an empty group), and the group
    sizes [n_out]: row x[i] goes to group target[i], or, with `rows` [n], row x[rows[i]] does."""
    order, offsets, counts = bags(target, n_out)
    return F.embedding_bag(order if rows is None else rows[order], x.float(), offsets, mode="sum"), counts


def group_mean(x: Tensor, target: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
    """The float32 mean of the rows of x [n, d] in each group of target [n] → 0..n_out−1 (every group non-empty)
    [n_out, d], and the group sizes [n_out]."""
    order, offsets, counts = bags(target, n_out)
    return F.embedding_bag(order, x.float(), offsets, mode="mean"), counts
