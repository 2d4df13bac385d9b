import os, sys, time
os.environ["GRADIO_ANALYTICS_ENABLED"]="False"
from explorer.config import ExplorerConfig
from explorer.service import Explorer
from tests.conftest import _launch
e=Explorer(ExplorerConfig()); e.backend()
demo=_launch(e)
from playwright.sync_api import sync_playwright
from tests.test_browser import open_page, wait_idle, CHROMIUM, CHROMIUM_ARGS, KEPT_SRC
with sync_playwright() as p:
    b=p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    ctx,pg=open_page(b, demo.local_url, viewport=(1440,900))
    for i in range(6):
        before=pg.evaluate(KEPT_SRC)
        if i:
            pg.locator("#examples .thumbnail-item").nth(i).click()
            pg.wait_for_function(f"{KEPT_SRC} !== {before!r}")
        wait_idle(pg); pg.wait_for_timeout(1500)
        pg.screenshot(path=f"/tmp/ex{i}.png")
    pg.get_by_role("tab", name="Sweep & comparison").click(); pg.wait_for_timeout(1500)
    pg.screenshot(path="/tmp/compare.png", full_page=True)
    pg.get_by_role("tab", name="Explain").click(); pg.wait_for_timeout(800)
    pg.screenshot(path="/tmp/explain.png", full_page=True)
    print(pg.errors)
    b.close()
demo.close()
