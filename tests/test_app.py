"""The launched app through gradio_client: /explore, /compare, /answer, /export, the API listing and the bind address.

Runs against the shared `app` fixture (offline default: real DINOv2 tower, untrained projector, real SmolLM2),
one fresh `client` session per test. Every check reads what a remote API user gets back, not Python objects.
The controls and their keyword names come from the schema (the registry), so a new method is tested here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gradio_client import handle_file
from PIL import Image

from explorer.settings import Schema, Settings
from reducers import REDUCERS

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parent.parent / "assets"
IMAGE = ASSETS / "coffee.jpg"
PROMPT = "Is there a spoon next to the cup?"
SCHEMA = Schema.build()
HEAD = ["image", "prompt", "method", "model", "query_points"]
EXPLORE_RETURNS = 13  # pictures, captions, crop, histogram, funnel, readout, query, summary


def moved_values(method: str) -> dict:
    """Every control of `method` away from its default (inside its range)."""
    out = {}
    for name in SCHEMA.method_controls(method):
        c, default = SCHEMA.specs[name].control, SCHEMA.specs[name].default
        if c.kind == "toggle":
            out[name] = not default
        elif c.kind == "choice":
            out[name] = next(o for o in c.options if o != default)
        elif c.kind == "number":
            out[name] = int(default) + 3
        else:
            top = min(c.maximum, 200) if c.budget else c.maximum
            value = default + (top - default) / 3 if default < top else default - (default - c.minimum) / 3
            out[name] = int(round(value)) if c.integer else round(round(value / c.step) * c.step, 6)
    return out


def explore(client, method: str, prompt: str = PROMPT, image: Path = IMAGE, points=None, **controls):
    return client.predict(image=handle_file(str(image)), prompt=prompt, method=method, query_points=points or [],
                          api_name="/explore", **controls)


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


# --- /explore ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["defaults", "moved"])
@pytest.mark.parametrize("method", list(REDUCERS))
def test_explore_every_method_is_consistent(client, method, variant):
    controls = moved_values(method) if variant == "moved" else {}
    out = explore(client, method, **controls)
    assert len(out) == EXPLORE_RETURNS
    kept, _kc, groups, _gc, heat, _hc, crop, crop_caption, _hist, _funnel, readout, _query, summary = out
    n, m = summary["n_tokens"], summary["n_kept"]
    assert summary["method"] == method and summary["method_label"] == REDUCERS[method].label
    assert m == summary["stages"]["to LLM"] and summary["stages"]["tokens"] == n
    h, w = summary["image"]["grid"]
    assert n == h * w
    want = Settings.from_controls({"method": method, **controls}, SCHEMA).as_dict()
    assert summary["params"] == want["params"] and summary["inputs"] == want["inputs"]
    assert summary["flops"]["prefill_flops_reduced"] <= summary["flops"]["prefill_flops_full"]
    assert f"{n} → {m}" in readout, readout
    # per-patch data: kept indices in LLM order, attention of every patch, method-specific fields
    per = summary["per_patch"]
    assert len(per["kept"]) == summary["n_patches_kept"] and len(set(per["kept"])) == len(per["kept"])
    assert all(0 <= i < n for i in per["kept"]) and len(per["attention"]) == n
    if method == "par":
        assert len(per["relevance"]) == len(per["hybrid"]) == len(per["labels"]) == n
    if method.startswith("prumerge") and controls.get("merge", True):
        assert set(per["merge_groups"]) == {str(i) for i in per["kept"]}
    x0, y0, x1, y1 = summary["image"]["crop_box"]
    assert (x1 - x0) / (y1 - y0) == pytest.approx(w / h, rel=0.02)
    groups = groups.get("value") if isinstance(groups, dict) and "__type__" in groups else groups
    has_groups = REDUCERS[method].label and any(k in per for k in ("labels", "merge_groups", "groups"))
    assert (groups is not None) == has_groups, "a groups picture exactly when the method clusters or merges"
    for value in (kept, heat) + ((groups,) if groups is not None else ()):
        with Image.open(image_path(value)) as im:
            assert im.format == "JPEG" and im.width >= w and im.height >= h
    assert "model sees" in crop_caption


@pytest.mark.parametrize("method", ["prumerge", "prumerge+"])
def test_prumerge_outliers_shrink_as_the_fence_rises(client, method):
    ks = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0]
    summaries = [explore(client, method, iqr_multiplier=k)[-1] for k in ks]
    outliers = [s["stages"]["outliers"] for s in summaries]
    fences = [s["fence"] for s in summaries]
    assert all(a >= b for a, b in zip(outliers, outliers[1:])), dict(zip(ks, outliers))
    assert all(a <= b for a, b in zip(fences, fences[1:])), dict(zip(ks, fences))
    assert outliers[0] > outliers[-1]
    for s in summaries:
        assert s["n_kept"] == s["stages"]["to LLM"] <= s["n_tokens"]


def test_par_routes_fewer_as_tau_rises(client):
    taus = [round(0.1 * i, 1) for i in range(11)]
    routed = [explore(client, "par", tau=t, delta=1.0)[-1]["stages"]["routed"] for t in taus]
    assert all(a >= b for a, b in zip(routed, routed[1:])), dict(zip(taus, routed))
    assert routed[0] > routed[-1]


def test_par_query_is_the_cls_token_without_points_and_the_pointed_patches_with(client):
    summary = explore(client, "par")[-1]
    assert summary["query"]["kind"] == "cls" and "CLS" in summary["query"]["description"]
    x0, y0, x1, y1 = summary["image"]["crop_box"]
    point = [x0 + (x1 - x0) / 2, y0 + (y1 - y0) / 2]  # the centre of the seen region
    out = explore(client, "par", points=[point])
    query, pointed = out[-2], out[-1]
    assert pointed["query"]["kind"] == "points" and pointed["query"]["patches"] == [12 * 24 + 12]
    assert pointed["query_points"] == [point] and "pointed" in query
    outside = explore_error(client, "par", points=[[-50, -50]])
    assert "outside" in outside


def explore_error(client, method, **kwargs) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        explore(client, method, **kwargs)
    return str(info.value)


def test_the_summary_names_the_model_and_what_is_real(client):
    summary = explore(client, "prumerge")[-1]
    assert summary["model"] == "offline" and "DINOv2" in summary["notice"] and "not grounded" in summary["notice"]
    assert summary["app_version"] and summary["image"]["name"] == "coffee.jpg"


# --- /compare ------------------------------------------------------------------------------------------
def compare(client, method, prompt=PROMPT, sweep_parameter=None, **controls):
    return client.predict(image=handle_file(str(IMAGE)), prompt=prompt, method=method, query_points=[],
                          sweep_parameter=sweep_parameter, api_name="/compare", **controls)


@pytest.mark.parametrize("method", ["par", "prumerge", "uniform"])
def test_compare_gallery_has_one_entry_per_method_at_the_matched_budget(client, method):
    summary = explore(client, method)[-1]
    sweep, gallery, bar, explain, *_ = compare(client, method)
    captions = [entry["caption"] for entry in gallery]
    labels = [c.split(" · ")[0] for c in captions]
    assert labels[: len(REDUCERS)] == [e.label for e in REDUCERS.values()][: len(labels)]
    assert len(gallery) == len(REDUCERS)
    counts = {label: int(c.split(" · ")[1].split()[0]) for label, c in zip(labels, captions)}
    assert counts[REDUCERS[method].label] == summary["n_kept"]
    for name, entry in REDUCERS.items():
        caption = captions[labels.index(entry.label)]
        if entry.budgeted and name not in ("uniform", "pool"):  # those two: the nearest h'×w' grid
            assert counts[entry.label] == summary["n_kept"] and f"at M = {summary['n_kept']}" in caption
        elif entry.budgeted and counts[entry.label] != summary["n_kept"]:
            assert f"nearest grid to M = {summary['n_kept']}" in caption
        elif not entry.budgeted:
            assert "at its own settings" in caption
    assert "From pixels to the LLM" in explain and summary["method_label"] in explain


# --- /answer -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,controls", [("par", {}), ("prumerge", {}), ("random", dict(budget=40))])
def test_answer_is_stamped_with_what_produced_it(client, method, controls):
    summary = explore(client, method, **controls)[-1]
    full, reduced, stats, _note, info = client.predict(
        image=handle_file(str(IMAGE)), prompt=PROMPT, method=method, query_points=[], max_new_tokens=8,
        api_name="/answer", **controls)
    assert isinstance(full, str) and isinstance(reduced, str)
    assert info["full"]["text"] == full and info["reduced"]["text"] == reduced
    assert info["full"]["n_visual_tokens"] == summary["n_tokens"]
    assert info["reduced"]["n_visual_tokens"] == summary["n_kept"]
    stamp = info["stamp"]
    assert stamp["method"] == method and stamp["params"] == summary["params"] and stamp["n_kept"] == summary["n_kept"]
    assert stamp["prompt"] == PROMPT and stamp["image"] == summary["image"]["key"]
    assert f"with **{summary['n_kept']}** reduced tokens" in stats and "prefill" in stats and "decode" in stats
    for part in ("full", "reduced"):
        assert info[part]["n_new_tokens"] <= 8 and info[part]["decode_s"] >= 0


@pytest.mark.parametrize("value", [0, 257, 4000, 2.5, "many"])
def test_answer_length_is_bounded(client, value):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="max_new_tokens must be a whole number from 1 to 256"):
        client.predict(image=handle_file(str(IMAGE)), prompt=PROMPT, method="prumerge", query_points=[],
                       max_new_tokens=value, api_name="/answer")


# --- /export -------------------------------------------------------------------------------------------
def test_export_round_trip(client):
    out = explore(client, "prumerge+", iqr_multiplier=1.0)
    summary = out[-1]
    json_file, png_file = client.predict(api_name="/export")
    assert Path(json_file).name.startswith("prumerge+_iqr_multiplier-1.0") and json_file.endswith(".json")
    exported = json.loads(Path(json_file).read_text())
    assert exported["per_patch"] == summary["per_patch"] and exported["params"] == summary["params"]
    assert exported["app_version"] and exported["image"]["key"] == summary["image"]["key"]
    again = Settings.from_controls(exported["controls"], SCHEMA)
    assert again.method == "prumerge+" and again.params.iqr_multiplier == 1.0
    with Image.open(image_path(out[0])) as im:
        w, h = im.size
    with Image.open(png_file) as im:
        assert im.format == "PNG" and im.height == h and im.width >= 2 * w


def test_export_holds_the_answers_with_their_stamps(client):
    explore(client, "random", budget=30)
    client.predict(image=handle_file(str(IMAGE)), prompt=PROMPT, method="random", query_points=[], budget=30,
                   max_new_tokens=4, api_name="/answer")
    json_file, _ = client.predict(api_name="/export")
    exported = json.loads(Path(json_file).read_text())
    assert exported["answers"]["stamp"]["n_kept"] == 30 and exported["answers"]["reduced"]["n_visual_tokens"] == 30


def test_export_before_explore_is_a_clear_error(client):
    with pytest.raises(Exception, match="explore an image first"):
        client.predict(api_name="/export")


# --- API listing and bind address ----------------------------------------------------------------------
def test_view_api_parameters_come_from_the_schema(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert {"/explore", "/answer", "/compare", "/export", "/fidelity"} <= set(endpoints)
    names = list(SCHEMA.names)
    assert [p["parameter_name"] for p in endpoints["/explore"]["parameters"]] == HEAD + names
    assert [p["parameter_name"] for p in endpoints["/compare"]["parameters"]] == (HEAD + ["sweep_parameter", "match_equivalent"]
                                                                                 + names)
    assert [p["parameter_name"] for p in endpoints["/answer"]["parameters"]] == HEAD + ["max_new_tokens"] + names
    assert len(endpoints["/explore"]["returns"]) == EXPLORE_RETURNS
    for endpoint in endpoints.values():
        for item in endpoint["returns"]:
            assert not (item.get("label") or "").startswith("value_"), item


def test_ui_controls_equal_the_dataclass_metadata(app):
    """Each control the page shows is built from its params field: range, step, default, label, info."""
    demo, _ = app
    components = {c["props"].get("elem_id"): c for c in demo.config["components"] if c.get("props")}
    for name, spec in SCHEMA.specs.items():
        props = components[f"ctl-{name}"]["props"]
        c = spec.control
        assert props["label"] == c.label and props["info"] == spec.info_for("prumerge"), name
        if c.kind == "slider":
            assert (props["minimum"], props["step"]) == (c.minimum, c.step), name
            assert props["maximum"] == (min(c.maximum, 576) if c.budget else c.maximum), name
            assert props["value"] == spec.default, name
        elif c.kind == "choice":
            assert [ch[1] for ch in props["choices"]] == list(c.options) and props["value"] == spec.default, name
        else:
            assert props["value"] == spec.default, name


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
    assert kwargs["server_name"] == "127.0.0.1" and kwargs["share"] is False and kwargs.get("show_error") is False
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    assert launch_kwargs(ExplorerConfig())["server_name"] == "0.0.0.0"


def test_app_main_launches_on_loopback(monkeypatch):
    """app.main as `python app.py` runs it, with launch() made non-blocking: it really binds 127.0.0.1."""
    import gradio as gr

    import app as app_module

    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    original = gr.Blocks.launch
    launched = []

    def launch(self, *args, **kwargs):
        launched.append((self, dict(kwargs)))
        return original(self, *args, **{**kwargs, "prevent_thread_lock": True, "quiet": True})

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    monkeypatch.setattr(app_module.Explorer, "preload", lambda self: None, raising=False)
    app_module.main([])
    assert len(launched) == 1
    demo, kwargs = launched[0]
    try:
        assert kwargs.get("share") is False and kwargs.get("server_name") == "127.0.0.1"
        assert demo.local_url.startswith("http://127.0.0.1:")
    finally:
        demo.close()


# --- /fidelity -----------------------------------------------------------------------------------------
def test_fidelity_rows_for_every_method_at_m_and_the_method_across_budgets(client):
    explore(client, "random", budget=32)
    table, _plot, note = client.predict(max_new_tokens=3, api_name="/fidelity")
    headers, rows = table["headers"], [dict(zip(table["headers"], r)) for r in table["data"]]
    assert headers[:4] == ["group", "what", "label", "n_kept"]
    reference = rows[0]
    assert reference["group"] == "reference" and reference["match"] == 1.0 and reference["kl"] == 0.0
    at_m = [r for r in rows if r["group"] == "every method at M"]
    assert {r["label"] for r in at_m} == {e.label for m, e in REDUCERS.items() if m != "all"}
    for r in at_m:
        entry = next(e for e in REDUCERS.values() if e.label == r["label"])
        if entry.budgeted and entry.label not in ("Uniform grid", "Average pooling"):
            assert r["n_kept"] == 32, r
        assert r["kl"] >= 0 and 0 <= r["f1"] <= 1 and r["match"] in (0.0, 1.0)
    budgets = [r for r in rows if r["group"] == "Random across budgets"]
    assert [r["n_kept"] for r in budgets] == [32, 64, 128, 192]
    assert "of" in note and "Full-token answer" in note
    again, _, _ = client.predict(max_new_tokens=3, api_name="/fidelity")  # cached per image, prompt, settings
    assert again == table


def test_fidelity_rows_follow_the_other_methods_controls_too(client):
    """Changing a control of another method (PruMerge's IQR multiplier while Random is active) changes that
    method's row: the cached rows are keyed on every control, not only the active method's."""
    def prumerge_kept(table):
        rows = [dict(zip(table["headers"], r)) for r in table["data"]]
        return next(r["n_kept"] for r in rows if r["label"] == REDUCERS["prumerge"].label)

    explore(client, "random", budget=32, iqr_multiplier=1.5)
    before, _, _ = client.predict(max_new_tokens=3, api_name="/fidelity")
    explore(client, "random", budget=32, iqr_multiplier=0.0)
    after, _, _ = client.predict(max_new_tokens=3, api_name="/fidelity")
    assert prumerge_kept(after) > prumerge_kept(before)


def test_compare_can_match_on_equivalent_tokens(client):
    """The toggle: budget methods matched on equivalent tokens (mean over the LLM's layers); in-LLM methods
    say both counts."""
    summary = explore(client, "pyramiddrop")[-1]
    assert summary["llm_layers"] >= 1 and summary["n_kept"] < summary["equivalent_tokens"] < summary["n_tokens"]
    m = round(summary["equivalent_tokens"])
    _sweep, gallery, _bar, *_ = client.predict(image=handle_file(str(IMAGE)), prompt=PROMPT, method="pyramiddrop",
                                               query_points=[], sweep_parameter=None, match_equivalent=True,
                                               api_name="/compare")
    captions = {entry["caption"].split(" · ")[0]: entry["caption"] for entry in gallery}
    assert f"equivalent M = {m}" in captions[REDUCERS["random"].label]
    assert f"{summary['n_kept']} tokens, {m} equivalent (at its own settings)" in captions[REDUCERS["pyramiddrop"].label]
    fast = captions[REDUCERS["fastv"].label]
    assert f"equivalent M = {m}" in fast and int(fast.split(" · ")[1].split()[0]) < m  # fewer from layer K on
