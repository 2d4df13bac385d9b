"""Answer fidelity on the tiny seeded LLaVA (CPU): teacher-forced scores against plain step-by-step forwards,
greedy tokens as argmaxes, first-token KL, answer normalisation, token F1 and VQA accuracy."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from explorer.backend import answer as ans
from explorer.backend import fidelity as fid
from explorer.backend import models
from tests.tiny import capture_inputs
from explorer.backend.protocol import Backend, Score
from explorer.backend.synthetic import SyntheticBackend
from explorer.errors import InputError
from reducers import REDUCERS, BudgetParams, RandomParams
from tests import tiny
from tests.tiny import block_network  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("block_network")

PROMPT = "What color is the car?"
NEW = 8


@pytest.fixture(scope="module")
def backend():
    return tiny.tiny_backend("cpu")


@pytest.fixture(scope="module")
def encoded(backend):
    return backend.encode(tiny.image(0))


@pytest.fixture(scope="module")
def full(backend, encoded):
    """(greedy answer from all tokens, its teacher-forced score under all tokens)."""
    answer = backend.answer(encoded, PROMPT, None, NEW)
    return answer, backend.score(encoded, PROMPT, None, answer.token_ids)


def reductions(encoded):
    vt = encoded.tokens
    return {
        "random-4": REDUCERS["random"](vt, RandomParams(budget=4, seed=1)),
        "top-attention-8": REDUCERS["top-attention"](vt, BudgetParams(budget=8)),
        "prumerge": REDUCERS["prumerge"](vt),
    }


def step_by_step_logprobs(backend, feats, target) -> torch.Tensor:
    """log p(target[t] | prompt, target[:t]) from one plain forward per step over the growing sequence (no KV
    cache, no teacher-forcing shortcut): the next-token distribution at its last position."""
    out = []
    with torch.inference_mode():
        prompt = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT), feats)
        for t in range(len(target)):
            done = backend.embed_tokens(torch.tensor(target[:t], dtype=torch.long)).unsqueeze(0)
            x = torch.cat([prompt, done], dim=1)
            logits = backend.model(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long)).logits
            out.append(F.log_softmax(logits[0, -1].double(), dim=-1)[target[t]])
    return torch.stack(out)


# ----------------------------------------------------------------------------------------------------------
# Teacher forcing
# ----------------------------------------------------------------------------------------------------------
def test_answer_keeps_its_token_ids(full):
    answer, score = full
    assert len(answer.token_ids) == answer.n_new_tokens + (answer.stop == "eos") >= 1
    assert score.target_ids == answer.token_ids
    assert score.logprobs.shape == (len(answer.token_ids),) and score.logprobs.dtype == torch.float32
    assert score.first_logits.shape == (tiny.VOCAB,)
    assert score.n_visual_tokens == tiny.N_PATCHES and score.n_prompt_tokens == answer.n_prompt_tokens
    assert math.isclose(score.mean_logprob, float(score.logprobs.double().mean()))
    assert score.prefill_s > 0


@pytest.mark.parametrize("which", ["all", "random-4", "top-attention-8", "prumerge"])
def test_teacher_forced_equals_step_by_step(backend, encoded, full, which):
    answer, _ = full
    target = list(answer.token_ids)
    red = None if which == "all" else reductions(encoded)[which]
    feats = encoded.tokens.features if red is None else red.tokens
    score = backend.score(encoded, PROMPT, red, target)
    steps = step_by_step_logprobs(backend, feats, target)
    torch.testing.assert_close(score.logprobs.double(), steps, atol=2e-5, rtol=1e-5)
    assert math.isclose(score.sum_logprob, float(steps.sum()), abs_tol=1e-4)
    # the pure function gives the same numbers
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT), feats)
        logits = fid.continuation_logits(backend.model, backend.embed_tokens, embeds, target)
        direct = fid.token_logprobs(logits, target)
    torch.testing.assert_close(direct, score.logprobs)


def test_greedy_tokens_are_the_argmax_at_every_step(backend, encoded, full):
    """The full answer is greedy, so under all tokens every one of its tokens is the most likely at its step:
    its log-prob is the maximum over the vocabulary, and its mean log-prob the highest any T-token
    continuation scored step by step can reach."""
    answer, score = full
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT),
                                         encoded.tokens.features)
        logits = fid.continuation_logits(backend.model, backend.embed_tokens, embeds, answer.token_ids)
    best = F.log_softmax(logits, dim=-1).max(dim=-1).values
    torch.testing.assert_close(score.logprobs, best, atol=1e-6, rtol=0)
    assert torch.equal(logits.argmax(-1), torch.tensor(answer.token_ids))


def test_score_is_one_forward(backend, encoded, full):
    answer, _ = full
    lm = backend.model.model.language_model
    for red in [None, *reductions(encoded).values()]:
        with capture_inputs(lm) as calls:
            backend.score(encoded, PROMPT, red, answer.token_ids)
        assert len(calls) == 1
        m = tiny.N_PATCHES if red is None else red.n_kept
        n_prompt = backend.chat(PROMPT).n_text + m
        assert calls[0]["inputs_embeds"].shape[1] == n_prompt + len(answer.token_ids) - 1


def test_stop_token_is_part_of_the_scored_answer(backend, encoded):
    """An answer that ends at a stop token keeps it in `token_ids` (so its probability is scored) but not in
    the text."""
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, backend.chat(PROMPT),
                                         encoded.tokens.features)
    ids = [t for t, _ in ans.greedy_stream(backend.model, embeds, 3, set())]
    b = models.LlavaBackend(backend.model, backend.tokenizer, backend.text, backend.geometry, name="eos",
                            notice="tiny")
    b.stop_ids = {ids[-1]}
    out = b.answer(encoded, PROMPT, max_new_tokens=5)
    stop_at = ids.index(ids[-1])
    assert out.stop == "eos" and out.token_ids == tuple(ids[: stop_at + 1])
    assert out.n_new_tokens == stop_at
    score = b.score(encoded, PROMPT, None, out.token_ids)
    assert score.logprobs.shape == (stop_at + 1,)


def test_score_refuses_what_it_cannot_score(backend, encoded, full):
    answer, _ = full
    with pytest.raises(ValueError, match="empty"):
        backend.score(encoded, PROMPT, None, ())
    red = REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=4))
    bad = dataclasses.replace(red, tokens=red.tokens[:, :5])
    with pytest.raises(InputError, match=r"\[M, 32\]"):
        backend.score(encoded, PROMPT, bad, answer.token_ids)
    extra = dataclasses.replace(red, layer=2, n_extra=1)  # pruning inside the LM adds no extra tokens
    with pytest.raises(InputError, match="adds no extra tokens"):
        backend.score(encoded, PROMPT, extra, answer.token_ids)


def test_fastv_is_scored_with_its_pruned_forward(backend, encoded, full):
    """A reduction that prunes inside the LM (layer K) is scored by the same forward its answer runs: equal to
    log-softmax of fastv.forward_logits over prompt + continuation, and different from feeding the kept tokens
    from layer 0; keeping every patch scores exactly like no reduction."""
    from explorer.backend import answer as ans
    from explorer.backend import lm_pruning as fastv

    answer, score = full
    red = REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=4))
    inside = dataclasses.replace(red, layer=1)
    got = backend.score(encoded, PROMPT, inside, answer.token_ids)
    chat = backend.chat(PROMPT)
    target = list(answer.token_ids)
    with torch.inference_mode():
        embeds = ans.build_inputs_embeds(backend.embed_tokens, backend.projector, chat, encoded.tokens.features)
        x = torch.cat([embeds, backend.embed_tokens(torch.tensor(target[:-1])).unsqueeze(0)], dim=1)
        logits = fastv.forward_logits(backend.model, x, len(chat.before), encoded.tokens.n, 1, red.kept.sort().values)
    want = torch.log_softmax(logits[0, -len(target):].float(), -1).gather(1, torch.tensor(target)[:, None])[:, 0]
    torch.testing.assert_close(got.logprobs, want, atol=1e-5, rtol=1e-5)
    assert got.n_visual_tokens == 4
    before_llm = backend.score(encoded, PROMPT, red, answer.token_ids)
    assert not torch.allclose(got.logprobs, before_llm.logprobs)
    everything = dataclasses.replace(REDUCERS["all"](encoded.tokens), layer=1)
    torch.testing.assert_close(backend.score(encoded, PROMPT, everything, answer.token_ids).logprobs, score.logprobs,
                               atol=1e-5, rtol=1e-5)


def test_zero_visual_tokens_can_be_scored(backend, encoded, full):
    answer, score = full
    red = REDUCERS["top-attention"](encoded.tokens, BudgetParams(budget=4))
    empty = dataclasses.replace(red, kept=red.kept[:0], tokens=red.tokens[:0])
    none = backend.score(encoded, PROMPT, empty, answer.token_ids)
    steps = step_by_step_logprobs(backend, red.tokens[:0], list(answer.token_ids))
    torch.testing.assert_close(none.logprobs.double(), steps, atol=2e-5, rtol=1e-5)
    assert fid.first_token_kl(score.first_logits, none.first_logits) > 0


def test_backends_satisfy_the_protocol(backend):
    assert isinstance(backend, Backend)
    assert isinstance(SyntheticBackend(grid=(4, 4), width=8, joint_width=4), Backend)


def test_synthetic_backend_refuses_to_score():
    b = SyntheticBackend(grid=(4, 4), width=8, joint_width=4)
    enc = b.encode(tiny.image(1))
    with pytest.raises(InputError, match="no language model"):
        b.score(enc, PROMPT, None, (1, 2))


# ----------------------------------------------------------------------------------------------------------
# First-token KL
# ----------------------------------------------------------------------------------------------------------
def test_kl_of_identical_inputs_is_zero(backend, encoded, full):
    answer, score = full
    again = backend.score(encoded, PROMPT, None, answer.token_ids)
    assert fid.first_token_kl(score.first_logits, again.first_logits) == 0.0
    identity = REDUCERS["all"](encoded.tokens)
    same = backend.score(encoded, PROMPT, identity, answer.token_ids)
    assert fid.first_token_kl(score.first_logits, same.first_logits) < 1e-7
    x = torch.randn(50, generator=torch.Generator().manual_seed(0))
    assert fid.first_token_kl(x, x) == 0.0
    assert fid.first_token_kl(x, x + 3.0) < 1e-12  # a shift of every logit is the same distribution


def test_kl_grows_when_tokens_are_dropped(backend, encoded, full):
    answer, score = full
    for name, red in reductions(encoded).items():
        reduced = backend.score(encoded, PROMPT, red, answer.token_ids)
        assert fid.first_token_kl(score.first_logits, reduced.first_logits) > 0, name


def test_kl_against_a_hand_computation():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(40, generator=gen) * 3, torch.randn(40, generator=gen) * 3
    p = np.exp(a.double().numpy()) / np.exp(a.double().numpy()).sum()
    q = np.exp(b.double().numpy()) / np.exp(b.double().numpy()).sum()
    want = float((p * np.log(p / q)).sum())
    assert math.isclose(fid.first_token_kl(a, b), want, rel_tol=1e-9)
    assert math.isclose(fid.first_token_kl(a.half(), b.half()),
                        fid.first_token_kl(a.half().float(), b.half().float()), rel_tol=1e-12)
    # log-probabilities give the same KL as the logits they come from
    assert math.isclose(fid.first_token_kl(F.log_softmax(a, -1), F.log_softmax(b, -1)), want, rel_tol=1e-5)
    # extreme logits stay finite (no overflow in exp)
    big = torch.tensor([1000.0, 0.0, -1000.0])
    assert math.isfinite(fid.first_token_kl(big, big.flip(0)))
    with pytest.raises(ValueError):
        fid.first_token_kl(a, b[:10])


# ----------------------------------------------------------------------------------------------------------
# One reduction's row
# ----------------------------------------------------------------------------------------------------------
def test_fidelity_row(backend, encoded, full):
    answer, score = full
    red = REDUCERS["random"](encoded.tokens, RandomParams(budget=4, seed=1))
    row = fid.fidelity(backend, encoded, PROMPT, red, answer, score, NEW)
    reduced_answer = backend.answer(encoded, PROMPT, red, NEW)
    reduced_score = backend.score(encoded, PROMPT, red, answer.token_ids)
    assert row["n_kept"] == 4
    assert row["answer"] == reduced_answer.text and row["full_answer"] == answer.text
    assert row["match"] == float(fid.exact_match(reduced_answer.text, answer.text))
    assert row["f1"] == fid.token_f1(reduced_answer.text, answer.text)
    assert math.isclose(row["logprob_drop"], score.mean_logprob - reduced_score.mean_logprob, abs_tol=1e-6)
    assert row["kl"] > 0
    assert row["flops"]["ratio"] < 1 and row["flops"]["full"] > row["flops"]["reduced"]
    assert row["prefill_s"] > 0 and row["score_s"] > 0


def test_identity_reduction_keeps_everything(backend, encoded, full):
    answer, score = full
    row = fid.fidelity(backend, encoded, PROMPT, REDUCERS["all"](encoded.tokens), answer, score, NEW)
    assert (row["match"], row["f1"], row["answer"]) == (1.0, 1.0, answer.text)
    assert abs(row["logprob_drop"]) < 1e-6 and row["kl"] < 1e-7
    ref = fid.reference_fidelity(backend, encoded, PROMPT, answer, score)
    assert (ref["match"], ref["f1"], ref["logprob_drop"], ref["kl"], ref["n_kept"]) == (1.0, 1.0, 0.0, 0.0, 16)
    assert ref["flops"]["ratio"] == 1.0


# ----------------------------------------------------------------------------------------------------------
# Normalisation, F1, accuracy
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, want", [
    ("Yes.", "yes"),
    ("The Dog", "dog"),
    ("a car", "car"),
    ("An apple.", "apple"),
    ("two", "2"),
    ("Ten apples", "10 apples"),
    ("none", "0"),
    ("\tThe  cat\n", "cat"),
    ("black-and-white", "black and white"),
    ("yes, it is!", "yes it is"),
    ("1,000", "1000"),
    ("3.5", "3.5"),
    ("dont", "don't"),
    ("couldnt've", "couldn't've"),
    ("its", "its"),
    ("x/y", "x y"),
    ("left / right", "left right"),
    ("What?", "what"),
    ("theater", "theater"),  # articles are whole words only
    ("", ""),
])
def test_normalize_answer(text, want):
    assert fid.normalize_answer(text) == want


def test_exact_match():
    assert fid.exact_match("Red.", "red")
    assert fid.exact_match("two dogs", "2 dogs")
    assert fid.exact_match("The red car", "red car")
    assert not fid.exact_match("red car", "blue car")
    assert fid.exact_match("", "  ")


@pytest.mark.parametrize("pred, ref, want", [
    ("the red car", "red car", 1.0),
    ("red car", "blue car", 0.5),
    ("car car red", "car red red", 2 / 3),
    ("red", "a red car", 2 * 1.0 * 0.5 / 1.5),
    ("", "", 1.0),
    ("", "car", 0.0),
    ("car", "", 0.0),
    ("dog", "cat", 0.0),
])
def test_token_f1(pred, ref, want):
    assert math.isclose(fid.token_f1(pred, ref), want)


def test_vqa_accuracy():
    assert fid.vqa_accuracy("Yes", "yes") == 1.0
    assert fid.vqa_accuracy("Yes", ["yes"]) == 1.0
    assert fid.vqa_accuracy("no", "yes") == 0.0
    ten = ["two"] * 3 + ["three"] * 7
    assert math.isclose(fid.vqa_accuracy("2", ten), (3 * 2 / 3 + 7 * 1.0) / 10)  # 0.9
    assert fid.vqa_accuracy("three", ten) == 1.0
    one = ["cat"] + ["dog"] * 9
    assert math.isclose(fid.vqa_accuracy("cat", one), 9 * (1 / 3) / 10)
    assert fid.vqa_accuracy("bird", one) == 0.0
    with pytest.raises(ValueError):
        fid.vqa_accuracy("x", [])


def test_score_is_a_frozen_record():
    s = Score((1, 2), torch.tensor([-1.0, -3.0]), torch.zeros(4), 2, 10, 0.1)
    assert s.mean_logprob == -2.0 and s.sum_logprob == -4.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.prefill_s = 1.0
