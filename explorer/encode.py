"""Image → everything the reducers need; prompt → PAR's query. Pure functions plus a thread-safe LRU.

Image geometry (how patches map back onto the user's image)
-----------------------------------------------------------
The model sees one rectangular *region* of the user's image, resampled (bicubic) to the vision tower's
input size S×S (`vision_config.image_size`, 336 for LLaVA-1.5). The region is `crop_box = (x0, y0, x1, y1)`
in the original image's pixel coordinates, chosen by the checkpoint's image processor:

* "crop"   (CLIPImageProcessor default: resize shortest edge, then centre crop): the centred square of side
           min(W, H). Equivalent to the processor's resize-then-crop up to sub-pixel rounding of the offset.
* "pad"    (`do_pad=True`, LLaVA's expand2square): the centred square of side max(W, H), which extends past
           the image; the outside is filled with the processor's mean colour (box coordinates can be < 0 or
           > W/H).
* "squash" (no centre crop, fixed height/width): the whole image, stretched to S×S.

The grid is h×w = (S/patch)×(S/patch); patch (r, c) covers, in the original image,
x ∈ [x0 + c·(x1−x0)/w, x0 + (c+1)·(x1−x0)/w), y ∈ [y0 + r·(y1−y0)/h, y0 + (r+1)·(y1−y0)/h).
`Encoded.view` is the same region resized for display (2·S on its long side), so patch (r, c) covers view
pixels [r·H/h, (r+1)·H/h) × [c·W/w, (c+1)·W/w).

Attention (PruMerge, see /work/shared/ALGORITHMS.md)
-----------------------------------------------------
Q, K are the q_proj / k_proj outputs (raw linear outputs, before any scaling) of the layer that *consumes*
the selected hidden state, CLS at row 0, D the full width:
  official:  a = softmax(Q[0] Kᵀ / √D)[1:]                   (not split into heads, as the official code)
  head-mean: a = mean_h softmax(Q_h[0] K_hᵀ / √(D/H))[1:]     (per-head attention, averaged; FasterVLM)
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from reducers import VisualTokens

from .hooks import capture

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DISPLAY_SCALE = 2  # the view is shown at twice the model's input resolution


# --------------------------------------------------------------------------------------------------
# Layers and grid, derived from the config
# --------------------------------------------------------------------------------------------------
def hidden_state_index(feature_layer: int, num_layers: int) -> int:
    """Index into `hidden_states` (length num_layers + 1: embeddings, then each layer's output)."""
    index = feature_layer if feature_layer >= 0 else num_layers + 1 + feature_layer
    if not 0 <= index <= num_layers:
        raise ValueError(f"vision_feature_layer {feature_layer} is outside a {num_layers}-layer tower")
    return index


def consuming_layer(feature_layer: int | Sequence[int], num_layers: int) -> int:
    """The encoder layer whose self-attention reads the selected hidden state.

    hidden_states[i] is the input of layers[i], so for LLaVA-1.5 (feature layer −2 of 24) this is layers[23].
    When the deepest selected state is the tower's last output (no layer consumes it), the last layer
    (the one that produced it) is used. A list of feature layers (features concatenated, as LLaVA does) uses
    the deepest one.
    """
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    index = max(hidden_state_index(int(f), num_layers) for f in layers)
    return min(index, num_layers - 1)


def patch_grid(vision_config) -> tuple[int, int]:
    size, patch = vision_config.image_size, vision_config.patch_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return size[0] // patch[0], size[1] // patch[1]


# --------------------------------------------------------------------------------------------------
# Preprocessing geometry
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How an image becomes pixel_values: region mode, input size (W, H), normalisation."""

    size: tuple[int, int]
    mode: str = "crop"  # "crop" | "pad" | "squash"
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD

    @classmethod
    def from_processor(cls, image_processor, vision_config) -> "Geometry":
        size = vision_config.image_size
        size = (size, size) if isinstance(size, int) else (int(size[1]), int(size[0]))
        if image_processor is None:
            return cls(size)
        mean = tuple(float(m) for m in (getattr(image_processor, "image_mean", None) or OPENAI_CLIP_MEAN))
        std = tuple(float(s) for s in (getattr(image_processor, "image_std", None) or OPENAI_CLIP_STD))
        if getattr(image_processor, "do_pad", False):
            mode = "pad"
        elif getattr(image_processor, "do_center_crop", True):
            mode = "crop"
        else:
            mode = "squash"
        return cls(size, mode, mean, std)

    def box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The region of a width×height image the model sees, in its pixel coordinates."""
        if self.mode == "squash":
            return (0.0, 0.0, float(width), float(height))
        aspect = self.size[0] / self.size[1]  # W/H of the model input (1 for square towers)
        if self.mode == "crop":
            bw = min(float(width), height * aspect)
        else:  # pad
            bw = max(float(width), height * aspect)
        bh = bw / aspect
        x0, y0 = (width - bw) / 2, (height - bh) / 2
        return (x0, y0, x0 + bw, y0 + bh)

    def region(self, image: Image.Image, out_size: tuple[int, int]) -> tuple[Image.Image, tuple]:
        """The seen region of `image` resampled to `out_size` (W, H), and its box."""
        box = self.box(*image.size)
        x0, y0, x1, y1 = box
        if x0 < 0 or y0 < 0 or x1 > image.size[0] or y1 > image.size[1]:
            # pad mode: scale the image first, then paste it on an out_size canvas of the mean colour (never
            # build the padded canvas at the image's own resolution: 20000 px wide × 1 px → 20000² pixels)
            sx, sy = out_size[0] / (x1 - x0), out_size[1] / (y1 - y0)
            scaled = image.resize((max(1, round(image.size[0] * sx)), max(1, round(image.size[1] * sy))), Image.BICUBIC)
            fill = tuple(int(round(255 * m)) for m in self.mean)
            canvas = Image.new("RGB", out_size, fill)
            canvas.paste(scaled, (int(round(-x0 * sx)), int(round(-y0 * sy))))
            return canvas, box
        return image.resize(out_size, Image.BICUBIC, box=box), box

    def pixel_values(self, image: Image.Image) -> tuple[Tensor, tuple]:
        """[1, 3, H, W] float32 normalised input and the crop box."""
        region, box = self.region(image, self.size)
        arr = np.asarray(region, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(arr.transpose(2, 0, 1).copy()).unsqueeze(0), box

    def view(self, image: Image.Image) -> Image.Image:
        """The seen region for display, DISPLAY_SCALE × the model's input size."""
        out = (self.size[0] * DISPLAY_SCALE, self.size[1] * DISPLAY_SCALE)
        return self.region(image, out)[0]


def content_key(image: Image.Image) -> str:
    """Hash of the pixels (and size/mode): equal pixels → equal key, whatever the PIL object."""
    arr = np.ascontiguousarray(np.asarray(image))
    h = hashlib.sha256()
    h.update(f"{image.mode}:{arr.shape}:{arr.dtype}".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:32]


# --------------------------------------------------------------------------------------------------
# Attention from captured q/k
# --------------------------------------------------------------------------------------------------
def attention_official(q: Tensor, k: Tensor) -> Tensor:
    """CLS→patch attention, full width (not split into heads): softmax(Q[0] Kᵀ/√D)[1:]. q, k: [T, D]."""
    q, k = q.float(), k.float()
    scores = (k @ q[0]) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1)[1:]


def attention_head_mean(q: Tensor, k: Tensor, num_heads: int) -> Tensor:
    """Per-head CLS→patch attention averaged over heads (scale 1/√head_dim, as the model's attention)."""
    q, k = q.float(), k.float()
    t, d = k.shape
    head_dim = d // num_heads
    qh = q[0].view(num_heads, head_dim)
    kh = k.view(t, num_heads, head_dim)
    scores = torch.einsum("hd,thd->ht", qh, kh) / math.sqrt(head_dim)
    return torch.softmax(scores, dim=-1).mean(0)[1:]


# --------------------------------------------------------------------------------------------------
# One forward through the vision tower
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TowerSpec:
    """What to read out of a CLIP-style vision tower, all derived from the VLM config."""

    feature_layer: int | tuple[int, ...]  # vision_feature_layer
    strategy: str  # vision_feature_select_strategy ("default": drop CLS)
    attn_layer: int  # consuming_layer(...)
    num_heads: int
    grid: tuple[int, int]


def vision_core(tower):
    """The module holding `encoder` and `post_layernorm` (transformers ≥ 5 flattened CLIPVisionModel;
    older versions wrap it in `.vision_model`)."""
    return getattr(tower, "vision_model", tower)


def vision_forward(tower, pixel_values: Tensor, spec: TowerSpec, post_layernorm=None, projection=None
                   ) -> dict[str, Tensor]:
    """Run the tower once with hooks on q/k of `spec.attn_layer`; return CPU float32 tensors:
    features [N, d] (selected layer, patch rows), keys [N, D], cls_attn [N], attn_head_mean [N],
    joint [N, e] (post_layernorm + projection of the last layer's patch rows; absent without projection).
    """
    layer = vision_core(tower).encoder.layers[spec.attn_layer].self_attn
    with torch.inference_mode(), capture({"q": layer.q_proj, "k": layer.k_proj}) as qk:
        out = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
        hidden = out.hidden_states
        layers = [spec.feature_layer] if isinstance(spec.feature_layer, int) else list(spec.feature_layer)
        # Patch rows only: LLaVA's "default" drops CLS; with "full" the CLS row is still not a patch, so the
        # explorer shows and feeds the patch rows (documented deviation for that rare setting).
        features = torch.cat([hidden[f][0, 1:] for f in layers], dim=-1)
        q, k = qk["q"][0], qk["k"][0]
        result = {
            "features": features,
            "keys": k[1:],
            "cls_attn": attention_official(q, k),
            "attn_head_mean": attention_head_mean(q, k, spec.num_heads),
        }
        if projection is not None:
            last = hidden[-1][0, 1:]
            if post_layernorm is not None:
                last = post_layernorm(last)
            result["joint"] = projection(last)
    n = spec.grid[0] * spec.grid[1]
    if features.shape[0] != n:
        raise ValueError(f"the tower returned {features.shape[0]} patch tokens, the config says {n}")
    return {name: value.detach().float().cpu().contiguous() for name, value in result.items()}


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


# --------------------------------------------------------------------------------------------------
# A small thread-safe LRU
# --------------------------------------------------------------------------------------------------
class LRU:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError("cache size must be ≥ 1")
        self.size = size
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return None

    def peek(self, key: Hashable):
        with self._lock:
            return self._data.get(key)

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data


# --------------------------------------------------------------------------------------------------
# PAR prompt rewriting and the text query
# --------------------------------------------------------------------------------------------------
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


@dataclass(frozen=True, eq=False)
class Query:
    embedding: Tensor  # [e], L2-normalised, CPU float32
    phrase: str
    prompts: tuple[str, ...]
    truncated: bool
    rewrite: bool
    prompt: str


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
