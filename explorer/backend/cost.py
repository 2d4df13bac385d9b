"""Prefill FLOPs of the language model, full vs reduced visual input.

For a LLaMA-style decoder block with hidden width d and MLP width m, prefilling n tokens costs

    per layer:  2·n·(4d² + 3·d·m)  +  4·n²·d
                 │     │     │          └ attention scores QKᵀ (2n²d) and the weighted sum AV (2n²d)
                 │     │     └ gated MLP: gate, up and down projections, d×m each
                 │     └ q, k, v, o projections, d×d each
                 └ one multiply-add = 2 FLOPs
    total:      num_hidden_layers × per layer

(a multiply-add counts as 2 FLOPs; embeddings, norms, softmax and the LM head are left out, as in the
papers' accounting). Grouped-query attention makes k/v smaller than d×d; the formula keeps the papers'
convention of 4d², so ratios between full and reduced inputs are what to read, not absolute numbers.
d, m and the layer count come from the LM config (`hidden_size`, `intermediate_size`,
`num_hidden_layers`); a VLM config is unwrapped to its `text_config`.

FastV prunes inside the LM: with n_in = text + all visual tokens entering layer 0 and n_kept = text + the
visual tokens left from layer K on,

    pruned:     K × per layer(n_in)  +  (num_hidden_layers − K) × per layer(n_kept)

(the paper's FLOPs formula, K·(4nd² + 2n²d + 2ndm) + (T−K)·(4n̂d² + 2n̂²d + 2n̂dm), in this module's
per-layer accounting); K = 0 is the ordinary reduced prefill.
"""

from __future__ import annotations


def lm_dims(lm_config) -> tuple[int, int, int]:
    """(d, m, layers) from a LM config, or from a VLM config's text_config."""
    config = getattr(lm_config, "text_config", None) or lm_config
    try:
        d = int(config.hidden_size)
        m = int(config.intermediate_size)
        layers = int(config.num_hidden_layers)
    except AttributeError as err:
        raise ValueError(f"the LM config lacks {err.name}: need hidden_size, intermediate_size, num_hidden_layers") from None
    return d, m, layers


def layer_flops(d: int, m: int, n: int) -> float:
    """One block: 2·n·(4d² + 3·d·m) + 4·n²·d."""
    return 2.0 * n * (4.0 * d * d + 3.0 * d * m) + 4.0 * n * n * d


def prefill_flops(lm_config, n_tokens: int) -> float:
    """FLOPs to prefill `n_tokens` (text + visual) through every layer of the LM."""
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be ≥ 0, got {n_tokens}")
    d, m, layers = lm_dims(lm_config)
    return layers * layer_flops(d, m, int(n_tokens))


def prefill_flops_pruned(lm_config, n_text: int, n_visual_in: int, n_visual_kept: int, layer: int) -> float:
    """FLOPs to prefill when layers 0…layer−1 see `n_text + n_visual_in` tokens and layers layer… only
    `n_text + n_visual_kept` (FastV with K = `layer`)."""
    d, m, layers = lm_dims(lm_config)
    n_text, n_in, n_kept, k = int(n_text), int(n_visual_in), int(n_visual_kept), int(layer)
    if min(n_text, n_in, n_kept) < 0:
        raise ValueError(f"token counts must be ≥ 0, got text {n_text}, visual in {n_in}, kept {n_kept}")
    if n_kept > n_in:
        raise ValueError(f"cannot keep {n_kept} of {n_in} visual tokens")
    if not 0 <= k <= layers:
        raise ValueError(f"layer must be in 0…{layers} (the LM's layer count), got {layer}")
    return k * layer_flops(d, m, n_text + n_in) + (layers - k) * layer_flops(d, m, n_text + n_kept)


def prefill_flops_schedule(lm_config, n_text: int, schedule) -> float:
    """FLOPs to prefill when the visual tokens present change along the layers: `schedule` is ((first layer,
    visual tokens from there on), …) (reducers.inllm.llm_schedule); each segment's layers run on n_text + its
    count; segments at or beyond the LM's last layer never run. FastV's ((0, N), (K, M)) is
    `prefill_flops_pruned`; SparseVLM / PyramidDrop have one segment per stage (PyramidDrop's ranking q/k
    projections at each drop layer are left out, as the paper's accounting does)."""
    d, m, layers = lm_dims(lm_config)
    segments = sorted((int(a), int(c)) for a, c in schedule)
    total = 0.0
    for i, (start, count) in enumerate(segments):
        if count < 0 or start < 0:
            raise ValueError(f"a schedule holds layers and counts ≥ 0, got {segments}")
        end = segments[i + 1][0] if i + 1 < len(segments) else layers
        span = max(0, min(end, layers) - min(start, layers))
        total += span * layer_flops(d, m, int(n_text) + count)
    return total


def prefill_flops_of(lm_config, n_text: int, n_visual: int, n_kept: int, layer: int = 0, schedule=None) -> dict:
    """{"full", "reduced", "ratio"}: prefill FLOPs with all `n_visual` patch tokens vs a reduction handing the
    LLM `n_kept` (from LLM layer `layer` on, FastV; 0: before the LLM) or, with `schedule` (several stages
    inside the LLM), that schedule; ratio = reduced / full."""
    full = prefill_flops(lm_config, n_text + n_visual)
    if schedule is not None and len(schedule) > 2:
        reduced = prefill_flops_schedule(lm_config, n_text, schedule)
    elif layer:
        reduced = prefill_flops_pruned(lm_config, n_text, n_visual, n_kept, min(layer, lm_dims(lm_config)[2]))
    else:
        reduced = prefill_flops(lm_config, n_text + n_kept)
    return {"full": full, "reduced": reduced, "ratio": reduced / full if full else 1.0}
