"""SparseVLM and PyramidDrop through the service by the registry alone (synthetic backend: its `lm_stages` runs
the plans on the toy LLM): summary with equivalent tokens and the LLM's layer count, readout, per-patch export,
inspector, the comparison (also matched on equivalent tokens), the sweep, the fidelity plan, the batch tool."""

from __future__ import annotations

import json

import pytest

from explorer import evaluate as ev
from explorer.service import view as explore_mod
from explorer.backend.synthetic import SyntheticBackend
from explorer.config import ExplorerConfig
from explorer.service import Explorer
from reducers import REDUCERS
from reducers.inllm import equivalent_tokens
from tests import tiny

STAGED = ("sparsevlm", "pyramiddrop")


@pytest.fixture(scope="module")
def explorer():
    backend = SyntheticBackend(grid=(24, 24), view_side=336, cache_size=4)
    return Explorer(ExplorerConfig(encode_cache_size=4), loader=lambda config, progress=None: backend), backend


def run(explorer, method, **values):
    ex, _ = explorer
    settings = ex.settings({"method": method, **values})
    out, state = ex.explore(tiny.image(1, (96, 96)), "What color is the car?", settings)
    return out, state


@pytest.mark.parametrize("method", STAGED)
def test_summary_readout_export_and_inspector(explorer, method):
    out, state = run(explorer, method)
    s = out.summary
    layers = 30  # the synthetic backend's LM config
    assert s["llm_layers"] == layers and s["n_kept"] == out.reduction.n_kept
    assert s["equivalent_tokens"] == pytest.approx(equivalent_tokens(out.reduction.trace.schedule, layers))
    assert s["n_kept"] < s["equivalent_tokens"] < s["n_tokens"]
    assert "equivalent tokens" in out.readout and any("Visual tokens inside the LLM" in x for x in s["trace_readout"])
    per = s["per_patch"]
    assert len(per["stage1_score"]) == 576 and None not in per["stage1_score"]
    assert sorted(set(per["dropped_at_stage"])) == [0.0, 1.0, 2.0, 3.0]
    json.dumps(s, allow_nan=False)  # exportable
    assert "at LLM layer" in out.pictures.heatmap_caption and "kept outlined" in out.pictures.heatmap_caption
    patch = int(out.reduction.kept[0])
    lines = explore_mod.inspect_patch(out.tokens, out.reduction, patch)["lines"]
    assert lines[0].startswith("stage 1") and "kept" in lines[-1]


def test_every_method_in_the_comparison_and_equivalent_matching(explorer):
    ex, backend = explorer
    out, _ = run(explorer, "pyramiddrop")
    enc = backend.encode(tiny.image(1, (96, 96)))
    settings = out.settings
    rows = ex.comparison(backend, enc, out.prompt, settings, 72)
    assert [m for m, _, _ in rows] == list(REDUCERS)
    eq_rows = {m: r for m, r, _ in ex.comparison(backend, enc, out.prompt, settings, 270, equivalent=True)}
    fast = eq_rows["fastv"]
    # FastV (K = 2 of 30 layers): the budget whose (2·576 + 28·M)/30 is closest to 270 → M = 248
    assert fast.n_kept == 248 and abs((2 * 576 + 28 * 248) / 30 - 270) <= 28 / 30 / 2
    assert eq_rows["random"].n_kept == 270 and eq_rows["pyramiddrop"].n_kept == 72
    gallery, bars = ex.comparison_view(backend, enc, out.prompt, settings, 270, equivalent=True)
    captions = [c for _, c in gallery]
    assert any(c.startswith("FastV · 248 tokens, 270 equivalent (at equivalent M = 270)") for c in captions)
    # PyramidDrop on 30 layers: (8·576 + 8·288 + 8·144 + 6·72) / 30 = 283.2
    assert any(c.startswith("PyramidDrop · 72 tokens, 283 equivalent (at its own settings)") for c in captions)
    sweep, gallery2, bar2, _ = ex.sweep_and_compare(tiny.image(1, (96, 96)), out.prompt, settings, "ratio",
                                                    equivalent=True)
    assert len(gallery2) == len(REDUCERS)


def test_sweep_fidelity_plan_and_batch_tool_include_them(explorer):
    ex, backend = explorer
    out, _ = run(explorer, "pyramiddrop")
    xs, counts, _, current, name = explore_mod.sweep(out.tokens, out.settings, "ratio")
    assert name == "ratio" and counts[-1] == 576 and counts[0] == 1  # λ = 1 keeps all; 0.05 → 28, 1, 1
    for x, c in zip(xs[::6], counts[::6]):  # the predicted counts are the reducer's
        assert REDUCERS["pyramiddrop"](out.tokens, out.settings.params.__class__(ratio=float(x))).n_kept == c
    xs, counts, _, _, _ = explore_mod.sweep(out.tokens, out.settings, "first")
    by_first = dict(zip(xs.tolist(), counts.tolist()))  # drops at first, +8, +16 on the LLM's 30 layers
    assert (by_first[8], by_first[14], by_first[22], by_first[30]) == (72, 144, 288, 576)
    sv, _ = run(explorer, "sparsevlm")
    xs, counts, _, _, _ = explore_mod.sweep(sv.tokens, sv.settings, "layer1")
    assert list(xs) == [0, 1, 2, 3, 4, 5] and set(counts) == {113}, "layer1 < layer2 = 6"
    enc = backend.encode(tiny.image(1, (96, 96)))
    plan = ex.fidelity_plan(backend, enc, out.prompt, out.settings, 64)
    names = {s.entry.label for _, _, s in plan}
    assert {REDUCERS[m].label for m in STAGED} <= names
    assert ev.plan(list(STAGED) + ["fastv"], [64, 128]) == [("all", None), ("sparsevlm", None),
                                                          ("pyramiddrop", None), ("fastv", 64), ("fastv", 128)]
    assert ev.parse_methods("sparsevlm,pyramiddrop") == ["sparsevlm", "pyramiddrop"]


def test_dart_in_the_llm_through_the_service(explorer):
    """DART: one stage at layer K, equivalent tokens (K·N + (L − K)·M)/L, matched on equivalent tokens like
    FastV, the trace the pictures, export and inspector ask."""
    ex, backend = explorer
    out, _ = run(explorer, "dart", budget=64)
    s, red = out.summary, out.reduction
    assert red.n_kept == s["n_kept"] == 64 and red.layer == 2
    assert s["equivalent_tokens"] == pytest.approx((2 * 576 + 28 * 64) / 30)
    assert "L1 norm" in out.pictures.heatmap_caption
    per = s["per_patch"]
    assert {"stage1_score", "dart_chosen_by", "dart_cosine"} <= set(per) and len(per["dart_chosen_by"]) == 576
    json.dumps(s, allow_nan=False)
    assert any("pivots" in line for line in s["trace_readout"])
    lines = explore_mod.inspect_patch(out.tokens, red, int(red.kept[0]))["lines"]
    assert lines[0].startswith("stage 1 (layer 1)")
    enc = backend.encode(tiny.image(1, (96, 96)))
    eq_rows = {m: r for m, r, _ in ex.comparison(backend, enc, out.prompt, out.settings, 270, equivalent=True)}
    assert eq_rows["dart"].n_kept == eq_rows["fastv"].n_kept == 248  # K = 2 both: (2·576 + 28·248)/30 ≈ 270
    xs, counts, _, _, name = explore_mod.sweep(out.tokens, out.settings, "budget")
    assert name == "budget" and all(c == min(int(x), 576) for x, c in zip(xs, counts))
