"""Pure pictures of a reduction on the image region the model saw (numpy in, uint8 H×W×3 out).

`view` is that region as RGB, H×W pixels; patch (r, c) of an h×w grid covers rows
[floor(r·H/h), floor((r+1)·H/h)) and columns [floor(c·W/w), floor((c+1)·W/w)). Every picture is built from a
per-patch array [h, w, …] expanded to pixels and blended once. A `Canvas` holds what every redraw of one view
re-uses (index maps, the dimmed copy, the gridded copy, the patch frames), so a slider move costs a few ms at
672 px. No matplotlib here: the heat colormap is a
table built once at import.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

KEPT_OUTLINE = np.array([255, 214, 0], np.float32)  # kept patches: amber outline
SAMPLE_OUTLINE = np.array([0, 200, 255], np.float32)  # PruMerge+ samples: cyan outline
POINT_OUTLINE = np.array([255, 0, 255], np.float32)  # patches PAR's query points at: magenta outline
ONLY_A = np.array([230, 60, 60], np.float32)  # pinned run only: red
ONLY_B = np.array([40, 120, 255], np.float32)  # current run only: blue
GRID_COLOUR = np.array([255, 255, 255], np.float32)
WHITE = np.array([255, 255, 255], np.float32)
BORDER = np.array([20, 20, 20], np.float32)
SINGLETON_GREY = 150.0
FRAME_PX = 2  # outline thickness inside a patch
GRID_ALPHA = 0.12


def _as_array(view) -> np.ndarray:
    arr = np.asarray(view)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def _numpy(values, dtype=None) -> np.ndarray:
    """A tensor (any dtype, any device) or array-like as a numpy array."""
    if hasattr(values, "detach"):  # a torch tensor; half precisions (bfloat16 has no numpy dtype) → float32
        values = values.detach().cpu()
        if values.dtype.is_floating_point and values.dtype.itemsize < 4:
            values = values.float()
        values = values.numpy()
    return np.asarray(values, dtype=dtype)


def _mask(values, n: int) -> np.ndarray:
    """[N] bool from a bool mask or from indices."""
    if values is None:
        return np.zeros(n, bool)
    arr = _numpy(values)
    if arr.dtype == bool and arr.size == n:
        return arr.reshape(n)
    out = np.zeros(n, bool)
    out[arr.astype(np.int64).reshape(-1)] = True
    return out


def _indices(values, n: int) -> np.ndarray:
    """Indices from indices or from a bool mask."""
    arr = _numpy(values)
    if arr.dtype == bool and arr.size == n:
        return np.flatnonzero(arr.reshape(n))
    return arr.astype(np.int64).reshape(-1)


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


def _frame(view_shape: tuple[int, int], grid: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
           thickness: int = FRAME_PX) -> np.ndarray:
    """[H, W] bool: pixels within `thickness` of their own patch's edge (`rows`, `cols` from `patch_grid_index`)."""
    height, width = view_shape
    h, w = grid
    r_start, r_end = (np.arange(h) * height) // h, ((np.arange(h) + 1) * height) // h
    c_start, c_end = (np.arange(w) * width) // w, ((np.arange(w) + 1) * width) // w
    y, x = np.arange(height), np.arange(width)
    near_r = np.minimum(y - r_start[rows], r_end[rows] - 1 - y) < thickness
    near_c = np.minimum(x - c_start[cols], c_end[cols] - 1 - x) < thickness
    frame = near_r[:, None] | near_c[None, :]
    frame.setflags(write=False)
    return frame


class Canvas:
    """One view on one grid, with the parts every redraw re-uses computed once.

    When the patches tile the view evenly (the usual case: 672 px / 24 patches = 28 px each), pictures are
    computed on a [h, ph, w, pw, 3] view of the image with per-patch arrays broadcast as [h, 1, w, 1, …], so
    no per-pixel copy of a per-patch array is ever made, and outlines are written only at the frame pixels of
    the patches concerned. Otherwise per-patch arrays are expanded to pixels through the index maps.
    """

    def __init__(self, view, grid: tuple[int, int]):
        self.img = _as_array(view)
        self.shape = self.img.shape[:2]
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        height, width = self.shape
        h, w = self.grid
        # computed once per Canvas; the service keeps Canvases in its bounded cache
        self._index = patch_grid_index(self.shape, self.grid)
        rows, cols, row_edge, col_edge = self._index
        self.frame = _frame(self.shape, self.grid, rows, cols)
        self.lines = row_edge[:, None] | col_edge[None, :]
        self._cell = None  # (ph, pw) when every patch has the same size
        if height % h == 0 and width % w == 0:
            self._cell = (height // h, width // w)
            cell_frame = self.frame[: self._cell[0], : self._cell[1]]
            self._frame_px = np.nonzero(cell_frame)  # frame pixels inside one cell: (rows [P], cols [P])
            self._row_edge_px = np.flatnonzero(row_edge[: self._cell[0]])  # first pixel row(s) of a cell
            self._col_edge_px = np.flatnonzero(col_edge[: self._cell[1]])
        f = self.img.astype(np.float32)
        self._torch_float = torch.from_numpy(self._cells(f))  # the image for `mix`, as float32 cells
        grey = f.mean(axis=2, keepdims=True)
        self.dim = self._gridded(0.3 * (0.35 * f + 0.65 * grey))  # what a dropped patch looks like
        self.bright_framed = self._gridded(f)  # what a kept patch looks like: bright with its amber outline
        self.bright_framed[self.frame] = KEPT_OUTLINE.astype(np.uint8)

    @cached_property
    def small(self) -> "Canvas":
        """The same view at half the size (box-filtered), for small pictures such as the comparison gallery:
        a quarter of the pixels to draw, encode and send. Built once per view."""
        from PIL import Image

        height, width = self.shape
        size = (max(self.grid[1], width // 2), max(self.grid[0], height // 2))
        return Canvas(Image.fromarray(self.img).resize(size, Image.BOX), self.grid)

    def _gridded(self, f: np.ndarray) -> np.ndarray:
        out = f.copy()
        out[self.lines] = (1 - GRID_ALPHA) * out[self.lines] + GRID_ALPHA * GRID_COLOUR
        return out.clip(0, 255).astype(np.uint8)

    # --- per-patch arrays against pixels ---------------------------------------------------------
    def expand(self, per_patch: np.ndarray) -> np.ndarray:
        """[h, w, …] → [H, W, …]: each patch's value on its pixels."""
        h, w = self.grid
        if self._cell is not None:
            ph, pw = self._cell
            tail = per_patch.shape[2:]
            big = np.broadcast_to(per_patch.reshape(h, 1, w, 1, *tail), (h, ph, w, pw, *tail))
            return big.reshape(self.shape[0], self.shape[1], *tail)
        rows, cols, _, _ = self._index
        return per_patch[rows[:, None], cols[None, :]]

    def _patches(self, per_patch: np.ndarray) -> np.ndarray:
        """[N, …] → something that broadcasts against `_cells(image)`: [h, 1, w, 1, …] or [H, W, …]."""
        h, w = self.grid
        tail = per_patch.shape[1:]
        if self._cell is not None:
            return per_patch.reshape(h, 1, w, 1, *tail)
        return self.expand(per_patch.reshape(h, w, *tail))

    def _cells(self, img: np.ndarray) -> np.ndarray:
        """[H, W, …] → a [h, ph, w, pw, …] view when the patches tile evenly, else unchanged."""
        if self._cell is None:
            return img
        (h, w), (ph, pw) = self.grid, self._cell
        return img.reshape(h, ph, w, pw, *img.shape[2:])

    def _pixels(self, x: np.ndarray) -> np.ndarray:
        return x.reshape(self.shape[0], self.shape[1], *x.shape[(4 if self._cell is not None else 2):])

    def outline(self, mask) -> np.ndarray:
        """[H, W] bool: the frame of every patch in `mask` ([N] bool or indices)."""
        return self.expand(_mask(mask, self.n).reshape(self.grid)) & self.frame

    def paint_outline(self, out: np.ndarray, mask, colour: np.ndarray) -> None:
        """Colour the frame of every patch in `mask` ([N] bool or indices) of `out` [H, W, 3] in place."""
        if self._cell is None:
            out[self.outline(mask)] = colour.astype(np.uint8)
            return
        idx = _indices(mask, self.n)
        r, c = np.divmod(idx, self.grid[1])  # [M] patch row and column
        pr, pc = self._frame_px  # [P] frame pixels inside a cell
        self._cells(out)[r[:, None], pr[None, :], c[:, None], pc[None, :]] = colour.astype(out.dtype)

    def mix(self, scale: np.ndarray, over: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] = image · scale + over, per patch (scale [N, 1] or [N, 3], over [N, 3]).

        One fused multiply-add and cast over the pixels (torch.addcmul on both cores: ≈ 1 ms at 672², where
        the same numpy expression with its temporaries costs ≈ 3 ms). The caller keeps the result in [0, 255]
        (a convex mix of the image and colours), so the cast needs no clip."""
        scale = torch.from_numpy(np.ascontiguousarray(self._patches(np.asarray(scale, np.float32))))
        over = torch.from_numpy(np.ascontiguousarray(self._patches(np.asarray(over, np.float32))))
        out = torch.addcmul(over, self._torch_float, scale).to(torch.uint8)
        return self._pixels(out.numpy())

    def blend(self, colour: np.ndarray, alpha) -> np.ndarray:
        """(1 − α)·image + α·colour, per patch colour [N, 3] and α scalar or [N]; uint8 [H, W, 3]."""
        a = np.broadcast_to(np.asarray(alpha, np.float32).reshape(-1, 1), (self.n, 1))
        return self.mix(1 - a, a * np.asarray(colour, np.float32))

    # --- the pictures ---------------------------------------------------------------------------
    def kept(self, kept, samples=None, points=None) -> np.ndarray:
        """Kept patches bright with an amber outline, dropped ones dimmed and desaturated, a faint grid;
        PruMerge+'s samples outlined cyan, the patches PAR's query points at outlined magenta."""
        keep = _mask(kept, self.n)
        out = self._pixels(np.where(self._patches(keep)[..., None], self._cells(self.bright_framed), self._cells(self.dim)))
        if samples is not None and len(samples):
            self.paint_outline(out, samples, SAMPLE_OUTLINE)
        if points is not None and len(points):
            self.paint_outline(out, points, POINT_OUTLINE)
        return out

    def groups(self, groups, kept=None, alpha: float = 0.6) -> np.ndarray:
        """Merge groups that partition the patches (ToMe, VisionZip's contexts, pooling): one colour per token
        (largest group first), borders between groups, patches in no group (−1) dimmed, `kept` outlined white."""
        groups = _numpy(groups).astype(np.int64).reshape(-1)
        member = groups >= 0
        colours = np.zeros((self.n, 3), np.float32)
        if member.any():
            colours[member] = cluster_colours(groups[member])
        out = self._tint(member, colours, alpha)
        _paint_borders(self, out, np.where(member, groups, -1))
        return self._finish(out, kept)

    def diff(self, kept_a, kept_b) -> np.ndarray:
        """Two kept sets on one picture: kept in both bright, only in A tinted red, only in B tinted blue (each
        outlined in its colour), in neither dimmed."""
        a, b = _mask(kept_a, self.n), _mask(kept_b, self.n)
        only_a, only_b = a & ~b, b & ~a
        scale = np.where(a & b, 1.0, np.where(only_a | only_b, 0.5, 0.3)).astype(np.float32)[:, None]
        over = np.zeros((self.n, 3), np.float32)
        over[only_a], over[only_b] = 0.5 * ONLY_A, 0.5 * ONLY_B
        out = self.mix(scale, over)
        self.paint_outline(out, only_a, ONLY_A)
        self.paint_outline(out, only_b, ONLY_B)
        return out

    def clusters(self, labels, kept_mask=None, alpha: float = 0.55) -> np.ndarray:
        """One colour per connected component blended on the image, borders between clusters, kept outlined."""
        labels = _numpy(labels).astype(np.int64).reshape(-1)
        out = self.blend(cluster_colours(labels), alpha)
        _paint_borders(self, out, labels)
        return self._finish(out, kept_mask)

    def merge_groups(self, kept, merge_index, alpha: float = 0.6) -> np.ndarray:
        """Each kept token's merge group in its own colour (a patch in several groups takes the colour of the
        first kept token, i.e. the most attended one, that merged it); patches in no group dimmed."""
        kept = _indices(kept, self.n)
        nbr = _numpy(merge_index).astype(np.int64).reshape(kept.size, -1)
        group = np.full(self.n, np.iinfo(np.int64).max, np.int64)
        np.minimum.at(group, nbr.reshape(-1), np.repeat(np.arange(kept.size), nbr.shape[1]))
        group[kept] = np.arange(kept.size)
        return self.token_groups(np.where(group < kept.size, group, -1), kept, alpha)

    def token_groups(self, groups, kept, alpha: float = 0.6) -> np.ndarray:
        """Groups numbered by kept token (`groups[i]` = j: patch i is in kept[j]'s group; −1: in none), each in
        the j-th palette colour, patches in no group dimmed, `kept` outlined white."""
        kept = _indices(kept, self.n)
        group = _numpy(groups).astype(np.int64).reshape(-1)
        member = group >= 0
        colours = palette(max(1, kept.size))
        per_patch = np.zeros((self.n, 3), np.float32)
        per_patch[member] = colours[group[member]]
        return self._finish(self._tint(member, per_patch, alpha), kept)

    def _tint(self, member: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
        """The image with `colours` [N, 3] blended at `alpha` over the patches in `member` [N] bool and the
        patches in no group dimmed."""
        a = np.where(member, alpha, 0.0).astype(np.float32)[:, None]  # [N, 1]
        scale = np.where(member, 1.0, 0.35).astype(np.float32)[:, None] * (1 - a)  # dim the patches in no group
        return self.mix(scale, a * colours)

    def heatmap(self, values, kept_mask=None, alpha: float = 0.6) -> np.ndarray:
        """values [N] in [0, 1] (e.g. PAR relevance) as a viridis heatmap on the image; kept patches outlined."""
        v = np.nan_to_num(_numpy(values, np.float64).reshape(-1), nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
        return self._finish(self.blend(VIRIDIS[(v * 255).round().astype(np.int64)], alpha), kept_mask)

    def _finish(self, out: np.ndarray, kept_mask) -> np.ndarray:
        if kept_mask is not None:
            self.paint_outline(out, kept_mask, WHITE)
        return out


# The first group colours: cool, saturated and far from skin, wood, sand and sky tones, so the largest clusters
# stay visible on warm photos; warmer hues only after them.
FIRST_COLOURS = np.array([
    [0, 114, 255], [255, 0, 200], [0, 230, 255], [120, 255, 0], [150, 60, 255],
    [0, 255, 160], [255, 40, 60], [0, 60, 160], [255, 240, 0], [40, 160, 40],
], np.float32)


def _borders(canvas: Canvas, labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: first pixel row/column of a patch whose label differs from the patch above/left."""
    h, w = canvas.grid
    lab = labels.reshape(h, w)
    top = np.zeros((h, w), bool)
    left = np.zeros((h, w), bool)
    top[1:] = lab[1:] != lab[:-1]
    left[:, 1:] = lab[:, 1:] != lab[:, :-1]
    _, _, row_edge, col_edge = canvas._index
    return (canvas.expand(top) & row_edge[:, None]) | (canvas.expand(left) & col_edge[None, :])

def _paint_borders(canvas: Canvas, out: np.ndarray, labels: np.ndarray) -> None:
    """Darken the borders between differently-labelled patches of `out` [H, W, 3] uint8, in place."""
    if canvas._cell is None:
        edge = _borders(canvas, labels)
        out[edge] = 0.2 * out[edge] + 0.8 * BORDER
        return
    h, w = canvas.grid
    lab = labels.reshape(h, w)
    cells = canvas._cells(out)  # [h, ph, w, pw, 3]
    r, c = np.nonzero(lab[1:] != lab[:-1])  # the first pixel row(s) of the lower patch r + 1
    index = (r[:, None] + 1, canvas._row_edge_px[None, :], c[:, None])  # → [E, k, pw, 3]
    cells[index] = 0.2 * cells[index] + 0.8 * BORDER
    r, c = np.nonzero(lab[:, 1:] != lab[:, :-1])  # the first pixel column(s) of the right patch c + 1
    index = (r[:, None], slice(None), c[:, None] + 1, canvas._col_edge_px[None, :])  # → [E, k, ph, 3]
    cells[index] = 0.2 * cells[index] + 0.8 * BORDER


def palette(n: int, seed: int = 0) -> np.ndarray:
    """[n, 3] float32 distinct, saturated, deterministic colours: `FIRST_COLOURS`, then golden-ratio hues."""
    first = FIRST_COLOURS[: min(n, len(FIRST_COLOURS))]
    rest = _golden_colours(max(0, n - len(first)), seed)
    out = np.concatenate([first, rest]).astype(np.float32)
    out.setflags(write=False)
    return out


def _golden_colours(n: int, seed: int) -> np.ndarray:
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
    return (255 * table).astype(np.float32).reshape(n, 3)


def cluster_colours(labels: np.ndarray) -> np.ndarray:
    """[N, 3] colour per patch: clusters of ≥ 2 patches get palette colours (largest first), singletons grey.

    Colours follow cluster size rank, so the biggest cluster is always the first palette colour. Labels may be
    any integers (they are renumbered first).
    """
    labels = _numpy(labels).astype(np.int64).reshape(-1)
    _, labels = np.unique(labels, return_inverse=True)
    counts = np.bincount(labels)
    order = np.argsort(-counts, kind="stable")  # label ids by descending size
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    colours = palette(max(1, int((counts >= 2).sum())))
    per_label = np.full((counts.size, 3), SINGLETON_GREY, np.float32)
    multi = counts >= 2
    per_label[multi] = colours[rank[multi]]
    return per_label[labels]


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


# --------------------------------------------------------------------------------------------------
# Pictures beside the patch pictures: the crop on the user's image, a colour bar
# --------------------------------------------------------------------------------------------------
CROP_OUTLINE = (255, 214, 0)


def crop_picture(image, box: tuple[float, float, float, float], max_side: int = 320,
                 image_size: tuple[int, int] | None = None) -> np.ndarray:
    """The user's whole image, small, with the region the model sees outlined and everything outside it dimmed
    (a wide photo loses its sides to a centre crop; a padded one gains bars). `box` is in the pixels of the
    user's image, whose (W, H) is `image_size` (default: `image` is that image, not a thumbnail of it)."""
    from PIL import Image, ImageDraw

    im = image.convert("RGB")
    scale = max_side / max(im.size)
    small = im.resize((max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale))), Image.BILINEAR)
    box_scale = small.size[0] / (image_size or im.size)[0]  # user's image pixels → pixels of `small`
    x0, y0, x1, y1 = (v * box_scale for v in box)
    arr = np.asarray(small).astype(np.float32)
    yy, xx = np.mgrid[: arr.shape[0], : arr.shape[1]]
    outside = (xx < x0) | (xx >= x1) | (yy < y0) | (yy >= y1)
    arr[outside] *= 0.3
    out = Image.fromarray(arr.astype(np.uint8))
    left, top = max(0, x0), max(0, y0)  # the outline, at least one pixel wide and high (a 6000×2 strip)
    right, bottom = max(left, min(out.size[0], x1) - 1), max(top, min(out.size[1], y1) - 1)
    ImageDraw.Draw(out).rectangle([left, top, right, bottom], outline=CROP_OUTLINE, width=3)
    return np.asarray(out)


def crop_caption(image_size: tuple[int, int], box: tuple[float, float, float, float]) -> str:
    """One sentence on which part of a W×H image the model sees."""
    w, h = image_size
    x0, y0, x1, y1 = box
    seen = f"{round(x1 - x0)}×{round(y1 - y0)}"
    if x0 < -0.5 or y0 < -0.5:
        return f"The model sees the whole {w}×{h} image, padded to a {seen} square."
    if x0 > 0.5:
        return f"The model sees the centre {seen} of this {w}×{h} image: {round(x0)} px on the left and right are cut off."
    if y0 > 0.5:
        return f"The model sees the centre {seen} of this {w}×{h} image: {round(y0)} px at the top and bottom are cut off."
    return f"The model sees the whole {w}×{h} image."


def with_colour_bar(picture: np.ndarray, low: str, high: str, width: int = 18, pad: int = 6) -> np.ndarray:
    """`picture` with a vertical viridis bar on its right, labelled `high` at the top and `low` at the bottom."""
    from PIL import Image, ImageDraw, ImageFont

    height = picture.shape[0]
    size = max(11, height // 28)
    label_w = int(3.4 * size)
    bar = np.repeat(VIRIDIS[np.linspace(255, 0, height).round().astype(np.int64)][:, None, :], width, axis=1)
    strip = np.full((height, pad + width + label_w, 3), 255, np.uint8)
    strip[:, pad:pad + width] = bar.astype(np.uint8)
    im = Image.fromarray(strip)
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=size)
    draw.text((pad + width + 3, 2), high, fill=(20, 20, 20), font=font)
    draw.text((pad + width + 3, height - 4), low, fill=(20, 20, 20), font=font, anchor="ld")
    return np.concatenate([picture, np.asarray(im)], axis=1)
