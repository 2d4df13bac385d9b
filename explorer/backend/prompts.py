"""PAR's prompt rewriting and the text query: question → content phrase → templates → pooled CLIP embedding."""

from __future__ import annotations

import re
from typing import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor

from .protocol import Query


QUESTION_WORDS = frozenset(
    "what what's whats which who who's whom whose where where's when when's why why's how how's "
    "whether".split()
)
AUXILIARIES = frozenset(
    "is isn't are aren't was wasn't were weren't am be been being do does doesn't did didn't don't "
    "can can't cannot could couldn't will won't would wouldn't shall should shouldn't may might must "
    "has hasn't have haven't had hadn't".split()
)
# Request words that carry no visual content ("Can you tell me…", "Is there…", "Please describe…").
REQUEST_WORDS = frozenset("please you me tell describe explain show there".split())
DROPPED_WORDS = QUESTION_WORDS | AUXILIARIES | REQUEST_WORDS
TEMPLATES = (
    "a photo of {p}.",
    "{p}",
    "an image showing {p}.",
    "a picture of {p}.",
    "a close-up photo of {p}.",
)
_WORD = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def content_phrase(prompt: str) -> str:
    """The question reduced to its content words: question words, auxiliaries, request words and all
    punctuation dropped ("What color is the car?" → "color the car"). Falls back to the prompt's words
    when nothing is left."""
    words = _WORD.findall(prompt or "")
    kept = [w for w in words if w.lower().replace("’", "'") not in DROPPED_WORDS]
    return " ".join(kept or words)


def rewrite_prompt(prompt: str, rewrite: bool = True) -> tuple[str, tuple[str, ...]]:
    """(phrase, texts to embed). With `rewrite=False` the raw prompt is embedded as is."""
    prompt = (prompt or "").strip()
    if not rewrite:
        return prompt, (prompt,)
    phrase = content_phrase(prompt)
    return phrase, tuple(t.format(p=phrase) for t in TEMPLATES)


def pool_text_embeddings(embeds: Tensor) -> Tensor:
    """L2-normalise each template's embedding, average, renormalise."""
    return F.normalize(F.normalize(embeds.float(), dim=-1).mean(0), dim=0)


def embed_query(prompt: str, rewrite: bool, tokenize: Callable[[Sequence[str]], tuple[Tensor, Tensor, bool]],
                text_forward: Callable[[Tensor, Tensor], Tensor]) -> Query:
    """tokenize(texts) → (input_ids [T, L], attention_mask [T, L], truncated); text_forward → [T, e]."""
    phrase, prompts = rewrite_prompt(prompt, rewrite)
    ids, mask, truncated = tokenize(list(prompts))
    embeds = text_forward(ids, mask)
    return Query(pool_text_embeddings(embeds).cpu(), phrase, prompts, bool(truncated), bool(rewrite), prompt)
