"""Visual-token reducers: pure functions over one image's tokens (torch, numpy, scipy only).

    from reducers import VisualTokens, Reduction, PruMergeParams, PARParams, prumerge, par, REDUCERS
    red = REDUCERS["prumerge+"](vt)          # default parameters
    red = par(vt, PARParams(tau=0.3))

`REDUCERS` is the registry: one line per method. A method's settings are the control fields of its params
dataclass (`slider`, `toggle`, `choice`, `number`), and everything else — the UI's controls, the API's
keywords, the export, the matched-budget comparison — is derived from them (see README, "Add a method").
"""

from functools import partial
from types import MappingProxyType

from .base import (Control, Reduction, RegistryEntry, TopScoreTrace, Trace, VisualTokens, choice, controls, number,
                   params_or_default, slider, toggle)
from .baselines import BudgetParams, NoParams, RandomParams, identity, random_tokens, top_attention, uniform_grid
from .cdpruner import CDPrunerParams, cdpruner
from .dart import DARTParams, dart
from .fastv import FastVParams, fastv
from .divprune import DivPruneParams, divprune
from .graph import ClusterSweep, components
from .none import no_image
from .par import PARParams, par
from .inllm import ToyLLM, accounting, equivalent_tokens, llm_schedule
from .pool import PoolParams, pool
from .pyramiddrop import PyramidDropParams, pyramiddrop
from .prumerge import PruMergeParams, prumerge
from .sparsevlm import SparseVLMParams, sparsevlm
from .tome import ToMeParams, tome
from .visionzip import VisionZipParams, visionzip
from .vispruner import VisPrunerParams, vispruner

PRUMERGE_PAPER = "Shang et al., LLaVA-PruMerge, arXiv 2403.15388"
PRUMERGE_NOTE = ("paper's numbers, from its LoRA-fine-tuned checkpoints (the official README evaluates those); "
                 "the app runs training-free")

REDUCERS = MappingProxyType(
    {
        "par": RegistryEntry(
            par, PARParams, "PAR (as specified here)",
            "Prompt-aware: relevance to the query, graph clusters, top-ρ retrieval, τ routing, δ redundancy",
            ("joint", "query"), "Liu et al., PAR, arXiv 2410.07278 (no public code: the app's written spec)",
            "h_i = α·r_i + (1 − α)·mean_{c(i)} r; keep top ⌈ρN⌉ by h with h ≥ τ, then drop any token with "
            "similarity ≥ δ to a more relevant kept one",
            "paper: −83 % FLOPs, 89 % compression, 97 % of baseline accuracy kept, 2× the reduction of prior "
            "methods"),
        "prumerge": RegistryEntry(
            prumerge, PruMergeParams, "PruMerge",
            "IQR outliers of CLS attention, each merged with its key-nearest patches",
            ("cls_attn", "keys"), PRUMERGE_PAPER,
            "keep {i : a_i > Q3 + k·(Q3 − Q1)}; x'_i = x_i + Σ_{j ∈ top-32 key-cosine(i)} a_j x_j; "
            "+ one token Σ_{j pruned} a_j x_j",
            f"LLaVA-1.5-7B, 576 → ~32 tokens: VQAv2 78.5 → 72.0, TextVQA 58.2 → 56.0, POPE 85.9 → 76.3, MME "
            f"1510.7 → 1350.3 ({PRUMERGE_NOTE})"),
        "prumerge+": RegistryEntry(
            partial(prumerge, plus=True), PruMergeParams, "PruMerge+",
            "PruMerge plus uniformly spaced patches so that no region is lost",
            ("cls_attn", "keys"), PRUMERGE_PAPER,
            "PruMerge's outliers ∪ {0, s, 2s, …}, s = ⌊⌊1/r⌋ / 3⌋, r = outliers / N; then PruMerge's merge",
            f"LLaVA-1.5-7B, 576 → ~144 tokens: VQAv2 78.5 → 76.8, TextVQA 58.2 → 57.1, POPE 85.9 → 84.0, MME "
            f"1510.7 → 1462.4 ({PRUMERGE_NOTE})"),
        "visionzip": RegistryEntry(
            visionzip, VisionZipParams, "VisionZip",
            "Dominant tokens by CLS attention (plus CLS), the rest merged into evenly spaced contextual tokens by key "
            "similarity", ("feature_layer_attn", "feature_layer_keys", "cls_feature"),
            "Yang et al., VisionZip, arXiv 2412.04467 (CVPR 2025)",
            "D = ⌊M·54/64 + ½⌋: CLS + the D − 1 patches with the largest Σ_heads a_CLS→i; the rest join the "
            "key-nearest of C = M − D evenly spaced targets t: x'_t = x_t + mean_{i→t} x_i",
            "paper: retaining only 10 % of the visual tokens keeps nearly 95 % of the performance, training-free "
            "(official README); prefilling time improved 8× (abstract)"),
        "divprune": RegistryEntry(
            divprune, DivPruneParams, "DivPrune",
            "The budget's most diverse subset: greedy max–min cosine distance of the projected tokens",
            ("projected",), "Alvar et al., DivPrune, arXiv 2503.02175 (CVPR 2025)",
            "S = {argmax_j min_{i≠j} d_ij}; repeat S ∪= {argmax_{j∉S} min_{s∈S} d_sj} until |S| = M; "
            "d = 1 − cos of the projector's outputs",
            "paper: state-of-the-art accuracy over 16 image- and video-language datasets without fine-tuning; "
            "lower end-to-end latency and GPU memory use (abstract)"),
        "cdpruner": RegistryEntry(
            cdpruner, CDPrunerParams, "CDPruner",
            "Instruction-conditioned diversity: greedy DPP over the projected tokens' similarity, weighted by "
            "each patch's relevance to the prompt", ("projected", "joint", "query"),
            "Zhang et al., Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in "
            "MLLMs (CDPruner), arXiv 2506.10967 (NeurIPS 2025)",
            "L = diag(r)·S·diag(r), S = cos of the projector's outputs, r = minmax(−cos(J_i, q)) (official sign); "
            "greedy MAP: j = argmax d²_j, e = (L_j − Σ c_t[j] c_t)/d_j, d² −= e², M times",
            "official README: it ensures both the diversity and quality of the selected token subset, significantly "
            "reducing computational cost while maintaining considerable performance"),
        "dart": RegistryEntry(
            dart, DARTParams, "DART",
            "Inside the LLM: at layer K a few pivot tokens (largest key L1 norm, image and text) each keep the image "
            "tokens least similar to them; the duplicates are dropped; no attention map", ("lm_probe",),
            "Wen et al., Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More "
            "(DART), arXiv 2502.11494 (EMNLP 2025)",
            "with layer K−1's keys k and normed outputs h: P = top-4 image ∪ top-4 text ‖k_i‖₁; for each pivot p "
            "(Python set order): keep its ⌊(M − 4)/8⌋ (+1) free image tokens with the smallest cos(h_p, h_j) "
            "(official: ⌊M/8⌋ each); layers ≥ K keep P_img ∪ chosen, original positions"),
        "vispruner": RegistryEntry(
            vispruner, VisPrunerParams, "VisPruner",
            "Important tokens by the feature layer's CLS attention, then diverse tokens left after removing "
            "duplicates round by round", ("feature_layer_attn",),
            "Zhang et al., Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in "
            "VLMs (VisPruner), arXiv 2412.01818 (ICCV 2025)",
            "important = top ⌊M·ρ⌋ by a_CLS→i; residual by descending a: rounds of a = R[0::2], b = R[1::2], drop "
            "the min(8, |R| − M_div) a's with the largest max_b cos(x_a, x_b), until |R| = M − ⌊M·ρ⌋",
            "official README: retaining diverse tokens alongside the important ones maximally preserves the visual "
            "information of the input image"),
        "all": RegistryEntry(identity, NoParams, "All tokens", "No reduction: every patch token reaches the LLM",
                             formula="keep all N"),
        "random": RegistryEntry(random_tokens, RandomParams, "Random",
                                "A seeded random subset of the budget's size", formula="keep M patches drawn "
                                "uniformly without replacement"),
        "uniform": RegistryEntry(uniform_grid, BudgetParams, "Uniform grid",
                                 "An evenly spaced grid of patches of about the budget's size",
                                 formula="keep the centres of an h'×w' grid, h'·w' ≈ M"),
        "top-attention": RegistryEntry(top_attention, BudgetParams, "Top-M CLS attention",
                                       "The budget's most CLS-attended patches (FasterVLM-style)", ("cls_attn",),
                                       formula="keep the M largest a_i"),
        "tome": RegistryEntry(
            tome, ToMeParams, "ToMe merging",
            "Bipartite soft matching on the keys: alternate tokens merge into their most similar partner, step "
            "after step, until the budget is left", ("keys",),
            "Bolya et al., Token Merging: Your ViT But Faster, arXiv 2210.09461 (written from the paper; applied "
            "once after the tower)",
            "A = even, B = odd positions; each a ∈ A → argmax_b cos(k_a, k_b); merge the r = min(⌈(N − M)/rounds⌉, "
            "|A|) closest pairs by size-weighted mean; repeat until n = M",
            "paper, inside a ViT (merging in every layer): off-the-shelf 2× the throughput of ViT-L @ 512 and "
            "ViT-H @ 518 on images and 2.2× of ViT-L on video with only a 0.2–0.3 % accuracy drop"),
        "pool": RegistryEntry(
            pool, PoolParams, "Average pooling",
            "The mean feature of each cell of the h'×w' grid nearest the budget (the \"just downsample\" "
            "baseline)",
            paper="Liao et al., VTC-Bench, arXiv 2510.07143 (downsampling baseline; here the patch features are "
                  "pooled rather than the image downsampled)",
            formula="token_ij = mean of X_p over cell (i, j) of an h'×w' grid, h'·w' ≈ M",
            headline="paper (Qwen2-VL-7B, image downsampling): simple image downsampling consistently outperforms "
                     "many advanced compression methods across multiple widely used benchmarks"),
        "none": RegistryEntry(no_image, NoParams, "No image (text only)",
                              "No visual token at all: the text-only floor of any comparison",
                              formula="keep nothing: the LLM sees only the prompt"),
        "fastv": RegistryEntry(
            fastv, FastVParams, "FastV",
            "Inside the LLM: from layer K on, only the M image tokens that got the most attention in layer K−1 "
            "remain", ("lm_attn",),
            "Chen et al., An Image is Worth 1/2 Tokens After Layer 2 (FastV), arXiv 2403.06764",
            "φ_i = head-mean attention to image token i in LLM layer K−1 (last token's row, or mean over rows); "
            "layers ≥ K keep the top M by φ, original order and positions",
            "paper: a 45 % reduction in FLOPs for LLaVA-1.5-13B without sacrificing performance"),
        "sparsevlm": RegistryEntry(
            sparsevlm, SparseVLMParams, "SparseVLM",
            "Inside the LLM: the prompt's text tokens rate the image tokens at three layers; the best rated stay, "
            "some pruned ones are recycled into a few merged tokens", ("lm_probe",),
            "Zhang et al., SparseVLM, arXiv 2410.04417 (ICML 2025; official code v1.5)",
            "raters R = {j : mean_i softmax_j(v_i·t_j) > mean}; at layer ℓ_s score_i = mean_{r∈R} mean_heads "
            "attn(r → i); keep top min(k_s, n − 1) (192: 300/200/110 at layers 2/6/15); the top 30 % of the "
            "pruned → int(·/10) + 1 density-peak clusters, each Σx/(|c| + 1e-6); positions renumbered"),
        "pyramiddrop": RegistryEntry(
            pyramiddrop, PyramidDropParams, "PyramidDrop",
            "Inside the LLM: before layers 8, 16, 24 the image tokens the last instruction token attends to least "
            "are dropped, keeping N·λ, N·λ², N·λ³", ("lm_probe",),
            "Xing et al., PyramidDrop, arXiv 2410.17247 (CVPR 2025)",
            "before layer ℓ_s: score_i = mean_heads softmax(q_last·k/√d)_i with layer ℓ_s's q/k; keep the top "
            "int(N·λ^s), original order, positions renumbered",
            "paper (official README): a 40 % training time and 55 % inference FLOPs acceleration of LLaVA-NeXT "
            "with comparable performance"),
    }
)

# the method that hands every token unchanged: the reference the comparisons and fidelity runs measure against
REFERENCE = "all"

__all__ = [
    "REFERENCE",
    "VisualTokens", "Reduction", "Trace", "TopScoreTrace", "Control", "RegistryEntry", "REDUCERS",
    "slider", "toggle", "choice", "number", "controls", "params_or_default",
    "PruMergeParams", "PARParams", "BudgetParams", "RandomParams", "NoParams", "ToMeParams", "PoolParams",
    "FastVParams", "VisionZipParams", "DivPruneParams", "CDPrunerParams", "DARTParams", "VisPrunerParams",
    "SparseVLMParams", "PyramidDropParams",
    "prumerge", "par", "identity", "random_tokens", "uniform_grid", "top_attention", "tome", "pool", "no_image",
    "fastv", "visionzip", "divprune", "cdpruner", "dart", "vispruner", "sparsevlm", "pyramiddrop", "ToyLLM",
    "accounting", "equivalent_tokens", "llm_schedule",
    "components", "ClusterSweep",
]
