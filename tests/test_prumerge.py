"""PruMerge / PruMerge+ equal the reference loop (tests/reference.py, straight from docs/methods.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import PruMergeParams, VisualTokens, prumerge
from reducers.prumerge import iqr_fence
from tests import reference as ref

CASES = ref.CASES + [((4, 4), 8, 7)]
SETTINGS = [  # (plus, merge, iqr multiplier, neighbours)
    (False, True, 1.5, 32),
    (True, True, 1.5, 32),
    (True, False, 1.5, 32),
    (False, False, 0.0, 32),
    (True, True, 0.5, 8),
    (False, True, 3.0, 256),
    (True, True, 5.0, 1),
]


def check_equal(inp: dict, plus: bool, merge: bool, k: float, neighbours: int) -> None:
    vt = VisualTokens(**inp)
    red = prumerge(vt, PruMergeParams(iqr_multiplier=k, merge=merge, neighbours=neighbours), plus=plus)
    want = ref.prumerge(inp["features"], inp["keys"], inp["cls_attn"], k, plus, merge, neighbours)
    assert red.trace.outliers.tolist() == want["outliers"]
    assert red.trace.samples.tolist() == want["samples"]
    assert red.kept.tolist() == want["kept"]
    assert red.trace.q1 == pytest.approx(want["q1"], rel=1e-12, abs=1e-15)
    assert red.trace.q3 == pytest.approx(want["q3"], rel=1e-12, abs=1e-15)
    assert red.trace.fence == pytest.approx(want["fence"], rel=1e-12, abs=1e-15)
    assert red.extra_token == (merge and len(want["kept"]) < vt.n)
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=1e-5, atol=1e-5)
    if merge and vt.n > 1:
        assert [set(row) for row in red.trace.merge_index.tolist()] == want["neighbours"]
        a = inp["cls_attn"]
        torch.testing.assert_close(red.trace.merge_weight, a[red.trace.merge_index])
    stages = {"tokens": vt.n, "outliers": len(want["outliers"])}
    if plus:
        stages["+ samples"] = len(want["kept"])
    stages["to LLM"] = len(want["tokens"])
    assert red.stages == stages


@pytest.mark.parametrize("grid,d,seed", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    settings = SETTINGS if d <= 64 else SETTINGS[:3]
    if grid == (48, 60):
        settings = SETTINGS[:4]  # the loop is slow at N = 2880; the other settings are covered above
    for plus, merge, k, neighbours in settings:
        check_equal(inp, plus, merge, k, neighbours)


def test_equals_reference_with_ties_in_attention():
    """Quantised attention: many equal values, outliers ordered by descending attention then index."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=11)
    inp["cls_attn"] = (inp["cls_attn"] * 2000).round() / 2000
    for plus in (False, True):
        for k in (0.0, 0.5, 1.5):
            check_equal(inp, plus, True, k, 32)


def test_fence_is_numpy_percentile():
    for seed in range(5):
        a = ref.synthetic((24, 24), d=4, e=4, seed=seed)["cls_attn"]
        q1, q3, fence = iqr_fence(a, 1.5)
        want1, want3 = np.percentile(a.double().numpy(), [25, 75])
        assert q1 == pytest.approx(want1, rel=1e-12) and q3 == pytest.approx(want3, rel=1e-12)
        assert fence == pytest.approx(want3 + 1.5 * (want3 - want1), rel=1e-12)


def test_official_sample_stride_and_range():
    """PruMerge+ samples {0, s, 2s, … < N − 1}, s = int(int(1/r)/3) (official: arange(0, 575, s))."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=0)
    red = prumerge(VisualTokens(**inp), PruMergeParams(), plus=True)
    r = red.trace.outliers.numel() / 576
    s = int(int(1 / r) / 3)
    official = [x for x in range(0, 575, s) if x not in red.trace.outliers.tolist()]
    assert red.trace.samples.tolist() == official
    assert red.kept.numel() == len(set(red.kept.tolist()))


def test_merge_picks_the_most_key_similar_others():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=3)
    vt = VisualTokens(**inp)
    red = prumerge(vt, PruMergeParams(), plus=True)
    sim = vt.normalised_keys @ vt.normalised_keys.T
    for i, row in zip(red.kept.tolist(), red.trace.merge_index):
        chosen = torch.zeros(576, dtype=torch.bool)
        chosen[row] = True
        others = ~chosen
        others[i] = False
        assert sim[i, row].min() >= sim[i, others].max()


def test_no_aggregate_token_when_every_patch_is_kept():
    """PruMerge+ at k = 0 can keep every patch (the app's coffee.jpg does): then there is nothing pruned to
    aggregate, and the LLM gets N merged tokens, not N + 1 with a zero one."""
    inp = ref.synthetic((4, 4), d=8, e=8, seed=0)
    # fence = Q3: the top 4 of 16 are outliers, r = 1/4, stride int(4/3) = 1 samples 0…14
    inp["cls_attn"] = torch.linspace(0.01, 0.2, 16)  # patch 15 is an outlier → all 16 kept
    red = prumerge(VisualTokens(**inp), PruMergeParams(iqr_multiplier=0.0), plus=True)
    assert sorted(red.kept.tolist()) == list(range(16))
    assert not red.extra_token and red.n_kept == 16 == red.stages["to LLM"] and red.trace.merge_index.shape == (16, 15)
    check_equal(inp, True, True, 0.0, 32)
    inp["cls_attn"] = inp["cls_attn"].flip(0)  # patch 15 is neither outlier nor sample → pruned
    red = prumerge(VisualTokens(**inp), PruMergeParams(iqr_multiplier=0.0), plus=True)
    assert sorted(red.kept.tolist()) == list(range(15))
    assert red.extra_token and red.n_kept == 16
    torch.testing.assert_close(red.tokens[-1], inp["cls_attn"][15] * inp["features"][15])
    check_equal(inp, True, True, 0.0, 32)


def test_memoised_neighbour_rows_equal_a_fresh_computation():
    """A slider move on the same VisualTokens computes only the key-neighbour rows of patches it has not seen:
    whatever order the IQR multiplier moves in, every move equals the reference on a fresh VisualTokens."""
    inp = ref.synthetic((24, 24), d=64, e=8, seed=5)
    vt = VisualTokens(**inp)
    for k, plus in [(3.0, False), (1.5, True), (0.0, True), (5.0, False), (0.5, False), (1.5, True)]:
        check_equal(inp, plus, True, k, 32)  # fresh
        red = prumerge(vt, PruMergeParams(iqr_multiplier=k), plus=plus)  # shared memo
        fresh = prumerge(VisualTokens(**inp), PruMergeParams(iqr_multiplier=k), plus=plus)
        assert red.kept.tolist() == fresh.kept.tolist()
        assert [set(r) for r in red.trace.merge_index.tolist()] == [set(r) for r in fresh.trace.merge_index.tolist()]
        torch.testing.assert_close(red.tokens, fresh.tokens)
    rows, done = vt.__dict__["_key_rows"].table[("key_neighbours", 32)]
    assert rows.shape == (576, 32) and done.any()
