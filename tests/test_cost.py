"""explorer/cost.py: prefill FLOPs against hand arithmetic, config unwrapping, full-vs-reduced ratios."""

from __future__ import annotations

import types

import pytest

from explorer.backend.cost import layer_flops, lm_dims, prefill_flops
from tests import tiny


def lm(d, m, layers):
    return types.SimpleNamespace(hidden_size=d, intermediate_size=m, num_hidden_layers=layers)


def test_prefill_flops_by_hand():
    # d = 4, m = 8, L = 2 layers, n = 3 tokens
    #   projections  2·n·4d²  = 2·3·4·16  = 384
    #   gated MLP    2·n·3dm  = 2·3·3·4·8 = 576
    #   attention    4·n²·d   = 4·9·4     = 144
    #   per layer    384 + 576 + 144 = 1104;   2 layers → 2208
    assert layer_flops(4, 8, 3) == 1104
    assert prefill_flops(lm(4, 8, 2), 3) == 2208
    # n = 1: 2·(64 + 96) + 16 = 336 per layer
    assert prefill_flops(lm(4, 8, 2), 1) == 672
    assert prefill_flops(lm(4, 8, 2), 0) == 0


def test_prefill_flops_llava_7b_order_of_magnitude():
    # LLaMA-7B-like: d 4096, m 11008, 32 layers; 576 visual + 64 text tokens ≈ 8.6 TFLOPs
    f = prefill_flops(lm(4096, 11008, 32), 640)
    per = 2 * 640 * (4 * 4096**2 + 3 * 4096 * 11008) + 4 * 640**2 * 4096
    assert f == 32 * per
    assert 8e12 < f < 9.5e12


def test_lm_dims_unwraps_vlm_config():
    config = tiny.tiny_llava_config()
    assert lm_dims(config) == (tiny.TEXT_WIDTH, 64, 2)
    assert lm_dims(config.text_config) == (tiny.TEXT_WIDTH, 64, 2)
    assert prefill_flops(config, 10) == prefill_flops(config.text_config, 10)
    with pytest.raises(ValueError, match="intermediate_size"):
        lm_dims(types.SimpleNamespace(hidden_size=4, num_hidden_layers=2))


def test_prefill_flops_rejects_negative():
    with pytest.raises(ValueError):
        prefill_flops(lm(4, 8, 2), -1)


