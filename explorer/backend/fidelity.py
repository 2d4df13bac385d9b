"""Answer fidelity: how much of the full-token answer survives a visual-token reduction.

Pure functions (torch in, numbers out; no gradio, no I/O):

* `continuation_logits` + `token_logprobs`: a fixed continuation (the full-token answer's token ids)
  scored under an input, teacher forced — one forward over the prompt embeddings followed by the embeddings
  of target[:-1]; the logits at the last T positions predict target[0], …, target[T-1].
* `first_token_kl`: KL(p ‖ q) of the next-token distributions at the first answer position, p = all tokens,
  q = reduced, in nats, from log_softmax in float64.
* `normalize_answer`, `exact_match`, `token_f1`, `vqa_accuracy`: answer comparison (see `normalize_answer`).
* `fidelity`: one reduction's row — greedy answer, match and F1 against the full answer, the full answer's
  teacher-forced mean log-prob under the reduced tokens and its drop, first-token KL, timings, FLOPs.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from reducers.inllm import accounting, llm_schedule

from .cost import lm_dims, prefill_flops_of
from .protocol import Answer, Score

# --------------------------------------------------------------------------------------------------
# Teacher-forced scoring
# --------------------------------------------------------------------------------------------------


def continuation_logits(model, embed_tokens, inputs_embeds: Tensor, target_ids: Sequence[int],
                        forward=None) -> Tensor:
    """[T, V] float32 logits that predict each of the T target tokens after `inputs_embeds` [1, n, H].

    One forward over [inputs_embeds, embed(target[:-1])] (n + T − 1 positions, no KV cache), keeping the
    logits of the last T positions: position n − 1 + t predicts target[t]. `model` takes `inputs_embeds`
    and `logits_to_keep` (a transformers causal LM or LlavaForConditionalGeneration); `forward(x,
    logits_to_keep=T) -> logits [1, ·, V]` replaces that call (FastV's pruned forward: its last rows are still
    the continuation's). Call
    it under `torch.inference_mode()` (and the model's lock)."""
    target = torch.as_tensor(list(target_ids), dtype=torch.long, device=inputs_embeds.device)
    t = int(target.numel())
    if t == 0:
        raise ValueError("the continuation to score is empty (need at least one target token)")
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1 or inputs_embeds.shape[1] < 1:
        raise ValueError(f"inputs_embeds must be [1, n ≥ 1, H], got {list(inputs_embeds.shape)}")
    follow = embed_tokens(target[:-1]).to(inputs_embeds.dtype).unsqueeze(0)  # [1, T − 1, H]
    x = torch.cat([inputs_embeds, follow], dim=1)
    if forward is not None:
        return forward(x, logits_to_keep=t)[0, -t:].float()
    mask = torch.ones(1, x.shape[1], dtype=torch.long, device=x.device)
    out = model(inputs_embeds=x, attention_mask=mask, use_cache=False, logits_to_keep=t)
    return out.logits[0, -t:].float()


def token_logprobs(logits: Tensor, target_ids: Sequence[int]) -> Tensor:
    """[T] float32: log_softmax(logits[t])[target[t]] (logits [T, V], upcast to float32 first)."""
    target = torch.as_tensor(list(target_ids), dtype=torch.long, device=logits.device)
    if logits.ndim != 2 or logits.shape[0] != target.numel():
        raise ValueError(f"logits must be [T={target.numel()}, V], got {list(logits.shape)}")
    return F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None])[:, 0]


def first_token_kl(logits_p: Tensor, logits_q: Tensor) -> float:
    """KL(p ‖ q) in nats of the distributions softmax(logits_p) and softmax(logits_q) over the vocabulary
    ([V] each; log-probabilities work too, log_softmax leaves them unchanged). float64 log_softmax, so equal
    inputs give exactly 0; the tiny negative values rounding could give are clamped to 0."""
    if logits_p.shape != logits_q.shape or logits_p.ndim != 1:
        raise ValueError(f"need two [V] logit vectors of one size, got {list(logits_p.shape)} and "
                         f"{list(logits_q.shape)}")
    lp = F.log_softmax(logits_p.detach().double().cpu(), dim=-1)
    lq = F.log_softmax(logits_q.detach().double().cpu(), dim=-1)
    return max(0.0, float((lp.exp() * (lp - lq)).sum()))


# --------------------------------------------------------------------------------------------------
# Answer comparison: the official VQA evaluation's normalisation, token F1, VQA accuracy
# --------------------------------------------------------------------------------------------------
# The punctuation the VQA evaluation treats (apostrophes, colons and periods are not in it: periods are
# handled by their own rule, apostrophes kept for contractions).
VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
             "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})
# Contractions written without their apostrophe get it back ("dont" → "don't"). The forms below are the
# common English contractions; a form whose apostrophe-less spelling is an ordinary word (it's/its,
# let's/lets, we'll/well, we're/were, I'll/ill, she'll/shell, he'll/hell, she'd/shed, we'd/wed, I'd/id) is
# left out, as the official table leaves them out.
_CONTRACTED = ("ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
               "haven't he'd he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll "
               "ma'am mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
               "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
               "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
               "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've "
               "we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
               "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll "
               "y'all'd've you'd you'd've you'll you're you've").split()


def _contraction_table() -> dict[str, str]:
    """Every spelling of a contraction with one or more of its apostrophes dropped → the full form."""
    table: dict[str, str] = {}
    for full in _CONTRACTED:
        marks = [i for i, ch in enumerate(full) if ch == "'"]
        for drop in range(1, 1 << len(marks)):
            gone = {marks[j] for j in range(len(marks)) if drop >> j & 1}
            table["".join(ch for i, ch in enumerate(full) if i not in gone)] = full
    return table


CONTRACTIONS = _contraction_table()
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point)


def normalize_answer(text: str) -> str:
    """The official VQA evaluation's answer normalisation (Antol et al. 2015, vqaEval.py), step by step:

    1. newlines and tabs → spaces; strip the ends.
    2. punctuation: each of ; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? ! is deleted when it touches a space in
       the text (or the text has a digit,digit group such as "1,000"), otherwise replaced by a space
       ("black-and-white" → "black and white", "yes!" → "yes"); a period not followed by a digit is deleted.
    3. lowercase, split on whitespace; the number words none/zero…ten → 0…10; the articles a, an, the are
       dropped; a contraction spelled without its apostrophe gets it back ("dont" → "don't").
    4. join with single spaces.

    Two deliberate differences from the official script: its period rule (regex `(?!<=\\d)(\\.)(?!\\d)`,
    which acts as "a period not followed by a digit") is applied to every period, where the official call
    passes re.UNICODE as the replacement count and so stops after 32; and its contraction table is
    rebuilt from the list of contracted forms above (the official table also has a few entries mapping
    forms the other way round and capitalised keys that never match lowercased text).
    """
    text = str(text).replace("\n", " ").replace("\t", " ").strip()
    separated = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for p in VQA_PUNCT:
        if p + " " in text or " " + p in text or separated:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD.sub("", out)
    words = []
    for word in out.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def exact_match(prediction: str, reference: str) -> bool:
    """The two answers are equal after `normalize_answer`."""
    return normalize_answer(prediction) == normalize_answer(reference)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 over the whitespace tokens of the normalised answers (multiset overlap):
    P = common / |prediction|, R = common / |reference|, F1 = 2PR / (P + R); 1.0 when both are empty, 0.0
    when exactly one is."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def vqa_accuracy(prediction: str, references: str | Sequence[str]) -> float:
    """Accuracy of `prediction` against the reference answer(s), everything through `normalize_answer`:

    * one reference (a string, or a list of one): 1.0 on a normalised exact match, else 0.0;
    * several references (VQA's 10 annotators): the official leave-one-out rule — for each reference i,
      min(1, #{j ≠ i : reference_j matches} / 3), averaged over i.
    """
    if isinstance(references, str):
        references = [references]
    refs = [normalize_answer(r) for r in references]
    if not refs:
        raise ValueError("no reference answer given")
    pred = normalize_answer(prediction)
    if len(refs) == 1:
        return float(pred == refs[0])
    hits = [r == pred for r in refs]
    total = sum(hits)
    return sum(min(1.0, (total - hit) / 3.0) for hit in hits) / len(refs)


# --------------------------------------------------------------------------------------------------
# One reduction's fidelity to the full-token answer
# --------------------------------------------------------------------------------------------------


def fidelity(backend, enc, prompt: str, reduction, full_answer: Answer, full_score: Score,
             max_new_tokens: int | None = None) -> dict:
    """How much of the full-token answer survives `reduction` (a `reducers.Reduction`), as plain numbers.

    `full_answer` is the greedy answer from all tokens and `full_score` its teacher-forced score under all
    tokens (`backend.score(enc, prompt, None, full_answer.token_ids)`). Costs one greedy answer and one
    scoring forward with the reduced tokens.

    answer, full_answer   the greedy answers (reduced, all tokens)
    match, f1             normalised exact match (1.0 / 0.0) and token F1 of the two
    logprob, logprob_full mean per-token log-prob (nats) of the full answer's tokens under the reduced / all
                          tokens; logprob_drop = logprob_full − logprob (> 0: the reduction makes the full
                          answer less likely)
    kl                    first-token KL(full ‖ reduced), nats
    prefill_s             the reduced answer's prefill (first forward over prompt + visual tokens), seconds
    score_s               the scoring forward, seconds
    flops                 {"full", "reduced", "ratio"} prefill FLOPs of the LM (cost.py)
    n_kept                visual tokens the LM received
    equivalent_tokens     the mean over the LM's `llm_layers` layers of the visual tokens present
    """
    score = backend.score(enc, prompt, reduction, full_score.target_ids)
    answer = backend.answer(enc, prompt, reduction, max_new_tokens)
    row = _row(backend, enc, prompt, reduction.n_kept, reduction.layer, answer, score, full_answer, full_score,
               match=float(exact_match(answer.text, full_answer.text)), f1=token_f1(answer.text, full_answer.text),
               kl=first_token_kl(full_score.first_logits, score.first_logits), schedule=llm_schedule(reduction))
    acc = accounting(reduction, lm_dims(backend.lm_config)[2])
    return dict(row, equivalent_tokens=acc["equivalent_tokens"], llm_layers=acc["llm_layers"])


def reference_fidelity(backend, enc, prompt: str, full_answer: Answer, full_score: Score) -> dict:
    """`fidelity`'s row for the full-token answer itself (all N tokens, nothing recomputed): match 1, F1 1,
    no log-prob drop, KL 0, FLOP ratio 1 — the reference every reduction is read against."""
    row = _row(backend, enc, prompt, enc.tokens.n, 0, full_answer, full_score, full_answer, full_score,
               match=1.0, f1=1.0, kl=0.0)
    return dict(row, equivalent_tokens=float(enc.tokens.n), llm_layers=lm_dims(backend.lm_config)[2])


def _row(backend, enc, prompt: str, n_kept: int, layer: int, answer: Answer, score: Score, full_answer: Answer,
         full_score: Score, match: float, f1: float, kl: float, schedule=None) -> dict:
    """The row `fidelity` documents, from one answer and its score against the full-token ones."""
    return {
        "n_kept": n_kept,
        "answer": answer.text,
        "full_answer": full_answer.text,
        "match": match,
        "f1": f1,
        "logprob": score.mean_logprob,
        "logprob_full": full_score.mean_logprob,
        "logprob_drop": full_score.mean_logprob - score.mean_logprob,
        "kl": kl,
        "prefill_s": answer.prefill_s,
        "score_s": score.prefill_s,
        "flops": prefill_flops_of(backend.lm_config, backend.n_text_tokens(prompt), enc.tokens.n, n_kept, layer,
                                  schedule),
        "n_new_tokens": answer.n_new_tokens,
        "stop": answer.stop,
    }
