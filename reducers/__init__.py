"""Visual-token reducers: pure functions over one image's tokens (torch, numpy, scipy only).

    from reducers import VisualTokens, Reduction, PruMergeParams, PARParams, prumerge, par, REDUCERS
    red = REDUCERS["prumerge+"](vt)          # default parameters
    red = par(vt, PARParams(tau=0.3))
"""

import dataclasses
from types import MappingProxyType

from .base import Reduction, RegistryEntry, Slider, VisualTokens, params_or_default
from .baselines import BudgetParams, NoParams, identity, random_tokens, top_attention, uniform_grid
from .graph import ClusterSweep, components
from .par import PARParams, par
from .prumerge import PruMergeParams, prumerge


def _prumerge_plain(vt: VisualTokens, params: PruMergeParams) -> Reduction:
    params = params_or_default(params, PruMergeParams)
    return prumerge(vt, dataclasses.replace(params, plus=False))  # the name decides, as for "prumerge+"


def _prumerge_plus(vt: VisualTokens, params: PruMergeParams) -> Reduction:
    params = params_or_default(params, PruMergeParams)
    return prumerge(vt, dataclasses.replace(params, plus=True))


REDUCERS = MappingProxyType(
    {
        "par": RegistryEntry(par, PARParams, "PAR: prompt-aware retrieval, graph clusters, τ routing, δ redundancy", ("joint", "query")),
        "prumerge": RegistryEntry(_prumerge_plain, PruMergeParams, "PruMerge: IQR outliers of CLS attention, key-similarity merge", ("cls_attn", "keys")),
        "prumerge+": RegistryEntry(_prumerge_plus, PruMergeParams, "PruMerge+: PruMerge plus uniform spatial samples", ("cls_attn", "keys")),
        "all": RegistryEntry(identity, NoParams, "All tokens (no reduction)"),
        "random": RegistryEntry(random_tokens, BudgetParams, "Random: a seeded random subset of the budget's size"),
        "uniform": RegistryEntry(uniform_grid, BudgetParams, "Uniform: an evenly spaced grid of about the budget's size"),
        "top-attention": RegistryEntry(top_attention, BudgetParams, "Top-attention: the budget's most CLS-attended patches", ("cls_attn",)),
    }
)

__all__ = [
    "VisualTokens", "Reduction", "Slider", "RegistryEntry", "REDUCERS",
    "PruMergeParams", "PARParams", "BudgetParams", "NoParams",
    "prumerge", "par", "identity", "random_tokens", "uniform_grid", "top_attention",
    "components", "ClusterSweep",
]
