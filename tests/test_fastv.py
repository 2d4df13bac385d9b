"""explorer/backend/lm_pruning.py: FastV pruning inside the LM, checked against the model's own forwards (CPU, fp32).

On the tiny LLaVA (2-layer LLaMA) and a 4-layer variant of it, so K = 1…3 leave layers on both sides of the
cut: the ranking signal equals an eager `output_attentions=True` forward; layers 0…K−1 equal the plain
forward; layer K's input is exactly the text plus the kept image rows of the plain run; keeping every image
token is the plain forward; the KV-cache generator equals recomputation without a cache; the backend wiring
feeds all patches and reports the tokens left from layer K on.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from contextlib import contextmanager

import pytest
import torch

from explorer.backend import answer as ans
from explorer.backend import lm_pruning as fastv, models
from explorer.backend.cost import layer_flops, prefill_flops, prefill_flops_pruned
from explorer.backend.geometry import Geometry
from explorer.backend.protocol import Answer
from explorer.errors import InputError
from reducers import REDUCERS, BudgetParams
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

PROMPT = "What color is the car?"
EXACT = {"atol": 1e-5, "rtol": 1e-4}
CASES = [(2, 1), (4, 1), (4, 2), (4, 3)]  # (LM layers, K)


def tiny_backend(lm_layers: int):
    """The tiny backend, its LM with `lm_layers` decoder layers (2 is `tiny.tiny_backend()` itself)."""
    if lm_layers == 2:
        return tiny.tiny_backend("cpu")
    from transformers import LlavaForConditionalGeneration

    config = tiny.tiny_llava_config()
    config.text_config.num_hidden_layers = lm_layers
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlavaForConditionalGeneration(config).eval()
    return models.LlavaBackend(model, tiny.tiny_tokenizer(), tiny.tiny_text_side(0), Geometry((tiny.IMAGE_SIZE,) * 2),
                               name=f"tiny-llava-{lm_layers}", notice="tiny")


@pytest.fixture(scope="module")
def backends():
    return {n: tiny_backend(n) for n in (2, 4)}


@pytest.fixture(scope="module")
def setups(backends):
    """lm layers → (backend, encoded, inputs_embeds [1, T, H] with all N patches, image_start)."""
    out = {}
    for n, b in backends.items():
        enc = b.encode(tiny.image(0))
        chat = b.chat(PROMPT)
        with torch.inference_mode():
            embeds = ans.build_inputs_embeds(b.embed_tokens, b.projector, chat, enc.tokens.features)
        out[n] = (b, enc, embeds, len(chat.before))
    return out


def ranked_keep(b, enc, layer: int, m: int) -> torch.Tensor:
    """FastV's own choice: the m image tokens the last prompt token attends to most in layer K−1, sorted."""
    attn = b.lm_attention(enc, PROMPT)
    return attn[layer - 1, 0].topk(m).indices.sort().values


def expected_rows(t: int, s: int, n: int, keep) -> list[int]:
    return list(range(s)) + [s + int(k) for k in keep] + list(range(s + n, t))


@contextmanager
def record(module, inputs: bool = False):
    """Every forward of `module` in the block: its hidden-state input (inputs=True) or its output, and the
    keyword arguments it was called with."""
    calls: list[tuple[torch.Tensor, dict]] = []

    def pre(_m, args, kwargs):
        calls.append((args[0] if args else kwargs["hidden_states"], kwargs))

    def post(_m, args, kwargs, output):
        calls.append((output[0] if isinstance(output, tuple) else output, kwargs))

    handle = (module.register_forward_pre_hook(pre, with_kwargs=True) if inputs
              else module.register_forward_hook(post, with_kwargs=True))
    try:
        yield calls
    finally:
        handle.remove()


def plain_layer_io(model, embeds, layer: int, inputs: bool):
    lm = model.model.language_model
    with record(lm.layers[layer], inputs) as calls, torch.inference_mode():
        model(inputs_embeds=embeds)
    assert len(calls) == 1
    return calls[0][0]


# ----------------------------------------------------------------------------------------------------------
# The ranking signal
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm_layers", [2, 4])
def test_image_attention_equals_eager_output_attentions(setups, lm_layers):
    b, enc, embeds, s = setups[lm_layers]
    n = tiny.N_PATCHES
    model = b.model
    assert model.config.text_config._attn_implementation == "sdpa"
    got = fastv.image_attention(model, embeds, s, n)
    assert model.config.text_config._attn_implementation == "sdpa"  # the eager switch is undone
    assert got.shape == (lm_layers, 2, n) and got.dtype == torch.float32 and got.device.type == "cpu"
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        out = eager(inputs_embeds=embeds, output_attentions=True)
    assert len(out.attentions) == lm_layers
    for i, weights in enumerate(out.attentions):
        mean = weights[0].float().mean(0)  # [T, T] head mean
        torch.testing.assert_close(got[i, 0], mean[-1, s:s + n], **EXACT)
        torch.testing.assert_close(got[i, 1], mean[s:, s:s + n].mean(0), **EXACT)
    # the two rows and the layers are different signals
    assert not torch.allclose(got[:, 0], got[:, 1], atol=1e-4)
    assert not torch.allclose(got[0], got[1], atol=1e-4)
    # the backend caches it per (image, prompt) and computes the same numbers
    first = b.lm_attention(enc, PROMPT)
    assert b.lm_attention(enc, PROMPT) is first
    assert first.shape == (lm_layers, 2, enc.tokens.n)
    torch.testing.assert_close(first, got, **EXACT)
    assert b.lm_attention(enc, "how many people are there ?") is not first


# ----------------------------------------------------------------------------------------------------------
# The pruned forward
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm_layers, layer", CASES)
def test_layers_before_k_equal_the_plain_forward(setups, lm_layers, layer):
    b, enc, embeds, s = setups[lm_layers]
    keep = ranked_keep(b, enc, layer, 5)
    lm = b.model.model.language_model
    for i in range(layer):
        with record(lm.layers[i]) as calls, torch.inference_mode():
            fastv.forward_logits(b.model, embeds, s, tiny.N_PATCHES, layer, keep)
        assert len(calls) == 1
        torch.testing.assert_close(calls[0][0], plain_layer_io(b.model, embeds, i, inputs=False), **EXACT)


@pytest.mark.parametrize("lm_layers, layer", CASES)
def test_layer_k_sees_exactly_the_text_and_the_kept_image_tokens(setups, lm_layers, layer):
    b, enc, embeds, s = setups[lm_layers]
    n, t = tiny.N_PATCHES, embeds.shape[1]
    keep = ranked_keep(b, enc, layer, 5)
    rows = expected_rows(t, s, n, keep)
    lm = b.model.model.language_model
    with record(lm.layers[layer], inputs=True) as calls, torch.inference_mode():
        logits = fastv.forward_logits(b.model, embeds, s, n, layer, keep)
    assert len(calls) == 1
    hidden, kwargs = calls[0]
    assert hidden.shape == (1, t - n + 5, tiny.TEXT_WIDTH) == (1, len(rows), tiny.TEXT_WIDTH)
    assert logits.shape == (1, len(rows), tiny.VOCAB)
    plain = plain_layer_io(b.model, embeds, layer, inputs=True)
    torch.testing.assert_close(hidden[0], plain[0, rows], **EXACT)
    # the kept rows keep their original positions (gaps where image tokens were dropped), as the official code
    assert kwargs["position_ids"].tolist() == [rows]
    assert rows == fastv.kept_rows(t, s, n, keep).tolist()
    # every later layer runs on the same T' rows
    for i in range(layer + 1, lm_layers):
        with record(lm.layers[i], inputs=True) as later, torch.inference_mode():
            fastv.forward_logits(b.model, embeds, s, n, layer, keep)
        assert later[0][0].shape[1] == len(rows)


@pytest.mark.parametrize("lm_layers, layer", CASES + [(4, 4)])
def test_keeping_every_image_token_is_the_plain_forward(setups, lm_layers, layer):
    b, _, embeds, s = setups[lm_layers]
    n = tiny.N_PATCHES
    every = torch.arange(n)
    with torch.inference_mode():
        plain = b.model(inputs_embeds=embeds).logits
        ours = fastv.forward_logits(b.model, embeds, s, n, layer, every)
    torch.testing.assert_close(ours, plain, **EXACT)
    tokens = [t for t, _ in fastv.greedy_stream(b.model, embeds, 8, set(), image_start=s, n_image=n, layer=layer,
                                                keep=every)]
    assert tokens == [t for t, _ in ans.greedy_stream(b.model, embeds, 8, set())]


@pytest.mark.parametrize("lm_layers, layer", CASES)
def test_fastv_differs_from_feeding_the_kept_tokens_from_layer_0(setups, lm_layers, layer):
    b, enc, embeds, s = setups[lm_layers]
    keep = ranked_keep(b, enc, layer, 4)
    with torch.inference_mode():
        ours = fastv.forward_logits(b.model, embeds, s, tiny.N_PATCHES, layer, keep)
        only = ans.build_inputs_embeds(b.embed_tokens, b.projector, b.chat(PROMPT), enc.tokens.features[keep])
        early = b.model(inputs_embeds=only).logits
    assert ours.shape == early.shape  # the same T' rows reach the head …
    torch.testing.assert_close(ours[:, :s], early[:, :s], **EXACT)  # … the text before the image is untouched …
    assert not torch.allclose(ours[0, -1], early[0, -1], atol=1e-3)  # … but the answer position differs


@pytest.mark.parametrize("lm_layers, layer", CASES)
def test_kv_cache_generation_equals_recomputation(setups, lm_layers, layer):
    """Token for token (and logit for logit), the generator equals `forward_logits` rerun on the prompt plus
    the tokens so far with the same kept set; its cache holds T rows below layer K and T' from K on."""
    b, enc, embeds, s = setups[lm_layers]
    n, t, steps = tiny.N_PATCHES, embeds.shape[1], 8
    keep = ranked_keep(b, enc, layer, 6)
    lm = b.model.model.language_model
    with record(b.model.lm_head) as heads, record(lm.layers[0], inputs=True) as first:
        tokens = [tok for tok, _ in fastv.greedy_stream(b.model, embeds, steps, set(), image_start=s, n_image=n,
                                                        layer=layer, keep=keep)]
    assert len(tokens) == steps and len(heads) == steps
    seq = embeds
    for step in range(steps):
        with torch.inference_mode():
            logits = fastv.forward_logits(b.model, seq, s, n, layer, keep)
            torch.testing.assert_close(heads[step][0][0, -1], logits[0, -1], **EXACT)
            token = int(logits[0, -1].argmax())
            assert token == tokens[step], step
            seq = torch.cat([seq, b.embed_tokens(torch.tensor([[token]]))], dim=1)
    # decoded token i sits at position T + i, continuing the original sequence
    assert [c[1]["position_ids"].tolist() for c in first[1:]] == [[[t + i]] for i in range(steps - 1)]
    cache = first[0][1]["past_key_values"]
    kept_len = t - n + len(keep)
    lengths = [cache.get_seq_length(i) for i in range(lm_layers)]
    assert lengths == [t + steps - 1] * layer + [kept_len + steps - 1] * (lm_layers - layer)


def test_layer_out_of_range_raises(setups):
    b, enc, embeds, s = setups[2]
    n = tiny.N_PATCHES
    keep = torch.arange(4)
    for bad in (3, 0, -1):
        with pytest.raises(ValueError, match="layer K"):
            fastv.forward_logits(b.model, embeds, s, n, bad, keep)
        with pytest.raises(ValueError, match="layer K"):
            next(fastv.greedy_stream(b.model, embeds, 2, set(), image_start=s, n_image=n, layer=bad, keep=keep))
    red = dataclasses.replace(REDUCERS["all"](enc.tokens), layer=3, kept=keep, tokens=enc.tokens.features[keep])
    with pytest.raises(ValueError, match="2 decoder layers"):
        b.answer(enc, PROMPT, red, max_new_tokens=2)


@pytest.mark.parametrize("keep, match", [([0, 16], "outside"), ([-1], "outside"), ([2, 2], "twice"),
                                         ([0.5], "integer")])
def test_bad_keep_raises(setups, keep, match):
    b, _, embeds, s = setups[2]
    with pytest.raises(ValueError, match=match):
        fastv.forward_logits(b.model, embeds, s, tiny.N_PATCHES, 1, torch.tensor(keep))


# ----------------------------------------------------------------------------------------------------------
# The backend
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm_layers, layer", CASES)
def test_backend_answer_prunes_inside_the_lm(setups, lm_layers, layer):
    b, enc, embeds, s = setups[lm_layers]
    n = enc.tokens.n
    attn = b.lm_attention(enc, PROMPT)
    ranked = attn[layer - 1, 0].topk(5).indices  # descending attention: not sorted
    keep = ranked.sort().values
    plain = REDUCERS["top-attention"](enc.tokens, BudgetParams(budget=5))
    red = dataclasses.replace(plain, layer=layer, kept=ranked, tokens=enc.tokens.features[ranked])
    answer = b.answer(enc, PROMPT, red, max_new_tokens=6)
    direct = []
    for token, _ in fastv.greedy_stream(b.model, embeds, 6, b.stop_ids, image_start=s, n_image=n, layer=layer,
                                        keep=keep):
        if token in b.stop_ids:
            break
        direct.append(token)
    assert answer.n_new_tokens == len(direct)
    assert answer.text == b.tokenizer.decode(direct, skip_special_tokens=True).strip()
    assert (answer.n_visual_tokens, answer.n_visual_tokens_in, answer.layer) == (5, n, layer)
    assert answer.n_prompt_tokens == embeds.shape[1]
    # the same kept set from layer 0 is a different computation, reported as such
    early = b.answer(enc, PROMPT, dataclasses.replace(red, layer=0), max_new_tokens=6)
    assert (early.n_visual_tokens, early.n_visual_tokens_in, early.layer) == (5, 5, 0)
    assert early.n_prompt_tokens == embeds.shape[1] - n + 5


def test_backend_rejects_extra_tokens_for_fastv(setups):
    b, enc, _, _ = setups[2]
    red = dataclasses.replace(REDUCERS["prumerge"](enc.tokens), layer=1)
    assert red.n_extra == 1
    with pytest.raises(ValueError, match="FastV"):
        b.answer(enc, PROMPT, red, max_new_tokens=1)


@pytest.mark.parametrize("kept", [[0, 0], [0, tiny.N_PATCHES], [-1], [0.5]])
def test_backend_rejects_kept_indices_fastv_cannot_prune_to(setups, kept):
    b, enc, _, _ = setups[2]
    kept = torch.tensor(kept)
    red = dataclasses.replace(REDUCERS["all"](enc.tokens), layer=1, kept=kept,
                              tokens=enc.tokens.features[: kept.numel()])
    for run in (lambda: b.answer(enc, PROMPT, red, max_new_tokens=1), lambda: b.score(enc, PROMPT, red, [1, 2])):
        with pytest.raises(InputError, match="FastV keeps distinct patch indices"):
            run()


def test_answer_defaults_keep_old_callers_working():
    a = Answer("x", 7, 0.1, 0.2, 20, 3, "eos")
    assert (a.n_visual_tokens_in, a.layer) == (7, 0)


# ----------------------------------------------------------------------------------------------------------
# Cost
# ----------------------------------------------------------------------------------------------------------
def test_prefill_flops_pruned_by_hand():
    lm = types.SimpleNamespace(hidden_size=4, intermediate_size=8, num_hidden_layers=2)
    # d = 4, m = 8, 2 layers; 2 text tokens, 4 visual in, 1 kept, K = 1
    #   layer 0 on n = 6:  2·6·(4·16 + 3·4·8) + 4·36·4 = 1920 + 576 = 2496
    #   layer 1 on n = 3:  2·3·160 + 4·9·4             =  960 + 144 = 1104
    assert prefill_flops_pruned(lm, 2, 4, 1, 1) == 2496 + 1104 == 3600
    assert layer_flops(4, 8, 6) == 2496 and layer_flops(4, 8, 3) == 1104
    assert prefill_flops_pruned(lm, 2, 4, 1, 0) == prefill_flops(lm, 3)  # K = 0: reduced before the LM
    assert prefill_flops_pruned(lm, 2, 4, 1, 2) == prefill_flops(lm, 6)  # K = L: nothing pruned in time
    assert prefill_flops_pruned(tiny.tiny_llava_config(), 5, 16, 4, 1) == (
        layer_flops(tiny.TEXT_WIDTH, 64, 21) + layer_flops(tiny.TEXT_WIDTH, 64, 9))
    for args in [(2, 4, 5, 1), (2, 4, 1, 3), (2, 4, 1, -1), (-1, 4, 1, 1)]:
        with pytest.raises(ValueError):
            prefill_flops_pruned(lm, *args)
