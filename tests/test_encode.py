"""explorer/backend pure parts: geometry, content keys, the LRU, attention formulas, prompt rewriting,
the CLIP tokenizer contract and the pooled query embedding. No model weights beyond a tiny text tower."""

from __future__ import annotations

import io
import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from explorer.backend import models
from explorer.backend.attention import attention_head_mean, attention_official
from explorer.backend.geometry import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Geometry, content_key, patch_grid
from explorer.backend.prompts import TEMPLATES, content_phrase, embed_query, pool_text_embeddings, rewrite_prompt
from explorer.backend.protocol import Encoded
from reducers.cache import LRU
from reducers import VisualTokens
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

SOT, EOT = 49406, 49407


# ----------------------------------------------------------------------------------------------------------
# Geometry: which region of the image the model sees
# ----------------------------------------------------------------------------------------------------------
SQUARE = Geometry((56, 56))


@pytest.mark.parametrize("mode, size, box", [
    ("crop", (200, 100), (50, 0, 150, 100)),  # landscape: centred square of the short side
    ("crop", (100, 200), (0, 50, 100, 150)),  # portrait
    ("crop", (120, 120), (0, 0, 120, 120)),  # square
    ("pad", (200, 100), (0, -50, 200, 150)),  # expand2square: the long side, reaching past the image
    ("pad", (100, 200), (-50, 0, 150, 200)),
    ("pad", (120, 120), (0, 0, 120, 120)),
    ("squash", (200, 100), (0, 0, 200, 100)),  # the whole image, stretched
    ("squash", (100, 200), (0, 0, 100, 200)),
    ("squash", (120, 120), (0, 0, 120, 120)),
])
def test_box_square_tower(mode, size, box):
    assert Geometry((56, 56), mode).box(*size) == pytest.approx(box)


@pytest.mark.parametrize("mode, size, box", [
    ("crop", (100, 100), (0, 25, 100, 75)),  # tower input 2:1 (W=56, H=28)
    ("crop", (300, 100), (50, 0, 250, 100)),
    ("pad", (100, 100), (-50, 0, 150, 100)),
    ("pad", (300, 100), (0, -25, 300, 125)),
])
def test_box_wide_tower(mode, size, box):
    got = Geometry((56, 28), mode).box(*size)
    assert got == pytest.approx(box)
    assert (got[2] - got[0]) / (got[3] - got[1]) == pytest.approx(2.0)


def test_from_processor_modes():
    vc = types.SimpleNamespace(image_size=56, patch_size=14)
    assert Geometry.from_processor(None, vc) == Geometry((56, 56))
    crop = types.SimpleNamespace(do_center_crop=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25])
    g = Geometry.from_processor(crop, vc)
    assert (g.mode, g.mean, g.std) == ("crop", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert Geometry.from_processor(types.SimpleNamespace(do_pad=True, do_center_crop=True), vc).mode == "pad"
    assert Geometry.from_processor(types.SimpleNamespace(do_center_crop=False), vc).mode == "squash"
    wide = types.SimpleNamespace(image_size=(28, 56), patch_size=14)  # (H, W) as configs write it
    assert Geometry.from_processor(None, wide).size == (56, 28)
    assert patch_grid(wide) == (2, 4)
    assert patch_grid(types.SimpleNamespace(image_size=336, patch_size=14)) == (24, 24)


def test_crop_matches_clip_image_processor():
    """"crop" is what CLIPImageProcessor (resize shortest edge + centre crop) produces: exactly for square
    images, up to the processor's sub-pixel rounding of the crop offset otherwise."""
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    g = Geometry.from_processor(proc, types.SimpleNamespace(image_size=56, patch_size=14))
    assert g == Geometry((56, 56), "crop")
    for size, exact in (((56, 56), True), ((112, 112), True), ((160, 100), False), ((90, 200), False)):
        img = tiny.image(5, size)
        ours, _ = g.pixel_values(img)
        theirs = proc(images=img, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape == (1, 3, 56, 56)
        diff = (ours - theirs).abs()
        if exact:
            assert float(diff.max()) < 1e-5, size
        else:
            assert float(diff.mean()) < 0.1, size


def test_pixel_values_normalisation():
    colour = (255, 0, 128)
    img = Image.new("RGB", (90, 60), colour)
    pv, box = SQUARE.pixel_values(img)
    assert pv.shape == (1, 3, 56, 56) and pv.dtype == torch.float32
    assert box == pytest.approx((15, 0, 75, 60))
    for c in range(3):
        want = (colour[c] / 255.0 - OPENAI_CLIP_MEAN[c]) / OPENAI_CLIP_STD[c]
        torch.testing.assert_close(pv[0, c], torch.full((56, 56), want), atol=1e-5, rtol=0)
    custom = Geometry((56, 56), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    pv2, _ = custom.pixel_values(Image.new("RGB", (20, 20), (255, 0, 255)))
    torch.testing.assert_close(pv2[0, :, 3, 3], torch.tensor([1.0, -1.0, 1.0]))


def test_pad_fills_with_mean_colour():
    img = Image.new("RGB", (200, 100), (255, 255, 255))
    pv, box = Geometry((56, 56), "pad").pixel_values(img)
    assert box == pytest.approx((0, -50, 200, 150))
    # the outer quarter (rows 0..13 and 42..55) is padding: the mean colour, ≈ 0 after normalisation
    assert float(pv[0, :, :10].abs().max()) < 0.01 and float(pv[0, :, 46:].abs().max()) < 0.01
    white = torch.tensor([(1 - m) / s for m, s in zip(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)])
    torch.testing.assert_close(pv[0, :, 18:38].mean((1, 2)), white, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode, size", [("crop", (280, 140)), ("crop", (140, 280)), ("pad", (280, 140)),
                                        ("squash", (168, 112)), ("crop", (56, 56))])
def test_patch_box_points_at_the_patch_the_model_sees(mode, size):
    """Paint exactly Encoded.patch_box(r, c) of the original image; the model's input shows that colour in
    patch (r, c) (interior pixels, away from resampling blur) and not in far-away patches."""
    g = Geometry((56, 56), mode)
    grid = (4, 4)
    box = g.box(*size)
    enc = _encoded(box, size, grid)
    checked = 0
    for r, c in ((1, 2), (0, 0), (3, 3), (2, 1)):
        x0, y0, x1, y1 = enc.patch_box(r, c)
        if x0 < 0 or y0 < 0 or x1 > size[0] or y1 > size[1]:
            continue  # ("pad") this patch is padding, outside the picture
        checked += 1
        assert x1 - x0 == pytest.approx((box[2] - box[0]) / 4) and y1 - y0 == pytest.approx((box[3] - box[1]) / 4)
        img = Image.new("RGB", size, (0, 0, 0))
        arr = np.asarray(img).copy()
        arr[int(round(y0)):int(round(y1)), int(round(x0)):int(round(x1))] = (255, 0, 0)
        pv, _ = g.pixel_values(Image.fromarray(arr))
        red = pv[0, 0]
        inner = red[r * 14 + 3:(r + 1) * 14 - 3, c * 14 + 3:(c + 1) * 14 - 3]
        hi = (1 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0]
        assert float(inner.min()) > hi - 0.2, (r, c)
        far_r, far_c = (r + 2) % 4, (c + 2) % 4
        far = red[far_r * 14:(far_r + 1) * 14, far_c * 14:(far_c + 1) * 14]
        assert float(far.max()) < 0.5, (r, c)  # black (or the padding's mean colour), never red
    assert checked >= 2


def _encoded(box, size, grid):
    n = grid[0] * grid[1]
    vt = VisualTokens(features=torch.zeros(n, 4), grid=grid)
    return Encoded("k", vt, torch.zeros(n), Image.new("RGB", (8, 8)), box, size, 0.0)


def test_patch_boxes_tile_the_crop_box():
    box = (50.0, -10.0, 150.0, 90.0)
    enc = _encoded(box, (200, 80), (3, 5))
    assert enc.patch_box(0, 0) == pytest.approx((50, -10, 70, 100 / 3 - 10))
    assert enc.patch_box(2, 4) == pytest.approx((130, 200 / 3 - 10, 150, 90))
    area = sum((b[2] - b[0]) * (b[3] - b[1]) for b in (enc.patch_box(r, c) for r in range(3) for c in range(5)))
    assert area == pytest.approx(100 * 100)


def test_view_is_the_region_at_display_scale():
    img = tiny.image(1, (200, 100))
    view = Geometry((56, 56)).view(img)
    assert view.size == (112, 112)
    direct = img.crop((50, 0, 150, 100)).resize((112, 112), Image.BICUBIC)
    assert np.abs(np.asarray(view, float) - np.asarray(direct, float)).max() <= 2


# ----------------------------------------------------------------------------------------------------------
# Content keys and the LRU
# ----------------------------------------------------------------------------------------------------------
def test_content_key():
    img = tiny.image(7)
    key = content_key(img)
    assert content_key(img.copy()) == key
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert content_key(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) == key
    assert content_key(Image.fromarray(np.asarray(img).copy())) == key
    changed = np.asarray(img).copy()
    changed[5, 5, 1] ^= 1
    assert content_key(Image.fromarray(changed)) != key
    assert content_key(img.convert("L")) != content_key(img.convert("L").convert("RGB"))
    flat = np.asarray(img).reshape(-1, 3)
    assert content_key(Image.fromarray(flat.reshape(64, 80, 3))) == key
    assert content_key(Image.fromarray(flat.reshape(80, 64, 3))) != key  # same bytes, other shape
    assert len(key) == 32 and int(key, 16) >= 0


def test_lru():
    with pytest.raises(ValueError):
        LRU(0)
    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert "b" not in lru and "a" in lru and "c" in lru and len(lru) == 2
    assert lru.peek("a") == 1 and lru.get("zzz") is None
    assert lru.hits == 1 and lru.misses == 1
    lru.put("a", 10)
    assert lru.get("a") == 10 and len(lru) == 2


# ----------------------------------------------------------------------------------------------------------
# Attention formulas (the Backend tests check them against the model; here against plain loops)
# ----------------------------------------------------------------------------------------------------------
def test_attention_formulas_against_loops():
    g = torch.Generator().manual_seed(0)
    t, d, heads = 7, 12, 3
    q, k = torch.randn(t, d, generator=g), torch.randn(t, d, generator=g)
    scores = [sum(float(q[0, x] * k[j, x]) for x in range(d)) / math.sqrt(d) for j in range(t)]
    z = sum(math.exp(s) for s in scores)
    official = [math.exp(s) / z for s in scores][1:]
    torch.testing.assert_close(attention_official(q, k), torch.tensor(official))
    hd = d // heads
    per_head = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        s = [float(q[0, sl] @ k[j, sl]) / math.sqrt(hd) for j in range(t)]
        zz = sum(math.exp(v) for v in s)
        per_head.append([math.exp(v) / zz for v in s])
    mean = [sum(p[j] for p in per_head) / heads for j in range(1, t)]
    torch.testing.assert_close(attention_head_mean(q, k, heads), torch.tensor(mean))
    assert attention_official(q.half(), k.half()).dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------
# Prompt rewriting
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, phrase", [
    ("What color is the car?", "color the car"),
    ("How many people are there?", "many people"),
    ("Is there a dog?", "a dog"),
    ("What's on the table?", "on the table"),
    ("Where is the cat's toy?", "the cat's toy"),
    ("Can you tell me what this is?", "this"),
    ("Please describe the image.", "the image"),
    ("a red bus", "a red bus"),
    ("What is it?", "it"),
    ("What\u2019s the dog holding?", "the dog holding"),  # typographic apostrophe
    ("Isn't there a cat?", "a cat"),
    ("WHAT COLOR IS THE CAR", "COLOR THE CAR"),
    ("what_is this", "this"),
])
def test_content_phrase(prompt, phrase):
    assert content_phrase(prompt) == phrase


@pytest.mark.parametrize("prompt", ["这只猫是什么颜色？", "Какого цвета кошка?", "この犬は何色ですか？", "ما لون السيارة؟"])
def test_content_phrase_non_latin(prompt):
    phrase = content_phrase(prompt)
    assert phrase.strip()
    assert not any(ch in phrase for ch in "?？؟")


def test_content_phrase_falls_back_to_the_words():
    assert content_phrase("What is?") == "What is"  # nothing left → the prompt's own words
    assert content_phrase("???") == "" and content_phrase("") == "" and content_phrase(None) == ""


def test_rewrite_prompt():
    phrase, texts = rewrite_prompt("  What color is the car?  ")
    assert phrase == "color the car"
    assert texts == tuple(t.format(p="color the car") for t in TEMPLATES)
    assert "a photo of color the car." in texts and "color the car" in texts
    assert rewrite_prompt("  What color is the car? ", rewrite=False) == ("What color is the car?",
                                                                          ("What color is the car?",))


# ----------------------------------------------------------------------------------------------------------
# The CLIP tokenizer and the pooled query
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def clip_tok():
    return models.clip_tokenizer(77)


def test_clip_tokenizer_ids(clip_tok):
    ids, mask, truncated = clip_tok(["a photo of a cat.", "cat"])
    assert ids.shape == mask.shape == (2, 77) and not truncated
    assert (ids[:, 0] == SOT).all()
    for row, m in zip(ids, mask):
        n = int(m.sum())
        assert row[n - 1] == EOT and (row[n:] == 0).all() and (m[:n] == 1).all() and (m[n:] == 0).all()
    assert int(mask[1].sum()) == 3  # sot, cat, eot


def test_clip_tokenizer_truncation(clip_tok):
    fits = " ".join(["a"] * 75)  # 75 tokens + sot + eot = 77
    ids, mask, truncated = clip_tok([fits])
    assert not truncated and ids[0, -1] == EOT and int(mask.sum()) == 77
    ids, mask, truncated = clip_tok([fits + " a"])
    assert truncated and ids[0, 0] == SOT and ids[0, -1] == EOT and int(mask.sum()) == 77
    ids, _, truncated = clip_tok(["x" * 10_000])
    assert truncated and ids[0, 0] == SOT and ids[0, -1] == EOT


def test_embed_query_pools_the_templates():
    text = tiny.tiny_text_side()
    q = embed_query("What color is the car?", True, text.tokenize, text.forward)
    assert q.phrase == "color the car" and q.prompts == rewrite_prompt("What color is the car?")[1]
    assert q.rewrite and not q.truncated and q.prompt == "What color is the car?"
    assert q.embedding.shape == (tiny.JOINT,) and q.embedding.dtype == torch.float32
    with torch.inference_mode():
        per = []
        for t in q.prompts:
            ids, mask, _ = text.tokenize([t])
            per.append(F.normalize(text.text_model(input_ids=ids, attention_mask=mask).text_embeds[0], dim=0))
    want = F.normalize(torch.stack(per).mean(0), dim=0)
    torch.testing.assert_close(q.embedding, want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(pool_text_embeddings(torch.stack(per) * 3.0), want, atol=1e-5, rtol=1e-4)
    raw = embed_query("What color is the car?", False, text.tokenize, text.forward)
    assert raw.prompts == ("What color is the car?",) and not raw.rewrite
    assert not torch.allclose(raw.embedding, q.embedding)


@pytest.mark.parametrize("prompt", ["x" * 10_000, "What color is the car? " * 500])
def test_embed_query_long_prompt_is_truncated(prompt):
    text = tiny.tiny_text_side()
    q = embed_query(prompt, True, text.tokenize, text.forward)
    assert q.truncated
    assert torch.isfinite(q.embedding).all()
    torch.testing.assert_close(q.embedding.norm(), torch.tensor(1.0))


@pytest.mark.parametrize("prompt", ["这只猫是什么颜色？", "Какого цвета кошка?", "???", ""])
def test_embed_query_odd_prompts(prompt):
    text = tiny.tiny_text_side()
    q = embed_query(prompt, True, text.tokenize, text.forward)
    assert not q.truncated and torch.isfinite(q.embedding).all()
    torch.testing.assert_close(q.embedding.norm(), torch.tensor(1.0))
