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


def flops_ratio(lm_config, n_text: int, n_visual_full: int, n_visual_reduced: int) -> dict:
    """Full vs reduced prefill FLOPs and their ratio (reduced / full)."""
    full = prefill_flops(lm_config, n_text + n_visual_full)
    reduced = prefill_flops(lm_config, n_text + n_visual_reduced)
    return {"full": full, "reduced": reduced, "ratio": reduced / full if full else 1.0}
