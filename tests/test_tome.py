"""ToMe bipartite soft matching equals the reference loop (tests/reference.py); hand-made cases; edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import REDUCERS, ToMeParams, VisualTokens, tome
from reducers.tome import merge_schedule
from tests import reference as ref
from tests.test_reducers import check_contract

CASES = [  # (grid, d, seed, budgets)
    ((24, 24), 64, 0, (1, 2, 5, 64, 144, 287, 288, 289, 575, 576, 10_000)),
    ((24, 24), 1024, 1, (64, 144)),
    ((24, 24), 16, 2, (3, 64, 200)),
    ((48, 60), 64, 3, (64, 576)),
    ((4, 4), 8, 4, (1, 2, 3, 5, 8, 9, 15, 16, 17)),
    ((3, 7), 8, 5, (1, 4, 10, 11, 20, 21)),
    ((1, 1), 8, 6, (1, 64)),
    ((1, 2), 8, 7, (1, 2)),
]


def check_equal(inp: dict, budget: int, rounds: int = 1) -> None:
    vt = VisualTokens(**inp)
    red = tome(vt, ToMeParams(budget=budget, rounds=rounds))
    want = ref.tome(inp["features"], inp["keys"], budget, rounds=rounds)
    assert red.kept.tolist() == want["kept"]
    assert red.groups.tolist() == want["groups"]
    np.testing.assert_allclose(red.group_weight.double().numpy(), want["group_weight"], rtol=1e-7)
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=1e-5, atol=1e-5)
    assert merge_schedule(vt.n, budget, rounds) == want["steps"]
    assert red.stages == {"tokens": vt.n, "to LLM": len(want["kept"])}
    check_contract(vt, red, "tome", ToMeParams(budget=budget, rounds=rounds))


@pytest.mark.parametrize("grid,d,seed,budgets", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed, budgets):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    for budget in budgets:
        for rounds in (1, 8):
            check_equal(inp, budget, rounds)


def test_more_rounds_match_merged_tokens_again():
    """With one round every step merges all of A: the survivors are a fixed lattice whatever the image; spread
    over rounds, merged tokens are matched again and the survivors follow the image."""
    lattices = set()
    adaptive = set()
    for seed in range(3):
        vt = VisualTokens(**ref.synthetic((24, 24), d=32, e=8, seed=seed))
        lattices.add(tuple(tome(vt, ToMeParams(budget=144, rounds=1)).kept.tolist()))  # steps 288, 144: all of A
        adaptive.add(tuple(tome(vt, ToMeParams(budget=144, rounds=8)).kept.tolist()))
    assert len(lattices) == 1 and len(adaptive) == 3
    assert merge_schedule(576, 64, 8) == [64] * 8


def test_merge_schedule():
    """r = min(⌈n/2⌉, n − budget) per step; the steps remove exactly N − min(budget, N) tokens."""
    assert merge_schedule(576, 64) == merge_schedule(576, 64, 1) == [288, 144, 72, 8]
    assert merge_schedule(576, 144) == [288, 144]
    assert merge_schedule(576, 300) == [276]
    assert merge_schedule(576, 576) == merge_schedule(576, 10_000) == merge_schedule(1, 1) == []
    assert merge_schedule(2880, 1) == [1440, 720, 360, 180, 90, 45, 23, 11, 6, 3, 1]
    for n in (1, 2, 3, 7, 16, 21, 576, 2880):
        for budget in (1, 2, 3, 5, 64, 1000, 5000):
            steps, left = merge_schedule(n, budget), n
            for r in steps:
                assert 1 <= r <= (left + 1) // 2
                left -= r
            assert left == min(budget, n)


def hand_inputs(keys, d=4, seed=0):
    n = len(keys)
    gen = torch.Generator().manual_seed(seed)
    return dict(features=torch.randn(n, d, generator=gen), keys=torch.tensor(keys, dtype=torch.float32), grid=(1, n))


def test_hand_made_matching():
    """1×4 patches, A = {0, 2}, B = {1, 3}; key cosines: 0–3 = 0.99 (best), 2–1 = 0.9."""
    c = 0.9
    s = (1 - c * c) ** 0.5
    keys = [[1.0, 0.0, 0.0], [0.0, c, s], [0.0, 1.0, 0.0], [0.99, (1 - 0.99**2) ** 0.5, 0.0]]
    inp = hand_inputs(keys)
    x = inp["features"]
    one = tome(VisualTokens(**inp), ToMeParams(budget=3, rounds=1))  # r = 1: only the most similar edge, 0 → 3
    assert one.kept.tolist() == [1, 2, 3] and one.groups.tolist() == [2, 0, 1, 2]
    torch.testing.assert_close(one.tokens, torch.stack([x[1], x[2], (x[0] + x[3]) / 2]))
    assert one.group_weight.tolist() == [0.5, 1.0, 1.0, 0.5]
    two = tome(VisualTokens(**inp), ToMeParams(budget=2, rounds=1))  # r = 2: both edges; 2 → 1 as well
    assert two.kept.tolist() == [1, 3] and two.groups.tolist() == [1, 0, 0, 1]
    torch.testing.assert_close(two.tokens, torch.stack([(x[1] + x[2]) / 2, (x[0] + x[3]) / 2]))
    for budget in (1, 2, 3, 4):
        check_equal(inp, budget)


def test_representative_is_the_patch_never_merged_away():
    """kept[i] = the patch of group i that was the destination of every merge it was in: after a full first
    step (r = |A|) every even patch is merged away, so the representatives are odd patches; then every
    other odd one, …"""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=3)
    red = tome(VisualTokens(**inp), ToMeParams(budget=144, rounds=1))  # steps [288, 144]: two full steps
    assert red.kept.tolist() == list(range(3, 576, 4))
    red = tome(VisualTokens(**inp), ToMeParams(budget=400, rounds=1))  # one partial step: 176 A tokens merged
    merged_away = sorted(set(range(576)) - set(red.kept.tolist()))
    assert len(merged_away) == 176 and all(p % 2 == 0 for p in merged_away), "only A (even) patches leave"
    size = torch.bincount(red.groups)
    assert int(size.max()) >= 2 and (size[red.groups[torch.tensor(merged_away)]] >= 2).all()


def test_ties_go_to_the_lowest_positions():
    """Equal one-hot keys: every similarity is exactly 1 in float32 and float64 at every step (a sum of equal
    one-hot keys normalises back to the same one-hot). Each A token's edge goes to the first B token, and
    the r kept edges are those of the lowest A positions."""
    inp = hand_inputs([[1.0, 0.0]] * 6)
    red = tome(VisualTokens(**inp), ToMeParams(budget=4, rounds=1))  # A = 0, 2, 4; B = 1, 3, 5; r = 2
    assert red.kept.tolist() == [1, 3, 4, 5] and red.groups.tolist() == [0, 0, 0, 1, 2, 3]
    x = inp["features"]
    torch.testing.assert_close(red.tokens[0], (x[0] + x[1] + x[2]) / 3)
    for budget in range(1, 7):
        check_equal(inp, budget)
    # a few one-hot directions: similarities exactly 0 or 1 in the first step, so many exact ties
    tied = ref.synthetic((4, 4), d=8, e=8, seed=9)
    tied["keys"] = torch.eye(3)[torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(0))]
    for budget in range(8, 17):  # one step (r ≤ |A| = 8)
        check_equal(tied, budget)
    red = tome(VisualTokens(**tied), ToMeParams(budget=12, rounds=1))
    a_pos = torch.arange(0, 16, 2)
    b_pos = torch.arange(1, 16, 2)
    best = (tied["keys"][a_pos] @ tied["keys"][b_pos].T).argmax(1)  # first maximum
    partner = {int(a): int(b_pos[j]) for a, j in zip(a_pos, best)}
    merged = [p for p in range(16) if p not in red.kept.tolist()]
    has_match = [int(a) for a in a_pos if float(tied["keys"][a] @ tied["keys"][partner[int(a)]]) == 1.0]
    assert merged == has_match[:4], "the four exact matches (similarity 1) of the lowest A positions merge"
    for p in merged:
        assert red.groups[p] == red.groups[partner[p]]


def test_budget_one_is_the_mean():  # budget ≥ N: test_reducers.test_a_budget_of_at_least_n_hands_every_token_unchanged
    inp = ref.synthetic((5, 3), d=8, e=8, seed=2)
    vt = VisualTokens(**inp)
    one = tome(vt, ToMeParams(budget=1))
    assert one.n_kept == 1 and one.groups.tolist() == [0] * 15
    torch.testing.assert_close(one.tokens[0], inp["features"].mean(0))
    torch.testing.assert_close(one.group_weight, torch.full((15,), 1 / 15))


def test_single_token_image():
    inp = ref.synthetic((1, 1), d=8, e=8, seed=0)
    red = tome(VisualTokens(**inp), ToMeParams(budget=1))
    assert red.kept.tolist() == [0] and torch.equal(red.tokens, inp["features"]) and red.groups.tolist() == [0]


def test_float16_matches_float32_on_the_same_values():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=4)
    half = {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    full = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in half.items()}
    for budget in (1, 64, 144, 500):
        a, b = tome(VisualTokens(**half), ToMeParams(budget=budget)), tome(VisualTokens(**full), ToMeParams(budget=budget))
        assert a.tokens.dtype == torch.float16 and torch.equal(a.kept, b.kept) and torch.equal(a.groups, b.groups)
        torch.testing.assert_close(a.tokens.float(), b.tokens, rtol=2e-3, atol=2e-3)
        check_contract(VisualTokens(**half), a, "tome", ToMeParams(budget=budget))


def test_metric_is_the_size_weighted_key():
    """Later steps compare merged tokens by their size-weighted mean key (the direction of the summed keys);
    a variant that leaves each destination its own key merges differently on these inputs."""
    for seed in (6, 7):
        inp = ref.synthetic((24, 24), d=32, e=8, seed=seed)
        red = tome(VisualTokens(**inp), ToMeParams(budget=64))
        own = ref.tome(inp["features"], inp["keys"], 64, track_keys=False)
        assert red.groups.tolist() != own["groups"]
        check_equal(inp, 64)


def test_registry_entry():
    entry = REDUCERS["tome"]
    assert entry.needs == ("keys",) and entry.budget_field == "budget" and entry.budgeted
    assert entry.label == "ToMe merging" and "2210.09461" in entry.paper
