"""PruMerge and PruMerge+ (arXiv 2403.15388), equal to the official LLaVA-PruMerge computation, bugs fixed.

Official: 42Shawn/LLaVA-PruMerge, llava/model/multimodal_encoder/clip_encoder.py
(`token_prune_merge_advanced`, `..._plus`, `outlier_dectection`). Differences, all deliberate:
- the IQR fence is per image (official pools the whole batch) and its multiplier k is a parameter (official 1.5);
- no outlier → keep the argmax patch (official: r = 0, topk of 0 tokens, 1/r divides by zero);
- the PruMerge+ stride is at least 1 and the sample range ends at N − 1 (official hard-codes 575);
- the merge is one top-k over a masked M×N key-similarity matrix instead of a Python loop per token;
- when every patch is kept (PruMerge+ at a low k, a single-token image) no aggregate token is appended: it
  would be the empty sum, a zero token that makes N + 1 tokens out of N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, Trace, VisualTokens, check_ranges, choice, params_or_default, slider, toggle

ORDERS = ("attention", "raster")


@dataclass(frozen=True)
class PruMergeParams:
    """PruMerge's settings; PruMerge+ is the same function with `plus=True` bound in the registry."""

    iqr_multiplier: float = slider(
        1.5, 0.0, 5.0, 0.05, "k in the IQR fence Q3 + k·(Q3 − Q1): patches with CLS attention above it are kept "
        "(official: 1.5)", "IQR multiplier k")
    merge: bool = toggle(True, "Merge each kept token with its key-nearest patches, plus one aggregate token of "
                         "the pruned ones (off: prune only)", "Merge")
    neighbours: int = slider(32, 1, 256, 1, "How many key-similar patches are merged into each kept token "
                             "(official: 32)", "Merge neighbours")
    order: str = choice("attention", ORDERS, "Order of the kept tokens handed to the LLM: by descending attention "
                        "(official) or raster order (not official)", "Token order")

    def __post_init__(self) -> None:
        check_ranges(self)


def iqr_fence(attn: Tensor, k: float) -> tuple[float, float, float]:
    """Q1, Q3 (linear interpolation, as numpy's default percentile) and the upper fence Q3 + k·(Q3 − Q1)."""
    q1, q3 = torch.quantile(attn.double(), torch.tensor([0.25, 0.75], dtype=torch.float64, device=attn.device))
    q1, q3 = float(q1), float(q3)
    return q1, q3, q3 + k * (q3 - q1)


def iqr_outliers(attn: Tensor, fence: float) -> Tensor:
    """[K] indices with attention strictly above the fence, by descending attention (K ≥ 1: the argmax)."""
    idx = torch.nonzero(attn.double() > fence).flatten()  # [K]
    if idx.numel() == 0:
        return attn.argmax().view(1)
    order = torch.sort(attn[idx].double(), descending=True, stable=True).indices
    return idx[order]


def uniform_samples(kept: Tensor, n: int) -> Tensor:
    """PruMerge+ extra samples: {0, s, 2s, … < N − 1} not already kept, s = int(int(1/r)/3), r = |kept|/N."""
    ratio = kept.numel() / n
    stride = max(1, int(int(1 / ratio) / 3))
    seq = torch.arange(0, n - 1, stride, device=kept.device)  # [⌈(N−1)/s⌉]
    return seq[~torch.isin(seq, kept)]


def key_neighbours(keys_n: Tensor, kept: Tensor, k: int) -> Tensor:
    """[M, k] for each kept patch, the k other patches (kept or not) with the largest key cosine similarity."""
    sim = keys_n[kept] @ keys_n.T  # [M, N]
    sim[torch.arange(kept.numel(), device=kept.device), kept] = -torch.inf  # j ≠ i
    return sim.topk(k, dim=1).indices


def merge_tokens(x: Tensor, attn: Tensor, kept: Tensor, nbr: Tensor, extra: bool = True) -> tuple[Tensor, Tensor]:
    """Unnormalised attention-weighted merge, as official.

    x [N, d], attn [N], kept [M], nbr [M, k] → tokens [M + 1, d] (X_i + Σ_j a_j X_j, then Σ_{j∉kept} a_j X_j;
    without the last one if not `extra`), weights [M, k]. The weighted neighbour sums are one `embedding_bag`
    (a gather-and-sum that never builds the [M, k, d] stack of neighbour rows).
    """
    xf, af = x.float(), attn.float()
    weight = af[nbr]  # [M, k]
    merged = xf[kept] + F.embedding_bag(nbr, xf, per_sample_weights=weight, mode="sum")  # [M, d]
    if extra:
        rest = af.clone()
        rest[kept] = 0.0
        merged = torch.cat([merged, (rest @ xf).unsqueeze(0)])  # + [1, d]
    return merged.to(x.dtype), weight


def prumerge(vt: VisualTokens, params: PruMergeParams | None = None, *, plus: bool = False) -> Reduction:
    """PruMerge (`plus=False`) or PruMerge+ (`plus=True`) of one image's visual tokens."""
    p = params_or_default(params, PruMergeParams)
    vt.require("cls_attn", *(("keys",) if p.merge else ()), method="PruMerge")
    n, attn = vt.n, vt.cls_attn
    q1, q3, fence = iqr_fence(attn, p.iqr_multiplier)
    outliers = iqr_outliers(attn, fence)  # [K]
    samples = uniform_samples(outliers, n) if plus else outliers[:0]  # [S]
    kept = torch.cat([outliers, samples])  # [M]
    if p.order == "raster":  # not official: the same tokens in the patches' raster order
        kept = torch.sort(kept).values
    stages = {"tokens": n, "outliers": outliers.numel()}
    if plus:
        stages["+ samples"] = kept.numel()
    nbr = weight = None
    k = min(int(p.neighbours), n - 1)
    # the aggregate of the pruned patches exists only if some patch was pruned (PruMerge+ at a low k, or a
    # single-token image, can keep them all: an empty sum is not a token, and N + 1 tokens is no reduction)
    extra = p.merge and kept.numel() < n
    if p.merge and k > 0:
        nbr = vt.key_rows(("key_neighbours", k), kept, lambda idx: key_neighbours(vt.normalised_keys, idx, k))
        tokens, weight = merge_tokens(vt.features, attn, kept, nbr, extra=extra)
    else:  # no merge, or a single token (no neighbours, nothing pruned)
        tokens = vt.features[kept]
    stages["to LLM"] = tokens.shape[0]
    return Reduction(
        method="prumerge+" if plus else "prumerge",
        kept=kept,
        tokens=tokens,
        grid=vt.grid,
        stages=stages,
        n_extra=int(extra),
        trace=PruMergeTrace(attn, q1, q3, fence, outliers, samples, kept, nbr, weight, bool(extra)),
    )


@dataclass(frozen=True, eq=False)
class PruMergeTrace(Trace):
    """PruMerge's diagnostics: the CLS attention it reads, the IQR fence, the outliers, PruMerge+'s uniform
    samples and the merge groups (each kept token with its key-nearest patches and their weights)."""

    attn: Tensor  # [N] CLS attention used
    q1: float
    q3: float
    fence: float  # Q3 + k·IQR
    outliers: Tensor  # [K] indices above the fence, descending attention
    samples: Tensor | None  # [S] PruMerge+ uniform samples appended after the outliers
    kept: Tensor  # [M]
    merge_index: Tensor | None = None  # [M, k] neighbour patch indices merged into kept[i]
    merge_weight: Tensor | None = None  # [M, k] their weights (CLS attention)
    aggregate: bool = False  # one token of the pruned patches appended

    def heat(self):
        return "CLS → patch attention: outliers above the IQR fence are kept", self.attn

    def lines(self):
        return [("Q1", self.q1, "quartile"), ("Q3", self.q3, "quartile"), ("fence", self.fence, "fence")]

    def numbers(self):
        return {"q1": self.q1, "q3": self.q3, "fence": self.fence}

    def readout(self):
        return [f"Q1 {self.q1:.3g} · Q3 {self.q3:.3g} · fence {self.fence:.3g}"]

    def per_patch(self):
        if self.merge_index is None:
            return {}
        weights = torch.round(self.merge_weight.detach().double().cpu(), decimals=8).tolist()
        return {"merge_groups": {str(k): {"neighbours": nbr, "weights": wt}
                                 for k, nbr, wt in zip(self.kept.tolist(), self.merge_index.tolist(), weights)}}

    def facts(self, i):
        if self.merge_index is None:
            return {}
        kept = self.kept.tolist()
        rows, cols = torch.nonzero(self.merge_index == i).T.tolist()  # (kept token, neighbour slot) pairs
        out = {"merged_into": [{"kept_patch": kept[r], "weight": float(self.merge_weight[r, c])}
                               for r, c in zip(rows, cols)]}
        if self.aggregate and i not in kept:
            out["in_aggregate_token"] = True
        return out

    def inspect(self, i):
        facts = self.facts(i)
        lines = []
        if facts.get("merged_into"):
            lines.append("merged into " + ", ".join(f"kept patch {m['kept_patch']} (weight {m['weight']:.3g})"
                                                    for m in facts["merged_into"]))
        if facts.get("in_aggregate_token"):
            lines.append("part of the aggregate token of pruned patches")
        return lines

    def regions(self):
        """Each kept token's merge group in its own colour (a patch in several groups takes the colour of the
        first kept token, i.e. the most attended one, that merged it)."""
        if self.merge_index is None:
            return None
        m, n = self.kept.numel(), self.attn.numel()
        group = torch.full((n,), m, dtype=torch.long)
        slots = torch.arange(m).repeat_interleave(self.merge_index.shape[1])
        group = group.scatter_reduce(0, self.merge_index.reshape(-1).cpu(), slots, "amin")
        group[self.kept.cpu()] = torch.arange(m)
        group[group == m] = -1
        return ("tokens", group, f"Merge groups: each kept token with its {self.merge_index.shape[1]} key-nearest "
                                 "patches (in its colour); kept outlined white")

    def marked(self):
        if self.samples is None or not self.samples.numel():
            return None
        return f"{self.samples.numel()} uniform samples outlined cyan", self.samples
