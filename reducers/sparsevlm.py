"""SparseVLM (Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient Vision-Language Model
Inference", arXiv 2410.04417, ICML 2025): the prompt's text tokens rate the visual ones inside the LLM, in
three stages, and some pruned tokens are recycled into a few merged tokens.

Followed: the v1.5 code (Gumpest/SparseVLMs, branch v1.5 at 734d900, Apache-2.0;
`llava/model/language_model/modelling_sparse_llama.py` `LlamaDynamicvitModel.forward`, `score.py`
`attn_postprocess_topk`, `utils.py` `cluster_and_merge`). v1.5 is the version the README sends users to
("check the v1.5 branch for the latest version") and whose `--retained_tokens 192/128/64` the ICML numbers use;
`main` now holds SparseVLM+ (v2.0, a later paper version). Facts of that code, followed here:

1. Text raters, once, from the LLM's input embeddings: m = softmax_text(V Tᵀ) averaged over the visual rows
   (V the image embeddings, T every embedding after the image — the question and the chat tail); raters =
   {j : m_j > mean(m)} (strictly).
2. Stages at the pruning layers (official `pruning_loc = [2, 6, 15]`): layer ℓ runs on all tokens present and
   its attention (softmax(q kᵀ/√d), causal, head mean) from the raters to the visual tokens present, averaged
   over the raters, is the score; the top k = min(target_s, n_present − 1) stay (topk, then in their order).
   The targets per `retained_tokens` (`score.py`): 192 → 300, 200, 110; 128 → 303, 110, 36; 64 → 66, 30, 17.
   The pruning happens to layer ℓ's OUTPUT: layers 0…ℓ see every token present, layers ℓ+1… the rest.
3. Recycling: of the pruned tokens the int(0.3·pruned) + 1 with the highest score are clustered into
   int(that / 10) + 1 tokens (`cluster_and_merge`: DPC-kNN density peaks on the layer-ℓ output hidden states,
   distances ‖x_i − x_j‖/√C, density exp(−mean of the squared distances to the cluster_num nearest
   (self included)), centres = top score of (distance to the nearest denser token) × density, every token to
   its nearest centre); a recycled token is Σ members / (count + 1e-6) — the official weights' normalisation,
   not a plain mean. They are appended after the kept visual tokens; later stages rank them like any other
   visual token (they can be kept, pruned or recycled again).
4. Positions: the official code truncates `position_ids` to the new length, so RoPE positions are
   renumbered 0…T'−1 after each stage (no gaps, unlike FastV); a decoded token's position in layer i is the
   number of keys that layer cached (`get_usable_length`), i.e. T_i + n.

Where the code surprises, followed and said:
- the LLM receives far fewer visual tokens than `retained_tokens`: 192 gives 576 → 309 → 204 → 113 on
  LLaVA-1.5 (the kept counts plus the recycled tokens); `retained_tokens` is the official counter's
  "equal token num" — the mean over layers of the visual count *after* each layer's pruning (192.0) — while
  `equivalent_tokens` here counts the tokens each layer computes on (a pruning layer still runs on all of
  them): 206.5 on LLaVA-1.5-7B. The readout shows both; `to LLM` is the final count, exact;
- k = min(target, n_present − 1): on a small grid a stage keeps n − 1 and recycles the last one, so the count
  may not shrink at all (16 → 15 + 1);
- the official density adds `torch.rand(…) · 1e-6` noise to break ties (a run-to-run random choice); here no
  noise: ties go to the lowest index (deterministic), and topk ties too;
- the official score runs in the model's dtype and takes keys without `repeat_kv` (LLaMA-7B has as many
  key/value heads as query heads); here the head mean of the model's own eager attention (GQA keys expanded as
  the model does), in float32;
- no rater (all m equal: nothing strictly above the mean) makes the official score a NaN mean over zero rows;
  here every text token rates then (said in the readout);
- a pruning layer beyond the LLM's last layer is never reached by the official loop (no pruning there); here
  the same, and the readout names the layers not reached;
- the official builder attaches the layers' second attention module (`flash_attn`) for `range(32)` only, so an
  LLM with another layer count crashes (AttributeError / IndexError); here any layer count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, choice, params_or_default, slider
from .inllm import Decision, StagedTrace, StagePlan, equivalent_tokens, schedule_of, staged_reduction

# `score.py`: retained_tokens → the kept count at each of the three pruning layers
TARGETS = {"192": (300, 200, 110), "128": (303, 110, 36), "64": (66, 30, 17)}
RECYCLE_SHARE = 0.3  # `int(pruned · 0.3) + 1` of the pruned tokens are recycled …
CLUSTER_DIVISOR = 10  # … into `int(that / 10) + 1` tokens
WEIGHT_EPS = 1e-6  # `all_weight + 1e-6` in `cluster_and_merge`


@dataclass(frozen=True)
class SparseVLMParams:
    target: str = choice("192", tuple(TARGETS), "The official retained_tokens setting (192 / 128 / 64): fixes the "
                         "kept count at each pruning layer (score.py)", "Retained tokens (official setting)")
    layer1: int = slider(2, 0, 39, 1, "First pruning layer (official 2): its output keeps the stage-1 count",
                         "Pruning layer 1")
    layer2: int = slider(6, 0, 39, 1, "Second pruning layer (official 6)", "Pruning layer 2")
    layer3: int = slider(15, 0, 39, 1, "Third pruning layer (official 15)", "Pruning layer 3")

    def __post_init__(self) -> None:
        check_ranges(self)
        if not self.layer1 < self.layer2 < self.layer3:
            raise ValueError(f"SparseVLM's pruning layers must increase (layer1 < layer2 < layer3), got "
                             f"layer1={self.layer1}, layer2={self.layer2}, layer3={self.layer3}")

    def plan(self) -> "SparseVLMPlan":
        return SparseVLMPlan((int(self.layer1), int(self.layer2), int(self.layer3)), TARGETS[self.target])

    def llm_schedule(self, n: int, n_layers: int | None = None) -> tuple[tuple[int, int], ...]:
        """((0, N), (ℓ_s + 1, n_s), …) for the stages an LLM of `n_layers` layers reaches (all when None): the
        counts follow from the schedule alone (k = min(target, n − 1) kept, int(int(0.3·pruned) + 1) / 10) + 1
        recycled), known before the forward."""
        out, present = [(0, n)], n
        for layer, target in zip(self.plan().layers, self.plan().targets):
            if n_layers is not None and layer >= n_layers:
                break
            k = min(target, present - 1)
            pruned = present - k
            present = k + (int((int(pruned * RECYCLE_SHARE) + 1) / CLUSTER_DIVISOR) + 1 if pruned else 0)
            out.append((layer + 1, present))
        return tuple(out)


def text_raters(visual: Tensor, text: Tensor) -> Tensor:
    """[r] offsets of the rater text tokens: m = softmax over text of V Tᵀ, mean over the visual rows; those
    strictly above mean(m); every text token when none is."""
    m = torch.softmax(visual.float() @ text.float().T, dim=1).mean(0)  # [t]
    raters = torch.nonzero(m > m.mean()).flatten()
    return raters if raters.numel() else torch.arange(text.shape[0])


def cluster_groups(x: Tensor, cluster_num: int) -> tuple[Tensor, ...]:
    """`cluster_and_merge`'s assignment of the rows of x [m, C] to `cluster_num` density-peak centres: the
    groups (row offsets, ascending), in centre order (descending centre score). No tie-breaking noise."""
    m, c = x.shape
    xf = x.float()
    dist = torch.cdist(xf, xf, compute_mode="donot_use_mm_for_euclid_dist") / math.sqrt(c)  # [m, m]
    nearest = torch.sort(dist, dim=1, stable=True).values[:, :cluster_num]
    density = torch.exp(-(nearest ** 2).mean(dim=1))  # [m]
    denser = density[None, :] > density[:, None]  # [i, j]: j is denser than i
    parent = torch.where(denser, dist, dist.max()).min(dim=1).values
    score = parent * density
    centres = torch.sort(score, descending=True, stable=True).indices[:cluster_num]
    assign = dist[centres].argmin(dim=0)  # nearest centre per row (first on ties)
    assign[centres] = torch.arange(cluster_num)
    return tuple(torch.nonzero(assign == k).flatten() for k in range(cluster_num))


@dataclass(frozen=True)
class SparseVLMPlan(StagePlan):
    """SparseVLM's decisions (see the module docstring): pruning `layers`, kept counts `targets`."""

    layers: tuple[int, ...]
    targets: tuple[int, ...]

    def points(self) -> tuple[tuple[int, int], ...]:
        return tuple((a, a + 1) for a in self.layers)

    def raters(self, visual: Tensor, text: Tensor) -> Tensor:
        return text_raters(visual, text)

    def decide(self, s: int, n: int, rows: Tensor, hidden: Tensor) -> tuple[Tensor, Decision]:
        score = rows.float().mean(0)  # [n_present] mean over the raters
        present = score.numel()
        k = min(self.targets[s], present - 1)
        order = torch.sort(score, descending=True, stable=True).indices
        keep = torch.sort(order[:k]).values
        pruned_mask = torch.ones(present, dtype=torch.bool)
        pruned_mask[keep] = False
        pruned = torch.nonzero(pruned_mask).flatten()  # ascending, as `torch.where(policy == 0)`
        if not pruned.numel():
            return score, Decision(keep)
        n_recycle = int(pruned.numel() * RECYCLE_SHARE) + 1
        best = pruned[torch.sort(score[pruned], descending=True, stable=True).indices[:n_recycle]]
        cluster_num = int(best.numel() / CLUSTER_DIVISOR) + 1
        groups = cluster_groups(hidden[best], cluster_num)
        return score, Decision(keep, tuple(best[g] for g in groups))

    def merged(self, hidden: Tensor, groups: tuple[Tensor, ...]) -> Tensor:
        if not groups:
            return hidden.new_zeros((0, hidden.shape[-1]))
        rows = [hidden[g].float().sum(0) / (g.numel() + WEIGHT_EPS) for g in groups]
        return torch.stack(rows).to(hidden.dtype)


@dataclass(frozen=True, eq=False)
class SparseVLMTrace(StagedTrace):
    """SparseVLM's diagnostics: the stage scores (the raters' attention), the recycling, both counters."""

    def readout(self) -> list[str]:
        out = super().readout()
        rec = self.record
        if rec.n_layers:
            official = ((0, rec.n),) + tuple((st.layer, c) for st, c in zip(rec.stages, rec.counts()))
            out.append(f"the official counter's \"equal token num\" (counts after each layer's pruning) "
                       f"{equivalent_tokens(official, rec.n_layers):.1f}")
        recycled = sum(len(st.decision.merge) for st in rec.stages)
        if rec.raters is not None:
            out.append(f"{rec.raters.numel()} text raters; {recycled} recycled tokens made")
        return out


def sparsevlm(vt: VisualTokens, params: SparseVLMParams | None = None) -> Reduction:
    """SparseVLM's stages, run by the backend's LLM (`vt.lm_probe`) and replayed (see the module docstring)."""
    p = params_or_default(params, SparseVLMParams)
    vt.require("lm_probe", method="SparseVLM")
    plan = p.plan()
    record = vt.lm_probe(plan)
    trace = SparseVLMTrace(plan=plan, record=record, schedule=schedule_of(record),
                           score_name="text raters' attention to each patch")
    return staged_reduction("sparsevlm", vt, record, trace)
