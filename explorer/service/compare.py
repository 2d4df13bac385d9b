"""Many reductions of one image at once: the sweep of one slider, every method at a matched budget (the
comparison gallery and bar chart), and the pinned result A against the current one B."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from reducers import VisualTokens
from reducers.inllm import accounting

from ..backend.protocol import Backend, Encoded
from ..errors import InputError
from ..pictures import plots
from ..session import Pinned, Session
from ..settings import Settings
from . import pipeline, screen, view

if TYPE_CHECKING:
    from . import Explorer


def sweep_and_compare(x: Explorer, image, prompt, settings: Settings, sweep_name: str | None, session: Session,
                      model=None, equivalent: bool = False):
    """The sweep plot, the comparison gallery [(thumbnail, caption)], the comparison bar chart, the session
    (`equivalent`: matched on the current method's equivalent tokens, see `comparison_view`)."""
    backend, enc, session = pipeline.encoded(x, image, session, model)
    prompt = pipeline.clip_prompt(x, prompt)
    red, vt, _ = pipeline.reduce(x, backend, enc, prompt, settings)
    budget = round(accounting(red, int(backend.lm_config.num_hidden_layers))["equivalent_tokens"]) \
        if equivalent else red.n_kept
    gallery, bars = comparison_view(x, backend, enc, prompt, settings, budget, equivalent)
    return sweep_figure(vt, settings, sweep_name), gallery, bars, session


def sweep_figure(vt: VisualTokens, settings: Settings, sweep_name: str | None):
    """Tokens to the LLM as one slider of the active method sweeps its range (`view.sweep`), as a figure."""
    result = view.sweep(vt, settings, sweep_name)
    if result is None:
        return plots.sweep_plot(np.array([0.0, 1.0]), np.array([vt.n, vt.n]), 0.0,
                                f"{settings.entry.label} has no slider to sweep")
    xs, counts, clusters, current, name = result
    return plots.sweep_plot(xs, counts, current, name, clusters=clusters)


def comparison_view(x: Explorer, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int,
                    equivalent: bool = False):
    """Every method at the budget M (`comparison`): the gallery [(half-size thumbnail, caption)] and the bar
    chart; `equivalent`: budget methods matched on equivalent tokens (the mean over the LLM's layers of the
    visual tokens present) instead of the tokens after the last cut, and the bars show equivalent tokens."""
    small = screen.canvas(x, backend, enc).small
    n_layers = int(backend.lm_config.num_hidden_layers)
    gallery, bars = [], []
    for method, r, matched in comparison(x, backend, enc, prompt, settings, budget, equivalent):
        label = x.schema.entry(method).label
        eq = accounting(r, n_layers)["equivalent_tokens"]
        if not matched:
            how = "at its own settings"
        elif equivalent:
            how = f"{'at' if round(eq) == budget else 'nearest to'} equivalent M = {budget}"
        else:
            how = f"at M = {budget}" if r.n_kept == budget else f"nearest grid to M = {budget}"
        count = f"{r.n_kept} tokens, {eq:.0f} equivalent" if eq != r.n_kept else f"{r.n_kept} tokens"
        gallery.append((small.kept(r.kept_mask.cpu(), samples=view.samples(r)), f"{label} · {count} ({how})"))
        bars.append({"label": label, "n_kept": round(eq if equivalent else r.n_kept), "matched": matched})
    return gallery, plots.comparison_bar(bars, budget, equivalent=equivalent)


def comparison(x: Explorer, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int,
               equivalent: bool = False):
    """[(method, Reduction, matched)] for every method this backend and prompt can feed."""
    rows = []
    match = (enc.tokens.n, int(backend.lm_config.num_hidden_layers)) if equivalent else None
    for method, entry, other in pipeline.at_budget(x, settings, budget, match):
        try:
            red, _, _ = pipeline.reduce(x, backend, enc, prompt, other)
        except InputError:  # e.g. PAR without a prompt on a text tower: not comparable here
            continue
        rows.append((method, red, entry.budgeted))
    return rows


def pin(x: Explorer, session: Session) -> Pinned:
    """The session's last result as A, to compare later results with (kept in its own session value)."""
    _, enc, settings, red, _ = pipeline.last(x, session)
    return Pinned(enc.key, tuple(red.kept.tolist()), red.n_kept, settings.label())


def pin_diff(x: Explorer, session: Session, a: Pinned):
    """The pinned result A against the current one B: a picture and a line of numbers."""
    backend, enc, settings, red, _ = pipeline.last(x, session)
    if a.image != enc.key:
        return None, "A was pinned on another image: pin again on this one."
    b_kept = red.kept.tolist()
    only_a, only_b = set(a.kept) - set(b_kept), set(b_kept) - set(a.kept)
    text = (f"**A** {a.label} → {a.n_kept} tokens · **B** {settings.label()} → {red.n_kept} tokens · "
            f"kept-set overlap (Jaccard) **{view.jaccard(a.kept, b_kept):.3f}** · only in A: {len(only_a)} "
            f"patches (red) · only in B: {len(only_b)} (blue)")
    return screen.canvas(x, backend, enc).diff(list(a.kept), b_kept), text
