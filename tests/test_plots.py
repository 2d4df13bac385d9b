"""explorer/plots.py builds figures without plotly's validators (speed); here every figure goes through them."""

import json

import numpy as np
import plotly.graph_objects as go
import pytest

from explorer.pictures import plots


def validated(fig: go.Figure) -> go.Figure:
    """Re-build the figure with plotly's validators on: raises ValueError on any unknown or bad property."""
    return go.Figure(fig.to_plotly_json())


def figures():
    rng = np.random.default_rng(0)
    attn = rng.random(576) ** 4
    kept = attn > 0.5
    fence = [(0.1, "Q1", "quartile"), (0.4, "Q3", "quartile"), (0.85, "fence", "fence")]
    yield "histogram", plots.score_histogram(attn, kept, "CLS attention", "attention", fence)
    yield "histogram, log x", plots.score_histogram(np.geomspace(1e-6, 1e-1, 576), kept, "CLS attention", "attention",
                                                     fence)
    yield "histogram, constant", plots.score_histogram(np.full(16, 1 / 16), None, "c", "c",
                                                       [(1 / 16, "Q1", "quartile")] * 3)
    yield "histogram, no lines", plots.score_histogram(attn, None, "CLS attention", "attention")
    yield "funnel with a tiny stage", plots.stage_funnel({"tokens": 576, "outliers": 1, "to LLM": 2})
    yield "funnel", plots.stage_funnel({"tokens": 576, "retrieved": 288, "routed": 100, "kept": 60})
    xs = np.linspace(0, 1, 41)
    yield "sweep", plots.sweep_plot(xs, (576 * (1 - xs)).astype(int), 0.3, "tau")
    yield "sweep with clusters", plots.sweep_plot(xs, (576 * xs).astype(int), 0.8, "cluster_threshold",
                                                  clusters=np.arange(41))
    yield "comparison", plots.comparison_bar([{"label": "PAR", "n_kept": 60, "matched": False},
                                              {"label": "Random", "n_kept": 60, "matched": True}], 60)
    yield "fidelity", plots.fidelity_plot([{"label": "Random", "n_kept": 32, "logprob_drop": 0.5, "kl": 0.1},
                                           {"label": "Random", "n_kept": 64, "logprob_drop": 0.2, "kl": 0.05}])


@pytest.mark.parametrize("name,fig", list(figures()), ids=[n for n, _ in figures()])
def test_every_figure_passes_plotlys_validators(name, fig):
    assert validated(fig).to_plotly_json()["data"], name


@pytest.mark.parametrize("name,fig", list(figures()), ids=[n for n, _ in figures()])
def test_every_figure_serialises_as_gradio_sends_it(name, fig):
    out = json.loads(fig.to_json())  # what gr.Plot.postprocess sends to the browser
    assert out["data"] and out["layout"]["title"]["text"]
    assert not out["layout"].get("template"), "plotly's default template (≈ 10 kB) sent with every figure"


def test_histogram_counts_every_patch_once_and_marks_only_the_given_lines():
    attn = np.linspace(0, 1, 100)
    lines = [(0.75, "Q3", "quartile"), (0.25, "Q1", "quartile"), (1.5, "fence", "fence")]
    fig = plots.score_histogram(attn, attn > 0.9, "t", "x", lines)
    dropped, kept = (np.asarray(trace.y) for trace in fig.data)
    assert dropped.sum() + kept.sum() == 100 and kept.sum() == (attn > 0.9).sum()
    assert [s.x0 for s in fig.layout.shapes] == [0.25, 0.75, 1.5]
    assert [a.text for a in fig.layout.annotations] == ["Q1", "Q3", "fence"]
    assert len({a.y for a in fig.layout.annotations}) == 3, "labels of close lines are staggered"
    assert not plots.score_histogram(attn, None, "t", "x").layout.shapes, "no fence where the method has none"


def test_heavy_tailed_scores_get_a_log_axis_and_counts_survive():
    attn = np.geomspace(1e-6, 1e-1, 576)
    fig = plots.score_histogram(attn, attn > 1e-3, "t", "x")
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert sum(np.asarray(t.y).sum() for t in fig.data) == 576


def test_funnel_labels_counts_not_zero_percent():
    fig = plots.stage_funnel({"tokens": 576, "outliers": 1, "to LLM": 2})
    assert list(fig.data[0].text) == ["576", "1 (0.2 %)", "2 (0.3 %)"]
