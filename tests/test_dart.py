"""DART inside the LLM (reducers/dart.py) equals the slow loop written from its official code
(tests/reference.py::dart_official) on the toy LLM that stands in for the backend's probe: pivots by the L1 norm of
layer K−1's keys (image and text), each pivot in a Python set's order taking the least-similar image tokens;
576 and non-square grids, odd budgets, ties, where the image sits in the prompt, the official count. The real
LLM's forward: tests/test_inllm.py."""

from __future__ import annotations

import pytest
import torch

from reducers import REDUCERS, DARTParams, VisualTokens, equivalent_tokens
from reducers.dart import DARTTrace
from reducers.inllm import StagedTrace, ToyLLM
from tests import reference as ref
from tests.test_reducers import check_contract

LAYERS = 32


def toy_tokens(grid, seed, image_start=5, dup=False):
    inp = ref.synthetic(grid, d=32, e=8, seed=seed, layers=LAYERS)
    if dup:  # duplicated tokens: equal key norms and equal cosines
        half = inp["features"].shape[0] // 2
        inp["features"][half:2 * half] = inp["features"][:half]
    toy = ToyLLM(inp["features"], LAYERS, seed=seed, image_start=image_start)
    return VisualTokens(**dict(inp, lm_probe=toy.run)), toy


def official(toy, params: DARTParams):
    """The official loop on the toy's keys and states laid out as a sequence (text before the image: zeros)."""
    n, s = toy.features.shape[0], toy.image_start
    states = torch.cat([toy.features.float(), toy.text])
    keys = states @ toy.key_maps[params.layer - 1]
    pad = torch.zeros(s, states.shape[1])
    return ref.dart_official(torch.cat([torch.zeros(s, keys.shape[1]), keys]), torch.cat([pad, states]), s, n,
                             params.budget, params.image_pivots, params.text_pivots, params.official_count)


def check(vt, toy, params):
    red = REDUCERS["dart"](vt, params)
    want = official(toy, params)
    d = red.trace.decision
    s = toy.image_start
    assert [s + r for r in d.order.tolist()] == want["order"], params
    assert [s + o if o >= 0 else -1 for o in d.owner.tolist()] == want["owner"], params
    assert red.kept.tolist() == want["kept"]
    assert torch.equal(red.tokens, vt.features[red.kept])
    if not params.official_count:
        assert red.n_kept == min(params.budget, vt.n), "exactly the budget (capped at N)"
    assert red.trace.schedule == ((0, vt.n), (params.layer, red.n_kept)) == params.llm_schedule(vt.n, LAYERS), \
        "the count is known before the forward (matching on equivalent tokens)"
    return red


@pytest.mark.parametrize("grid, seed", [((24, 24), 0), ((24, 24), 1), ((5, 7), 2), ((3, 7), 3), ((1, 1), 4),
                                        ((1, 9), 5)], ids=str)
def test_equals_the_official_loop(grid, seed):
    vt, toy = toy_tokens(grid, seed)
    n = vt.n
    for budget in sorted({1, 7, 64, 128, max(1, n - 1), n, n + 5}):
        for official_count in (False, True):
            for pivots in ((4, 4), (1, 0), (3, 6)):
                params = DARTParams(budget=budget, image_pivots=pivots[0], text_pivots=pivots[1],
                                    official_count=official_count)
                red = check(vt, toy, params)
                check_contract(vt, red, "dart", params)


def test_the_pivot_order_is_the_official_sets_wherever_the_image_sits():
    """The pivots go in CPython's set order of their sequence positions, so it moves with the image's start."""
    orders = set()
    for image_start in (0, 5, 13, 22, 35, 1000):
        vt, toy = toy_tokens((24, 24), 6, image_start=image_start)
        red = check(vt, toy, DARTParams(budget=128, layer=3))
        orders.add(tuple(red.trace.decision.order.tolist()))
    assert len(orders) > 1


def test_ties():
    vt, toy = toy_tokens((24, 24), 7, dup=True)
    for budget in (7, 64, 300):
        check(vt, toy, DARTParams(budget=budget))


def test_large_non_square_grid():
    vt, toy = toy_tokens((48, 60), 8)
    check(vt, toy, DARTParams(budget=128))


def test_official_count_and_equivalent_tokens():
    """T = 128: 4 image pivots + 8 pivots × ⌊128/8⌋ = 132 image tokens (the official scripts' setting); T = N:
    the official topk would crash (8·72 > 572 candidates), here the last pivots take what is left."""
    vt, toy = toy_tokens((24, 24), 9)
    red = check(vt, toy, DARTParams(budget=128, official_count=True))
    assert red.n_kept == 132 and red.trace.decision.counts == (16,) * 8
    assert check(vt, toy, DARTParams(budget=128)).n_kept == 128
    assert check(vt, toy, DARTParams(budget=576, official_count=True)).n_kept == 576
    # (K·N + (L − K)·M) / L via the staged schedule
    assert equivalent_tokens(red.trace.schedule, LAYERS) == pytest.approx((2 * 576 + 30 * 132) / 32)
    assert any("equivalent tokens" in line for line in red.trace.readout())


def test_trace_is_a_staged_trace_the_tools_ask():
    vt, _ = toy_tokens((24, 24), 10)
    red = REDUCERS["dart"](vt, DARTParams(budget=64))
    assert isinstance(red.trace, DARTTrace) and isinstance(red.trace, StagedTrace)
    assert red.trace.replay() == (DARTParams(budget=64).plan(), red.trace.record)
    label, heat = red.trace.heat()
    assert "L1 norm" in label and "layer 1" in label and heat.shape == (576,)
    assert [name for name, _ in red.trace.lines()] == ["image pivot cut"]
    cols = red.trace.per_patch()
    assert {"stage1_score", "dropped_at_stage", "dart_chosen_by", "dart_cosine"} <= set(cols)
    assert all(v.shape == (576,) for v in cols.values())
    d = red.trace.decision
    pivot = next(r for r in d.order.tolist() if r < 576)
    assert any("image pivot" in line for line in red.trace.inspect(pivot))
    chosen = next(i for i in red.kept.tolist() if int(d.owner[i]) != i)
    assert any("chosen by the pivot" in line for line in red.trace.inspect(chosen))
    dropped = next(i for i in range(576) if int(d.owner[i]) < 0)
    assert any("dropped" in line for line in red.trace.inspect(dropped))
    # each chosen token is among the least similar to its pivot of the candidates it was chosen from
    assert (d.owner >= 0).sum() == red.n_kept


def test_a_layer_beyond_the_llm_is_not_reached():
    inp = ref.synthetic((5, 7), d=32, e=8, seed=11, layers=LAYERS)
    vt = VisualTokens(**dict(inp, lm_probe=ToyLLM(inp["features"], 10, seed=11).run))  # a 10-layer LLM
    red = REDUCERS["dart"](vt, DARTParams(budget=7, layer=10))  # K = L: the official loop never meets layer K
    assert red.n_kept == 35 and red.trace.schedule == ((0, 35),)
    assert any("never meets it" in line for line in red.trace.readout())


def test_needs_the_lm_probe():
    entry = REDUCERS["dart"]
    assert entry.needs == ("lm_probe",) and entry.budget_field == "budget"
    assert DARTParams().layer == 2 and (DARTParams().image_pivots, DARTParams().text_pivots) == (4, 4)
