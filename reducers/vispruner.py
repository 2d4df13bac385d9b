"""VisPruner (Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", ICCV 2025, arXiv 2412.01818): important tokens by CLS attention, then diverse tokens by similarity-based
removal of duplicates.

Official code: Theia-4869/VisPruner (Apache-2.0), commit aefa01adc7c7ce6334e880c88225e90cede760d1,
`llava/model/llava_arch.py` (`LlavaMetaForCausalLM.encode_images`) and `llava/model/multimodal_encoder/
clip_encoder.py` (`feature_select`). This file restates it; no code is copied.

What the official code computes for one image with budget T and important ratio ρ (`--visual_token_num`,
`--important_ratio`, 0.5 in its scripts):
1. attention: `attentions[select_layer]` (LLaVA: −2, the layer that produces the features), the CLS row's patch
   columns, averaged over the heads. Here `VisualTokens.feature_layer_attn` (the same row SUMMED over the heads,
   VisionZip's field): a positive multiple of the mean, so every ranking below is the same;
2. T_imp = int(T·ρ) (truncation, in float64 as Python computes it), T_div = T − T_imp;
3. all patches sorted by descending attention; important = the first T_imp; the residual R = the rest, in that
   order;
4. while r = min(8, |R| − T_div) > 0: a = R[0::2], b = R[1::2] (positions in the CURRENT residual order); for
   each a its largest cosine similarity to any b (features L2-normalised: hidden_states[−2]); the r a's with the
   largest such similarity are removed; the new residual order is [the remaining a's by DESCENDING similarity,
   then the b's in their order] — the selection depends on this iteration order, and it is followed exactly;
5. kept = important ∪ residual, handed to the LLM in ascending index (a boolean mask over the patches).

Where the official code surprises (followed, or where it cannot run, written down):
- An odd residual count crashes it: `a` has ⌈|R|/2⌉ rows but its gather index is expanded to ⌊|R|/2⌋ − r
  columns, so the gather fails with a shape mismatch unless ⌈|R|/2⌉ − r ≤ 2 (e.g. T = 7, ρ = 0.5 on 576
  patches: T_imp = 3, |R| = 573 → crash in the first round). When ⌊|R|/2⌋ − r = 0 with |R| odd, the broadcast
  gathers NO a at all: r + 1 tokens are removed in that round, and the official count is one less than T.
  Likewise r > ⌈|R|/2⌉ + 1 (too few a's for the round, only at small residuals) crashes (`expand` with a
  negative size), and T_div = 0 crashes at |R| = 1 (max over an empty b).
  This reducer removes min(r, |a|) a's per round, which is the official step wherever that runs with its
  intended count, and reaches exactly T_div diverse tokens (T_div = 0: no residual is kept) — `budget` is the
  exact number of tokens the LLM receives. `official_count` instead reproduces the official round where it
  runs, including the one-short round; where the official code would crash the trace says so and this
  reducer's rule is used.
- Ties (attention or similarity): the lowest index / earliest position first (official: `argsort`, not stable).
- The cosine similarity is read off the per-image memoised [N, N] float32 product
  `VisualTokens.feature_similarity` (shared with PAR), not recomputed per round; the rounds run in numpy.

Deliberate deviations, all listed: the exact-count rule above (default); stable tie order; float32 arithmetic
(official: float16 features normalised in float16); rows normalised with an epsilon (official: NaN for a zero
row); T capped at N before the split (official with T ≥ N: no round runs and every patch is kept — the same
tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .base import Reduction, Trace, VisualTokens, check_ranges, params_or_default, slider, toggle
from .baselines import budget_slider

ROUND = 8  # official: at most 8 duplicates removed per round (`min(8, R - diverse_token_num)`)


@dataclass(frozen=True)
class VisPrunerParams:
    budget: int = budget_slider()
    important_ratio: float = slider(
        0.5, 0.0, 1.0, 0.01, "Share of the budget taken by the most CLS-attended patches (T_imp = int(T·ρ), "
        "official: 0.5); the rest are diverse tokens left after removing duplicates", "Important ratio ρ")
    official_count: bool = toggle(
        False, "Reproduce the official rounds exactly, including the odd-residual round that removes one token "
        "too many (then the LLM gets T − 1 tokens); off: exactly T tokens", "Official count")

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass(frozen=True)
class VisPrunerTrace(Trace):
    cls_attention: Tensor  # [N] the feature layer's CLS attention (Σ heads; official: mean — same ranking)
    important: Tensor  # [T_imp] patch indices, descending attention
    removed_round: Tensor  # [N] long: the round in which a residual patch was removed as a duplicate, −1 never
    duplicate_similarity: Tensor  # [N] its largest cosine to a b token when removed (NaN otherwise)
    rounds: int
    notes: tuple[str, ...] = ()

    def heat(self):
        return "CLS attention of the feature layer (Σ heads): the top T_imp are important", self.cls_attention.float()

    def lines(self):
        if self.important.numel() == 0:
            return []
        return [("important cut", float(self.cls_attention[self.important].float().min()))]

    def per_patch(self):
        important = torch.zeros_like(self.removed_round, dtype=torch.bool)
        important[self.important] = True
        return {"vispruner_important": important, "vispruner_removed_round": self.removed_round,
                "vispruner_duplicate_similarity": self.duplicate_similarity}

    def inspect(self, i: int):
        a = self.cls_attention.float()
        out = [f"feature-layer CLS attention {float(a[i]):.4g} (rank {int((a > a[i]).sum()) + 1})"]
        if bool((self.important == i).any()):
            out.append("**important** (top T_imp by attention)")
        elif int(self.removed_round[i]) >= 0:
            out.append(f"removed as a duplicate in round {int(self.removed_round[i]) + 1} (largest cosine to "
                       f"the other half {float(self.duplicate_similarity[i]):.3f})")
        else:
            out.append("kept as a **diverse** token")
        return out

    def readout(self):
        return [f"{self.important.numel()} important + diverse after {self.rounds} duplicate-removal rounds",
                *self.notes]


def split(budget: int, n: int, ratio: float) -> tuple[int, int]:
    """(T_imp, T_div) for T = min(budget, N): T_imp = int(T·ρ) as the official code truncates it."""
    t = min(int(budget), n)
    important = int(t * ratio)
    return important, t - important


def official_round(r_count: int, r: int) -> tuple[int | None, str]:
    """How many a's the official gather keeps in a round with |R| = r_count and r removals, or None where it
    crashes: (kept a's or None, a note)."""
    n_a = (r_count + 1) // 2
    wanted = max(0, n_a - r)  # argsort(...)[:, r:]
    expand = r_count // 2 - r  # torch.arange(B)[:, None].expand(-1, R // 2 - r)
    if expand < -1:
        return None, f"|R| = {r_count}, r = {r}: expand to a negative size"
    width = 1 if expand == -1 else expand
    if width == wanted or width == 1:
        return wanted, ""
    if wanted == 1 and width == 0:
        return 0, f"|R| = {r_count} (odd), r = {r}: the gather broadcasts to 0 columns, one a too many removed"
    return None, f"|R| = {r_count} (odd), r = {r}: gather shapes {width} and {wanted} do not broadcast"


def remove_duplicates(sim: Tensor | None, n: int, residual: Tensor, diverse: int, official: bool
                      ) -> tuple[Tensor, Tensor, Tensor, int, list[str]]:
    """The official duplicate-removal rounds over `residual` [R] (current order) down to `diverse` tokens, on the
    cosine similarity `sim` [N, N] of the feature rows (None when no round runs: |R| ≤ T_div or T_div = 0).
    Returns (residual left, removed_round [N], duplicate similarity [N], rounds, notes).

    The rounds are sequential and small (|a|×|b| reads each), so they run in numpy on one host copy of `sim`:
    per-op dispatch, not arithmetic, is their cost."""
    dev = residual.device
    removed_round = np.full(n, -1, dtype=np.int64)
    dup = np.full(n, np.nan, dtype=np.float32)
    res = residual.cpu().numpy()
    notes: list[str] = []
    rounds = 0
    if diverse == 0:
        removed_round[res] = 0
        notes = ["T_div = 0: no diverse token (the official loop crashes at |R| = 1)"] if res.size else []
        res = res[:0]
    else:
        s = sim.detach().cpu().numpy() if sim is not None else None
        crashed = False
        while True:
            count = res.size
            r = min(ROUND, count - diverse)
            if r <= 0:
                break
            a, b = res[0::2], res[1::2]
            score = s[np.ix_(a, b)].max(axis=1)  # [|a|] largest cosine to any b
            order = np.argsort(-score, kind="stable")  # descending, earliest position first on ties
            keep_a = max(0, a.size - r)
            if official and not crashed:
                off, note = official_round(count, r)
                if off is None:
                    crashed = True
                    notes.append(f"the official code crashes in round {rounds + 1} ({note}); this reducer's rule "
                                 "is used from there on")
                elif off != keep_a:
                    notes.append(f"round {rounds + 1}: {note} (official count)")
                    keep_a = off
            cut = a.size - keep_a
            removed_round[a[order[:cut]]] = rounds
            dup[a[order[:cut]]] = score[order[:cut]]
            res = np.concatenate([a[order[cut:]], b])
            rounds += 1
    as_tensor = lambda v: torch.from_numpy(v).to(dev)  # noqa: E731
    return as_tensor(res), as_tensor(removed_round), as_tensor(dup), rounds, notes


def vispruner(vt: VisualTokens, params: VisPrunerParams | None = None) -> Reduction:
    """VisPruner's important + diverse tokens of one image (see the module docstring)."""
    p = params_or_default(params, VisPrunerParams)
    vt.require("feature_layer_attn", method="VisPruner")
    n, dev = vt.n, vt.features.device
    t_imp, t_div = split(p.budget, n, p.important_ratio)
    attn = vt.feature_layer_attn
    by_attention = torch.sort(attn.float(), descending=True, stable=True).indices  # [N]
    important, residual = by_attention[:t_imp], by_attention[t_imp:]
    sim = vt.feature_similarity if 0 < t_div < residual.numel() else None  # [N, N], memoised per image
    residual, removed_round, dup, rounds, notes = remove_duplicates(sim, n, residual, t_div, p.official_count)
    kept = torch.sort(torch.cat([important, residual])).values
    tokens = vt.features[kept]
    stages = {"tokens": n, "important": t_imp, "diverse": residual.numel(), "to LLM": tokens.shape[0]}
    trace = VisPrunerTrace(attn, important, removed_round, dup, rounds, tuple(notes))
    return Reduction(method="vispruner", kept=kept, tokens=tokens, grid=vt.grid, stages=stages, trace=trace)
