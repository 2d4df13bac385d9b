"""DART (its official selection rule, before the LLM) equals the reference loop (tests/reference.py): pivots by
L1 norm, each pivot's least-similar tokens in turn; 576 and non-square grids, odd budgets, ties, official count."""

from __future__ import annotations

import pytest
import torch

from reducers import REDUCERS, DARTParams, VisualTokens, dart
from reducers.dart import shares
from tests import reference as ref

TIE = 1e-6  # float32 cosines and L1 norms against the float64 loop


def check(inp: dict, vt: VisualTokens, budget: int, pivots: int, official: bool) -> None:
    red = dart(vt, DARTParams(budget=budget, pivots=pivots, official_count=official))
    want = ref.dart(inp["projected"], budget, pivots, official, prefer=red.trace.owner.tolist(), tie=TIE)
    assert red.trace.pivots.tolist() == want["pivots"], (budget, pivots, official)
    assert red.trace.owner.tolist() == want["owner"] and red.kept.tolist() == want["kept"]
    assert torch.equal(red.tokens, inp["features"][want["kept"]])
    if not official:
        assert red.n_kept == min(budget, vt.n)


@pytest.mark.parametrize("grid,d,seed", [((24, 24), 64, 0), ((24, 24), 32, 1), ((5, 7), 16, 2), ((3, 7), 16, 5),
                                         ((1, 1), 8, 6)], ids=str)
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    vt = VisualTokens(**inp)
    n = vt.n
    for budget in sorted({1, 7, 64, 128, max(1, n - 1), n, n + 5}):
        for pivots in (8, 1, 5):
            for official in (False, True):
                check(inp, vt, budget, pivots, official)


def test_equals_reference_on_a_large_non_square_grid():
    inp = ref.synthetic((48, 60), d=16, e=8, seed=3)
    vt = VisualTokens(**inp)
    for budget in (7, 128):
        check(inp, vt, budget, 8, False)


def test_ties():
    """Duplicated embeddings: equal L1 norms and equal cosines; the lowest index wins."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=7)
    inp["projected"][288:] = inp["projected"][:288]
    vt = VisualTokens(**inp)
    for budget in (7, 64, 300):
        check(inp, vt, budget, 8, False)


def test_official_count():
    """Every pivot takes ⌊T/k⌋: 8 + 8·16 = 136 tokens for T = 128 with 8 pivots (official with 4 image + 4 text
    pivots: 4 + 8·16 = 132 image tokens)."""
    assert shares(128, 8, True) == [16] * 8
    assert shares(128, 8, False) == [15] * 8
    assert shares(7, 5, False) == [1, 1, 0, 0, 0]
    inp = ref.synthetic((24, 24), d=16, e=8, seed=8)
    vt = VisualTokens(**inp)
    assert dart(vt, DARTParams(budget=128, official_count=True)).n_kept == 136
    assert dart(vt, DARTParams(budget=128)).n_kept == 128


def test_chosen_are_the_least_similar_to_their_pivot():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=9)
    red = dart(VisualTokens(**inp), DARTParams(budget=64, pivots=1))
    pivot = int(red.trace.pivots[0])
    cos = torch.nn.functional.normalize(inp["projected"], dim=-1) @ torch.nn.functional.normalize(
        inp["projected"][pivot], dim=0)
    others = torch.ones(576, dtype=torch.bool)
    others[pivot] = False
    chosen = red.kept_mask & others
    assert float(cos[chosen].max()) <= float(cos[others & ~chosen].min())


def test_needs_no_attention():
    entry = REDUCERS["dart"]
    assert entry.needs == ("projected",) and entry.budget_field == "budget"
