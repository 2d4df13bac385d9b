"""ToMe-style bipartite soft matching (Bolya et al., "Token Merging: Your ViT But Faster", arXiv 2210.09461),
applied once after the vision tower to the patch tokens and repeated until the token budget is reached.

Written from the paper (§3: bipartite soft matching, size-weighted merging, size tracking); no code from
facebookresearch/ToMe (CC BY-NC) was used. ToMe merges r tokens inside every layer of a ViT; here the same
matching is run step after step on the tower's output, with nothing between the steps.

One step on the current sequence of n tokens (each token holds a group of original patches, its size):
1. A = the tokens at even positions 0, 2, 4, … of the sequence, B = those at odd positions
   (|A| = ⌈n/2⌉, |B| = ⌊n/2⌋).
2. Similarity = cosine of the tokens' metric. The metric is `vt.keys`, the keys of the layer that consumes the
   features (all heads side by side: the paper averages the keys over heads, which needs the head count a
   `VisualTokens` does not carry). A merged token's metric is the size-weighted mean of its patches' keys
   (the paper's proportional merge tracks size); the cosine does not see the scale, so the sum is used.
3. Each A token draws one edge, to its most similar B token (ties: the lowest B position).
4. The r = min(⌈(N − M)/rounds⌉, |A|, n − budget) edges with the largest similarity are kept (ties: the
   lowest A position); each of their A tokens is merged into its B partner (several A tokens may join one B
   token). Sizes add.
5. The remaining tokens keep their order. (ToMe concatenates the unmerged A tokens and then B; here the
   sequence stays in raster order of its representative patches, so the next A/B split alternates over the
   image as the first one does.)
Steps repeat until n = min(budget, N): `merge_schedule` gives r per step (the funnel shows only N and the
result; the step count is len(merge_schedule(N, budget, rounds))). ToMe proper merges a small r in each of many
layers; here `rounds` (default 8) spreads the N − M merges over that many rounds, so tokens merged in one round
are matched again in the next and the survivors follow the image. With rounds = 1 every step but the last takes
r = |A|, i.e. merges ALL of A: after s full steps the survivors are the patches at positions 2^s − 1,
2·2^s − 1, … of the raster order (a fixed lattice) and only the group memberships depend on the image.

Output: the final tokens in raster order of their representative patch. kept[i] = the representative of token
i: the one patch of its group that was never merged away (the B-side destination of every merge it took
part in; not necessarily the group's lowest index). tokens[i] = the size-weighted mean of the merged tokens =
the plain mean of the original features of the group's patches; groups[p] = i for every patch p of the group,
group_weight[p] = 1 / size_i, so tokens[i] = Σ_{p: groups[p]=i} group_weight[p] · X_p.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, params_or_default, slider
from .baselines import budget_slider
from .ops import group_mean, group_sum


@dataclass(frozen=True)
class ToMeParams:
    budget: int = budget_slider("How many tokens are left after merging (at most N, the image's patch count)")
    rounds: int = slider(8, 1, 64, 1, "The N − M merges are spread over this many rounds of matching (at most "
                         "⌈(N − M)/rounds⌉ pairs a round, as ToMe merges r per layer), so merged tokens are matched "
                         "again; 1: every round merges all of A (halving), a fixed lattice of survivors",
                         "Merge rounds")

    def __post_init__(self) -> None:
        check_ranges(self)


def merge_schedule(n: int, budget: int, rounds: int = 1) -> list[int]:
    """r of every step from n tokens down to min(budget, n): r = min(⌈(N − M)/rounds⌉, |A|, n − budget),
    |A| = ⌈n/2⌉ (ToMe's r per layer, spread over `rounds`; more steps when |A| caps r)."""
    budget = max(1, min(int(budget), n))
    per_round = max(1, -(-(n - budget) // max(1, int(rounds))))
    steps = []
    while n > budget:  # n ≥ 2 here, so B is not empty
        r = min(per_round, (n + 1) // 2, n - budget)
        steps.append(r)
        n -= r
    return steps


def bipartite_match(metric: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """One matching step: metric [n, dk] (float32, any row scale) → src [r] A positions merged into dst [r]
    B positions (positions in the current sequence)."""
    unit = F.normalize(metric, dim=-1)  # [n, dk]
    a, b = unit[0::2], unit[1::2]  # [⌈n/2⌉, dk], [⌊n/2⌋, dk]
    score, partner = (a @ b.T).max(dim=1)  # [|A|]: each A token's edge (max returns the first maximum)
    chosen = torch.sort(score, descending=True, stable=True).indices[:r]  # [r] ties: lower A position
    return 2 * chosen, 2 * partner[chosen] + 1


def merge_step(metric: Tensor, owner: Tensor, rep: Tensor, src: Tensor, dst: Tensor):
    """Merge the tokens at positions src into those at dst: metric sums [n, dk] → [n − r, dk]; owner [N]
    (position of the token holding each patch) and rep [n] (representative patch per token) follow."""
    n = metric.shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=metric.device)
    keep[src] = False
    new_pos = torch.cumsum(keep, 0) - 1  # [n] position after the step of every surviving token
    target = torch.arange(n, device=metric.device)
    target[src] = dst
    remap = new_pos[target]  # [n] old position → position of the token that holds it after the step
    metric, _ = group_sum(metric, remap, n - src.numel())  # [n − r, dk]
    return metric, remap[owner], rep[keep]


def tome(vt: VisualTokens, params: ToMeParams | None = None) -> Reduction:
    """ToMe bipartite soft matching down to min(budget, N) tokens (see the module docstring)."""
    p = params_or_default(params, ToMeParams)
    vt.require("keys", method="ToMe")
    n, device = vt.n, vt.features.device
    metric = vt.keys.float()  # [n, dk] sum of the keys of each token's patches
    owner = torch.arange(n, device=device)  # [N] position of the token holding each patch
    rep = torch.arange(n, device=device)  # [n] each token's representative patch (ascending)
    for r in merge_schedule(n, p.budget, p.rounds):
        src, dst = bipartite_match(metric, r)
        metric, owner, rep = merge_step(metric, owner, rep, src, dst)
    m = rep.numel()
    tokens, size = group_mean(vt.features, owner, m)  # [M, d] group means, [M] group sizes
    return Reduction(
        method="tome",
        kept=rep,
        tokens=tokens.to(vt.features.dtype),
        grid=vt.grid,
        stages={"tokens": n, "to LLM": m},
        groups=owner,
        group_weight=1.0 / size[owner].float(),
    )
