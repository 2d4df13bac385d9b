"""Qwen2.5-VL groundwork on a tiny seeded checkpoint: the vision attention recomputed from the hooked fused qkv of
a windowed and of a full-attention block reproduces the attention module's own output; the patch order and merged
grid follow the processor; the M-RoPE helper gives the positions of the model's own forward, and kept tokens keep
their original 3-D positions (height and width ids = their row and column on the merged grid)."""

from __future__ import annotations

import pytest
import torch

from explorer.backend import qwen_vl
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")


@pytest.fixture(scope="module", params=tiny.devices())
def model(request):
    return tiny.tiny_qwen2_5_vl_model(device=request.param, dtype=tiny.dtype_for(request.param))


def inputs(model, size=(130, 90), seed=0):
    out = tiny.tiny_qwen_image_processor()(tiny.image(seed, size), return_tensors="pt")
    p = next(model.parameters())
    return out["pixel_values"].to(p.device, p.dtype), out["image_grid_thw"].to(p.device)


@pytest.mark.parametrize("size", [(130, 90), (90, 160)])
def test_attention_recomputed_from_fused_qkv_equals_the_modules_output(model, size):
    pv, thw = inputs(model, size)
    tower = model.model.visual
    t, h, w = (int(v) for v in thw[0])
    n = t * h * w
    for block in range(len(tower.blocks)):
        result, own, hidden = qwen_vl.vision_attention(tower, pv, thw, block)
        assert result.n == n
        full = block in tower.fullatt_block_indexes
        assert (len(result.chunks) == 1) == full, (block, result.chunks)
        for (s, e), weights in zip(result.chunks, result.weights):
            assert weights.shape == (tower.blocks[block].attn.num_heads, e - s, e - s)
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))
        # the recomputed weights are the ones the model used: they rebuild its output
        attn = tower.blocks[block].attn
        with torch.inference_mode():
            rebuilt = qwen_vl.attention_output(attn, hidden, result)
        torch.testing.assert_close(rebuilt, own, **tiny.tol(pv.dtype))
        received = result.received()
        assert received.shape == (n,) and bool((received > 0).all())


def test_window_chunks_are_the_merge_unit_windows(model):
    pv, thw = inputs(model, (130, 90))
    tower = model.model.visual
    result, _, _ = qwen_vl.vision_attention(tower, pv, thw, 0)  # a windowed block
    unit = tower.spatial_merge_size ** 2
    units_per_window = (tower.window_size // tower.patch_size // tower.spatial_merge_size) ** 2
    assert all((e - s) % unit == 0 and (e - s) <= unit * units_per_window for s, e in result.chunks)
    assert sorted(result.sequence_index().tolist()) == list(range(result.n))


def test_merged_grid_and_patch_order_follow_the_processor(model):
    pv, thw = inputs(model, (130, 90))
    t, h, w = (int(v) for v in thw[0])
    assert qwen_vl.merged_grid(thw[0], 2) == (t, h // 2, w // 2)
    with torch.inference_mode():
        merged = model.model.visual(pv, grid_thw=thw).pooler_output
    assert merged.shape[0] == t * (h // 2) * (w // 2)  # the LM's tokens for this image: the budget unit
    order = qwen_vl.patch_order(thw[0], 2)
    assert sorted(order.tolist()) == list(range(t * h * w))
    # the first merge unit holds the top-left 2×2 patches of the raster grid
    assert order[:4].tolist() == [0, 1, w, w + 1]


def test_rope_positions_are_the_models_own_and_kept_tokens_keep_theirs(model):
    pv, thw = inputs(model, (130, 90))
    t, h, w = (int(v) for v in thw[0])
    n_image = t * (h // 2) * (w // 2)
    device = pv.device
    before, after = [1, 20, 152], [153, 30, 40, 41]
    ids = torch.tensor([before + [tiny.QWEN_IMAGE_TOKEN_ID] * n_image + after], device=device)
    types = (ids == tiny.QWEN_IMAGE_TOKEN_ID).int()
    with torch.inference_mode():
        own = model(input_ids=ids, pixel_values=pv, image_grid_thw=thw, mm_token_type_ids=types).logits
        pos = qwen_vl.rope_positions(model, ids, thw, tiny.QWEN_IMAGE_TOKEN_ID)
        embeds = model.get_input_embeddings()(ids)
        visual = model.model.visual(pv, grid_thw=thw).pooler_output.to(embeds.dtype)
        embeds[0, len(before):len(before) + n_image] = visual
        model.model.rope_deltas = None
        mine = model(inputs_embeds=embeds, position_ids=pos).logits
    torch.testing.assert_close(mine, own, **tiny.tol(pv.dtype))
    # kept tokens keep their original 3-D positions: (t, row, column) on the merged grid, offset by the start
    kept = torch.tensor([0, 3, n_image - 1])
    kp = qwen_vl.kept_positions(pos, len(before), n_image, kept)
    assert kp.shape == (3, 1, len(before) + kept.numel() + len(after))
    start = int(pos[0, 0, len(before)])
    gw = w // 2
    for j, k in enumerate(kept.tolist()):
        p = kp[:, 0, len(before) + j] - start
        assert p.tolist() == [0, k // gw, k % gw]
    assert torch.equal(kp[:, :, -len(after):], pos[:, :, -len(after):])  # text after: original positions too
    with pytest.raises(ValueError):
        qwen_vl.kept_positions(pos, len(before), n_image, torch.tensor([n_image]))
