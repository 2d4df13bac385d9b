"""One forward through a ViT vision tower with per-call hooks: features, keys, CLS attention, joint embeddings.

Works for any transformers ViT whose encoder is a list of layers with `q_proj` / `k_proj` projections inside
their self-attention — CLIP (`encoder.layers[i].self_attn.{q,k}_proj`) and DINOv2
(`encoder.layer[i].attention.{q,k}_proj`) alike: the layer list and the projections are found by name, not
special-cased per family. The final layer norm is CLIP's `post_layernorm` or DINOv2's `layernorm`.

Joint embeddings (PAR's patch-side of the image–text space) follow TRIM (FreedomIntelligence/TRIM): the patch
rows of the hidden state the LLM consumes (`hidden_states[feature_layer]`) through the tower's final layer
norm and, for CLIP, its visual projection. `joint_last` maps `hidden_states[-1]` instead (an option, never the
silent default). The CLS row mapped the same way (`cls_joint`) is the image's own summary — PAR's query when a
tower has no text side and nothing is pointed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from .attention import attention_head_mean, attention_official
from .geometry import hidden_state_index
from .hooks import capture


@dataclass(frozen=True)
class TowerSpec:
    """What to read out of a vision tower, all derived from the VLM config."""

    feature_layer: int | tuple[int, ...]  # vision_feature_layer (hidden_states index; a list is concatenated)
    attn_layer: int  # consuming_layer(...): the encoder layer whose attention reads the selected state
    num_heads: int
    grid: tuple[int, int]
    source_layer: int | None = None  # producing_layer(...): the layer whose output is the selected state


def vision_core(tower):
    """The module holding `encoder` (transformers ≥ 5 flattened CLIPVisionModel; older versions wrap it in
    `.vision_model`)."""
    return getattr(tower, "vision_model", tower)


def encoder_layers(tower) -> nn.ModuleList:
    """The tower's list of transformer layers (`encoder.layers` in CLIP, `encoder.layer` in DINOv2)."""
    encoder = vision_core(tower).encoder
    layers = getattr(encoder, "layers", None)
    if layers is None:
        layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(tower).__name__} has no encoder layer list (encoder.layers / encoder.layer)")
    return layers


def qk_projections(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The self-attention's query and key projections of one layer, found by their names (`…q_proj`, `…k_proj`)."""
    found: dict[str, list[nn.Module]] = {"q_proj": [], "k_proj": []}
    for name, module in layer.named_modules():
        tail = name.rsplit(".", 1)[-1]
        if tail in found:
            found[tail].append(module)
    if len(found["q_proj"]) != 1 or len(found["k_proj"]) != 1:
        raise ValueError(f"{type(layer).__name__} must hold exactly one q_proj and one k_proj, found "
                         f"{len(found['q_proj'])} and {len(found['k_proj'])}")
    return found["q_proj"][0], found["k_proj"][0]


def final_norm(tower) -> nn.Module | None:
    """The layer norm after the last layer (CLIP `post_layernorm`, DINOv2 `layernorm`), or None."""
    core = vision_core(tower)
    for name in ("post_layernorm", "layernorm"):
        module = getattr(core, name, None)
        if isinstance(module, nn.Module):
            return module
    return None


def vision_forward(tower, pixel_values: Tensor, spec: TowerSpec,
                   joint_map: Callable[[Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """Run the tower once with hooks on q/k of `spec.attn_layer` (and of `spec.source_layer`); return CPU
    float32 tensors:

    features [N, d]   the selected hidden state's patch rows (LLaVA drops CLS); cls_feature [d] its CLS row
    keys [N, D]       patch keys of the consuming layer; cls_attn [N] / attn_head_mean [N] its CLS→patch
                      attention, full width (official PruMerge) / per head averaged
    feature_layer_attn [N], feature_layer_keys [N, D/H]: in the layer that *produces* the selected state
                      (VisionZip's official choice): per-head CLS→patch softmax summed over heads, and the
                      keys averaged over heads (absent when no layer produces it, e.g. the embeddings)
    joint, joint_last [N, e] and cls_joint, cls_joint_last [e]: `joint_map` of the selected / last hidden
                      state's patch rows and CLS row (absent when `joint_map` is None)
    """
    layers_ = encoder_layers(tower)
    q_proj, k_proj = qk_projections(layers_[spec.attn_layer])
    hooks = {"q": q_proj, "k": k_proj}
    if spec.source_layer is not None:
        hooks["q_src"], hooks["k_src"] = qk_projections(layers_[spec.source_layer])
    with torch.inference_mode(), capture(hooks) as qk:
        out = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        layers = [spec.feature_layer] if isinstance(spec.feature_layer, int) else list(spec.feature_layer)
        # Patch rows only: LLaVA's "default" drops CLS; with "full" the CLS row is still not a patch, so the
        # explorer shows and feeds the patch rows (documented deviation for that rare setting).
        selected = torch.cat([hidden[f][0] for f in layers], dim=-1)  # [1 + N, d]
        q, k = qk["q"][0], qk["k"][0]
        result = {
            "features": selected[1:],
            "cls_feature": selected[0],
            "keys": k[1:],
            "cls_attn": attention_official(q, k),
            "attn_head_mean": attention_head_mean(q, k, spec.num_heads),
        }
        if spec.source_layer is not None:
            q_src, k_src = qk["q_src"][0], qk["k_src"][0]
            result["feature_layer_attn"] = attention_head_mean(q_src, k_src, spec.num_heads) * spec.num_heads
            t, d = k_src.shape
            result["feature_layer_keys"] = k_src.view(t, spec.num_heads, d // spec.num_heads).mean(1)[1:]
        if joint_map is not None:
            deepest = max(hidden_state_index(f, len(hidden) - 1) for f in layers)
            for suffix, state in (("", hidden[deepest][0]), ("_last", hidden[-1][0])):
                mapped = joint_map(state)  # [1 + N, e]
                result["joint" + suffix] = mapped[1:]
                result["cls_joint" + suffix] = mapped[0]
    n = spec.grid[0] * spec.grid[1]
    if result["features"].shape[0] != n:
        raise ValueError(f"the tower returned {result['features'].shape[0]} patch tokens, the config says {n}")
    return {name: value.detach().float().cpu().contiguous() for name, value in result.items()}
