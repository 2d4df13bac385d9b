"""FastV (Chen et al., arXiv 2403.06764) inside the language model: pure functions over a LLaVA model.

FastV feeds every visual token to the LLM. After layer K−1 the image tokens that receive the least attention
are dropped, and layers K… (with the final norm and the LM head) run on the text tokens plus the kept image
tokens only. This module gives the ranking signal and the pruned forward; which tokens to keep is decided by
the caller (a reducer) from `image_attention`, so the same `keep` can be replayed, tested and drawn.

What the official code does (pkunlp-icler/FastV), and what is done here the same way:

* Ranking. `LlamaModel.forward` in `src/transformers/src/transformers/models/llama/modeling_llama.py` (the
  "inplace" token-drop path) and `fastv_forward` in `src/FastV/llava-hf/.../models/llama/modeling_llama.py`
  take layer K−1's attention weights (`layer_outputs[1]` of the previous layer), average over heads
  (`torch.mean(attn, dim=1)[0]`), take the LAST query row (`[-1]`), slice the image columns and keep the
  `topk`. `image_attention` returns that row ([:, 0]) for every layer, plus the paper's prose variant ([:, 1]):
  the attention averaged over all query positions that can see the image (rows ≥ image_start; rows before
  the last image token contribute exact zeros to the columns they cannot see, as in a plain mean of the
  causal attention matrix).
* Order. `keep_indexs = cat(system, topk image, rest).sort().values`: kept image tokens stay in their
  original order, between the same text. Here too (`keep` is sorted before use).
* Position ids. `position_ids = keep_indexs.unsqueeze(0)`: the kept rows keep their ORIGINAL positions, so
  RoPE sees gaps where image tokens were dropped; the causal mask is rebuilt for the shorter sequence
  (`_prepare_decoder_attention_mask(None, (B, new_len), …)`, resp. `_update_causal_mask(None, hidden, 0)`).
  Here: the same (the mask is `create_causal_mask` over the kept rows; position ids are never handed to the
  mask builder, whose packed-sequence detection would otherwise read the gaps as sequence boundaries).
* KV cache. The inplace path says "KV-Cache not supported": without a cache every generated token reruns the
  whole sequence and re-ranks at layer K (the ranking row is then the newest token's). The cache variants
  (`src/FastV/lmms-eval-with-kvcache/fastv_kvcache.py`, `FastVLlamaModel.forward`, and the `use_cache` branch
  of the llava-hf `fastv_forward`; README "Support KV Cache") prune ONCE in the prefill (`seq_length > 1`):
  layers < K cache all T positions, layers ≥ K cache only the kept ones, and every decoded token attends to
  that fixed set. A decoded token's position comes from the cache length of layer 0 (`past_key_values_length`
  / `cache_position = past_seen_tokens + …`), i.e. T, T+1, …: the positions continue the ORIGINAL sequence,
  dropped tokens included. `greedy_stream` does exactly this, and `forward_logits` on the prompt plus the
  generated tokens (no cache, same `keep`) reproduces it token for token. (`fastv_kvcache.py` also runs layer
  K−1 twice, which appends its keys to the cache twice — its issue #46; that is not copied here.)

The decoder layers are called as `transformers` 5.x `LlamaModel.forward` calls them:
`layer(hidden, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=…,
position_embeddings=rotary_emb(hidden, pos))`, with the mask from `masking_utils.create_causal_mask` for the
model's attention implementation (None under SDPA for a plain causal mask). Any LLaMA-style decoder with
full attention in every layer fits (`model.model.language_model` has `embed_tokens`, `layers`, `norm`,
`rotary_emb`; the head is `model.lm_head`). Batch size 1.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from .answer import greedy_loop


# --------------------------------------------------------------------------------------------------
# Parts of the model and argument checks
# --------------------------------------------------------------------------------------------------
def _parts(model):
    """(language model, lm_head) of a LlavaForConditionalGeneration (or a bare causal LM)."""
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None) or inner
    head = getattr(model, "lm_head", None)
    if lm is None or head is None or not hasattr(lm, "layers"):
        raise ValueError(f"{type(model).__name__} has no model.language_model.layers / lm_head to prune inside")
    return lm, head


def check_layer(model, layer: int) -> int:
    """`layer` as an int, or ValueError unless 1 ≤ layer ≤ the LM's number of decoder layers."""
    lm, _ = _parts(model)
    n_layers = len(lm.layers)
    if isinstance(layer, bool) or int(layer) != layer or not 1 <= layer <= n_layers:
        raise ValueError(f"FastV's layer K={layer!r} must be a whole number in 1…{n_layers}: the language model has "
                         f"{n_layers} decoder layers, and layers 0…K−1 see every image token")
    return int(layer)


def _check_span(inputs_embeds: Tensor, image_start: int, n_image: int) -> int:
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"inputs_embeds must be [1, T, H], got {tuple(inputs_embeds.shape)}")
    t = inputs_embeds.shape[1]
    if not (0 <= image_start and 0 <= n_image and image_start + n_image <= t):
        raise ValueError(f"image span [{image_start}, {image_start + n_image}) is outside the {t} input positions")
    return t


def kept_rows(n_total: int, image_start: int, n_image: int, keep: Tensor, device=None) -> Tensor:
    """[T'] the original positions of the rows that run layers K…: the text before the image, the kept image
    tokens in their original order, the text after (official `keep_indexs`, sorted). Validates `keep`."""
    keep = torch.as_tensor(keep).reshape(-1).to(device=device)
    if keep.numel() and (keep.is_floating_point() or keep.dtype == torch.bool):
        raise ValueError(f"keep must hold integer offsets into the image span, got {keep.dtype}")
    keep = keep.long().sort().values
    if keep.numel():
        if int(keep[0]) < 0 or int(keep[-1]) >= n_image:
            raise ValueError(f"keep holds offsets outside 0…{n_image - 1}")
        if bool((keep[1:] == keep[:-1]).any()):
            raise ValueError("keep holds an image token twice")
    return torch.cat([torch.arange(image_start, device=device), keep + image_start,
                      torch.arange(image_start + n_image, n_total, device=device)])


# --------------------------------------------------------------------------------------------------
# The layer loop
# --------------------------------------------------------------------------------------------------
def _causal_mask(lm, hidden: Tensor, cache, layer_idx: int):
    """The model's own causal mask for `hidden` as the queries: over themselves (no cache), or over layer
    `layer_idx`'s cached keys plus themselves. Position ids are deliberately not passed (see the module doc)."""
    from transformers.masking_utils import create_causal_mask

    if cache is None:
        ones = torch.ones(1, hidden.shape[1], dtype=torch.bool, device=hidden.device)
        return create_causal_mask(config=lm.config, inputs_embeds=hidden, attention_mask=ones, past_key_values=None)
    return create_causal_mask(config=lm.config, inputs_embeds=hidden, attention_mask=None, past_key_values=cache,
                              layer_idx=layer_idx)


def _run(lm, hidden: Tensor, positions: Tensor, layers: range, cache) -> Tensor:
    """Decoder layers `layers` on `hidden` [1, q, H] at `positions` [q] (with / without a KV cache)."""
    if len(layers) == 0:
        return hidden
    pos = positions.view(1, -1)
    mask = _causal_mask(lm, hidden, cache, layers[0])
    rope = lm.rotary_emb(hidden, position_ids=pos)
    for i in layers:
        hidden = lm.layers[i](hidden, attention_mask=mask, position_ids=pos, past_key_values=cache,
                              use_cache=cache is not None, position_embeddings=rope)
    return hidden


def _pruned_hidden(model, inputs_embeds: Tensor, image_start: int, n_image: int, layer: int, keep: Tensor,
                   cache=None) -> tuple[Tensor, int]:
    """Final-norm hidden states [1, T', H] of the pruned forward, and T (the unpruned length)."""
    lm, _ = _parts(model)
    layer = check_layer(model, layer)
    t = _check_span(inputs_embeds, image_start, n_image)
    device = inputs_embeds.device
    rows = kept_rows(t, image_start, n_image, keep, device)
    hidden = _run(lm, inputs_embeds, torch.arange(t, device=device), range(layer), cache)
    hidden = hidden[:, rows]
    hidden = _run(lm, hidden, rows, range(layer, len(lm.layers)), cache)
    return lm.norm(hidden), t


def forward_logits(model, inputs_embeds: Tensor, image_start: int, n_image: int, layer: int, keep: Tensor,
                   logits_to_keep: int = 0) -> Tensor:
    """Logits [1, T', V] of the FastV forward without a cache (teacher forcing): layers 0…K−1 on all T
    positions, then only the text and the kept image rows (T' = T − dropped) at their original positions.
    Row j belongs to original position `kept_rows(...)[j]`; the last row predicts the next token.
    `logits_to_keep` > 0: only the last that many rows go through the LM head (as transformers' argument)."""
    _, head = _parts(model)
    hidden, _ = _pruned_hidden(model, inputs_embeds, image_start, n_image, layer, keep)
    return head(hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden)


def greedy_stream(model, inputs_embeds: Tensor, max_new_tokens: int, stop_ids: set[int], step_lock=None, *,
                  image_start: int, n_image: int, layer: int, keep: Tensor) -> Iterator[tuple[int, float]]:
    """`answer.greedy_stream` with FastV inside the LM: yield (token id, prefill seconds) greedily
    (`answer.greedy_loop`).

    The prefill runs layers 0…K−1 on all T inputs and layers K… on the text and the kept image tokens, filling
    one KV cache whose layers < K hold all T positions and layers ≥ K only the T' kept ones. Each new token is
    the n-th after the prompt at position T + n (the original sequence continued, as the official KV-cache
    code numbers it), and attends to everything its layer has cached.
    """
    from transformers import DynamicCache

    lm, head = _parts(model)
    layer = check_layer(model, layer)
    device = inputs_embeds.device
    cache = DynamicCache(config=lm.config)
    t = inputs_embeds.shape[1]
    every = range(len(lm.layers))

    def prefill() -> Tensor:
        hidden, _ = _pruned_hidden(model, inputs_embeds, image_start, n_image, layer, keep, cache)
        return head(hidden[:, -1:])[:, -1].argmax(-1)

    def step(next_id: Tensor, i: int) -> Tensor:
        x = lm.embed_tokens(next_id.view(1, 1))
        position = torch.tensor([t + i], device=device)
        # layers < K and ≥ K hold different numbers of cached keys: one mask per group
        hidden = _run(lm, x, position, every[:layer], cache)
        hidden = _run(lm, hidden, position, every[layer:], cache)
        return head(lm.norm(hidden))[:, -1].argmax(-1)

    return greedy_loop(prefill, step, device, max_new_tokens, stop_ids, step_lock)


# --------------------------------------------------------------------------------------------------
# The ranking signal
# --------------------------------------------------------------------------------------------------
@contextmanager
def eager_attention(lm):
    """Run `lm`'s attention in the eager implementation (which returns its weights) inside the block, then
    restore whatever it was (sdpa, flash…). The switch is on the model's config, so the caller must keep
    other forwards of the same model out meanwhile (the backend holds its model lock)."""
    config = lm.config
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def image_attention(model, inputs_embeds: Tensor, image_start: int, n_image: int) -> Tensor:
    """[L, 2, n_image] CPU float32: the attention each image token receives in each of the LM's L layers,
    head mean, from ONE prefill over the full input (text + all image tokens), eager attention weights.

    [:, 0]: from the last input position (the official FastV ranking row);
    [:, 1]: averaged over all query positions ≥ image_start (those that can see the image; the paper's prose).
    """
    lm, _ = _parts(model)
    t = _check_span(inputs_embeds, image_start, n_image)
    s, n = image_start, n_image
    out: list[Tensor | None] = [None] * len(lm.layers)
    owner = threading.get_ident()

    def make(i: int):
        def hook(_module, _args, output):
            if threading.get_ident() != owner:
                return
            weights = output[1] if isinstance(output, tuple) else None
            if weights is None:
                raise RuntimeError("the attention module returned no weights under eager attention")
            cols = weights[0, :, :, s:s + n].float().mean(0)  # [T, n], head mean
            out[i] = torch.stack([cols[-1], cols[s:].mean(0)]).cpu()

        return hook

    handles = [layer.self_attn.register_forward_hook(make(i)) for i, layer in enumerate(lm.layers)]
    try:
        with eager_attention(lm), torch.inference_mode():
            _run(lm, inputs_embeds, torch.arange(t, device=inputs_embeds.device), range(len(lm.layers)), None)
    finally:
        for handle in handles:
            handle.remove()
    if any(o is None for o in out):
        raise RuntimeError("not every decoder layer reported its attention")
    return torch.stack(out)
