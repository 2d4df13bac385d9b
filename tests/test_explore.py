"""The pure parts of a slider move (explorer/service/view.py) and the new pictures: patch inspection against brute
force, per-patch summaries, FLOPs, the heatmap scale, the A/B picture, the crop picture and caption, the colour
bar. No model: synthetic VisualTokens from tests/reference.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.service import view as ex
from explorer.backend.cost import prefill_flops, prefill_flops_pruned
from explorer.pictures import draw
from reducers import REDUCERS, VisualTokens
from tests import reference as ref


@pytest.fixture(scope="module")
def vt() -> VisualTokens:
    return VisualTokens(**ref.synthetic((8, 8), d=16, e=8, seed=3))


def test_jaccard():
    assert ex.jaccard([1, 2, 3], [2, 3, 4]) == pytest.approx(2 / 4)
    assert ex.jaccard([], []) == 1.0 and ex.jaccard([1], []) == 0.0


def test_colour_scale_goes_logarithmic_only_over_decades():
    linear, log = ex.colour_scale(np.array([1.0, 2.0, 3.0]))
    assert not log and linear.tolist() == [0.0, 0.5, 1.0]
    values = np.array([1e-6, 1e-4, 1e-2])
    scaled, log = ex.colour_scale(values)
    assert log and scaled.tolist() == pytest.approx([0.0, 0.5, 1.0])
    constant, _ = ex.colour_scale(np.full(4, 0.3))
    assert constant.tolist() == [0.0] * 4


def test_inspecting_a_prumerge_patch_lists_every_token_that_absorbed_it(vt):
    red = REDUCERS["prumerge"](vt)
    kept = red.kept.tolist()
    for index in range(vt.n):
        info = ex.inspect_patch(vt, red, index)
        assert (info["row"], info["column"]) == divmod(index, 8)
        assert info["kept"] == (index in kept)
        brute = [(kept[i], float(red.trace.merge_weight[i, j])) for i in range(len(kept))
                 for j in range(red.trace.merge_index.shape[1]) if int(red.trace.merge_index[i, j]) == index]
        assert [(m["kept_patch"], m["weight"]) for m in info["merged_into"]] == brute
        rank = 1 + sum(float(a) > float(vt.cls_attn[index]) for a in vt.cls_attn)
        assert info["attention_rank"] == rank
        if info["kept"]:
            assert info["position_in_llm_input"] == kept.index(index)
        else:
            assert info["in_aggregate_token"]


def test_inspecting_par_and_tome_patches(vt):
    par = REDUCERS["par"](vt.derive(query=torch.nn.functional.normalize(vt.joint[5], dim=0)))
    for index in (0, 17, 63):
        info = ex.inspect_patch(vt, par, index)
        assert info["cluster_size"] == int((par.trace.labels == par.trace.labels[index]).sum())
        assert info["relevance"] == pytest.approx(float(par.trace.relevance[index]))
    tome = REDUCERS["tome"](vt, REDUCERS["tome"].params(budget=10))
    for index in range(vt.n):
        info = ex.inspect_patch(vt, tome, index)
        size = int((tome.groups == tome.groups[index]).sum())
        assert info["group_size"] == size and info["weight_in_token"] == pytest.approx(1 / size)


def test_per_patch_data_is_what_the_reduction_holds(vt):
    red = REDUCERS["prumerge"](vt)
    per = ex.per_patch(vt, red)
    assert per["kept"] == red.kept.tolist()
    assert np.allclose(per["attention"], vt.cls_attn.numpy(), atol=1e-8)
    for i, k in enumerate(red.kept.tolist()):
        assert per["merge_groups"][str(k)]["neighbours"] == red.trace.merge_index[i].tolist()
    fastv = REDUCERS["fastv"](vt)
    assert np.allclose(ex.per_patch(vt, fastv)["llm_attention"], fastv.trace.attn.numpy(), atol=1e-8)


def test_summary_holds_the_per_patch_data_unless_left_out(vt):
    from explorer.settings import Settings

    settings = Settings.from_controls({"method": "prumerge"})
    red = REDUCERS["prumerge"](vt)
    full = ex.summary(red, vt, settings, {}, {"prompt": "p"})
    light = ex.summary(red, vt, settings, {}, {"prompt": "p"}, with_per_patch=False)
    assert full["per_patch"] == ex.per_patch(vt, red)
    assert "per_patch" not in light and light == {k: v for k, v in full.items() if k != "per_patch"}


def test_flops_follow_where_the_tokens_are_dropped(vt):
    class LM:
        hidden_size, intermediate_size, num_hidden_layers = 32, 64, 6

    red = REDUCERS["top-attention"](vt)
    f = ex.flops_summary(LM, 10, red)
    assert f["prefill_flops_full"] == prefill_flops(LM, 10 + 64)
    assert f["prefill_flops_reduced"] == prefill_flops(LM, 10 + red.n_kept)
    fastv = REDUCERS["fastv"](vt, REDUCERS["fastv"].params(budget=16))
    f = ex.flops_summary(LM, 10, fastv)
    assert f["prefill_flops_reduced"] == prefill_flops_pruned(LM, 10, 64, fastv.n_kept, fastv.layer)
    assert 0 < f["flops_saving"] < 1 - fastv.n_kept / 64


def test_diff_picture_tints_only_a_red_and_only_b_blue():
    view = np.full((40, 40, 3), 128, np.uint8)
    canvas = draw.Canvas(view, (4, 4))
    out = canvas.diff([0, 1], [1, 2])
    centre = lambda i: out[(i // 4) * 10 + 5, (i % 4) * 10 + 5].astype(int)  # noqa: E731
    assert centre(0)[0] > centre(0)[2], "only in A: red"
    assert centre(2)[2] > centre(2)[0], "only in B: blue"
    assert tuple(centre(1)) == (128, 128, 128), "in both: the image itself"
    assert centre(3).sum() < 3 * 128, "in neither: dimmed"


@pytest.mark.parametrize("size,box,needle", [
    ((600, 400), (100, 0, 500, 400), "100 px on the left and right are cut off"),
    ((400, 600), (0, 100, 400, 500), "100 px at the top and bottom are cut off"),
    ((300, 300), (0, 0, 300, 300), "the whole 300×300 image"),
    ((600, 400), (0, -100, 600, 500), "padded to a 600×600 square"),
])
def test_crop_caption_says_what_is_cut(size, box, needle):
    assert needle in draw.crop_caption(size, box)


def test_crop_picture_dims_outside_the_box_at_the_thumbnail_scale():
    image = Image.new("RGB", (600, 400), (200, 200, 200))
    pic = draw.crop_picture(image, (100, 0, 500, 400), max_side=300)  # scale 0.5
    assert pic.shape[:2] == (200, 300)
    assert pic[100, 20].max() < 100, "left of the crop: dimmed"
    assert pic[100, 150].min() > 150, "inside the crop: as it was"


def test_colour_bar_appends_a_labelled_viridis_strip():
    picture = np.zeros((200, 100, 3), np.uint8)
    out = draw.with_colour_bar(picture, "0.1", "0.9")
    assert out.shape[0] == 200 and out.shape[1] > 100
    np.testing.assert_array_equal(out[:, :100], picture)
    strip = out[:, 106]  # inside the bar (pad 6)
    assert np.abs(strip[0].astype(int) - draw.VIRIDIS[255]).max() <= 1
    assert np.abs(strip[-1].astype(int) - draw.VIRIDIS[0]).max() <= 1
