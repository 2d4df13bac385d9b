"""VisionZip (Yang et al., arXiv 2412.04467), equal to the official computation for one image.

Official: dvlab-research/VisionZip (Apache-2.0), `visionzip/clip_encoder.py` (`CLIPVisionTower_VisionZip.forward`),
`visionzip/utils.py` (`CLIPAttention_forward`, `CLIP_EncoderLayer_forward`, `apply_info`), `visionzip/main.py`
(`visionzip(model, dominant, contextual)`). This file restates it; no code is copied.

What the official code computes, and what this reducer reads instead:
- attention: `attentions[-2]`, the per-head softmax attention inside encoder.layers[-2], the layer whose output
  is hidden_states[-2] (the features LLaVA hands on); the CLS row's patch columns, SUMMED over the heads
  → `VisualTokens.feature_layer_attn` (not `cls_attn`, which is one layer later);
- keys ("metric"): the same layer's keys `k_proj(layer_norm1(·))` split into heads and AVERAGED over the heads
  (d_head wide, not scaled) → `VisualTokens.feature_layer_keys`;
- tokens: rows of hidden_states[-2] → `VisualTokens.features` (patches) and `VisualTokens.cls_feature` (CLS).

The split. `visionzip(model, dominant=D, contextual=C)` hands D + C tokens: the CLS token plus the D − 1 patches
with the largest summed attention (`apply_info(dominant_num=dominant - 1)`, then `topk(dominant_num) + 1` and the
CLS index 0 prepended), then C contextual tokens. The official README gives D + C = 54 + 10 (64 tokens); 108 + 20
(128) and 162 + 30 (192) are the common splits at the official ratio (not in the README). For a budget M (capped
at N) this reducer uses
    D = ⌊M · share + ½⌋ clamped to [1, M],  C = M − D,  share = 54/64 by default,
which gives exactly 54 + 10 at M = 64 and the common splits 108 + 20 and 162 + 30 at M = 128, 192.

Steps (remaining = patches that are not dominant, in raster order, R of them):
1. dominant patches = the D − 1 (CLS handed) or D (not) patches with the largest attention; ties → lowest index
   (official: torch.topk, order of ties unspecified); handed over in raster order (official: `masked_select`
   keeps sequence order);
2. targets = remaining[0 :: step][:C], step = max(1, ⌊R / C⌋);
3. every other remaining patch joins the target with the largest cosine similarity of the keys (argmax: the
   first, i.e. lowest target, on ties);
4. contextual token j = x_{t_j} + mean of the x_i that joined t_j (just x_{t_j} if none joined): the target's own
   feature with weight 1, each member with weight 1/|members| — NOT a mean over target and members.
Token order handed to the LLM, as the official LLaVA-1.5 path hands it (`clip_encoder.py`: the dominant tokens
are `hidden_states` masked by `all_indices` = [0 (CLS)] + topk + 1 in sequence order, then the contextual tokens
are concatenated after them): the CLS token first, the dominant patches in ascending index, then the contextual
tokens in target order. The CLS token is a leading token of the `Reduction` (`n_lead = 1`): tokens[1 + i]
belongs to kept[i]. (The official LLaVA-NeXT path, `restore_image_features_sorted`, puts it after the patches.)

Deliberate differences (bugs or undefined cases of the official code, fixed):
- C = 0 (official: ⌊R / 0⌋ raises): no contextual tokens; remaining patches reach no token;
- D = 1 with the CLS token on (official: topk of 0 patches): the one dominant slot is a patch, not the CLS token,
  so that at least one patch is kept — the CLS token takes a slot only when D ≥ 2;
- float32 arithmetic throughout (official: the model dtype, float16); keys normalised with an epsilon (official
  divides by the norm: NaN for a zero key);
- batch size 1 and N, the grid and the head count derived from the inputs (official hard-codes 576 / 24 in its
  LLaVA-NeXT path).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, TopScoreTrace, VisualTokens, check_ranges, params_or_default, slider, toggle
from .baselines import budget_slider
from .ops import group_sum, top_by_score

OFFICIAL_SHARE = 54 / 64  # README: dominant=54, contextual=10 at 64 tokens; the same ratio at 128 and 192


@dataclass(frozen=True)
class VisionZipParams:
    budget: int = budget_slider()
    dominant_share: float = slider(
        OFFICIAL_SHARE, 0.0, 1.0, 1 / 64,
        "Share of the budget that are dominant tokens (the top CLS-attention patches, plus the CLS token); the "
        "rest are contextual merges. D = ⌊M·share + ½⌋ (official: 54/64 = 0.84375, i.e. 54 + 10 at 64; the "
        "common splits at the official ratio 108 + 20 and 162 + 30 at 128 and 192)", "Dominant share")
    cls_token: bool = toggle(
        True, "Hand the CLS token to the LLM as one of the dominant tokens, as the official code does (off: that "
        "slot goes to one more dominant patch)", "CLS token")

    def __post_init__(self) -> None:
        check_ranges(self)


def split(budget: int, n: int, share: float, cls_token: bool) -> tuple[int, int, int]:
    """(dominant tokens D incl. the CLS token, CLS handed 0/1, contextual C) for a budget capped at N."""
    m = min(int(budget), n)
    dominant = min(m, max(1, math.floor(m * share + 0.5)))
    with_cls = int(cls_token and dominant >= 2)
    return dominant, with_cls, m - dominant


def contextual_targets(remaining: Tensor, count: int) -> Tensor:
    """[count] evenly spaced merge targets among the remaining patches: remaining[0::step][:count],
    step = max(1, ⌊R / count⌋)."""
    step = max(1, remaining.numel() // count)
    return remaining[::step][:count]


def assign(keys_n: Tensor, members: Tensor, targets: Tensor) -> Tensor:
    """[R − C] for each member patch the position (0..C−1) of its most key-similar target, first on ties."""
    sim = keys_n[members] @ keys_n[targets].T  # [R − C, C]
    return sim.argmax(dim=1)


def merge_contexts(x: Tensor, members: Tensor, targets: Tensor, joined: Tensor) -> tuple[Tensor, Tensor]:
    """Contextual tokens [C, d] (float32) x_t + mean of the members that joined t, and the member counts [C].
    The member rows are summed in place (`ops.group_sum`), never gathered into a copy."""
    summed, count = group_sum(x, joined, targets.numel(), rows=members)  # [C, d], [C]
    return x[targets].float() + summed / count.clamp(min=1).unsqueeze(1).to(torch.float32), count


def visionzip(vt: VisualTokens, params: VisionZipParams | None = None) -> Reduction:
    """VisionZip's dominant + contextual tokens of one image (see the module docstring)."""
    p = params_or_default(params, VisionZipParams)
    vt.require("feature_layer_attn", "feature_layer_keys", *(("cls_feature",) if p.cls_token else ()),
               method="VisionZip")
    n, x, dev = vt.n, vt.features, vt.features.device
    dominant, with_cls, c = split(p.budget, n, p.dominant_share, p.cls_token)
    kept = top_by_score(vt.feature_layer_attn, dominant - with_cls)  # [M] the most attended, raster order
    m = kept.numel()
    is_kept = torch.zeros(n, dtype=torch.bool, device=dev)
    is_kept[kept] = True
    remaining = torch.nonzero(~is_kept).flatten()  # [R] raster order

    groups = torch.full((n,), -1, dtype=torch.long, device=dev)
    weight = torch.zeros(n, dtype=torch.float32, device=dev)
    groups[kept] = with_cls + torch.arange(m, device=dev)  # the CLS token leads: kept[i] is token cls + i
    weight[kept] = 1.0
    parts = [x[kept]]
    if with_cls:
        parts.insert(0, vt.cls_feature.to(x.dtype).unsqueeze(0))
    targets = remaining[:0]
    if c:
        targets = contextual_targets(remaining, c)  # [C]
        is_target = torch.zeros(n, dtype=torch.bool, device=dev)
        is_target[targets] = True
        members = remaining[~is_target[remaining]]  # [R − C]
        joined = assign(F.normalize(vt.feature_layer_keys.float(), dim=-1), members, targets)  # [R − C]
        contexts, count = merge_contexts(x, members, targets, joined)
        first = m + with_cls  # position of the first contextual token
        groups[targets] = first + torch.arange(c, device=dev)
        weight[targets] = 1.0
        groups[members] = first + joined
        weight[members] = 1.0 / count[joined].to(torch.float32)
        parts.append(contexts.to(x.dtype))
    tokens = torch.cat(parts)
    stages = {"tokens": n, "dominant": dominant, "contextual": c, "to LLM": tokens.shape[0]}
    return Reduction(
        method="visionzip", kept=kept, tokens=tokens, grid=vt.grid, stages=stages, n_extra=with_cls + c,
        n_lead=with_cls, groups=groups, group_weight=weight, trace=VisionZipTrace(
            "CLS attention summed over heads (VisionZip's dominance score): the highest are kept",
            vt.feature_layer_attn, kept, targets=targets),
    )


@dataclass(frozen=True, eq=False)
class VisionZipTrace(TopScoreTrace):
    """VisionZip's dominance score (the top kept, a cut line) and the patches its contextual tokens are anchored
    on: the contextual token j is tokens[cls + M + j] and holds the patches i with groups[i] == cls + M + j."""

    targets: Tensor | None = None  # [C] in token order

    def readout(self):
        return [f"{self.targets.numel()} contextual tokens"] if self.targets is not None and self.targets.numel() else []

    def facts(self, i):
        return {"context_anchor": True} if self.targets is not None and bool((self.targets == i).any()) else {}

    def inspect(self, i):
        return ["anchor of a contextual token"] if self.facts(i) else []
