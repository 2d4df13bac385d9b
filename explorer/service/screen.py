"""One result as the screen shows it: the pictures, figures, readout, summary and stamp of the settings'
reduction of the session's image — the work of an explore and of every slider move."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reducers import Reduction, VisualTokens

from .. import __version__
from ..backend.protocol import Backend, Encoded
from ..errors import InputError
from ..pictures import draw
from ..session import Session
from ..settings import Settings
from . import pipeline, view
from .pipeline import QueryInfo

if TYPE_CHECKING:
    from . import Explorer


@dataclass(frozen=True)
class Explored:
    """One explore: the reduction, what it was computed from, and everything drawn for it."""

    settings: Settings
    prompt: str
    query: QueryInfo | None
    tokens: VisualTokens
    reduction: Reduction
    pictures: view.Pictures
    histogram: object
    funnel: object
    summary: dict
    readout: str
    stamp: dict
    crop: np.ndarray
    crop_caption: str


def explore_encoded(x: Explorer, backend: Backend, enc: Encoded, prompt, settings: Settings, session: Session,
                    with_per_patch: bool = True) -> tuple[Explored, Session]:
    """Reduce and draw; `with_per_patch=False` (a slider move, which does not send the summary) leaves the
    per-patch data out of the summary."""
    prompt = pipeline.clip_prompt(x, prompt)
    red, vt, q = pipeline.reduce(x, backend, enc, prompt, settings)
    query_patches = np.asarray(q.patches, np.int64) if q is not None and q.patches else None
    pics = view.pictures(canvas(x, backend, enc), vt, red, settings.inputs.attention, settings.entry.label,
                         query_patches)
    hist, funnel = view.figures(vt, red, settings)
    flops = view.flops_summary(backend.lm_config, backend.n_text_tokens(prompt), red)
    extra = {
        "app_version": __version__,
        "model": backend.name,
        "notice": backend.notice,
        "image": {"name": session.image_name, "key": enc.key, "crop_box": list(enc.crop_box),
                  "grid": list(red.grid), "size": list(enc.image_size)},
        "prompt": prompt,
    }
    if q is not None:
        extra["query"] = q.as_dict()
    s = view.summary(red, vt, settings, flops, extra, with_per_patch)
    st = stamp(backend, enc, prompt, settings, red)
    light = {k: v for k, v in s.items() if k != "per_patch"}
    session = session.explored(settings, prompt, st, enc.view.size, enc.crop_box, red.n_tokens, light, red.n_kept)
    out = Explored(settings, prompt, q, vt, red, pics, hist, funnel, s, view.readout_markdown(s, red), st,
                   crop(x, backend, enc), draw.crop_caption(enc.image_size, enc.crop_box))
    return out, session


def canvas(x: Explorer, backend: Backend, enc: Encoded) -> draw.Canvas:
    """The encode's view prepared for redraws (dimmed copy, grid, frames), built once per image."""
    return x._canvases.get_or_compute((backend.name, enc.key), lambda: draw.Canvas(enc.view_array, enc.tokens.grid))


def crop(x: Explorer, backend: Backend, enc: Encoded) -> np.ndarray:
    """The user's image, small, with the region the model sees outlined (built once per image)."""
    return x._canvases.get_or_compute((backend.name, enc.key, "crop"), lambda: draw.crop_picture(
        enc.thumbnail, enc.crop_box, image_size=enc.image_size))


def stamp(backend: Backend, enc: Encoded, prompt: str, settings: Settings, red: Reduction) -> dict:
    """What produced a result: answers and exports carry it, and the UI compares it with the screen's."""
    return {"model": backend.name, "image": enc.key, "prompt": prompt, **settings.as_dict(),
            "described": settings.describe(), "n_kept": red.n_kept}


def inspect(x: Explorer, session: Session, px: float, py: float, view_size: tuple[int, int] | None = None) -> dict:
    """Everything about the patch under pixel (px, py) of the displayed view (or of the user's image when
    `view_size` is None), for the session's last explore."""
    _, enc, _, red, vt = pipeline.last(x, session)
    h, w = enc.grid
    if view_size is not None:
        vw, vh = view_size
        if not (0 <= px < vw and 0 <= py < vh):
            raise InputError("Click inside the picture.")
        index = min(h - 1, int(py * h / vh)) * w + min(w - 1, int(px * w / vw))
    else:
        index = enc.patch_at(px, py)
        if index is None:
            raise InputError("That point lies outside the region the model sees.")
    return view.inspect_patch(vt, red, index)


def view_to_image(session: Session, px: float, py: float) -> list[float]:
    """A click at (px, py) on the displayed view → [x, y] in the user's image pixels (through the crop box)."""
    if not session.view_size:
        raise InputError("Explore an image first, then click on it.")
    vw, vh = session.view_size
    x0, y0, x1, y1 = session.crop_box
    if not (0 <= px < vw and 0 <= py < vh):
        raise InputError("Click inside the picture of the patches.")
    return [x0 + (px + 0.5) * (x1 - x0) / vw, y0 + (py + 0.5) * (y1 - y0) / vh]
