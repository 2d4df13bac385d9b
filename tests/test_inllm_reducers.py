"""SparseVLM and PyramidDrop's decisions (reducers/sparsevlm.py, pyramiddrop.py, inllm.py) against slow loops
written from their official code (tests/reference.py), on the toy LLM (`reducers.inllm.ToyLLM`) that stands in
for the backend's probe; equivalent tokens; the registry. The real LLM's staged forward: tests/test_inllm.py."""

from __future__ import annotations

import pytest
import torch

from reducers import REDUCERS, PyramidDropParams, SparseVLMParams, VisualTokens, equivalent_tokens, llm_schedule
from reducers.inllm import ToyLLM, accounting
from reducers.pyramiddrop import keep_count
from reducers.sparsevlm import TARGETS, cluster_groups
from tests import reference as ref
from tests.test_reducers import check_contract

GRIDS = [(24, 24), (24, 24), (48, 60), (3, 7), (4, 4), (1, 1), (1, 9)]


def toy_tokens(grid, seed, layers=32):
    inp = ref.synthetic(grid, d=32, e=8, seed=seed, layers=layers)
    toy = ToyLLM(inp["features"], layers, seed=seed)
    return VisualTokens(**dict(inp, lm_probe=toy.run)), toy


def ids_of(record):
    out = []
    for st in record.stages:
        out.append(dict(present=st.present.tolist(), keep=st.present[st.decision.keep].tolist(),
                        merge=[st.present[g].tolist() for g in st.decision.merge]))
    return out


def check_against(red, want, vt):
    record = red.trace.record
    assert ids_of(record) == want["stages"]
    final = want["final"]
    n = vt.n
    assert red.kept.tolist() == [i for i in final if i < n]
    assert red.n_extra == sum(1 for i in final if i >= n)
    assert red.n_kept == len(final) == red.stages["to LLM"]
    counts = [len(s["keep"]) + len(s["merge"]) for s in want["stages"]]
    assert [c for _, c in red.trace.schedule] == [n] + counts


@pytest.mark.parametrize("grid, seed", list(zip(GRIDS, range(len(GRIDS)))), ids=str)
@pytest.mark.parametrize("target, layers", [("192", (2, 6, 15)), ("128", (2, 6, 15)), ("64", (2, 6, 15)),
                                            ("64", (0, 1, 31)), ("192", (5, 9, 20))])
def test_sparsevlm_equals_the_official_loop(grid, seed, target, layers):
    vt, toy = toy_tokens(grid, seed)
    params = SparseVLMParams(target=target, layer1=layers[0], layer2=layers[1], layer3=layers[2])
    red = REDUCERS["sparsevlm"](vt, params)
    want = ref.sparsevlm_staged(toy, layers, TARGETS[target])
    assert red.trace.record.raters.tolist() == want["raters"]
    check_against(red, want, vt)
    check_contract(vt, red, "sparsevlm", params)
    assert params.llm_schedule(vt.n) == red.trace.schedule, "the counts are known before the forward"
    # the recycled stand-in token is the plain mean of the patches it holds (recursively)
    members = red.trace.record.members()
    final = want["final"]
    for j, t in enumerate(i for i in final if i >= vt.n):
        held = members[t]
        torch.testing.assert_close(red.tokens[red.kept.numel() + j], vt.features[held].mean(0))


def test_sparsevlm_official_counts_on_576():
    """576 → 309 → 204 → 113 at retained_tokens 192 (kept + recycled), whatever the image: the counts follow
    from the schedule alone; 'equal token num' (the official counter) is 192.0, equivalent tokens 206.5."""
    vt, _ = toy_tokens((24, 24), 0)
    red = REDUCERS["sparsevlm"](vt)
    assert red.trace.schedule == ((0, 576), (3, 309), (7, 204), (16, 113))
    assert equivalent_tokens(red.trace.schedule, 32) == pytest.approx(206.5)
    assert any("192.0" in line for line in red.trace.readout())
    for target, final in (("128", None), ("64", None)):
        r = REDUCERS["sparsevlm"](vt, SparseVLMParams(target=target))
        assert r.n_kept < int(target)  # far fewer tokens reach the end than retained_tokens says


def test_cluster_groups_equal_the_official_loop():
    gen = torch.Generator().manual_seed(3)
    for m, k in [(1, 1), (2, 1), (13, 2), (83, 9), (154, 16)]:
        x = torch.randn(m, 24, generator=gen)
        got = [g.tolist() for g in cluster_groups(x, k)]
        assert got == ref.cluster_and_merge_groups(x, k)
        assert sorted(i for g in got for i in g) == list(range(m)), "a partition"


@pytest.mark.parametrize("grid, seed", list(zip(GRIDS, range(len(GRIDS)))), ids=str)
@pytest.mark.parametrize("first, spacing, stages, ratio", [(8, 8, 3, 0.5), (2, 5, 4, 0.35), (1, 1, 1, 1.0),
                                                           (3, 9, 3, 0.05), (30, 1, 1, 0.95)])
def test_pyramiddrop_equals_the_official_loop(grid, seed, first, spacing, stages, ratio):
    vt, toy = toy_tokens(grid, seed)
    params = PyramidDropParams(first=first, spacing=spacing, stages=stages, ratio=ratio)
    red = REDUCERS["pyramiddrop"](vt, params)
    want = ref.pyramiddrop_staged(toy, params.layers(), ratio)
    check_against(red, want, vt)
    check_contract(vt, red, "pyramiddrop", params)
    assert params.llm_schedule(vt.n) == red.trace.schedule, "the counts are known before the forward"
    assert red.n_extra == 0 and red.groups is None


def test_pyramiddrop_counts_and_ties():
    assert [keep_count(576, 0.5, s) for s in (1, 2, 3)] == [288, 144, 72]
    assert [keep_count(576, 0.05, s) for s in (1, 2, 3)] == [28, 1, 1]  # official int(…) would give 0 at s = 3
    assert keep_count(7, 0.5, 1) == 3 and keep_count(1, 0.5, 1) == 1
    vt, _ = toy_tokens((24, 24), 1)
    flat = vt.derive(lm_probe=ToyLLM(torch.zeros(576, 32), 32).run)  # every score equal
    red = REDUCERS["pyramiddrop"](flat)
    assert red.kept.tolist() == list(range(72)), "ties: the lowest indices"


def test_layers_beyond_the_llm_are_not_reached_and_said():
    """Both official loops never reach a stage whose layer the LLM lacks (PyramidDrop's ℓ = L crashes there;
    here it is not reached either): the stages before it run, and the readout names the ones not reached."""
    vt, toy = toy_tokens((24, 24), 0, layers=12)
    drop = REDUCERS["pyramiddrop"](vt)
    assert drop.trace.schedule == ((0, 576), (8, 288)) and drop.n_kept == 288
    assert drop.trace.schedule == PyramidDropParams().llm_schedule(576, 12)
    assert any("layers 16, 24 beyond the LLM's 12 layers: never reached" in x for x in drop.trace.readout())
    assert ids_of(drop.trace.record) == ref.pyramiddrop_staged(toy, (8,), 0.5)["stages"]
    sparse = REDUCERS["sparsevlm"](vt)
    assert [c for _, c in sparse.trace.schedule] == [576, 309, 204] and sparse.layer == 7
    assert sparse.trace.schedule == SparseVLMParams().llm_schedule(576, 12)
    assert any("layer 15 beyond the LLM's 12 layers" in x for x in sparse.trace.readout())
    none = REDUCERS["pyramiddrop"](vt, PyramidDropParams(first=12))
    assert none.trace.schedule == ((0, 576),) and none.n_kept == 576 and none.layer == 0
    with pytest.raises(ValueError, match="must increase"):
        SparseVLMParams(layer1=6, layer2=6, layer3=15)
    with pytest.raises(ValueError, match="needs VisualTokens.lm_probe"):
        REDUCERS["sparsevlm"](VisualTokens(features=torch.zeros(4, 2), grid=(2, 2)))


# ----------------------------------------------------------------------------------------------------------
# Equivalent tokens
# ----------------------------------------------------------------------------------------------------------
def test_equivalent_tokens_formula():
    # FastV (K, M of N, L layers): (K·N + (L − K)·M) / L
    for k, m, n, layers in [(2, 288, 576, 32), (3, 64, 576, 40), (1, 1, 16, 2), (32, 10, 576, 32)]:
        assert equivalent_tokens(((0, n), (k, m)), layers) == pytest.approx((k * n + (layers - k) * m) / layers)
    assert equivalent_tokens(((0, 64),), 32) == 64  # before the LLM: the count itself
    # PyramidDrop's official schedule on LLaVA-1.5-7B: (8·576 + 8·288 + 8·144 + 8·72) / 32 = 270
    assert equivalent_tokens(((0, 576), (8, 288), (16, 144), (24, 72)), 32) == 270
    # a segment starting at or beyond L never runs
    assert equivalent_tokens(((0, 100), (40, 1)), 32) == 100
    with pytest.raises(ValueError):
        equivalent_tokens(((0, 1),), 0)


def test_accounting_of_every_kind_of_method():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=2)
    vt = VisualTokens(**inp)
    for name in ("all", "random", "prumerge", "visionzip", "pool"):
        red = REDUCERS[name](vt)
        assert llm_schedule(red) == ((0, red.n_kept),)
        acc = accounting(red, 32)
        assert acc["equivalent_tokens"] == red.n_kept and acc["llm_layers"] == 32
    fast = REDUCERS["fastv"](vt)
    assert fast.n_kept == 64 and accounting(fast, 32)["equivalent_tokens"] == (2 * 576 + 30 * 64) / 32 == 96
    drop = REDUCERS["pyramiddrop"](vt)
    assert accounting(drop, 32)["equivalent_tokens"] == 270
    assert accounting(drop, 32)["llm_schedule"] == [[0, 576], [8, 288], [16, 144], [24, 72]]


def test_registry_entries():
    for name, params in (("sparsevlm", SparseVLMParams), ("pyramiddrop", PyramidDropParams)):
        entry = REDUCERS[name]
        assert entry.needs == ("lm_probe",) and entry.params is params and not entry.budgeted
        assert entry.paper and entry.formula
    assert [n for n, _, _ in REDUCERS["pyramiddrop"].controls] == ["first", "spacing", "stages", "ratio"]
    assert [n for n, _, _ in REDUCERS["sparsevlm"].controls] == ["target", "layer1", "layer2", "layer3"]
    assert PyramidDropParams().layers() == (8, 16, 24)
