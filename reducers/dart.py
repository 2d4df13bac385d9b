"""DART (Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
EMNLP 2025, arXiv 2502.11494): inside the LLM, a few pivot tokens, then for each pivot the image tokens LEAST
similar to it — the duplicates of the pivots are what is dropped. No attention map is read.

Official code: ZichenWen1/DART (Apache-2.0). `fetch` of that repository gave no snapshot here; its history is
carried by the public fork xqy1111111/DART, whose last commit by the authors is 5a19452fc173017191c247848673e0bde755695a
(2025-08-31, "Update README.md"; the fork's own later commits leave `llava/` unchanged). Read there:
`llava/model/language_model/modeling_llama_self.py` (`DART.forward`, `get_retained_image_token`, the decoder
layer returning its keys) and `scripts/v1_5/eval/*.sh` (`--pruned_layer 2 --pivot_image_token 4
--pivot_text_token 4 --max_num_trunction T`, README example T = 128). This file restates it; no code is copied.

What the official code computes (LLaVA-1.5), and what is done here the same way:
1. At decoder layer K (`pruned_layer`, official 2), in the prefill only, BEFORE running it: layer K−1's output
   (`layer_outputs[0]`) through the LLM's final RMSNorm (`self.norm`) gives the states; layer K−1's keys
   (after RoPE at positions 0…T−1, `repeat_kv`-expanded, heads concatenated) give the pivot score.
2. Pivots: the `pivot_image_token` image tokens and the `pivot_text_token` tokens AFTER the image (the question
   and the chat tail) with the largest L1 norm of those keys (`topk`).
3. TOKEN_TOPK = ⌊T / (image + text pivots)⌋ (`math.ceil(T // 8)`). For each pivot, in the iteration order of a
   Python set of their SEQUENCE positions (`list(set(image_indices + query_indices))`: CPython orders small ints
   by their value modulo the table size, so the order depends on where the image sits in the prompt), the
   TOKEN_TOPK not-yet-chosen non-pivot image tokens with the smallest cosine (`F.cosine_similarity`) to the
   pivot's state are chosen; the candidates are listed in a Python set's order too (ascending here: positions
   below the table size).
4. Kept = image pivots ∪ chosen; `keep_indexs` = text before, kept image tokens, text after, sorted; layers K…
   run on those rows with `position_ids = keep_indexs` (the ORIGINAL positions, gaps where tokens were
   dropped, as FastV). While decoding, `past_key_values_length` is layer 0's cache length, so a decoded token
   sits at T + n in every layer; layers ≥ K cache only the kept rows.
So the LLM receives image pivots + 8·⌊T/8⌋ image tokens (132 for T = 128), not T.

Here that runs in the staged in-LLM machinery (`reducers.inllm`, one stage, points (K−1, K), `reads = "keys"`,
`renumbers = False`): the backend's probe hands layer K−1's keys and normed outputs to `DARTPlan.decide_keys`,
records the decision once per image + prompt + plan, and answers and scores replay it.

Deviations, said:
- `budget` is exact (the image tokens the LLM keeps from layer K on): min(budget, N) = k image pivots (k =
  min(image pivots, budget)) + the rest shared out over all pivots in their set order, the first
  (rest mod pivots) taking one more; `official_count` gives every pivot ⌊budget / (image + text pivots)⌋ as the
  official code does (then the count differs from the budget);
- the official `topk` crashes when a pivot wants more tokens than are left (e.g. T = 576 of N = 576: 8·72 >
  572), when the image has fewer tokens than image pivots or the text after it fewer than text pivots, and
  K = 0 (no layer K−1); here a pivot takes what is left, the pivot counts are capped, and K ≥ 1;
- `topk` ties are unspecified; here the earliest candidate (pivots: the lowest index) wins;
- the official cosine and L1 norms run in the model's dtype (fp16); here float32;
- the official selects in the prefill (`seq_length > 1`), i.e. on the prompt; a teacher-forced score here
  replays that prompt's decision rather than re-selecting with the scored continuation among the text tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, params_or_default, slider, toggle
from .baselines import budget_slider
from .inllm import Decision, StagedTrace, StagePlan, schedule_of, staged_reduction


@dataclass(frozen=True)
class DARTParams:
    budget: int = budget_slider()
    layer: int = slider(2, 1, 16, 1, "LLM layer K from which on only the kept image tokens remain; chosen from "
                        "layer K−1's keys and outputs (official: K = 2)", "Filtering layer K")  # FastV's control
    image_pivots: int = slider(4, 1, 64, 1, "Image pivots: the image tokens with the largest L1 norm of layer K−1's "
                               "keys (official 4)", "Image pivots")
    text_pivots: int = slider(4, 0, 64, 1, "Text pivots: the tokens after the image with the largest L1 norm of "
                              "layer K−1's keys (official 4)", "Text pivots")
    official_count: bool = toggle(
        False, "Give every pivot ⌊T/(image + text pivots)⌋ tokens as the official code does (then the LLM keeps "
        "image pivots + that × pivots, e.g. 4 + 8·16 = 132 for T = 128); off: exactly T", "Official count")

    def __post_init__(self) -> None:
        check_ranges(self)

    def llm_schedule(self, n: int, n_layers: int | None = None) -> tuple[tuple[int, int], ...]:
        """((0, N), (K, M)) known before the forward (for matching on equivalent tokens): M = min(budget, N), or
        the official count image pivots + ⌊budget/(image + text pivots)⌋ per pivot (capped at N; assumes at least
        `text_pivots` tokens after the image, as every chat prompt has); K ≥ L (`n_layers`): ((0, N),)."""
        if n_layers is not None and int(self.layer) >= n_layers:
            return ((0, n),)
        if self.official_count:
            ki = min(int(self.image_pivots), n)
            per = int(self.budget) // (int(self.image_pivots) + int(self.text_pivots))
            count = min(n, ki + per * (ki + int(self.text_pivots)))
        else:
            count = min(int(self.budget), n)
        return ((0, n), (int(self.layer), count))

    def plan(self) -> "DARTPlan":
        return DARTPlan(int(self.layer), int(self.budget), int(self.image_pivots), int(self.text_pivots),
                        bool(self.official_count))


@dataclass(frozen=True, eq=False)
class DARTDecision(Decision):
    """DART's decision: `keep` (image offsets kept, ascending) and what chose them. Rows: 0…n−1 the image tokens
    present, n + j the j-th token after the image. order: the pivot rows in the set's iteration order; owner [n]:
    the pivot row that chose each image token (an image pivot: itself; −1: dropped); cosine [n] to that pivot
    (NaN otherwise); counts: the tokens each pivot (in order) took."""

    order: Tensor = None
    owner: Tensor = None
    cosine: Tensor = None
    counts: tuple[int, ...] = ()


def _share(total: int, k: int) -> list[int]:
    return [total // k + (1 if i < total % k else 0) for i in range(k)] if k else []


def select(keys: Tensor, states: Tensor, positions: Tensor, n: int, budget: int, image_pivots: int,
           text_pivots: int, official: bool) -> tuple[Tensor, DARTDecision]:
    """(score [n]: L1 norm of each image token's key, the decision) from keys [n + t, D], states [n + t, H] and
    sequence positions [n + t] of the n image tokens followed by the t tokens after them (see the module doc)."""
    k32, x = keys.float(), states.float()
    norm = k32.abs().sum(dim=-1)  # L1 norm per row
    score = norm[:n]
    t_budget = min(int(budget), n)
    ki = min(int(image_pivots), n if official else t_budget)
    kt = min(int(text_pivots), keys.shape[0] - n)
    img = torch.sort(score, descending=True, stable=True).indices[:ki].tolist()
    txt = (n + torch.sort(norm[n:], descending=True, stable=True).indices[:kt]).tolist()
    pos = positions.tolist()
    row_of = {p: r for r, p in enumerate(pos)}
    order = [row_of[p] for p in list(set([pos[r] for r in img] + [pos[r] for r in txt]))]  # the set's order
    if official:
        counts = [int(budget) // (int(image_pivots) + int(text_pivots))] * len(order)
    else:
        counts = _share(t_budget - ki, len(order))
    valid = set(pos[:n]) - set(pos[r] for r in img)
    owner = torch.full((n,), -1, dtype=torch.long)
    cosine = torch.full((n,), math.nan)
    owner[img] = torch.tensor(img, dtype=torch.long)
    took = []
    for pivot, want in zip(order, counts):
        cand = [row_of[p] for p in list(valid)]
        take = min(want, len(cand))
        took.append(take)
        if take <= 0:
            continue
        cand_t = torch.tensor(cand, dtype=torch.long, device=x.device)
        cos = F.cosine_similarity(x[pivot][None], x[cand_t], dim=-1).cpu()
        best = torch.sort(cos, stable=True).indices[:take]  # the least similar, earliest candidate on ties
        chosen = cand_t.cpu()[best]
        owner[chosen] = pivot
        cosine[chosen] = cos[best]
        valid.difference_update(pos[r] for r in chosen.tolist())
    keep = torch.nonzero(owner >= 0).flatten()
    decision = DARTDecision(keep, (), torch.tensor(order, dtype=torch.long), owner, cosine, tuple(took))
    return score.detach().cpu(), decision


@dataclass(frozen=True)
class DARTPlan(StagePlan):
    """DART's one stage: layer K−1's keys and outputs choose, layers K… run on the kept image tokens."""

    layer: int
    budget: int
    image_pivots: int
    text_pivots: int
    official_count: bool

    reads = "keys"
    renumbers = False

    def points(self) -> tuple[tuple[int, int], ...]:
        return ((self.layer - 1, self.layer),)

    def reachable(self, n_layers: int) -> tuple[tuple[int, int], ...]:
        """The official loop prunes when it meets layer K (`layer_idx == K`): never for K ≥ L."""
        return tuple((a, b) for a, b in self.points() if b < n_layers)

    def raters(self, visual: Tensor, text: Tensor) -> Tensor:
        return torch.zeros(0, dtype=torch.long)

    def decide_keys(self, s: int, n_present: int, keys: Tensor, states: Tensor, positions: Tensor
                    ) -> tuple[Tensor, Decision]:
        return select(keys, states, positions, n_present, self.budget, self.image_pivots, self.text_pivots,
                      self.official_count)


@dataclass(frozen=True, eq=False)
class DARTTrace(StagedTrace):
    """DART's diagnostics: the pivot score (L1 norm of layer K−1's keys), the pivots and who chose each token."""

    @property
    def decision(self) -> DARTDecision | None:
        return self.record.stages[0].decision if self.record.stages else None

    def lines(self):
        d = self.decision
        pivots = [] if d is None else [r for r in d.order.tolist() if r < self.record.n]
        if not pivots:
            return []
        return [("image pivot cut", float(self.record.stages[0].score[pivots].min()))]

    def per_patch(self):
        out = super().per_patch()
        d = self.decision
        if d is not None:
            out["dart_chosen_by"] = d.owner.float()
            out["dart_cosine"] = d.cosine.float()
        return out

    def inspect(self, i: int):
        out = super().inspect(i)
        d = self.decision
        if d is None:
            return out
        owner = int(d.owner[i])
        n = self.record.n
        name = (lambda r: f"image patch {r}" if r < n else f"text token {r - n} after the image")
        if owner == i:
            out.append(f"**image pivot** ({d.order.tolist().index(i) + 1} of {d.order.numel()} in the set's order)")
        elif owner >= 0:
            out.append(f"chosen by the pivot {name(owner)} (cosine {float(d.cosine[i]):.3f}: among the least "
                       f"similar)")
        else:
            out.append("dropped: too similar to the pivots (a duplicate)")
        return out

    def readout(self):
        out = [line for line in super().readout() if "never reached" not in line]
        if not self.record.stages and self.record.n_layers:
            out.append(f"layer K = {self.plan.layer} is not below the LLM's {self.record.n_layers} layers: the "
                       f"official loop never meets it, so nothing is pruned")
        d = self.decision
        if d is not None:
            n = self.record.n
            n_img = sum(1 for r in d.order.tolist() if r < n)
            counts = sorted(set(d.counts))
            out.append(f"{n_img} image + {d.order.numel() - n_img} text pivots (largest L1 norm of layer "
                       f"{self.record.stages[0].layer}'s keys), each choosing {' or '.join(map(str, counts))} "
                       f"least-similar image tokens; original positions kept")
        return out


def dart(vt: VisualTokens, params: DARTParams | None = None) -> Reduction:
    """DART inside the LLM, run by the backend's LLM (`vt.lm_probe`) and replayed (see the module docstring)."""
    p = params_or_default(params, DARTParams)
    vt.require("lm_probe", method="DART")
    plan = p.plan()
    record = vt.lm_probe(plan)
    trace = DARTTrace(plan=plan, record=record, schedule=schedule_of(record),
                      score_name="L1 norm of the layer's keys (DART's pivot score)")
    return staged_reduction("dart", vt, record, trace)
