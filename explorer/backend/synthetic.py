"""A synthetic backend: seeded random encoder outputs with the backend's interface, and no model at all.

For benchmarks at grid sizes no tower here produces (e.g. 48×60 = 2880 tokens) and for fast UI tests.
Everything it returns is labelled synthetic; it never pretends to answer (`answer` echoes token counts) or to
score (`score` raises InputError).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reducers import Reduction, VisualTokens
from reducers.cache import LRU

from ..errors import InputError
from .geometry import thumbnail
from .protocol import Answer, Encoded, Query, Score, final_answer


@dataclass(frozen=True)
class TinyLMConfig:
    hidden_size: int = 576
    intermediate_size: int = 1536
    num_hidden_layers: int = 30


class SyntheticBackend:
    """Encoder outputs whose patches come from smooth random fields (so similarity has spatial structure)."""

    notice = "Synthetic encoder outputs — no model: patches, clusters and answers carry no meaning."
    has_text_tower = True

    def __init__(self, grid=(24, 24), width=1024, joint_width=768, view_side=672, cache_size=8, seed=0):
        self.grid = tuple(grid)
        self.width, self.joint_width, self.view_side, self.seed = width, joint_width, view_side, seed
        self.name = f"synthetic {grid[0]}×{grid[1]}"
        self.lm_config = TinyLMConfig()
        self._encoded = LRU(cache_size)

    def lookup(self, key: str) -> Encoded | None:
        return self._encoded.get(key)

    def encode(self, image: Image.Image) -> Encoded:
        pixels = np.asarray(image.convert("RGB"))
        key = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()[:16]
        return self._encoded.get_or_compute(key, lambda: self._encode(image, key))

    def _encode(self, image: Image.Image, key: str) -> Encoded:
        t0 = time.perf_counter()
        h, w = self.grid
        gen = torch.Generator().manual_seed(int(key[:8], 16) ^ self.seed)
        coarse = torch.randn(1, self.width, max(2, h // 4), max(2, w // 4), generator=gen)
        smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
        feats = (smooth.flatten(1).T + 0.5 * torch.randn(h * w, self.width, generator=gen)).contiguous()
        keys = feats @ torch.randn(self.width, self.width, generator=gen) / self.width**0.5
        attn = torch.softmax(3 * torch.randn(h * w, generator=gen), 0)
        head_mean = torch.softmax(2 * torch.randn(h * w, generator=gen), 0)
        joint = feats[:, : self.joint_width] + 0.1 * torch.randn(h * w, self.joint_width, generator=gen)
        heads = 16
        layer_attn = heads * torch.softmax(2 * torch.randn(h * w, generator=gen), 0)
        layer_keys = feats @ torch.randn(self.width, max(1, self.width // heads), generator=gen) / self.width**0.5
        projected = F.gelu(feats @ torch.randn(self.width, self.lm_config.hidden_size, generator=gen) / self.width**0.5)
        joint_last = joint + 0.3 * torch.randn(h * w, self.joint_width, generator=gen)
        tokens = VisualTokens(features=feats, keys=keys, cls_attn=attn, grid=self.grid, joint=joint,
                              feature_layer_attn=layer_attn, feature_layer_keys=layer_keys, cls_feature=feats.mean(0),
                              projected=projected)
        side = min(image.size)
        x0, y0 = (image.size[0] - side) / 2, (image.size[1] - side) / 2
        box = (x0, y0, x0 + side, y0 + side)
        px = max(1, round(self.view_side / w))  # whole pixels per patch, as the real view (2 × 14 px)
        vw, vh = w * px, h * px
        view = image.convert("RGB").resize((vw, vh), Image.BILINEAR, box=box)
        cls_joint = joint.mean(0)
        return Encoded(key, tokens, head_mean, view, box, image.size, time.perf_counter() - t0,
                       thumbnail=thumbnail(image), joint_last=joint_last, cls_joint=cls_joint,
                       cls_joint_last=joint_last.mean(0))

    def encode_query(self, prompt: str, rewrite: bool = True) -> Query:
        digest = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16)
        q = torch.randn(self.joint_width, generator=torch.Generator().manual_seed(digest))
        return Query(F.normalize(q, dim=0), prompt, (prompt,), False, bool(rewrite), prompt)

    def lm_attention(self, enc: Encoded, prompt: str) -> torch.Tensor:
        """[L, 2, N] seeded random attention rows per (image, prompt), softmax-normalised like the real ones."""
        digest = int(hashlib.sha256(f"{enc.key}|{prompt}".encode()).hexdigest()[:8], 16)
        gen = torch.Generator().manual_seed(digest)
        logits = 3 * torch.randn(self.lm_config.num_hidden_layers, 2, enc.tokens.n, generator=gen)
        return torch.softmax(logits, dim=-1)

    def lm_stages(self, enc: Encoded, prompt: str, plan):
        """A staged in-LLM plan run on `reducers.inllm.ToyLLM` (seeded per image and prompt): no language model
        here, so the stages' attention is a seeded stand-in, like `lm_attention`."""
        from reducers.inllm import ToyLLM

        digest = int(hashlib.sha256(f"{enc.key}|{prompt}|stages".encode()).hexdigest()[:8], 16)
        return ToyLLM(enc.tokens.features, int(self.lm_config.num_hidden_layers), seed=digest).run(plan)

    def n_text_tokens(self, prompt: str) -> int:
        return 16 + len(prompt.split())

    def answer(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
               max_new_tokens: int | None = None) -> Answer:
        return final_answer(self.answer_stream(enc, prompt, reduction, max_new_tokens))

    def answer_stream(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
                      max_new_tokens: int | None = None):
        t = time.perf_counter()
        n = enc.tokens.n if reduction is None else reduction.n_kept
        text = f"(synthetic backend: {n} visual tokens, no language model)"
        dt = time.perf_counter() - t
        yield text
        yield Answer(text, n, dt, dt, n + self.n_text_tokens(prompt), 0, "length")

    def score(self, enc: Encoded, prompt: str, reduction: Reduction | None, target_ids) -> Score:
        """No language model, so nothing to score: always InputError (never made-up log-probabilities)."""
        raise InputError("The synthetic backend has no language model, so answers cannot be scored; "
                         "answer fidelity needs a real or the offline model.")
