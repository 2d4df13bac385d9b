"""FastV's selection (reducers/fastv.py): equal to its reference loop, ranking by layer K−1, ties, errors, fp16."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import REDUCERS, FastVParams, VisualTokens, fastv
from tests import reference as ref
from tests.test_reducers import check_contract

CASES = [  # (grid, seed)
    ((24, 24), 0),
    ((24, 24), 1),
    ((48, 60), 2),
    ((4, 4), 3),
    ((3, 7), 4),
    ((1, 1), 5),
]
SETTINGS = [  # (layer K, budget, rank)
    (2, 288, "last"),  # the official default: K = 2, R = 50 % on 576 tokens
    (2, 64, "mean"),
    (1, 1, "last"),
    (3, 144, "last"),
    (16, 72, "mean"),
    (16, 432, "last"),  # the slider's largest K
    (5, 100_000, "mean"),
]


def check_equal(inp: dict, layer: int, budget: int, rank: str) -> None:
    vt = VisualTokens(**inp)
    params = FastVParams(layer=layer, budget=budget, rank=rank)
    red = fastv(vt, params)
    want = ref.fastv(inp["features"], inp["lm_attn"], layer, budget, rank)
    assert red.kept.tolist() == want["kept"]
    np.testing.assert_array_equal(red.tokens.double().numpy(), want["tokens"])
    assert red.trace.attn.tolist() == pytest.approx(want["score"], rel=1e-6)
    assert red.layer == layer
    m = len(want["kept"])
    assert red.stages == {"tokens": vt.n, f"LLM layers < {layer}": vt.n, "to LLM": m}
    check_contract(vt, red, "fastv", params)


@pytest.mark.parametrize("grid,seed", CASES, ids=str)
def test_equals_reference(grid, seed):
    inp = ref.synthetic(grid, d=32, e=8, seed=seed)
    for layer, budget, rank in SETTINGS:
        check_equal(inp, layer, budget, rank)


def test_ranks_by_layer_k_minus_one_and_the_chosen_row():
    """lm_attn whose layers and rows disagree: K = 3 keeps the top of layer 2's row 0 ("last") or row 1."""
    n = 16
    lm = torch.zeros(4, 2, n)
    lm[2, 0, :4] = 1.0  # layer 2, last token: patches 0–3
    lm[2, 1, 4:8] = 1.0  # layer 2, mean: patches 4–7
    lm[3, 0, 8:12] = 1.0  # layer 3 (the wrong one for K = 3): patches 8–11
    lm[1, 0, 12:] = 1.0  # layer 1: patches 12–15
    inp = dict(ref.synthetic((4, 4), d=8, e=4), lm_attn=lm)
    vt = VisualTokens(**inp)
    assert fastv(vt, FastVParams(layer=3, budget=4, rank="last")).kept.tolist() == [0, 1, 2, 3]
    assert fastv(vt, FastVParams(layer=3, budget=4, rank="mean")).kept.tolist() == [4, 5, 6, 7]
    assert fastv(vt, FastVParams(layer=4, budget=4)).kept.tolist() == [8, 9, 10, 11]
    assert fastv(vt, FastVParams(layer=2, budget=4)).kept.tolist() == [12, 13, 14, 15]
    red = fastv(vt, FastVParams(layer=3, budget=4))
    assert torch.equal(red.trace.attn, lm[2, 0]) and red.layer == 3


def test_ties_go_to_the_lowest_index_and_order_is_raster():
    inp = ref.synthetic((24, 24), d=8, e=4, seed=7)
    inp["lm_attn"] = (inp["lm_attn"] * 3000).round() / 3000  # quantised: many equal values
    for budget in (1, 10, 100, 288, 500):
        for rank in ("last", "mean"):
            check_equal(inp, 2, budget, rank)
    flat = dict(inp, lm_attn=torch.full((4, 2, 576), 0.001))
    red = fastv(VisualTokens(**flat), FastVParams(budget=10))
    assert red.kept.tolist() == list(range(10)), "all equal: the first ten patches"


def test_layer_beyond_the_llm_raises_a_clear_error():
    inp = dict(ref.synthetic((4, 4), d=8, e=4), lm_attn=torch.rand(2, 2, 16))
    vt = VisualTokens(**inp)
    with pytest.raises(ValueError, match=r"K=3 is beyond the LLM's L=2 layers.*K ≤ 2"):
        fastv(vt, FastVParams(layer=3))
    assert fastv(vt, FastVParams(layer=2, budget=5)).n_kept == 5  # K = L is allowed


def test_budget_one_and_a_single_token_image():
    # budget ≥ N: test_reducers.test_a_budget_of_at_least_n_hands_every_token_unchanged
    inp = ref.synthetic((3, 7), d=8, e=4, seed=1)
    vt = VisualTokens(**inp)
    one = fastv(vt, FastVParams(budget=1))
    assert one.kept.tolist() == [int(inp["lm_attn"][1, 0].argmax())]
    single = fastv(VisualTokens(**ref.synthetic((1, 1), d=8, e=4)), FastVParams())
    assert single.kept.tolist() == [0] and single.n_kept == 1


def test_float16_matches_float32_on_the_same_values():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=4)
    half = {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    full = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in half.items()}
    for budget in (1, 64, 288):
        for rank in ("last", "mean"):
            p = FastVParams(budget=budget, rank=rank)
            a, b = fastv(VisualTokens(**half), p), fastv(VisualTokens(**full), p)
            assert a.tokens.dtype == torch.float16 and torch.equal(a.kept, b.kept)
            assert torch.equal(a.tokens.float(), b.tokens)


def test_registry_entry():
    entry = REDUCERS["fastv"]
    assert entry.needs == ("lm_attn",) and entry.budget_field == "budget" and entry.label == "FastV"
    assert [name for name, _, _ in entry.controls] == ["layer", "budget", "rank"]
    assert "45 %" in entry.headline and "2403.06764" in entry.paper
    with pytest.raises(ValueError, match="needs VisualTokens.lm_attn"):
        entry(VisualTokens(features=torch.zeros(4, 2), grid=(2, 2)))
