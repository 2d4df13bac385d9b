"""The page in headless Chromium, as a user meets it: an example on the first screen, results in view after an
example click, only the active method's controls, stale answers, the address holding the settings, pin and
compare, a patch click, typed values clamped, and screenshots at three viewports.

Screenshots go to $VTE_ARTIFACTS or tests/artifacts/ (git-ignored). Waits are generous (the first explore encodes
the image); nothing here asserts a timing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from explorer.settings import Schema

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 90_000
SCHEMA = Schema.build()
KEPT_SRC = "(() => { const i = document.querySelector('#overlay-kept img'); return i ? i.getAttribute('src') : null; })()"
VIEWPORTS = {"desktop": (1440, 900), "laptop": (1280, 720), "phone": (390, 844)}

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: the browser tests drive that headless Chromium", allow_module_level=True)


def artefact_dir() -> Path:
    folder = Path(os.environ.get("VTE_ARTIFACTS") or Path(__file__).resolve().parent / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def browser():
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url: str, viewport=(1280, 720), query: str = ""):
    context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(url + query)
    page.wait_for_function(f"{KEPT_SRC} !== null")  # the example on the first screen has been explored
    wait_idle(page)
    return context, page


def wait_idle(page) -> None:
    """No request of the app pending (progress bars gone, every queued event answered)."""
    page.wait_for_function("!document.querySelector('.progress-text, .eta-bar, .wrap.pending')")
    page.wait_for_timeout(300)


@pytest.fixture()
def page(browser, app):
    context, page = open_page(browser, app[1])
    try:
        yield page
    finally:
        assert not page.errors, page.errors
        context.close()


def readout(page) -> str:
    return page.inner_text("#readout")


def kept_count(page) -> int:
    return int(re.search(r"→ (\d+)", readout(page)).group(1))


def visible(page, elem_id: str) -> bool:
    el = page.query_selector(f"#{elem_id}")
    return el is not None and el.is_visible()


def in_viewport(page, selector: str) -> bool:
    box = page.query_selector(selector).bounding_box()
    vp = page.viewport_size
    return box is not None and box["y"] >= -1 and box["y"] + min(box["height"], 200) <= vp["height"] + 1


def set_slider(page, name: str, value) -> None:
    """Type a value into a slider's number box and leave it (what a user typing does)."""
    box = page.locator(f"#ctl-{name} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def pick_method(page, method: str) -> None:
    label = SCHEMA.methods[method].label
    page.click("#method input")
    page.get_by_role("option", name=label, exact=True).click()
    wait_idle(page)


# --- the first screen ------------------------------------------------------------------------------------
def test_an_example_is_on_the_first_screen_with_its_results(page):
    assert "visual tokens 576 →" in readout(page)
    assert in_viewport(page, "#overlay-kept") and in_viewport(page, "#input-image")
    assert "Visual Token Reduction Explorer" in page.inner_text("#header")
    notice = page.inner_text("#header summary")
    assert "DINOv2" in notice and "not grounded" in notice and notice.count("\n") == 0, "one line"


@pytest.mark.parametrize("index", [1, 3])
def test_clicking_an_example_keeps_its_results_in_view(page, index):
    before = page.evaluate(KEPT_SRC)
    page.locator("#examples .thumbnail-item").nth(index).click()
    page.wait_for_function(f"{KEPT_SRC} !== {before!r}")
    wait_idle(page)
    assert in_viewport(page, "#overlay-kept"), "the results of the example are in view"


def test_only_the_active_methods_controls_are_shown(page):
    for method in ("par", "prumerge", "random", "all"):
        pick_method(page, method)
        wanted = set(SCHEMA.method_controls(method))
        shown = {name for name in SCHEMA.names if visible(page, f"ctl-{name}")}
        assert shown == wanted, (method, shown ^ wanted)
        assert SCHEMA.methods[method].label in readout(page)


def test_moving_k_keeps_the_histogram_and_fence_in_view(page):
    pick_method(page, "prumerge")
    before = kept_count(page)
    set_slider(page, "iqr_multiplier", 3.0)
    assert kept_count(page) < before
    assert in_viewport(page, "#overlay-kept") and in_viewport(page, "#histogram")
    assert "fence" in page.inner_text("#histogram")


# --- answers cannot go stale silently -------------------------------------------------------------------
def ask(page) -> None:
    page.get_by_role("tab", name="Answers").click()
    page.fill("#max-new-tokens input[type=number]", "4")
    page.press("#max-new-tokens input[type=number]", "Enter")
    page.click("#ask")
    page.wait_for_function("document.querySelector('#answer-stats').innerText.includes('Produced by')")
    wait_idle(page)


def stale(page, expected: bool | None = None) -> bool:
    """Whether the answers are marked stale (waiting for the mark to become `expected` when given)."""
    if expected is not None:
        page.wait_for_function("document.querySelector('#stale-note').innerText.toLowerCase()"
                               f".includes('settings changed') === {str(expected).lower()}")
    return "settings changed" in page.inner_text("#stale-note").lower()


def test_answers_are_stamped_and_marked_stale_after_a_slider_move_and_a_prompt_edit(page):
    pick_method(page, "prumerge")
    ask(page)
    n = kept_count(page)
    assert f"with {n} reduced tokens" in page.inner_text("#answer-stats") and not stale(page)
    assert "tok/s" in page.inner_text("#answer-stats") or "—" in page.inner_text("#answer-stats")
    set_slider(page, "iqr_multiplier", 2.5)
    assert stale(page, True) and "stale" in page.get_attribute("#answers", "class")
    ask(page)
    assert not stale(page, False)
    page.fill("#prompt textarea", "What colour is the cup?")
    page.click("#readout")  # leaving the box applies the prompt
    wait_idle(page)
    assert stale(page, True)


# --- shareable state --------------------------------------------------------------------------------------
def test_the_address_holds_the_settings_and_restores_them(browser, app):
    context, page = open_page(browser, app[1], query="?method=random&budget=23&seed=5")
    try:
        assert "Random" in readout(page) and kept_count(page) == 23
        assert page.input_value("#ctl-budget input[type=number]") == "23"
        set_slider(page, "budget", 31)
        assert "budget=31" in page.url and "method=random" in page.url
        context2, page2 = open_page(browser, app[1], query="?" + page.url.split("?", 1)[1])
        try:
            assert kept_count(page2) == 31 and page2.input_value("#ctl-seed input") == "5"
        finally:
            context2.close()
    finally:
        context.close()


# --- pin & compare, patch inspection, clamping ----------------------------------------------------------------
def test_pin_and_compare_shows_the_overlap(page):
    pick_method(page, "prumerge")
    page.get_by_role("tab", name="Pin & compare").click()
    page.click("#pin")
    page.wait_for_function("document.querySelector('#diff-info').innerText.includes('Jaccard) 1.000')")
    set_slider(page, "iqr_multiplier", 3.0)
    page.wait_for_function("/Jaccard\\) 0\\./.test(document.querySelector('#diff-info').innerText)")
    text = page.inner_text("#diff-info")
    jaccard = float(re.search(r"Jaccard\) ([0-9.]+)", text).group(1))
    assert 0 < jaccard < 1 and "only in A" in text
    page.click("#history input")
    assert page.get_by_role("option").count() >= 2  # the recent runs


def test_clicking_a_patch_describes_it(page):
    pick_method(page, "prumerge")
    img = page.locator("#overlay-kept img")
    box = img.bounding_box()
    centre = (12 + 0.5) / 24  # the middle of patch (12, 12)
    img.click(position={"x": box["width"] * centre, "y": box["height"] * centre})
    page.wait_for_function("document.querySelector('#patch-info').innerText.includes('row 12')")
    info = page.inner_text("#patch-info")
    assert "Patch 300" in info and "CLS attention" in info


def test_a_typed_value_out_of_range_is_clamped_and_the_box_agrees(page):
    pick_method(page, "par")
    set_slider(page, "cluster_threshold", 1.7)
    assert page.input_value("#ctl-cluster_threshold input[type=number]") == "1"
    assert page.input_value("#ctl-cluster_threshold input[type=range]") == "1"


def test_clearing_the_image_resets_quietly(page):
    page.click("#input-image button[aria-label='Remove Image']")
    wait_idle(page)
    assert "Upload an image" in readout(page)
    assert not page.query_selector(".toast-body.error"), "no error toast"


def test_budget_sliders_run_up_to_the_images_token_count(browser):
    """Built before its model has loaded (as `python app.py` builds it), the page learns N from the first
    explore: a 12×12 grid gives budget sliders that end at 144."""
    from explorer.backend.synthetic import SyntheticBackend
    from explorer.config import ExplorerConfig
    from explorer.service import Explorer
    from tests.conftest import _launch

    backend = SyntheticBackend(grid=(12, 12), view_side=336)
    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)
    assert explorer.loaded(explorer.config.model) is None
    demo = _launch(explorer)
    context, page = open_page(browser, demo.local_url)
    try:
        pick_method(page, "visionzip")
        assert page.get_attribute("#ctl-budget input[type=range]", "max") == "144"
        assert not page.errors, page.errors
    finally:
        context.close()
        demo.close()
        explorer.close()


# --- screenshots ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(VIEWPORTS))
def test_screenshots_at_three_viewports(browser, app, name):
    context, page = open_page(browser, app[1], viewport=VIEWPORTS[name])
    try:
        path = artefact_dir() / f"explorer-{name}.png"
        page.screenshot(path=str(path))
        assert path.stat().st_size > 20_000
        assert in_viewport(page, "#input-image")
        if name != "phone":
            assert in_viewport(page, "#overlay-kept"), "controls and pictures side by side"
    finally:
        context.close()
