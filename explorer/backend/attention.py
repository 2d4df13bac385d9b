"""CLS→patch attention from the q/k projections captured in a tower's layer (pure tensor functions).

Attention (PruMerge, see docs/methods.md)
-----------------------------------------------------
Q, K are the q_proj / k_proj outputs (raw linear outputs, before any scaling) of the layer that *consumes*
the selected hidden state, CLS at row 0, D the full width:
  official:  a = softmax(Q[0] Kᵀ / √D)[1:]                   (not split into heads, as the official code)
  head-mean: a = mean_h softmax(Q_h[0] K_hᵀ / √(D/H))[1:]     (per-head attention, averaged; FasterVLM)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def attention_official(q: Tensor, k: Tensor) -> Tensor:
    """CLS→patch attention, full width (not split into heads): softmax(Q[0] Kᵀ/√D)[1:]. q, k: [T, D]."""
    q, k = q.float(), k.float()
    scores = (k @ q[0]) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1)[1:]


def attention_head_mean(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """Per-head CLS→patch attention averaged over heads (scale 1/√head_dim, as the model's attention)."""
    q, k = q.float(), k.float()
    t, d = k.shape
    head_dim = d // num_heads
    qh = q[0].view(num_heads, head_dim)
    kh = k.view(t, num_heads, head_dim)
    scores = torch.einsum("hd,thd->ht", qh, kh) / math.sqrt(head_dim)
    return torch.softmax(scores, dim=-1).mean(0)[1:]
