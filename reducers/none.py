"""No visual tokens at all: the text-only floor of any comparison.

The LLM gets the prompt and no image token; what a model still answers this way is what it answers from the
text alone (e.g. multiple-choice science questions), the score below which no reduction can matter.
"""

from __future__ import annotations

import torch

from .base import Reduction, VisualTokens, params_or_default
from .baselines import NoParams


def no_image(vt: VisualTokens, params: NoParams | None = None) -> Reduction:
    """Nothing: kept = [] (LongTensor [0]), tokens [0, d] in the features' dtype and device."""
    params_or_default(params, NoParams)
    x = vt.features
    return Reduction(
        method="none",
        kept=torch.zeros(0, dtype=torch.long, device=x.device),
        tokens=x[:0],
        grid=vt.grid,
        stages={"tokens": vt.n, "to LLM": 0},
    )
