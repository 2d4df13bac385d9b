"""LLaVA-NeXT (anyres) adapter core: where one image's visual tokens come from and how reduced ones enter the LM.

What `LlavaNextForConditionalGeneration` (transformers 5.23, `modeling_llava_next.py`) feeds its language model
for one image, and what this module reproduces token for token:

* The image processor (`LlavaNextImageProcessor`) picks the best resolution among `image_grid_pinpoints`,
  resizes the image into it keeping the aspect ratio, pads it (centred) and cuts it into nph×npw tiles of the
  tower's input size S; in front of them goes the *base* image, the whole picture resized to S×S. Every one
  of the 1 + nph·npw crops runs through the CLIP tower on its own (with its own CLS token).
* `get_image_features` keeps the selected hidden state's patch rows (strategy "default": CLS dropped) and
  projects them; `pack_image_features` then concatenates the base crop's h×w patches (raster order) with the
  tiles' patches laid out as one (nph·h)×(npw·w) grid, *unpadded* (`unpad_image`: the rows or columns that
  cover only the padding are dropped) to H'×W', with the learned `image_newline` embedding after each of the
  H' rows: 576 + H'·(W' + 1) embeddings for LLaVA-NeXT-7B's 336-px crops.

Here an image's *patch tokens* are the h·w + H'·W' patches the LM receives, in the LM's order (newlines are not
patches: they are the model's row markers, added after projection). `AnyresLayout` says, for each of them,
which crop and which (row, column) of that crop it comes from, so per-crop tower outputs (features, keys, CLS
attention of that crop) can be gathered into the LM's order; `inputs` rebuilds the LM's visual embeddings
for all tokens or for a kept subset (kept patches in the LM's order; each tile-grid row that keeps at least
one patch keeps its newline after its last kept patch — `newlines="rows"` — or no newline at all —
`newlines="off"`, VisionZip's LLaVA-NeXT port); extra tokens a method adds (merged aggregates) follow.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from reducers import Reduction, VisualTokens

from ..errors import InputError
from .geometry import thumbnail
from .families import METHOD_PARAMS_OFF
from .models import LlavaBackend, gpu, joint_map
from .protocol import Encoded
from .tower import vision_forward

NEWLINE_RULES = ("rows", "off")


@dataclass(frozen=True)
class AnyresLayout:
    """The token layout of one image: base crop grid (h, w), tiles (nph, npw), the unpadded tile grid.

    kept_cells: the padded tile grid's cells (row-major over (nph·h)×(npw·w)) that survive unpadding, as the
    (r0, r1, c0, c1) window they form."""

    crop_grid: tuple[int, int]
    tiles: tuple[int, int]
    window: tuple[int, int, int, int]  # rows r0:r1, columns c0:c1 of the padded tile grid kept by unpad_image

    @property
    def n_base(self) -> int:
        return self.crop_grid[0] * self.crop_grid[1]

    @property
    def tile_grid(self) -> tuple[int, int]:
        r0, r1, c0, c1 = self.window
        return (r1 - r0, c1 - c0)

    @property
    def n_tiles(self) -> int:
        h, w = self.tile_grid
        return h * w

    @property
    def n(self) -> int:
        """Patch tokens the LM receives (newlines excluded)."""
        return self.n_base + self.n_tiles

    @property
    def n_crops(self) -> int:
        return 1 + self.tiles[0] * self.tiles[1]

    @property
    def n_lm(self) -> int:
        """Visual embeddings the LM receives for all tokens: patches plus one newline per tile-grid row."""
        return self.n + self.tile_grid[0]

    def parts(self) -> tuple[tuple[str, tuple[int, int], int], ...]:
        """(name, grid, first patch index) of the base image and the tile grid, in the LM's order."""
        return (("base", self.crop_grid, 0), ("tiles", self.tile_grid, self.n_base))

    def source(self) -> Tensor:
        """[N, 3] long: (crop, row, column) of every patch token in the LM's order (crop 0 = base)."""
        h, w = self.crop_grid
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        base = torch.stack([torch.zeros(h * w, dtype=torch.long), rows.reshape(-1), cols.reshape(-1)], 1)
        r0, r1, c0, c1 = self.window
        gr, gc = torch.meshgrid(torch.arange(r0, r1), torch.arange(c0, c1), indexing="ij")
        gr, gc = gr.reshape(-1), gc.reshape(-1)
        crop = 1 + (gr // h) * self.tiles[1] + gc // w
        tiles = torch.stack([crop, gr % h, gc % w], 1)
        return torch.cat([base, tiles])

    def row_of(self, index: Tensor) -> Tensor:
        """Tile-grid row of each patch index (−1 for base patches)."""
        index = torch.as_tensor(index, dtype=torch.long)
        w = self.tile_grid[1]
        return torch.where(index >= self.n_base, (index - self.n_base) // max(w, 1), torch.full_like(index, -1))

    def newline_after(self, kept: Tensor, rule: str = "rows") -> Tensor:
        """[M] bool: whether a newline embedding follows kept[i] (kept in the LM's order, strictly increasing)."""
        if rule not in NEWLINE_RULES:
            raise ValueError(f"newlines must be one of {NEWLINE_RULES}, got {rule!r}")
        kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1)
        if kept.numel() > 1 and not bool((kept[1:] > kept[:-1]).all()):
            raise ValueError("LLaVA-NeXT feeds kept patches in the LM's order: kept must be strictly increasing")
        if rule == "off" or kept.numel() == 0:
            return torch.zeros(kept.numel(), dtype=torch.bool)
        rows = self.row_of(kept)
        following = torch.cat([rows[1:], torch.tensor([-2])])
        return (rows >= 0) & (rows != following)


def anyres_layout(image_hw: tuple[int, int], config) -> AnyresLayout:
    """The layout `LlavaNextModel.pack_image_features` builds for an image of (height, width) `image_hw`,
    computed with transformers' own helpers (best resolution, unpad) on a grid of cell indices."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

    vc = config.vision_config
    h = w = vc.image_size // vc.patch_size
    nph, npw = get_anyres_image_grid_shape(list(image_hw), config.image_grid_pinpoints, vc.image_size)
    cells = torch.arange(nph * h * npw * w).view(1, nph * h, npw * w)
    kept = unpad_image(cells, list(image_hw))[0]
    r0, c0 = int(kept[0, 0]) // (npw * w), int(kept[0, 0]) % (npw * w)
    return AnyresLayout((h, w), (int(nph), int(npw)), (r0, r0 + kept.shape[0], c0, c0 + kept.shape[1]))


@dataclass(frozen=True, eq=False)
class AnyresViews:
    """What the model sees of one image, for display (each part at DISPLAY_SCALE × its pixel size):

    base:   the whole image resized to S×S (the base crop; the processor does not keep the aspect ratio)
    tiles:  the part of the padded best-resolution canvas that survives unpadding, H'×W' patches exactly
            (`unpad_image` works in whole patches from the aspect ratio, so it may keep a sliver of padding or
            drop a sliver of the image — e.g. 3 px rows of an 80×64 image at 112 px: the model's own behaviour)
    canvas: the whole padded canvas (nph·S × npw·S: the image resized keeping its aspect, centred, black padding)
            — what the tiles cut, before unpadding (`window` in patches says what is kept)
    """

    base: object  # PIL.Image
    tiles: object
    canvas: object


def anyres_views(image, layout: AnyresLayout, config, scale: int = 2) -> AnyresViews:
    """The base view, the unpadded tile region and the padded canvas of `image` as the processor builds them
    (best resolution, aspect-preserving resize with transformers' `get_patch_output_size`, centred padding)."""
    import numpy as np
    from PIL import Image
    from transformers.image_processing_utils import get_patch_output_size
    from transformers.image_utils import ChannelDimension

    vc = config.vision_config
    size, patch = vc.image_size, vc.patch_size
    nph, npw = layout.tiles
    target = (nph * size, npw * size)  # (H, W) of the best resolution
    new_h, new_w = get_patch_output_size(np.asarray(image), target, ChannelDimension.LAST)
    canvas = Image.new("RGB", (target[1], target[0]), (0, 0, 0))
    canvas.paste(image.convert("RGB").resize((new_w, new_h), Image.BICUBIC),
                 ((target[1] - new_w) // 2, (target[0] - new_h) // 2))
    r0, r1, c0, c1 = layout.window
    tiles = canvas.crop((c0 * patch, r0 * patch, c1 * patch, r1 * patch))
    base = image.convert("RGB").resize((size, size), Image.BICUBIC)

    def up(im):
        return im.resize((im.size[0] * scale, im.size[1] * scale), Image.BICUBIC)

    return AnyresViews(up(base), up(tiles), up(canvas))


def gather(per_crop: Tensor, layout: AnyresLayout) -> Tensor:
    """[N, …] rows of a per-crop quantity [n_crops, h·w, …] in the LM's order."""
    src = layout.source()
    w = layout.crop_grid[1]
    return per_crop[src[:, 0], src[:, 1] * w + src[:, 2]]


def visual_embeddings(projected: Tensor, newline: Tensor, layout: AnyresLayout, kept: Tensor | None = None,
                      n_extra: int = 0, rule: str = "rows") -> Tensor:
    """The LM's visual input [M'', H]: `projected` [M + n_extra, H] are the projected tokens in order (the first
    M belong to `kept`, or all N patches when `kept` is None), with `newline` [H] inserted after each row end
    (`AnyresLayout.newline_after`); the n_extra extra tokens follow."""
    if kept is None:
        kept = torch.arange(layout.n)
    kept = torch.as_tensor(kept, dtype=torch.long).reshape(-1).cpu()
    m = kept.numel()
    if projected.shape[0] != m + n_extra:
        raise ValueError(f"{projected.shape[0]} projected tokens for {m} kept patches and {n_extra} extra tokens")
    after = layout.newline_after(kept, rule)
    pieces, start = [], 0
    line = newline.to(projected.dtype).view(1, -1)
    for i in torch.nonzero(after).reshape(-1).tolist():
        pieces += [projected[start:i + 1], line]
        start = i + 1
    pieces.append(projected[start:])
    return torch.cat(pieces)


# --------------------------------------------------------------------------------------------------
# The backend
# --------------------------------------------------------------------------------------------------
class LlavaNextBackend(LlavaBackend):
    """`LlavaBackend` for `LlavaNextForConditionalGeneration`: encode runs every crop of the anyres input
    through the tower (hooks per crop, as LLaVA-1.5's one crop) and gathers the per-crop outputs into the LM's
    order (`AnyresLayout`); the LM's visual input re-inserts the row newlines (`visual_embeddings`).

    Per-token scores: a patch's CLS attention and keys are those of its own crop (each crop has its own CLS
    and softmax); `cls_feature` / `cls_joint` are the base crop's CLS row (the whole picture's summary).
    FastV is refused: the LM's image span holds the newline embeddings, which are not patches, and no
    official FastV port says whether they compete with the patches."""

    family = "llava_next"

    def __init__(self, model, tokenizer, text, image_processor, *, newlines: str = "rows", **kwargs):
        from .geometry import Geometry

        super().__init__(model, tokenizer, text, Geometry.from_processor(image_processor, model.config.vision_config),
                         **kwargs)
        if newlines not in NEWLINE_RULES:
            raise ValueError(f"newlines must be one of {NEWLINE_RULES}, got {newlines!r}")
        self.image_processor = image_processor
        self.newlines = newlines

    @gpu
    def _encode(self, image, key: str) -> Encoded:
        t0 = time.perf_counter()
        batch = self.image_processor(image, return_tensors="pt")
        image_hw = tuple(int(v) for v in batch["image_sizes"][0])
        layout = anyres_layout(image_hw, self.model.config)
        pixel_values = batch["pixel_values"][0, :layout.n_crops]
        crops = []
        with self._lock:
            for crop in pixel_values:
                crops.append(vision_forward(self.vision_tower, crop[None].to(self.device, self.dtype), self.spec,
                                            functools.partial(joint_map, self.vision_tower, self.text)))
            with torch.inference_mode():
                stacked = torch.stack([c["features"] for c in crops])
                projected = self.projector(stacked.to(self.device, self.dtype)).float().cpu()
        rows = {name: gather(torch.stack([c[name] for c in crops]), layout)
                for name in ("features", "keys", "cls_attn", "attn_head_mean", "joint", "joint_last")}
        optional = {name: gather(torch.stack([c[name] for c in crops]), layout)
                    for name in ("feature_layer_attn", "feature_layer_keys") if name in crops[0]}
        base = crops[0]
        try:
            tokens = VisualTokens(features=rows["features"], keys=rows["keys"], cls_attn=rows["cls_attn"],
                                  joint=rows["joint"], cls_feature=base["cls_feature"],
                                  projected=gather(projected, layout), **optional)
        except ValueError as err:
            raise InputError(f"The vision tower of {self.name} produced unusable features ({err}); "
                             "the checkpoint may be broken.") from None
        view = anyres_views(image, layout, self.model.config).base  # the base crop: the whole image, squashed
        return Encoded(key, tokens, rows["attn_head_mean"], view, (0.0, 0.0, *map(float, image.size)), image.size,
                       time.perf_counter() - t0, thumbnail=thumbnail(image), joint_last=rows["joint_last"],
                       cls_joint=base["cls_joint"], cls_joint_last=base["cls_joint_last"], layout=layout)

    def reduce(self, enc: Encoded, method: str, params=None, query: Tensor | None = None) -> Reduction:
        """`method` (a registry name) on this image's patch tokens, or InputError with the one-sentence reason
        when the method has no faithful rule on LLaVA-NeXT (`families.METHOD_RULES`). PAR runs with its
        spatial graph off (the base image and the tile grid are two grids)."""
        from reducers import REDUCERS

        check_method(method)
        entry = REDUCERS[method]
        refused = METHOD_PARAMS_OFF["llava_next"].get(method)
        if refused is not None and params is not None and getattr(params, refused[0], False):
            raise InputError(refused[1])
        vt = enc.tokens if query is None else enc.tokens.derive(query=query)
        return entry(vt, params)

    def views(self, image) -> AnyresViews:
        """What the model sees of `image`: base crop, unpadded tile region, padded canvas (`AnyresViews`)."""
        batch = self.image_processor(image, return_tensors="pt")
        layout = anyres_layout(tuple(int(v) for v in batch["image_sizes"][0]), self.model.config)
        return anyres_views(image, layout, self.model.config)

    def _visual_input(self, enc: Encoded, reduction: Reduction | None):
        if reduction is not None:
            check_method(reduction.method)
        layout = enc.layout
        kept = None if reduction is None else reduction.kept
        n_extra = 0 if reduction is None else int(reduction.n_extra)
        newline = self.model.model.image_newline
        if kept is not None:
            try:
                layout.newline_after(kept, self.newlines)
            except ValueError as err:
                raise InputError(str(err)) from None

        def project(tokens: Tensor) -> Tensor:
            return visual_embeddings(self.projector(tokens), newline, layout, kept, n_extra, self.newlines)

        return project

    def n_fed(self, enc: Encoded, reduction: Reduction | None) -> int:
        """Visual embeddings the LM receives for this reduction: its tokens plus the row newlines fed."""
        layout = enc.layout
        if reduction is None:
            return layout.n_lm
        return int(reduction.tokens.shape[0]) + int(layout.newline_after(reduction.kept, self.newlines).sum())

    def answer_stream(self, enc: Encoded, prompt: str, reduction: Reduction | None = None,
                      max_new_tokens: int | None = None):
        """`LlavaBackend.answer_stream`, its `Answer` counting every visual embedding fed (newlines too)."""
        import dataclasses

        from .protocol import Answer

        for item in super().answer_stream(enc, prompt, reduction, max_new_tokens):
            if isinstance(item, Answer):
                n = self.n_fed(enc, reduction)
                item = dataclasses.replace(item, n_visual_tokens=n, n_visual_tokens_in=n)
            yield item

    def score(self, enc: Encoded, prompt: str, reduction: Reduction | None, target_ids):
        import dataclasses

        result = super().score(enc, prompt, reduction, target_ids)
        return dataclasses.replace(result, n_visual_tokens=self.n_fed(enc, reduction))

    def _lm_input(self, enc: Encoded, prompt: str, reduction: Reduction | None):
        if reduction is not None and reduction.layer > 0:  # pruning inside the LM (FastV, SparseVLM, PyramidDrop)
            raise InputError(FASTV_REASON)
        return super()._lm_input(enc, prompt, reduction)

    def lm_stages(self, enc: Encoded, prompt: str, plan):
        raise InputError(FASTV_REASON)

    def lm_attention(self, enc: Encoded, prompt: str) -> Tensor:
        raise InputError(FASTV_REASON)



def _backend_class():
    """`LlavaNextBackend` (kept for callers that ask for the class by function)."""
    return LlavaNextBackend


def check_method(method: str) -> None:
    """InputError with the method's one-sentence reason when it is off on LLaVA-NeXT (unknown names too)."""
    from ..errors import InputError
    from .families import METHOD_RULES

    rule = METHOD_RULES["llava_next"].get(method)
    if rule is None:
        raise InputError(f"Unknown method {method!r}.")
    if not rule.enabled:
        raise InputError(f"{method} is off on LLaVA-NeXT: {rule.text}")


def load(source: str, device: str = "auto", *, clip: str | None = None, newlines: str = "rows",
         max_new_tokens: int = 64):
    """A `LlavaNextBackend` from a LLaVA-NeXT hub id or local folder, for use from Python (the app refuses the
    family until its pictures of the base image and the tiles exist). One sentence (`families.CheckpointError`)
    for a checkpoint of another family, without processor or tokenizer, or with unreadable weights. PAR's text
    side: `clip` when given, else the default CLIP where it can be loaded, else none (PAR's offline query)."""
    from safetensors import SafetensorError
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from . import families, models

    source = models.check_source(source)
    config = families.read_config(source)
    if config.get("model_type") != "llava_next":
        raise families.CheckpointError(f"not a LLaVA-NeXT checkpoint (model_type {config.get('model_type')!r})")
    dev, dtype = models.pick_device(device)
    try:
        model = LlavaNextForConditionalGeneration.from_pretrained(source, dtype=dtype).to(dev).eval()
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as err:
        raise families.CheckpointError(f"its weights cannot be loaded (missing, truncated or corrupt files: "
                                       f"{families.first_line(err)[:120]})") from None
    try:
        processor = AutoProcessor.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError):
        processor = None
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise families.CheckpointError("it has no LLaVA-NeXT processor (image processor and tokenizer)")
    width = model.config.vision_config.hidden_size
    if clip:
        text, notice = models.real_text_side(clip, dev, dtype, width), ""
    else:
        text, notice = models.default_text_side(dev, dtype, width)
    return _backend_class()(model, processor.tokenizer, text, processor.image_processor, name=source, notice=notice,
                            processor=processor, newlines=newlines, max_new_tokens=max_new_tokens)


FASTV_REASON = ("FastV is off on LLaVA-NeXT: its image span holds row-newline embeddings that are not patches, and "
                "no official FastV port says whether they compete with the patches.")
