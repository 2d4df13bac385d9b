"""PyramidDrop (Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", arXiv 2410.17247, CVPR 2025): visual tokens dropped at several LLM layers by a ratio λ,
ranked by the last instruction token's attention.

Followed: Cooperx521/PyramidDrop at 6444f30 (MIT; `llava/model/modeling_llama_pdrop.py`
`LlamaModel.pdrop_forward` and `pdrop_rank_drop`, `llava/eval/*` and the README's options). Facts of that code:

1. `layer_list` (official [8, 16, 24] for LLaVA-1.5, λ = 0.5 given as `image_token_ratio_list [0.5, 0.25,
   0.125]` with 1.0 inserted first): after decoder layer ℓ − 1 for each ℓ in the list, the hidden states go
   through layer ℓ's `input_layernorm`, q/k projections and RoPE at the current positions; the LAST
   instruction token's query (position prompt_len + image tokens − 1: the last token of the prompt) attends
   over every token (causal softmax, float32, head mean); its attention to the image tokens is the score.
2. Stage s keeps the top int(N · λ^(s+1)) image tokens (N the original count, e.g. 288, 144, 72 of 576),
   sorted back into their original order; layer ℓ and the following run on the text and those tokens.
3. Positions are renumbered 0…T'−1 after each drop (`position_ids[i, :cur_len] = arange(cur_len)`); while
   decoding, the position at the stage-s layers is the original one minus the tokens dropped before them,
   i.e. T_s + n — both as here.

Where the code surprises, followed and said:
- λ is applied to N each time (int(N·λ^s)), not to the previous count, and floors: the final count is
  int(N·λ^S), e.g. 72 of 576 (what the LLM receives from the last listed layer on, exact);
- a layer ℓ > L is never reached by the official loop (no drop there); ℓ = L reads `self.layers[L]` and
  crashes (IndexError); here both are not reached — a drop before a layer that does not exist changes no
  layer's computation — and the readout names them;
- the official ranking takes the keys without `repeat_kv` (LLaMA-7B has as many key/value heads as query
  heads); here the model's own eager attention of layer ℓ (GQA keys expanded as the model does);
- topk ties are unspecified; here the lowest index wins;
- int(N·λ^s) reaches 0 for a small N or λ (e.g. λ = 0.05 after three drops of 576); the official code then
  drops every image token; here at least one stays, as every method in the app keeps at least one.

Controls: the layer list is first + spacing·i for i < stages (official 8 + 8·i, 3 stages), λ a slider.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import Reduction, VisualTokens, check_ranges, params_or_default, slider
from .inllm import Decision, StagedTrace, StagePlan, schedule_of, staged_reduction
from .ops import top_by_score


@dataclass(frozen=True)
class PyramidDropParams:
    first: int = slider(8, 1, 39, 1, "The first layer that runs on fewer image tokens (official 8)", "First drop layer")
    spacing: int = slider(8, 1, 39, 1, "Layers between drops (official 8: drops before layers 8, 16, 24)",
                          "Layers between drops")
    stages: int = slider(3, 1, 8, 1, "How many drops (official 3: four stages)", "Drops")
    ratio: float = slider(0.5, 0.05, 1.0, 0.05, "λ: stage s keeps int(N·λ^s) image tokens (official 0.5)", "λ")

    def __post_init__(self) -> None:
        check_ranges(self)

    def layers(self) -> tuple[int, ...]:
        return tuple(int(self.first) + int(self.spacing) * i for i in range(int(self.stages)))

    def plan(self) -> "PyramidDropPlan":
        return PyramidDropPlan(self.layers(), float(self.ratio))

    def llm_schedule(self, n: int, n_layers: int | None = None) -> tuple[tuple[int, int], ...]:
        """((0, N), (ℓ_s, min(present, int(N·λ^s)) ), …) for the drops an LLM of `n_layers` layers reaches (all
        when None), known before the forward."""
        out, present = [(0, n)], n
        for s, layer in enumerate(self.layers(), start=1):
            if n_layers is not None and layer >= n_layers:
                break
            present = min(present, keep_count(n, float(self.ratio), s))
            out.append((layer, present))
        return tuple(out)


def keep_count(n: int, ratio: float, stage: int) -> int:
    """max(1, int(N · λ^stage)): the image tokens stage `stage` (1, 2, …) keeps (official `int(576 *
    ratio_list[s])`, which may be 0; here at least one)."""
    return max(1, int(n * ratio ** stage))


@dataclass(frozen=True)
class PyramidDropPlan(StagePlan):
    """PyramidDrop's decisions (see the module docstring): drop before each of `layers`, keep int(N·λ^s)."""

    layers: tuple[int, ...]
    ratio: float

    def points(self) -> tuple[tuple[int, int], ...]:
        return tuple((layer, layer) for layer in self.layers)

    def raters(self, visual: Tensor, text: Tensor) -> Tensor:
        return torch.tensor([text.shape[0] - 1])  # the last instruction token

    def decide(self, s: int, n: int, rows: Tensor, hidden: Tensor) -> tuple[Tensor, Decision]:
        score = rows[-1].float()
        return score, Decision(top_by_score(score, min(keep_count(n, self.ratio, s + 1), score.numel())))


@dataclass(frozen=True, eq=False)
class PyramidDropTrace(StagedTrace):
    """PyramidDrop's diagnostics: the last instruction token's attention at each drop layer."""


def pyramiddrop(vt: VisualTokens, params: PyramidDropParams | None = None) -> Reduction:
    """PyramidDrop's drops, run by the backend's LLM (`vt.lm_probe`) and replayed (see the module docstring)."""
    p = params_or_default(params, PyramidDropParams)
    vt.require("lm_probe", method="PyramidDrop")
    plan = p.plan()
    record = vt.lm_probe(plan)
    trace = PyramidDropTrace(plan=plan, record=record, schedule=schedule_of(record),
                             score_name="last instruction token's attention to each patch")
    return staged_reduction("pyramiddrop", vt, record, trace)
