"""The page and its events — with app.py, the only package that imports gradio.

    layout.py   the page as a dataclass of named components (`Layout`) and the `Screen` handlers are given
    common.py   CSS and scripts, examples, the upload check, `one_sentence` (exceptions → one-sentence gr.Error),
                the controls built from the schema, the launcher (`serve`)
    tabs/       one module per tab (and the control column): handlers return {component: value}
    (here)      `build_demo`: the layout, then each event bound to its handler

Every handler takes the controls as keyword arguments by their schema names (`inputs_kwargs`), so the API's
keywords, the UI's controls and the export are one list. Events: a new image / prompt (Enter or leaving the
box) / model runs `explore` (public API) with a progress bar; a control move runs the same function without one;
the sweep, comparison, explanation and pin-diff follow as a second event (after a move: only the open tab's).
Answers carry the stamp of what produced them and are marked stale as soon as the screen shows something else.
"""

from __future__ import annotations

import json
from types import MethodType

import gradio as gr

from ..service import Explorer
from .common import (COPY_LINK_JS, CSS, FOLLOWING_TABS, GENERIC_FILE, SCROLL_JS, URL_JS, launch_kwargs,  # noqa: F401
                     load_examples, serve, upload_path)
from .layout import Layout, Screen, build
from .tabs import answers, compare, controls, export, fidelity, pin, pictures
from .tabs.explain import explain_markdown, header_html  # noqa: F401
from .tabs.pictures import patch_markdown  # noqa: F401

__all__ = ["build_demo", "serve", "launch_kwargs", "patch_markdown", "explain_markdown", "GENERIC_FILE", "CSS"]


def build_demo(explorer: Explorer) -> gr.Blocks:
    examples = load_examples()
    schema = explorer.schema
    # the first screen shows the first example's method (else the registry's first)
    first_method = next((r["method"] for r in examples[:1] if r.get("method") in schema.methods),
                        next(iter(schema.methods)))
    page = build(explorer, examples, first_method)
    ui = Screen(explorer, page, examples, first_method)
    with page.demo as demo:
        main, moved = _wire_screen(ui)
        _wire_following(ui, main, moved)
        _wire_tabs(ui)
        _wire_controls(ui)
    return demo


# preload=False: values arrive as sent, and the schema (not each component) says what is wrong with them, in
# one sentence naming the control; images are checked by `upload_path`
REDRAW = dict(trigger_mode="always_last", concurrency_id="redraw", concurrency_limit=4, preprocess=False)


def _kw(page: Layout) -> dict:
    return dict(inputs_kwargs=dict(page.controls))


def _wire_screen(ui: Screen):
    """An explore (new image, prompt, model, points: the public `explore`) and a slider or method move."""
    page = ui.layout
    main = gr.on([page.image.change, page.prompt.submit, page.prompt.blur, page.model.change,
                  page.query_points.change], _bind(ui, pictures.explore), inputs=page.head + [page.state],
                 outputs=page.pictures + [page.summary], api_name="explore", show_progress="minimal", **REDRAW,
                 **_kw(page))
    moved = gr.on([c.change for c in page.control_list] + [page.method.change], _bind(ui, pictures.move),
                  inputs=page.head + [page.state], outputs=page.pictures + page.control_list,
                  api_visibility="private", show_progress="hidden", **REDRAW, **_kw(page))
    return main, moved


def _wire_following(ui: Screen, main, moved) -> None:
    """The second event (sweep & comparison, explanation, A/B), the address, the stale note and history."""
    page, schema = ui.layout, ui.explorer.schema
    follow = dict(inputs=page.head + [page.sweep_parameter, page.match_equivalent, page.state, page.pinned],
                  outputs=page.following,
                  show_progress="hidden", **REDRAW, **_kw(page))
    main.success(_bind(ui, compare.compare), api_name="compare", **follow)
    shown = dict(follow, inputs=page.head + [page.sweep_parameter, page.match_equivalent, page.shown_tab, page.state,
                                             page.pinned])
    moved.success(_bind(ui, compare.compare_if_shown), api_visibility="private", **shown)
    page.sweep_parameter.change(_bind(ui, compare.compare), api_visibility="undocumented", **follow)
    page.match_equivalent.change(_bind(ui, compare.compare), api_visibility="undocumented", **follow)
    for tab in page.tabs.values():
        opened = tab.select(lambda name=tab.id: name, None, page.shown_tab, queue=False, api_visibility="private")
        if tab.id in FOLLOWING_TABS:
            opened.then(_bind(ui, compare.compare_if_shown), api_visibility="private", **shown)
    url_js = URL_JS % (json.dumps(page.names), json.dumps({m: schema.method_controls(m) for m in schema.methods}))
    after = [page.stale_md, page.answers_box, page.history]
    for event, then, outputs in ((main, answers.after_explore, after + page.budget_controls),
                                 (moved, answers.after_move, after)):
        event.success(None, inputs=[page.method] + page.control_list, js=url_js, queue=False)
        event.success(_bind(ui, then), [page.state, page.answers], outputs, queue=False, api_visibility="private")
    page.method.change(_bind(ui, controls.on_method), page.method,
                       page.control_list + [page.sweep_parameter, page.query_box], queue=False,
                       api_visibility="private")


def _wire_tabs(ui: Screen) -> None:
    """Ask, fidelity, export, a click on a picture, pin and the history."""
    page, config = ui.layout, ui.explorer.config
    page.ask_btn.click(_bind(ui, answers.answer), inputs=page.head + [page.max_new_tokens, page.state],
                       outputs=[page.full_answer, page.reduced_answer, page.answer_md, page.stale_md,
                                page.answers_box, page.answer_info, page.answers],
                       api_name="answer", concurrency_id="generate", concurrency_limit=1, preprocess=False,
                       **_kw(page))
    run = page.fidelity_btn.click(_bind(ui, fidelity.fidelity), inputs=[page.fidelity_tokens, page.state],
                                  outputs=[page.fidelity_table, page.fidelity_plot, page.fidelity_note],
                                  api_name="fidelity", concurrency_id="generate", concurrency_limit=1,
                                  preprocess=False)
    page.fidelity_stop.click(None, cancels=[run], queue=False)
    page.export_btn.click(_bind(ui, export.export), inputs=[page.state, page.answers],
                          outputs=[page.export_json, page.export_png], api_name="export", concurrency_id="heavy",
                          concurrency_limit=config.heavy_slots)
    page.link_btn.click(None, js=COPY_LINK_JS, queue=False)
    for picture in (page.kept_img, page.heat_img, page.groups_img):
        picture.select(_bind(ui, pictures.inspect_or_point), [page.click_mode, page.query_points, page.state],
                       [page.query_points, page.patch_md], api_visibility="private", queue=False)
    page.clear_points.click(lambda: [], None, page.query_points, api_visibility="private", queue=False)
    page.pin_btn.click(_bind(ui, pin.pin), page.state, [page.diff_img, page.diff_md, page.pinned],
                       api_visibility="private")
    page.history.input(_bind(ui, pin.restore), [page.history, page.state],
                       [page.method, page.query_points] + page.control_list, api_visibility="private")


def _wire_controls(ui: Screen) -> None:
    """The header follows the model; the first screen; an example clicked."""
    page, explorer = ui.layout, ui.explorer
    page.model.change(lambda m: header_html(explorer, m), page.model, page.header, api_visibility="private",
                      queue=False)
    loaded = page.demo.load(_bind(ui, controls.start), None, page.screen_inputs, api_visibility="private")
    loaded.then(_bind(ui, controls.on_method), page.method,
                page.control_list + [page.sweep_parameter, page.query_box], queue=False, api_visibility="private")
    if page.examples is not None:
        page.examples.select(_bind(ui, controls.pick_example), None, page.screen_inputs, api_visibility="private",
                             queue=False).then(None, js=SCROLL_JS, queue=False)


def _bind(ui: Screen, handler):
    """`handler(ui, …)` as an event function (a bound method keeps the name, docstring, signature and type
    hints Gradio reads for the API and for its special arguments)."""
    return MethodType(handler, ui)
