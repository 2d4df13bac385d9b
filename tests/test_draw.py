"""explorer/draw.py against slow per-patch reference loops.

The reference geometry is the documented one: patch (r, c) of an h×w grid on an H×W view covers pixel rows
[floor(r·H/h), floor((r+1)·H/h)) and columns [floor(c·W/w), floor((c+1)·W/w)). Every picture is checked
patch by patch through that box, never through draw.py's own index map.
"""

from __future__ import annotations

from fractions import Fraction
import math

import numpy as np
import pytest
import torch

from explorer.pictures import draw

# One picture on a throwaway Canvas (the app keeps one Canvas per image and redraws on it).
def kept_overlay(view, kept, grid, samples=None):
    return draw.Canvas(view, grid).kept(kept, samples)


def cluster_overlay(view, labels, grid, kept_mask=None, alpha=0.55):
    return draw.Canvas(view, grid).clusters(labels, kept_mask, alpha)


def merge_overlay(view, kept, merge_index, grid, alpha=0.6):
    return draw.Canvas(view, grid).merge_groups(kept, merge_index, alpha)


def heatmap_overlay(view, values, grid, kept_mask=None, alpha=0.6):
    return draw.Canvas(view, grid).heatmap(values, kept_mask, alpha)


AMBER = (255, 214, 0)
CYAN = (0, 200, 255)
WHITE = (255, 255, 255)
GREY = 150.0
THICK = 2  # outline thickness drawn by draw._outline

# (view H, W), (grid h, w): divisible, non-divisible both ways, the app's 672 px view, a view smaller than its grid
GEOMETRIES = [
    ((100, 70), (24, 24)),
    ((100, 70), (3, 5)),
    ((96, 72), (24, 24)),
    ((448, 672), (24, 24)),
    ((61, 53), (7, 4)),
]


def boxes(view_hw, grid):
    """Slow reference: {(r, c): (r0, r1, c0, c1)} with exact rational floors."""
    H, W = view_hw
    h, w = grid
    out = {}
    for r in range(h):
        r0, r1 = math.floor(Fraction(r * H, h)), math.floor(Fraction((r + 1) * H, h))
        for c in range(w):
            c0, c1 = math.floor(Fraction(c * W, w)), math.floor(Fraction((c + 1) * W, w))
            out[r, c] = (r0, r1, c0, c1)
    return out


def frame(box, thickness=THICK):
    """[r1-r0, c1-c0] bool: pixels within `thickness` of the box's edge."""
    r0, r1, c0, c1 = box
    yy, xx = np.mgrid[r0:r1, c0:c1]
    return (np.minimum(yy - r0, r1 - 1 - yy) < thickness) | (np.minimum(xx - c0, c1 - 1 - xx) < thickness)


def random_view(view_hw, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 216, size=(*view_hw, 3), dtype=np.uint8)


def random_keep(grid, seed=1, frac=0.3):
    rng = np.random.default_rng(seed)
    return rng.random(grid[0] * grid[1]) < frac


def check_image(out, view):
    assert isinstance(out, np.ndarray)
    assert out.dtype == np.uint8
    assert out.shape == (*np.asarray(view).shape[:2], 3)


def brightness(img):
    return np.asarray(img, np.float64).mean(axis=-1)


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("view_hw,grid", GEOMETRIES)
def test_patch_grid_index_matches_reference_boxes(view_hw, grid):
    rows, cols, row_edge, col_edge = draw.patch_grid_index(view_hw, grid)
    H, W = view_hw
    assert rows.shape == (H,) and cols.shape == (W,) and row_edge.shape == (H,) and col_edge.shape == (W,)
    assert row_edge.dtype == bool and col_edge.dtype == bool
    want_rows, want_cols = np.full(H, -1), np.full(W, -1)
    want_row_edge, want_col_edge = np.zeros(H, bool), np.zeros(W, bool)
    for (r, c), (r0, r1, c0, c1) in boxes(view_hw, grid).items():
        want_rows[r0:r1] = r
        want_cols[c0:c1] = c
        if r1 > r0:
            want_row_edge[r0] = True
        if c1 > c0:
            want_col_edge[c0] = True
    assert (want_rows >= 0).all() and (want_cols >= 0).all()  # the boxes tile the view
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(cols, want_cols)
    np.testing.assert_array_equal(row_edge, want_row_edge)
    np.testing.assert_array_equal(col_edge, want_col_edge)
    assert not rows.flags.writeable  # cached arrays must not be mutable by callers


def test_patch_grid_index_view_smaller_than_grid():
    rows, cols, _, _ = draw.patch_grid_index((3, 4), (5, 8))
    assert rows.shape == (3,) and cols.shape == (4,)
    # patches with an empty box own no pixel; every pixel belongs to the last patch starting at or before it
    np.testing.assert_array_equal(rows, [1, 3, 4])  # starts: 0, 0, 1, 1, 2
    np.testing.assert_array_equal(cols, [1, 3, 5, 7])  # starts: 0, 0, 1, 1, 2, 2, 3, 3


def test_single_kept_patch_lands_on_its_floor_box_non_divisible():
    """100×70 view, 3×5 grid: patch (1, 2) is rows [33, 66), cols [28, 42) — not [34, 67) × [28, 42)."""
    view = np.full((100, 70, 3), 120, np.uint8)
    out = kept_overlay(view, [1 * 5 + 2], (3, 5))
    check_image(out, view)
    amber = np.all(out == AMBER, axis=-1)
    ys, xs = np.nonzero(amber)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (33, 66, 28, 42)
    for y in (33, 34, 64, 65):  # two-pixel frame at top and bottom
        assert amber[y, 28:42].all()
    for x in (28, 29, 40, 41):
        assert amber[33:66, x].all()
    np.testing.assert_array_equal(out[35:64, 30:40], view[35:64, 30:40])  # interior untouched
    assert brightness(out[32, 30:40]).max() < 40 and brightness(out[67, 30:40]).max() < 40  # neighbours dimmed (0.3 × 120)
    assert np.all(out[66, 30:40] == 62)  # row 66 starts patch row 2: dimmed + faint grid line


# ---------------------------------------------------------------------------------------------- kept_overlay


def reference_kept(view, keep, grid, samples=()):
    """Slow loop: dim dropped patches, 12 % white on each patch's first row/column, amber (cyan) 2-px frames."""
    img = view.astype(np.float64)
    out = img.copy()
    grey = img.mean(axis=2, keepdims=True)
    dim = 0.3 * (0.35 * img + 0.65 * grey)
    bx = boxes(view.shape[:2], grid)
    w = grid[1]
    for (r, c), (r0, r1, c0, c1) in bx.items():
        if not keep[r * w + c]:
            out[r0:r1, c0:c1] = dim[r0:r1, c0:c1]
    line = np.zeros(view.shape[:2], bool)
    for (r0, r1, c0, c1) in bx.values():
        if r1 > r0:
            line[r0, :] = True
        if c1 > c0:
            line[:, c0] = True
    out[line] = 0.88 * out[line] + 0.12 * 255
    for colour, which in ((AMBER, np.flatnonzero(keep)), (CYAN, samples)):
        for i in which:
            r0, r1, c0, c1 = bx[divmod(int(i), w)]
            region = out[r0:r1, c0:c1]
            region[frame((r0, r1, c0, c1))] = colour
    return out.clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("view_hw,grid", GEOMETRIES)
def test_kept_overlay_matches_slow_reference(view_hw, grid):
    view = random_view(view_hw)
    keep = random_keep(grid)
    out = kept_overlay(view, keep, grid)
    check_image(out, view)
    ref = reference_kept(view, keep, grid)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("view_hw,grid", [((100, 70), (3, 5)), ((448, 672), (24, 24)), ((96, 72), (6, 6))])
def test_kept_patches_keep_pixels_dropped_patches_dimmed(view_hw, grid):
    view = random_view(view_hw, seed=3)
    keep = random_keep(grid, seed=4, frac=0.5)
    out = kept_overlay(view, keep, grid)
    check_image(out, view)
    n_interior = 0
    for (r, c), box in boxes(view_hw, grid).items():
        r0, r1, c0, c1 = box
        o, v = out[r0:r1, c0:c1], view[r0:r1, c0:c1]
        if keep[r * grid[1] + c]:
            inner = ~frame(box)
            np.testing.assert_array_equal(o[inner], v[inner])  # interior: original pixels
            n_interior += int(inner.sum())
            assert np.all(o[frame(box)] == AMBER)  # outline: amber
        else:
            body = o[1:, 1:]  # skip the patch's first row/column (faint grid line)
            assert not np.any(np.all(o == AMBER, axis=-1))  # no outline leaks into a dropped patch
            # per-pixel brightness 0.3 × original (the desaturation keeps the channel mean), ±1 for truncation
            assert np.abs(brightness(body) - 0.3 * brightness(v[1:, 1:])).max() <= 1.0
            assert brightness(o).mean() < 0.5 * brightness(v).mean()
    assert n_interior > 0


def test_kept_overlay_all_or_nothing():
    view = random_view((50, 60), seed=5)
    grid = (5, 6)
    none = kept_overlay(view, np.zeros(30, bool), grid)
    check_image(none, view)
    assert not np.any(np.all(none == AMBER, axis=-1))
    assert brightness(none).mean() < 0.45 * brightness(view).mean()
    everything = kept_overlay(view, np.arange(30), grid)
    check_image(everything, view)
    for box in boxes((50, 60), grid).values():
        r0, r1, c0, c1 = box
        np.testing.assert_array_equal(everything[r0:r1, c0:c1][~frame(box)], view[r0:r1, c0:c1][~frame(box)])
    empty_list = kept_overlay(view, [], grid)
    np.testing.assert_array_equal(empty_list, none)


def test_kept_overlay_samples_outlined_cyan():
    view = random_view((100, 70), seed=6)
    grid = (3, 5)
    kept, samples = [0, 7], [7, 14]
    out = kept_overlay(view, kept, grid, samples=torch.tensor(samples))
    check_image(out, view)
    bx = boxes((100, 70), grid)
    for i in samples:
        box = bx[divmod(i, 5)]
        r0, r1, c0, c1 = box
        assert np.all(out[r0:r1, c0:c1][frame(box)] == CYAN)  # the sample frame is painted after the kept one
    box = bx[0, 0]
    assert np.all(out[box[0]:box[1], box[2]:box[3]][frame(box)] == AMBER)
    ref = reference_kept(view, draw._mask(kept, 15), grid, samples=samples)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    no_samples = kept_overlay(view, kept, grid, samples=[])
    check_image(no_samples, view)
    np.testing.assert_array_equal(no_samples, kept_overlay(view, kept, grid))


@pytest.mark.parametrize("view_hw,grid", [((100, 70), (24, 24)), ((100, 70), (3, 5))])
def test_kept_overlay_accepts_every_mask_form(view_hw, grid):
    view = random_view(view_hw, seed=7)
    keep = random_keep(grid, seed=8)
    idx = np.flatnonzero(keep)
    forms = [
        keep,
        keep.reshape(grid),
        torch.from_numpy(keep),
        idx,
        idx.astype(np.int32),
        idx.tolist(),
        torch.from_numpy(idx),
        torch.from_numpy(idx[::-1].copy()),  # order does not matter
    ]
    want = kept_overlay(view, keep, grid)
    check_image(want, view)
    for form in forms:
        got = kept_overlay(view, form, grid)
        check_image(got, view)
        np.testing.assert_array_equal(got, want)


def test_views_of_other_layouts_come_out_rgb_uint8():
    grid = (4, 4)
    grey = np.random.default_rng(9).integers(0, 256, (40, 36), dtype=np.uint8)
    out = kept_overlay(grey, [0, 5], grid)
    check_image(out, grey)
    np.testing.assert_array_equal(out, kept_overlay(np.repeat(grey[..., None], 3, 2), [0, 5], grid))
    rgba = np.dstack([random_view((40, 36), seed=10), np.full((40, 36), 7, np.uint8)])
    out = heatmap_overlay(rgba, np.linspace(0, 1, 16), grid)
    check_image(out, rgba)
    np.testing.assert_array_equal(out, heatmap_overlay(rgba[..., :3], np.linspace(0, 1, 16), grid))


# ---------------------------------------------------------------------------------------------- palette, clusters


def test_palette_deterministic_distinct_and_readonly():
    for n in (1, 2, 3, 8, 12, 40):
        a, b = draw.palette(n), draw.palette(n)
        assert a.shape == (n, 3) and a.dtype == np.float32
        np.testing.assert_array_equal(a, b)
        assert len({tuple(row) for row in a}) == n
        assert a.min() >= 0 and a.max() <= 255
        assert not a.flags.writeable
    p = draw.palette(12).astype(np.float64)
    dist = np.sqrt(((p[:, None] - p[None]) ** 2).sum(-1)) + np.eye(12) * 1e9
    assert dist.min() > 30  # visibly different for a dozen clusters
    assert np.sqrt(((p - GREY) ** 2).sum(-1)).min() > 60  # none close to the singleton grey
    # the seed changes saturation/value, not determinism
    np.testing.assert_array_equal(draw.palette(5, seed=3), draw.palette(5, seed=3))


def test_cluster_colours_size_rank_and_grey_singletons():
    #            cluster 2: 4 patches, cluster 0: 3, cluster 5: 2, 1/3/4: singletons
    labels = np.array([2, 0, 2, 1, 0, 5, 2, 3, 5, 0, 4, 2])
    col = draw.cluster_colours(labels)
    assert col.shape == (12, 3)
    pal = draw.palette(3)
    for lab, rank in ((2, 0), (0, 1), (5, 2)):
        for i in np.flatnonzero(labels == lab):
            np.testing.assert_array_equal(col[i], pal[rank])
    for i in np.flatnonzero(np.isin(labels, [1, 3, 4])):
        np.testing.assert_array_equal(col[i], [GREY] * 3)
    np.testing.assert_array_equal(col, draw.cluster_colours(labels))  # deterministic
    np.testing.assert_array_equal(col, draw.cluster_colours(torch.from_numpy(labels).numpy()))
    # renaming the clusters (sizes all different) does not change any patch's colour
    rename = np.array([10, 11, 7, 12, 13, 3])
    np.testing.assert_array_equal(draw.cluster_colours(rename[labels]), col)


def test_cluster_colours_all_singletons_all_grey():
    col = draw.cluster_colours(np.arange(9))
    np.testing.assert_array_equal(col, np.full((9, 3), GREY))


def test_cluster_overlay_colours_per_patch_against_reference():
    view_hw, grid = (100, 70), (4, 5)
    h, w = grid
    base = 100
    view = np.full((*view_hw, 3), base, np.uint8)
    # three multi-patch clusters (sizes 8, 6, 3) and three singletons
    labels = np.array([
        0, 0, 0, 0, 1,
        0, 0, 0, 0, 1,
        2, 2, 2, 3, 1,
        4, 5, 1, 1, 1,
    ])
    kept = [0, 19]
    out = cluster_overlay(view, torch.from_numpy(labels), grid, kept_mask=kept)
    check_image(out, view)
    pal = draw.palette(3)
    expected = {0: pal[0], 1: pal[1], 2: pal[2], 3: np.full(3, GREY), 4: np.full(3, GREY), 5: np.full(3, GREY)}
    seen = {}
    bx = boxes(view_hw, grid)
    for (r, c), box in bx.items():
        r0, r1, c0, c1 = box
        i = r * w + c
        body = out[r0 + THICK:r1 - THICK, c0 + THICK:c1 - THICK].reshape(-1, 3).astype(int)
        want = np.floor(0.45 * base + 0.55 * expected[labels[i]])
        assert np.abs(body - want).max() <= 1, (r, c)
        seen.setdefault(labels[i], set()).add(tuple(body[0]))
        if i in kept:
            assert np.all(out[r0:r1, c0:c1][frame(box)] == WHITE)
        # a border (dark) on the first row where the label changes from the patch above
        if r > 0 and labels[i] != labels[i - w]:
            assert brightness(out[r0, c0 + THICK:c1]).max() < 45
        elif r > 0:
            np.testing.assert_array_equal(out[r0, c0 + THICK:c1 - THICK], out[r0 + 1, c0 + THICK:c1 - THICK])
    # one colour per cluster, distinct between multi-patch clusters, singletons all the same grey
    assert all(len(v) == 1 for v in seen.values())
    multi = [next(iter(seen[k])) for k in (0, 1, 2)]
    assert len(set(multi)) == 3
    assert seen[3] == seen[4] == seen[5]
    assert next(iter(seen[3])) not in multi
    # deterministic and numpy/torch agnostic
    np.testing.assert_array_equal(out, cluster_overlay(view, labels, grid, kept_mask=np.isin(np.arange(20), kept)))


def test_cluster_overlay_without_kept_has_no_white_frames():
    view = random_view((61, 53), seed=11)
    labels = np.repeat(np.arange(14), 2)
    out = cluster_overlay(view, labels, (7, 4))
    check_image(out, view)
    assert not np.any(np.all(out == WHITE, axis=-1))


# ---------------------------------------------------------------------------------------------- merge_overlay


@pytest.mark.parametrize("as_torch", [False, True])
def test_merge_overlay_groups_take_their_kept_tokens_colour(as_torch):
    view_hw, grid = (100, 70), (4, 6)
    h, w = grid
    view = random_view(view_hw, seed=12)
    kept = [5, 17]
    merge_index = [[4, 6, 11], [16, 18, 6]]  # patch 6 is claimed by both: the first kept token wins
    args = (torch.tensor(kept), torch.tensor(merge_index)) if as_torch else (kept, np.array(merge_index))
    out = merge_overlay(view, *args, grid)
    check_image(out, view)
    pal = draw.palette(2)
    group = {5: 0, 4: 0, 6: 0, 11: 0, 17: 1, 16: 1, 18: 1}
    img = view.astype(np.float64)
    for (r, c), box in boxes(view_hw, grid).items():
        r0, r1, c0, c1 = box
        i = r * w + c
        if i in group:
            want = 0.4 * img[r0:r1, c0:c1] + 0.6 * pal[group[i]]
        else:
            want = 0.35 * img[r0:r1, c0:c1]
        got = out[r0:r1, c0:c1].astype(np.float64)
        inner = ~frame(box)
        assert np.abs(got[inner] - np.floor(want[inner])).max() <= 1, (r, c)
        if i in kept:
            assert np.all(out[r0:r1, c0:c1][frame(box)] == WHITE)
        else:
            assert np.abs(got - np.floor(want)).max() <= 1, (r, c)
    # neighbours of a kept token share its colour (compare on a flat view so colours are directly comparable)
    flat = np.full((*view_hw, 3), 128, np.uint8)
    out = merge_overlay(flat, *args, grid)
    check_image(out, flat)
    bx = boxes(view_hw, grid)

    def centre(i):
        r0, r1, c0, c1 = bx[divmod(i, w)]
        return tuple(out[(r0 + r1) // 2, (c0 + c1) // 2])

    assert centre(4) == centre(6) == centre(11) == centre(5)
    assert centre(16) == centre(18) == centre(17)
    assert centre(4) != centre(16)
    assert centre(0) == (44, 44, 44)  # untouched patch: dimmed (0.35 × 128)


def test_merge_overlay_single_kept_token():
    view = random_view((48, 48), seed=13)
    out = merge_overlay(view, np.array([3]), np.array([[0, 1, 2, 7]]), (4, 4))
    check_image(out, view)
    bx = boxes((48, 48), (4, 4))
    colour = np.floor(0.4 * view.astype(np.float64) + 0.6 * draw.palette(1)[0])
    for i in (0, 1, 2, 7):
        r0, r1, c0, c1 = bx[divmod(i, 4)]
        assert np.abs(out[r0:r1, c0:c1].astype(int) - colour[r0:r1, c0:c1]).max() <= 1


# ---------------------------------------------------------------------------------------------- heatmap_overlay


def luminance(rgb):
    return np.asarray(rgb, np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.mark.parametrize("view_hw,grid", [((100, 70), (3, 5)), ((100, 70), (24, 24)), ((448, 672), (24, 24))])
def test_heatmap_overlay_matches_colormap_and_is_monotone(view_hw, grid):
    h, w = grid
    n = h * w
    values = np.random.default_rng(14).permutation(np.linspace(0, 1, n))
    black = np.zeros((*view_hw, 3), np.uint8)
    out = heatmap_overlay(black, values, grid)
    check_image(out, black)
    lum = np.empty(n)
    for (r, c), (r0, r1, c0, c1) in boxes(view_hw, grid).items():
        if r1 == r0 or c1 == c0:
            continue
        i = r * w + c
        want = np.floor(0.6 * draw.VIRIDIS[int(round(values[i] * 255))])
        patch = out[r0:r1, c0:c1].reshape(-1, 3).astype(int)
        assert np.abs(patch - want).max() <= 1, (r, c)
        lum[i] = luminance(patch.mean(0))
    order = np.argsort(values)
    assert np.all(np.diff(lum[order]) >= -1.0)  # higher value → brighter colormap entry
    assert lum[order[-1]] - lum[order[0]] > 100
    # on a real view the same colours are blended 60/40
    view = random_view(view_hw, seed=15)
    out = heatmap_overlay(view, values, grid)
    check_image(out, view)
    r0, r1, c0, c1 = boxes(view_hw, grid)[0, 0]
    want = np.floor(0.4 * view[r0:r1, c0:c1].astype(np.float64) + 0.6 * draw.VIRIDIS[int(round(values[0] * 255))])
    assert np.abs(out[r0:r1, c0:c1].astype(int) - want).max() <= 1


def test_heatmap_colormap_is_viridis_like_and_monotone():
    lut = draw.VIRIDIS
    assert lut.shape == (256, 3)
    assert np.all(np.diff(luminance(lut)) > 0)
    np.testing.assert_allclose(lut[0], [68, 1, 84])
    np.testing.assert_allclose(lut[-1], [253, 231, 37])


def test_heatmap_overlay_handles_nan_inf_and_out_of_range():
    grid = (2, 3)
    black = np.zeros((20, 30, 3), np.uint8)
    values = np.array([np.nan, -0.5, 0.0, 1.0, 7.0, np.inf])
    out = heatmap_overlay(black, values, grid)
    check_image(out, black)
    bx = boxes((20, 30), grid)
    low, high = np.floor(0.6 * draw.VIRIDIS[0]), np.floor(0.6 * draw.VIRIDIS[255])
    for i, want in enumerate([low, low, low, high, high, high]):
        r0, r1, c0, c1 = bx[divmod(i, 3)]
        assert np.abs(out[r0:r1, c0:c1].astype(int) - want).max() <= 1, i
    all_nan = heatmap_overlay(black, np.full(6, np.nan), grid)
    check_image(all_nan, black)
    assert np.abs(all_nan.astype(int) - low).max() <= 1
    t = heatmap_overlay(black, torch.tensor([float("nan"), 0.2, 0.4, 0.6, 0.8, 1.0]), grid)
    check_image(t, black)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_heatmap_overlay_accepts_torch_and_numpy(dtype):
    grid = (24, 24)
    view = random_view((100, 70), seed=16)
    values = np.random.default_rng(17).random(576)
    keep = random_keep(grid, seed=18)
    t_values = torch.tensor(values, dtype=dtype)
    want = heatmap_overlay(view, t_values.double().numpy(), grid, kept_mask=keep)
    check_image(want, view)
    for kept_mask in (keep, torch.from_numpy(keep), np.flatnonzero(keep).tolist(), torch.from_numpy(np.flatnonzero(keep))):
        got = heatmap_overlay(view, t_values, grid, kept_mask=kept_mask)
        check_image(got, view)
        np.testing.assert_array_equal(got, want)
    # values given as an [h, w] map draw the same picture
    np.testing.assert_array_equal(heatmap_overlay(view, t_values.reshape(grid), grid, kept_mask=keep), want)


def test_heatmap_overlay_outlines_kept_white():
    view_hw, grid = (100, 70), (3, 5)
    view = random_view(view_hw, seed=19)
    kept = [2, 8]
    out = heatmap_overlay(view, np.full(15, 0.5), grid, kept_mask=kept)
    check_image(out, view)
    bx = boxes(view_hw, grid)
    for i in range(15):
        box = bx[divmod(i, 5)]
        r0, r1, c0, c1 = box
        on_frame = np.all(out[r0:r1, c0:c1][frame(box)] == WHITE)
        assert on_frame == (i in kept)
    plain = heatmap_overlay(view, np.full(15, 0.5), grid)
    check_image(plain, view)
    for i in range(15):
        if i not in kept:
            r0, r1, c0, c1 = bx[divmod(i, 5)]
            np.testing.assert_array_equal(out[r0:r1, c0:c1], plain[r0:r1, c0:c1])
