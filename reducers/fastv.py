"""FastV's selection (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", arXiv 2403.06764): which image
tokens remain in the LLM from layer K on. FastV acts inside the LLM; this is only its pure ranking step, fed
by the attention the backend recorded (`VisualTokens.lm_attn`).

Facts of the official code (pkunlp-icler/FastV, `LlamaModel.forward` in
src/transformers/.../llama/modeling_llama.py, the in-place variant, and the llava-hf `fastv_forward`):
- layers 0…K−1 run on every token; at layer K (`AGG_LAYER`; K = 2 in the paper's title and the README's
  latency table, K = 3 in the llava-hf demo and the lmms-eval variant) the image tokens are ranked by
  the attention output of layer K−1 (`layer_outputs[1]` of the previous layer; the lmms-eval variant runs
  layer K−1 with output_attentions for this), mean over heads, the LAST token's row, restricted to the image
  positions; the top ATTENTION_RANK are kept, the others are dropped for layers K…L−1;
- R is the fraction of image tokens DROPPED. The in-place eval script passes the kept count directly
  ((1 − R)·576 = 72/144/288/432 for R = 87.5/75/50/25 %); the llava-hf variant keeps round(576·(1 − R));
  the lmms-eval variant int(576·0.5). The README reports K = 2 with R = 25/50/75 %. Here the budget M is
  the kept count itself (R = 1 − M/N), so no rounding is involved;
- kept image tokens stay in their original order (the kept indices are sorted) and keep their original
  position ids (`position_ids = keep_indexs`: the RoPE positions of the remaining tokens have gaps);
- `topk` leaves ties unspecified; here ties go to the lowest patch index.
The paper's prose ranks by the average attention a token receives from all n tokens (rank = "mean"); the
backend's row averages over the query positions that can see the image. Where that average divides every
image token's sum by the same count, it differs from the paper's sum / n by one factor for all image tokens
(the earlier positions add 0 under the causal mask), so the ranking is the paper's.

K = L is allowed (the official loop then never reaches layer K and prunes nothing: every layer sees all N
tokens); K > L raises ValueError.

Reduction: kept = the top-M patches (raster order), tokens = X[kept], layer = K (the LLM layer from which on
only these remain), attn = the ranking row [N]; stages {"tokens": N, "LLM layers < K": N, "to LLM": M}.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import Reduction, TopScoreTrace, VisualTokens, check_ranges, choice, params_or_default, slider
from .baselines import budget_slider
from .ops import top_by_score

RANKS = ("last", "mean")  # the index into lm_attn's second axis


@dataclass(frozen=True)
class FastVParams:
    layer: int = slider(2, 1, 16, 1, "LLM layer K from which on only the kept image tokens remain; ranked by "
                        "layer K−1's attention (official: K = 2)", "Filtering layer K")
    budget: int = budget_slider("How many image tokens remain from layer K on (at most N); official R = 50 % "
                                "dropped keeps N/2")
    rank: str = choice("last", RANKS, "Rank by the attention from the last prompt token (official code) or "
                       "averaged over all tokens that see the image (the paper's prose)", "Ranking attention")

    def __post_init__(self) -> None:
        check_ranges(self)

    def llm_schedule(self, n: int) -> tuple[tuple[int, int], ...]:
        """((0, N), (K, M)): the visual tokens present from each layer on, known before the forward (equivalent
        tokens (K·N + (L − K)·M) / L, `reducers.inllm.equivalent_tokens`)."""
        return ((0, n), (int(self.layer), min(int(self.budget), n)))


def fastv(vt: VisualTokens, params: FastVParams | None = None) -> Reduction:
    """The image tokens FastV keeps from LLM layer K on (see the module docstring)."""
    p = params_or_default(params, FastVParams)
    vt.require("lm_attn", method="FastV")
    k, n_layers = int(p.layer), vt.lm_attn.shape[0]
    if k > n_layers:
        raise ValueError(f"FastV's layer K={k} is beyond the LLM's L={n_layers} layers: it ranks by layer K−1's "
                         f"attention, so choose K ≤ {n_layers}")
    score = vt.lm_attn[k - 1, RANKS.index(p.rank)]  # [N] attention received in layer K−1
    m = min(int(p.budget), vt.n)
    kept = top_by_score(score, m).to(vt.features.device)
    return Reduction(
        method="fastv",
        kept=kept,
        tokens=vt.features[kept],
        grid=vt.grid,
        stages={"tokens": vt.n, f"LLM layers < {k}": vt.n, "to LLM": m},
        layer=k,
        trace=TopScoreTrace(f"LLM attention to each patch at layer {k - 1} (FastV's ranking): the highest are kept",
                            score, kept, export_as="llm_attention", kept_from_layer=k),
    )
