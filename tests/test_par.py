"""PAR equals the reference loop (tests/reference.py, straight from docs/methods.md), stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import PARParams, VisualTokens, par
from reducers.par import retrieval_size
from tests import reference as ref

CASES = ref.CASES
SETTINGS = [  # PARParams keyword arguments
    dict(),
    dict(spatial=True),
    dict(tau=0.0, delta=0.95, cluster_threshold=0.6, retrieval_ratio=1.0),
    dict(tau=0.5, delta=0.8, cluster_threshold=0.9, retrieval_ratio=0.25, spatial=True),
    dict(tau=0.7, delta=0.85, cluster_threshold=0.75, retrieval_ratio=0.07, alpha=0.8),
    dict(tau=0.2, delta=0.99, cluster_threshold=0.85, retrieval_ratio=0.33, alpha=0.0),  # h ties: cluster level
    dict(tau=0.1, delta=0.7, cluster_threshold=0.8, retrieval_ratio=0.5, alpha=1.0),
    dict(tau=1.0, delta=0.9, cluster_threshold=0.8, retrieval_ratio=0.5),  # nothing routed: step 7
    dict(tau=0.3, delta=0.0, cluster_threshold=0.0, retrieval_ratio=0.6, spatial=True),
    dict(tau=0.3, delta=1.0, cluster_threshold=1.0, retrieval_ratio=0.01),
]


def check_equal(inp: dict, settings: dict, vt: VisualTokens | None = None) -> None:
    vt = vt or VisualTokens(**inp)
    red = par(vt, PARParams(**settings))
    want = ref.par(inp["features"], inp["joint"], inp["query"], inp["grid"], **settings)
    np.testing.assert_allclose(red.trace.relevance.double().numpy(), want["relevance"], atol=1e-5)
    assert red.trace.n_clusters == want["n_clusters"]
    assert ref.same_partition(red.trace.labels.tolist(), want["labels"])
    np.testing.assert_allclose(red.trace.hybrid.double().numpy(), want["hybrid"], atol=1e-5)
    assert torch.nonzero(red.trace.retrieved).flatten().tolist() == want["retrieved"]
    assert torch.nonzero(red.trace.routed).flatten().tolist() == want["routed"]
    assert red.kept.tolist() == want["kept"]
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=0, atol=0)
    assert red.stages["retrieved"] == len(want["retrieved"]) == int(red.trace.retrieved.sum())
    assert red.stages["to LLM"] == len(want["kept"])


@pytest.mark.parametrize("grid,d,seed", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=16, seed=seed)
    vt = VisualTokens(**inp)  # one instance: memoised similarity and clusters reused across settings
    for settings in SETTINGS:
        check_equal(inp, settings, vt)
    check_equal(inp, SETTINGS[3])  # and a fresh one


def test_equals_reference_with_tied_relevance():
    """Duplicate joint rows → equal r; α = 0 → equal h inside a cluster: ties go to the lower raster index."""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=7)
    inp["joint"] = inp["joint"][torch.arange(576) // 4 * 4]  # every 4 consecutive patches share r
    for settings in (dict(alpha=0.0), dict(alpha=1.0, retrieval_ratio=0.3), dict(alpha=0.5, tau=0.0), SETTINGS[5]):
        check_equal(inp, settings)


def test_retrieval_size_is_the_ceiling_on_the_set_decimal():
    assert retrieval_size(0.07, 100) == 7  # 0.07·100 = 7.000000000000001 in floating point
    assert retrieval_size(0.5, 576) == 288 and retrieval_size(0.01, 576) == 6 and retrieval_size(0.01, 16) == 1
    assert retrieval_size(1.0, 2880) == 2880 and retrieval_size(0.333, 2880) == 960  # 959.04


def test_redundancy_keeps_the_more_relevant_of_two_twins():
    inp = ref.synthetic((4, 4), d=16, e=8, seed=1)
    inp["features"][5] = inp["features"][9] * 3  # cosine 1 with each other
    vt = VisualTokens(**inp)
    red = par(vt, PARParams(tau=0.0, delta=0.999, retrieval_ratio=1.0, cluster_threshold=1.0))
    winner = 5 if red.trace.relevance[5] > red.trace.relevance[9] else 9
    loser = 14 - winner
    assert winner in red.kept.tolist() and loser not in red.kept.tolist()
    assert bool(red.trace.routed[loser])


def test_stages_and_fields_are_drawable():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=2)
    red = par(VisualTokens(**inp), PARParams(tau=0.4))
    assert list(red.stages) == ["tokens", "retrieved", "routed", "kept", "to LLM"]
    assert red.stages["routed"] == int(red.trace.routed.sum()) and red.stages["kept"] == red.kept.numel()
    assert float(red.trace.relevance.min()) == 0.0 and float(red.trace.relevance.max()) == 1.0
    for field in ("relevance", "hybrid", "labels", "retrieved", "routed"):
        assert getattr(red.trace, field).shape == (576,)
    assert red.trace.labels.max() + 1 == red.trace.n_clusters
    # h = α r + (1 − α) R_c, R_c the mean r of the cluster
    r, labels = red.trace.relevance.double(), red.trace.labels
    cluster_mean = torch.zeros(red.trace.n_clusters, dtype=torch.float64).index_add_(0, labels, r) / torch.bincount(labels)
    torch.testing.assert_close(red.trace.hybrid.double(), 0.5 * r + 0.5 * cluster_mean[labels], rtol=0, atol=1e-6)
    assert bool((red.trace.hybrid[red.trace.routed] >= 0.4).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_redundancy_row_by_row_equals_the_block_gather(dtype):
    """The CPU path (one similarity row per kept candidate) and the GPU path (the R×R block) keep the same
    candidates, including at thresholds equal to similarity values (compared exactly, see `at_least`)."""
    from reducers.par import suppress_redundant

    gen = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(300, 8, generator=gen), dim=-1)
    sim = (x @ x.T).to(dtype)
    for r in (1, 17, 300):
        order = torch.randperm(300, generator=gen)[:r]
        for delta in (-1.0, 0.2, 0.5, 0.9, 1.0, float(sim[order[0], order[-1]])):
            rows = suppress_redundant(sim, order, delta, block=False)
            blocks = suppress_redundant(sim, order, delta, block=True)
            assert torch.equal(rows, blocks), (r, delta)
            assert rows[0] == order[0]
