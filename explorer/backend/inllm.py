"""Staged pruning inside the language model (SparseVLM, PyramidDrop, DART): pure functions over a LLaVA model.

A `reducers.inllm.StagePlan` says, per stage s, which layer's attention ranks (a_s) and from which layer on the
visual tokens are fewer (b_s); its `decide` chooses. This module runs the LM's own decoder layers around those
decisions (the same layer calls as `lm_pruning.py`, transformers 5.x `LlamaModel.forward`):

* probe (`probe`): layers 0…a_1−1 on every token; then layer a_1's attention over the tokens present — the
  model's own eager attention weights of that layer, run once more on the same input without a cache, head
  mean — gives the plan its rows (the rater rows to the visual tokens present); layers a_1…b_1−1 run
  (SparseVLM: layer a_1 itself, whose OUTPUT is pruned; PyramidDrop: none, layer a_1 then runs on the pruned
  set); the visual rows at the boundary become [kept rows, recycled rows] (`plan.merged` of the boundary's hidden
  states); and so on. The decisions are recorded (`StagedRecord`, CPU), once per image + prompt + plan.
* replay (`forward_logits`, `greedy_stream`): the same forward with the recorded decisions (no ranking), so an
  answer or a score runs exactly the tokens the reducer drew.
* positions: both official codes renumber the positions 0…T'−1 after every stage (SparseVLM truncates
  `position_ids`, PyramidDrop rebuilds `arange(cur_len)`); a decoded token's position in the layers of segment
  g is T_g + n (the number of keys those layers cached before it: SparseVLM's per-layer `get_usable_length`,
  PyramidDrop's position minus the tokens dropped before that layer). With a KV cache, the layers of segment g
  cache T_g rows. A plan with `renumbers = False` (DART) keeps the kept rows' ORIGINAL positions (`position_ids =
  keep_indexs`) and a decoded token sits at T + n in every layer (layer 0's cache length), as FastV.
* keys (`plan.reads == "keys"`, DART): instead of attention rows the plan gets layer a's keys on its input
  (`layer_keys`) and layer b−1's output through the final norm, for the visual tokens present and the text
  after them.

Batch size 1; any LLaMA-style decoder with full attention in every layer (see `lm_pruning.py`).
"""

from __future__ import annotations

import threading
from typing import Iterator

import torch
from torch import Tensor

from reducers.inllm import Decision, StagedRecord, StagePlan, StageRecord, check_decision

from .answer import greedy_loop
from .lm_pruning import _check_span, _parts, _run, eager_attention


def layer_attention(lm, index: int, hidden: Tensor, positions: Tensor) -> Tensor:
    """[T, T] float32: layer `index`'s attention weights on `hidden` [1, T, H] at `positions`, head mean, from the
    model's own eager attention (no cache; the layer's output is discarded)."""
    owner = threading.get_ident()
    captured: list[Tensor] = []

    def hook(_module, _args, output):
        if threading.get_ident() == owner:
            weights = output[1] if isinstance(output, tuple) else None
            if weights is None:
                raise RuntimeError("the attention module returned no weights under eager attention")
            captured.append(weights[0].float().mean(0))

    handle = lm.layers[index].self_attn.register_forward_hook(hook)
    try:
        with eager_attention(lm):
            _run(lm, hidden, positions, range(index, index + 1), None)
    finally:
        handle.remove()
    return captured[0]


def layer_keys(lm, index: int, hidden: Tensor, positions: Tensor) -> Tensor:
    """[T, D] layer `index`'s keys on `hidden` [1, T, H] at `positions` [T], as its attention computes them
    (input_layernorm, k_proj, the per-head k_norm where the model has one, RoPE), GQA heads expanded as
    `repeat_kv` does, heads concatenated (the official DART's `any_states`)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    layer = lm.layers[index]
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)
    t, hd = h.shape[1], attn.head_dim
    k = attn.k_proj(h).view(1, t, -1, hd)
    if getattr(attn, "k_norm", None) is not None:
        k = attn.k_norm(k)
    k = k.transpose(1, 2)  # [1, kv heads, T, hd]
    cos, sin = lm.rotary_emb(h, positions.view(1, -1))
    k, _ = apply_rotary_pos_emb(k, k, cos, sin)
    groups = lm.config.num_attention_heads // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    return k[0].transpose(0, 1).reshape(t, -1)


def _staged(model, inputs_embeds: Tensor, image_start: int, n_image: int, plan: StagePlan,
            record: StagedRecord | None, cache=None) -> tuple[Tensor, StagedRecord, list[tuple[int, int]]]:
    """(final-norm hidden [1, T', H], the record, segments [(first layer, length)]) of the staged forward: the
    plan decides (`record=None`, a probe) or the record's decisions are replayed."""
    lm, _ = _parts(model)
    n_layers = len(lm.layers)
    points = plan.reachable(n_layers)  # a stage whose layer the LLM lacks is never reached (official loops)
    t = _check_span(inputs_embeds, image_start, n_image)
    device = inputs_embeds.device
    s, n = image_start, n_image
    probe = record is None
    if probe:
        raters = plan.raters(inputs_embeds[0, s:s + n], inputs_embeds[0, s + n:]).to(device)
    else:
        if record.n != n or len(record.stages) != len(points):
            raise ValueError("the recorded stages do not belong to this input and plan")
        raters = None
    hidden, positions = inputs_embeds, torch.arange(t, device=device)
    ids, made, n_vis, cur = torch.arange(n), n, n, 0
    stages: list[StageRecord] = []
    segments = [(0, t)]
    keys_plan = plan.reads == "keys"
    for si, (a, b) in enumerate(points):
        hidden = _run(lm, hidden, positions, range(cur, a), cache)
        if probe and keys_plan:
            keys = layer_keys(lm, a, hidden, positions)[s:]  # the visual tokens present and the text after
        elif probe:
            weights = layer_attention(lm, a, hidden, positions)
            rows = weights[s + n_vis + raters][:, s:s + n_vis]  # raters → the visual tokens present
        hidden = _run(lm, hidden, positions, range(a, b), cache)
        visual = hidden[0, s:s + n_vis]
        if probe:
            if keys_plan:
                score, decision = plan.decide_keys(si, n_vis, keys, lm.norm(hidden[0, s:]), positions[s:])
            else:
                score, decision = plan.decide(si, n, rows, visual)
            check_decision(decision, n_vis)
            decision = decision.cpu()
            stages.append(StageRecord(a, b, ids, score.detach().float().cpu(), decision))
        else:
            decision = record.stages[si].decision
        if decision.merge and not plan.renumbers:
            raise ValueError("a plan that keeps the original positions cannot recycle tokens")
        keep = decision.keep.to(device)
        merged = plan.merged(visual, tuple(g.to(device) for g in decision.merge))
        rows_kept = torch.cat([torch.arange(s, device=device), s + keep,
                               torch.arange(s + n_vis, hidden.shape[1], device=device)])
        hidden = torch.cat([hidden[:, :s], visual[keep][None], merged[None].to(hidden.dtype), hidden[:, s + n_vis:]],
                           dim=1)
        ids = torch.cat([ids[decision.keep.cpu()], torch.arange(made, made + len(decision.merge))])
        made += len(decision.merge)
        n_vis = int(ids.numel())
        # renumbered 0…T'−1 (SparseVLM, PyramidDrop) or the kept rows' original positions (DART: `keep_indexs`)
        positions = torch.arange(hidden.shape[1], device=device) if plan.renumbers else positions[rows_kept]
        segments.append((b, int(hidden.shape[1])))
        cur = b
    hidden = _run(lm, hidden, positions, range(cur, n_layers), cache)
    if probe:
        record = StagedRecord(n, tuple(stages), raters.cpu(), n_layers)
    return lm.norm(hidden), record, segments


def probe(model, inputs_embeds: Tensor, image_start: int, n_image: int, plan: StagePlan) -> StagedRecord:
    """The plan's decisions on this input (one staged forward, no cache), recorded on the CPU."""
    with torch.inference_mode():
        return _staged(model, inputs_embeds, image_start, n_image, plan, None)[1]


def forward_logits(model, inputs_embeds: Tensor, image_start: int, n_image: int, plan: StagePlan,
                   record: StagedRecord, logits_to_keep: int = 0) -> Tensor:
    """Logits [1, T', V] of the staged forward replaying `record` without a cache (teacher forcing); the last
    rows are the text after the image (continuation included), so the last row predicts the next token."""
    _, head = _parts(model)
    hidden, _, _ = _staged(model, inputs_embeds, image_start, n_image, plan, record)
    return head(hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden)


def greedy_stream(model, inputs_embeds: Tensor, max_new_tokens: int, stop_ids: set[int], step_lock=None, *,
                  image_start: int, n_image: int, plan: StagePlan, record: StagedRecord
                  ) -> Iterator[tuple[int, float]]:
    """`answer.greedy_stream` with the staged pruning inside the LM (`answer.greedy_loop`): the prefill replays
    `record` filling one KV cache (segment g's layers cache T_g rows); decoded token n sits at position T_g + n
    in segment g's layers."""
    from transformers import DynamicCache

    lm, head = _parts(model)
    device = inputs_embeds.device
    cache = DynamicCache(config=lm.config)
    segments: list[tuple[int, int]] = []

    def prefill() -> Tensor:
        hidden, _, segs = _staged(model, inputs_embeds, image_start, n_image, plan, record, cache)
        segments.extend(segs)
        return head(hidden[:, -1:])[:, -1].argmax(-1)

    def step(next_id: Tensor, i: int) -> Tensor:
        x = lm.embed_tokens(next_id.view(1, 1))
        ends = [start for start, _ in segments[1:]] + [len(lm.layers)]
        for (start, length), end in zip(segments, ends):
            at = length if plan.renumbers else segments[0][1]  # T_g + n, or T + n with the original positions
            x = _run(lm, x, torch.tensor([at + i], device=device), range(start, end), cache)
        return head(lm.norm(x))[:, -1].argmax(-1)

    return greedy_loop(prefill, step, device, max_new_tokens, stop_ids, step_lock)
