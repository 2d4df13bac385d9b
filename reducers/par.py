"""PAR, prompt-aware token reduction (arXiv 2410.07278), as specified in docs/methods.md.

The paper publishes no code; the steps below are the written specification (steps 2–7; step 1, prompt
rewriting, belongs to the model backend, which hands over `joint` and `query`):
2. relevance r = min-max normalised cos(J_i, q);
3. clusters = connected components of {S_ij ≥ γ} over feature cosine similarity S (optionally 4-neighbour);
4. hybrid relevance h = α r + (1 − α) R_c (R_c = mean r of the cluster); retrieve the top ⌈ρ·N⌉ by h;
5. route the retrieved tokens with h ≥ τ;
6. redundancy: visit routed tokens by descending r, keep one unless a kept token has S ≥ δ with it;
7. keep at least one token (argmax h; it then counts as routed too); tokens = X[kept] in raster order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Reduction, Trace, VisualTokens, check_ranges, params_or_default, slider, toggle
from .graph import at_least, exact_threshold


@dataclass(frozen=True)
class PARParams:
    tau: float = slider(0.3, 0.0, 1.0, 0.01, "A retrieved token goes on only if its hybrid relevance h ≥ τ; r is "
                        "min–max normalised per image, so τ is relative to each image", "τ routing threshold")
    delta: float = slider(0.9, 0.0, 1.0, 0.005, "Of two kept tokens with feature similarity ≥ δ only the more "
                          "relevant stays", "δ redundancy threshold")
    cluster_threshold: float = slider(0.8, 0.0, 1.0, 0.01, "Patches with feature similarity ≥ γ are linked in the "
                                      "graph; clusters are its connected components", "γ clustering threshold")
    retrieval_ratio: float = slider(0.5, 0.01, 1.0, 0.01, "The top ⌈ρ·N⌉ tokens by hybrid relevance h are "
                                    "retrieved", "ρ retrieval ratio")
    alpha: float = slider(0.5, 0.0, 1.0, 0.05, "h = α·r + (1 − α)·R_cluster: token-level vs cluster-level "
                          "relevance", "α token vs cluster")
    spatial: bool = toggle(False, "Link only 4-neighbour patches in the clustering graph", "Spatial graph")

    def sweep_series(self, vt: VisualTokens, name: str, xs) -> tuple[str, np.ndarray] | None:
        """What else a sweep of `name` over `xs` shows: γ → the cluster count (read off the spanning forest, which
        also makes each γ's clustering O(N))."""
        if name != "cluster_threshold":
            return None
        return "clusters", vt.cluster_sweep(self.spatial).count(xs)

    def __post_init__(self) -> None:
        check_ranges(self)


def relevance(joint: Tensor, query: Tensor, unit: bool = False) -> Tensor:
    """[N] min-max normalised cosine similarity of joint [N, e] to the query [e]; zeros if constant.
    `unit`: the joint rows are already unit length (`VisualTokens.normalised_joint`)."""
    rows = joint.float() if unit else F.normalize(joint.float(), dim=-1)
    s = rows @ F.normalize(query.float(), dim=0)  # [N]
    span = s.max() - s.min()
    return (s - s.min()) / span if span > 0 else torch.zeros_like(s)


def cluster_mean(values: Tensor, labels: Tensor, count: int) -> Tensor:
    """[C] mean of `values` [N] over each label in 0..count-1."""
    total = torch.zeros(count, dtype=values.dtype, device=values.device).index_add_(0, labels, values)
    size = torch.bincount(labels, minlength=count).to(values.dtype)
    return total / size


def retrieval_size(ratio: float, n: int) -> int:
    """⌈ρ·N⌉, at least 1; rounding first so that 0.07·100 is 7, not 8."""
    return max(1, min(n, math.ceil(round(ratio * n, 9))))


def suppress_redundant(sim: Tensor, order: Tensor, delta: float, block: bool | None = None) -> Tensor:
    """Greedy redundancy rule over candidates `order` [R] (most relevant first) → kept subset [K].

    A candidate is kept unless an already-kept one has S ≥ δ with it. The rule is inherently sequential in the
    kept set, so the loop runs over candidates; each kept one does one vector step over all candidates. On the
    CPU that step reads the kept token's similarity row at the candidates (K·R reads in all, fewer than the
    R×R block whenever something is suppressed); on a GPU the R×R block is gathered in one kernel instead.
    `block` forces one way (None: by device); both give the same result.
    """
    if block is None:
        block = sim.device.type != "cpu" or sim.dtype not in (torch.float16, torch.float32, torch.float64)
    if block:
        close = at_least(sim.index_select(0, order).index_select(1, order), delta).cpu().numpy()  # [R, R]
        close_to = close.__getitem__
    else:
        s, o = sim.detach().numpy(), order.numpy()
        t = exact_threshold(s.dtype, delta)

        def close_to(i: int) -> np.ndarray:  # [R] candidates with S ≥ δ to candidate i
            return s[o[i]].take(o) >= t

    suppressed = np.zeros(order.numel(), dtype=bool)
    keep = []
    for i in range(order.numel()):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= close_to(i)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def par(vt: VisualTokens, params: PARParams | None = None) -> Reduction:
    """Prompt-aware reduction of one image's visual tokens; `vt` needs `joint` and `query`."""
    p = params_or_default(params, PARParams)
    vt.require("joint", "query", method="PAR")
    n, device = vt.n, vt.features.device
    r = relevance(vt.normalised_joint, vt.query, unit=True)  # [N]; unit rows memoised per image
    sim = vt.feature_similarity  # [N, N], memoised per image
    count, labels = vt.clusters(p.cluster_threshold, p.spatial)  # memoised per image and threshold
    h = p.alpha * r + (1 - p.alpha) * cluster_mean(r, labels, count)[labels]  # [N]

    by_h = torch.sort(h, descending=True, stable=True).indices  # ties (equal cluster relevance): raster order
    retrieved = torch.zeros(n, dtype=torch.bool, device=device)
    retrieved[by_h[: retrieval_size(p.retrieval_ratio, n)]] = True
    routed = retrieved & at_least(h, p.tau)

    candidates = torch.nonzero(routed).flatten()
    order = candidates[torch.sort(r[candidates], descending=True, stable=True).indices]
    kept = suppress_redundant(sim, order, p.delta)
    stages = {"tokens": n, "retrieved": int(retrieved.sum()), "routed": int(routed.sum()), "kept": kept.numel()}
    if kept.numel() == 0:  # step 7: never hand the LLM nothing (argmax h, the first on ties: retrieved)
        kept = by_h[:1]
        routed = routed.clone()
        routed[kept] = True
    kept = torch.sort(kept).values  # raster order
    tokens = vt.features[kept]
    stages["to LLM"] = tokens.shape[0]
    return Reduction(
        method="par",
        kept=kept,
        tokens=tokens,
        grid=vt.grid,
        stages=stages,
        trace=PARTrace(r, h, labels, count, retrieved, routed, float(p.tau)),
    )


@dataclass(frozen=True, eq=False)
class PARTrace(Trace):
    """PAR's diagnostics: relevance r, hybrid relevance h, the clusters, which tokens were retrieved and routed,
    and the routing threshold τ (a line on h's histogram)."""

    relevance: Tensor  # [N] r in [0, 1]
    hybrid: Tensor  # [N] h = α r + (1 − α) R_c
    labels: Tensor  # [N] connected-component label per patch
    n_clusters: int
    retrieved: Tensor  # [N] bool
    routed: Tensor  # [N] bool
    tau: float

    def heat(self):
        return "PAR hybrid relevance h = α·r + (1 − α)·R_cluster: routed if ≥ τ", self.hybrid

    def lines(self):
        return [(f"τ = {self.tau:g}", self.tau, "cut")]

    def numbers(self):
        return {"n_clusters": self.n_clusters}

    def readout(self):
        return [f"{self.n_clusters} clusters"]

    def per_patch(self):
        return {"relevance": self.relevance, "hybrid": self.hybrid, "labels": self.labels}

    def facts(self, i):
        label = int(self.labels[i])
        return {"relevance": float(self.relevance[i]), "hybrid": float(self.hybrid[i]), "cluster": label,
                "cluster_size": int((self.labels == label).sum()), "retrieved": bool(self.retrieved[i]),
                "routed": bool(self.routed[i])}

    def inspect(self, i):
        f = self.facts(i)
        return [f"relevance r {f['relevance']:.3f}, h {f['hybrid']:.3f}, cluster {f['cluster']} of "
                f"{f['cluster_size']} patches, retrieved {f['retrieved']}, routed {f['routed']}"]

    def regions(self):
        sizes = torch.bincount(self.labels.cpu())
        top = ", ".join(str(v) for v in torch.sort(sizes, descending=True).values[:3].tolist())
        return ("clusters", self.labels, f"{self.n_clusters} clusters (connected components of similarity ≥ γ); "
                f"largest: {top} patches; {int((sizes == 1).sum())} singletons grey; kept outlined white")
