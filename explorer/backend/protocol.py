"""What every backend gives the app: the `Backend` protocol and the types it returns.

The real LLaVA backend, the offline default and the synthetic backend (benchmarks, UI tests) all satisfy
`Backend`; the app layer (`explorer/service/`) relies on nothing else, so it never probes a backend with `hasattr`.
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
    """One image, encoded once: everything later requests derive their `VisualTokens` from.

    tokens:          features, keys, the "official" CLS attention, grid and (if the backend has a joint space)
                     `joint` from the hidden state the LLM consumes
    attn_head_mean:  [N] the other CLS-attention mode (per-head softmax averaged)
    joint_last:      [N, e] joint embeddings of the tower's last hidden state (the non-default option)
    cls_joint, cls_joint_last: [e] the CLS row in the same space (PAR's query when nothing else gives one)
    view:            the region the model saw, for display; crop_box: that region in the user's image
    """

    key: str
    tokens: VisualTokens
    attn_head_mean: Tensor
    view: Image.Image
    crop_box: tuple[float, float, float, float]
    image_size: tuple[int, int]  # (W, H) of the user's image
    encode_s: float
    thumbnail: Image.Image | None = None  # the user's whole image, small (the crop is drawn on it)
    joint_last: Tensor | None = None
    cls_joint: Tensor | None = None
    cls_joint_last: Tensor | None = None
    view_array: np.ndarray = field(repr=False, default=None)
    layout: object | None = None  # a family's token layout (LLaVA-NeXT: `llava_next.AnyresLayout`), else None

    def __post_init__(self) -> None:
        if self.view_array is None:
            object.__setattr__(self, "view_array", np.asarray(self.view))

    @property
    def grid(self) -> tuple[int, int]:
        return self.tokens.grid

    def attention(self, mode: str = "official") -> Tensor:
        if mode == "official":
            return self.tokens.cls_attn
        if mode == "head-mean":
            return self.attn_head_mean
        raise ValueError(f"attention mode must be 'official' or 'head-mean', got {mode!r}")

    def joint(self, layer: str = "feature") -> tuple[Tensor | None, Tensor | None]:
        """(joint [N, e], cls_joint [e]) from the feature layer (TRIM, default) or the last layer."""
        if layer == "feature":
            return self.tokens.joint, self.cls_joint
        if layer == "last":
            return self.joint_last, self.cls_joint_last
        raise ValueError(f"joint layer must be 'feature' or 'last', got {layer!r}")

    def patch_box(self, r: int, c: int) -> tuple[float, float, float, float]:
        """Patch (r, c) in the original image's pixel coordinates."""
        h, w = self.grid
        x0, y0, x1, y1 = self.crop_box
        bw, bh = (x1 - x0) / w, (y1 - y0) / h
        return (x0 + c * bw, y0 + r * bh, x0 + (c + 1) * bw, y0 + (r + 1) * bh)

    def patch_at(self, x: float, y: float) -> int | None:
        """The patch index (row-major) under pixel (x, y) of the user's image, or None outside the crop."""
        h, w = self.grid
        x0, y0, x1, y1 = self.crop_box
        if not (x0 <= x < x1 and y0 <= y < y1):
            return None
        c = min(w - 1, int((x - x0) * w / (x1 - x0)))
        r = min(h - 1, int((y - y0) * h / (y1 - y0)))
        return r * w + c


@dataclass(frozen=True)
class Answer:
    text: str
    n_visual_tokens: int  # visual embeddings the LM works on (FastV: those left from layer `layer` on)
    prefill_s: float  # first forward over the whole input (visual + text)
    total_s: float  # projector + prefill + decoding
    n_prompt_tokens: int  # LM input length incl. visual tokens (all that enter layer 0)
    n_new_tokens: int = 0
    stop: str = "length"  # "eos" | "length"
    # FastV (pruning inside the LM): visual embeddings entering layer 0 (None → n_visual_tokens), and the LM
    # layer from which on only n_visual_tokens remain (0: reduced before the LM)
    n_visual_tokens_in: int | None = None
    layer: int = 0
    # every token the model chose, the stop token included when `stop == "eos"` (what a teacher-forced
    # score of this answer feeds back); empty for a backend without a language model
    token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.n_visual_tokens_in is None:
            object.__setattr__(self, "n_visual_tokens_in", self.n_visual_tokens)


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

    def lm_attention(self, enc: Encoded, prompt: str) -> Tensor:
        """[L, 2, N] attention the patch tokens receive in each LLM layer for this image and prompt (FastV)."""
        ...

    def lm_stages(self, enc: Encoded, prompt: str, plan) -> object:
        """The `reducers.inllm.StagedRecord` of a staged in-LLM plan (SparseVLM, PyramidDrop) for this image and
        prompt: the attention at each stage's layer over the tokens still present, computed once and cached."""
        ...

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


def final_answer(stream: Iterator[str | Answer]) -> Answer:
    """The `Answer` an `answer_stream` ends with (its growing texts consumed)."""
    final = None
    for final in stream:
        pass
    if not isinstance(final, Answer):
        raise RuntimeError("an answer stream ended without its Answer")
    return final
