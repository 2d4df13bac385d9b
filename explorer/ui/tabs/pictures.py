"""The Pictures tab: an explore (new image, prompt or model — public API, with a progress bar) and a slider
move (the same reduction and drawing without one, ≈ 10–30 ms), and a click on a picture."""

from __future__ import annotations

import math

import gradio as gr

from ...errors import InputError

from ..common import POINT, one_sentence, upload_path
from ..layout import Layout, Screen


def drawn(page: Layout, out, session) -> dict:
    """One explore's pictures, figures and readout, and the new session."""
    pics = out.pictures
    return {page.kept_img: pics.kept, page.kept_cap: pics.kept_caption,
            page.groups_img: gr.Image(pics.groups, visible=pics.groups is not None),
            page.groups_cap: pics.groups_caption, page.heat_img: pics.heatmap, page.heat_cap: pics.heatmap_caption,
            page.crop_img: out.crop, page.crop_cap: out.crop_caption, page.histogram: out.histogram,
            page.funnel: out.funnel, page.readout: out.readout, page.query_md: query_text(out), page.state: session}


def emptied(page: Layout) -> dict:
    """An emptied image: clear the pictures quietly (no error toast); the session stays."""
    return {page.kept_img: None, page.kept_cap: "", page.groups_img: gr.Image(None), page.groups_cap: "",
            page.heat_img: None, page.heat_cap: "", page.crop_img: None, page.crop_cap: "", page.histogram: None,
            page.funnel: None, page.readout: "Upload an image or click an example.", page.query_md: ""}


def query_text(out) -> str:
    if out.query is None:
        return ""
    return f"**PAR's query:** {out.query.description}."


@one_sentence
def explore(ui: Screen, image, prompt, method, model, query_points, state, progress=gr.Progress(), **controls):
    """Reduce the image's visual tokens with `method` and its settings: the pictures, figures and readout,
    and the summary with per-patch data (kept indices in LLM order, attention, relevance, groups)."""
    page = ui.layout
    if image is None:
        return {**emptied(page), page.summary: None}
    settings = ui.settings(method, controls, query_points)
    out, session = ui.explorer.explore(upload_path(image), prompt, settings, state, model or None, progress)
    return {**drawn(page, out, session), page.summary: out.summary}


@one_sentence
def move(ui: Screen, image, prompt, method, model, query_points, state, **controls):
    page = ui.layout
    if image is None:
        return emptied(page)
    settings = ui.settings(method, controls, query_points, clamp=True)
    out, session = ui.explorer.explore(upload_path(image), prompt, settings, state, model or None,
                                       with_per_patch=False)
    fixes = settings.clamped(controls)
    if fixes:
        gr.Warning("Out of range: " + ", ".join(f"{k} set to {v}" for k, v in fixes.items()) + ".")
    changes = drawn(page, out, session)
    del changes[page.crop_img], changes[page.crop_cap]  # a slider move cannot change the crop picture
    return {**changes, **{page.controls[name]: gr.update(value=value) for name, value in fixes.items()}}


@one_sentence
def inspect_or_point(ui: Screen, mode, query_points, state, evt: gr.SelectData):
    """A click on a picture: describe the patch under it, or add it to PAR's query points."""
    page, explorer = ui.layout, ui.explorer
    if not (isinstance(evt.index, (list, tuple)) and len(evt.index) == 2
            and all(isinstance(v, (int, float)) and math.isfinite(v) for v in evt.index)):
        raise InputError("This click could not be read; please click the picture again.")
    x, y = evt.index
    if mode == POINT:
        return {page.query_points: list(query_points or []) + [explorer.view_to_image(state, x, y)]}
    view = explorer.session(state).view_size
    return {page.patch_md: patch_markdown(explorer.inspect(state, x, y, tuple(view) if view else None))}


def patch_markdown(info: dict) -> str:
    """The inspector: where the patch is, whether (and where) it was kept, its CLS attention, the token holding
    it, then the method's own lines (its trace's `inspect`)."""
    parts = [f"**Patch {info['patch']}** (row {info['row']}, column {info['column']}): "
             + ("**kept**" + (f", position {info['position_in_llm_input']} in the LLM's input"
                              if "position_in_llm_input" in info else "") if info["kept"] else "not kept")]
    if "attention" in info:
        parts.append(f"CLS attention {info['attention']:.4g} (rank {info['attention_rank']})")
    if "token" in info:
        parts.append(f"in token {info['token']} with {info['group_size'] - 1} other patches (weight "
                     f"{info['weight_in_token']:.3g})")
    return " · ".join(parts + list(info.get("lines", ())))
