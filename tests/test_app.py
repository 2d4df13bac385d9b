"""The launched app through gradio_client: /explore, /compare, /answer, /export, the API listing and the bind address.

Runs against the shared `app` fixture (offline default: seeded vision tower, real SmolLM2), one fresh
`client` session per test. Every check reads what a remote API user gets back, not the Python objects.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from gradio_client import handle_file
from PIL import Image

from explorer import explore as ex
from reducers import REDUCERS, BudgetParams, PARParams, PruMergeParams

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IMAGE = ASSETS / "coffee.jpg"
PROMPT = "Is there a spoon next to the cup?"
METHODS = list(REDUCERS)  # par, prumerge, prumerge+, all, random, uniform, top-attention
# The live overlays are JPEG since 572a4c5 ("JPEG live overlays"); PNG/WebP were the earlier formats.
OVERLAY_FORMATS = {"PNG", "WEBP", "JPEG"}
EXPLORE_PARAMS = ["image", "prompt", "method", "tau", "delta", "cluster_threshold", "retrieval_ratio",
                  "iqr_multiplier", "alpha", "spatial", "rewrite", "attention", "merge", "neighbours", "budget",
                  "seed", "model"]

_PAR, _PM, _BUDGET = PARParams(), PruMergeParams(), BudgetParams()
DEFAULTS = dict(
    tau=_PAR.tau, delta=_PAR.delta, cluster_threshold=_PAR.cluster_threshold,
    retrieval_ratio=_PAR.retrieval_ratio, iqr_multiplier=_PM.iqr_multiplier, alpha=_PAR.alpha,
    spatial=_PAR.spatial, rewrite=True, attention="official", merge=_PM.merge, neighbours=_PM.neighbours,
    budget=_BUDGET.budget, seed=_BUDGET.seed,
)
# Slider settings away from the defaults (every control moved at once), and an extreme corner.
VARIANTS = {
    "defaults": {},
    "moved": dict(tau=0.45, delta=0.8, cluster_threshold=0.9, retrieval_ratio=0.3, alpha=0.25, spatial=True,
                  iqr_multiplier=0.75, merge=False, neighbours=8, attention="head-mean", budget=100, seed=3),
    "corner": dict(tau=0.0, delta=1.0, cluster_threshold=0.0, retrieval_ratio=1.0, alpha=1.0, rewrite=False,
                   iqr_multiplier=5.0, neighbours=256, budget=100_000),
}


def _inputs(method: str, prompt: str = PROMPT, image: Path = IMAGE, **changes) -> dict:
    unknown = set(changes) - set(DEFAULTS)
    assert not unknown, f"not a control: {unknown}"
    return dict(image=handle_file(str(image)), prompt=prompt, method=method, **{**DEFAULTS, **changes})


def explore(client, method: str, prompt: str = PROMPT, image: Path = IMAGE, **changes):
    return client.predict(**_inputs(method, prompt, image, **changes), api_name="/explore")


def image_path(value) -> str:
    """The local path of an image output: a path, a FileData-like dict, or an update dict around either."""
    if isinstance(value, dict) and "value" in value:
        value = value["value"]
    if isinstance(value, dict):
        value = value.get("path") or value.get("image")
    if isinstance(value, dict):  # gallery entries nest {"image": {"path": ...}}
        value = value.get("path")
    assert isinstance(value, str) and value, f"not an image output: {value!r}"
    return value


def _caption_count(caption: str) -> int:
    """'PruMerge · 41 tokens' → 41."""
    return int(caption.rsplit("·", 1)[1].split()[0])


# --- /explore ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", METHODS)
def test_explore_every_method_is_consistent(client, method, variant):
    out = explore(client, method, **VARIANTS[variant])
    assert len(out) == 7
    kept, groups, heat, _hist, _funnel, readout, summary = out
    n, m = summary["n_tokens"], summary["n_kept"]
    assert summary["method"] == method
    assert m == summary["stages"]["to LLM"]
    assert 1 <= m <= n
    h, w = summary["image"]["grid"]
    assert n == h * w == summary["stages"]["tokens"]
    assert summary["params"]["method"] == method
    assert summary["flops"]["prefill_flops_reduced"] <= summary["flops"]["prefill_flops_full"]
    assert f"{n} → {m}" in readout, readout

    x0, y0, x1, y1 = summary["image"]["crop_box"]
    expected_aspect = (x1 - x0) / (y1 - y0)
    assert expected_aspect == pytest.approx(w / h, rel=0.02)  # the region the model saw, cut into the grid
    for value in (kept, groups, heat):
        with Image.open(image_path(value)) as im:
            assert im.format in OVERLAY_FORMATS
            assert im.width >= w and im.height >= h
            assert im.width / im.height == pytest.approx(expected_aspect, rel=0.02)


@pytest.mark.parametrize("method", ["prumerge", "prumerge+"])
def test_prumerge_outliers_shrink_as_the_fence_rises(client, method):
    ks = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]
    summaries = [explore(client, method, iqr_multiplier=k)[6] for k in ks]
    outliers = [s["stages"]["outliers"] for s in summaries]
    fences = [s["fence"] for s in summaries]
    assert all(a >= b for a, b in zip(outliers, outliers[1:])), dict(zip(ks, outliers))
    assert all(a <= b for a, b in zip(fences, fences[1:])), dict(zip(ks, fences))
    assert outliers[0] > outliers[-1], "k over its whole range should change the outlier count"
    for s in summaries:
        assert s["n_kept"] == s["stages"]["to LLM"]


@pytest.mark.parametrize("k", [0.0, 0.3])
@pytest.mark.parametrize("method", ["prumerge", "prumerge+"])
def test_prumerge_never_feeds_more_tokens_than_all(client, method, k):
    """Low k on the slider's own range: PruMerge+ keeps every patch of coffee.jpg (outliers + uniform samples)
    and must not hand the LLM an extra aggregate-of-nothing token on top (577 > 576, negative compression)."""
    summary = explore(client, method, iqr_multiplier=k)[6]
    assert summary["n_kept"] == summary["stages"]["to LLM"]
    assert summary["n_kept"] <= summary["n_tokens"], summary["stages"]
    assert summary["compression"] >= 0.0 and summary["flops"]["flops_saving"] >= 0.0


@pytest.mark.parametrize("delta", [PARParams().delta, 1.0])
def test_par_keeps_fewer_as_tau_rises(client, delta):
    """Routed (retrieved ∧ h ≥ τ) shrinks with τ by construction. The kept count is checked on this example
    at the default δ and with δ = 1 (suppression off); it is *not* monotone for every image and δ: the greedy
    δ-suppression can keep more once a token that suppressed others stops being routed (e.g. astronaut.jpg,
    δ 0.5, γ 0.8: τ 0.77 → 0.78 gives routed 8 → 7 but kept 4 → 5), which is the specified rule, not a bug."""
    taus = [round(0.1 * i, 1) for i in range(11)]
    summaries = [explore(client, "par", tau=t, delta=delta)[6] for t in taus]
    routed = [s["stages"]["routed"] for s in summaries]
    kept = [s["n_kept"] for s in summaries]
    assert all(a >= b for a, b in zip(routed, routed[1:])), dict(zip(taus, routed))
    assert all(a >= b for a, b in zip(kept, kept[1:])), dict(zip(taus, kept))
    assert kept[0] > kept[-1] >= 1


def test_explore_readout_and_summary_name_the_model_and_warn(client):
    readout, summary = explore(client, "prumerge")[5:]
    assert summary["model"] == "offline" and summary["untrained_vision"] is True
    assert "untrained" in readout.lower()
    assert summary["stages"]["outliers"] + 1 == summary["n_kept"]  # merge on: one aggregate token appended


def test_par_without_prompt_is_a_clear_error(client):
    with pytest.raises(Exception, match="PAR needs a prompt"):
        explore(client, "par", prompt="   ")


# --- /compare ------------------------------------------------------------------------------------------
def compare(client, method, prompt=PROMPT, sweep_parameter=None, **changes):
    return client.predict(**_inputs(method, prompt, **changes), sweep_parameter=sweep_parameter,
                          api_name="/compare")


@pytest.mark.parametrize("method", ["par", "prumerge+", "uniform"])
def test_compare_gallery_has_one_entry_per_method(client, method):
    summary = explore(client, method)[6]
    sweep_fields = ex.sweep_fields(method)
    _sweep, gallery, _bar = compare(client, method, sweep_parameter=sweep_fields[0] if sweep_fields else None)
    captions = [entry["caption"] for entry in gallery]
    labels = [ex.METHOD_LABELS[m] for m in METHODS]  # offline backend: every method's inputs exist
    assert len(gallery) == len(METHODS)
    assert [c.rsplit(" · ", 1)[0] for c in captions] == labels
    counts = dict(zip(METHODS, map(_caption_count, captions)))
    assert counts[method] == summary["n_kept"]  # the active method as /explore reported it
    assert counts["all"] == summary["n_tokens"]
    assert counts["random"] == min(summary["n_kept"], summary["n_tokens"])  # baselines at the matched budget
    for entry in gallery:
        with Image.open(image_path(entry)) as im:
            assert im.format in OVERLAY_FORMATS and im.width > 0


def test_compare_without_prompt_leaves_out_par(client):
    _sweep, gallery, _bar = compare(client, "prumerge", prompt="", sweep_parameter="iqr_multiplier")
    names = [entry["caption"].rsplit(" · ", 1)[0] for entry in gallery]
    assert names == [ex.METHOD_LABELS[m] for m in METHODS if m != "par"]


# --- /answer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,changes", [("par", {}), ("prumerge", {}), ("random", dict(budget=40))])
def test_answer_feeds_the_explored_token_counts(client, method, changes):
    summary = explore(client, method, **changes)[6]
    full, reduced, stats, info = client.predict(**_inputs(method, **changes), max_new_tokens=16,
                                                api_name="/answer")
    assert isinstance(full, str) and full.strip()
    assert isinstance(reduced, str) and reduced.strip()
    assert info["full"]["text"] == full and info["reduced"]["text"] == reduced
    assert info["full"]["n_visual_tokens"] == summary["n_tokens"]
    assert info["reduced"]["n_visual_tokens"] == summary["n_kept"]
    assert info["method"] == method and info["params"] == summary["params"]
    assert info["untrained_vision"] is True
    assert "Untrained vision weights" in stats
    assert f"| {summary['n_tokens']} |" in stats and f"| {summary['n_kept']} |" in stats


# --- /export -------------------------------------------------------------------------------------------
def test_export_round_trip(client):
    kept, groups, heat, _h, _f, _r, summary = explore(client, "prumerge+", iqr_multiplier=1.0)
    json_file, png_file = client.predict(summary, handle_file(image_path(kept)), handle_file(image_path(groups)),
                                         handle_file(image_path(heat)), api_name="/export")
    exported = json.loads(Path(json_file).read_text())
    assert exported == summary
    assert exported["params"]["method"] == "prumerge+"
    assert exported["params"]["prumerge"]["iqr_multiplier"] == 1.0
    with Image.open(image_path(kept)) as im:
        w, h = im.size
    with Image.open(png_file) as im:
        im.load()
        assert im.format == "PNG"
        assert im.height == h and im.width >= 3 * w  # the three overlays side by side


def test_export_with_the_explore_outputs_as_returned(client):
    """Feeding /explore's outputs straight back (as an API user would) still exports."""
    kept, groups, heat, _h, _f, _r, summary = explore(client, "par")
    json_file, png_file = client.predict(summary, kept, groups, heat, api_name="/export")
    assert json.loads(Path(json_file).read_text()) == summary
    with Image.open(png_file) as im:
        assert im.format == "PNG"


def test_export_before_explore_is_a_clear_error(client):
    with pytest.raises(Exception, match="Nothing to export yet"):
        client.predict(None, None, None, None, api_name="/export")


# --- API listing and bind address ----------------------------------------------------------------------
def test_view_api_lists_the_endpoints(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/explore", "/answer", "/compare", "/export"} <= set(endpoints)
    assert [p["parameter_name"] for p in endpoints["/explore"]["parameters"]] == EXPLORE_PARAMS
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == EXPLORE_PARAMS + ["sweep_parameter"]
    assert [p["parameter_name"] for p in endpoints["/answer"]["parameters"]] == EXPLORE_PARAMS + ["max_new_tokens"]
    assert len(endpoints["/explore"]["returns"]) == 7
    assert [p["parameter_name"] for p in endpoints["/export"]["parameters"]] == ["summary", "kept", "groups", "heatmap"]


def test_fixture_app_binds_loopback(app):
    demo, url = app
    assert demo.server_name == "127.0.0.1"
    assert url.startswith("http://127.0.0.1:")
    assert not demo.share and demo.share_url is None


def test_launch_kwargs_default_to_loopback_without_share(monkeypatch):
    from explorer.config import ExplorerConfig
    from explorer.ui import launch_kwargs

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    kwargs = launch_kwargs(ExplorerConfig())
    assert kwargs["server_name"] == "127.0.0.1"
    assert kwargs["share"] is False
    assert kwargs.get("show_error") is False

    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    kwargs = launch_kwargs(ExplorerConfig())
    assert kwargs["server_name"] == "0.0.0.0"
    assert kwargs["share"] is False


def test_app_main_launches_on_loopback(monkeypatch):
    """app.main as `python app.py` runs it, with launch() made non-blocking: it really binds 127.0.0.1."""
    import gradio as gr

    import app as app_module

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SHARE", raising=False)
    original = gr.Blocks.launch
    launched = []

    def launch(self, *args, **kwargs):
        launched.append((self, dict(kwargs)))
        return original(self, *args, **{**kwargs, "prevent_thread_lock": True, "quiet": True})

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    # No second model in the background: the shared fixture already holds one; the bind address is the point.
    monkeypatch.setattr(app_module.Explorer, "preload", lambda self: None, raising=False)
    app_module.main([])
    assert len(launched) == 1
    demo, kwargs = launched[0]
    try:
        assert kwargs.get("share") is False
        assert kwargs.get("server_name") == "127.0.0.1"
        assert demo.server_name == "127.0.0.1"
        assert demo.local_url.startswith("http://127.0.0.1:")
        assert not demo.share and demo.share_url is None
    finally:
        demo.close()


def test_settings_defaults_match_the_sliders():
    """The test's DEFAULTS come from the same dataclasses as the UI's sliders."""
    for params in (PARParams(), PruMergeParams(), BudgetParams()):
        for f in dataclasses.fields(params):
            if f.name in DEFAULTS:
                assert DEFAULTS[f.name] == getattr(params, f.name)
