"""The Answers tab: greedy answers from all visual tokens and from the reduced ones, streamed, stamped with what
produced them and marked stale as soon as the screen shows something else."""

from __future__ import annotations

import contextlib
import html
import gradio as gr

from ...session import Session, answers_stale
from ...settings import METHOD
from ..common import one_sentence, upload_path
from .pin import history_choices
from ..layout import Screen


@one_sentence
def answer(ui: Screen, image, prompt, method, model, query_points, max_new_tokens, state, progress=gr.Progress(),
           **controls):
    """Greedy answers from all visual tokens and from exactly the reduced ones, stamped with the settings,
    prompt and token count that produced them. Streams the text token by token; a client that goes away
    (or cancels) stops the generation at the next token."""
    page = ui.layout
    texts = {"full": "", "reduced": ""}
    settings = ui.settings(method, controls, query_points)
    with contextlib.closing(ui.explorer.answer_stream(upload_path(image), prompt, settings, state, model or None,
                                                      max_new_tokens, progress)) as stream:
        for kind, value in stream:
            if kind == "done":
                full, reduced, info, _ = value
                break
            texts[kind] = value
            yield {page.full_answer: texts["full"], page.reduced_answer: texts["reduced"]}
    yield {page.full_answer: full.text, page.reduced_answer: reduced.text, page.answer_md: answer_stats(info),
           page.stale_md: "", page.answers_box: gr.Column(elem_classes=[]), page.answer_info: info,
           page.answers: info}


def after_move(ui: Screen, state, answers):
    """Answers marked stale when the screen no longer shows what produced them; the history."""
    page, session = ui.layout, ui.explorer.session(state)
    stale = stale_note(session, answers)
    return {page.stale_md: stale, page.answers_box: gr.Column(elem_classes=["stale"] if stale else []),
            page.history: history_choices(session)}


def after_explore(ui: Screen, state, answers):
    """`after_move`, and the budget sliders run up to the new image's N (a move cannot change N)."""
    n = ui.explorer.session(state).n_tokens
    return {**after_move(ui, state, answers),
            **{c: gr.update(maximum=n) if n else gr.skip() for c in ui.layout.budget_controls}}


def stale_note(session: Session, answers: dict | None) -> str:
    """'settings changed — Ask again' when the answers on screen were produced by other settings."""
    return "⚠️ Settings changed since these answers — Ask again." if answers_stale(answers, session) else ""


def answer_stats(info: dict) -> str:
    f, r, st = info["full"], info["reduced"], info["stamp"]

    def row(name, a):
        speed = f"{a['tokens_per_s']:.1f} tok/s" if a["tokens_per_s"] else "—"
        return (f"| {name} | {a['n_visual_tokens']} | {a['n_prompt_tokens']} | {1000 * a['prefill_s']:.0f} ms | "
                f"{a['n_new_tokens']} | {a['decode_s']:.2f} s | {speed} |")

    settings = ", ".join(f"{k}={v}" for k, v in st["described"].items() if k != METHOD) or "no settings"
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
