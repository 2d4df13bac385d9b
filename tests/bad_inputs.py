"""Files a user might upload, good and bad: each maker writes one into `folder` and returns its path. Also the
files a caller might point at without uploading them, and what a clear error message is."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def _scene(width=320, height=240, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 255 // max(1, width - 1)), (y * 255 // max(1, height - 1)), np.full_like(x, 128)], -1)
    arr = (arr + rng.integers(0, 30, arr.shape)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def not_an_image(folder: Path) -> Path:
    p = folder / "notes.png"
    p.write_text("this is plain text, not a picture\n")
    return p


def empty_file(folder: Path) -> Path:
    p = folder / "empty.jpg"
    p.write_bytes(b"")
    return p


def truncated_jpeg(folder: Path) -> Path:
    buf = io.BytesIO()
    _scene(640, 480).save(buf, format="JPEG", quality=90)
    p = folder / "truncated.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    return p


def huge_image(folder: Path) -> Path:
    """A 20000×20000 PNG (a decompression bomb: tiny file, 400 megapixels)."""
    p = folder / "huge.png"
    Image.new("1", (20000, 20000)).save(p, optimize=True)
    return p


def cmyk_jpeg(folder: Path) -> Path:
    p = folder / "cmyk.jpg"
    _scene().convert("CMYK").save(p, format="JPEG")
    return p


def png16(folder: Path) -> Path:
    p = folder / "grey16.png"
    arr = (np.linspace(0, 65535, 200 * 150).reshape(150, 200)).astype(np.uint16)
    Image.fromarray(arr, "I;16").save(p)
    return p


def rgba_png(folder: Path) -> Path:
    p = folder / "rgba.png"
    im = _scene().convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize(im.size))
    im.save(p)
    return p


def palette_png(folder: Path) -> Path:
    p = folder / "palette.png"
    _scene().convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(p)
    return p


def animated_gif(folder: Path) -> Path:
    p = folder / "animated.gif"
    frames = [Image.new("RGB", (64, 48), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return p


def one_pixel(folder: Path) -> Path:
    p = folder / "one.png"
    Image.new("RGB", (1, 1), (200, 30, 30)).save(p)
    return p


def exif_rotated(folder: Path) -> Path:
    """A 300×200 landscape stored with EXIF orientation 6 (display rotated 90° clockwise → 200×300)."""
    p = folder / "rotated.jpg"
    im = _scene(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(p, format="JPEG", exif=exif.tobytes())
    return p


def good_jpeg(folder: Path, seed: int = 0, size=(320, 240)) -> Path:
    p = folder / f"good-{seed}.jpg"
    _scene(*size, seed=seed).save(p, format="JPEG", quality=92)
    return p


BAD = {  # maker → the error message must contain this (case-insensitive)
    not_an_image: "not an image",
    empty_file: "empty",
    truncated_jpeg: "truncated",
    huge_image: "limit",
}
ODD_BUT_FINE = {  # maker → expected (width, height) after loading
    cmyk_jpeg: (320, 240),
    png16: (200, 150),
    rgba_png: (320, 240),
    palette_png: (320, 240),
    animated_gif: (64, 48),
    one_pixel: (1, 1),
    exif_rotated: (200, 300),
}


GENERIC = "something went wrong"  # Gradio's message when a handler raised something other than gr.Error


def is_one_sentence(message) -> bool:
    """A message for a person: one line of 10–400 characters, no traceback, not Gradio's generic error, the
    "Invalid setting" prefix at most once."""
    if not isinstance(message, str):
        return False
    low = message.lower()
    return (GENERIC not in low and "traceback" not in low and "\n" not in message.strip()
            and 10 <= len(message) <= 400 and message.count("Invalid setting") <= 1)


def not_uploaded_files(folder: Path) -> dict[str, str]:
    """Files on the server that were never uploaded: an image (one flat colour, so its pixels would be
    recognisable), an empty file, a text file named .png, and a path that does not exist."""
    Image.new("RGB", (64, 48), (13, 200, 77)).save(folder / "secret.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("not an image\n")
    return {"image": str(folder / "secret.png"), "empty": str(folder / "empty.png"),
            "not-an-image": str(folder / "text.png"), "missing": str(folder / "missing.png")}
