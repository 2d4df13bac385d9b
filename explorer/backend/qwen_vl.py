"""Qwen2-VL / Qwen2.5-VL adapter groundwork (not enabled in the app): the merged-token grid, the vision attention
read from the fused qkv of a windowed layer, and the M-RoPE positions kept tokens enter the LM at.

What `Qwen2_5_VLForConditionalGeneration` (transformers 5.23, `modeling_qwen2_5_vl.py`) does with one image:

* `Qwen2VLImageProcessor` resizes the image to a multiple of patch·merge (dynamic resolution within
  min/max pixels) and emits its patches grouped by 2×2 merge unit: `image_grid_thw` = (t, h, w) in patches.
* The vision tower permutes the merge units into window order (`get_vision_window_index`); every block but
  those in `fullatt_block_indexes` attends only inside its window (`cu_window_seqlens`), the others over the whole
  image (`cu_seqlens`). Attention is one fused `qkv` Linear, vision RoPE applied to q and k, and the attention
  module returns no weights under any implementation — so `vision_attention` hooks the module's inputs
  (hidden states, cu_seqlens, rotary cos/sin) and recomputes softmax(q kᵀ·scale) per chunk, exactly as the
  eager path does (a test checks that the recomputed output equals the module's own).
* The merger maps each 2×2 unit to one LM token: the LM receives t·(h/2)·(w/2) tokens, in unit raster order
  (the budget unit on this family is one merged token).
* Positions: M-RoPE, three ids (t, h, w) per position from `get_rope_index`. The official pruning ports keep
  the kept tokens' ORIGINAL 3-D positions (`kept_positions`); renumbering is the other choice.

There is no CLS token, so no CLS attention exists on this family.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import Tensor


def merged_grid(grid_thw, merge: int) -> tuple[int, int, int]:
    """(t, h/merge, w/merge): the LM tokens of one image, from its (t, h, w) patch grid."""
    t, h, w = (int(v) for v in torch.as_tensor(grid_thw).reshape(-1)[:3])
    if h % merge or w % merge:
        raise ValueError(f"patch grid {h}×{w} is not a multiple of the merge size {merge}")
    return (t, h // merge, w // merge)


def patch_order(grid_thw, merge: int) -> Tensor:
    """[t·h·w] long: for each position of the processor's patch sequence (merge-unit major), the index of that
    patch in the raster order of the t×h×w grid."""
    t, h, w = (int(v) for v in torch.as_tensor(grid_thw).reshape(-1)[:3])
    idx = torch.arange(t * h * w).view(t, h // merge, merge, w // merge, merge)
    return idx.permute(0, 1, 3, 2, 4).reshape(-1)


@dataclass(frozen=True)
class WindowAttention:
    """One vision block's attention over one image, in the tower's window order.

    chunks:  (start, end) of each attention chunk (a window, or the whole image in a full-attention block)
    weights: per chunk [heads, L, L] softmax weights (rows: queries, columns: keys)
    window_index: [units] the merge-unit permutation the tower applied (`get_vision_window_index`)
    """

    chunks: tuple[tuple[int, int], ...]
    weights: tuple[Tensor, ...]
    window_index: Tensor
    unit: int  # patches per merge unit (merge²)

    @property
    def n(self) -> int:
        return self.chunks[-1][1] if self.chunks else 0

    def sequence_index(self) -> Tensor:
        """[N]: the processor-sequence position of each window-order position."""
        units = self.window_index.reshape(-1, 1) * self.unit + torch.arange(self.unit)
        return units.reshape(-1)

    def received(self) -> Tensor:
        """[N] float32 in the processor's sequence order: the attention each patch receives, head mean, averaged
        over the queries of its own chunk (the only queries that see it)."""
        out = torch.zeros(self.n)
        for (s, e), w in zip(self.chunks, self.weights):
            out[s:e] = w.float().mean(0).mean(0).cpu()
        result = torch.empty_like(out)
        result[self.sequence_index()] = out
        return result


def vision_attention(tower, pixel_values: Tensor, grid_thw: Tensor, block: int
                     ) -> tuple[WindowAttention, Tensor, Tensor]:
    """(the attention of vision block `block`, that attention module's own output [N, d], its input [N, d]) from
    one tower forward on one image, recomputed from the hooked inputs of its attention module (fused qkv, vision
    RoPE, chunks)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
    from transformers.vision_utils import get_vision_window_index

    attn = tower.blocks[block].attn
    owner = threading.get_ident()
    seen: dict = {}

    def pre(_module, args, kwargs):
        if threading.get_ident() == owner:
            seen["hidden"] = args[0] if args else kwargs["hidden_states"]
            seen["cu"] = kwargs["cu_seqlens"]
            seen["rope"] = kwargs["position_embeddings"]

    def post(_module, _args, output):
        if threading.get_ident() == owner:
            seen["out"] = output[0] if isinstance(output, tuple) else output

    handles = [attn.register_forward_pre_hook(pre, with_kwargs=True), attn.register_forward_hook(post)]
    try:
        with torch.inference_mode():
            tower(pixel_values, grid_thw=grid_thw)
    finally:
        for handle in handles:
            handle.remove()
    hidden, cu = seen["hidden"], seen["cu"]
    n = hidden.shape[0]
    with torch.inference_mode():
        q, k, _ = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        cos, sin = seen["rope"]
        q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
        bounds = [int(b) for b in cu.tolist()]
        chunks, weights = [], []
        for s, e in zip(bounds[:-1], bounds[1:]):
            if e <= s:
                continue
            qs, ks = q[s:e].transpose(0, 1).float(), k[s:e].transpose(0, 1).float()  # [H, L, d]
            weights.append(torch.softmax(qs @ ks.transpose(1, 2) * attn.scaling, dim=-1))
            chunks.append((s, e))
    merge = tower.spatial_merge_size
    window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=merge, window_size=tower.window_size,
                                              patch_size=tower.patch_size)
    return WindowAttention(tuple(chunks), tuple(weights), window_index.cpu(), merge * merge), seen["out"], hidden


def attention_output(attn, hidden: Tensor, result: WindowAttention) -> Tensor:
    """The attention module's output rebuilt from `result`'s weights: proj(concat_chunks(weights · v)) — what a
    test compares with the module's own output to prove the weights are the ones the model used."""
    n = hidden.shape[0]
    v = attn.qkv(hidden).reshape(n, 3, attn.num_heads, -1)[:, 2].transpose(0, 1).float()  # [H, N, d]
    pieces = [w @ v[:, s:e] for (s, e), w in zip(result.chunks, result.weights)]
    out = torch.cat(pieces, dim=1).transpose(0, 1).reshape(n, -1)
    return attn.proj(out.to(hidden.dtype))


def kept_positions(position_ids: Tensor, image_start: int, n_image: int, kept: Tensor) -> Tensor:
    """[3, 1, T'] M-RoPE positions of the rows left after keeping `kept` (offsets into the image span, any order)
    of the n_image image tokens: the text before, the kept image tokens in their original order, the text after —
    each at its ORIGINAL 3-D position (the official ports' rule)."""
    t = position_ids.shape[-1]
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1).sort().values
    if kept.numel() and (int(kept[0]) < 0 or int(kept[-1]) >= n_image or bool((kept[1:] == kept[:-1]).any())):
        raise ValueError(f"kept must hold distinct offsets in 0…{n_image - 1}")
    device = position_ids.device
    rows = torch.cat([torch.arange(image_start, device=device), kept.to(device) + image_start,
                      torch.arange(image_start + n_image, t, device=device)])
    return position_ids[..., rows]


def rope_positions(model, input_ids: Tensor, image_grid_thw: Tensor, image_token_id: int) -> Tensor:
    """[3, 1, T] the M-RoPE positions the model's own forward gives `input_ids` (one image): `get_rope_index`
    with the image tokens marked as such (mm_token_type_ids = 1 on them)."""
    types = (input_ids == image_token_id).int()
    positions, _ = model.model.get_rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=image_grid_thw)
    return positions
