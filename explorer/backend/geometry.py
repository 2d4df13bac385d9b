"""Where the model looks: layers and patch grid from the config, and how an image becomes pixel values.

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
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

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


def producing_layer(feature_layer: int | Sequence[int], num_layers: int) -> int | None:
    """The encoder layer whose output is the selected hidden state (hidden_states[i] is the output of layers[i−1]):
    layers[22] for LLaVA-1.5's −2 of 24 (VisionZip reads its attention and keys); None for the embeddings. A list
    of feature layers uses the deepest one."""
    layers = [feature_layer] if isinstance(feature_layer, int) else list(feature_layer)
    index = max(hidden_state_index(int(f), num_layers) for f in layers)
    return index - 1 if index >= 1 else None


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


def thumbnail(image: Image.Image, max_side: int = 320) -> Image.Image:
    """The whole image scaled so its longer side is at most `max_side` (for the crop picture)."""
    scale = min(1.0, max_side / max(image.size))
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, Image.BILINEAR) if size != image.size else image.copy()
