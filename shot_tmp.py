import os, sys, time
os.environ["GRADIO_ANALYTICS_ENABLED"]="False"
from explorer.config import ExplorerConfig
from explorer.service import Explorer
from explorer.ui import build_demo, CSS
e=Explorer(ExplorerConfig()); e.backend()
demo=build_demo(e); demo.queue()
demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=7862, quiet=True, css=CSS)
from playwright.sync_api import sync_playwright
ARGS=["--no-sandbox","--disable-gpu","--disable-quic","--no-first-run","--disable-background-networking","--disable-component-update","--disable-sync"]
with sync_playwright() as p:
    b=p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
    for (w,h) in [(1280,720),(1440,900),(390,844)]:
        pg=b.new_page(viewport={"width":w,"height":h})
        msgs=[]
        pg.on("console", lambda m: msgs.append(m.text))
        pg.goto("http://127.0.0.1:7862/"+(sys.argv[1] if len(sys.argv)>1 else ""))
        pg.wait_for_function("document.querySelector('#overlay-kept img') !== null", timeout=60000)
        time.sleep(3)
        pg.screenshot(path=f"/tmp/shot_{w}x{h}.png", full_page=False)
        pg.screenshot(path=f"/tmp/shotfull_{w}x{h}.png", full_page=True)
        print(w,h, pg.url, [m for m in msgs if 'rror' in m][:5])
    b.close()
demo.close()
