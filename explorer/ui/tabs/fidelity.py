"""The Fidelity tab: how much of the full-token answer survives each method at the matched budget and the
current method across budgets, streamed a row at a time."""

from __future__ import annotations

import html
import gradio as gr

from ..common import one_sentence
from ..layout import Screen


@one_sentence
def fidelity(ui: Screen, max_new_tokens, state, progress=gr.Progress()):
    """How much of the full-token answer survives each method at the matched budget and the current
    method across budgets: greedy answers, exact/F1 match, log-prob drop, first-token KL, prefill, FLOPs.
    Streams a row at a time (Stop cancels between rows)."""
    page = ui.layout
    for rows, done, total in ui.explorer.fidelity(state, max_new_tokens):
        progress(done / total, desc=f"{done} of {total} answers")
        yield {page.fidelity_table: fidelity_rows(rows), page.fidelity_plot: fidelity_figure(rows),
               page.fidelity_note: fidelity_status(rows, done, total)}


FIDELITY_COLUMNS = ["group", "what", "label", "n_kept", "answer", "match", "f1", "logprob_drop", "kl",
                    "prefill_s", "flops_ratio"]


def fidelity_rows(rows: list[dict]) -> dict:
    """Rows for a gr.Dataframe: one per reduction (the full-token reference first)."""
    def cell(row, name):
        value = row.get("flops", {}).get("ratio") if name == "flops_ratio" else row.get(name)
        return round(value, 4) if isinstance(value, float) else value

    return {"headers": FIDELITY_COLUMNS, "data": [[cell(r, c) for c in FIDELITY_COLUMNS] for r in rows]}


def fidelity_figure(rows: list[dict]):
    from ...pictures import plots

    points = [r for r in rows if r.get("n_kept") is not None and r.get("logprob_drop") is not None]
    return plots.fidelity_plot([{"label": r["label"], "n_kept": max(1, r["n_kept"]),
                                 "logprob_drop": r["logprob_drop"], "kl": r["kl"]} for r in points])


def fidelity_status(rows: list[dict], done: int, total: int) -> str:
    full = rows[0]
    head = f"{done} of {total} answers" + ("" if done == total else " — running (Stop cancels)")
    return (f"{head}. Full-token answer: “{html.escape(full['answer'])}”. `logprob_drop`: how much less likely "
            "the full-token answer becomes (mean nats per token); `kl`: KL(full ‖ reduced) of the first answer "
            "token. The model is the one named at the top (see its notice).")
