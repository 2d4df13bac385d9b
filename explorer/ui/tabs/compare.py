"""The second event after an explore or a move: the Sweep & comparison tab (one slider's sweep, every method at
the current budget), the Explain tab's steps on this image and the Pin tab's A/B diff."""

from __future__ import annotations

import gradio as gr

from ..common import FOLLOWING_TABS, one_sentence, upload_path
from .explain import explain_markdown
from .pin import pin_view
from ..layout import Screen


def compare(ui: Screen, image, prompt, method, model, query_points, sweep_parameter, match_equivalent, state,
            pinned, **controls):
    """The sweep of one slider and every method at the current token budget (and the pinned A/B diff);
    `match_equivalent`: matched on equivalent tokens (the mean over the LLM's layers)."""
    return following(ui, FOLLOWING_TABS, image, prompt, method, model, query_points, sweep_parameter,
                     match_equivalent, state, pinned, controls)


def compare_if_shown(ui: Screen, image, prompt, method, model, query_points, sweep_parameter, match_equivalent,
                     shown_tab, state, pinned, **controls):
    """After a slider move: only the open tab's sweep and comparison, explanation or A/B diff (opening a tab
    brings it up to date), so a move costs the reducer and the pictures plus what is in view."""
    if shown_tab not in FOLLOWING_TABS:
        return {ui.layout.sweep_plot: gr.skip()}
    return following(ui, (shown_tab,), image, prompt, method, model, query_points, sweep_parameter,
                     match_equivalent, state, pinned, controls)


@one_sentence
def following(ui: Screen, tabs, image, prompt, method, model, query_points, sweep_parameter, match_equivalent,
              state, pinned, controls) -> dict:
    """The sweep plot, gallery and bar chart, the explanation, the A/B picture and line — for the tabs in
    `tabs` only. The session is read, never written: a pin or an answer meanwhile must not be undone."""
    page, explorer = ui.layout, ui.explorer
    if image is None:
        return {page.sweep_plot: None, page.gallery: None, page.compare_bar: None, page.explain_md: "",
                page.diff_img: None, page.diff_md: ""}
    out = {}
    if "compare-tab" in tabs:
        settings = ui.settings(method, controls, query_points, clamp=True)
        sweep, gallery, bars, _ = explorer.sweep_and_compare(upload_path(image), prompt, settings, sweep_parameter,
                                                             state, model or None,
                                                             equivalent=bool(match_equivalent))
        out.update({page.sweep_plot: sweep, page.gallery: gallery, page.compare_bar: bars})
    if "pin-tab" in tabs:
        out[page.diff_img], out[page.diff_md] = pin_view(ui, state, pinned)
    if "explain-tab" in tabs:
        out[page.explain_md] = explain_markdown(explorer, explorer.session(state).last_summary)
    return out or {page.sweep_plot: gr.skip()}
