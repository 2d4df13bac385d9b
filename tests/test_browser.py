"""The page in headless Chromium: the notice, an example click, the τ slider by mouse and by keyboard, a screenshot.

Screenshots go to $VTE_ARTIFACTS or tests/artifacts/ (git-ignored by the `artifacts/` rule). Waits are generous
(the first explore encodes the image); nothing here asserts a timing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000
KEPT_SRC = "(() => { const i = document.querySelector('#overlay-kept img'); return i ? i.getAttribute('src') : null; })()"

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


@pytest.fixture()
def page(browser, app):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.errors = []  # uncaught exceptions in the page
    page.on("pageerror", lambda err: page.errors.append(str(err)))
    page.goto(app[1])
    page.wait_for_selector("#slider-tau input[type=range]")
    try:
        yield page
    finally:
        context.close()


@pytest.fixture()
def kept_for(offline_explorer):
    """τ → how many tokens PAR hands the LLM for the coffee example (default sliders otherwise), computed in-process."""
    import json

    from explorer.service import settings_from_controls
    from reducers import PARParams, PruMergeParams

    assets = Path(__file__).resolve().parent.parent / "assets"
    row = next(r for r in json.loads((assets / "examples.json").read_text()) if r["file"] == "coffee.jpg")
    par, pm = PARParams(), PruMergeParams()

    def kept(tau: float) -> int:
        settings = settings_from_controls("par", tau, par.delta, par.cluster_threshold, par.retrieval_ratio,
                                          pm.iqr_multiplier, par.alpha)
        out, _, _ = offline_explorer.explore(str(assets / row["file"]), row["prompt"], settings)
        return out.summary["n_kept"]

    return kept


def wait_readout(page, n_kept: int) -> None:
    """Until the readout shows the reduction for the slider's final value (an earlier redraw may land first)."""
    page.wait_for_function("(m) => document.querySelector('#readout').innerText.includes('576 → ' + m + ' ')",
                           arg=str(n_kept))


def kept_src(page) -> str | None:
    return page.evaluate(KEPT_SRC)


def wait_src_changed(page, old: str | None) -> str:
    page.wait_for_function(f"(old) => {{ const s = {KEPT_SRC}; return !!s && s !== old; }}", arg=old)
    return kept_src(page)


def test_untrained_weights_notice_is_visible(page):
    notice = page.locator("#notice")
    notice.wait_for(state="visible")
    assert "untrained vision weights" in notice.inner_text().lower()


def test_example_then_tau_by_mouse_and_keyboard(page, kept_for):
    assert kept_src(page) is None  # nothing explored yet

    # An example row (coffee.jpg and its prompt) fills the image and the prompt; image.change explores.
    rows = page.locator("table tbody tr")
    assert rows.count() >= 3
    rows.nth(2).locator("td").first.click()
    src0 = wait_src_changed(page, None)
    wait_readout(page, kept_for(0.3))
    assert "spoon" in page.locator("textarea").first.input_value()

    # τ by mouse: press on the thumb (value 0.3), drag to about 65 % of the track, release.
    rng = page.locator("#slider-tau input[type=range]")
    rng.scroll_into_view_if_needed()
    assert float(rng.input_value()) == pytest.approx(0.3)
    box = rng.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 0.3 * box["width"], y)
    page.mouse.down()
    page.mouse.move(box["x"] + 0.5 * box["width"], y, steps=5)
    page.mouse.move(box["x"] + 0.65 * box["width"], y, steps=5)
    page.mouse.up()
    dragged = float(rng.input_value())
    assert 0.5 < dragged < 0.8, dragged
    wait_src_changed(page, src0)
    wait_readout(page, kept_for(dragged))
    src1 = kept_src(page)
    page.wait_for_function("(v) => document.querySelector('#slider-tau input[type=number]').value == v",
                           arg=rng.input_value())

    # τ by keyboard: one step right, then End (τ = 1 routes almost nothing).
    rng.focus()
    page.keyboard.press("ArrowRight")
    assert float(rng.input_value()) == pytest.approx(dragged + 0.01)
    page.keyboard.press("End")
    assert float(rng.input_value()) == pytest.approx(1.0)
    wait_src_changed(page, src1)
    page.wait_for_function("() => document.querySelector('#slider-tau input[type=number]').value == '1'")
    wait_readout(page, kept_for(1.0))
    assert kept_for(1.0) != kept_for(dragged)  # so the keyboard redraw is a different picture

    # Let the comparison that follows each explore fill the gallery, so the screenshot shows it too.
    page.wait_for_function("() => document.querySelectorAll('#compare-gallery img').length >= 7")
    assert page.locator("#notice").is_visible()

    shot = artefact_dir() / "browser-example-tau.png"
    shot.unlink(missing_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert page.errors == []
