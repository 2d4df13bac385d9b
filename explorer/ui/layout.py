"""The page as a dataclass of named components, built once: a compact control column (image, examples, prompt,
method, its controls) beside the pictures, both sticky on wide screens so a slider and the pictures it changes
stay in view; the slower views (sweep and comparison, pin & compare, answers, fidelity, explain, export) sit
in tabs under the pictures. On a phone the two columns stack (controls, then pictures).

Every control is built by looping over the schema (`explorer.settings.Schema`, derived from the registry);
the handlers name components (`layout.readout`), never count output slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gradio as gr

from .. import __version__
from ..service import Explorer, view
from ..settings import METHOD
from .common import DEFAULT_PROMPT, INSPECT, POINT, control_component
from .tabs.explain import explain_markdown, header_html


@dataclass
class Layout:
    demo: gr.Blocks
    # session values, each written by one kind of event only (so concurrent events never undo each other)
    state: gr.State  # the last explore: a Session (explore / slider moves)
    answers: gr.State  # the last answers with their stamp (Ask)
    pinned: gr.State  # the result pinned as A (Pin)
    shown_tab: gr.State  # the open tab: what a slider move must keep up to date
    header: gr.HTML
    # the control column
    image: gr.Image
    examples: gr.Gallery | None
    prompt: gr.Textbox
    method: gr.Dropdown
    model: gr.Radio
    controls: dict[str, gr.components.Component]
    query_box: gr.Group
    query_md: gr.Markdown
    clear_points: gr.Button
    query_points: gr.JSON
    click_mode: gr.Radio
    readout: gr.Markdown
    tabs: dict[str, gr.Tab]
    # Pictures
    kept_img: gr.Image
    kept_cap: gr.Markdown
    groups_img: gr.Image
    groups_cap: gr.Markdown
    heat_img: gr.Image
    heat_cap: gr.Markdown
    crop_img: gr.Image
    crop_cap: gr.Markdown
    histogram: gr.Plot
    funnel: gr.Plot
    patch_md: gr.Markdown
    # Sweep & comparison
    sweep_parameter: gr.Dropdown
    match_equivalent: gr.Checkbox
    sweep_plot: gr.Plot
    compare_bar: gr.Plot
    gallery: gr.Gallery
    # Pin & compare
    pin_btn: gr.Button
    history: gr.Dropdown
    diff_img: gr.Image
    diff_md: gr.Markdown
    # Answers
    ask_btn: gr.Button
    max_new_tokens: gr.Slider
    stale_md: gr.Markdown
    answers_box: gr.Column
    full_answer: gr.Textbox
    reduced_answer: gr.Textbox
    answer_md: gr.Markdown
    answer_info: gr.JSON
    # Fidelity
    fidelity_btn: gr.Button
    fidelity_stop: gr.Button
    fidelity_tokens: gr.Slider
    fidelity_note: gr.Markdown
    fidelity_plot: gr.Plot
    fidelity_table: gr.Dataframe
    # Explain, Export
    explain_md: gr.Markdown
    export_btn: gr.Button
    link_btn: gr.Button
    export_json: gr.File
    export_png: gr.File
    summary: gr.JSON
    names: tuple[str, ...] = field(default=())  # every control, in schema order
    budget_names: tuple[str, ...] = field(default=())  # the sliders whose maximum follows the image's N

    @property
    def control_list(self) -> list:
        return [self.controls[n] for n in self.names]

    @property
    def budget_controls(self) -> list:
        return [self.controls[n] for n in self.budget_names]

    @property
    def head(self) -> list:
        """The inputs every reduction reads (the controls follow as keywords)."""
        return [self.image, self.prompt, self.method, self.model, self.query_points]

    @property
    def pictures(self) -> list:
        """What an explore or a slider move draws, in the API's order."""
        return [self.kept_img, self.kept_cap, self.groups_img, self.groups_cap, self.heat_img, self.heat_cap,
                self.crop_img, self.crop_cap, self.histogram, self.funnel, self.readout, self.query_md, self.state]

    @property
    def following(self) -> list:
        """What the second event draws (sweep & comparison, explanation, A/B), in the API's order."""
        return [self.sweep_plot, self.gallery, self.compare_bar, self.explain_md, self.diff_img, self.diff_md]

    @property
    def screen_inputs(self) -> list:
        """What a first screen or an example sets: the image, prompt, method, points and every control."""
        return [self.image, self.prompt, self.method, self.query_points] + self.control_list


@dataclass(frozen=True)
class Screen:
    """What every handler is given: the service, the page, the examples and the method a first screen shows."""

    explorer: Explorer
    layout: Layout
    examples: list[dict]
    first_method: str

    def settings(self, method, controls, points=None, clamp=False):
        return self.explorer.settings({METHOD: method, **controls}, points or (), clamp)


def build(explorer: Explorer, examples: list[dict], first_method: str) -> Layout:
    config = explorer.config
    parts: dict = {}
    with gr.Blocks(title="Visual Token Reduction Explorer", fill_width=True,
                   delete_cache=(config.cache_clean_every_s, config.cache_max_age_s)) as demo:
        parts.update(state=gr.State(None), answers=gr.State(None), pinned=gr.State(None))
        parts["header"] = gr.HTML(header_html(explorer))
        with gr.Row(elem_id="main-row", equal_height=False):
            with gr.Column(scale=1, min_width=330, elem_id="controls"):
                parts.update(_control_column(explorer, examples, first_method))
            with gr.Column(scale=3, elem_id="pictures"):
                parts["readout"] = gr.Markdown("Loading the example…", label="Readout", elem_id="readout")
                parts["shown_tab"] = gr.State("pictures-tab")
                with gr.Tabs(elem_id="tabs"):
                    tabs = {}
                    for tab_id, title, build_tab in _TABS:
                        with gr.Tab(title, id=tab_id) as tabs[tab_id]:
                            parts.update(build_tab(explorer, first_method))
                parts["tabs"] = tabs
                gr.Markdown(f"v{__version__} · methods: {', '.join(explorer.schema.methods)}", elem_classes=["caption"])
    budget = tuple(n for n, s in explorer.schema.specs.items() if s.control.budget)
    return Layout(demo=demo, names=tuple(explorer.schema.names), budget_names=budget, **parts)


def _control_column(explorer: Explorer, examples: list[dict], first_method: str) -> dict:
    schema, config = explorer.schema, explorer.config
    # the budget sliders run up to the image's N (set after every explore); before the first one, up to the
    # default model's N when it has loaded already, else up to the control's own maximum
    loaded = explorer.loaded(config.model)
    budget_max = math.prod(loaded.grid) if loaded is not None else None
    p = {"image": gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=210,
                           elem_id="input-image"), "examples": None}
    if examples:
        p["examples"] = gr.Gallery([r["path"] for r in examples], label="Examples (click one)", columns=6, height=76,
                                   rows=1, allow_preview=False, object_fit="cover", elem_id="examples", buttons=[],
                                   interactive=False)
        gr.Markdown("Examples, left to right — " + " · ".join(r.get("caption", r["prompt"]) for r in examples),
                    elem_classes=["caption"])
    p["prompt"] = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2, max_lines=5, elem_id="prompt",
                             info="Enter or leaving the box applies it. The LLM answers it; PAR reads it with a CLIP "
                                  "text tower.")
    p["method"] = gr.Dropdown([(entry.label, name) for name, entry in schema.methods.items()], value=first_method,
                              label="Method", elem_id="method")
    p["model"] = gr.Radio(explorer.model_choices, value=config.model, label="Model",
                          visible=len(explorer.model_choices) > 1, elem_id="model", info="Loaded on first use.")
    active = set(schema.method_controls(first_method))
    p["controls"] = {name: control_component(spec, name in active, budget_max, first_method)
                     for name, spec in schema.specs.items()}
    with gr.Group(visible="query" in schema.entry(first_method).needs) as p["query_box"]:
        p["query_md"] = gr.Markdown("", label="Query", elem_id="query-info")
        with gr.Row():
            p["clear_points"] = gr.Button("Clear pointed patches", size="sm", elem_id="clear-points")
    p["query_points"] = gr.JSON([], label="Query points (x, y in image pixels)", visible=False, elem_id="query-points")
    p["click_mode"] = gr.Radio([INSPECT, POINT], value=INSPECT, label="Click a picture to", elem_id="click-mode")
    return p


def _pictures_tab(explorer: Explorer, first_method: str) -> dict:
    p = {}
    picture = dict(format="jpeg", interactive=False, height=215, buttons=["fullscreen"])
    with gr.Row(equal_height=False):
        for key, label, elem_id, caption in (("kept", "Retained patches", "overlay-kept", "Retained patches caption"),
                                             ("groups", "Clusters / merge groups", "overlay-groups", "Groups caption"),
                                             ("heat", "Score heatmap", "overlay-heat", "Heatmap caption")):
            with gr.Column(min_width=200):
                p[f"{key}_img"] = gr.Image(label=label, elem_id=elem_id, **picture)
                p[f"{key}_cap"] = gr.Markdown(label=caption, elem_classes=["caption"])
    with gr.Row(equal_height=False):
        with gr.Column(scale=1, min_width=160):
            p["crop_img"] = gr.Image(label="What the model sees", format="jpeg", interactive=False, height=150,
                                     elem_id="crop", buttons=[])
            p["crop_cap"] = gr.Markdown(label="Crop caption", elem_classes=["caption"])
        p["histogram"] = gr.Plot(label="Score histogram", elem_id="histogram", scale=3)
        p["funnel"] = gr.Plot(label="Stage funnel", elem_id="funnel", scale=2)
    p["patch_md"] = gr.Markdown("Click a patch on a picture to inspect it.", label="Patch", elem_id="patch-info")
    return p


def _compare_tab(explorer: Explorer, first_method: str) -> dict:
    p = {"sweep_parameter": gr.Dropdown(view.sweep_fields(explorer.schema.entry(first_method)) or ["(none)"],
                                        label="Sweep parameter", allow_custom_value=True,
                                        info="Tokens kept as this slider sweeps its range")}
    p["match_equivalent"] = gr.Checkbox(
        False, label="Match on equivalent tokens", elem_id="match-equivalent",
        info="Budget methods matched on the mean over the LLM's layers of the visual tokens present (FastV, "
             "SparseVLM, PyramidDrop prune inside it) instead of the tokens after the last cut")
    with gr.Row():
        p["sweep_plot"] = gr.Plot(label="Sweep", elem_id="sweep")
        p["compare_bar"] = gr.Plot(label="Tokens per method", elem_id="compare-bar")
    p["gallery"] = gr.Gallery(label="Every method: budget methods at the matched budget M, adaptive ones at their "
                              "own settings", columns=4, height="auto", format="jpeg", elem_id="compare-gallery",
                              object_fit="contain")
    return p


def _pin_tab(explorer: Explorer, first_method: str) -> dict:
    p = {}
    with gr.Row():
        p["pin_btn"] = gr.Button("Pin the current result as A", elem_id="pin", scale=0, min_width=220)
        p["history"] = gr.Dropdown([], label="Recent runs (pick one to restore it)", elem_id="history", scale=2)
    with gr.Row(equal_height=False):
        p["diff_img"] = gr.Image(label="A vs B: both bright, only A red, only B blue", format="jpeg",
                                 interactive=False, height=340, elem_id="diff")
        p["diff_md"] = gr.Markdown("Pin a result (A), change any setting, and compare it with the current one (B) "
                                   "here.", label="A vs B", elem_id="diff-info")
    return p


def _answers_tab(explorer: Explorer, first_method: str) -> dict:
    config, p = explorer.config, {}
    with gr.Row():
        p["ask_btn"] = gr.Button("Ask", variant="primary", scale=0, min_width=120, elem_id="ask")
        p["max_new_tokens"] = gr.Slider(1, config.max_new_tokens_limit, value=config.max_new_tokens, step=1,
                                        label="Max new tokens", elem_id="max-new-tokens")
    p["stale_md"] = gr.Markdown("", label="Answers status", elem_id="stale-note")
    with gr.Column(elem_id="answers") as p["answers_box"]:
        with gr.Row():
            p["full_answer"] = gr.Textbox(label="Answer from all visual tokens", lines=4, elem_id="answer-full")
            p["reduced_answer"] = gr.Textbox(label="Answer from the reduced tokens", lines=4,
                                             elem_id="answer-reduced")
        p["answer_md"] = gr.Markdown(label="Answer statistics", elem_id="answer-stats")
    p["answer_info"] = gr.JSON(label="Answer details", visible=False)
    return p


def _fidelity_tab(explorer: Explorer, first_method: str) -> dict:
    p = {}
    with gr.Row():
        p["fidelity_btn"] = gr.Button("Measure fidelity", variant="primary", scale=0, min_width=180,
                                      elem_id="fidelity-run")
        p["fidelity_stop"] = gr.Button("Stop", scale=0, min_width=100, elem_id="fidelity-stop")
        p["fidelity_tokens"] = gr.Slider(1, explorer.config.max_new_tokens_limit, value=16, step=1,
                                         label="Max new tokens per answer", elem_id="fidelity-tokens")
    p["fidelity_note"] = gr.Markdown(label="Fidelity notes", value=(
        "Every method at the matched budget and the current method across budgets: the greedy answer, whether it "
        "equals the full-token answer, the drop in log-probability of that answer and the first-token KL."))
    p["fidelity_plot"] = gr.Plot(label="Fidelity against tokens kept", elem_id="fidelity-plot")
    p["fidelity_table"] = gr.Dataframe(label="Fidelity per method and budget", elem_id="fidelity-table", wrap=True)
    return p


def _explain_tab(explorer: Explorer, first_method: str) -> dict:
    return {"explain_md": gr.Markdown(explain_markdown(explorer, None), label="Explain", elem_id="explain")}


def _export_tab(explorer: Explorer, first_method: str) -> dict:
    p = {}
    with gr.Row():
        p["export_btn"] = gr.Button("Export JSON + PNG", elem_id="export")
        p["link_btn"] = gr.Button("Copy a link to these settings", elem_id="copy-link")
    with gr.Row():
        p["export_json"] = gr.File(label="Settings, summary and answers (JSON)")
        p["export_png"] = gr.File(label="Pictures (PNG)")
    p["summary"] = gr.JSON(label="Summary", elem_id="summary")
    return p


_TABS = (("pictures-tab", "Pictures", _pictures_tab), ("compare-tab", "Sweep & comparison", _compare_tab),
         ("pin-tab", "Pin & compare", _pin_tab), ("answers-tab", "Answers", _answers_tab),
         ("fidelity-tab", "Fidelity", _fidelity_tab), ("explain-tab", "Explain", _explain_tab),
         ("export-tab", "Export", _export_tab))
