"""Pictures of a reduction whose tokens lie on several grids (LLaVA-NeXT: the base image, then the tile grid).

Each part is an ordinary h×w grid over its own view, so each is drawn by a `draw.Canvas` of its own; a part owns
the patch indices [start, start + h·w) of the token sequence. Pure: arrays in, arrays out.
"""

from __future__ import annotations

import numpy as np

from .draw import Canvas


def part_canvases(views, parts) -> list[tuple[str, Canvas, int]]:
    """(name, Canvas, first index) per part; `views` [PIL or array] and `parts` [(name, (h, w), first)] align."""
    return [(name, Canvas(view, grid), start) for view, (name, grid, start) in zip(views, parts)]


def kept_parts(canvases, kept) -> list[tuple[str, np.ndarray]]:
    """(name, picture) per part: its kept patches bright and outlined, the others dimmed (`Canvas.kept`)."""
    kept = np.asarray(kept, dtype=np.int64).reshape(-1)
    out = []
    for name, canvas, start in canvases:
        local = kept[(kept >= start) & (kept < start + canvas.n)] - start
        out.append((name, canvas.kept(local)))
    return out


def heat_parts(canvases, values) -> list[tuple[str, np.ndarray]]:
    """(name, picture) per part: a per-token score in [0, 1] ([N], all parts together) as a heatmap."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    return [(name, canvas.heatmap(values[start:start + canvas.n])) for name, canvas, start in canvases]
