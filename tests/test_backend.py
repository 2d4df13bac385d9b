"""models.Backend on a tiny seeded LLaVA (CLIP tower + LLaMA), checked against the model's own computations.

Every number the explorer shows or feeds is recomputed here by hand from the model's modules: the PruMerge
attention (official and head-mean), the patch features, keys and joint embeddings, and the exact input that
reaches the language model for every reducer. Runs on CPU (fp32) and, when present, CUDA (fp16).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import threading

import pytest
import torch
from PIL import Image

from explorer.backend import answer as ans
from explorer.backend import models
from explorer.config import ExplorerConfig
from explorer.backend.geometry import consuming_layer, hidden_state_index
from explorer.backend.tower import vision_core, vision_forward
from explorer.backend.hooks import capture
from tests.tiny import capture_inputs
from explorer.errors import InputError
from reducers import REDUCERS, BudgetParams
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

PROMPT = "What color is the car?"


@pytest.fixture(scope="module", params=tiny.devices())
def backend(request):
    return tiny.tiny_backend(request.param)


@pytest.fixture(scope="module")
def encoded(backend):
    return backend.encode(tiny.image(0))


def tower_outputs(backend, img, **kwargs):
    """Pixel values and the tower's own forward (all hidden states) for `img`."""
    pv, _ = backend.geometry.pixel_values(img)
    pv = pv.to(backend.device, backend.dtype)
    with torch.inference_mode():
        out = backend.vision_tower(pixel_values=pv, output_hidden_states=True, return_dict=True, **kwargs)
    return pv, out


def hand_qk(backend, hidden_states, layer_index):
    """q_proj / k_proj of encoder.layers[layer_index] applied to layer_norm1(hidden_states[layer_index])."""
    layer = vision_core(backend.vision_tower).encoder.layers[layer_index]
    with torch.inference_mode():
        x = layer.layer_norm1(hidden_states[layer_index])
        return layer.self_attn.q_proj(x)[0].float(), layer.self_attn.k_proj(x)[0].float()


# ----------------------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------------------
def test_hub_is_offline():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("TRANSFORMERS_OFFLINE") == "1"


def test_network_guard_is_active():
    import socket

    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("203.0.113.1", 443), timeout=0.1)


# ----------------------------------------------------------------------------------------------------------
# Layers derived from the config
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("feature_layer, layers, index, consumer", [
    (-2, 24, 23, 23),  # LLaVA-1.5: hidden_states[-2] of 24 layers is the input of layers[23]
    (-2, 3, 2, 2),
    (-1, 24, 24, 23),  # the last output has no consumer: the layer that produced it
    (0, 24, 0, 0),  # embeddings feed layers[0]
    (5, 12, 5, 5),
    (12, 12, 12, 11),
    (-13, 12, 0, 0),
])
def test_consuming_layer_single(feature_layer, layers, index, consumer):
    assert hidden_state_index(feature_layer, layers) == index
    assert consuming_layer(feature_layer, layers) == consumer


@pytest.mark.parametrize("feature_layers, layers, consumer", [
    ([-2, -5], 24, 23),  # the deepest selected state decides
    ([3, 7], 24, 7),
    ((-1, 0), 12, 11),
    ([-24], 24, 1),
])
def test_consuming_layer_lists(feature_layers, layers, consumer):
    assert consuming_layer(feature_layers, layers) == consumer


@pytest.mark.parametrize("feature_layer, layers", [(25, 24), (-26, 24), ([-2, 30], 24), (-14, 12)])
def test_consuming_layer_out_of_range(feature_layer, layers):
    with pytest.raises(ValueError, match="outside"):
        consuming_layer(feature_layer, layers)


def test_backend_spec_from_config(backend):
    vc = backend.model.config.vision_config
    assert backend.spec.attn_layer == vc.num_hidden_layers - 1 == consuming_layer(-2, vc.num_hidden_layers)
    assert backend.spec.num_heads == vc.num_attention_heads
    assert backend.grid == tiny.GRID
    assert backend.image_token_id == tiny.IMAGE_TOKEN_ID
    assert tiny.EOS_ID in backend.stop_ids


# ----------------------------------------------------------------------------------------------------------
# Attention, features, keys, joint: equal to the model's own computation
# ----------------------------------------------------------------------------------------------------------
def test_official_attention_equals_hand_computation(backend, encoded):
    _, out = tower_outputs(backend, tiny.image(0))
    L = backend.model.config.vision_config.num_hidden_layers
    li = consuming_layer(-2, L)
    assert li == L - 1 and hidden_state_index(-2, L) == L - 1
    q, k = hand_qk(backend, out.hidden_states, li)
    d = q.shape[-1]
    assert d == tiny.VISION_WIDTH  # full width, no head split
    expected = torch.softmax(q[0] @ k.T / math.sqrt(d), dim=-1)[1:].cpu()
    got = encoded.attention("official")
    assert got.shape == (tiny.N_PATCHES,) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, **tiny.tol(backend.dtype))
    assert float(got.sum()) < 1.0  # the CLS column is dropped after the softmax
    # the check can tell layers apart: the previous layer's attention is a different vector
    q2, k2 = hand_qk(backend, out.hidden_states, li - 1)
    other = torch.softmax(q2[0] @ k2.T / math.sqrt(d), dim=-1)[1:].cpu()
    assert not torch.allclose(got, other, atol=1e-3)


def test_head_mean_equals_model_output_attentions(backend, encoded):
    eager = copy.deepcopy(backend.vision_tower)
    eager.set_attn_implementation("eager")
    pv, _ = backend.geometry.pixel_values(tiny.image(0))
    with torch.inference_mode():
        out = eager(pixel_values=pv.to(backend.device, backend.dtype), output_attentions=True, return_dict=True)
    li = backend.spec.attn_layer
    attn = out.attentions[li]  # [1, heads, T, T]
    assert attn.shape == (1, tiny.VISION_HEADS, tiny.N_PATCHES + 1, tiny.N_PATCHES + 1)
    expected = attn[0, :, 0, 1:].float().mean(0).cpu()
    torch.testing.assert_close(encoded.attention("head-mean"), expected, **tiny.tol(backend.dtype))
    assert not torch.allclose(encoded.attention("head-mean"), encoded.attention("official"), atol=1e-4)
    with pytest.raises(ValueError, match="official"):
        encoded.attention("mean")


def test_visionzip_reads_the_producing_layer_as_the_model_computes_it(backend, encoded):
    """VisionZip's inputs: the CLS row of the per-head attention of the layer whose output is the feature state
    (one before the consuming layer), summed over heads as `output_attentions` gives it; that layer's keys
    averaged over heads; the CLS row of the feature state; and the projector's outputs (DivPrune)."""
    eager = copy.deepcopy(backend.vision_tower)
    eager.set_attn_implementation("eager")
    pv, _ = backend.geometry.pixel_values(tiny.image(0))
    with torch.inference_mode():
        out = eager(pixel_values=pv.to(backend.device, backend.dtype), output_attentions=True,
                    output_hidden_states=True, return_dict=True)
    source = backend.spec.source_layer
    assert source == backend.spec.attn_layer - 1 == tiny.VISION_LAYERS - 2
    vt, t = encoded.tokens, tiny.tol(backend.dtype)
    want = out.attentions[source][0, :, 0, 1:].float().sum(0).cpu()
    torch.testing.assert_close(vt.feature_layer_attn, want, **t)
    _, k = hand_qk(backend, out.hidden_states, source)
    heads = tiny.VISION_HEADS
    torch.testing.assert_close(vt.feature_layer_keys, k.view(k.shape[0], heads, -1).mean(1)[1:].cpu(), **t)
    torch.testing.assert_close(vt.cls_feature, out.hidden_states[-2][0, 0].float().cpu(), **t)
    with torch.inference_mode():
        projected = backend.projector(vt.features.to(backend.device, backend.dtype)).float().cpu()
    torch.testing.assert_close(vt.projected, projected, **t)


def test_features_keys_joint(backend, encoded):
    _, out = tower_outputs(backend, tiny.image(0))
    vt = encoded.tokens
    t = tiny.tol(backend.dtype)
    torch.testing.assert_close(vt.features, out.hidden_states[-2][0, 1:].float().cpu(), **t)
    _, k = hand_qk(backend, out.hidden_states, backend.spec.attn_layer)
    torch.testing.assert_close(vt.keys, k[1:].cpu(), **t)
    core = vision_core(backend.vision_tower)
    with torch.inference_mode():  # TRIM: the feature layer (hidden_states[-2]); the last layer is the option
        joint = backend.text.visual_projection(core.post_layernorm(out.hidden_states[-2][0]))
        last = backend.text.visual_projection(core.post_layernorm(out.hidden_states[-1][0]))
    torch.testing.assert_close(vt.joint, joint[1:].float().cpu(), **t)
    torch.testing.assert_close(encoded.cls_joint, joint[0].float().cpu(), **t)
    torch.testing.assert_close(encoded.joint_last, last[1:].float().cpu(), **t)
    torch.testing.assert_close(encoded.cls_joint_last, last[0].float().cpu(), **t)
    assert vt.features.shape == (tiny.N_PATCHES, tiny.VISION_WIDTH)
    assert vt.joint.shape == (tiny.N_PATCHES, tiny.JOINT)
    assert vt.grid == tiny.GRID and encoded.grid == tiny.GRID
    for x in (vt.features, vt.keys, vt.cls_attn, vt.joint, encoded.attn_head_mean):
        assert x.device.type == "cpu" and x.dtype == torch.float32


def test_projected_features_equal_llava_image_features(backend, encoded):
    """What the explorer projects is what LLaVA itself would put at the image tokens."""
    pv, _ = backend.geometry.pixel_values(tiny.image(0))
    cfg = backend.model.config
    with torch.inference_mode():
        own = backend.model.model.get_image_features(
            pixel_values=pv.to(backend.device, backend.dtype), vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output[0]
        ours = backend.projector(encoded.tokens.features.to(backend.device, backend.dtype))
    torch.testing.assert_close(ours.float(), own.float(), **tiny.tol(backend.dtype))


@pytest.mark.parametrize("device", tiny.devices())
@pytest.mark.parametrize("feature_layer", [-3, 1, [-2, -3]])
def test_other_feature_layers(feature_layer, device):
    """Feature layer and consuming layer follow the config, including LLaVA's concatenated layer lists."""
    b = tiny.tiny_backend(device, feature_layer=feature_layer)
    t = tiny.tol(b.dtype)
    L = tiny.VISION_LAYERS
    layers = [feature_layer] if isinstance(feature_layer, int) else feature_layer
    assert b.spec.attn_layer == consuming_layer(feature_layer, L)
    enc = b.encode(tiny.image(3))
    _, out = tower_outputs(b, tiny.image(3))
    feats = torch.cat([out.hidden_states[f][0, 1:] for f in layers], dim=-1)
    torch.testing.assert_close(enc.tokens.features, feats.float().cpu(), **t)
    q, k = hand_qk(b, out.hidden_states, b.spec.attn_layer)
    attn = torch.softmax(q[0] @ k.T / math.sqrt(q.shape[-1]), -1)[1:]
    torch.testing.assert_close(enc.attention(), attn.cpu(), **t)
    pv, _ = b.geometry.pixel_values(tiny.image(3))
    with torch.inference_mode():
        own = b.model.model.get_image_features(pixel_values=pv.to(b.device, b.dtype), vision_feature_layer=feature_layer,
                                               vision_feature_select_strategy="default").pooler_output[0]
        ours = b.projector(enc.tokens.features.to(b.device, b.dtype))
    torch.testing.assert_close(ours.float(), own.float(), **t)


# ----------------------------------------------------------------------------------------------------------
# What reaches the language model
# ----------------------------------------------------------------------------------------------------------
def reductions(enc, backend):
    query = backend.encode_query(PROMPT)
    vt = enc.tokens.derive(query=query.embedding)
    out = {}
    for name, entry in REDUCERS.items():
        if all(getattr(vt, need) is not None for need in entry.needs):
            params = entry.params(budget=5) if entry.budgeted else entry.params()
            out[name] = entry(vt, params)
    return out


def test_lm_input_is_exactly_the_reduced_tokens(backend, encoded):
    chat = backend.chat(PROMPT)
    assert chat.text == ans.LLAVA_15_FORMAT.format(image="<image>", prompt=PROMPT)  # no chat template
    assert chat.before[0] == backend.tokenizer.bos_token_id
    assert tiny.IMAGE_TOKEN_ID not in chat.before + chat.after
    lm = backend.model.model.language_model
    sizes = set()
    t = tiny.tol(backend.dtype)
    for name, red in reductions(encoded, backend).items():
        m = len(red.tokens)
        sizes.add(m)
        with capture_inputs(lm) as calls:
            answer = backend.answer(encoded, PROMPT, red, max_new_tokens=2)
        emb = calls[0]["inputs_embeds"]
        assert emb.shape == (1, len(chat.before) + m + len(chat.after), tiny.TEXT_WIDTH), name
        assert answer.n_visual_tokens == m, name
        assert answer.n_prompt_tokens == emb.shape[1], name
        with torch.inference_mode():
            visual = backend.projector(red.tokens.to(backend.device, backend.dtype))
            before = backend.embed_tokens(torch.tensor(chat.before, device=backend.device))
            after = backend.embed_tokens(torch.tensor(chat.after, device=backend.device))
        nb = len(chat.before)
        torch.testing.assert_close(emb[0, nb:nb + m], visual, **t)
        torch.testing.assert_close(emb[0, :nb], before, **t)
        torch.testing.assert_close(emb[0, nb + m:], after, **t)
        # one prefill, then one single-token step per further generated token
        assert len(calls) == answer.n_new_tokens + (answer.stop == "eos"), name
        assert all(c["inputs_embeds"].shape[1] == 1 for c in calls[1:]), name
    assert len(sizes) >= 4, sizes  # the reducers really fed different numbers of tokens
    assert tiny.N_PATCHES in sizes


def test_full_input_equals_llava_own_merge(backend, encoded):
    """tokens=None feeds all N patches exactly where LLaVA's own forward (input_ids + pixel_values) puts them,
    and the first greedy token equals the argmax of LLaVA's own logits."""
    chat = backend.chat(PROMPT)
    n = tiny.N_PATCHES
    ids = torch.tensor([list(chat.before) + [backend.image_token_id] * n + list(chat.after)], device=backend.device)
    pv, _ = backend.geometry.pixel_values(tiny.image(0))
    lm = backend.model.model.language_model
    with torch.inference_mode(), capture_inputs(lm) as own_calls:
        logits = backend.model(input_ids=ids, pixel_values=pv.to(backend.device, backend.dtype)).logits
    with capture_inputs(lm) as calls:
        first = next(iter(backend.answer_stream(encoded, PROMPT, max_new_tokens=1)))
    torch.testing.assert_close(calls[0]["inputs_embeds"], own_calls[0]["inputs_embeds"], **tiny.tol(backend.dtype))
    top2 = logits[0, -1].float().topk(2)
    token = int(top2.indices[0])
    clear = float(top2.values[0] - top2.values[1]) > (1e-4 if backend.dtype == torch.float32 else 2e-2)
    if token not in backend.stop_ids and clear:  # (an fp16 near-tie may go either way)
        assert first == backend.tokenizer.decode([token], skip_special_tokens=True).strip()


def test_answers_are_deterministic_and_stream(backend, encoded):
    red = REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=6))
    a1 = backend.answer(encoded, PROMPT, red, max_new_tokens=6)
    a2 = backend.answer(encoded, PROMPT, red, max_new_tokens=6)
    assert a1.text == a2.text and a1.n_new_tokens == a2.n_new_tokens and a1.stop == a2.stop
    assert a1.n_visual_tokens == 6
    items = list(backend.answer_stream(encoded, PROMPT, red, max_new_tokens=6))
    *texts, final = items
    assert isinstance(final, ans.Answer)
    assert all(isinstance(t, str) for t in texts)
    assert len(texts) == final.n_new_tokens
    assert len(texts) >= 1 or final.stop == "eos"
    for prev, cur in zip(texts, texts[1:]):
        assert cur.startswith(prev)
    assert final.text == texts[-1] == a1.text
    assert final.n_visual_tokens == 6
    assert final.stop in ("eos", "length")
    assert final.n_new_tokens == 6 or final.stop == "eos"
    full = backend.answer(encoded, PROMPT, max_new_tokens=2)
    assert full.n_visual_tokens == tiny.N_PATCHES


def test_answer_stops_at_eos(backend, encoded):
    """Whatever the model's first two tokens are, declaring the second a stop id ends the answer after the
    first, with the stop token neither decoded nor counted."""
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT),
                                         encoded.tokens.features)
    ids = [t for t, _ in ans.greedy_stream(backend.model, embeds, 2, set())]
    assert len(ids) == 2
    b = models.LlavaBackend(backend.model, backend.tokenizer, backend.text, backend.geometry, name="eos",
                            notice="tiny")
    b.stop_ids = {ids[0]}
    out = b.answer(encoded, PROMPT, max_new_tokens=4)
    assert (out.stop, out.text, out.n_new_tokens) == ("eos", "", 0)
    if ids[1] != ids[0]:
        b.stop_ids = {ids[1]}
        out = b.answer(encoded, PROMPT, max_new_tokens=4)
        assert out.stop == "eos" and out.n_new_tokens == 1
        assert out.text == backend.tokenizer.decode([ids[0]], skip_special_tokens=True).strip()


def test_greedy_decoding_equals_generate(backend, encoded):
    """The hand-written KV-cache loop picks the same tokens as transformers' own greedy `generate`."""
    red = REDUCERS["prumerge"](encoded.tokens)
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT), red.tokens)
        ours = [t for t, _ in ans.greedy_stream(backend.model, embeds, 6, set())]
        theirs = backend.model.generate(inputs_embeds=embeds, attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long,
                                        device=backend.device), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                                        num_beams=1, eos_token_id=None, pad_token_id=0)
    assert ours == theirs[0, -6:].tolist()


def test_image_placeholder_in_the_prompt_is_neutralised(backend):
    """A user typing "<image>" must not create a second image slot."""
    chat = backend.chat("is <image> a cat <image> ?")
    assert tiny.IMAGE_TOKEN_ID not in chat.before + chat.after
    assert chat.text.count("<image>") == 1


@pytest.mark.parametrize("shape", [(3, tiny.VISION_WIDTH + 1), (tiny.VISION_WIDTH,)])
def test_answer_rejects_malformed_tokens(backend, encoded, shape):
    red = dataclasses.replace(REDUCERS["all"](encoded.tokens), tokens=torch.zeros(shape))
    with pytest.raises(InputError, match="Visual tokens"):
        backend.answer(encoded, PROMPT, red, max_new_tokens=1)


def test_answer_without_visual_tokens_is_the_text_only_prompt(backend, encoded):
    """Zero visual tokens (the text-only floor) feed exactly the chat prompt's text tokens."""
    red = dataclasses.replace(REDUCERS["all"](encoded.tokens), kept=encoded.tokens.features.new_zeros(0).long(),
                              tokens=encoded.tokens.features[:0])
    lm = backend.model.model.language_model
    with capture_inputs(lm) as calls:
        out = backend.answer(encoded, PROMPT, red, max_new_tokens=1)
    assert out.n_visual_tokens == 0
    assert calls[0]["inputs_embeds"].shape[1] == backend.n_text_tokens(PROMPT) == out.n_prompt_tokens


# ----------------------------------------------------------------------------------------------------------
# Caches
# ----------------------------------------------------------------------------------------------------------
def test_encode_cache_by_pixel_content(backend):
    img = tiny.image(11)
    first = backend.encode(img)
    assert backend.encode(img) is first
    assert backend.encode(img.copy()) is first
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    reloaded = Image.open(io.BytesIO(buf.getvalue()))
    reloaded.load()
    assert reloaded is not img and reloaded.format == "PNG"
    assert backend.encode(reloaded) is first
    changed = img.copy()
    px = changed.getpixel((0, 0))
    changed.putpixel((0, 0), ((px[0] + 1) % 256, px[1], px[2]))
    other = backend.encode(changed)
    assert other is not first and other.key != first.key
    assert backend.lookup(first.key) is first and backend.lookup(other.key) is other


@pytest.mark.parametrize("mode", ["crop", "pad", "squash"])
def test_encode_any_shape(backend, mode):
    """Tiny and extreme-aspect pictures encode in every region mode; the Encoded records the geometry."""
    from explorer.backend.geometry import Geometry

    b = models.LlavaBackend(backend.model, backend.tokenizer, backend.text, Geometry((tiny.IMAGE_SIZE, tiny.IMAGE_SIZE), mode),
                       name="shapes", notice="tiny")
    for size in ((1, 1), (1000, 3), (3, 1000), (57, 55)):
        enc = b.encode(tiny.image(9, size))
        assert enc.image_size == size and enc.crop_box == pytest.approx(b.geometry.box(*size))
        assert enc.view.size == (2 * tiny.IMAGE_SIZE, 2 * tiny.IMAGE_SIZE) and enc.view_array.shape == (112, 112, 3)
        assert torch.isfinite(enc.tokens.features).all() and enc.tokens.features.shape[0] == tiny.N_PATCHES


def test_encode_cache_is_bounded():
    b = tiny.tiny_backend("cpu", encode_cache_size=2)
    a, bb, c = (tiny.image(s) for s in (21, 22, 23))
    ea, eb = b.encode(a), b.encode(bb)
    assert b.lookup(ea.key) is ea and b.lookup(eb.key) is eb
    ec = b.encode(c)
    assert b.lookup(ea.key) is None  # the oldest was evicted
    assert b.lookup(eb.key) is eb and b.lookup(ec.key) is ec
    again = b.encode(a)
    assert again is not ea and again.key == ea.key
    torch.testing.assert_close(again.tokens.features, ea.tokens.features)
    assert b.lookup(eb.key) is None  # b was least recently used (c was looked up after it)


def test_query_cache_and_truncation(backend):
    q1 = backend.encode_query(PROMPT)
    assert backend.encode_query(PROMPT) is q1
    assert backend.encode_query(PROMPT, rewrite=False) is not q1
    assert q1.phrase == "color the car" and not q1.truncated
    torch.testing.assert_close(q1.embedding.norm(), torch.tensor(1.0))
    long = backend.encode_query("describe the car " * 2500)
    assert long.truncated and long.embedding.shape == (tiny.JOINT,)


# ----------------------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------------------
def _same(a, b):
    for name in ("features", "keys", "cls_attn", "joint"):
        torch.testing.assert_close(getattr(a.tokens, name), getattr(b.tokens, name), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.attn_head_mean, b.attn_head_mean, atol=1e-6, rtol=1e-5)


def _in_threads(fn, n: int = 2) -> list[Exception]:
    """Run fn(0) … fn(n − 1) in n threads at once; the exceptions they raised."""
    errors: list[Exception] = []

    def work(i):
        try:
            fn(i)
        except Exception as err:  # pragma: no cover - reported by the caller
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


@pytest.mark.parametrize("device", tiny.devices())
def test_two_threads_encode_like_sequential(device):
    images = [tiny.image(31), tiny.image(32, size=(64, 90))]
    sequential = [tiny.tiny_backend(device).encode(im) for im in images]
    shared = tiny.tiny_backend(device)
    results = [None, None]
    barrier = threading.Barrier(2)

    def work(i):
        barrier.wait()
        results[i] = shared.encode(images[i])

    errors = _in_threads(work)
    assert not errors, errors
    for got, want in zip(results, sequential):
        _same(got, want)


@pytest.mark.parametrize("device", tiny.devices())
def test_hooks_record_only_their_own_thread(device):
    """vision_forward called from two threads at once on ONE tower, without the backend's lock, with the two
    forwards forced to overlap inside the hooked layer: each thread still reads its own q/k."""
    b = tiny.tiny_backend(device)
    tower = b.vision_tower
    pvs = [b.geometry.pixel_values(tiny.image(s))[0].to(b.device, b.dtype) for s in (41, 42)]
    expected = [vision_forward(tower, pv, b.spec) for pv in pvs]
    layer = vision_core(tower).encoder.layers[b.spec.attn_layer].self_attn
    overlap = threading.Barrier(2, timeout=10)

    def rendezvous(_module, _inputs, _output):  # both threads are inside k_proj before either goes on
        overlap.wait()

    results, errors = [[None, None] for _ in range(3)], []
    handle = layer.k_proj.register_forward_hook(rendezvous)
    try:
        for rep in range(3):
            def work(i, rep=rep):
                results[rep][i] = vision_forward(tower, pvs[i], b.spec)

            errors += _in_threads(work)
    finally:
        handle.remove()
    assert not errors, errors
    for rep in range(3):
        for got, want in zip(results[rep], expected):
            for name in ("keys", "cls_attn", "attn_head_mean", "features"):
                torch.testing.assert_close(got[name], want[name], atol=1e-6, rtol=1e-5)
    assert not layer.k_proj._forward_hooks and not layer.q_proj._forward_hooks  # capture removed its hooks


def test_capture_removes_hooks_on_error():
    b = tiny.tiny_backend("cpu")
    layer = vision_core(b.vision_tower).encoder.layers[0].self_attn
    with pytest.raises(RuntimeError):
        with capture({"q": layer.q_proj}):
            raise RuntimeError("boom")
    assert not layer.q_proj._forward_hooks


# ----------------------------------------------------------------------------------------------------------
# Broken checkpoints, devices, config
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", tiny.devices())
@pytest.mark.parametrize("param", [
    "encoder.layers.0.mlp.fc1.weight",  # everything downstream is NaN
    "post_layernorm.weight",  # only the joint embeddings are NaN
])
def test_nan_checkpoint_raises_input_error(param, device):
    b = tiny.tiny_backend(device)
    weights = dict(vision_core(b.vision_tower).named_parameters())
    with torch.no_grad():
        weights[param].view(-1)[0] = float("nan")
    img = tiny.image(51)
    with pytest.raises(InputError, match=r"tiny-llava.*(unusable|NaN)") as info:
        b.encode(img)
    assert "NaN" in str(info.value)
    assert len(b._encoded) == 0  # nothing cached for a failed encode


def test_pick_device_cpu():
    device, dtype = models.pick_device("cpu")
    assert device == torch.device("cpu") and dtype == torch.float32
    if not torch.cuda.is_available():
        assert models.pick_device("auto")[0].type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA"):
            models.pick_device("cuda")
    else:
        assert models.pick_device("cuda")[1] == torch.float16


def test_config_from_args_and_env():
    c = ExplorerConfig.from_args(["--model", "llava-hf/llava-1.5-7b-hf", "--clip", "openai/clip-vit-large-patch14-336",
                                  "--device", "cpu"], env={})
    assert (c.model, c.clip, c.device) == ("llava-hf/llava-1.5-7b-hf", "openai/clip-vit-large-patch14-336", "cpu")
    assert not c.is_offline
    env = {"VTE_MODEL": "/models/llava", "VTE_CLIP": "offline", "VTE_DEVICE": "cuda:1"}
    c = ExplorerConfig.from_args([], env=env)
    assert (c.model, c.clip, c.device) == ("/models/llava", "offline", "cuda:1")
    c = ExplorerConfig.from_args(["--device", "cpu"], env=env)  # flags beat the environment
    assert (c.model, c.device) == ("/models/llava", "cpu")
    d = ExplorerConfig.from_args([], env={})
    assert d == ExplorerConfig() and d.is_offline and d.clip is None and d.device == "auto"
    assert ExplorerConfig.from_args(["--max-new-tokens", "8", "--seed", "3"], env={}).max_new_tokens == 8
    with pytest.raises(SystemExit):  # argparse's usage line and the reason, not a traceback
        ExplorerConfig.from_args(["--max-new-tokens", "1000"], env={})
    with pytest.raises(ValueError):
        ExplorerConfig(encode_cache_size=0)
    with pytest.raises(ValueError):
        ExplorerConfig(model=" ")
