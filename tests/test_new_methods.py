"""CDPruner, DART and VisPruner reach every tool by the registry alone: explore (pictures, histogram, readout,
per-patch export, inspector), the matched-budget comparison, the sweep, the fidelity plan and the batch tool's
plan — in process, on the synthetic backend. And VisionZip's CLS token leads the tokens the LLM receives."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from explorer import evaluate
from explorer.service import view as ex
from explorer.backend.synthetic import SyntheticBackend
from explorer.config import ExplorerConfig
from explorer.service import Explorer

NEW = ("cdpruner", "dart", "vispruner")


@pytest.fixture(scope="module")
def session():
    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: SyntheticBackend(
        grid=(12, 16), width=64, joint_width=32, view_side=192))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8))
    backend, enc, state = explorer.encoded(image, None)
    return explorer, backend, enc, state


@pytest.mark.parametrize("method", NEW)
def test_explore_shows_the_methods_own_trace(session, method):
    explorer, backend, enc, state = session
    settings = explorer.settings({"method": method, "budget": 37})
    red, vt, _ = explorer.reduce(backend, enc, "what is on the table?", settings)
    assert red.n_kept == 37 and red.trace is not None
    label, heat = red.trace.heat()
    values, caption = ex.heat_values(vt, red, "official")
    assert caption == label and np.allclose(values, heat.numpy())
    hist = ex.histogram(vt, red, settings)
    assert hist.layout.title.text.startswith(label)
    flops = ex.flops_summary(backend.lm_config, 20, red)
    summary = ex.summary(red, vt, settings, flops)
    assert summary["method_notes"] == red.trace.readout()
    for line in summary["method_notes"]:
        assert line in ex.readout_markdown(summary, red)
    columns = red.trace.per_patch()
    assert set(columns) <= set(summary["per_patch"]) and all(len(summary["per_patch"][c]) == vt.n for c in columns)
    json.dumps(summary["per_patch"], allow_nan=False)  # NaN (no value for a patch) goes out as null
    info = ex.inspect_patch(vt, red, int(red.kept[0]))
    assert info["lines"] == red.trace.inspect(int(red.kept[0])) and info["position_in_llm_input"] == 0


def test_comparison_sweep_fidelity_and_batch_include_them(session):
    explorer, backend, enc, state = session
    settings = explorer.settings({"method": "par"})
    rows = {method: red for method, red, matched in explorer.comparison(backend, enc, "a cat?", settings, 40)}
    for method in NEW:
        assert rows[method].n_kept == 40, method
    plan = {(group, s.method) for group, _, s in explorer.fidelity_plan(backend, enc, "a cat?", settings, 40)}
    assert {("every method at M", m) for m in NEW} <= plan
    for method in NEW:
        s = explorer.settings({"method": method})
        _, vt, _ = explorer.reduce(backend, enc, "a cat?", s)
        xs, counts, _, _, name = ex.sweep(vt, s, "budget")
        assert name == "budget" and counts[-1] == vt.n and counts[0] == 1
        assert any(g.endswith("across budgets") for g, _, _ in explorer.fidelity_plan(backend, enc, "a cat?", s, 40))
    units = evaluate.plan(evaluate.parse_methods(",".join(NEW)), [16, 64])
    assert [(m, b) for m, b in units if m in NEW] == [(m, b) for m in NEW for b in (16, 64)]


def test_explain_gives_formula_and_paper(session):
    from explorer.ui.tabs.explain import explain_markdown
    from reducers import REDUCERS

    text = explain_markdown(session[0], None)
    for method in NEW:
        assert REDUCERS[method].formula in text and REDUCERS[method].paper in text


def test_visionzip_hands_cls_first(session):
    explorer, backend, enc, state = session
    red, vt, _ = explorer.reduce(backend, enc, "", explorer.settings({"method": "visionzip", "budget": 64}))
    assert red.n_lead == 1 and np.array_equal(red.tokens[0].numpy(), vt.cls_feature.numpy())
    assert np.array_equal(red.patch_tokens.numpy(), vt.features[red.kept].numpy())
    info = ex.inspect_patch(vt, red, int(red.kept[0]))
    assert info["position_in_llm_input"] == 1 and info["token"] == 1
