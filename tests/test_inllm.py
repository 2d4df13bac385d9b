"""explorer/backend/inllm.py: SparseVLM's and PyramidDrop's staged pruning inside the LM, against a slow loop
written from the official code over the model's own decoder layers (CPU, fp32, tiny LLaVA with a 6-layer LM).

The reference loop computes each stage's attention as the official code does (input_layernorm, q/k projections,
RoPE at the current positions, causal softmax; head mean) and calls the decoder layers one by one with the
official position ids (truncated / rebuilt to 0…T'−1). Checked: the recorded decisions equal it; the hidden
states entering every layer (so after each stage) are exactly its rows — the text, the kept visual tokens in
order, the recycled ones — at the positions it uses; keeping everything is the plain forward; the KV-cache
generator equals recomputation; the backend answers, scores and caches through it.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from explorer.backend import answer as ans
from explorer.backend import inllm
from reducers import REDUCERS, DARTParams, PyramidDropParams, SparseVLMParams
from reducers.pyramiddrop import PyramidDropPlan
from reducers.sparsevlm import SparseVLMPlan, TARGETS
from tests import reference as ref
from tests import tiny
from tests.test_fastv import record, tiny_backend
from tests.test_inllm_reducers import ids_of
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

PROMPT = "What color is the car?"
EXACT = {"atol": 1e-5, "rtol": 1e-4}
LAYERS = 6
PLANS = [
    SparseVLMPlan((0, 2, 4), (10, 6, 3)),
    SparseVLMPlan((1, 3, 5), TARGETS["192"]),  # the official counts: min(300, 15) keeps 15 and recycles 1
    SparseVLMPlan((2, 3, 4), (7, 2, 1)),
    PyramidDropPlan((2, 4), 0.5),
    PyramidDropPlan((1, 2, 5), 0.35),
    PyramidDropPlan((3,), 0.05),
]


@pytest.fixture(scope="module")
def setup():
    b = tiny_backend(LAYERS)
    enc = b.encode(tiny.image(0))
    chat = b.chat(PROMPT)
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(b.embed_tokens, b.projector, chat, enc.tokens.features)
    return b, enc, embeds, len(chat.before)


# ----------------------------------------------------------------------------------------------------------
# The slow reference: the official loops over the model's own decoder layers
# ----------------------------------------------------------------------------------------------------------
def official_attention(lm, index, hidden, positions):
    """[T, T] head mean of softmax(q kᵀ/√d + causal) of layer `index` on `hidden`, as the official codes compute
    it (pdrop_rank_drop; SparseVLM's attention logits), GQA keys expanded."""
    layer = lm.layers[index]
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)
    t, hd = h.shape[1], attn.head_dim
    q = attn.q_proj(h).view(1, t, -1, hd).transpose(1, 2)
    k = attn.k_proj(h).view(1, t, -1, hd).transpose(1, 2)
    cos, sin = lm.rotary_emb(h, positions[None])
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    k = repeat_kv(k, q.shape[1] // k.shape[1])
    w = q @ k.transpose(2, 3) / math.sqrt(hd)
    w = w.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(w.float(), dim=-1)[0].mean(0)


def official_run(model, embeds, s, n, plan):
    """The official staged forward: (stages as ids, inputs [(hidden, positions)] of every layer, final hidden)."""
    lm = model.model.language_model
    hidden, pos = embeds, torch.arange(embeds.shape[1])
    ids, made, stages, inputs = list(range(n)), n, [], []
    sparse = isinstance(plan, SparseVLMPlan)
    raters = ref.sparsevlm_raters(embeds[0, s:s + n], embeds[0, s + n:]) if sparse else None
    drop_before = dict(zip(plan.layers, range(len(plan.layers)))) if not sparse else {}
    prune_after = dict(zip(plan.layers, range(len(plan.layers)))) if sparse else {}

    def layer(i, h, p):
        return lm.layers[i](h, attention_mask=None, position_ids=p[None],
                            position_embeddings=lm.rotary_emb(h, p[None]))

    for i in range(len(lm.layers)):
        v = len(ids)
        if i in drop_before:  # PyramidDrop: rank with layer i's attention, drop, then run layer i
            stage = drop_before[i]
            score = official_attention(lm, i, hidden, pos)[-1, s:s + v].double().tolist()
            keep_length = max(1, int(n * plan.ratio ** (stage + 1)))
            top = sorted(ref._ranked(score, range(v))[:keep_length])
            stages.append(dict(present=list(ids), keep=[ids[j] for j in top], merge=[]))
            hidden = torch.cat([hidden[:, :s], hidden[:, s + torch.tensor(top)], hidden[:, s + v:]], dim=1)
            ids = [ids[j] for j in top]
            pos = torch.arange(hidden.shape[1])
        inputs.append((hidden, pos))
        if i in prune_after:  # SparseVLM: layer i's attention from the raters; its OUTPUT is pruned
            stage = prune_after[i]
            w = official_attention(lm, i, hidden, pos)
            out = layer(i, hidden, pos)
            relation = w[s + v + torch.tensor(raters)][:, s:s + v].double().mean(0).tolist()
            k = min(plan.targets[stage], v - 1)
            keep = sorted(ref._ranked(relation, range(v))[:k])
            pruned = [j for j in range(v) if j not in set(keep)]
            best = ref._ranked(relation, pruned)[: int(len(pruned) * 0.3) + 1] if pruned else []
            groups = ([[best[g] for g in grp] for grp in
                       ref.cluster_and_merge_groups(out[0, s + torch.tensor(best)], int(len(best) / 10) + 1)]
                      if best else [])
            merged = [out[0, s + torch.tensor(g)].sum(0) / (len(g) + 1e-6) for g in groups]
            stages.append(dict(present=list(ids), keep=[ids[j] for j in keep], merge=[[ids[j] for j in g]
                                                                                       for g in groups]))
            visual = [out[:, s + torch.tensor(keep)]] + [m[None, None] for m in merged]
            hidden = torch.cat([out[:, :s], *visual, out[:, s + v:]], dim=1)
            ids = [ids[j] for j in keep] + list(range(made, made + len(groups)))
            made += len(groups)
            pos = pos[: hidden.shape[1]]  # `position_ids[:, :len(select_token_idx[0]) + cluster_num]`
        else:
            hidden = layer(i, hidden, pos)
    return stages, inputs, lm.norm(hidden)


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plan", PLANS, ids=repr)
def test_decisions_and_every_layers_input_equal_the_official_loop(setup, plan):
    b, enc, embeds, s = setup
    n = tiny.N_PATCHES
    with torch.inference_mode():
        want_stages, want_inputs, want_final = official_run(b.model, embeds, s, n, plan)
        rec = inllm.probe(b.model, embeds, s, n, plan)
    assert ids_of(rec) == want_stages
    assert rec.n_layers == LAYERS and rec.n == n
    lm = b.model.model.language_model
    for i in range(LAYERS):  # the replayed forward: each layer's input is the official one, rows and positions
        with record(lm.layers[i], inputs=True) as calls, torch.inference_mode():
            logits = inllm.forward_logits(b.model, embeds, s, n, plan, rec)
        assert len(calls) == 1
        hidden, kwargs = calls[0]
        want_hidden, want_pos = want_inputs[i]
        assert hidden.shape == want_hidden.shape, i
        torch.testing.assert_close(hidden, want_hidden, **EXACT)
        assert kwargs["position_ids"].tolist() == [want_pos.tolist()] == [list(range(hidden.shape[1]))]
    with torch.inference_mode():
        torch.testing.assert_close(logits, b.model.lm_head(want_final), **EXACT)
    # the probe's own forward is the replay's (same decisions, same rows)
    with torch.inference_mode():
        again = inllm.probe(b.model, embeds, s, n, plan)
    assert ids_of(again) == ids_of(rec)


def test_keeping_every_token_is_the_plain_forward(setup):
    b, _, embeds, s = setup
    n = tiny.N_PATCHES
    plan = PyramidDropPlan((2, 4), 1.0)
    rec = inllm.probe(b.model, embeds, s, n, plan)
    assert [st.decision.keep.tolist() for st in rec.stages] == [list(range(n))] * 2
    with torch.inference_mode():
        torch.testing.assert_close(inllm.forward_logits(b.model, embeds, s, n, plan, rec),
                                   b.model(inputs_embeds=embeds).logits, **EXACT)
    tokens = [t for t, _ in inllm.greedy_stream(b.model, embeds, 6, set(), image_start=s, n_image=n, plan=plan,
                                                record=rec)]
    assert tokens == [t for t, _ in ans.greedy_stream(b.model, embeds, 6, set())]


@pytest.mark.parametrize("plan", [PLANS[0], PLANS[4]], ids=repr)
def test_kv_cache_generation_equals_recomputation(setup, plan):
    """Token for token and logit for logit, the generator equals `forward_logits` rerun on the prompt plus the
    tokens so far with the same record; segment g's layers cache T_g rows, decoded token i sits at T_g + i."""
    b, _, embeds, s = setup
    n, t, steps = tiny.N_PATCHES, embeds.shape[1], 6
    rec = inllm.probe(b.model, embeds, s, n, plan)
    lm = b.model.model.language_model
    with record(b.model.lm_head) as heads, record(lm.layers[LAYERS - 1], inputs=True) as last:
        tokens = [tok for tok, _ in inllm.greedy_stream(b.model, embeds, steps, set(), image_start=s, n_image=n,
                                                        plan=plan, record=rec)]
    seq = embeds
    for step in range(steps):
        with torch.inference_mode():
            logits = inllm.forward_logits(b.model, seq, s, n, plan, rec)
            torch.testing.assert_close(heads[step][0][0, -1], logits[0, -1], **EXACT)
            token = int(logits[0, -1].argmax())
            assert token == tokens[step], step
            seq = torch.cat([seq, b.embed_tokens(torch.tensor([[token]]))], dim=1)
    counts = [n] + list(rec.counts())
    lengths = [t - n + c for c in counts]
    final_len = lengths[-1]
    assert [c[1]["position_ids"].tolist() for c in last[1:]] == [[[final_len + i]] for i in range(steps - 1)]
    cache = last[0][1]["past_key_values"]
    starts = [0] + [st.boundary for st in rec.stages] + [LAYERS]
    want = [lengths[g] + steps - 1 for g in range(len(lengths)) for _ in range(starts[g], starts[g + 1])]
    assert [cache.get_seq_length(i) for i in range(LAYERS)] == want


def test_backend_runs_the_reducers_inside_the_lm(setup):
    b, enc, embeds, s = setup
    n = enc.tokens.n
    vt = enc.tokens.derive(lm_probe=lambda plan: b.lm_stages(enc, PROMPT, plan))
    for name, params in (("sparsevlm", SparseVLMParams(layer1=1, layer2=2, layer3=4)),
                         ("pyramiddrop", PyramidDropParams(first=2, spacing=2, stages=2, ratio=0.5))):
        red = REDUCERS[name](vt, params)
        plan = params.plan()
        assert b.lm_stages(enc, PROMPT, plan) is red.trace.record, "cached per (image, prompt, plan)"
        answer = b.answer(enc, PROMPT, red, max_new_tokens=5)
        direct = []
        for token, _ in inllm.greedy_stream(b.model, embeds, 5, b.stop_ids, image_start=s, n_image=n, plan=plan,
                                            record=red.trace.record):
            if token in b.stop_ids:
                break
            direct.append(token)
        assert answer.text == b.tokenizer.decode(direct, skip_special_tokens=True).strip()
        assert (answer.n_visual_tokens, answer.n_visual_tokens_in, answer.layer) == (red.n_kept, n, red.layer)
        score = b.score(enc, PROMPT, red, answer.token_ids or (5,))
        assert score.n_visual_tokens == red.n_kept and torch.isfinite(score.logprobs).all()
    beyond = b.lm_stages(enc, PROMPT, SparseVLMParams().plan())  # layers 2, 6, 15 on a 6-layer LM: only 2
    assert [st.layer for st in beyond.stages] == [2] and beyond.n_layers == LAYERS


# ----------------------------------------------------------------------------------------------------------
# DART: one stage at layer K, chosen from layer K−1's keys and normed outputs, original positions kept
# ----------------------------------------------------------------------------------------------------------
def official_keys(lm, index, hidden, positions):
    """[T, D] layer `index`'s keys on its input as the official decoder layer returns them (`any_states`):
    input_layernorm, k_proj, RoPE at the positions, `repeat_kv`, heads concatenated."""
    layer = lm.layers[index]
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)
    t, hd = h.shape[1], attn.head_dim
    k = attn.k_proj(h).view(1, t, -1, hd).transpose(1, 2)
    cos, sin = lm.rotary_emb(h, positions[None])
    _, k = apply_rotary_pos_emb(k, k, cos, sin)
    k = repeat_kv(k, lm.config.num_attention_heads // k.shape[1])
    return k.permute(0, 2, 1, 3).reshape(1, t, -1)[0]


def dart_official_run(model, embeds, s, n, params):
    """`DART.forward`: at layer K (prefill) the kept rows `keep_indexs` (sorted) at position_ids = keep_indexs."""
    lm = model.model.language_model
    hidden, pos, inputs, prev, sel = embeds, torch.arange(embeds.shape[1]), [], None, None

    def layer(i, h, p):
        return lm.layers[i](h, attention_mask=None, position_ids=p[None],
                            position_embeddings=lm.rotary_emb(h, p[None]))

    for i in range(len(lm.layers)):
        if i == params.layer:
            keys = official_keys(lm, i - 1, prev, pos)
            states = lm.norm(hidden)[0]
            sel = ref.dart_official(keys, states, s, n, params.budget, params.image_pivots, params.text_pivots,
                                    params.official_count)
            t = hidden.shape[1]
            keep = torch.cat([torch.arange(s), s + torch.tensor(sel["kept"], dtype=torch.long),
                              torch.arange(s + n, t)]).sort().values
            hidden, pos = hidden[:, keep], keep
        inputs.append((hidden, pos))
        prev = hidden
        hidden = layer(i, hidden, pos)
    return sel, inputs, lm.norm(hidden)


DART_PARAMS = [DARTParams(budget=5, layer=2), DARTParams(budget=1, layer=1), DARTParams(budget=7, layer=4,
               image_pivots=2, text_pivots=3), DARTParams(budget=8, layer=3, official_count=True),
               DARTParams(budget=tiny.N_PATCHES - 1, layer=5)]


@pytest.mark.parametrize("params", DART_PARAMS, ids=repr)
def test_dart_equals_the_official_forward(setup, params):
    b, enc, embeds, s = setup
    n = tiny.N_PATCHES
    plan = params.plan()
    with torch.inference_mode():
        sel, want_inputs, want_final = dart_official_run(b.model, embeds, s, n, params)
        rec = inllm.probe(b.model, embeds, s, n, plan)
    d = rec.stages[0].decision
    assert rec.stages[0].decision.keep.tolist() == sel["kept"]
    assert [s + r for r in d.order.tolist()] == sel["order"]
    if not params.official_count:
        assert len(sel["kept"]) == min(params.budget, n)
    lm = b.model.model.language_model
    for i in range(LAYERS):  # every layer's input: the official rows at the official (original) positions
        with record(lm.layers[i], inputs=True) as calls, torch.inference_mode():
            logits = inllm.forward_logits(b.model, embeds, s, n, plan, rec)
        hidden, kwargs = calls[0]
        want_hidden, want_pos = want_inputs[i]
        assert hidden.shape == want_hidden.shape, i
        torch.testing.assert_close(hidden, want_hidden, **EXACT)
        assert kwargs["position_ids"].tolist() == [want_pos.tolist()]
    with torch.inference_mode():
        torch.testing.assert_close(logits, b.model.lm_head(want_final), **EXACT)


def test_dart_kv_cache_generation_equals_recomputation(setup):
    """Decoded token i sits at T + i in every layer (layer 0's cache length, as the official code); layers ≥ K
    cache only the kept rows."""
    b, _, embeds, s = setup
    n, t, steps = tiny.N_PATCHES, embeds.shape[1], 5
    plan = DARTParams(budget=6, layer=3).plan()
    rec = inllm.probe(b.model, embeds, s, n, plan)
    lm = b.model.model.language_model
    with record(b.model.lm_head) as heads, record(lm.layers[LAYERS - 1], inputs=True) as last:
        tokens = [tok for tok, _ in inllm.greedy_stream(b.model, embeds, steps, set(), image_start=s, n_image=n,
                                                        plan=plan, record=rec)]
    seq = embeds
    for step in range(steps):
        with torch.inference_mode():
            logits = inllm.forward_logits(b.model, seq, s, n, plan, rec)
            torch.testing.assert_close(heads[step][0][0, -1], logits[0, -1], **EXACT)
            assert int(logits[0, -1].argmax()) == tokens[step], step
            seq = torch.cat([seq, b.embed_tokens(torch.tensor([[tokens[step]]]))], dim=1)
    assert [c[1]["position_ids"].tolist() for c in last[1:]] == [[[t + i]] for i in range(steps - 1)]
    cache = last[0][1]["past_key_values"]
    kept = t - n + 6
    assert [cache.get_seq_length(i) for i in range(LAYERS)] == [t + steps - 1] * 3 + [kept + steps - 1] * 3


def test_backend_runs_dart_inside_the_lm(setup):
    b, enc, embeds, s = setup
    n = enc.tokens.n
    vt = enc.tokens.derive(lm_probe=lambda plan: b.lm_stages(enc, PROMPT, plan))
    params = DARTParams(budget=5, layer=2)
    red = REDUCERS["dart"](vt, params)
    assert b.lm_stages(enc, PROMPT, params.plan()) is red.trace.record, "cached per (image, prompt, plan)"
    assert red.n_kept == 5 and red.layer == 2
    answer = b.answer(enc, PROMPT, red, max_new_tokens=5)
    direct = []
    for token, _ in inllm.greedy_stream(b.model, embeds, 5, b.stop_ids, image_start=s, n_image=n,
                                        plan=params.plan(), record=red.trace.record):
        if token in b.stop_ids:
            break
        direct.append(token)
    assert answer.text == b.tokenizer.decode(direct, skip_special_tokens=True).strip()
    assert (answer.n_visual_tokens, answer.n_visual_tokens_in, answer.layer) == (5, n, 2)
    score = b.score(enc, PROMPT, red, answer.token_ids or (5,))
    assert score.n_visual_tokens == 5 and torch.isfinite(score.logprobs).all()
