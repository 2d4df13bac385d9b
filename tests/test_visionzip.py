"""VisionZip equals the reference loop (tests/reference.py) and the official tensor formulation, stage by stage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reducers import REDUCERS, VisionZipParams, VisualTokens, visionzip
from reducers.visionzip import OFFICIAL_SHARE, split
from tests import reference as ref

CASES = ref.CASES
SETTINGS = [  # (budget, dominant share, CLS token)
    (64, OFFICIAL_SHARE, True),
    (128, OFFICIAL_SHARE, True),
    (192, OFFICIAL_SHARE, True),
    (64, OFFICIAL_SHARE, False),
    (1, OFFICIAL_SHARE, True),
    (2, OFFICIAL_SHARE, True),
    (7, 0.5, True),
    (100, 0.0, True),  # D clamped to 1: one dominant patch, no CLS, 99 contextual
    (100, 1.0, True),  # C = 0: no contextual token
    (300, 0.25, False),
    (576, OFFICIAL_SHARE, True),
    (10_000, 0.75, False),  # budget ≥ N
]
TIE = 1e-6  # a float32 cosine of unit keys (≤ 64 wide) is within ~1e-7 of the float64 one


def check_equal(inp: dict, budget: int, share: float, cls_token: bool, vt: VisualTokens | None = None) -> None:
    """Equal to the reference; a merged patch whose two best targets lie within TIE of each other may join either
    (float32 rounding decides), so the reference takes the reducer's choice there and only there."""
    vt = vt or VisualTokens(**inp)
    red = visionzip(vt, VisionZipParams(budget=budget, dominant_share=share, cls_token=cls_token))
    first = red.kept.numel() + red.n_extra - red.trace.targets.numel()
    members = torch.nonzero((red.groups >= first) & ~torch.isin(torch.arange(vt.n), red.trace.targets)).flatten()
    want = ref.visionzip(inp["features"], inp["feature_layer_attn"], inp["feature_layer_keys"], inp["cls_feature"],
                         budget, share, cls_token, prefer=(red.groups[members] - first).tolist(), tie=TIE)
    assert red.kept.tolist() == want["kept"]
    assert red.trace.targets.tolist() == want["targets"]
    assert red.stages == {"tokens": vt.n, "dominant": want["dominant"], "contextual": want["contextual"],
                          "to LLM": want["dominant"] + want["contextual"]}
    assert red.n_extra == want["cls"] + want["contextual"]
    assert first == len(want["kept"]) + want["cls"] and members.tolist() == want["members"]
    assert red.groups[want["members"]].tolist() == [first + j for j in want["joined"]]
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grid,d,seed", CASES, ids=lambda v: str(v))
def test_equals_reference(grid, d, seed):
    inp = ref.synthetic(grid, d=d, e=8, seed=seed)
    vt = VisualTokens(**inp)
    settings = SETTINGS if d <= 64 else SETTINGS[:4]
    for budget, share, cls_token in settings:
        check_equal(inp, budget, share, cls_token, vt)
    check_equal(inp, *SETTINGS[0])  # and a fresh VisualTokens


def test_equals_reference_with_ties_in_attention():
    """Quantised attention: many equal values; the dominant cut keeps the lower index."""
    inp = ref.synthetic((24, 24), d=32, e=8, seed=11)
    inp["feature_layer_attn"] = (inp["feature_layer_attn"] * 200).round() / 200
    assert inp["feature_layer_attn"].unique().numel() < 100
    for budget in (16, 64, 200):
        check_equal(inp, budget, OFFICIAL_SHARE, True)


def test_official_splits():
    """Official README: 54 + 10 at 64 tokens; the common splits at the official ratio, 108 + 20 and 162 + 30 at 128
    and 192; the CLS token is one dominant token."""
    for budget, dominant, contextual in [(64, 54, 10), (128, 108, 20), (192, 162, 30)]:
        assert split(budget, 576, OFFICIAL_SHARE, True) == (dominant, 1, contextual)
        assert ref.visionzip_split(budget, 576) == (dominant, 1, contextual)
        red = visionzip(VisualTokens(**ref.synthetic((24, 24), d=16, e=8)), VisionZipParams(budget=budget))
        assert red.kept.numel() == dominant - 1 and red.n_extra == 1 + contextual and red.n_kept == budget


def test_split_rounds_half_up_and_keeps_a_patch():
    assert split(4, 576, 0.625, True) == (3, 1, 1)  # 2.5 → 3
    assert split(4, 576, 0.375, True) == (2, 1, 2)  # 1.5 → 2
    assert split(1, 576, OFFICIAL_SHARE, True) == (1, 0, 0)  # the one slot is a patch, not the CLS token
    assert split(50, 576, 0.0, True) == (1, 0, 49)
    assert split(50, 576, 1.0, True) == (50, 1, 0)
    assert split(999, 16, 0.5, False) == (8, 0, 8)  # capped at N


def official_formulation(inp: dict, dominant: int, contextual: int) -> torch.Tensor:
    """The official LLaVA-1.5 tensor steps for one image, restated over a [1, N + 1, ·] sequence with the CLS row at
    index 0: topk(dominant − 1) of the head-summed CLS attention + 1, CLS index prepended, masked in sequence order;
    targets every ⌊R / C⌋-th remaining token; a one-hot argmax assignment by normalised key similarity; contextual
    = target + (one-hotᵀ · members) / max(count, 1). Returns the [dominant + contextual, d] float64 tokens in the
    official order [CLS, dominant patches, contextual]."""
    x = torch.cat([inp["cls_feature"][None], inp["features"]])[None].double()  # [1, N + 1, d]
    # the key similarity in float32, the model's dtype: a float64 one could decide a near-tie the other way
    metric = torch.cat([torch.zeros_like(inp["feature_layer_keys"][:1]), inp["feature_layer_keys"]])[None].float()
    attn = inp["feature_layer_attn"].double()[None]  # [1, N] (already summed over heads)
    top = attn.topk(dominant - 1, dim=1).indices + 1
    index = torch.cat([torch.zeros_like(top[:, :1]), top], dim=1)
    rest = torch.ones(x.shape[:2], dtype=torch.bool).scatter_(1, index, False)  # [1, N + 1]
    dom = x[~rest].view(1, dominant, -1)
    x_rest, k_rest = x[rest][None], metric[rest][None]
    k_rest = k_rest / k_rest.norm(dim=-1, keepdim=True)
    step = max(1, k_rest.shape[1] // contextual)
    target = torch.arange(0, k_rest.shape[1], step)[:contextual]
    member = ~torch.isin(torch.arange(k_rest.shape[1]), target)
    sim = torch.bmm(k_rest[:, member], k_rest[:, target].transpose(1, 2))
    onehot = torch.zeros(1, int(member.sum()), contextual, dtype=x.dtype).scatter_(2, sim.argmax(2)[..., None], 1)
    count = onehot.sum(1).clamp(min=1)[..., None]
    ctx = x_rest[:, target] + onehot.transpose(1, 2) @ x_rest[:, member] / count
    return torch.cat([dom, ctx], dim=1)[0]


@pytest.mark.parametrize("grid,seed", [((24, 24), 0), ((24, 24), 7), ((48, 60), 3), ((5, 7), 2)])
def test_equals_the_official_tensor_formulation(grid, seed):
    """The same tokens in the same order as the official computation: [CLS, dominant patches, contextual]."""
    inp = ref.synthetic(grid, d=32, e=8, seed=seed)
    vt = VisualTokens(**inp)
    for dominant, contextual in [(54, 10), (108, 20), (162, 30), (5, 3)]:
        budget = dominant + contextual
        if budget > vt.n:
            continue
        red = visionzip(vt, VisionZipParams(budget=budget, dominant_share=dominant / budget))
        assert red.stages["dominant"] == dominant and red.stages["contextual"] == contextual
        want = official_formulation(inp, dominant, contextual)
        assert red.n_lead == 1
        torch.testing.assert_close(red.tokens.double(), want, rtol=1e-5, atol=1e-5)


def test_budget_n_without_cls_hands_every_patch_once():
    """M = N, no CLS token: the remaining patches are exactly the C targets, nothing merges, every patch is a token."""
    inp = ref.synthetic((4, 4), d=8, e=8, seed=1)
    red = visionzip(VisualTokens(**inp), VisionZipParams(budget=16, dominant_share=0.5, cls_token=False))
    assert red.kept.numel() == 8 and red.trace.targets.numel() == 8 and red.n_kept == 16
    got = sorted(map(tuple, red.tokens.tolist()))
    assert got == sorted(map(tuple, inp["features"].tolist()))


def test_budget_n_with_cls_merges_one_patch():
    """M = N with the CLS token: N − 1 patch slots, so exactly one remaining patch is merged into a target."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=2)
    red = visionzip(VisualTokens(**inp), VisionZipParams(budget=576))
    assert red.n_kept == 576 and red.stages["dominant"] == 486 and red.stages["contextual"] == 90
    assert (red.groups >= 0).all() and (red.group_weight == 1).all()
    sizes = torch.bincount(red.groups[~red.kept_mask] - 486, minlength=90)
    assert sorted(sizes.tolist()) == [1] * 89 + [2], "one target holds one member: x_t + mean of one = x_t + x_i"


def test_no_contextual_tokens_drop_the_rest():
    inp = ref.synthetic((24, 24), d=16, e=8, seed=3)
    red = visionzip(VisualTokens(**inp), VisionZipParams(budget=40, dominant_share=1.0))
    assert red.stages == {"tokens": 576, "dominant": 40, "contextual": 0, "to LLM": 40}
    assert red.kept.numel() == 39 and red.trace.targets.numel() == 0 and red.n_extra == 1
    assert int((red.groups >= 0).sum()) == 39


def test_single_patch_image():
    inp = ref.synthetic((1, 1), d=8, e=8, seed=4)
    for budget, cls_token in [(1, True), (64, True), (64, False)]:
        red = visionzip(VisualTokens(**inp), VisionZipParams(budget=budget, cls_token=cls_token))
        assert red.kept.tolist() == [0] and red.n_kept == 1 and red.n_extra == 0
        assert torch.equal(red.tokens, inp["features"])


def test_needs_its_fields():
    inp = ref.synthetic((4, 4), d=8, e=8)
    no_cls = VisualTokens(**{k: v for k, v in inp.items() if k != "cls_feature"})
    with pytest.raises(ValueError, match="needs VisualTokens.cls_feature"):
        visionzip(no_cls)
    assert visionzip(no_cls, VisionZipParams(cls_token=False)).n_kept == 16
    no_layer = VisualTokens(**{k: v for k, v in inp.items() if k != "feature_layer_keys"})
    with pytest.raises(ValueError, match="feature_layer_keys"):
        visionzip(no_layer)


def test_reads_the_feature_layer_not_the_consuming_layer():
    """The dominant patches follow `feature_layer_attn`; `cls_attn` (the next layer's) and `keys` are not read."""
    inp = ref.synthetic((24, 24), d=16, e=8, seed=5)
    a = visionzip(VisualTokens(**inp))
    b = visionzip(VisualTokens(**dict(inp, cls_attn=inp["cls_attn"].flip(0), keys=-inp["keys"])))
    c = visionzip(VisualTokens(**dict(inp, feature_layer_attn=inp["feature_layer_attn"].flip(0))))
    assert torch.equal(a.kept, b.kept) and torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.kept, c.kept)
    assert torch.equal(a.kept, inp["feature_layer_attn"].topk(53).indices.sort().values)


def test_float16_equals_reference():
    inp = ref.synthetic((24, 24), d=32, e=8, seed=6, dtype=torch.float16)
    red = visionzip(VisualTokens(**inp))
    want = ref.visionzip(inp["features"], inp["feature_layer_attn"], inp["feature_layer_keys"], inp["cls_feature"])
    assert red.tokens.dtype == torch.float16 and red.kept.tolist() == want["kept"]
    assert red.trace.targets.tolist() == want["targets"]
    np.testing.assert_allclose(red.tokens.double().numpy(), want["tokens"], rtol=2e-3, atol=2e-3)


def test_registry_entry():
    entry = REDUCERS["visionzip"]
    assert entry.budget_field == "budget" and entry.label == "VisionZip"
    assert set(entry.needs) == {"feature_layer_attn", "feature_layer_keys", "cls_feature"}
