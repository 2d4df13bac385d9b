"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
EMNLP 2025, arXiv 2502.11494): a few pivot tokens, then for each pivot the tokens LEAST similar to it — the
duplicates of the pivots are what is dropped. No attention map is read.

Official code: ZichenWen1/DART (Apache-2.0 per its README). No snapshot of that repository could be read here;
the LLaVA-1.5 code was read in the public fork xqy1111111/DART at commit 0247657060a42dd329d6f273455bfad05d5b2c74,
`llava/model/language_model/modeling_llama_self.py` (`get_retained_image_token`, `DART_K_norm.forward`), which
carries the official files. This file restates it; no code is copied.

What the official code computes (LLaVA-1.5, `--pruned_layer 2`, 4 image + 4 text pivots, `--max_num_trunction`
T = 128 in its scripts) — INSIDE the LLM, before layer K, from layer K−1's outputs:
1. pivots: the 4 image tokens and the 4 text tokens with the largest L1 norm of layer K−1's KEYS (heads
   concatenated);
2. states: layer K−1's output hidden states through the LLM's final RMSNorm;
3. TOKEN_TOPK = ⌊T / 8⌋; for each pivot in the iteration order of a Python SET of sequence positions, the
   TOKEN_TOPK not-yet-chosen, non-pivot image tokens with the smallest cosine to the pivot's state are chosen;
4. kept = image pivots ∪ chosen, in ascending position (original position ids kept); text tokens are never
   dropped.
So the LLM receives 4 + 8·⌊T/8⌋ image tokens (132 for T = 128), not T.

This reducer is DART's selection rule applied BEFORE the LLM (the app has no LLM hidden states or keys per
image; DART at layer K inside the LLM needs the in-LLM machinery FastV uses):
- states: the LLM's input embeddings of the patches, `VisualTokens.projected` (the hidden state entering layer
  0), without an RMSNorm; pivots: the largest L1 norm of those embeddings (official: of layer K−1's keys);
- all pivots are image tokens (`pivots`, default 8 = the official 4 + 4, so that the per-pivot count ⌊T/8⌋ is
  the official one): there are no text states before the LLM;
- pivot order: descending pivot score (official: a Python set's iteration order over sequence positions —
  CPython orders small ints by their value modulo the set's table size, so it depends on where the image sits in
  the prompt); the order decides which pivot gets a contested token;
- `budget` is exact: min(budget, N) tokens = k pivots (k = min(pivots, budget)) + the rest shared out, the
  first (budget − k) mod k pivots taking one more; `official_count` instead gives every pivot ⌊T/pivots⌋
  (pivots + pivots·⌊T/pivots⌋ tokens, capped at N; official with text pivots: 4 + 8·⌊T/8⌋);
- ties: the lowest index (official: `topk`, unspecified); float32 cosine of rows normalised with an epsilon.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, Trace, VisualTokens, check_ranges, params_or_default, slider, toggle
from .baselines import budget_slider


@dataclass(frozen=True)
class DARTParams:
    budget: int = budget_slider()
    pivots: int = slider(8, 1, 64, 1, "Pivot tokens (largest L1 norm); each then takes the tokens least similar to "
                         "it. Official: 4 image + 4 text pivots — before the LLM all are image tokens",
                         "Pivots")
    official_count: bool = toggle(
        False, "Give every pivot ⌊T/pivots⌋ tokens as the official code does (then the LLM gets pivots + "
        "pivots·⌊T/pivots⌋, e.g. 136 for T = 128); off: exactly T tokens", "Official count")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class DARTTrace(Trace):
    score: Tensor  # [N] L1 norm of each patch's state (the pivot score)
    pivots: Tensor  # [k] pivot patches, in processing order
    owner: Tensor  # [N] long: the pivot (patch index) that chose a patch, the patch itself for a pivot, −1 none
    cosine: Tensor  # [N] cosine of a chosen patch to its pivot (NaN otherwise)
    per_pivot: tuple[int, ...]

    def heat(self):
        return "L1 norm of the LLM input embedding (DART's pivot score)", self.score.float()

    def lines(self):
        if self.pivots.numel() == 0:
            return []
        return [("pivot cut", float(self.score[self.pivots].float().min()))]

    def per_patch(self):
        return {"dart_score": self.score.float(), "dart_pivot": self.owner, "dart_cosine": self.cosine}

    def inspect(self, i: int):
        out = [f"pivot score (L1 norm) {float(self.score[i]):.4g}"]
        owner = int(self.owner[i])
        if owner == i:
            k = int(torch.nonzero(self.pivots == i).flatten()[0])
            out.append(f"**pivot {k + 1}** of {self.pivots.numel()}")
        elif owner >= 0:
            out.append(f"chosen by pivot patch {owner} (cosine {float(self.cosine[i]):.3f}: among the least similar)")
        else:
            out.append("dropped: too similar to the pivots (a duplicate)")
        return out

    def readout(self):
        counts = sorted(set(self.per_pivot))
        return [f"{self.pivots.numel()} pivots, each choosing {' or '.join(map(str, counts))} least-similar tokens"]


def shares(total: int, k: int, official: bool) -> list[int]:
    """Tokens each of k pivots chooses: exact — (total − k) shared out, the first ones one more; official —
    ⌊total / k⌋ each."""
    if official:
        return [total // k] * k
    rest = total - k
    return [rest // k + (1 if i < rest % k else 0) for i in range(k)]


def dart(vt: VisualTokens, params: DARTParams | None = None) -> Reduction:
    """DART's pivots and their least-similar tokens, before the LLM (see the module docstring)."""
    p = params_or_default(params, DARTParams)
    vt.require("projected", method="DART")
    n, dev = vt.n, vt.features.device
    x = vt.projected.float()
    score = x.abs().sum(dim=1)  # [N] L1 norm
    t = min(int(p.budget), n)
    k = min(int(p.pivots), t)
    pivots = torch.sort(score, descending=True, stable=True).indices[:k]  # processing order: descending score
    xn = F.normalize(x, dim=-1)
    owner = torch.full((n,), -1, dtype=torch.long, device=dev)
    owner[pivots] = pivots
    cosine = torch.full((n,), math.nan, dtype=torch.float32, device=dev)
    free = torch.ones(n, dtype=torch.bool, device=dev)
    free[pivots] = False
    counts = shares(int(p.budget) if p.official_count else t, k, p.official_count)
    cos = xn[pivots] @ xn.T  # [k, N]
    for i, want in enumerate(counts):
        take = min(want, int(free.sum()))
        if take <= 0:
            continue
        c = torch.where(free, cos[i], torch.inf)
        chosen = torch.sort(c, stable=True).indices[:take]  # the least similar, lowest index on ties
        owner[chosen] = pivots[i]
        cosine[chosen] = c[chosen]
        free[chosen] = False
    kept = torch.nonzero(owner >= 0).flatten()  # ascending index
    tokens = vt.features[kept]
    stages = {"tokens": n, "pivots": k, "to LLM": tokens.shape[0]}
    trace = DARTTrace(score, pivots, owner, cosine, tuple(counts))
    return Reduction(method="dart", kept=kept, tokens=tokens, grid=vt.grid, stages=stages, trace=trace)
