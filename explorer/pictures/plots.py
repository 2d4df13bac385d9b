"""Pure plotly figures (arrays in, `go.Figure` out): no model, no gradio, no matplotlib on the hot path.

Each figure is written as the plain dict plotly.js reads and wrapped in `go.Figure` without plotly's per-property
validation (`_figure`): about 0.5 ms per figure, where validation costs 5–7 ms and plotly's templates and
`add_vline`/`update_layout` helpers 30–60 ms. So they are rebuilt on every slider move. tests/test_plots.py
checks every figure against plotly's validators, so skipping them here hides no mistake.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

KEPT = "#f5b700"  # amber, as the kept outline in draw.py
DROPPED = "#8d99ae"
FENCE = "#d62828"
QUARTILE = "#3a86ff"
GRID = "#e5e7eb"


def _figure(data: list, layout: dict) -> go.Figure:
    return go.Figure(dict(data=data, layout=layout), _validate=False)


def _layout(title: str, xtitle: str = "", ytitle: str = "", **extra) -> dict:
    """A light, template-free layout (white background, grey grid, legend on top)."""
    axis = dict(gridcolor=GRID, zerolinecolor=GRID, linecolor="#9ca3af", automargin=True)
    layout = dict(
        template={},  # not None: plotly would deep-copy its default template into every figure (≈ 1 ms, 10 kB)
        title=dict(text=title, x=0.02, font=dict(size=14)),
        paper_bgcolor="white", plot_bgcolor="white", height=230,
        margin=dict(l=50, r=20, t=40, b=45),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        xaxis=dict(axis, title=dict(text=xtitle)), yaxis=dict(axis, title=dict(text=ytitle)),
    )
    layout.update(extra)
    return layout


LINE_COLOURS = {"quartile": QUARTILE, "fence": FENCE, "cut": FENCE, "current": FENCE}


def _vlines(lines, log_x: bool = False) -> tuple[list, list]:
    """Vertical lines over the plot's height with their labels at the top, staggered so that close lines
    (Q1 and Q3 are often a hair apart) do not write over each other: (shapes, annotations). On a log x axis
    plotly places annotations at log10(x) (shapes take x itself)."""
    shapes, notes = [], []
    for i, (x, label, kind) in enumerate(sorted(lines, key=lambda line: line[0])):
        at = float(np.log10(x)) if log_x and x > 0 else x
        colour = LINE_COLOURS.get(kind, FENCE)
        dash = "dot" if kind == "quartile" else "dash"
        shapes.append(dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=colour, dash=dash, width=2)))
        notes.append(dict(x=at, y=1.0 - 0.09 * (i % 3), yref="paper", text=label, showarrow=False, xanchor="left",
                          yanchor="top", xshift=3, font=dict(color=colour, size=11), bgcolor="rgba(255,255,255,0.8)"))
    return shapes, notes


def _log_bins(values: np.ndarray, n_bins: int) -> np.ndarray | None:
    """Geometric bin edges over positive `values` spanning more than two decades (attention is heavy-tailed:
    on a linear axis every quartile sits in the first bin), else None."""
    if values.size == 0 or values.min() <= 0:
        return None
    lo, hi = float(values.min()), float(values.max())
    if hi / lo < 100:
        return None
    return np.geomspace(lo, hi * (1 + 1e-9), n_bins + 1)


def _bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-6), lo + 0.5 * max(abs(lo), 1e-6)
    return np.linspace(lo, hi, n_bins + 1)


def score_histogram(values: np.ndarray, kept_mask: np.ndarray | None, title: str, xlabel: str,
                    lines: Sequence[tuple[float, str, str]] = (), n_bins: int = 60) -> go.Figure:
    """Histogram of a per-patch score (CLS attention, PAR's hybrid relevance, FastV's LLM attention), kept
    and dropped patches stacked, with the method's thresholds as labelled vertical lines `(x, label, kind)`
    (kind "quartile" | "fence" | "cut"): only the lines the method really uses.

    Counts are computed with numpy (one bar trace per group), so the figure is small and shows exactly the
    numbers the reducer used; the count axis is logarithmic (ticks at 1, 10, 100, …) because outliers are few.
    """
    values = np.nan_to_num(np.asarray(values, np.float64).reshape(-1))
    kept = np.zeros(values.size, bool) if kept_mask is None else np.asarray(kept_mask, bool).reshape(-1)
    edges = _log_bins(values, n_bins)
    log_x = edges is not None
    if not log_x:
        edges = _bins(values, n_bins)
    centres = np.sqrt(edges[:-1] * edges[1:]) if log_x else (edges[:-1] + edges[1:]) / 2
    data = []
    for name, mask, colour in (("dropped", ~kept, DROPPED), ("kept", kept, KEPT)):
        counts, _ = np.histogram(values[mask], bins=edges)
        data.append(dict(type="bar", x=centres, y=counts, width=np.diff(edges), name=f"{name} ({int(mask.sum())})",
                         marker=dict(color=colour), hovertemplate="%{x:.3g}<br>%{y} patches<extra></extra>"))
    shapes, notes = _vlines([line for line in lines if line[0] is not None and np.isfinite(line[0])], log_x)
    layout = _layout(title, "", "patches", barmode="stack", bargap=0, shapes=shapes, annotations=notes,
                     legend=dict(orientation="h", yanchor="top", y=-0.24, xanchor="left", x=0.0),
                     margin=dict(l=50, r=20, t=40, b=64))
    layout["yaxis"].update(type="log", dtick=1, exponentformat="none", tickformat="d")
    layout["xaxis"].update(hoverformat=".3g", exponentformat="power")
    if log_x:
        layout["xaxis"]["type"] = "log"
        layout["xaxis"]["dtick"] = 1
    layout["title"]["text"] = f"{title}<br><sub>{xlabel}{' (log scale)' if log_x else ''}</sub>"
    return _figure(data, layout)


def stage_funnel(stages: Mapping[str, int]) -> go.Figure:
    """Token counts through the method's stages (N → … → to LLM): each bar labelled with its count (a 1-token
    stage reads "1", never "0 %")."""
    names, counts = list(stages), [int(v) for v in stages.values()]
    total = max(counts[0], 1)
    colours = [DROPPED] * (len(names) - 1) + [KEPT]
    text = [f"{c} ({100 * c / total:.1f} %)" if 0 < c < total else str(c) for c in counts]
    data = [dict(type="funnel", y=names, x=counts, text=text, textinfo="text", textposition="auto",
                 insidetextfont=dict(color="white"), outsidetextfont=dict(color="#111827"), constraintext="none",
                 marker=dict(color=colours), hovertemplate="%{y}: %{x} tokens<extra></extra>", cliponaxis=False)]
    layout = _layout("Tokens through the stages", margin=dict(l=90, r=20, t=40, b=20))
    return _figure(data, layout)


def sweep_plot(xs: np.ndarray, counts: np.ndarray, current: float, name: str,
               clusters: np.ndarray | None = None) -> go.Figure:
    """Tokens to the LLM (and cluster count, if given) as one parameter sweeps its range; current value marked."""
    xs, counts = np.asarray(xs, np.float64), np.asarray(counts)
    data = [dict(type="scatter", x=xs, y=counts, mode="lines+markers", name="tokens to LLM",
                 line=dict(color=KEPT, shape="hv"), hovertemplate=f"{name} %{{x:.3g}}<br>%{{y}} tokens<extra></extra>")]
    if clusters is not None:
        data.append(dict(type="scatter", x=xs, y=np.asarray(clusters), mode="lines", name="clusters",
                         line=dict(color=QUARTILE, shape="hv", dash="dot")))
    shapes, notes = _vlines([(float(current), "current", "current")])
    layout = _layout(f"Tokens kept as {name} sweeps its range", name, "tokens", shapes=shapes, annotations=notes)
    return _figure(data, layout)


def comparison_bar(rows: Sequence[Mapping[str, object]], budget: int, equivalent: bool = False) -> go.Figure:
    """Tokens to the LLM per method (rows: {"label", "n_kept", "matched"}): budget methods at the matched
    budget M, adaptive methods at their own settings (hatched, and said in the legend); `equivalent`: the
    counts are equivalent tokens (mean over the LLM's layers) and M was matched on them."""
    data = []
    what = "equivalent tokens" if equivalent else "budget"
    for matched, name, colour in ((True, f"at the matched {what} M = {budget}", KEPT),
                                  (False, "adaptive: at its own settings", DROPPED)):
        group = [r for r in rows if bool(r["matched"]) == matched]
        if group:
            counts = [int(r["n_kept"]) for r in group]
            data.append(dict(type="bar", x=[str(r["label"]) for r in group], y=counts, name=name, text=counts,
                             textposition="outside", marker=dict(color=colour), cliponaxis=False))
    layout = _layout("Equivalent tokens per method (mean over the LLM's layers)" if equivalent
                     else "Tokens to the LLM per method", "", "tokens",
                     legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0))
    layout["xaxis"]["tickangle"] = -30
    return _figure(data, layout)


def fidelity_plot(rows: Sequence[Mapping[str, object]], metric: str = "logprob_drop") -> go.Figure:
    """The accuracy–efficiency picture for one image: `metric` (log-prob drop or first-token KL) against the
    tokens kept, one line of markers per method (rows: {"label", "n_kept", metric})."""
    titles = {"logprob_drop": "drop in mean log-prob of the full-token answer (nats)",
              "kl": "KL(full ‖ reduced) of the first answer token (nats)"}
    data = []
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    for label in labels:
        group = sorted((r for r in rows if str(r["label"]) == label), key=lambda r: int(r["n_kept"]))
        data.append(dict(type="scatter", mode="lines+markers", name=label, x=[int(r["n_kept"]) for r in group],
                         y=[float(r[metric]) for r in group],
                         hovertemplate=f"{label}<br>%{{x}} tokens<br>%{{y:.3g}}<extra></extra>"))
    layout = _layout("Fidelity against tokens kept (this image and prompt)", "visual tokens to the LLM",
                     titles.get(metric, metric), height=360,
                     legend=dict(orientation="v", yanchor="top", y=1.0, xanchor="left", x=1.02),
                     margin=dict(l=60, r=20, t=40, b=45))
    layout["xaxis"]["type"] = "log"
    return _figure(data, layout)
