"""DivPrune (Alvar et al., arXiv 2503.02175): the budget's most diverse subset by greedy max–min selection.

Restated here from the paper and the facts of its official code (vbdi/divprune, CC BY-NC 4.0; none of its code is
used): `LLaVA/llava/model/llava_arch.py`, `LlavaMetaForCausalLM.DivPrune` and the block marked `#divprune` at the
end of `prepare_inputs_labels_for_multimodal`.

- Which tokens: the official selects on the image rows of `new_input_embeds`, the LLM's input embeddings, i.e.
  the multimodal PROJECTOR's outputs (LLaVA-1.5-7B: 4096 wide), not the vision tower's features. This reducer
  reads them from `VisualTokens.projected`. The projector acts on each token alone, so handing the LLM
  `features[kept]` (the backend projects them) gives exactly the official LLM input.
- Distance: d(i, j) = 1 − cos(p_i, p_j) (rows divided by their norms, one matrix product).
- First token: for each token j the smallest distance to any OTHER token (official: the second smallest entry of
  column j of the distance matrix, the smallest being its own ≈ 0), and the token where that is largest: the one
  farthest from its nearest neighbour.
- Then, until M tokens are chosen: the token whose smallest distance to the chosen ones, min_{s ∈ S} d(s, j), is
  largest. Ties: the lowest index (torch.argmax returns the first maximum).
- Order handed to the LLM: the chosen indices sorted ascending (official: `keep_indexs.sort()`), raster order.
- Budget: the official keeps int(round(ratio · N)) tokens (SUBSET_RATIO, 0.098 in its scripts); here the shared
  token budget M, capped at N.

Deliberate differences: a chosen token is never chosen again (official: chosen tokens keep their score
d(j, j) ≈ 0 and are picked again when every remaining token is at distance ≤ that, e.g. duplicate tokens, which
repeats an index); float32 distances (official: the model dtype, float16); rows normalised with an epsilon
(official: NaN for a zero row).

Cost: the N×N distance matrix (memoised per image on `VisualTokens`), then one O(N) step per chosen token keeping a
running min-distance vector. The greedy order does not depend on the budget (M tokens are the first M of any longer
run), so the order is memoised per image too: a budget move below the longest run so far costs nothing, a larger
one continues where that run stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, params_or_default
from .baselines import budget_slider


@dataclass(frozen=True)
class DivPruneParams:
    budget: int = budget_slider()

    def __post_init__(self) -> None:
        check_ranges(self)


def max_min_order(dist: Tensor, count: int) -> Tensor:
    """[count] greedy max–min selection over a distance matrix [N, N] (+inf on the diagonal), in the order chosen.

    Step 0 takes argmax_j min_i dist[i, j]; step t takes argmax_j min_{s chosen} dist[s, j] over the tokens not yet
    chosen. Each step is O(N): the running minimum over the chosen rows is kept, chosen tokens set to −inf.
    """
    return max_min_extend(dist, None, None, count)[0]


def max_min_extend(dist: Tensor, chosen: Tensor | None, score: Tensor | None, count: int) -> tuple[Tensor, Tensor]:
    """Continue a greedy max–min run: `chosen` [k] so far with its running score [N] (None, None: from the start)
    → (chosen [count], score). The greedy choice never depends on the budget, so a longer run extends a shorter."""
    if chosen is None:
        chosen = torch.empty(0, dtype=torch.long, device=dist.device)
        score = dist.min(dim=0).values  # [N] nearest-other-token distance, column-wise as official
    start = chosen.numel()
    chosen = torch.cat([chosen, chosen.new_empty(max(0, count - start))])
    for t in range(start, count):
        j = score.argmax().view(1)  # first maximum on ties; a tensor index: no device sync
        chosen[t : t + 1] = j
        row = dist.index_select(0, j)[0]  # [N] distances from the new token
        score = row.clone() if t == 0 else torch.minimum(score, row)  # chosen ones stay −inf
        score.index_fill_(0, j, -torch.inf)
    return chosen, score


def divprune(vt: VisualTokens, params: DivPruneParams | None = None) -> Reduction:
    """The min(budget, N) most diverse projected tokens (greedy max–min cosine distance), in raster order."""
    p = params_or_default(params, DivPruneParams)
    vt.require("projected", method="DivPrune")
    count = min(int(p.budget), vt.n)
    # [M] in the order chosen: a prefix of the image's memoised run, extended only when the budget grows past it
    order = vt.projected_prefix("divprune", count,
                                lambda seq, score, m: max_min_extend(vt.projected_distance, seq, score, m))
    kept = torch.sort(order).values
    tokens = vt.features[kept]
    stages = {"tokens": vt.n, "to LLM": tokens.shape[0]}
    return Reduction(method="divprune", kept=kept, tokens=tokens, grid=vt.grid, stages=stages)
