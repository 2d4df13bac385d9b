"""LLaVA-NeXT (anyres) on a tiny seeded checkpoint, checked against the model's own computations: the token
layout equals `pack_image_features`, the hooked per-crop hidden states and attentions equal the tower's own
outputs, and the language model receives exactly the reduced tokens (with the row newlines of the rule)."""

from __future__ import annotations

import re

import pytest
import torch

from explorer.backend import families
from explorer.backend import llava_next as nx
from explorer.errors import InputError
from reducers import REDUCERS
from tests import tiny
from tests.tiny import block_network, capture_inputs  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

PROMPT = "What color is the car?"
SIZES = [(80, 64), (64, 120), (200, 50), (56, 56)]  # (W, H): wide, tall, very wide, square


@pytest.fixture(scope="module", params=tiny.devices())
def backend(request):
    return tiny.tiny_llava_next_backend(request.param)


def own_inputs(backend, img):
    out = tiny.tiny_next_image_processor()(img, return_tensors="pt")
    return out["pixel_values"].to(backend.device, backend.dtype), out["image_sizes"].to(backend.device)


@pytest.mark.parametrize("size", SIZES)
def test_full_visual_input_equals_the_models_own_packing(backend, size):
    img = tiny.image(3, size)
    enc = backend.encode(img)
    pv, sizes = own_inputs(backend, img)
    with torch.inference_mode():
        own = backend.model.model.get_image_features(pv, sizes, vision_feature_layer=-2,
                                                     vision_feature_select_strategy="default").pooler_output[0]
        mine = backend._visual_input(enc, None)(enc.tokens.features.to(backend.device, backend.dtype))
    torch.testing.assert_close(mine, own, **tiny.tol(backend.dtype))
    layout = enc.layout
    assert enc.tokens.n == layout.n and own.shape[0] == layout.n_lm == layout.n + layout.tile_grid[0]


@pytest.mark.parametrize("size", SIZES[:2])
def test_hooked_states_and_attention_equal_the_towers_outputs(backend, size):
    img = tiny.image(4, size)
    enc = backend.encode(img)
    pv, _ = own_inputs(backend, img)
    tower = backend.vision_tower
    config = tower.config
    before = config._attn_implementation
    config._attn_implementation = "eager"  # sdpa returns no weights
    try:
        with torch.inference_mode():
            out = tower(pv[0, :enc.layout.n_crops], output_hidden_states=True, output_attentions=True)
    finally:
        config._attn_implementation = before
    t = tiny.tol(backend.dtype)
    feats = nx.gather(out.hidden_states[-2][:, 1:].float().cpu(), enc.layout)
    torch.testing.assert_close(enc.tokens.features, feats, **t)
    attn = out.attentions[backend.spec.attn_layer][:, :, 0, 1:].float().mean(1).cpu()  # per crop, head mean
    torch.testing.assert_close(enc.attn_head_mean, nx.gather(attn, enc.layout), **t)
    src_attn = out.attentions[backend.spec.source_layer][:, :, 0, 1:].float().sum(1).cpu()
    torch.testing.assert_close(enc.tokens.feature_layer_attn, nx.gather(src_attn, enc.layout), **t)
    torch.testing.assert_close(enc.tokens.cls_feature, out.hidden_states[-2][0, 0].float().cpu(), **t)


def test_answer_equals_the_models_own_forward(backend):
    """All tokens: the inputs_embeds reaching the LM equal those of the model's own forward on input_ids with
    the processor's expansion of the image placeholder and pixel_values."""
    img = tiny.image(5, (80, 64))
    enc = backend.encode(img)
    chat = backend.chat(PROMPT)
    pv, sizes = own_inputs(backend, img)
    ids = torch.tensor([list(chat.before) + [backend.image_token_id] * enc.layout.n_lm + list(chat.after)],
                       device=backend.device)
    lm = backend.model.model.language_model
    with torch.inference_mode(), capture_inputs(lm) as own_calls:
        backend.model(input_ids=ids, pixel_values=pv, image_sizes=sizes)
    with capture_inputs(lm) as calls:
        next(iter(backend.answer_stream(enc, PROMPT, max_new_tokens=1)))
    torch.testing.assert_close(calls[0]["inputs_embeds"], own_calls[0]["inputs_embeds"], **tiny.tol(backend.dtype))


def hand_visual(backend, enc, red, rule):
    """The expected visual embeddings, written out independently: kept patches in order, a newline after the
    last kept patch of each tile-grid row (rule 'rows'), then the extra tokens."""
    layout = enc.layout
    proj = backend.projector(red.tokens.to(backend.device, backend.dtype))
    newline = backend.model.model.image_newline.to(proj.dtype)
    nb, w = layout.n_base, layout.tile_grid[1]
    kept = red.kept.tolist()
    rows = []
    for i, k in enumerate(kept):
        rows.append(proj[i])
        row = (k - nb) // w if k >= nb else None
        nxt = kept[i + 1] if i + 1 < len(kept) else None
        nxt_row = (nxt - nb) // w if nxt is not None and nxt >= nb else None
        if rule == "rows" and row is not None and nxt_row != row:
            rows.append(newline)
    rows.extend(proj[len(kept):])
    return torch.stack(rows) if rows else proj[:0]


@pytest.mark.parametrize("rule", nx.NEWLINE_RULES)
def test_lm_receives_exactly_the_reduced_tokens(rule, device="cpu"):
    backend = tiny.tiny_llava_next_backend(device, newlines=rule)
    enc = backend.encode(tiny.image(6, (80, 64)))
    chat = backend.chat(PROMPT)
    vt = enc.tokens.derive(query=backend.encode_query(PROMPT).embedding)
    lm = backend.model.model.language_model
    seen = set()
    rules = families.METHOD_RULES["llava_next"]
    for name, entry in REDUCERS.items():
        if name == "fastv" or not all(getattr(vt, need) is not None for need in entry.needs):
            continue
        red = entry(vt, entry.params(budget=9) if entry.budgeted else entry.params())
        if not rules[name].enabled:  # no faithful rule: refused with its reason, never fed
            with pytest.raises(InputError, match=re.escape(f"{name} is off on LLaVA-NeXT")):
                backend.answer(enc, PROMPT, red, max_new_tokens=1)
            continue
        with capture_inputs(lm) as calls:
            answer = backend.answer(enc, PROMPT, red, max_new_tokens=1)
        emb = calls[0]["inputs_embeds"][0]
        with torch.inference_mode():
            visual = hand_visual(backend, enc, red, rule)
            before = backend.embed_tokens(torch.tensor(chat.before))
            after = backend.embed_tokens(torch.tensor(chat.after))
            expected = torch.cat([before, visual, after])
            torch.testing.assert_close(emb, expected)
            # the model's own forward on these inputs_embeds gives the answer's first token
            logits = backend.model(inputs_embeds=expected[None]).logits[0, -1]
        first = int(logits.argmax())
        assert answer.token_ids[0] == first, name
        assert answer.n_visual_tokens == visual.shape[0] and answer.n_prompt_tokens == expected.shape[0], name
        seen.add(name)
    assert seen == {name for name, rule in rules.items() if rule.enabled}, seen


def test_fastv_is_refused_with_its_reason(backend):
    enc = backend.encode(tiny.image(7))
    with pytest.raises(InputError, match="FastV is off on LLaVA-NeXT"):
        backend.lm_attention(enc, PROMPT)


def test_square_image_sees_base_and_tiles(backend):
    """The issue's symptom: a LLaVA-NeXT checkpoint run as LLaVA-1.5 saw only the base crop's 16 tokens."""
    enc = backend.encode(tiny.image(8, (80, 64)))
    assert enc.layout.n_lm == 70 and enc.tokens.n == 64 and enc.layout.n_base == tiny.N_PATCHES


def test_folder_loads_from_python_and_enforces_the_family_rules(tmp_path):
    """llava_next.load on a saved folder (no hub): the same weights; enabled methods reduce and answer, a disabled
    one is refused with its one-sentence reason, whether asked by name or handed in as a reduction."""
    folder = tiny.save_tiny_llava_next(tmp_path / "next")
    backend = nx.load(str(folder), "cpu")
    ref = tiny.tiny_llava_next_model(0)
    for a, b in zip(backend.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert not backend.has_text_tower and "PAR" in backend.notice  # the default CLIP is on the hub, which is off
    enc = backend.encode(tiny.image(9, (80, 64)))
    red = backend.reduce(enc, "divprune", REDUCERS["divprune"].params(budget=10))
    assert red.kept.numel() == 10
    answer = backend.answer(enc, PROMPT, red, max_new_tokens=2)
    assert answer.n_visual_tokens == 10 + len({int(r) for r in enc.layout.row_of(red.kept) if r >= 0})
    with pytest.raises(InputError, match="prumerge is off on LLaVA-NeXT"):
        backend.reduce(enc, "prumerge")
    direct = REDUCERS["prumerge"](enc.tokens)
    with pytest.raises(InputError, match="prumerge is off on LLaVA-NeXT"):
        backend.answer(enc, PROMPT, direct, max_new_tokens=1)
    with pytest.raises(InputError, match="spatial"):
        backend.reduce(enc, "par", REDUCERS["par"].params(spatial=True), query=enc.cls_joint)


def test_other_folders_are_refused_by_the_python_loader(tmp_path):
    from explorer.backend import families

    folder = tiny.save_tiny_llava(tmp_path / "llava")
    with pytest.raises(families.CheckpointError, match="not a LLaVA-NeXT checkpoint"):
        nx.load(str(folder), "cpu")


@pytest.mark.parametrize("size", SIZES)
def test_views_show_the_base_crop_and_the_unpadded_tiles(backend, size):
    """What the model sees: the base crop at S×S, the padded canvas of nph×npw tiles (both the processor's own
    pixels), and its unpadded window of exactly H'×W' patches."""
    import numpy as np

    img = tiny.image(12, size)
    enc = backend.encode(img)
    layout, views = enc.layout, backend.views(img)
    s, p, k = tiny.IMAGE_SIZE, tiny.PATCH, 2
    (nph, npw), (gh, gw) = layout.tiles, layout.tile_grid
    assert views.base.size == (s * k, s * k)
    assert views.canvas.size == (npw * s * k, nph * s * k)
    assert views.tiles.size == (gw * p * k, gh * p * k)
    # the same pixels as the processor's own crops (denormalised), up to the resampling filters' differences
    ip = tiny.tiny_next_image_processor()
    pv = ip(img, return_tensors="pt")["pixel_values"][0, :layout.n_crops].float()
    mean, std = torch.tensor(ip.image_mean).view(3, 1, 1), torch.tensor(ip.image_std).view(3, 1, 1)
    crops = ((pv * std + mean) * 255).clamp(0, 255)  # [crops, 3, S, S]
    own_canvas = crops[1:].view(nph, npw, 3, s, s).permute(2, 0, 3, 1, 4).reshape(3, nph * s, npw * s)
    one = nx.anyres_views(img, layout, backend.model.config, scale=1)
    mine_canvas = torch.from_numpy(np.asarray(one.canvas, dtype=np.float32)).permute(2, 0, 1)
    mine_base = torch.from_numpy(np.asarray(one.base, dtype=np.float32)).permute(2, 0, 1)
    assert (mine_canvas - own_canvas).abs().mean() < 12
    assert (mine_base - crops[0]).abs().mean() < 12


def test_pictures_per_part(backend):
    """Kept patches drawn on each part's own grid: the base crop's and the tile grid's (non-square) pictures."""
    import numpy as np

    from explorer.pictures import parts

    img = tiny.image(13, (64, 120))
    enc = backend.encode(img)
    views = backend.views(img)
    canvases = parts.part_canvases([views.base, views.tiles], enc.layout.parts())
    red = backend.reduce(enc, "random", REDUCERS["random"].params(budget=12))
    pictures = parts.kept_parts(canvases, red.kept)
    assert [name for name, _ in pictures] == ["base", "tiles"]
    for (name, picture), view in zip(pictures, (views.base, views.tiles)):
        assert picture.shape == (view.size[1], view.size[0], 3), name
    kept = red.kept.numpy()
    nb = enc.layout.n_base
    base_canvas, tile_canvas = canvases[0][1], canvases[1][1]
    np.testing.assert_array_equal(pictures[0][1], base_canvas.kept(kept[kept < nb]))
    np.testing.assert_array_equal(pictures[1][1], tile_canvas.kept(kept[kept >= nb] - nb))
    heat = parts.heat_parts(canvases, enc.tokens.cls_attn / enc.tokens.cls_attn.max())
    assert [h.shape for _, h in heat] == [p.shape for _, p in pictures]
