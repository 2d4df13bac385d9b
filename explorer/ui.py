"""The Blocks layout and its event wiring — with app.py, the only module that imports gradio.

Sliders are built from the parameter dataclasses' field metadata (range, default, one-line info), so the
reducers stay the single source of truth. Every control's `change` (mouse release, keyboard, programmatic)
re-runs only the reducer and the drawing on the cached encode; the sweep and the method comparison follow.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import gradio as gr

from reducers import BudgetParams, PARParams, PruMergeParams

from . import explore as ex
from .images import InputError
from .service import OFFLINE, Explorer, answer_dict, settings_from_controls

log = logging.getLogger("explorer")
ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_PROMPT = "What is in the picture?"
METHOD_CHOICES = [(label, name) for name, label in ex.METHOD_LABELS.items()]
INTRO = """# Visual Token Reduction Explorer
Upload an image, type a question, and move the sliders: see which of the vision tower's patch tokens a
reduction method hands to the LLM — **PAR** (prompt-aware retrieval, arXiv 2410.07278, as specified here),
**PruMerge / PruMerge+** (arXiv 2403.15388, equal to the official code with its bugs fixed) — next to
matched-budget baselines, with the prefill FLOPs saved and the LLM's answers from all vs. the reduced tokens."""
METHODS_HELP = """**PruMerge** reads the CLS token's attention to each patch in the layer that consumes the features,
keeps the IQR outliers (attention above Q3 + k·IQR), and merges into each kept token its 32 most key-similar
patches weighted by attention, plus one token aggregating everything pruned. **PruMerge+** adds uniformly
spaced patches so that no region is lost.
**PAR** rewrites the question into a short content phrase, embeds it with the matching CLIP text tower and
scores each patch by similarity (relevance r); patches linked by feature similarity ≥ γ form clusters (connected
components), and each patch's score mixes its own and its cluster's relevance (α). The top ρ·N are retrieved,
those with score ≥ τ are routed, and of two routed patches more similar than δ only the more relevant stays.
PAR's code is not public: every step here follows the written specification and is shown as it happens."""


def load_examples() -> list[tuple[Path, str]]:
    """(image path, prompt) pairs from assets/examples.json (images credited in assets/CREDITS.md)."""
    index = ASSETS / "examples.json"
    if not index.is_file():
        return []
    rows = json.loads(index.read_text())
    return [(ASSETS / row["file"], row.get("prompt") or DEFAULT_PROMPT) for row in rows if (ASSETS / row["file"]).is_file()]


def load_array(payload):
    """An image output's value (FileData dict or path) as an RGB array, or None if it is not a readable image."""
    import numpy as np
    from PIL import Image

    path = payload.get("path") if isinstance(payload, dict) else payload
    if not isinstance(path, str) or not path:
        return None
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError):
        return None


def _slider(params_cls, name: str, label: str) -> gr.Slider:
    f = next(f for f in dataclasses.fields(params_cls) if f.name == name)
    spec = f.metadata["slider"]
    return gr.Slider(spec.minimum, spec.maximum, value=f.default, step=spec.step, label=label, info=spec.info,
                     elem_id=f"slider-{name}")


def _error(err: Exception) -> gr.Error:
    """A user's mistake → its own one-sentence message; anything else is logged with its traceback and the user
    gets a generic sentence (internal details stay in the server log)."""
    if isinstance(err, InputError):
        return gr.Error(str(err))
    log.error("unexpected error while serving a request", exc_info=err)
    return gr.Error(f"Something went wrong ({type(err).__name__}); the server is still running — please try again.")


def build_demo(explorer: Explorer) -> gr.Blocks:
    config = explorer.config
    examples = load_examples()

    def explore(image, prompt, method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                alpha=0.5, spatial=False, rewrite=True, attention="official", merge=True, neighbours=32,
                budget=64, seed=0, model=None, state=None, progress=gr.Progress()):
        """Reduce the image's visual tokens with `method` and return the pictures and a JSON summary."""
        try:
            settings = settings_from_controls(method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                                              alpha, spatial, rewrite, attention, merge, neighbours, budget, seed)
            out, state, _ = explorer.explore(image, prompt, settings, state, model or None, progress)
        except Exception as err:
            raise _error(err) from None
        groups_caption, heat_caption = out.captions
        return (
            gr.Image(out.kept), gr.Image(out.groups, label=groups_caption), gr.Image(out.heatmap, label=heat_caption),
            out.histogram, out.funnel, out.readout, out.summary, state,
        )

    def compare(image, prompt, method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                alpha=0.5, spatial=False, rewrite=True, attention="official", merge=True, neighbours=32,
                budget=64, seed=0, model=None, sweep_parameter=None, state=None):
        """The sweep of one slider and every method at the current method's token budget."""
        try:
            settings = settings_from_controls(method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                                              alpha, spatial, rewrite, attention, merge, neighbours, budget, seed)
            sweep_fig, gallery, bar, state = explorer.sweep_and_compare(
                image, prompt, settings, sweep_parameter, state, model or None)
        except Exception as err:
            raise _error(err) from None
        return sweep_fig, gallery, bar, state

    def answer(image, prompt, method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
               alpha=0.5, spatial=False, rewrite=True, attention="official", merge=True, neighbours=32,
               budget=64, seed=0, model=None, max_new_tokens=48, state=None, progress=gr.Progress()):
        """Greedy answers from all visual tokens and from the reduced ones, with tokens fed and timings."""
        try:
            settings = settings_from_controls(method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                                              alpha, spatial, rewrite, attention, merge, neighbours, budget, seed)
            full, reduced, info, state = explorer.answer(image, prompt, settings, state, model or None,
                                                         int(max_new_tokens), progress)
        except Exception as err:
            raise _error(err) from None
        return full.text, reduced.text, _answer_stats(full, reduced, info), info, state

    def export(summary, kept, groups, heatmap):
        """The current settings and summary as JSON and the three overlays side by side as a lossless PNG."""
        try:
            return explorer.export(summary, lambda: [a for a in map(load_array, (kept, groups, heatmap)) if a is not None])
        except Exception as err:
            raise _error(err) from None

    with gr.Blocks(title="Visual Token Reduction Explorer", fill_width=True) as demo:
        state = gr.State({})
        gr.Markdown(INTRO)
        notice = gr.Markdown(_notice(explorer), elem_id="notice")
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=300,
                                 elem_id="input-image")
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT, lines=2, max_lines=6,
                                    info="PAR retrieves the patches relevant to this question; the LLM answers it.")
                method = gr.Dropdown(METHOD_CHOICES, value="par", label="Method")
                model = gr.Radio(explorer.model_choices, value=config.model, label="Model",
                                 visible=len(explorer.model_choices) > 1,
                                 info="The model is loaded on first use; the offline default always works.")
                with gr.Accordion("PAR", open=True):
                    tau = _slider(PARParams, "tau", "τ routing threshold")
                    delta = _slider(PARParams, "delta", "δ redundancy threshold")
                    cluster_threshold = _slider(PARParams, "cluster_threshold", "γ clustering threshold")
                    retrieval_ratio = _slider(PARParams, "retrieval_ratio", "ρ retrieval ratio")
                    alpha = _slider(PARParams, "alpha", "α token vs cluster relevance")
                    with gr.Row():
                        spatial = gr.Checkbox(False, label="Spatial graph (4-neighbours only)")
                        rewrite = gr.Checkbox(True, label="Rewrite the prompt (templates)")
                with gr.Accordion("PruMerge / PruMerge+", open=True):
                    iqr_multiplier = _slider(PruMergeParams, "iqr_multiplier", "IQR multiplier k")
                    neighbours = _slider(PruMergeParams, "neighbours", "Merge neighbours")
                    with gr.Row():
                        merge = gr.Checkbox(True, label="Merge (off: prune only)")
                        attention = gr.Radio(list(ex.ATTENTION_MODES), value="official", label="CLS attention",
                                             info="official: full-width q·k of the consuming layer; head-mean: "
                                                  "per-head attention averaged")
                with gr.Accordion("Baselines (random, uniform, top-attention)", open=False):
                    budget = gr.Slider(1, 4096, value=BudgetParams().budget, step=1, label="Token budget M",
                                       info="How many tokens a baseline keeps when it is the active method")
                    seed = gr.Number(0, precision=0, label="Random seed")
                explore_btn = gr.Button("Explore", variant="primary")
                if examples:
                    gr.Examples(
                        [[str(path), text] for path, text in examples],
                        inputs=[image, prompt], label="Examples (click one)", examples_per_page=8,
                    )
            with gr.Column(scale=5):
                readout = gr.Markdown("Upload an image or click an example.", elem_id="readout")
                with gr.Row():
                    kept_img = gr.Image(label="Retained patches (bright, outlined) — dropped dimmed", format="jpeg",
                                        interactive=False, elem_id="overlay-kept", buttons=["download", "fullscreen"])
                    groups_img = gr.Image(label="Clusters / merge groups", format="jpeg", interactive=False,
                                          elem_id="overlay-groups", buttons=["download", "fullscreen"])
                    heat_img = gr.Image(label="Relevance / attention", format="jpeg", interactive=False,
                                        elem_id="overlay-heat", buttons=["download", "fullscreen"])
                with gr.Row():
                    histogram = gr.Plot(label="CLS-attention histogram with IQR fence", elem_id="histogram")
                    funnel = gr.Plot(label="Stage funnel", elem_id="funnel")
                with gr.Accordion("Sweep and matched-budget comparison", open=True):
                    with gr.Row():
                        sweep_parameter = gr.Dropdown(ex.sweep_fields("par"), value="tau", label="Sweep parameter",
                                                      info="Tokens kept as this slider sweeps its range")
                    with gr.Row():
                        sweep_plot = gr.Plot(label="Sweep", elem_id="sweep")
                        compare_bar = gr.Plot(label="Tokens per method", elem_id="compare-bar")
                    gallery = gr.Gallery(label="All methods at the current token budget", columns=4, height=280, format="jpeg",
                                         elem_id="compare-gallery")
                with gr.Accordion("Ask the LLM", open=True):
                    with gr.Row():
                        ask_btn = gr.Button("Ask", variant="primary", scale=0, min_width=120)
                        max_new_tokens = gr.Slider(8, 256, value=config.max_new_tokens, step=8,
                                                   label="Max new tokens")
                    with gr.Row():
                        full_answer = gr.Textbox(label="Answer from all visual tokens", lines=4, elem_id="answer-full")
                        reduced_answer = gr.Textbox(label="Answer from the reduced tokens", lines=4,
                                                    elem_id="answer-reduced")
                    answer_stats = gr.Markdown()
                    answer_json = gr.JSON(visible=False)
                with gr.Accordion("Summary and export", open=False):
                    summary = gr.JSON(label="Summary", elem_id="summary")
                    with gr.Row():
                        export_btn = gr.Button("Export JSON + PNG")
                        export_json = gr.File(label="Settings and summary (JSON)")
                        export_png = gr.File(label="Overlays (PNG)")
                with gr.Accordion("How the methods work", open=False):
                    gr.Markdown(METHODS_HELP)

        controls = [image, prompt, method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier,
                    alpha, spatial, rewrite, attention, merge, neighbours, budget, seed, model]
        picture_outputs = [kept_img, groups_img, heat_img, histogram, funnel, readout, summary, state]
        compare_outputs = [sweep_plot, gallery, compare_bar, state]
        redraw = dict(preprocess=False, trigger_mode="always_last", show_progress="hidden",
                      concurrency_id="redraw", concurrency_limit=4)

        # A new image, prompt or model may need an encode (≈ 1 s): show progress. A control move only redraws
        # (≈ 10 ms) and gets its own event without a progress overlay: in headless Chromium that halved the time
        # from a slider click to the new overlay (bench/RESULTS-latency.md).
        main = gr.on(
            [explore_btn.click, image.change, prompt.submit, model.change],
            explore, inputs=controls + [state], outputs=picture_outputs, api_name="explore",
            **dict(redraw, show_progress="minimal"),
        )
        move = gr.on(
            [c.change for c in (method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier, alpha,
                                spatial, rewrite, attention, merge, neighbours, budget, seed)],
            explore, inputs=controls + [state], outputs=picture_outputs, api_visibility="private", **redraw,
        )
        main.success(compare, inputs=controls + [sweep_parameter, state], outputs=compare_outputs,
                     api_name="compare", **redraw)
        move.success(compare, inputs=controls + [sweep_parameter, state], outputs=compare_outputs,
                     api_visibility="private", **redraw)
        sweep_parameter.change(compare, inputs=controls + [sweep_parameter, state], outputs=compare_outputs,
                               api_visibility="undocumented", **redraw)
        method.change(lambda m: gr.Dropdown(choices=ex.sweep_fields(m) or ["(none)"],
                                            value=(ex.sweep_fields(m) or ["(none)"])[0]),
                      method, sweep_parameter, api_visibility="private", queue=False)
        ask_btn.click(answer, inputs=controls + [max_new_tokens, state],
                      outputs=[full_answer, reduced_answer, answer_stats, answer_json, state], api_name="answer",
                      preprocess=False, concurrency_id="generate", concurrency_limit=1)
        export_btn.click(export, inputs=[summary, kept_img, groups_img, heat_img], outputs=[export_json, export_png],
                         api_name="export", preprocess=False, concurrency_id="redraw")
        model.change(lambda m: _notice(explorer, m), model, notice, api_visibility="private", queue=False)
    return demo


def _notice(explorer: Explorer, model: str | None = None) -> str:
    name = model or explorer.config.model
    if name == OFFLINE:
        return ("> ⚠️ **Offline default: untrained vision weights — answers are not grounded in the image.** "
                "The vision tower and projector are seeded random weights (no model hub here), the LLM is the real "
                "SmolLM2-135M-Instruct. Patch selection, clusters and FLOPs are computed exactly, but on features "
                "that carry no meaning. Run with `--model llava-hf/llava-1.5-7b-hf` on a GPU for real behaviour.")
    return f"Model: `{name}` (loaded on first use)."


def _answer_stats(full, reduced, info: dict) -> str:
    f, r = answer_dict(full), answer_dict(reduced)
    rows = [
        "| | visual tokens fed | prefill | total |",
        "|---|---:|---:|---:|",
        f"| all tokens | {f['n_visual_tokens']} | {1000 * f['prefill_s']:.0f} ms | {f['total_s']:.2f} s |",
        f"| reduced | {r['n_visual_tokens']} | {1000 * r['prefill_s']:.0f} ms | {r['total_s']:.2f} s |",
    ]
    if info.get("prompt_truncated_to_chars"):
        rows.append(f"\nℹ️ The prompt was cut to its first {info['prompt_truncated_to_chars']} characters.")
    if info.get("untrained_vision"):
        rows.append("\n⚠️ Untrained vision weights — both answers come from the real LLM reading meaningless "
                    "image tokens; they are not grounded in the image.")
    return "\n".join(rows)


def launch_kwargs(config) -> dict:
    """Loopback unless GRADIO_SERVER_NAME says otherwise; never share by default."""
    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size="50mb",
        show_error=False,
        share=False,
    )
