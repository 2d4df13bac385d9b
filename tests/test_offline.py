"""The offline models as the app loads them: the real DINOv2 tower + untrained projector + SmolLM2 (default) and the
seeded CLIP hybrid (`offline-clip`). Loads through `load_backend(ExplorerConfig(...))` exactly as the app does
(the ONNX and GGUF files are converted once and cached in the user cache dir).

The semantic tests show the default tower is real: regions of the example photos pasted on a flat background
draw the CLS attention, PruMerge keeps them, and pointing PAR's query at one lights it up."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from explorer.backend import models, offline
from explorer.config import OFFLINE_CLIP, ExplorerConfig
from explorer.service import Explorer
from reducers import REDUCERS, BudgetParams
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("block_network")]

PROMPT = "What is in this picture?"
REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "assets"
PHOTOS = ["astronaut.jpg", "chelsea.jpg", "coffee.jpg", "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"]
SIDE, OBJECT, PATCH_PX = 672, 224, 28  # composite side, pasted region side (3 × 3 of the 8 × 8 … 24 × 24 grid)


@pytest.fixture(scope="module")
def backend():
    return models.load_backend(ExplorerConfig())


@pytest.fixture(scope="module")
def encoded(backend):
    return backend.encode(tiny.image(0, (96, 72)))


def composite(name: str, seed: int) -> tuple[Image.Image, np.ndarray]:
    """The centre of an example photo pasted on a flat grey square at a seeded position, and the [24, 24] mask of
    the patches lying wholly inside it."""
    rng = np.random.default_rng(seed)
    im = Image.open(ASSETS / name).convert("RGB")
    w, h = im.size
    s = min(w, h) // 2
    region = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((OBJECT, OBJECT))
    canvas = Image.new("RGB", (SIDE, SIDE), (128, 128, 128))
    x, y = (int(v) for v in rng.integers(0, SIDE - OBJECT, 2))
    canvas.paste(region, (x, y))
    inside = np.zeros((SIDE // PATCH_PX, SIDE // PATCH_PX), bool)
    inside[-(-y // PATCH_PX):(y + OBJECT) // PATCH_PX, -(-x // PATCH_PX):(x + OBJECT) // PATCH_PX] = True
    return canvas, inside.reshape(-1)


CASES = [(name, seed) for name in PHOTOS for seed in (0, 1)]


def test_loaded_the_offline_default(backend):
    assert backend.name == "offline" and backend.notice == offline.NOTICES["offline"]
    assert "DINOv2" in backend.notice and "not grounded" in backend.notice
    assert type(backend.vision_tower).__name__ == "Dinov2Model"
    assert backend.grid == (24, 24)
    assert backend.spec.attn_layer == 11  # hidden_states[-2] of the 12-layer tower is the input of layer[11]
    assert backend.geometry.mean == (0.485, 0.456, 0.406) and backend.geometry.mode == "crop"
    assert not backend.has_text_tower
    lm = backend.lm_config
    assert (lm.hidden_size, lm.num_hidden_layers) == (576, 30)  # SmolLM2-135M
    assert backend.projector.linear_1.in_features == 384 and backend.projector.linear_2.out_features == 576
    assert backend.image_token_id == backend.tokenizer.convert_tokens_to_ids(offline.IMAGE_TOKEN)
    expected = models.pick_device("auto")
    assert (backend.device.type, backend.dtype) == (expected[0].type, expected[1])


def test_the_tower_in_the_vlm_is_the_converted_dinov2(backend):
    """The assembled checkpoint's tower holds exactly the converted weights (nothing re-initialised)."""
    from explorer.backend import dinov2

    converted = dinov2.load_dinov2(offline.cache_root(), offline.IMAGE_SIZE)
    ours = backend.vision_tower.state_dict()
    for name, value in converted.state_dict().items():
        torch.testing.assert_close(ours[name].float().cpu(), value.float(), rtol=0, atol=0, msg=name)


def test_encode_gives_features_keys_attention_and_joint(backend, encoded):
    vt = encoded.tokens
    assert vt.features.shape == (576, 384) and vt.keys.shape == (576, 384) and vt.joint.shape == (576, 384)
    assert encoded.cls_joint.shape == (384,) and encoded.joint_last.shape == (576, 384)
    for t in (vt.features, vt.cls_attn, encoded.attn_head_mean, vt.joint):
        assert torch.isfinite(t).all()
    assert float(vt.cls_attn.sum()) < 1.0  # the CLS→patch row of a softmax that also covers CLS
    # the joint rows are the tower's final layer norm of the feature layer (no CLIP projection: no text side)
    norm = backend.vision_tower.layernorm
    pv, _ = backend.geometry.pixel_values(tiny.image(0, (96, 72)))
    with torch.inference_mode():
        hidden = backend.vision_tower(pixel_values=pv, output_hidden_states=True).hidden_states[-2][0]
        want = norm(hidden[1:]).float()
    torch.testing.assert_close(vt.joint, want, rtol=1e-4, atol=1e-4)
    assert backend.encode(tiny.image(0, (96, 72))) is encoded


def test_real_attention_is_peaked(backend):
    """A trained tower's penultimate CLS attention is far from uniform (a random tower's is nearly uniform)."""
    enc = backend.encode(Image.open(ASSETS / "coffee.jpg").convert("RGB"))
    a = enc.tokens.cls_attn.double()
    a = a / a.sum()
    assert float(a.max() / a.mean()) > 20


@pytest.mark.parametrize("name,seed", CASES)
def test_attention_lands_on_the_pasted_photo(backend, name, seed):
    image, inside = composite(name, seed)
    enc = backend.encode(image)
    a = enc.tokens.cls_attn.double().numpy()
    share = inside.mean()
    assert a[inside].sum() / a.sum() >= 2.5 * share, "attention mass inside the box ≥ 2.5 × its area share"
    kept = REDUCERS["prumerge"](enc.tokens).kept.numpy()
    assert inside[kept].mean() >= 2.5 * share, "PruMerge keeps the pasted region far above chance"


def test_most_prumerge_kept_patches_lie_inside_the_pasted_photos(backend):
    inside_kept = total_kept = 0
    for name, seed in CASES:
        image, inside = composite(name, seed)
        kept = REDUCERS["prumerge"](backend.encode(image).tokens).kept.numpy()
        inside_kept += int(inside[kept].sum())
        total_kept += kept.size
    assert inside_kept / total_kept > 0.5


@pytest.mark.parametrize("name", PHOTOS)
def test_pointing_at_a_pasted_photo_makes_par_relevance_highest_inside(backend, name):
    from explorer.settings import Settings

    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)
    image, inside = composite(name, 3)
    enc = backend.encode(image)
    rows, cols = np.nonzero(inside.reshape(24, 24))
    centre = ((cols.mean() + 0.5) * PATCH_PX, (rows.mean() + 0.5) * PATCH_PX)  # a pixel in the middle of the box
    settings = Settings.from_controls({"method": "par"}, explorer.schema, points=[centre])
    red, _, query = explorer.reduce(backend, enc, "", settings)
    assert query.kind == "points" and len(query.patches) == 1
    r = red.trace.relevance.numpy()
    assert inside[int(r.argmax())], "the most relevant patch lies in the pointed photo"
    assert r[inside].mean() > 2 * r[~inside].mean()


def test_answer_all_and_32_tokens(backend, encoded):
    for budget in (None, 32):
        red = None if budget is None else REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=budget))
        a1 = backend.answer(encoded, PROMPT, red, max_new_tokens=8)
        a2 = backend.answer(encoded, PROMPT, red, max_new_tokens=8)
        assert a1.text.strip(), a1
        assert a1.text == a2.text and a1.n_new_tokens == a2.n_new_tokens
        assert 1 <= a1.n_new_tokens <= 8
        assert a1.n_visual_tokens == (576 if budget is None else 32)
        assert a1.n_prompt_tokens == backend.n_text_tokens(PROMPT) + a1.n_visual_tokens


def test_checkpoints_are_cached_safetensors_outside_the_repo(backend):
    for kind in offline.KINDS:
        folder = offline.checkpoint(kind, ExplorerConfig().seed)
        assert (folder / "model.safetensors").is_file()
        assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt")) and not list(folder.glob("*.pkl"))
        assert folder.resolve().is_relative_to(offline.cache_root().resolve())
        assert not folder.resolve().is_relative_to(REPO)
    if not os.environ.get("VTE_CACHE_DIR") and not os.environ.get("XDG_CACHE_HOME"):
        assert offline.cache_root().resolve().is_relative_to(Path("~/.cache").expanduser().resolve())
    tracked = os.popen(f"git -C {REPO} ls-files '*.safetensors' '*.gguf' '*.onnx'").read().split()
    assert not tracked


def test_the_clip_hybrid_stays_available():
    """`offline-clip`: LLaVA-1.5's CLIP architecture with seeded random weights and a random text tower."""
    backend = models.load_backend(ExplorerConfig(model=OFFLINE_CLIP))
    assert backend.name == OFFLINE_CLIP and backend.has_text_tower and "random" in backend.notice
    assert type(backend.vision_tower).__name__ == "CLIPVisionModel"
    q = backend.encode_query("What color is the car?")
    assert q.phrase == "color the car" and not q.truncated and q.embedding.shape == (512,)
    enc = backend.encode(tiny.image(1, (96, 72)))
    assert enc.tokens.features.shape == (576, 768) and enc.tokens.joint.shape == (576, 512)
    a = enc.tokens.cls_attn.double()
    assert float(a.max() / a.mean()) < 5  # a random tower's attention is nearly flat


def test_clip_flag_is_refused_with_the_dinov2_tower():
    with pytest.raises(ValueError, match="no CLIP image–text space"):
        models.load_backend(ExplorerConfig(clip="openai/clip-vit-large-patch14-336"))
