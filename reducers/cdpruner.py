"""CDPruner (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in
MLLMs", NeurIPS 2025, arXiv 2506.10967): the budget's tokens by greedy MAP inference of a determinantal point
process whose kernel is the tokens' similarity weighted by their relevance to the instruction.

Official code: Theia-4869/CDPruner (Apache-2.0), commit 9541616c40fcd5625de1cdb8ea6c33c129eb7864, its LLaVA-1.5
variant: `llava/model/llava_arch.py` (`LlavaMetaForCausalLM.encode_images`) and `llava/model/multimodal_encoder/
clip_encoder.py` (`CLIPVisionTower.forward`, `load_text_tower`). This file restates it; no code is copied.

What the official code computes for one image and the question text, budget T (`--visual_token_num`):
1. similarity S = x̂ x̂ᵀ of the PROJECTOR's outputs (the LLM's input embeddings of the patches), rows
   L2-normalised → `VisualTokens.projected`, `projected_similarity`;
2. image embeddings: the patch rows of hidden_states[−2] through the tower's post-layernorm and CLIP's visual
   projection — exactly PAR's `joint` (the TRIM rule); text embeddings: the question through CLIP's text tower
   (split into 77-token segments, one embedding each);
3. relevance: rel_i = MEAN over the text segments of the NEGATED cosine −cos(J_i, t) — the code negates the
   similarity, the paper's formula does not; then rel ← (rel − min rel + 1e−6) / (max rel − min rel);
4. kernel L = diag(rel) · S · diag(rel) (the paper's exp(θ/(2(1−θ))·rel) weighting is commented out in the code);
5. greedy MAP (Chen et al. 2018's fast greedy DPP): d²_i = L_ii; T times: j = argmax d², e = (L_j − Σ_t c_t[j]
   c_t) / √d²_j, c ← c ∪ {e}, d² −= e², d²_j = −∞;
6. kept = the T chosen, handed to the LLM in ascending index.

The query here: `VisualTokens.query` — exactly the query PAR uses (the app's prompt through the matching CLIP
text tower, or the pointed patches, or on the offline stand-in without a text tower the CLS row of J); the
readout says which. The official embeds the raw question (one segment for a question under 77 tokens) and uses
no templates; PAR's "raw prompt" toggle gives that.

Controls: `relevance_sign` (official: negated; "paper": +cos), `weighting` (official: linear; "exp(θ)": the
paper's, commented out in the code) with `theta`.

Deliberate deviations, all listed:
- Past the kernel's numerical rank (the best remaining gain d²_j ≤ 1e−5 · max_i L_ii, e.g. a budget above the
  projected width, or duplicate tokens), the official divides by ≈ 0 and its further picks are rounding noise
  (NaN for a gain ≤ 0, which can re-pick a chosen token); here the rest are taken by descending L_ii (relevance²),
  lowest index on ties, and the trace says from which pick on;
- constant relevance (official: 1e−6 / 0 = inf, a NaN kernel): rel ≡ 1, a plain DPP on S;
- the similarity S is the float32 product (official: float16 projections normalised in float16, then float32);
  the relevance, the kernel and the greedy recurrence run in float64 (official: float32, whose accumulated
  rounding after hundreds of picks reaches ~1e−5 of the largest gain and would decide the late picks); rows
  normalised with an epsilon; ties: the lowest index (torch.argmax's first maximum, as official on CPU);
- one query vector (the official averages over 77-token segments of a long question).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, Trace, VisualTokens, check_ranges, choice, params_or_default, slider
from .baselines import budget_slider

SIGNS = ("negated (official code)", "cosine (paper)")
WEIGHTINGS = ("linear (official code)", "exp(θ) (paper)")
RANK_EPS = 1e-5  # a gain below this share of the largest L_ii counts as past the kernel's numerical rank (S is a
# float32 product: its rounding, ~1e−7 of the scale, is what a gain past the rank consists of)


@dataclass(frozen=True)
class CDPrunerParams:
    budget: int = budget_slider()
    relevance_sign: str = choice(
        SIGNS[0], SIGNS, "Relevance of a patch to the instruction: the official code uses the NEGATED cosine "
        "(min–max normalised); the paper's formula the cosine itself", "Relevance sign")
    weighting: str = choice(
        WEIGHTINGS[0], WEIGHTINGS, "Kernel weight of the relevance r: r itself (official code) or "
        "exp(θ/(2(1−θ))·r) (the paper; commented out in the code)", "Relevance weighting")
    theta: float = slider(0.5, 0.0, 0.99, 0.01, "θ of the paper's exp weighting: 0 = a plain DPP on similarity, "
                          "→ 1 = relevance dominates (only with the exp weighting)", "θ")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class CDPrunerTrace(Trace):
    relevance: Tensor  # [N] the kernel's weight per patch (after sign, normalisation, weighting)
    order: Tensor  # [T] patches in the order the greedy chose them
    gains: Tensor  # [T] the conditional gain d²_j of each pick (NaN past the rank)
    exhausted_at: int | None  # first pick taken by relevance past the kernel's numerical rank, or None
    sign: str

    def heat(self):
        return f"CDPruner relevance weight ({self.sign})", self.relevance.float()

    def per_patch(self):
        n = self.relevance.shape[0]
        pick = torch.full((n,), -1, dtype=torch.long, device=self.order.device)
        pick[self.order] = torch.arange(self.order.numel(), device=self.order.device)
        gain = torch.full((n,), math.nan, dtype=torch.float32, device=self.order.device)
        gain[self.order] = self.gains.float()
        return {"cdpruner_relevance": self.relevance.float(), "cdpruner_pick": pick, "cdpruner_gain": gain}

    def inspect(self, i: int):
        out = [f"relevance weight {float(self.relevance[i]):.4g}"]
        hit = torch.nonzero(self.order == i).flatten()
        if hit.numel():
            k = int(hit[0])
            g = float(self.gains[k])
            out.append(f"chosen **{k + 1}.** by the DPP" + (f" (conditional gain {g:.3g})" if g == g else
                                                          " (past the kernel's rank: by relevance)"))
        else:
            out.append("not chosen")
        return out

    def readout(self):
        out = [f"relevance: {self.sign}"]
        if self.exhausted_at is not None:
            out.append(f"picks from {self.exhausted_at + 1} on by relevance (past the kernel's numerical rank)")
        return out


def relevance(joint: Tensor, query: Tensor, sign: str, weighting: str, theta: float, unit: bool = False) -> Tensor:
    """[N] the official relevance weight: (±cos(J_i, q) − min + 1e−6) / (max − min), then linear or exp-weighted;
    rel ≡ 1 when the cosine is constant."""
    rows = joint if unit else F.normalize(joint, dim=-1)
    s = rows @ F.normalize(query, dim=0)  # [N], in the inputs' dtype
    rel = -s if sign == SIGNS[0] else s
    span = rel.max() - rel.min()
    rel = (rel - rel.min() + 1e-6) / span if span > 0 else torch.ones_like(rel)
    if weighting == WEIGHTINGS[1]:
        rel = torch.exp(theta / (2 * (1 - theta)) * rel)
    return rel


def greedy_dpp(kernel: Tensor, count: int) -> tuple[Tensor, Tensor, int | None]:
    """Fast greedy MAP of a DPP with kernel [N, N]: (order [count], gains [count], first pick past the rank or
    None). Past the numerical rank the rest follow by descending L_ii (see the module docstring)."""
    n = kernel.shape[0]
    diag = kernel.diagonal().clone()
    floor = RANK_EPS * float(diag.max())
    cis = kernel.new_zeros(count, n)
    d2 = diag.clone()
    order = torch.empty(count, dtype=torch.long, device=kernel.device)
    gains = torch.full((count,), math.nan, dtype=kernel.dtype, device=kernel.device)
    exhausted = None
    for i in range(count):
        j = int(d2.argmax())
        g = float(d2[j])
        if not g > floor:
            exhausted = i
            break
        e = (kernel[j] - cis[:i, j] @ cis[:i]) / math.sqrt(g)  # [N]
        cis[i] = e
        d2 -= e * e
        d2[j] = -math.inf
        order[i], gains[i] = j, g
    if exhausted is not None:
        taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
        taken[order[:exhausted]] = True
        rest = torch.sort(torch.where(taken, -math.inf, diag), descending=True, stable=True).indices
        order[exhausted:] = rest[: count - exhausted]
    return order, gains, exhausted


def cdpruner(vt: VisualTokens, params: CDPrunerParams | None = None) -> Reduction:
    """CDPruner's conditional-DPP selection of min(budget, N) tokens, handed over in raster order."""
    p = params_or_default(params, CDPrunerParams)
    vt.require("projected", "joint", "query", method="CDPruner")
    count = min(int(p.budget), vt.n)
    rel = relevance(vt.joint.double(), vt.query.double(), p.relevance_sign, p.weighting, p.theta)  # [N] float64
    kernel = rel[:, None] * vt.projected_similarity.double() * rel[None, :]  # [N, N] float64
    order, gains, exhausted = greedy_dpp(kernel, count)
    kept = torch.sort(order).values
    tokens = vt.features[kept]
    stages = {"tokens": vt.n, "to LLM": tokens.shape[0]}
    trace = CDPrunerTrace(rel.float(), order, gains, exhausted, p.relevance_sign)
    return Reduction(method="cdpruner", kept=kept, tokens=tokens, grid=vt.grid, stages=stages, trace=trace)
