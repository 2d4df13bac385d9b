"""Pure pictures of a reduction on the image region the model saw (numpy in, uint8 H×W×3 out).

`view` is that region as RGB, H×W pixels; patch (r, c) of an h×w grid covers rows
[floor(r·H/h), floor((r+1)·H/h)) and columns [floor(c·W/w), floor((c+1)·W/w)). Every picture is built from a
per-patch array [h, w, …] expanded through a cached pixel → patch index map and blended once, so a redraw
costs a few milliseconds at 672 px. No matplotlib on this path: the heat colormap is a table built once.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

KEPT_OUTLINE = np.array([255, 214, 0], np.float32)  # kept patches: amber outline
SAMPLE_OUTLINE = np.array([0, 200, 255], np.float32)  # PruMerge+ samples: cyan outline
GRID_COLOUR = np.array([255, 255, 255], np.float32)


def _as_array(view) -> np.ndarray:
    arr = np.asarray(view)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _mask(values, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, bool)
    arr = np.asarray(values.cpu() if hasattr(values, "cpu") else values)
    if arr.dtype == bool and arr.size == n:
        return arr.reshape(n)
    out = np.zeros(n, bool)
    out[arr.astype(np.int64).reshape(-1)] = True
    return out


@lru_cache(maxsize=32)
def patch_grid_index(view_shape: tuple[int, int], grid: tuple[int, int]):
    """(rows [H] patch row of each pixel row, cols [W], row_edge [H] bool, col_edge [W] bool) for a view."""
    height, width = view_shape
    h, w = grid
    # pixel y lies in patch r iff floor(r·H/h) ≤ y < floor((r+1)·H/h), i.e. r = ceil((y+1)·h/H) − 1
    rows = ((np.arange(height) + 1) * h - 1) // height
    cols = ((np.arange(width) + 1) * w - 1) // width
    row_edge = np.r_[True, rows[1:] != rows[:-1]]
    col_edge = np.r_[True, cols[1:] != cols[:-1]]
    for arr in (rows, cols, row_edge, col_edge):
        arr.setflags(write=False)
    return rows, cols, row_edge, col_edge


def _expand(per_patch: np.ndarray, view_shape, grid) -> np.ndarray:
    """[h, w, …] → [H, W, …] by the pixel → patch index map."""
    rows, cols, _, _ = patch_grid_index(tuple(view_shape[:2]), tuple(grid))
    return per_patch[rows[:, None], cols[None, :]]


def _borders(labels: np.ndarray, view_shape, grid) -> np.ndarray:
    """[H, W] bool: pixels on the first row/column of a patch whose label differs from the previous patch."""
    h, w = grid
    lab = labels.reshape(h, w)
    top = np.zeros((h, w), bool)
    left = np.zeros((h, w), bool)
    top[1:] = lab[1:] != lab[:-1]
    left[:, 1:] = lab[:, 1:] != lab[:, :-1]
    rows, cols, row_edge, col_edge = patch_grid_index(tuple(view_shape[:2]), tuple(grid))
    return (top[rows[:, None], cols[None, :]] & row_edge[:, None]) | (left[rows[:, None], cols[None, :]] & col_edge[None, :])


def _outline(mask: np.ndarray, view_shape, grid, thickness: int = 2) -> np.ndarray:
    """[H, W] bool: a `thickness`-pixel frame inside every patch where mask [N] is True."""
    rows, cols, _, _ = patch_grid_index(tuple(view_shape[:2]), tuple(grid))
    height, width = view_shape[:2]
    h, w = grid
    # distance of each pixel row/col to its patch's nearest edge
    r_start = (np.arange(h) * height) // h
    r_end = ((np.arange(h) + 1) * height) // h
    c_start = (np.arange(w) * width) // w
    c_end = ((np.arange(w) + 1) * width) // w
    y, x = np.arange(height), np.arange(width)
    near_r = np.minimum(y - r_start[rows], r_end[rows] - 1 - y) < thickness
    near_c = np.minimum(x - c_start[cols], c_end[cols] - 1 - x) < thickness
    inside = _expand(mask.reshape(h, w), view_shape, grid)
    return inside & (near_r[:, None] | near_c[None, :])


def _grid_lines(view_shape, grid) -> np.ndarray:
    _, _, row_edge, col_edge = patch_grid_index(tuple(view_shape[:2]), tuple(grid))
    return row_edge[:, None] | col_edge[None, :]


def _paint(img: np.ndarray, where: np.ndarray, colour, alpha: float = 1.0) -> None:
    img[where] = (1 - alpha) * img[where] + alpha * np.asarray(colour, np.float32)


def kept_overlay(view, kept, grid, samples=None) -> np.ndarray:
    """Kept patches bright with an amber outline, dropped ones dimmed and desaturated, a faint grid.

    kept: [N] bool mask or kept indices; samples: PruMerge+ sample indices, outlined in cyan.
    """
    img = _as_array(view).astype(np.float32)
    h, w = grid
    n = h * w
    keep = _mask(kept, n)
    grey = img.mean(axis=2, keepdims=True)
    dim = 0.3 * (0.35 * img + 0.65 * grey)
    keep_px = _expand(keep.reshape(h, w), img.shape, grid)
    out = np.where(keep_px[..., None], img, dim)
    _paint(out, _grid_lines(img.shape, grid), GRID_COLOUR, 0.12)
    _paint(out, _outline(keep, img.shape, grid), KEPT_OUTLINE)
    if samples is not None and len(samples):
        _paint(out, _outline(_mask(samples, n), img.shape, grid), SAMPLE_OUTLINE)
    return out.clip(0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def palette(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3] float32 distinct, saturated, deterministic colours (golden-ratio hues, seeded shuffle)."""
    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    rng = np.random.default_rng(seed)
    sat = 0.65 + 0.3 * rng.random(n)
    val = 0.85 + 0.15 * rng.random(n)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = np.stack([
        np.choose(i, [val, q, p, p, t, val]),
        np.choose(i, [t, val, val, q, p, p]),
        np.choose(i, [p, p, t, val, val, q]),
    ], axis=1)
    out = (255 * table).astype(np.float32)
    out.setflags(write=False)
    return out


def cluster_colours(labels: np.ndarray) -> np.ndarray:
    """[N, 3] colour per patch: clusters of ≥ 2 patches get palette colours (largest first), singletons grey.

    Colours follow cluster size rank, so the biggest cluster is always the first palette colour.
    """
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")  # label ids by descending size
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    colours = palette(max(1, int((counts >= 2).sum())))
    per_label = np.full((counts.size, 3), 150.0, np.float32)  # singletons: grey
    multi = counts >= 2
    per_label[multi] = colours[rank[multi]]
    return per_label[labels]


def cluster_overlay(view, labels, grid, kept_mask=None, alpha: float = 0.55) -> np.ndarray:
    """One colour per connected component blended on the image, borders between clusters, kept outlined."""
    img = _as_array(view).astype(np.float32)
    h, w = grid
    labels = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
    colour = _expand(cluster_colours(labels).reshape(h, w, 3), img.shape, grid)
    out = (1 - alpha) * img + alpha * colour
    _paint(out, _borders(labels, img.shape, grid), (20, 20, 20), 0.8)
    if kept_mask is not None:
        _paint(out, _outline(_mask(kept_mask, h * w), img.shape, grid), (255, 255, 255))
    return out.clip(0, 255).astype(np.uint8)


def merge_overlay(view, kept, merge_index, grid, alpha: float = 0.6) -> np.ndarray:
    """Each kept token's merge group in its own colour; a patch merged into several groups takes the
    colour of the first kept token (highest CLS attention) that merged it; kept patches outlined."""
    img = _as_array(view).astype(np.float32)
    h, w = grid
    n = h * w
    kept = np.asarray(kept.cpu() if hasattr(kept, "cpu") else kept).astype(np.int64).reshape(-1)
    nbr = np.asarray(merge_index.cpu() if hasattr(merge_index, "cpu") else merge_index).astype(np.int64)
    group = np.full(n, -1, np.int64)
    flat = nbr[::-1].reshape(-1)  # later groups first, so earlier ones overwrite
    owner = np.repeat(np.arange(nbr.shape[0])[::-1], nbr.shape[1])
    group[flat] = owner
    group[kept] = np.arange(kept.size)
    colours = palette(max(1, kept.size))
    per_patch = np.where(group[:, None] >= 0, colours[np.maximum(group, 0)], 0.0)
    a = np.where(group >= 0, alpha, 0.0)[:, None]
    blend_colour = _expand(per_patch.reshape(h, w, 3), img.shape, grid)
    blend_alpha = _expand(a.reshape(h, w, 1), img.shape, grid)
    dim = np.where(blend_alpha > 0, img, 0.35 * img)
    out = (1 - blend_alpha) * dim + blend_alpha * blend_colour
    _paint(out, _outline(_mask(kept, n), img.shape, grid), (255, 255, 255))
    return out.clip(0, 255).astype(np.uint8)


def _viridis_lut() -> np.ndarray:
    # Viridis anchor points (from matplotlib's table), interpolated to 256 entries once at import.
    anchors = np.array([
        [68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
        [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37],
    ], np.float32)
    x = np.linspace(0, 1, len(anchors))
    t = np.linspace(0, 1, 256)
    lut = np.stack([np.interp(t, x, anchors[:, c]) for c in range(3)], axis=1).astype(np.float32)
    lut.setflags(write=False)
    return lut


VIRIDIS = _viridis_lut()


def heatmap_overlay(view, values, grid, kept_mask=None, alpha: float = 0.6) -> np.ndarray:
    """values [N] in [0, 1] (e.g. PAR relevance) as a viridis heatmap on the image; kept patches outlined."""
    img = _as_array(view).astype(np.float32)
    h, w = grid
    v = np.asarray(values.cpu() if hasattr(values, "cpu") else values, np.float64).reshape(-1)
    v = np.nan_to_num(v.clip(0, 1))
    colour = VIRIDIS[(v * 255).round().astype(np.int64)].reshape(h, w, 3)
    out = (1 - alpha) * img + alpha * _expand(colour, img.shape, grid)
    if kept_mask is not None:
        _paint(out, _outline(_mask(kept_mask, h * w), img.shape, grid), (255, 255, 255))
    return out.clip(0, 255).astype(np.uint8)
