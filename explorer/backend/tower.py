"""One forward through the vision tower with per-call hooks: features, keys, CLS attention, joint embeddings."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .attention import attention_head_mean, attention_official
from .hooks import capture


@dataclass(frozen=True)
class TowerSpec:
    """What to read out of a CLIP-style vision tower, all derived from the VLM config."""

    feature_layer: int | tuple[int, ...]  # vision_feature_layer
    strategy: str  # vision_feature_select_strategy ("default": drop CLS)
    attn_layer: int  # consuming_layer(...)
    num_heads: int
    grid: tuple[int, int]


def vision_core(tower):
    """The module holding `encoder` and `post_layernorm` (transformers ≥ 5 flattened CLIPVisionModel;
    older versions wrap it in `.vision_model`)."""
    return getattr(tower, "vision_model", tower)


def vision_forward(tower, pixel_values: Tensor, spec: TowerSpec, post_layernorm=None, projection=None
                   ) -> dict[str, Tensor]:
    """Run the tower once with hooks on q/k of `spec.attn_layer`; return CPU float32 tensors:
    features [N, d] (selected layer, patch rows), keys [N, D], cls_attn [N], attn_head_mean [N],
    joint [N, e] (post_layernorm + projection of the last layer's patch rows; absent without projection).
    """
    layer = vision_core(tower).encoder.layers[spec.attn_layer].self_attn
    with torch.inference_mode(), capture({"q": layer.q_proj, "k": layer.k_proj}) as qk:
        out = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        layers = [spec.feature_layer] if isinstance(spec.feature_layer, int) else list(spec.feature_layer)
        # Patch rows only: LLaVA's "default" drops CLS; with "full" the CLS row is still not a patch, so the
        # explorer shows and feeds the patch rows (documented deviation for that rare setting).
        features = torch.cat([hidden[f][0, 1:] for f in layers], dim=-1)
        q, k = qk["q"][0], qk["k"][0]
        result = {
            "features": features,
            "keys": k[1:],
            "cls_attn": attention_official(q, k),
            "attn_head_mean": attention_head_mean(q, k, spec.num_heads),
        }
        if projection is not None:
            last = hidden[-1][0, 1:]
            if post_layernorm is not None:
                last = post_layernorm(last)
            result["joint"] = projection(last)
    n = spec.grid[0] * spec.grid[1]
    if features.shape[0] != n:
        raise ValueError(f"the tower returned {features.shape[0]} patch tokens, the config says {n}")
    return {name: value.detach().float().cpu().contiguous() for name, value in result.items()}
