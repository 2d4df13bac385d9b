"""Turn whatever a user uploads into an upright RGB image, or a clear one-sentence reason why not.

Handles: 0-byte and non-image files, truncated files, decompression bombs (refused above a stated limit),
EXIF orientation, CMYK, 16-bit greyscale, alpha (composited on white), palettes, animated images (first
frame), tiny images. No global PIL settings are changed.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InputError


HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
STRIP_PIXELS = 1 << 18  # pixels converted at a time from a high-bit-depth image


ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in HIGH_DEPTH:
        return _high_depth_to_rgb(im)
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        return _composite_on_white(im)
    return im.convert("RGB")


def _composite_on_white(im: Image.Image) -> Image.Image:
    """An image with alpha (or a palette with transparency) composited on white, in strips of rows pasted into
    the result: the extra memory is the RGB result (Pillow keeps RGB in 4 bytes per pixel) plus one strip —
    never a full-size RGBA copy (a 20 kB palette PNG of 40 megapixels would otherwise cost three 160 MB RGBA
    images at once). Each pixel becomes (c·a + 255·(255 − a)) / 255, rounded, per channel — what Pillow's
    alpha_composite on white gives."""
    width, height = im.size
    out = Image.new("RGB", im.size)
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = np.asarray(im.crop((0, top, width, bottom)).convert("RGBA"), dtype=np.uint32)
        alpha = strip[..., 3:4]
        blended = (strip[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255
        out.paste(Image.fromarray(blended.astype(np.uint8), "RGB"), (0, top))
    return out


def _high_depth_to_rgb(im: Image.Image) -> Image.Image:
    """16-bit / 32-bit greyscale → 8-bit: x·255/top rounded (top 65535 for 16-bit, the image's maximum for
    32-bit integers; float images are taken as 0–1), converted in strips of rows in float32, so the extra
    memory is the 8-bit result (1 byte per pixel) plus one strip — never a full-size float64 copy."""
    width, height = im.size
    if im.mode.startswith("I;16"):
        scale = 255.0 / 65535.0
    elif im.mode == "I":
        scale = 255.0 / max(float(im.getextrema()[1]), 1.0)
    else:  # "F"
        scale = 255.0
    out = np.empty((height, width), np.uint8)
    rows = max(1, STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        strip = np.array(im.crop((0, top, width, bottom)), dtype=np.float32)  # a copy: scaled in place
        strip *= scale
        np.clip(strip, 0, 255, out=strip)
        np.rint(strip, out=strip)
        out[top:bottom] = strip
    return Image.fromarray(out, "L").convert("RGB")


def load_image(source, max_pixels: int) -> Image.Image:
    """An upright RGB copy of `source` (a path, a Gradio file payload dict, or a PIL image).

    Raises InputError with a sentence a person understands for anything unusable.
    """
    if source is None:
        raise InputError("Please upload an image (or click one of the examples).")
    if isinstance(source, dict):  # a Gradio FileData payload when preprocessing is off
        source = source.get("path") or source.get("url")
        if not source:
            raise InputError("Please upload an image (or click one of the examples).")
    if isinstance(source, Image.Image):
        im = source
    else:
        path = Path(str(source))
        if not path.is_file():
            raise InputError("The uploaded file could not be found on the server; please upload it again.")
        if os.path.getsize(path) == 0:
            raise InputError("The uploaded file is empty (0 bytes); please choose an image file.")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                im = Image.open(path)
        except Image.DecompressionBombError:
            raise InputError(_too_large_message(None, max_pixels)) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise InputError("This file is not an image that can be read (try a PNG, JPEG, WebP or GIF).") from None
    width, height = im.size
    if width < 1 or height < 1:
        raise InputError("The image has no pixels.")
    if width * height > max_pixels:
        raise InputError(_too_large_message((width, height), max_pixels))
    try:
        if getattr(im, "is_animated", False):
            im.seek(0)  # first frame of an animation
        im.load()
        im = ImageOps.exif_transpose(im)
        return _to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if "truncated" in str(err).lower() or isinstance(err, OSError):
            raise InputError("The image file is truncated or corrupt; please upload a complete image.") from None
        raise InputError("This image could not be decoded; please try another file.") from None


def _too_large_message(size: tuple[int, int] | None, max_pixels: int) -> str:
    limit = f"{max_pixels / 1e6:.0f} megapixels"
    if size is None:
        return f"The image is far too large to open safely; the limit is {limit}."
    w, h = size
    return f"The image is {w}×{h} = {w * h / 1e6:.0f} megapixels; the limit is {limit}. Please downscale it."
