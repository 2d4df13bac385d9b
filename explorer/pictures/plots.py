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
        paper_bgcolor="white", plot_bgcolor="white", height=300,
        margin=dict(l=50, r=20, t=40, b=45),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
        xaxis=dict(axis, title=dict(text=xtitle)), yaxis=dict(axis, title=dict(text=ytitle)),
    )
    layout.update(extra)
    return layout


def _vline(x: float, label: str, colour: str, dash: str) -> tuple[dict, dict]:
    """A vertical line over the whole plot height and its label: (shape, annotation)."""
    shape = dict(type="line", x0=x, x1=x, y0=0, y1=1, yref="paper", line=dict(color=colour, dash=dash, width=2))
    note = dict(x=x, y=1, yref="paper", text=label, showarrow=False, yanchor="bottom", font=dict(color=colour))
    return shape, note


def _bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-6), lo + 0.5 * max(abs(lo), 1e-6)
    return np.linspace(lo, hi, n_bins + 1)


def attention_histogram(attn: np.ndarray, q1: float | None, q3: float | None, fence: float | None,
                        kept_mask: np.ndarray | None = None, n_bins: int = 60) -> go.Figure:
    """Histogram of CLS→patch attention, kept and dropped patches stacked, with Q1, Q3 and the IQR fence.

    Counts are computed with numpy (one bar trace per group), so the figure is small and shows exactly the
    numbers the reducer used; the count axis is logarithmic because outliers are few.
    """
    attn = np.nan_to_num(np.asarray(attn, np.float64).reshape(-1))
    kept = np.zeros(attn.size, bool) if kept_mask is None else np.asarray(kept_mask, bool).reshape(-1)
    edges = _bins(attn, n_bins)
    centres, width = (edges[:-1] + edges[1:]) / 2, float(edges[1] - edges[0])
    data = []
    for name, mask, colour in (("dropped", ~kept, DROPPED), ("kept", kept, KEPT)):
        counts, _ = np.histogram(attn[mask], bins=edges)
        data.append(dict(type="bar", x=centres, y=counts, width=width, name=f"{name} ({int(mask.sum())})",
                         marker=dict(color=colour), hovertemplate="attention %{x:.3g}<br>%{y} patches<extra></extra>"))
    shapes, notes = [], []
    for value, label, colour, dash in ((q1, "Q1", QUARTILE, "dot"), (q3, "Q3", QUARTILE, "dot"),
                                       (fence, "fence", FENCE, "dash")):
        if value is not None and np.isfinite(value):
            shape, note = _vline(float(value), label, colour, dash)
            shapes.append(shape)
            notes.append(note)
    layout = _layout("CLS → patch attention", "attention", "patches", barmode="stack", bargap=0,
                     shapes=shapes, annotations=notes)
    layout["yaxis"]["type"] = "log"
    return _figure(data, layout)


def stage_funnel(stages: Mapping[str, int]) -> go.Figure:
    """Token counts through the method's stages (N → … → to LLM)."""
    names, counts = list(stages), [int(v) for v in stages.values()]
    colours = [DROPPED] * (len(names) - 1) + [KEPT]
    data = [dict(type="funnel", y=names, x=counts, textinfo="value+percent initial", marker=dict(color=colours))]
    layout = _layout("Tokens through the stages", margin=dict(l=110, r=20, t=40, b=20))
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
    shape, note = _vline(float(current), "current", FENCE, "dash")
    layout = _layout(f"Tokens kept as {name} sweeps its range", name, "tokens", shapes=[shape], annotations=[note])
    return _figure(data, layout)


def comparison_bar(rows: Sequence[Mapping[str, object]]) -> go.Figure:
    """Tokens to the LLM per method at a matched budget (rows: {"method", "n_kept"})."""
    methods = [str(r["method"]) for r in rows]
    counts = [int(r["n_kept"]) for r in rows]
    data = [dict(type="bar", x=methods, y=counts, marker=dict(color=KEPT), text=counts, textposition="outside")]
    layout = _layout("Tokens to the LLM per method (baselines at the current method's budget)", "", "tokens")
    return _figure(data, layout)
