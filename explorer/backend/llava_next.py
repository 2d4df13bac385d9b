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
`newlines="none"`, VisionZip's LLaVA-NeXT port); extra tokens a method adds (merged aggregates) follow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

NEWLINE_RULES = ("rows", "none")


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
        if rule == "none" or kept.numel() == 0:
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
def _backend_class():
    """`LlavaNextBackend`, defined on first use (models.py imports transformers-heavy code lazily too)."""
    import time

    from reducers import Reduction, VisualTokens

    from ..errors import InputError
    from .geometry import thumbnail
    from .models import LlavaBackend, gpu
    from .protocol import Encoded
    from .tower import vision_forward

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
                                                self._joint_map))
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
            view = self.geometry.view(image)
            return Encoded(key, tokens, rows["attn_head_mean"], view, (0.0, 0.0, *map(float, image.size)), image.size,
                           time.perf_counter() - t0, thumbnail=thumbnail(image), joint_last=rows["joint_last"],
                           cls_joint=base["cls_joint"], cls_joint_last=base["cls_joint_last"], layout=layout)

        def _visual_input(self, enc: Encoded, reduction: Reduction | None):
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

        def _fastv_plan(self, enc: Encoded, reduction: Reduction):
            raise InputError(FASTV_REASON)

        def lm_attention(self, enc: Encoded, prompt: str) -> Tensor:
            raise InputError(FASTV_REASON)

    return LlavaNextBackend


FASTV_REASON = ("FastV is off on LLaVA-NeXT: its image span holds row-newline embeddings that are not patches, and "
                "no official FastV port says whether they compete with the patches.")
