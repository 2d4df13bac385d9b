"""The session's last result as files: its JSON (settings, per-patch data, answers with their stamps) and its
pictures side by side as a lossless PNG, both redrawn from the cached encode, in the service's export folder."""

from __future__ import annotations

import hashlib
import io
import json
import re
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ..errors import InputError
from ..session import Session
from ..settings import Settings
from . import pipeline, screen
from .answers import heavy_slot

if TYPE_CHECKING:
    from . import Explorer

MAX_SUMMARY_BYTES = 2_000_000  # an export's JSON is refused above this (a 576-patch summary is ≈ 60 kB)
KEEP = 32  # export folders kept; older ones are removed


def export(x: Explorer, session: Session, answers: dict | None = None) -> tuple[str, str]:
    """Write the JSON and the PNG; returns the two paths."""
    with heavy_slot(x, "The server is busy with other exports; please try again in a minute."):
        backend, enc = pipeline.cached(x, session)
        settings = session.settings or x.settings()
        explored, _ = screen.explore_encoded(x, backend, enc, session.prompt, settings, session)
        s = dict(explored.summary, controls=settings.to_controls())
        if answers:
            s["answers"] = answers
        blob_json = x.export_json(s)
        pics = explored.pictures
        blob_png = x.export_png([p for p in (pics.kept, pics.groups, pics.heatmap) if p is not None])
        name = export_name(settings)
        folder = x.export_root / hashlib.sha256(blob_json + blob_png).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.json").write_bytes(blob_json)
        (folder / f"{name}.png").write_bytes(blob_png)
        _prune(x.export_root)
        return str(folder / f"{name}.json"), str(folder / f"{name}.png")


def _prune(root, keep: int = KEEP) -> None:
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-keep]:
        for f in old.iterdir():
            f.unlink(missing_ok=True)
        old.rmdir()


def export_json(summary: dict) -> bytes:
    try:
        blob = json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:
        raise InputError("The result holds a value that is not a finite number, so it cannot be exported.") from None
    if len(blob) > MAX_SUMMARY_BYTES:
        raise InputError("The result is too large to export.")
    return blob


def export_png(images: list[np.ndarray]) -> bytes:
    """The pictures side by side in one PNG."""
    height = max(im.shape[0] for im in images)
    gap = 8
    width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for im in images:
        canvas[: im.shape[0], x : x + im.shape[1]] = im
        x += im.shape[1] + gap
    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def export_name(settings: Settings) -> str:
    """A file name saying what produced the export (`Settings.describe()`), e.g.
    `prumerge+_iqr_multiplier-1.5_merge-true_…`."""
    parts = [settings.method] + [f"{k}-{v}" for k, v in list(settings.describe().items())[1:]]
    return re.sub(r"[^A-Za-z0-9_.+-]", "", "_".join(parts))[:150] or "token-reduction"
