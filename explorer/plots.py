"""Pure plotly figures (arrays in, `go.Figure` out): no model, no gradio, no matplotlib on the hot path.

A plotly figure is a small JSON document (≈ 5 ms to build here), so these can be rebuilt on every slider move.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

KEPT = "#f5b700"  # amber, as the kept outline in draw.py
DROPPED = "#8d99ae"
FENCE = "#d62828"
QUARTILE = "#3a86ff"
LAYOUT = dict(
    template="plotly_white",
    margin=dict(l=50, r=20, t=40, b=45),
    height=300,
    legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),
)


def _bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        lo, hi = (lo - 0.5, lo + 0.5) if np.isfinite(lo) else (0.0, 1.0)
    return np.linspace(lo, hi, n_bins + 1)


def attention_histogram(attn: np.ndarray, q1: float | None, q3: float | None, fence: float | None,
                        kept_mask: np.ndarray | None = None, n_bins: int = 60) -> go.Figure:
    """Histogram of CLS→patch attention, kept and dropped patches stacked, with Q1, Q3 and the IQR fence.

    Counts are computed here with numpy (one bar trace per group) rather than by plotly.js, so the figure
    is small and identical to what the numbers say.
    """
    attn = np.nan_to_num(np.asarray(attn, np.float64).reshape(-1))
    kept = np.zeros(attn.size, bool) if kept_mask is None else np.asarray(kept_mask, bool).reshape(-1)
    edges = _bins(attn, n_bins)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    fig = go.Figure()
    for name, mask, colour in (("dropped", ~kept, DROPPED), ("kept", kept, KEPT)):
        counts, _ = np.histogram(attn[mask], bins=edges)
        fig.add_trace(go.Bar(x=centres, y=counts, width=width, name=f"{name} ({int(mask.sum())})",
                             marker_color=colour, hovertemplate="attention %{x:.3g}<br>%{y} patches"))
    fig.update_layout(barmode="stack", bargap=0, title="CLS → patch attention", xaxis_title="attention",
                      yaxis_title="patches (log)", yaxis_type="log", **LAYOUT)
    for value, label, colour, dash in ((q1, "Q1", QUARTILE, "dot"), (q3, "Q3", QUARTILE, "dot"),
                                       (fence, "fence", FENCE, "dash")):
        if value is not None and np.isfinite(value):
            fig.add_vline(x=float(value), line_color=colour, line_dash=dash, line_width=2,
                          annotation_text=label, annotation_position="top")
    return fig


def stage_funnel(stages: Mapping[str, int]) -> go.Figure:
    """Token counts through the method's stages (N → … → to LLM)."""
    names, counts = list(stages), [int(v) for v in stages.values()]
    fig = go.Figure(go.Funnel(y=names, x=counts, textinfo="value+percent initial",
                              marker_color=[DROPPED] * (len(names) - 1) + [KEPT]))
    fig.update_layout(title="Tokens through the stages", **{**LAYOUT, "margin": dict(l=110, r=20, t=40, b=20)})
    return fig


def sweep_plot(xs: np.ndarray, counts: np.ndarray, current: float, name: str,
               clusters: np.ndarray | None = None) -> go.Figure:
    """Tokens to the LLM (and cluster count, if given) as one parameter sweeps its range; current value marked."""
    xs, counts = np.asarray(xs, np.float64), np.asarray(counts)
    fig = go.Figure(go.Scatter(x=xs, y=counts, mode="lines+markers", name="tokens to LLM", line_color=KEPT,
                               line_shape="hv", hovertemplate=f"{name} %{{x:.3g}}<br>%{{y}} tokens"))
    if clusters is not None:
        fig.add_trace(go.Scatter(x=xs, y=np.asarray(clusters), mode="lines", name="clusters", line_color=QUARTILE,
                                 line_shape="hv", line_dash="dot"))
    fig.add_vline(x=float(current), line_color=FENCE, line_dash="dash", annotation_text="current",
                  annotation_position="top")
    fig.update_layout(title=f"Tokens kept as {name} sweeps its range", xaxis_title=name, yaxis_title="tokens",
                      **LAYOUT)
    return fig


def comparison_bar(rows: Sequence[Mapping[str, object]]) -> go.Figure:
    """Tokens to the LLM per method at a matched budget (rows: {"method", "n_kept"})."""
    methods = [str(r["method"]) for r in rows]
    counts = [int(r["n_kept"]) for r in rows]
    fig = go.Figure(go.Bar(x=methods, y=counts, marker_color=KEPT, text=counts, textposition="outside"))
    fig.update_layout(title="Tokens to the LLM per method (baselines at the current method's budget)",
                      yaxis_title="tokens", **LAYOUT)
    return fig
