"""Every reducer in REDUCERS: the shared contract, edge cases, bad input, determinism, devices, dtypes.

Method-specific equality with the reference loops lives in each method's own test_<method>.py.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from reducers import (
    REDUCERS,
    BudgetParams,
    DivPruneParams,
    FastVParams,
    PoolParams,
    ToMeParams,
    VisionZipParams,
    RandomParams,
    ClusterSweep,
    PARParams,
    PruMergeParams,
    Reduction,
    VisualTokens,
    components,
    uniform_grid,
)
from reducers.base import controls
from reducers.baselines import grid_size
from tests import reference as ref

METHODS = sorted(REDUCERS)
STAGED = ("sparsevlm", "pyramiddrop", "dart")  # pruned inside the LLM in stages (reducers/inllm.py)
GRIDS = [(1, 1), (1, 7), (4, 4), (5, 3), (24, 24)]


def tokens(grid=(24, 24), d=32, seed=0, **kw) -> VisualTokens:
    return VisualTokens(**ref.synthetic(grid, d=d, e=16, seed=seed, **kw))


def random_params(method: str, rng: random.Random):
    """A parameter set for `method` drawn from its sliders' ranges (on the slider's step), booleans at random."""
    cls = REDUCERS[method].params
    values = {}
    for name, spec, _ in controls(cls):
        if spec.kind == "slider":
            top = min(spec.maximum, 700) if spec.budget else spec.maximum
            steps = int(round((top - spec.minimum) / spec.step))
            value = spec.minimum + rng.randint(0, steps) * spec.step
            values[name] = int(round(value)) if spec.integer else round(value, 6)
        elif spec.kind == "toggle":
            values[name] = rng.random() < 0.5
        elif spec.kind == "choice":
            values[name] = rng.choice(spec.options)
        elif spec.kind == "number":
            values[name] = rng.randint(int(spec.minimum), 1000)
    return cls(**values)


def fitting_params(method: str, rng: random.Random):
    """`random_params`, redrawn until the set is valid (SparseVLM's layers increase)."""
    for _ in range(10_000):
        try:
            return random_params(method, rng)
        except ValueError:
            continue
    raise AssertionError(f"no valid random parameters for {method}")


def merged_token(vt: VisualTokens, red: Reduction, i: int) -> torch.Tensor:
    """What PruMerge's i-th token must be from its recorded neighbours: X_i + Σ_j a_j X_j."""
    x, a = vt.features.double(), vt.cls_attn.double()
    nbr = red.trace.merge_index[i]
    return x[red.kept[i]] + (a[nbr, None] * x[nbr]).sum(0)


def check_contract(vt: VisualTokens, red: Reduction, method: str, params) -> None:
    """The invariants every Reduction keeps (docs/methods.md "Contract")."""
    n = vt.n
    kept = red.kept
    assert kept.dtype == torch.long and kept.ndim == 1
    assert kept.device == vt.features.device
    if method == "none":  # the text-only floor: nothing at all
        assert kept.numel() == 0 and red.tokens.shape == (0, vt.features.shape[1]) and red.n_extra == 0
        assert red.stages == {"tokens": n, "to LLM": 0}
    else:
        if method in STAGED:  # a stage may keep recycled tokens only (SparseVLM on a tiny grid)
            assert red.n_kept >= 1, "at least one token is always kept"
        else:
            assert kept.numel() >= 1, "at least one token is always kept"
        assert not kept.numel() or (int(kept.min()) >= 0 and int(kept.max()) < n), "kept indices in range"
    assert kept.unique().numel() == kept.numel(), "kept indices unique"
    assert red.grid == vt.grid and red.n_tokens == n
    assert red.tokens.dtype == vt.features.dtype and red.tokens.device == vt.features.device
    assert red.tokens.shape[1] == vt.features.shape[1]
    assert red.n_kept == red.tokens.shape[0] == kept.numel() + red.n_extra
    assert 0 <= red.n_lead <= red.n_extra, "leading tokens are counted among the extra tokens"
    assert red.patch_tokens.shape[0] == kept.numel()
    assert red.extra_token == (red.n_extra > 0)
    assert red.n_kept <= n, "never more tokens than no reduction at all"
    stages = list(red.stages.items())
    assert stages[0] == ("tokens", n)
    assert stages[-1] == ("to LLM", red.n_kept), "the funnel ends with what the LLM receives"
    assert red.kept_mask.sum() == kept.numel()
    summary = red.summary()
    assert summary["n_kept"] == red.n_kept and summary["n_tokens"] == n
    tol = dict(rtol=4e-3, atol=4e-3) if vt.features.dtype == torch.float16 else dict(rtol=1e-4, atol=1e-5)
    m = kept.numel()
    if method.startswith("prumerge"):
        pruned = torch.ones(n, dtype=torch.bool)
        pruned[kept] = False
        assert red.extra_token == (params.merge and bool(pruned.any())), "an aggregate only of something pruned"
    if method.startswith("prumerge") and red.trace.merge_index is not None:  # merged: X_i + Σ_j a_j X_j
        k = min(params.neighbours, n - 1)
        assert red.trace.merge_index.shape == (m, k)
        assert not (red.trace.merge_index == kept[:, None]).any(), "a kept token is not its own neighbour"
        for i in range(m):
            torch.testing.assert_close(red.tokens[i].double(), merged_token(vt, red, i), **tol)
    elif red.groups is not None and not red.n_extra:  # merged groups that partition the patches (ToMe, pooling)
        check_partition(vt, red, tol)
    else:  # tokens[n_lead + i] is the kept patch's own feature row
        assert torch.equal(red.patch_tokens, vt.features[kept])
    if method.startswith("prumerge") and red.extra_token:  # PruMerge: Σ_{j pruned} a_j X_j, last
        assert red.n_extra == 1
        extra = (vt.cls_attn.double()[pruned, None] * vt.features.double()[pruned]).sum(0)
        torch.testing.assert_close(red.tokens[-1].double(), extra, **tol)
    if red.groups is not None and red.n_extra:  # kept patches alone, appended tokens merge groups (VisionZip)
        check_groups(vt, red, tol)
    if method in ("random", "top-attention", "visionzip", "divprune"):  # exact budget, capped at N
        assert red.n_kept == min(params.budget, n)
    if method in ("cdpruner", "vispruner") or (method == "dart" and not params.official_count
                                                and red.trace.record.stages):  # DART: layer K reached
        assert red.n_kept == kept.numel() == min(params.budget, n), "exactly the budget (capped at N)"
    if method == "vispruner" and params.official_count:
        assert min(params.budget, n) - red.n_kept in (0, 1), "the official rounds drop at most one token too many"
    if method in ("cdpruner", "vispruner") or (method == "dart" and red.trace.record.stages):
        assert red.n_extra == 0 and red.trace is not None
        label, heat = red.trace.heat()
        assert label and heat.shape == (n,)
        assert all(v.shape == (n,) for v in red.trace.per_patch().values())
        assert red.trace.inspect(int(kept[0])) and red.trace.readout()
    if method in ("visionzip", "divprune", "cdpruner", "dart", "vispruner"):
        assert torch.equal(kept, kept.sort().values), "raster order, as the official code hands them over"
    if method == "visionzip":
        check_visionzip(vt, red, params)
    if method == "par":
        assert torch.equal(kept, kept.sort().values), "PAR hands tokens over in raster order"
        mask = red.kept_mask
        assert not (mask & ~red.trace.routed).any(), "kept ⊆ routed"
        assert not (red.trace.routed & ~red.trace.retrieved).any(), "routed ⊆ retrieved"
        if kept.numel() > 1:
            s = vt.feature_similarity[kept][:, kept] - 3 * torch.eye(kept.numel())
            assert s.max() < params.delta, "no two PAR-kept tokens with similarity ≥ δ"
    if method in ("random", "top-attention", "tome", "fastv"):
        assert kept.numel() == red.n_kept == min(params.budget, n), "exactly the budget (capped at N)"
    if method == "pool":  # the h'×w' grid nearest the budget
        gh, gw = grid_size(min(params.budget, n), vt.grid)
        assert red.n_kept == gh * gw and red.stages[f"{gh}×{gw} grid nearest the budget"] == gh * gw
    if method == "fastv":
        assert red.layer == params.layer and torch.equal(kept, kept.sort().values)
        assert red.stages == {"tokens": n, f"LLM layers < {params.layer}": n, "to LLM": red.n_kept}
        score = vt.lm_attn[params.layer - 1, ("last", "mean").index(params.rank)].float()
        dropped = ~red.kept_mask
        if dropped.any():
            assert score[kept].min() >= score[dropped].max(), "no dropped token got more attention"
    elif method in STAGED:  # in the LLM, in stages: the last segment's first layer, its count the LLM's
        schedule = red.trace.schedule
        assert red.layer == schedule[-1][0] and schedule[0] == (0, n) and schedule[-1][1] == red.n_kept
        assert torch.equal(kept, kept.sort().values), "kept patches in their original order"
    else:
        assert red.layer == 0, "every other method reduces before the LLM"
    if method in ("tome", "pool"):
        assert red.n_extra == 0 and red.groups is not None
    if method == "tome":
        assert torch.equal(kept, kept.sort().values), "ToMe's tokens in raster order of their representatives"
        assert red.stages == {"tokens": n, "to LLM": red.n_kept}
    if method in ("random", "uniform", "top-attention"):  # uniform: the h'×w' grid nearest the budget
        assert torch.equal(kept, kept.sort().values)
    if method == "all":
        assert torch.equal(kept, torch.arange(n))


def check_partition(vt: VisualTokens, red: Reduction, tol: dict) -> None:
    """Merge groups partition the patches: every patch in exactly one token, each token's representative in
    its own group, weights 1/size summing to 1 per token, tokens[i] = Σ_{p in group i} w_p X_p, and the
    size-weighted sum of the tokens = the sum of all patch features."""
    n, m = vt.n, red.n_kept
    groups, weight = red.groups, red.group_weight
    assert groups.shape == (n,) and groups.dtype == torch.long and groups.device == vt.features.device
    assert weight.shape == (n,) and weight.is_floating_point()
    assert int(groups.min()) >= 0 and int(groups.max()) < m, "every patch is held by one token"
    size = torch.bincount(groups, minlength=m)
    assert int(size.min()) >= 1 and int(size.sum()) == n, "sizes ≥ 1 sum to N"
    assert torch.equal(groups[red.kept], torch.arange(m, device=groups.device)), "kept[i] lies in group i"
    torch.testing.assert_close(weight.double(), 1.0 / size[groups].double())
    torch.testing.assert_close(torch.zeros(m, dtype=torch.float64).index_add_(0, groups.cpu(), weight.double().cpu()),
                               torch.ones(m, dtype=torch.float64))
    x = vt.features.double().cpu()
    want = torch.zeros(m, x.shape[1], dtype=torch.float64).index_add_(0, groups.cpu(), weight.double().cpu()[:, None] * x)
    torch.testing.assert_close(red.tokens.double().cpu(), want, **tol)
    total = (size.double().cpu()[:, None] * red.tokens.double().cpu()).sum(0)
    torch.testing.assert_close(total, x.sum(0), rtol=tol["rtol"], atol=tol["atol"] * n)


def check_groups(vt: VisualTokens, red: Reduction, tol: dict) -> None:
    """`groups`/`group_weight`: [N], positions in range; tokens[i] (i < M) holds kept[i] alone with weight 1; every
    other position a patch maps to is Σ w_i X_i of the patches mapped to it."""
    n, m = vt.n, red.kept.numel()
    groups, weight = red.groups, red.group_weight
    assert groups.shape == (n,) and groups.dtype == torch.long and weight.shape == (n,) and weight.is_floating_point()
    assert int(groups.min()) >= -1 and int(groups.max()) < red.n_kept
    assert (weight[groups < 0] == 0).all() and (weight[groups >= 0] > 0).all()
    lead = red.n_lead
    assert torch.equal(groups[red.kept], lead + torch.arange(m)) and (weight[red.kept] == 1).all()
    assert not ((groups < lead + m) & (groups >= 0) & ~red.kept_mask).any(), "a kept patch's token holds it alone"
    assert not (groups[groups >= 0] < lead).any(), "a leading token holds no patch"
    x = vt.features.double()
    for pos in sorted(set(groups[groups >= lead + m].tolist())):
        members = groups == pos
        want = (weight[members].double()[:, None] * x[members]).sum(0)
        torch.testing.assert_close(red.tokens[pos].double(), want, **tol)


def check_visionzip(vt: VisualTokens, red: Reduction, params) -> None:
    """VisionZip: the split, the CLS token after the dominant patches, contextual groups anchored on their targets
    (weight 1) whose members weigh 1/|members| each, every patch in exactly one token unless C = 0."""
    n, m = vt.n, red.kept.numel()
    dominant, cls, c = ref.visionzip_split(params.budget, n, params.dominant_share, params.cls_token)
    assert red.stages == {"tokens": n, "dominant": dominant, "contextual": c, "to LLM": dominant + c}
    assert m == dominant - cls and red.n_extra == cls + c and red.trace.targets.numel() == c
    assert red.n_lead == cls
    if cls:
        assert torch.equal(red.tokens[0], vt.cls_feature), "the CLS token leads, as in the official LLaVA-1.5 code"
    first = cls + m
    assert torch.equal(red.groups[red.trace.targets], first + torch.arange(c)) and (red.group_weight[red.trace.targets] == 1).all()
    assert not (red.kept_mask[red.trace.targets]).any()
    if c:
        assert (red.groups >= 0).all(), "with contextual tokens every patch reaches the LLM in some token"
        assert not (red.groups[~red.kept_mask] < first).any()
    else:
        assert (red.groups[~red.kept_mask] == -1).all()
    for j in range(c):
        members = (red.groups == first + j)
        members[red.trace.targets[j]] = False
        if members.any():
            assert float(red.group_weight[members].double().sum()) == pytest.approx(1.0, abs=1e-6)
            assert (red.group_weight[members] == red.group_weight[members][0]).all(), "a plain mean"


@pytest.mark.parametrize("method", METHODS)
def test_contract_on_random_inputs(method):
    rng = random.Random(method)
    for trial in range(12):
        grid = GRIDS[trial % len(GRIDS)]
        vt = tokens(grid, seed=trial)
        params = REDUCERS[method].params() if trial == 0 else fitting_params(method, rng)
        red = REDUCERS[method](vt, params)
        assert red.method == method
        check_contract(vt, red, method, params)


@pytest.mark.parametrize("method", METHODS)
def test_default_params_and_none_agree(method):
    vt = tokens(seed=3)
    a, b = REDUCERS[method](vt), REDUCERS[method](vt, REDUCERS[method].params())
    assert torch.equal(a.kept, b.kept) and torch.equal(a.tokens, b.tokens)


def test_registry_names_and_needs():
    assert {"prumerge", "prumerge+", "par", "random", "uniform", "top-attention", "all", "tome", "pool", "none",
            "fastv"} <= set(REDUCERS)
    for name, entry in REDUCERS.items():
        assert entry.label and entry.summary
        vt = tokens((4, 4))
        bare = VisualTokens(features=vt.features, grid=vt.grid)
        if entry.needs:
            with pytest.raises(ValueError, match="needs VisualTokens"):
                entry(bare)
        else:
            assert entry(bare).n_kept >= (0 if name == "none" else 1)


# ----------------------------------------------------------------------------------------- PruMerge laws
def test_larger_iqr_multiplier_never_keeps_more_outliers():
    for seed in range(4):
        vt = tokens(seed=seed)
        counts = [REDUCERS["prumerge"](vt, PruMergeParams(iqr_multiplier=k, merge=False)).trace.outliers.numel()
                  for k in np.arange(0.0, 5.01, 0.25)]
        assert all(a >= b for a, b in zip(counts, counts[1:])), counts
        assert counts[0] > counts[-1]


def test_prumerge_plus_keeps_every_prumerge_outlier():
    for seed in range(4):
        for k in (0.0, 1.5, 4.0):
            vt = tokens((5, 3) if seed == 3 else (24, 24), seed=seed)
            plain = REDUCERS["prumerge"](vt, PruMergeParams(iqr_multiplier=k))
            plus = REDUCERS["prumerge+"](vt, PruMergeParams(iqr_multiplier=k))
            assert set(plain.trace.outliers.tolist()) <= set(plus.kept.tolist())
            assert torch.equal(plus.kept[: plain.trace.outliers.numel()], plain.trace.outliers), "outliers come first"
            assert plus.kept.numel() >= plain.kept.numel()


# ----------------------------------------------------------------------------------------- baselines
def test_baselines_match_reference_loops():
    for grid in [(1, 1), (3, 7), (4, 4), (24, 24), (48, 60)]:
        vt = tokens(grid, seed=1)
        for budget in sorted({1, 2, 5, 11, 64, 144, grid[0] * grid[1], 10_000}):
            p = BudgetParams(budget=budget)
            top = REDUCERS["top-attention"](vt, p)
            assert top.kept.tolist() == ref.top_attention(vt.features, vt.cls_attn, budget)["kept"]
            uni = REDUCERS["uniform"](vt, p)
            assert uni.kept.tolist() == sorted(ref.uniform(vt.features, grid, budget)["kept"])
        assert REDUCERS["all"](vt).kept.tolist() == ref.identity(vt.features)["kept"]


def test_uniform_spreads_one_patch_per_cell():
    vt = tokens((24, 24))
    red = uniform_grid(vt, BudgetParams(budget=36))
    rows, cols = red.kept // 24, red.kept % 24
    assert red.kept.numel() == 36
    assert sorted(set(rows.tolist())) == [2, 6, 10, 14, 18, 22] == sorted(set(cols.tolist()))


def test_none_keeps_nothing():
    none = REDUCERS["none"]
    assert none.needs == () and not none.budgeted and none.label == "No image (text only)"
    for grid in ((1, 1), (24, 24)):
        red = none(VisualTokens(**ref.synthetic(grid, d=8, e=4, dtype=torch.float16)))
        assert red.kept.numel() == 0 and red.kept.dtype == torch.long and red.n_kept == 0
        assert red.tokens.shape == (0, 8) and red.tokens.dtype == torch.float16
        assert red.stages == {"tokens": grid[0] * grid[1], "to LLM": 0} and red.summary()["compression"] == 1.0
        assert not red.kept_mask.any()


def test_random_is_seeded():
    vt = tokens()
    a = REDUCERS["random"](vt, RandomParams(budget=50, seed=7))
    b = REDUCERS["random"](tokens(), RandomParams(budget=50, seed=7))
    c = REDUCERS["random"](vt, RandomParams(budget=50, seed=8))
    assert torch.equal(a.kept, b.kept) and not torch.equal(a.kept, c.kept)
    assert a.kept.numel() == 50


# ----------------------------------------------------------------------------------------- edge cases
# Budget methods that hand every token unchanged, in raster order, once the budget covers the image (VisionZip
# does not: its contextual tokens are still merges).
IDENTITY_AT_FULL_BUDGET = ["cdpruner", "dart", "divprune", "fastv", "pool", "random", "tome", "top-attention",
                           "uniform", "vispruner"]


@pytest.mark.parametrize("method", IDENTITY_AT_FULL_BUDGET)
@pytest.mark.parametrize("grid", [(3, 7), (5, 3)])
def test_a_budget_of_at_least_n_hands_every_token_unchanged(method, grid):
    inp = ref.synthetic(grid, d=8, e=8, seed=2)
    vt = VisualTokens(**inp)
    entry = REDUCERS[method]
    for budget in (vt.n, vt.n + 1, 100_000):
        red = entry(vt, entry.params(**{entry.budget_field: budget}))
        assert red.kept.tolist() == list(range(vt.n)) and torch.equal(red.tokens, inp["features"])
        if red.groups is not None:  # merging methods: every patch its own group, with weight 1
            assert red.groups.tolist() == list(range(vt.n)) and red.group_weight.tolist() == [1.0] * vt.n


@pytest.mark.parametrize("method", METHODS)
def test_single_token(method):
    vt = tokens((1, 1))
    red = REDUCERS[method](vt)
    check_contract(vt, red, method, REDUCERS[method].params())
    if method == "sparsevlm":  # official k = min(target, n − 1) = 0: the one token is recycled into itself
        assert red.kept.tolist() == [] and red.n_extra == 1 and red.groups.tolist() == [0]
        return
    assert red.kept.tolist() == ([] if method == "none" else [0])


@pytest.mark.parametrize("method", ["prumerge", "prumerge+", "top-attention", "visionzip"])
def test_constant_attention_keeps_a_token(method):
    inp = ref.synthetic((24, 24), d=32, e=16)
    inp["cls_attn"] = torch.full((576,), 1 / 576)
    inp["feature_layer_attn"] = torch.full((576,), 16 / 576)
    vt = VisualTokens(**inp)
    red = REDUCERS[method](vt)
    check_contract(vt, red, method, REDUCERS[method].params())
    if method == "visionzip":  # all equal: the lowest indices are the dominant patches
        assert red.kept.tolist() == list(range(53))
    elif method != "top-attention":
        assert red.trace.q1 == red.trace.q3 == red.trace.fence  # IQR = 0: nothing is strictly above the fence
        assert red.trace.outliers.tolist() == [0], "fallback: the argmax patch (the first one on ties)"


def test_par_constant_relevance_keeps_a_token():
    inp = ref.synthetic((24, 24), d=32, e=16)
    inp["joint"] = torch.ones(576, 16)
    vt = VisualTokens(**inp)
    red = REDUCERS["par"](vt)  # r ≡ 0 → h ≡ 0 < τ: nothing routed, step 7 keeps argmax h
    assert float(red.trace.relevance.abs().max()) == 0.0
    assert red.kept.tolist() == [0] and red.stages["routed"] == 0 and red.n_kept == 1
    assert red.trace.routed.sum() == 1 and bool(red.trace.routed[0])


@pytest.mark.parametrize("method", METHODS)
def test_deterministic(method):
    rng = random.Random(5)
    for _ in range(3):
        params = fitting_params(method, rng)
        inp = ref.synthetic((24, 24), d=32, e=16, seed=9)
        vt = VisualTokens(**inp)
        a, b = REDUCERS[method](vt, params), REDUCERS[method](vt, params)  # same instance, memo warm
        c = REDUCERS[method](VisualTokens(**ref.synthetic((24, 24), d=32, e=16, seed=9)), params)  # fresh
        for other in (b, c):
            assert torch.equal(a.kept, other.kept) and torch.equal(a.tokens, other.tokens)
            assert a.stages == other.stages


def fp16_pair(grid=(24, 24), seed=0):
    """The same values as float16 and as float32 (rounded through float16 first)."""
    inp = ref.synthetic(grid, d=32, e=16, seed=seed)
    half = {k: (v.half() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
    full = {k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in half.items()}
    return VisualTokens(**half), VisualTokens(**full)


@pytest.mark.parametrize("method", METHODS)
def test_float16_inputs(method):
    for seed in range(3):
        half, full = fp16_pair(seed=seed)
        a, b = REDUCERS[method](half), REDUCERS[method](full)
        check_contract(half, a, method, REDUCERS[method].params())
        assert a.tokens.dtype == torch.float16 and torch.isfinite(a.tokens).all()
        # internal arithmetic is float32 on identical values, so even ties are broken identically
        assert torch.equal(a.kept, b.kept)
        torch.testing.assert_close(a.tokens.float(), b.tokens, rtol=2e-3, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    for grid, seed in (((24, 24), 0), ((48, 60), 1), ((1, 1), 2)):
        inp = ref.synthetic(grid, d=64, e=16, seed=seed)
        cpu = VisualTokens(**inp)
        gpu = VisualTokens(**{k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in inp.items()})
        a, b = REDUCERS[method](cpu), REDUCERS[method](gpu)
        check_contract(gpu, b, method, REDUCERS[method].params())
        assert b.kept.device.type == "cuda" and b.tokens.device.type == "cuda"
        assert torch.equal(a.kept, b.kept.cpu()), method
        torch.testing.assert_close(a.tokens, b.tokens.cpu(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------- bad input
def good(**changes):
    inp = ref.synthetic((4, 4), d=8, e=6)
    inp.update(changes)
    return inp


BAD_TOKENS = {
    "features not a tensor": (dict(features=np.zeros((16, 8))), "features"),
    "features 1-D": (dict(features=torch.zeros(16)), "features"),
    "no tokens": (dict(features=torch.zeros(0, 8), grid=None, keys=None, cls_attn=None, joint=None), "features"),
    "zero width": (dict(features=torch.zeros(16, 0)), "features"),
    "integer features": (dict(features=torch.zeros(16, 8, dtype=torch.long)), "floating"),
    "keys rows ≠ N": (dict(keys=torch.zeros(15, 8)), "keys"),
    "keys zero width": (dict(keys=torch.zeros(16, 0)), "keys"),
    "attention 2-D": (dict(cls_attn=torch.zeros(16, 1)), "cls_attn"),
    "attention length ≠ N": (dict(cls_attn=torch.zeros(17)), "cls_attn"),
    "joint rows ≠ N": (dict(joint=torch.zeros(3, 6)), "joint"),
    "query width ≠ joint": (dict(query=torch.ones(5)), "query width"),
    "query 2-D": (dict(query=torch.ones(1, 6)), "query"),
    "query empty": (dict(query=torch.ones(0)), "query"),
    "query integer": (dict(query=torch.ones(6, dtype=torch.long)), "floating"),
    "grid ≠ N": (dict(grid=(4, 5)), "grid"),
    "grid not a pair": (dict(grid=(16,)), "grid"),
    "grid a number": (dict(grid=16), "grid"),
    "grid of strings": (dict(grid=("4", "4")), "grid"),
    "grid zero": (dict(grid=(0, 16)), "grid"),
    "grid fractional": (dict(grid=(2.5, 6.4)), "grid"),
    "NaN features": (dict(features=torch.full((16, 8), float("nan"))), "NaN or Inf"),
    "Inf keys": (dict(keys=torch.zeros(16, 8).index_fill_(0, torch.tensor([3]), float("inf"))), "NaN or Inf"),
    "NaN attention": (dict(cls_attn=torch.tensor([float("nan")] + [0.1] * 15)), "NaN or Inf"),
    "Inf joint (fp16)": (dict(joint=torch.full((16, 6), float("-inf"), dtype=torch.float16)), "NaN or Inf"),
    "NaN query": (dict(query=torch.tensor([float("nan")] * 6)), "NaN or Inf"),
    "feature-layer attention 2-D": (dict(feature_layer_attn=torch.zeros(16, 1)), "feature_layer_attn"),
    "feature-layer attention length ≠ N": (dict(feature_layer_attn=torch.zeros(15)), "feature_layer_attn"),
    "feature-layer keys rows ≠ N": (dict(feature_layer_keys=torch.zeros(17, 4)), "feature_layer_keys"),
    "feature-layer keys integer": (dict(feature_layer_keys=torch.zeros(16, 4, dtype=torch.long)), "floating"),
    "NaN feature-layer keys": (dict(feature_layer_keys=torch.full((16, 4), float("nan"))), "NaN or Inf"),
    "cls_feature width ≠ d": (dict(cls_feature=torch.zeros(7)), "cls_feature"),
    "cls_feature 2-D": (dict(cls_feature=torch.zeros(1, 8)), "cls_feature"),
    "cls_feature integer": (dict(cls_feature=torch.zeros(8, dtype=torch.long)), "floating"),
    "Inf cls_feature": (dict(cls_feature=torch.full((8,), float("inf"))), "NaN or Inf"),
    "projected rows ≠ N": (dict(projected=torch.zeros(15, 32)), "projected"),
    "projected zero width": (dict(projected=torch.zeros(16, 0)), "projected"),
    "NaN projected": (dict(projected=torch.full((16, 32), float("nan"))), "NaN or Inf"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS), ids=str)
def test_malformed_tokens_raise_a_clear_value_error(case):
    changes, needle = BAD_TOKENS[case]
    with pytest.raises(ValueError, match=needle):
        VisualTokens(**good(**changes))


def test_malformed_derive_raises_value_error():
    vt = VisualTokens(**good())
    with pytest.raises(ValueError, match="query width"):
        vt.derive(query=torch.ones(4))
    with pytest.raises(ValueError, match="NaN or Inf"):
        vt.derive(cls_attn=torch.full((16,), float("nan")))


def test_large_finite_float16_values_are_accepted():
    """The fast finiteness check (a sum) overflows on big float16 values; the exact check must take over."""
    x = torch.full((576, 8), 60000.0, dtype=torch.float16)
    vt = VisualTokens(features=x, grid=(24, 24))
    assert REDUCERS["all"](vt).n_kept == 576


BAD_PARAMS = [
    (PruMergeParams, dict(iqr_multiplier=-0.1), "iqr_multiplier"),
    (PruMergeParams, dict(iqr_multiplier=float("nan")), "finite"),
    (PruMergeParams, dict(neighbours=0), "neighbours"),
    (PruMergeParams, dict(neighbours=2.5), "neighbours"),
    (PruMergeParams, dict(iqr_multiplier="1.5"), "iqr_multiplier"),
    (PARParams, dict(tau=1.5), "tau"),
    (PARParams, dict(delta=-0.01), "delta"),
    (PARParams, dict(cluster_threshold=float("inf")), "cluster_threshold"),
    (PARParams, dict(retrieval_ratio=0.0), "retrieval_ratio"),
    (PARParams, dict(alpha=2.0), "alpha"),
    (BudgetParams, dict(budget=0), "budget"),
    (BudgetParams, dict(budget=3.5), "budget"),
    (RandomParams, dict(seed=0.5), "seed"),
    (RandomParams, dict(seed=2**63), "seed"),
    (PruMergeParams, dict(order="sideways"), "order"),
    (PARParams, dict(spatial="yes"), "spatial"),
    (ToMeParams, dict(budget=0), "budget"),
    (PoolParams, dict(budget=2.5), "budget"),
    (FastVParams, dict(layer=0), "layer"),
    (FastVParams, dict(layer=17), "layer"),
    (FastVParams, dict(layer=1.5), "layer"),
    (FastVParams, dict(rank="first"), "rank"),
    (FastVParams, dict(budget=-1), "budget"),
    (VisionZipParams, dict(budget=0), "budget"),
    (VisionZipParams, dict(dominant_share=1.5), "dominant_share"),
    (VisionZipParams, dict(dominant_share=-0.1), "dominant_share"),
    (VisionZipParams, dict(cls_token=1), "cls_token"),
    (DivPruneParams, dict(budget=0), "budget"),
    (DivPruneParams, dict(budget=64.5), "budget"),
]


@pytest.mark.parametrize("cls,kwargs,needle", BAD_PARAMS, ids=lambda v: str(v))
def test_parameters_out_of_range_raise_value_error(cls, kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        cls(**kwargs)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "all"])
def test_wrong_parameter_type_raises_value_error(method):
    vt = tokens((4, 4))
    wrong = PARParams() if REDUCERS[method].params is not PARParams else PruMergeParams()
    with pytest.raises(ValueError, match="expected"):
        REDUCERS[method](vt, wrong)


@pytest.mark.parametrize("method", METHODS)
def test_no_index_error_on_tiny_or_odd_inputs(method):
    """Shapes at the edges (N = 1, 2, a single row or column, huge neighbour counts) run or raise ValueError."""
    rng = random.Random(method)
    for grid in [(1, 1), (1, 2), (2, 1), (1, 9), (9, 1), (2, 2)]:
        for trial in range(6):
            vt = tokens(grid, seed=trial)
            params = fitting_params(method, rng)
            try:
                red = REDUCERS[method](vt, params)
            except ValueError:
                continue
            check_contract(vt, red, method, params)


# ----------------------------------------------------------------------------------------- memoisation
def test_derive_keeps_memoised_similarity_and_clusters():
    vt = tokens()
    first = REDUCERS["par"](vt)
    sim, memo = vt.feature_similarity, vt.__dict__["_components"]
    other = vt.derive(query=-vt.query)
    assert other.feature_similarity is sim and other.__dict__["_components"] is memo
    second = REDUCERS["par"](other)
    assert torch.equal(second.trace.labels, first.trace.labels) and not torch.equal(second.trace.relevance, first.trace.relevance)
    moved = vt.derive(features=vt.features * 2 + 1)
    assert "feature_similarity" not in moved.__dict__ and "_components" not in moved.__dict__
    keys = vt.normalised_keys
    assert vt.derive(cls_attn=vt.cls_attn.flip(0)).normalised_keys is keys
    assert vt.derive(keys=vt.keys + 1).normalised_keys is not keys


def test_derive_keeps_the_projected_distance_unless_projected_changes():
    vt = tokens((4, 4))
    dist = vt.projected_distance
    assert vt.derive(query=-vt.query, cls_attn=vt.cls_attn.flip(0)).projected_distance is dist
    assert vt.derive(projected=vt.projected.flip(0)).projected_distance is not dist
    with pytest.raises(ValueError, match="projected"):
        vt.derive(projected=torch.zeros(15, 4))


def test_cluster_memo_is_per_threshold_and_bounded():
    vt = tokens((4, 4))
    a = vt.clusters(0.8)
    assert vt.clusters(0.8) is a
    assert vt.clusters(0.8, spatial=True) is not a
    for t in np.linspace(0, 1, 100):
        vt.clusters(float(t))
    assert len(vt.__dict__["_components"]) <= 64


def test_feature_similarity_is_the_cosine():
    vt = tokens((4, 4), d=16)
    np.testing.assert_allclose(vt.feature_similarity.double().numpy(), ref.cosine_loop(vt.features), atol=1e-6)
    assert vt.feature_similarity.dtype == torch.float32


# ----------------------------------------------------------------------------------------- graphs
@pytest.mark.parametrize("grid", [(1, 1), (4, 4), (24, 24), (48, 60)])
def test_cluster_sweep_counts_equal_components(grid):
    vt = tokens(grid, d=32, seed=2)
    sim = vt.feature_similarity
    for spatial in (False, True):
        g = grid if spatial else None
        sweep = ClusterSweep(sim, g)
        # slider values, values exactly at forest edges (and just beside them), and the extremes
        few = grid[0] * grid[1] > 1000  # the direct definition costs a graph per threshold
        edges = sweep.weights[:: max(1, sweep.weights.size // (5 if few else 12))]
        thresholds = list(np.round(np.arange(0, 1.0001, 0.1 if few else 0.05), 2)) + [-1.0, 1.0, 1.5]
        thresholds += [float(e) for e in edges] + [float(np.nextafter(e, 2)) for e in edges]
        counts = sweep.count(thresholds)
        assert counts.shape == (len(thresholds),)
        for t, c in zip(thresholds, counts):
            assert c == components(sim, t, g)[0], (spatial, t)
        assert all(a <= b for a, b in zip(sweep.count(sorted(thresholds)), sweep.count(sorted(thresholds))[1:]))


def test_components_threshold_is_the_real_number():
    """A similarity of float32(0.7) = 0.69999999 is below 0.7: no edge, in every code path."""
    s32 = float(np.float32(0.7))
    assert s32 < 0.7
    sim = torch.tensor([[1.0, s32, 0.0], [s32, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert components(sim, 0.7)[0] == 3
    assert components(sim, 0.7, (1, 3))[0] == 3
    assert components(sim, s32)[0] == 2
    assert list(ClusterSweep(sim).count([0.7, s32])) == [3, 2]
    assert ref.connected_components(sim.double().numpy(), 0.7)[0] == 3


def test_components_match_reference_search():
    for grid, seed in (((4, 4), 0), ((24, 24), 1), ((48, 60), 2)):
        vt = tokens(grid, seed=seed)
        sim = vt.feature_similarity
        s64 = sim.double().numpy()
        for t in (0.3, 0.6, 0.75, 0.8, 0.85, 0.95):
            for g in (None, grid):
                count, labels = components(sim, t, g)
                want_count, want_labels = ref.connected_components(s64, t, g)
                assert count == want_count and ref.same_partition(labels, want_labels)


@pytest.mark.parametrize("grid", [(4, 4), (24, 24), (6, 10)])
@pytest.mark.parametrize("spatial", [False, True])
def test_cluster_labels_from_the_forest_equal_components(grid, spatial):
    """After `cluster_sweep` builds the spanning forest, `clusters` reads labels off it: the same labels as
    thresholding the full similarity matrix, at thresholds on, between and around the forest's edge weights."""
    vt = tokens(grid)
    sweep = vt.cluster_sweep(spatial)
    assert vt.cluster_sweep(spatial) is sweep  # memoised per image
    weights = np.unique(sweep.w)
    thresholds = np.r_[-1.0, 1.5, np.linspace(weights.min(), weights.max(), 9), weights[:: max(1, weights.size // 7)]]
    for t in thresholds.astype(float):
        count, labels = vt.clusters(t, spatial)
        want_count, want = components(vt.feature_similarity, t, vt.grid if spatial else None)
        assert count == want_count and np.array_equal(labels.numpy(), want), t
        assert count == sweep.count([t])[0]
