"""VisPruner equals the reference loop written from its official code (tests/reference.py), on 576 and non-square
grids, odd budgets, ties, and the official rounds' quirks."""

from __future__ import annotations

import pytest
import torch

from reducers import REDUCERS, VisPrunerParams, VisualTokens, vispruner
from reducers.vispruner import official_round, split
from tests import reference as ref

CASES = [((24, 24), 32, 0), ((24, 24), 64, 1), ((5, 7), 16, 2), ((3, 7), 16, 5), ((1, 1), 8, 6)]
RATIOS = (0.5, 0.0, 1.0, 0.33)


def budgets(n: int) -> list[int]:
    return sorted({1, 7, 64, n - 1 if n > 1 else 1, n, n + 5})


def check(inp: dict, vt: VisualTokens, budget: int, ratio: float, official: bool) -> None:
    red = vispruner(vt, VisPrunerParams(budget=budget, important_ratio=ratio, official_count=official))
    want = ref.vispruner(inp["features"], inp["feature_layer_attn"], budget, ratio, official)
    assert red.kept.tolist() == want["kept"], (budget, ratio, official)
    assert torch.equal(red.tokens, inp["features"][want["kept"]])
    assert red.trace.important.tolist() == want["important"] and red.trace.rounds == want["rounds"]
    if not official:
        assert red.n_kept == min(budget, vt.n)


@pytest.mark.parametrize("grid,d,seed", CASES, ids=str)
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    vt = VisualTokens(**inp)
    if vt.n <= 64:  # every combination on small grids
        combos = [(b, r, o) for b in budgets(vt.n) for r in RATIOS for o in (False, True)]
    else:  # on 576: every odd budget at the official ratio, every ratio and the official count at 64
        combos = [(b, 0.5, False) for b in budgets(vt.n)] + [(64, r, o) for r in RATIOS for o in (False, True)]
    for budget, ratio, official in combos:
        check(inp, vt, budget, ratio, official)


def test_equals_reference_on_a_wider_non_square_grid():
    inp = ref.synthetic((12, 20), d=16, e=8, seed=3)
    vt = VisualTokens(**inp)
    for budget in (7, 64):
        check(inp, vt, budget, 0.5, False)


def test_equals_reference_with_ties():
    """Quantised attention and duplicated features: many equal scores; the lowest index / earliest position wins."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=11)
    inp["feature_layer_attn"] = (inp["feature_layer_attn"] * 50).round() / 50
    inp["features"][1::2] = inp["features"][0::2]  # every odd patch duplicates its left neighbour
    vt = VisualTokens(**inp)
    for budget in (7, 64, 129):
        check(inp, vt, budget, 0.5, False)


def test_official_split_truncates():
    assert split(64, 576, 0.5) == (32, 32)
    assert split(7, 576, 0.5) == (3, 4)
    assert split(100, 576, 0.29) == (28, 72)  # int(28.999…): the official truncation, followed
    assert split(1000, 16, 0.5) == (8, 8)


def test_official_round_model():
    """Where the official gather runs, crashes, or removes one a too many (checked against torch's own indexing of
    the official expression shapes in the docs)."""
    assert official_round(544, 8) == (264, "")
    assert official_round(19, 8) == (2, "")
    assert official_round(17, 8)[0] == 0  # odd |R|, ⌊|R|/2⌋ − r = 0: every a goes, r + 1 removed
    assert official_round(573, 8)[0] is None  # odd |R| → shape mismatch
    assert official_round(10, 8)[0] is None  # expand to a negative size


def test_official_count_can_be_one_short_and_says_so():
    """N = 35, T = 27, ρ = 18/27: T_imp = 18, T_div = 9, |R| = 17 (odd) with r = 8 — the official gather keeps no a,
    so 9 tokens leave instead of 8 and the LLM gets 26; an odd |R| with more to remove crashes the official code."""
    inp = ref.synthetic((5, 7), d=16, e=8, seed=0)
    vt = VisualTokens(**inp)
    ratio = 18 / 27 + 1e-9
    red = vispruner(vt, VisPrunerParams(budget=27, important_ratio=ratio, official_count=True))
    exact = vispruner(vt, VisPrunerParams(budget=27, important_ratio=ratio))
    assert red.stages["important"] == 18 and exact.n_kept == 27
    assert red.n_kept == 26 and any("one a too many" in note for note in red.trace.notes)
    crash = vispruner(VisualTokens(**ref.synthetic((24, 24), d=16, e=8)),
                      VisPrunerParams(budget=7, official_count=True))  # T_imp = 3: |R| = 573, odd
    assert crash.n_kept == 7 and "crashes in round 1" in crash.trace.notes[0]


def test_reads_the_feature_layer_attention_and_features_only():
    inp = ref.synthetic((24, 24), d=16, e=8, seed=5)
    a = vispruner(VisualTokens(**inp))
    b = vispruner(VisualTokens(**dict(inp, cls_attn=inp["cls_attn"].flip(0), keys=-inp["keys"])))
    assert torch.equal(a.kept, b.kept)
    with pytest.raises(ValueError, match="feature_layer_attn"):
        vispruner(VisualTokens(features=inp["features"], grid=(24, 24)))


def test_registry_entry():
    entry = REDUCERS["vispruner"]
    assert entry.budget_field == "budget" and entry.needs == ("feature_layer_attn",) and entry.formula
