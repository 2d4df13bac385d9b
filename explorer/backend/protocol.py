"""What every backend gives the app: the `Backend` protocol and the types it returns.

The real LLaVA backend, the offline default and the synthetic backend (benchmarks, UI tests) all satisfy
`Backend`; the app layer (`service.py`) relies on nothing else, so it never probes a backend with `hasattr`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, runtime_checkable

import numpy as np
from PIL import Image
from torch import Tensor

from reducers import Reduction, VisualTokens


@dataclass(frozen=True, eq=False)
class Encoded:
    """One image, encoded once. `tokens.cls_attn` is the "official" attention; `attn_head_mean` the other."""

    key: str
    tokens: VisualTokens
    attn_head_mean: Tensor
    view: Image.Image
    crop_box: tuple[float, float, float, float]
    image_size: tuple[int, int]  # (W, H) of the user's image
    encode_s: float
    view_array: np.ndarray = field(repr=False, default=None)

    def __post_init__(self) -> None:
        if self.view_array is None:
            object.__setattr__(self, "view_array", np.asarray(self.view))

    @property
    def grid(self) -> tuple[int, int]:
        return self.tokens.grid

    @property
    def attn_official(self) -> Tensor:
        return self.tokens.cls_attn

    def attention(self, mode: str = "official") -> Tensor:
        if mode == "official":
            return self.tokens.cls_attn
        if mode == "head-mean":
            return self.attn_head_mean
        raise ValueError(f"attention mode must be 'official' or 'head-mean', got {mode!r}")

    def patch_box(self, r: int, c: int) -> tuple[float, float, float, float]:
        """Patch (r, c) in the original image's pixel coordinates."""
        h, w = self.grid
        x0, y0, x1, y1 = self.crop_box
        bw, bh = (x1 - x0) / w, (y1 - y0) / h
        return (x0 + c * bw, y0 + r * bh, x0 + (c + 1) * bw, y0 + (r + 1) * bh)


@dataclass(frozen=True)
class Answer:
    text: str
    n_visual_tokens: int  # visual embeddings actually placed in the LM input
    prefill_s: float  # first forward over the whole input (visual + text)
    total_s: float  # projector + prefill + decoding
    n_prompt_tokens: int  # LM input length incl. visual tokens
    n_new_tokens: int = 0
    stop: str = "length"  # "eos" | "length"
    # every token the model chose, the stop token included when `stop == "eos"` (what a teacher-forced
    # score of this answer feeds back); empty for a backend without a language model
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, eq=False)
class Score:
    """A fixed continuation (e.g. the full-token answer's `token_ids`) scored under one visual input, teacher
    forced: one forward over prompt + continuation, read at the positions that predict each continuation token.

    logprobs:      [T] float32 (CPU): log p(target_t | prompt with these visual tokens, target_<t)
    first_logits:  [V] float32 (CPU): next-token logits at the first answer position (the first-token KL)
    prefill_s:     seconds of that one forward (n_prompt_tokens + T − 1 positions), device-synchronised
    """

    target_ids: tuple[int, ...]
    logprobs: Tensor
    first_logits: Tensor
    n_visual_tokens: int
    n_prompt_tokens: int  # LM input of the prompt incl. visual tokens, without the continuation
    prefill_s: float

    @property
    def mean_logprob(self) -> float:
        """Mean per-token log-probability (nats) of the continuation."""
        return float(self.logprobs.double().mean())

    @property
    def sum_logprob(self) -> float:
        return float(self.logprobs.double().sum())


@dataclass(frozen=True, eq=False)
class Query:
    embedding: Tensor  # [e], L2-normalised, CPU float32
    phrase: str
    prompts: tuple[str, ...]
    truncated: bool
    rewrite: bool
    prompt: str



@runtime_checkable
class Backend(Protocol):
    """A model (or a stand-in) that encodes images, embeds prompts and answers from chosen visual tokens.

    name:            shown in the UI and the summary
    notice:          one line on what is untrained (empty when every weight the user sees is trained)
    lm_config:       the language model's config (hidden_size, intermediate_size, num_hidden_layers)
    grid:            (h, w) patch grid of every encode
    has_text_tower:  `encode_query` works (a CLIP text side exists)
    """

    name: str
    notice: str
    lm_config: object
    grid: tuple[int, int]
    has_text_tower: bool

    def lookup(self, key: str) -> Encoded | None: ...

    def encode(self, image: Image.Image) -> Encoded: ...

    def encode_query(self, prompt: str, rewrite: bool = True) -> Query: ...

    def n_text_tokens(self, prompt: str) -> int: ...

    def answer(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
               max_new_tokens: int | None = None) -> Answer: ...

    def answer_stream(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
                      max_new_tokens: int | None = None) -> Iterator[str | Answer]: ...

    def score(self, enc: Encoded, prompt: str, reduction: Reduction | None,
              target_ids: tuple[int, ...]) -> Score:
        """Teacher-forced log-probabilities of `target_ids` after `prompt` with all visual tokens
        (`reduction=None`) or exactly `reduction.tokens`: one forward (see `Score`). A backend without a
        language model raises InputError."""
        ...
