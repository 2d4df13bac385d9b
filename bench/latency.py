"""Latency of the explorer, measured side by side in one run on this machine.

    python -m bench.latency            # everything (≈ 5 min on 2 cores)
    python -m bench.latency --quick    # fewer moves, no browser

What is timed (all with the image already encoded, as on every slider move):
  in-process   Explorer.explore: reducer + overlay, clusters/merge groups, heatmap, histogram, funnel, readout
               — at N = 576 (offline default, 24×24) and N = 2880 (synthetic encoder outputs on a 48×60 grid);
               the sweep plot and the matched-budget comparison separately (they follow the core pictures)
  client       the same move through gradio_client against a launched app (upload re-used, no downloads)
  chromium     headless Chromium: slider released → the retained-patches <img> replaced (MutationObserver), for
               PAR's τ with the app idle between moves, and for every slider of the active method in turn without
               idling between moves (issue 12)
  encode       one image through the offline default's tower (DINOv2 ViT-S/14 at 336 px, hooks on), fresh images
  prefill      the LM's first forward over all visual tokens vs a reduction's, same prompt; for the methods
               that prune inside the LM (FastV, SparseVLM, PyramidDrop) the pruned prefill's time ratio against
               their equivalent-token ratio
  cold start   `python app.py` → first page served, and → first explore answered (model loaded), with the
               converted checkpoints cached, and from an empty cache (the one-time ONNX/GGUF conversion included)
Targets: in-process p95 ≤ 30 ms at 576 and ≤ 120 ms at 2880; sweep and comparison ≤ 150 ms each at 576;
Chromium p95 ≤ 300 ms (τ, idle) and ≤ 250 ms (every slider in turn, no idling); prefill time ratio ≥ 0.7 × token
ratio; cold start ≤ 20 s (cached).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from bench.common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "assets" / "chelsea.jpg"
PROMPT = "What colour is the cat's fur?"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# (method, slider that moves, its range) for the in-process and client moves
MOVES = (("par", "tau", (0.0, 1.0)), ("prumerge", "iqr_multiplier", (0.0, 5.0)),
         ("prumerge+", "iqr_multiplier", (0.0, 5.0)))


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000, q))


def row(name: str, xs: list[float], target: float | None = None) -> str:
    p50, p95 = pct(xs, 50), pct(xs, 95)
    verdict = "" if target is None else ("meets" if p95 <= target else "MISSES")
    tgt = "" if target is None else f"≤ {target:.0f}"
    return f"| {name} | {len(xs)} | {p50:.1f} | {p95:.1f} | {tgt} | {verdict} |"


def settings(explorer, method: str, name: str, value: float):
    return explorer.settings({"method": method, name: value})


def moves(lo: float, hi: float, n: int) -> list[float]:
    """n slider positions sweeping back and forth, as a hand on a slider does."""
    xs = np.linspace(lo, hi, max(2, n // 2))
    out = list(xs) + list(xs[::-1])
    return [float(round(x, 3)) for x in (out * (n // len(out) + 1))[:n]]


# --------------------------------------------------------------------------------------------------
def in_process(explorer, n_moves: int) -> dict[str, list[float]]:
    image = str(IMAGE)
    _, state = explorer.explore(image, PROMPT, settings(explorer, "par", "tau", 0.3), {})  # encode once
    out = {}
    for method, name, (lo, hi) in MOVES:
        explorer.explore(image, PROMPT, settings(explorer, method, name, lo), state)  # warm the per-image memo
        times = []
        for value in moves(lo, hi, n_moves):
            t = time.perf_counter()
            explorer.explore(image, PROMPT, settings(explorer, method, name, value), state, with_per_patch=False)
            times.append(time.perf_counter() - t)
        out[method] = times
    for label, sweep_name in (("sweep (PAR, γ: clusters too)", "cluster_threshold"), ("sweep (PAR, τ)", "tau")):
        times = []
        for value in moves(0.1, 0.6, max(10, n_moves // 5)):
            s = settings(explorer, "par", "tau", value)
            t = time.perf_counter()
            sweep_only(explorer, image, s, sweep_name, state)
            times.append(time.perf_counter() - t)
        out[label] = times
    times = []
    for value in moves(0.1, 0.6, max(10, n_moves // 5)):
        s = settings(explorer, "par", "tau", value)
        t = time.perf_counter()
        compare_only(explorer, image, s, state)
        times.append(time.perf_counter() - t)
    out[f"comparison ({len(explorer.schema.methods)} methods + thumbnails)"] = times
    return out


def sweep_only(explorer, image, s, sweep_name, state):
    """The sweep figure as the app draws it (the service's own `sweep_figure`)."""
    backend, enc, _ = explorer.encoded(image, state)
    _, vt, _ = explorer.reduce(backend, enc, PROMPT, s)
    return explorer.sweep_figure(vt, s, sweep_name)


def compare_only(explorer, image, s, state):
    """The comparison as the app runs it after a move (the service's own `comparison_view`): each method's
    reduction (the active one cached by the move), a half-size thumbnail per method and the bar chart."""
    backend, enc, _ = explorer.encoded(image, state)
    red, _, _ = explorer.reduce(backend, enc, PROMPT, s)
    return explorer.comparison_view(backend, enc, PROMPT, s, red.n_kept)


def encode_times(explorer, n: int) -> list[float]:
    """Seconds per encode of fresh images (crops of the examples: nothing cached) on the offline default."""
    from PIL import Image

    backend = explorer.backend()
    photos = sorted((ROOT / "assets").glob("*.jpg"))
    times = []
    for i in range(n):
        with Image.open(photos[i % len(photos)]) as im:
            im = im.convert("RGB")
        image = im.crop((i, 0, im.size[0] - i, im.size[1]))  # a new image each time: a cache miss
        t = time.perf_counter()
        backend.encode(image)
        times.append(time.perf_counter() - t)
    return times


# --------------------------------------------------------------------------------------------------
def launch(explorer):
    from explorer.ui import build_demo, serve

    return serve(build_demo(explorer), explorer.config, prevent_thread_lock=True, server_name="127.0.0.1",
                 quiet=True)


def through_client(url: str, n_moves: int) -> dict[str, list[float]]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False, download_files=False)
    image = handle_file(str(IMAGE))
    client.predict(image=image, prompt=PROMPT, method="par", api_name="/explore")  # encode once
    out = {}
    for method, name, (lo, hi) in MOVES:
        times = []
        for value in moves(lo, hi, n_moves):
            t = time.perf_counter()
            client.predict(image=image, prompt=PROMPT, method=method, api_name="/explore", **{name: value})
            times.append(time.perf_counter() - t)
        out[method] = times
    return out


# One move as a user makes it: press and release on a slider's track at these fractions of its length, then a drag
# from 30 % to 70 % released at the end; each move starts as soon as the previous one redrew (no idling, none after
# the page load either).
JUMPS = (0.2, 0.8, 0.4, 0.6)
DRAG = (0.3, 0.7)

# In the page: every move's timeline. Resource timings name the queue join and the picture fetch; a load listener
# on the retained-patches <img> marks the picture shown (fetched and decoded); a MutationObserver on the histogram
# marks its last re-render; a text change of the readout marks a move whose pictures did not change.
WATCH_JS = """() => {
    const w = window.__vte = {shown: [], text: [], plot: [], lastSrc: ''};
    const kept = document.querySelector('#overlay-kept');
    const mark = () => {
        const img = kept.querySelector('img');
        if (img && img.src && img.src !== w.lastSrc) {
            w.lastSrc = img.src;
            const src = img.src, set = performance.now();
            const done = () => w.shown.push({src, set, shown: performance.now()});
            if (img.complete && img.naturalWidth) { img.decode().then(done, done); }
            else { img.addEventListener('load', () => img.decode().then(done, done), {once: true}); }
        }
    };
    new MutationObserver(mark).observe(kept, {subtree: true, childList: true, attributes: true,
                                                attributeFilter: ['src']});
    mark();
    const readout = document.querySelector('#readout');
    new MutationObserver(() => w.text.push(performance.now())).observe(readout,
        {subtree: true, childList: true, characterData: true});
    const hist = document.querySelector('#histogram');
    if (hist) new MutationObserver(() => w.plot.push(performance.now())).observe(hist,
        {subtree: true, childList: true, attributes: true});
}"""


def _stamps(log: list, name: str):
    """Wrap `obj.name` (a method of the launched app's objects) so that each call's start and end, in seconds
    since the epoch, are appended to `log`; works for plain and async methods."""
    import functools
    import inspect

    obj, attr = name
    fn = getattr(obj, attr)
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def wrapped(*a, **k):
            t = time.time()
            try:
                return await fn(*a, **k)
            finally:
                log.append((t, time.time()))
    else:
        @functools.wraps(fn)
        def wrapped(*a, **k):
            t = time.time()
            try:
                return fn(*a, **k)
            finally:
                log.append((t, time.time()))
    setattr(obj, attr, wrapped)


def in_chromium(url: str, method: str, sliders: list[str], server: dict | None = None,
                viewport=(1280, 720)) -> dict | str:
    """Moves as a user makes them, from the first result picture on: for each slider of `method` in turn, clicks
    at 20, 80, 40 and 60 % of its track and a drag from 30 to 70 %, each as soon as the previous move redrew.
    Returns {"moves": [ms release → retained-patches picture shown (fetched, decoded)], "first_picture_s",
    "stages": [per-move breakdown dicts], "unchanged": count of moves that redrew no picture (timed to the readout
    instead)}. `server`: {"handler": [(t0, t1)], "post": [(t0, t1)]} lists the app's wrapped methods fill."""
    if not Path(CHROMIUM).exists():
        return "skipped: /usr/bin/chromium is missing"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed"
    moves_ms, stages, unchanged = [], [], 0
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
        t_nav = time.perf_counter()
        page.goto(f"{url}?method={method}")
        page.wait_for_function("document.querySelector('#overlay-kept img') && "
                               "document.querySelector('#overlay-kept img').src", timeout=120_000)
        first_picture = time.perf_counter() - t_nav
        page.evaluate(WATCH_JS)
        origin = page.evaluate("performance.timeOrigin")  # epoch ms of the page's clock zero
        plan = []
        for name in sliders:
            plan += [(name, "click", f) for f in JUMPS] + [(name, "drag", DRAG)]
        for name, kind, where in plan:
            track = page.locator(f"#ctl-{name} input[type=range]")
            track.scroll_into_view_if_needed()
            box = track.bounding_box()
            y = box["y"] + box["height"] / 2
            n_shown = page.evaluate("window.__vte.shown.length")
            n_text = page.evaluate("window.__vte.text.length")
            n_handler = len(server["handler"]) if server else 0
            if kind == "click":
                page.mouse.move(box["x"] + box["width"] * where, y)
                t0 = page.evaluate("performance.now()")
                page.mouse.down()
                page.mouse.up()
            else:
                page.mouse.move(box["x"] + box["width"] * where[0], y)
                page.mouse.down()
                for k in range(1, 9):
                    page.mouse.move(box["x"] + box["width"] * (where[0] + (where[1] - where[0]) * k / 8), y)
                    page.wait_for_timeout(25)
                t0 = page.evaluate("performance.now()")
                page.mouse.up()
            try:
                page.wait_for_function(f"window.__vte.shown.length > {n_shown}", timeout=4_000)
                end = page.evaluate(f"window.__vte.shown[window.__vte.shown.length - 1]")
                t_end, src = end["shown"], end["src"]
            except Exception:
                # the kept set (so the picture) did not change: time the move to its readout instead
                page.wait_for_function(f"window.__vte.text.length > {n_text}", timeout=10_000)
                t_end, src = page.evaluate(f"window.__vte.text[window.__vte.text.length - 1]"), None
                unchanged += 1
            page.wait_for_timeout(0)
            moves_ms.append(t_end - t0)
            stages.append(_breakdown(page, origin, t0, t_end, src, server, n_handler))
        browser.close()
    return {"moves": moves_ms, "first_picture_s": first_picture, "stages": stages, "unchanged": unchanged}


def _breakdown(page, origin: float, t0: float, t_end: float, src: str | None, server: dict | None,
               n_handler: int) -> dict:
    """One move's stages in ms from release, from the page's resource timings and the server's stamps."""
    res = page.evaluate("""(t0) => performance.getEntriesByType('resource')
        .filter(e => e.startTime >= t0 - 1)
        .map(e => ({name: e.name, start: e.startTime, end: e.responseEnd, size: e.transferSize,
                    body: e.decodedBodySize}))""", t0)
    out: dict = {"total": t_end - t0}
    joins = [e for e in res if "/queue/join" in e["name"]]
    if joins:
        out["join"] = joins[0]["start"] - t0  # the front end's event handling before the request leaves
    if server is not None:
        calls = [c for c in server["handler"][n_handler:] if c[0] * 1000 - origin >= t0 - 5]
        if calls:
            h0, h1 = calls[0]
            out["queue"] = h0 * 1000 - origin - (joins[0]["start"] if joins else t0)
            out["handler"] = (h1 - h0) * 1000
            posts = [c for c in server["post"] if c[0] >= h1 - 0.001]
            if posts:
                out["postprocess"] = (posts[0][1] - posts[0][0]) * 1000
                p1 = posts[0][1] * 1000 - origin
            else:
                p1 = h1 * 1000 - origin
            files = [e for e in res if "/file=" in e["name"] and (src is None or e["name"] in src or src in e["name"])]
            if files:
                f = files[-1]
                out["to_fetch"] = f["start"] - p1  # server → browser: the message, the front end's update
                out["fetch"] = f["end"] - f["start"]
                out["decode"] = t_end - f["end"]
                out["picture_kb"] = f["body"] / 1024
            out["files"] = sum(1 for e in res if "/file=" in e["name"])
    plots = page.evaluate(f"window.__vte.plot.filter(t => t >= {t0})")
    if plots:
        out["histogram"] = max(plots) - t0
    return out


STAGES = (("join", "release → request sent (front end)"), ("queue", "request → handler starts (queue)"),
          ("handler", "handler (settings, reducer, pictures, figures)"),
          ("postprocess", "Gradio postprocess (files written, payload)"),
          ("to_fetch", "→ picture requested (message, front end)"), ("fetch", "picture fetched"),
          ("decode", "→ picture decoded and shown"), ("histogram", "release → histogram re-rendered"))


def chromium_rows(explorer, demo, server: dict) -> None:
    """Every method with sliders, a fresh page each (the first moves after a load count), moved as a user moves."""
    schema = explorer.schema
    cases = []
    for method in schema.methods:
        sliders = [f for f in schema.method_controls(method) if schema.specs[f].control.kind == "slider"]
        if sliders:
            cases.append((method, sliders))
    print("\n## Headless Chromium at 1280×720, moved as a user moves (N = 576)\n")
    print("From the first result picture on, no idling: each slider of the method in turn, clicks at 20/80/40/60 % of "
          "its track and a drag 30→70 %, each move as soon as the previous one redrew. Time: release → the "
          "retained-patches picture fetched, decoded and shown (moves that changed no picture: → readout updated).\n")
    print("| method (sliders) | moves | first picture s | 1st move ms | 2nd ms | p50 ms | p95 ms | worst ms | "
          "no picture change | p95 ≤ 200, worst ≤ 400 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    all_stages = []
    for method, sliders in cases:
        res = in_chromium(demo.local_url, method, sliders, server)
        if isinstance(res, str):
            print(res)
            return
        xs = res["moves"]
        p50, p95, worst = np.percentile(xs, 50), np.percentile(xs, 95), max(xs)
        ok = "meets" if p95 <= 200 and worst <= 400 else "MISSES"
        print(f"| {schema.methods[method].label} ({', '.join(sliders)}) | {len(xs)} | {res['first_picture_s']:.2f} | "
              f"{xs[0]:.0f} | {xs[1]:.0f} | {p50:.0f} | {p95:.0f} | {worst:.0f} | {res['unchanged']} | {ok} |")
        all_stages += res["stages"]
    print("\n### One move, stage by stage (ms; median and p95 over every move above, and the slowest move)\n")
    worst = max(all_stages, key=lambda st: st["total"])
    print("| stage | median | p95 | slowest move |\n|---|---:|---:|---:|")
    for key, label in STAGES + (("total", "release → picture shown"),):
        vals = [st[key] for st in all_stages if key in st]
        if vals:
            w = f"{worst[key]:.0f}" if key in worst else "–"
            print(f"| {label} | {np.median(vals):.0f} | {np.percentile(vals, 95):.0f} | {w} |")
    kb = [st["picture_kb"] for st in all_stages if "picture_kb" in st]
    files = [st["files"] for st in all_stages if "files" in st]
    if kb:
        print(f"\nRetained-patches picture: median {np.median(kb):.0f} KB; files fetched per move: median "
              f"{np.median(files):.0f}.")


# --------------------------------------------------------------------------------------------------
def prefill(explorer, repeats: int) -> list[tuple[str, int, int, float, float]]:
    """(method, prompt tokens full, reduced, median prefill full s, reduced s) on the offline default."""
    backend = explorer.backend()
    rows = []
    for method, name, value in (("prumerge", "iqr_multiplier", 1.5), ("top-attention", "budget", 96),
                                ("par", "retrieval_ratio", 0.1)):
        s = settings(explorer, method, name, value)
        _, enc, _ = explorer.encoded(str(IMAGE), {})
        red, _, _ = explorer.reduce(backend, enc, PROMPT, s)
        full = [backend.answer(enc, PROMPT, None, max_new_tokens=1) for _ in range(repeats)]
        reduced = [backend.answer(enc, PROMPT, red, max_new_tokens=1) for _ in range(repeats)]
        rows.append((f"{method} ({red.n_tokens} → {red.n_kept} visual)", full[0].n_prompt_tokens,
                     reduced[0].n_prompt_tokens, statistics.median(a.prefill_s for a in full),
                     statistics.median(a.prefill_s for a in reduced)))
    return rows


# in-LLM methods at their official schedules (FastV: the paper's K = 2, R = 50 %)
IN_LLM = (("fastv", {"layer": 2, "budget": 288}), ("sparsevlm", {}), ("pyramiddrop", {}), ("dart", {"budget": 128, "official_count": True}))


def prefill_in_llm(explorer, repeats: int) -> list[tuple[str, int, float, float, float]]:
    """(method and schedule, text tokens, equivalent-token ratio, median prefill full s, pruned s) on the offline
    default: the pruned prefill runs all N visual tokens into the LM and drops them inside it; the equivalent
    ratio is (text + equivalent visual tokens) / (text + N) — what the prefill time would be were it
    proportional to the tokens each layer runs on."""
    from reducers.inllm import accounting

    backend = explorer.backend()
    layers = int(backend.lm_config.num_hidden_layers)
    n_text = backend.n_text_tokens(PROMPT)
    rows = []
    for method, values in IN_LLM:
        s = explorer.settings({"method": method, **values})
        _, enc, _ = explorer.encoded(str(IMAGE), {})
        red, _, _ = explorer.reduce(backend, enc, PROMPT, s)
        eq = accounting(red, layers)["equivalent_tokens"]
        full = [backend.answer(enc, PROMPT, None, max_new_tokens=1) for _ in range(repeats)]
        pruned = [backend.answer(enc, PROMPT, red, max_new_tokens=1) for _ in range(repeats)]
        schedule = " → ".join(f"{c}@{a}" for a, c in accounting(red, layers)["llm_schedule"])
        rows.append((f"{method} ({schedule}; equivalent {eq:.1f} of {red.n_tokens}, L = {layers})", n_text,
                     (n_text + eq) / (n_text + red.n_tokens), statistics.median(a.prefill_s for a in full),
                     statistics.median(a.prefill_s for a in pruned)))
    return rows


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(cache_dir: str | None = None) -> tuple[float, float]:
    """Seconds from `python app.py` to the first page served, and to the first explore answered; `cache_dir`: an
    empty VTE_CACHE_DIR, so the ONNX (DINOv2) and GGUF (SmolLM2) conversions run first."""
    from gradio_client import Client, handle_file

    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    if cache_dir is not None:
        env["VTE_CACHE_DIR"] = cache_dir
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError("app.py exited during start-up")
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        page = time.perf_counter() - t0
        client = Client(url, verbose=False, download_files=False)
        client.predict(image=handle_file(str(IMAGE)), prompt=PROMPT, method="par", api_name="/explore")
        first = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return page, first


# --------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--moves", type=int, default=100, help="slider moves per method (≥ 100 for the table)")
    parser.add_argument("--quick", action="store_true", help="30 moves, no browser, no cold start")
    parser.add_argument("--parts", default="inprocess,encode,client,chromium,prefill,cold",
                        help="comma-separated subset of inprocess,encode,client,chromium,prefill,cold")
    args = parser.parse_args(argv)
    n = 30 if args.quick else args.moves
    parts = set(args.parts.split(","))
    if args.quick:
        parts -= {"chromium", "cold"}

    from explorer.config import ExplorerConfig
    from explorer.service import Explorer
    from explorer.backend.synthetic import SyntheticBackend

    print(f"Machine: {machine()}\n")
    offline = Explorer(ExplorerConfig())
    offline.backend()
    big = SyntheticBackend(grid=(48, 60), width=1024)
    synthetic = Explorer(ExplorerConfig(), loader=lambda config, progress=None: big)

    if "inprocess" in parts:
        print("## Slider move → all core pictures and readout rebuilt (in-process, encode cached)\n")
        print("| what | moves | p50 ms | p95 ms | target p95 ms | |\n|---|---:|---:|---:|---:|---|")
        res576 = in_process(offline, n)
        res2880 = in_process(synthetic, n)
        for key in res576:
            core = key in dict((m, 0) for m, _, _ in MOVES)
            print(row(f"N = 576 · {key}", res576[key], 30 if core else 150))
        for key in res2880:
            core = key in dict((m, 0) for m, _, _ in MOVES)
            print(row(f"N = 2880 · {key}", res2880[key], 120 if core else None))

    if "encode" in parts:
        print("\n## Encode: one new image through the offline default's tower (DINOv2 ViT-S/14, 336 px, hooks)\n")
        print("| what | images | p50 ms | p95 ms | target p95 ms | |\n|---|---:|---:|---:|---:|---|")
        print(row("encode (features, keys, both attentions, joint)", encode_times(offline, 12 if args.quick else 30)))

    demo = launch(offline) if parts & {"client", "chromium"} else None
    server = {"handler": [], "post": []}
    if demo is not None:  # the server's side of each move, stamped in the launched app itself
        _stamps(server["handler"], (offline, "explore"))
        _stamps(server["post"], (demo, "postprocess_data"))
    try:
        if "client" in parts:
            print("\n## The same move through gradio_client (N = 576, launched app, loopback)\n")
            print("| what | moves | p50 ms | p95 ms | target p95 ms | |\n|---|---:|---:|---:|---:|---|")
            for key, xs in through_client(demo.local_url, n).items():
                print(row(f"client · {key}", xs))
        if "chromium" in parts:
            chromium_rows(offline, demo, server)
    finally:
        if demo is not None:
            demo.close()

    if "prefill" not in parts:
        return
    print("\n## Prefill: LM first forward, all visual tokens vs reduced (offline default, SmolLM2-135M, CPU)\n")
    print("| reduction | prompt tokens full → reduced | token ratio | prefill full ms | reduced ms | time ratio | "
          "time / token ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, nf, nr, tf, tr in prefill(offline, 3 if args.quick else 5):
        tok, tim = nf / nr, tf / tr
        print(f"| {name} | {nf} → {nr} | {tok:.2f}× | {1000 * tf:.0f} | {1000 * tr:.0f} | {tim:.2f}× | "
              f"{tim / tok:.2f} {'(meets ≥ 0.7)' if tim / tok >= 0.7 else '(MISSES ≥ 0.7)'} |")
    print("\n## Prefill inside the LLM: pruned prefill time vs equivalent tokens (offline default, CPU)\n")
    print("| method (visual tokens@from layer) | text tokens | equivalent-token ratio | prefill full ms | pruned ms | "
          "time ratio (pruned / full) |\n|---|---:|---:|---:|---:|---:|")
    for name, n_text, ratio, tf, tr in prefill_in_llm(offline, 3 if args.quick else 5):
        print(f"| {name} | {n_text} | {ratio:.3f} | {1000 * tf:.0f} | {1000 * tr:.0f} | {tr / tf:.3f} |")

    if "cold" in parts:
        import tempfile

        page, first = cold_start()
        print("\n## Cold start (`python app.py`, offline default)\n")
        print(f"converted checkpoints cached: first page served {page:.1f} s ({'meets' if page <= 20 else 'MISSES'} "
              f"≤ 20 s); first explore answered (model loaded, image encoded): {first:.1f} s")
        with tempfile.TemporaryDirectory(prefix="vte-cold-") as empty:
            page, first = cold_start(empty)
        print(f"empty cache (DINOv2 ONNX → safetensors and SmolLM2 GGUF → safetensors, once): first page served "
              f"{page:.1f} s; first explore answered {first:.1f} s")


if __name__ == "__main__":
    main()
