"""Average pooling equals the reference loop; equals avg_pool2d when the grid divides; edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reducers import REDUCERS, BudgetParams, PoolParams, VisualTokens, pool, uniform_grid
from reducers.baselines import grid_size
from reducers.pool import bin_of
from tests import reference as ref
from tests.test_reducers import check_contract

CASES = [  # (grid, d, seed, budgets)
    ((24, 24), 64, 0, (1, 2, 7, 29, 36, 64, 100, 144, 200, 575, 576, 10_000)),
    ((24, 24), 1024, 1, (64, 144)),
    ((48, 60), 64, 2, (1, 64, 180, 576, 720, 1000, 2880)),
    ((4, 4), 8, 3, (1, 2, 3, 4, 5, 9, 16, 17)),
    ((3, 7), 8, 4, (1, 2, 4, 5, 10, 21, 22)),
    ((5, 3), 8, 5, (2, 4, 7, 15)),
    ((7, 1), 8, 6, (1, 3, 5, 7)),
    ((1, 1), 8, 7, (1, 64)),
]


def check_equal(inp: dict, grid, budget: int) -> None:
    vt = VisualTokens(**inp)
    red = pool(vt, PoolParams(budget=budget))
    want = ref.pool(inp["features"], grid, budget)
    assert red.kept.tolist() == want["kept"]
    assert red.groups.tolist() == want["groups"]
    np.testing.assert_allclose(red.group_weight.double().numpy(), want["group_weight"], rtol=1e-7)
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=1e-5, atol=1e-5)
    gh, gw = want["shape"]
    assert red.stages == {"tokens": vt.n, f"{gh}×{gw} grid nearest the budget": gh * gw, "to LLM": gh * gw}
    check_contract(vt, red, "pool", PoolParams(budget=budget))


@pytest.mark.parametrize("grid,d,seed,budgets", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed, budgets):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    for budget in budgets:
        check_equal(inp, grid, budget)


@pytest.mark.parametrize("grid,budget,kernel", [((24, 24), 144, (2, 2)), ((24, 24), 64, (3, 3)),
                                                ((24, 24), 36, (4, 4)), ((48, 60), 720, (2, 2)),
                                                ((48, 60), 180, (4, 4)), ((4, 4), 4, (2, 2)), ((3, 7), 21, (1, 1))])
def test_equals_avg_pool2d_when_the_grid_divides(grid, budget, kernel):
    inp = ref.synthetic(grid, d=16, e=8, seed=1)
    h, w = grid
    red = pool(VisualTokens(**inp), PoolParams(budget=budget))
    assert grid_size(budget, grid) == (h // kernel[0], w // kernel[1])
    image = inp["features"].T.reshape(1, -1, h, w)  # [1, d, h, w]
    want = F.avg_pool2d(image, kernel, stride=kernel)[0].flatten(1).T  # [h'·w', d], cells in raster order
    torch.testing.assert_close(red.tokens, want)
    # … and the kept centre patches are those uniform_grid picks
    assert torch.equal(red.kept, uniform_grid(VisualTokens(**inp), BudgetParams(budget=budget)).kept)


def test_cells_are_the_floor_bins():
    """Row i of h' covers [⌊i·h/h'⌋, ⌊(i+1)·h/h'⌋): 7 rows in 5 bins → edges 0, 1, 2, 4, 5, 7."""
    assert bin_of(7, 5).tolist() == [0, 1, 2, 2, 3, 4, 4]
    assert bin_of(24, 8).tolist() == [i // 3 for i in range(24)]
    assert bin_of(5, 1).tolist() == [0] * 5 and bin_of(5, 5).tolist() == list(range(5))
    for size in range(1, 40):
        for bins in range(1, size + 1):
            cells = bin_of(size, bins)
            assert cells.tolist() == sorted(cells.tolist()) and set(cells.tolist()) == set(range(bins))


def test_centre_stays_inside_an_uneven_cell():
    """7×1 into 5×1 cells: uniform_grid's centre ⌊1.5·7/5⌋ = 2 lies outside cell 1 = row [1, 2); pooling's
    representative is the cell's own middle row."""
    inp = ref.synthetic((7, 1), d=4, e=4, seed=0)
    red = pool(VisualTokens(**inp), PoolParams(budget=5))
    assert red.kept.tolist() == [0, 1, 3, 4, 6] and red.groups.tolist() == [0, 1, 2, 2, 3, 4, 4]
    assert uniform_grid(VisualTokens(**inp), BudgetParams(budget=5)).kept.tolist() == [0, 2, 3, 4, 6]


def test_hands_the_nearest_grid_not_the_budget():
    """29 tokens on 24×24: no h'×w' of 29 fits (29 is prime, > 24); 28 and 30 are equally near, 5×6 is closer
    to the square's aspect than 4×7 → 30 tokens, and the stage says so."""
    inp = ref.synthetic((24, 24), d=8, e=4, seed=0)
    red = pool(VisualTokens(**inp), PoolParams(budget=29))
    assert red.n_kept == 30 and red.stages["5×6 grid nearest the budget"] == 30 and red.stages["to LLM"] == 30


def test_budget_one_is_the_mean():  # budget ≥ N: test_reducers.test_a_budget_of_at_least_n_hands_every_token_unchanged
    inp = ref.synthetic((3, 7), d=8, e=8, seed=2)
    vt = VisualTokens(**inp)
    one = pool(vt, PoolParams(budget=1))
    assert one.n_kept == 1 and one.kept.tolist() == [1 * 7 + 3] and one.groups.tolist() == [0] * 21
    torch.testing.assert_close(one.tokens[0], inp["features"].mean(0))
    single = pool(VisualTokens(**ref.synthetic((1, 1), d=8, e=4)), PoolParams(budget=1))
    assert single.kept.tolist() == [0] and single.n_kept == 1


def test_float16_matches_float32_on_the_same_values():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=4)
    half = {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    full = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in half.items()}
    for budget in (1, 64, 144, 500):
        a, b = pool(VisualTokens(**half), PoolParams(budget=budget)), pool(VisualTokens(**full), PoolParams(budget=budget))
        assert a.tokens.dtype == torch.float16 and torch.equal(a.kept, b.kept)
        torch.testing.assert_close(a.tokens.float(), b.tokens, rtol=2e-3, atol=2e-3)


def test_registry_entry():
    entry = REDUCERS["pool"]
    assert entry.needs == () and entry.budget_field == "budget" and entry.label == "Average pooling"
