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
    yield "histogram", plots.attention_histogram(attn, 0.1, 0.4, 0.85, kept_mask=kept)
    yield "histogram, constant attention", plots.attention_histogram(np.full(16, 1 / 16), 1 / 16, 1 / 16, 1 / 16)
    yield "histogram, no fence", plots.attention_histogram(attn, None, None, None)
    yield "funnel", plots.stage_funnel({"tokens": 576, "retrieved": 288, "routed": 100, "kept": 60})
    xs = np.linspace(0, 1, 41)
    yield "sweep", plots.sweep_plot(xs, (576 * (1 - xs)).astype(int), 0.3, "tau")
    yield "sweep with clusters", plots.sweep_plot(xs, (576 * xs).astype(int), 0.8, "cluster_threshold",
                                                  clusters=np.arange(41))
    yield "comparison", plots.comparison_bar([{"method": "par", "n_kept": 60}, {"method": "random", "n_kept": 60}])


@pytest.mark.parametrize("name,fig", list(figures()), ids=[n for n, _ in figures()])
def test_every_figure_passes_plotlys_validators(name, fig):
    assert validated(fig).to_plotly_json()["data"], name


@pytest.mark.parametrize("name,fig", list(figures()), ids=[n for n, _ in figures()])
def test_every_figure_serialises_as_gradio_sends_it(name, fig):
    out = json.loads(fig.to_json())  # what gr.Plot.postprocess sends to the browser
    assert out["data"] and out["layout"]["title"]["text"]
    assert not out["layout"].get("template"), "plotly's default template (≈ 10 kB) sent with every figure"


def test_histogram_counts_every_patch_once_and_marks_the_fence():
    attn = np.linspace(0, 1, 100)
    fig = plots.attention_histogram(attn, 0.25, 0.75, 1.5, kept_mask=attn > 0.9)
    dropped, kept = (np.asarray(trace.y) for trace in fig.data)
    assert dropped.sum() + kept.sum() == 100 and kept.sum() == (attn > 0.9).sum()
    assert [s.x0 for s in fig.layout.shapes] == [0.25, 0.75, 1.5]
