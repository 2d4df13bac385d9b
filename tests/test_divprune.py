"""DivPrune equals the reference loop (tests/reference.py): greedy max–min cosine distance, step by step.

The reference rebuilds the same float32 distance matrix (1 − the float32 cosine product) and runs the greedy
selection in Python loops over tokens, recomputing every minimum from scratch; the float32 matrix itself is checked
against a float64 loop separately (a greedy argmax over nearly equal float64 / float32 values could otherwise be
decided by rounding).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import REDUCERS, DivPruneParams, VisualTokens, divprune
from reducers.divprune import max_min_order
from tests import reference as ref

CASES = [  # (grid, d, seed, budgets)
    ((24, 24), 64, 0, (1, 2, 16, 64, 144)),
    ((24, 24), 64, 1, (64,)),
    ((24, 24), 1024, 2, (64,)),  # projected 4096 wide, as LLaVA-1.5-7B's
    ((48, 60), 64, 3, (64,)),
    ((4, 4), 64, 4, tuple(range(1, 18))),
    ((3, 7), 16, 5, (1, 5, 20, 21, 64)),
    ((1, 1), 8, 6, (1, 64)),
]


def check_equal(inp: dict, budget: int, vt: VisualTokens) -> None:
    red = divprune(vt, DivPruneParams(budget=budget))
    want = ref.divprune(inp["projected"], budget)
    assert max_min_order(vt.projected_distance, min(budget, vt.n)).tolist() == want["order"]
    assert red.kept.tolist() == want["kept"]
    assert torch.equal(red.tokens, inp["features"][want["kept"]])
    assert red.stages == {"tokens": vt.n, "to LLM": len(want["kept"])}


@pytest.mark.parametrize("grid,d,seed,budgets", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed, budgets):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    vt = VisualTokens(**inp)  # one instance: the memoised distance matrix is reused across budgets
    for budget in budgets:
        check_equal(inp, budget, vt)
    check_equal(inp, budgets[-1], VisualTokens(**inp))  # and a fresh one


def test_distance_is_one_minus_cosine():
    """The float32 distance matrix the reducer (and the reference) use is 1 − cos to float32 precision, +inf on the
    diagonal."""
    for grid, d in [((4, 4), 16), ((24, 24), 64)]:
        vt = VisualTokens(**ref.synthetic(grid, d=d, e=8))
        dist = vt.projected_distance
        assert dist.dtype == torch.float32 and torch.isinf(dist.diagonal()).all()
        want = 1.0 - ref.cosine_loop(vt.projected)
        off = ~np.eye(vt.n, dtype=bool)
        np.testing.assert_allclose(dist.double().numpy()[off], want[off], atol=2e-6)
        assert np.array_equal(ref.projected_distance(vt.projected)[off], dist.double().numpy()[off])


def test_smaller_budgets_are_prefixes():
    """The greedy choice does not depend on the budget: M tokens are the first M of any longer run."""
    vt = VisualTokens(**ref.synthetic((24, 24), d=32, e=8, seed=7))
    long = max_min_order(vt.projected_distance, 300)
    for m in (1, 10, 64, 299):
        assert torch.equal(max_min_order(vt.projected_distance, m), long[:m])
        assert set(divprune(vt, DivPruneParams(budget=m)).kept.tolist()) == set(long[:m].tolist())


def test_memoised_order_equals_a_fresh_run_in_any_budget_order():
    """Budget moves on one VisualTokens reuse and extend one greedy run; each equals a fresh computation."""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=15)
    vt = VisualTokens(**inp)
    for budget in (64, 10, 200, 199, 576, 3, 1000):
        red = divprune(vt, DivPruneParams(budget=budget))
        fresh = divprune(VisualTokens(**inp), DivPruneParams(budget=budget))
        assert torch.equal(red.kept, fresh.kept) and torch.equal(red.tokens, fresh.tokens)
    seq, _ = vt.__dict__["_projected_rows"].table["divprune"]
    assert seq.numel() == 576 and torch.equal(seq, max_min_order(vt.projected_distance, 576))
    assert "_projected_rows" in vt.derive(query=-vt.query).__dict__
    assert "_projected_rows" not in vt.derive(projected=vt.projected + 1).__dict__


def test_each_step_takes_the_farthest_token():
    """The max–min law, in float64 on the true cosine distances: every chosen token's distance to the tokens chosen
    before it is at least every then-unchosen token's (up to float32 rounding)."""
    inp = ref.synthetic((24, 24), d=48, e=8, seed=8)
    vt = VisualTokens(**inp)
    order = max_min_order(vt.projected_distance, 100).tolist()
    dist = 1.0 - ref.cosine_loop(inp["projected"])
    np.fill_diagonal(dist, np.inf)
    nearest = dist.min(axis=0)
    assert nearest[order[0]] >= nearest.max() - 1e-6
    for t in range(1, len(order)):
        running = dist[order[:t]].min(axis=0)
        running[order[:t]] = -np.inf
        assert running[order[t]] >= running.max() - 1e-6


def test_budget_at_least_n_keeps_every_token():
    vt = VisualTokens(**ref.synthetic((3, 7), d=16, e=8, seed=9))
    for budget in (21, 22, 100_000):
        red = divprune(vt, DivPruneParams(budget=budget))
        assert red.kept.tolist() == list(range(21)) and red.n_kept == 21


def test_budget_one_is_the_most_isolated_token():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=10)
    red = divprune(VisualTokens(**inp), DivPruneParams(budget=1))
    dist = ref.projected_distance(inp["projected"])
    np.fill_diagonal(dist, np.inf)
    assert red.kept.tolist() == [int(np.argmax(dist.min(axis=0)))]


def test_duplicate_tokens_are_never_chosen_twice():
    """Three distinct projected rows repeated: the first three choices are one of each, and later choices (all at
    distance 0 from a chosen one) are still new tokens, lowest index first — the official code would repeat one."""
    inp = ref.synthetic((4, 4), d=8, e=8, seed=11)
    rows = torch.randn(3, 32, generator=torch.Generator().manual_seed(0))
    inp["projected"] = rows[torch.arange(16) % 3]
    vt = VisualTokens(**inp)
    order = max_min_order(vt.projected_distance, 16).tolist()
    assert sorted(order) == list(range(16))
    assert sorted(i % 3 for i in order[:3]) == [0, 1, 2]
    red = divprune(vt, DivPruneParams(budget=6))
    assert red.kept.unique().numel() == 6


def test_constant_tokens_keep_the_budget():
    inp = ref.synthetic((24, 24), d=8, e=8, seed=12)
    inp["projected"] = torch.ones(576, 32)
    red = divprune(VisualTokens(**inp), DivPruneParams(budget=64))
    assert red.n_kept == 64 and red.kept.unique().numel() == 64


def test_selects_on_projected_tokens_not_features():
    """Only `projected` decides; the LLM still receives the tower features of the chosen patches."""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=13)
    a = divprune(VisualTokens(**inp))
    b = divprune(VisualTokens(**dict(inp, features=inp["features"].flip(0))))
    c = divprune(VisualTokens(**dict(inp, projected=inp["projected"].flip(0))))
    assert torch.equal(a.kept, b.kept) and torch.equal(b.tokens, inp["features"].flip(0)[a.kept])
    assert not torch.equal(a.kept, c.kept)


def test_float16_equals_reference():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=14, dtype=torch.float16)
    red = divprune(VisualTokens(**inp), DivPruneParams(budget=64))
    want = ref.divprune(inp["projected"], 64)
    assert red.kept.tolist() == want["kept"] and red.tokens.dtype == torch.float16
    assert torch.equal(red.tokens, inp["features"][want["kept"]])


def test_needs_projected():
    inp = ref.synthetic((4, 4), d=8, e=8)
    bare = VisualTokens(**{k: v for k, v in inp.items() if k != "projected"})
    with pytest.raises(ValueError, match="needs VisualTokens.projected"):
        divprune(bare)
    assert REDUCERS["divprune"].needs == ("projected",) and REDUCERS["divprune"].budget_field == "budget"
