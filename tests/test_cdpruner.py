"""CDPruner equals the reference loop written from its official code (tests/reference.py): the relevance with the
official (negated) sign, the kernel, the greedy DPP; 576 and non-square grids, odd budgets, ties."""

from __future__ import annotations

import pytest
import torch

from reducers import REDUCERS, CDPrunerParams, VisualTokens, cdpruner
from reducers.cdpruner import SIGNS, WEIGHTINGS, relevance
from tests import reference as ref

TIE = 1e-9  # the greedy runs in float64 on both sides; only S is shared float32


def check(inp: dict, vt: VisualTokens, budget: int, sign: str = SIGNS[0], weighting: str = WEIGHTINGS[0],
          theta: float = 0.5, sim=None) -> None:
    red = cdpruner(vt, CDPrunerParams(budget=budget, relevance_sign=sign, weighting=weighting, theta=theta))
    want = ref.cdpruner(inp["projected"], inp["joint"], inp["query"], budget, sign == SIGNS[0],
                        theta if weighting == WEIGHTINGS[1] else None, sim=sim, prefer=red.trace.order.tolist(),
                        tie=TIE, hint=red.trace.exhausted_at)
    assert red.trace.order.tolist() == want["order"], (budget, sign, weighting)
    assert red.kept.tolist() == want["kept"] and red.n_kept == min(budget, vt.n)
    assert red.trace.exhausted_at == want["exhausted"]
    assert torch.equal(red.tokens, inp["features"][want["kept"]])
    torch.testing.assert_close(red.trace.relevance.double(), torch.tensor(want["relevance"], dtype=torch.float64), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("grid,d,seed", [((24, 24), 64, 0), ((5, 7), 16, 1), ((3, 7), 16, 5), ((1, 1), 8, 6)],
                         ids=str)
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    vt = VisualTokens(**inp)
    sim = ref.projected_similarity(inp["projected"])
    n = vt.n
    for budget in sorted({1, 7, 64, max(1, n - 1), n, n + 5}):
        check(inp, vt, budget, sim=sim)
    for sign in SIGNS:
        for weighting in WEIGHTINGS:
            check(inp, vt, min(64, n), sign, weighting, sim=sim)
    check(inp, vt, min(7, n), SIGNS[1], WEIGHTINGS[1], theta=0.9, sim=sim)


def test_past_the_rank_takes_the_most_relevant():
    """Projected width 16 < N = 35: the kernel's rank is ≤ 16; the rest follow by descending relevance²."""
    inp = ref.synthetic((5, 7), d=16, e=8, seed=2, p=16)
    vt = VisualTokens(**inp)
    red = cdpruner(vt, CDPrunerParams(budget=30))
    assert red.trace.exhausted_at is not None and red.trace.exhausted_at <= 16
    check(inp, vt, 30)
    rel = red.trace.relevance
    rest = red.trace.order[red.trace.exhausted_at:]
    assert (rel[rest][:-1] >= rel[rest][1:]).all()


def test_ties_duplicate_tokens():
    """Duplicated projections: a duplicate has zero conditional gain once its twin is chosen."""
    inp = ref.synthetic((4, 4), d=16, e=8, seed=3)
    inp["projected"][8:] = inp["projected"][:8]
    inp["joint"][8:] = inp["joint"][:8]
    vt = VisualTokens(**inp)
    for budget in (1, 7, 8, 9, 15, 16):
        check(inp, vt, budget)
    trace = cdpruner(vt, CDPrunerParams(budget=8)).trace
    dpp = trace.order[: trace.exhausted_at].tolist()
    assert len({i % 8 for i in dpp}) == len(dpp), "the DPP never picks both twins"


def test_official_sign_prefers_the_least_similar_patch():
    """The official code negates the cosine: the patch closest to the query gets the smallest weight."""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=4)
    vt = VisualTokens(**inp)
    cos = torch.nn.functional.normalize(inp["joint"], dim=-1) @ inp["query"]
    official = relevance(inp["joint"].double(), inp["query"].double(), SIGNS[0], WEIGHTINGS[0], 0.5)
    paper = relevance(inp["joint"].double(), inp["query"].double(), SIGNS[1], WEIGHTINGS[0], 0.5)
    assert int(official.argmin()) == int(cos.argmax()) and int(paper.argmax()) == int(cos.argmax())
    assert float(official.min()) == pytest.approx(1e-6 / float(cos.max() - cos.min()), rel=1e-5)


def test_constant_relevance_is_a_plain_dpp():
    inp = ref.synthetic((4, 4), d=16, e=8, seed=5)
    inp["joint"] = torch.ones_like(inp["joint"])
    red = cdpruner(VisualTokens(**inp), CDPrunerParams(budget=5))
    assert torch.equal(red.trace.relevance, torch.ones(16)) and red.n_kept == 5


def test_reads_the_query():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=6)
    vt = VisualTokens(**inp)
    a = cdpruner(vt, CDPrunerParams(budget=32))
    b = cdpruner(vt.derive(query=-inp["query"]), CDPrunerParams(budget=32))
    assert not torch.equal(a.kept, b.kept)
    with pytest.raises(ValueError, match="query"):
        cdpruner(VisualTokens(features=inp["features"], projected=inp["projected"], joint=inp["joint"],
                              grid=(24, 24)))


def test_registry_entry():
    entry = REDUCERS["cdpruner"]
    assert entry.budget_field == "budget" and set(entry.needs) == {"projected", "joint", "query"}
