"""Reliability figures of the app, measured on this machine in one run (≈ 4 min on 2 cores).

    python -m bench.reliability                                  # prints the Markdown tables
    python -m bench.reliability --write bench/RESULTS-reliability.md

What is measured (launched apps on loopback, driven through gradio_client and raw HTTP, as a remote user would):
  bad inputs   every file of tests/bad_inputs.py, every control just outside its range and other malformed values
               on /explore and /answer, and crafted file payloads on /explore, /compare, /answer and /export (the
               path shapes of tests/test_security.py naming an image, an empty file, a text file and a missing
               path outside the upload folder): is each answered with a result or one sentence, and does the
               server answer a good request after each? (synthetic backend: the input handling is the point)
  parallel     N sessions with different images and settings, each alone, then all at once (twice, the first
               time with every cache emptied): how many summaries (per-patch data included) differ from the
               solo ones — 8 sessions on the synthetic backend, 4 on the offline default
  memory       RSS of this process before the first request, after a warm-up that fills every cache, at the end
               and at its peak (sampled every 50 ms) over N /explore requests from 4 concurrent sessions
               (synthetic backend, glibc settings of app.main)
  disk         files and bytes in the app's own Gradio cache folder and export folder after N explore + export
               requests, after the cache schedule has run (shortened to 5 s / 5 s here; the app's defaults are
               every 600 s for files older than 3600 s), and after the server has stopped
  hostile      a flood from six other loopback addresses (answer joins at 256 tokens with fresh sessions, 1 MB
               bodies, 40-file non-image uploads, directory and URL file payloads, direct /run calls) while a
               normal visitor on 127.0.0.1 moves a slider: the visitor's p50/p95 with and without the flood, how
               every attack request was answered, RSS and the cache on disk before and after
               (`--hostile-only` runs just this section)
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
RUN_CACHE = os.environ["GRADIO_TEMP_DIR"] = tempfile.mkdtemp(prefix="vte-bench-gradio-")  # this run's Gradio cache

import psutil  # noqa: E402

from bench.common import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from explorer.backend.synthetic import SyntheticBackend  # noqa: E402
from explorer.config import OFFLINE, ExplorerConfig  # noqa: E402
from explorer.runtime import release_freed_memory  # noqa: E402
from explorer.service import Explorer  # noqa: E402
from explorer.settings import Schema  # noqa: E402
from tests import bad_inputs  # noqa: E402
from tests import test_isolation as isolation  # noqa: E402

PROMPT = "What is in the picture?"
HEAD = dict(prompt=PROMPT, method="prumerge", model=OFFLINE, query_points=[])
SCHEMA = Schema.build()


# --------------------------------------------------------------------------------------------------
# Apps and clients
# --------------------------------------------------------------------------------------------------
def synthetic_explorer(**config) -> Explorer:
    backend = SyntheticBackend(view_side=336, cache_size=config.get("encode_cache_size", 8))
    return Explorer(ExplorerConfig(**config), loader=lambda c, progress=None: backend)


@contextmanager
def launched(explorer: Explorer):
    """The app as `python app.py` launches it (queue, limits), on a free loopback port, quietly."""
    from explorer.ui import build_demo, serve

    demo = build_demo(explorer)
    with redirect_stdout(io.StringIO()):
        serve(demo, explorer.config, prevent_thread_lock=True, server_name="127.0.0.1", server_port=None,
              quiet=True)
    try:
        yield demo
    finally:
        with redirect_stdout(io.StringIO()):
            demo.close()


client = isolation.new_client
essence = isolation.essence  # what must not depend on who else is using the server
cold = isolation.cold_caches  # forget every encode, so the next round encodes again, all at once


def explore(c, path, **over) -> list:
    from gradio_client import handle_file

    return c.submit(api_name="/explore", image=handle_file(str(path)), **{**HEAD, **over}).result(timeout=120)


# --------------------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------------------
def bad_input_cases(folder: Path) -> list[tuple[str, str, dict]]:
    """(group, name, keyword overrides for /explore or /answer) — the client-side cases."""
    cases = []
    for maker in list(bad_inputs.BAD) + list(bad_inputs.ODD_BUT_FINE):
        cases.append(("files", maker.__name__, {"__file__": maker(folder)}))
    for name, spec in SCHEMA.specs.items():
        c = spec.control
        if c.kind in ("slider", "number"):
            for value in (c.minimum - 1, c.maximum + 1, "abc", "nan", True):
                cases.append(("controls", f"{name}={value!r}", {name: value}))
        elif c.kind == "choice":
            cases.append(("controls", f"{name}='nope'", {name: "nope"}))
        else:
            cases.append(("controls", f"{name}='maybe'", {name: "maybe"}))
    cases += [("controls", "seed=2**63", {"method": "random", "seed": 2**63}),
              ("controls", "method='nope'", {"method": "nope"}),
              ("controls", "model='nope'", {"model": "nope"}),
              ("controls", "query_points=[['x', 1]]", {"method": "par", "query_points": [["x", 1]]}),
              ("controls", "query_points=300 points", {"method": "par", "query_points": [[1, 1]] * 300})]
    for prompt in (123, ["a"], {"a": 1}, None, "", "x" * 10_000, "图片里有什么？", "what\x00 is\x1b[31m this?"):
        cases.append(("prompts", f"prompt={str(prompt)[:20]!r}", {"method": "par", "prompt": prompt}))
    for value in (0, 257, 2.5, "many", 10**30):
        cases.append(("answer length", f"max_new_tokens={value!r}", {"__answer__": value}))
    return cases


def measure_bad_inputs(folder: Path) -> dict:
    import httpx
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from tests.test_security import DOOR, SHAPES, raw_call, raw_data

    good = bad_inputs.good_jpeg(folder, seed=7)
    explorer = synthetic_explorer()
    groups: dict[str, dict] = {}
    with launched(explorer) as demo:
        c = client(demo.local_url)
        url = demo.local_url.rstrip("/")

        def serving() -> bool:
            try:
                return explore(c, good)[-1]["n_kept"] >= 1
            except Exception:  # noqa: BLE001 - counted as not serving
                return False

        def count(group, outcome, served):
            g = groups.setdefault(group, {"cases": 0, "result": 0, "sentence": 0, "gradio": 0, "other": 0,
                                          "not serving": 0})
            g["cases"] += 1
            g[outcome] += 1
            g["not serving"] += 0 if served else 1

        for group, _name, over in bad_input_cases(folder):
            over = dict(over)
            path = over.pop("__file__", good)
            answer = over.pop("__answer__", None)
            try:
                if answer is not None:
                    c.submit(api_name="/answer", image=handle_file(str(path)), max_new_tokens=answer,
                             **HEAD).result(timeout=120)
                else:
                    explore(c, path, **over)
                outcome = "result"
            except AppError as err:
                outcome = "sentence" if bad_inputs.is_one_sentence(str(err)) else "other"
            except httpx.HTTPStatusError as err:  # refused at the upload (explorer.guard): not an image
                detail = err.response.json().get("detail") if err.response.status_code == 415 else None
                outcome = "sentence" if bad_inputs.is_one_sentence(detail) else "other"
            count(group, outcome, serving())

        folder_secret = folder / "secret"
        folder_secret.mkdir(exist_ok=True)
        targets = list(bad_inputs.not_uploaded_files(folder_secret).values())
        for api in ("explore", "compare", "answer", "export"):
            for shape in SHAPES.values():
                for target in targets:
                    event, data = raw_call(url, api, raw_data(api, shape(str(target))))
                    message = data.get("error") if isinstance(data, dict) else data
                    if event not in ("error", DOOR):  # DOOR: the guard's refusal before the queue
                        outcome = "other"
                    elif message is None:
                        outcome = "gradio"
                    else:
                        outcome = "sentence" if bad_inputs.is_one_sentence(message) else "other"
                    count("crafted file payloads (raw HTTP)", outcome, True)
        served = serving()
        groups["crafted file payloads (raw HTTP)"]["not serving"] += 0 if served else 1
    explorer.close()
    return groups


# --------------------------------------------------------------------------------------------------
# Parallel sessions
# --------------------------------------------------------------------------------------------------
SESSIONS = isolation.SESSIONS  # the same 8 sessions tests/test_isolation.py checks


def measure_parallel(explorer: Explorer, pics: list[Path], n: int, model: str) -> dict:
    jobs = [(pics[i], {**SESSIONS[i], "model": model}) for i in range(n)]
    with launched(explorer) as demo:
        clients = [client(demo.local_url) for _ in jobs]
        t0 = time.perf_counter()
        alone = [essence(explore(c, path, **over)[-1]) for c, (path, over) in zip(clients, jobs)]
        solo_s = time.perf_counter() - t0
        differing, requests, together_s = 0, 0, []
        for round_ in range(2):
            if round_ == 0:
                cold(explorer)
            start = threading.Barrier(n, timeout=120)

            def run(i):
                start.wait()
                path, over = jobs[i]
                return essence(explore(clients[i], path, **over)[-1])

            t0 = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                together = list(pool.map(run, range(n)))
            together_s.append(time.perf_counter() - t0)
            differing += sum(a != b for a, b in zip(alone, together))
            requests += n
    return dict(sessions=n, requests=requests, differing=differing, solo_s=solo_s, together_s=together_s)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------
def measure_memory(pics: list[Path], n: int, warm_up: int) -> dict:
    proc = psutil.Process()
    explorer = synthetic_explorer(encode_cache_size=4)
    backend = explorer.backend()
    prompts = ["What is in the picture?", "Where is the red thing?", "Count the objects.", "Is it daytime?",
               "What colour is the sky?"]
    methods = [m for m in ("par", "prumerge", "prumerge+", "top-attention", "uniform") if m in explorer.schema.methods]
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.05):
            peak[0] = max(peak[0], proc.memory_info().rss)

    local = threading.local()
    with launched(explorer) as demo:
        start_rss = proc.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def request(i):
            if not hasattr(local, "c"):
                local.c = client(demo.local_url)
            explore(local.c, pics[i % len(pics)], method=methods[i % len(methods)], prompt=prompts[i % 5],
                    attention=("official", "head-mean")[i % 2], tau=(i % 7) / 10)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(request, range(warm_up)))
            warm_rss = proc.memory_info().rss
            list(pool.map(request, range(warm_up, n)))
        seconds = time.perf_counter() - t0
        end_rss = proc.memory_info().rss
        stop.set()
        sampler.join()
        caches = dict(encodes=(len(backend._encoded), backend._encoded.size),
                      reductions=(len(explorer._reductions), explorer._reductions.size),
                      tokens=(len(explorer._tokens), explorer._tokens.size))
    explorer.close()
    mb = 2**20
    return dict(requests=n, warm_up=warm_up, start=start_rss / mb, warm=warm_rss / mb, end=end_rss / mb,
                peak=max(peak[0], end_rss) / mb, seconds=seconds, caches=caches)


# --------------------------------------------------------------------------------------------------
# Disk
# --------------------------------------------------------------------------------------------------
def tree(folder: Path, skip: set[Path] = frozenset()) -> tuple[int, int]:
    files = [p for p in folder.rglob("*") if p.is_file() and p not in skip] if folder.exists() else []
    return len(files), sum(p.stat().st_size for p in files)


def measure_disk(pics: list[Path], n: int, every: int = 5, age: int = 5) -> dict:
    cache = Path(tempfile.mkdtemp(prefix="vte-bench-disk-"))
    os.environ["GRADIO_TEMP_DIR"] = str(cache)  # read by Gradio when the Blocks are built and on each upload
    explorer = synthetic_explorer(cache_clean_every_s=every, cache_max_age_s=age)
    rows = {}
    with launched(explorer) as demo:
        examples = {Path(p) for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}
        rows["before"] = (tree(cache), tree(explorer.export_root))
        clients = [client(demo.local_url) for _ in range(5)]
        t0 = time.perf_counter()

        def session(k):
            for i in range(k, n, len(clients)):
                explore(clients[k], pics[i % len(pics)], method=("prumerge", "par", "uniform")[i % 3],
                        iqr_multiplier=(i % 9) / 2, budget=8 + i)
                clients[k].submit(api_name="/export").result(timeout=120)

        with ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(session, range(len(clients))))
        seconds = time.perf_counter() - t0
        rows["after requests"] = (tree(cache), tree(explorer.export_root))
        time.sleep(2 * every + age + 1)  # the schedule runs every `every` s and deletes files older than `age` s
        rows["after delete_cache ran"] = (tree(cache), tree(explorer.export_root))
    export_root = explorer.export_root
    explorer.close()
    rows["after the server stopped"] = (tree(cache), tree(export_root))
    kept = tree(cache) if not examples else (len(examples), sum(p.stat().st_size for p in examples if p.exists()))
    shutil.rmtree(cache, ignore_errors=True)
    return dict(requests=n, seconds=seconds, rows=rows, examples=kept, every=every, age=age)


# --------------------------------------------------------------------------------------------------
# A hostile visitor
# --------------------------------------------------------------------------------------------------
def measure_hostile(pics: list[Path], moves: int, rounds: int) -> dict:
    """The flood of tests/test_hostile.py, bounded (`rounds` per attacker), while a visitor moves a slider."""
    import json as _json

    import httpx

    from tests.test_hostile import ATTACKERS, SlowBackend, fn_index, from_address, join, join_data, upload

    proc = psutil.Process()
    cache = Path(os.environ["GRADIO_TEMP_DIR"])
    backend = SlowBackend(step=0.02)  # answers at 20 ms per token, as a small LLM on a CPU
    explorer = Explorer(ExplorerConfig(), loader=lambda c, progress=None: backend)
    junk = Path(tempfile.mkdtemp(prefix="vte-bench-junk-")) / "notes.png"
    junk.write_bytes(b"not an image\n" * 2_000)  # 26 kB of text named .png
    statuses: dict[str, dict[int, int]] = {}
    with launched(explorer) as demo:
        url = demo.local_url.rstrip("/")
        visitor = client(demo.local_url)
        explore(visitor, pics[0], method="random", budget=8)  # warm: the encode is cached

        def moves_ms(n):
            times, failed = [], 0
            for i in range(n):
                t0 = time.perf_counter()
                try:
                    explore(visitor, pics[0], method="random", budget=8 + i % 40)
                    times.append(1000 * (time.perf_counter() - t0))
                except Exception:  # noqa: BLE001 - counted
                    failed += 1
            times.sort()
            pick = (lambda q: times[min(len(times) - 1, int(q * len(times)))]) if times else (lambda q: float("nan"))
            return dict(p50=pick(0.5), p95=pick(0.95), failed=failed, n=n)

        quiet = moves_ms(moves)
        rss_before, disk_before = proc.memory_info().rss, tree(cache)
        answer, explore_fn = fn_index(demo, "answer"), fn_index(demo, "explore")

        def attack(ip):
            with from_address(ip) as http:
                image = {"path": upload(http, url, pics[1]), "meta": {"_type": "gradio.FileData"}}
                flood = join_data("answer", image)
                flood[5] = 256
                big = join_data("answer", image)
                big[4] = [[] for _ in range(350_000)]
                body = _json.dumps({"data": big, "fn_index": answer, "session_hash": "x"}).encode()
                for _ in range(rounds):
                    sent = {
                        "answer join, 256 tokens": lambda: join(http, url, answer, flood),
                        "1 MB join body": lambda: http.post(f"{url}/gradio_api/queue/join", content=body,
                                                            headers={"content-type": "application/json"}),
                        "upload of 40 non-images": lambda: http.post(
                            f"{url}/gradio_api/upload",
                            files=[("files", (f"x{i}.png", junk.read_bytes(), "image/png")) for i in range(40)]),
                        "directory payload": lambda: join(http, url, explore_fn, join_data(
                            "explore", {"path": str(cache), "meta": {"_type": "gradio.FileData"}})),
                        "URL payload": lambda: join(http, url, explore_fn, join_data(
                            "explore", {"path": "https://example.com/a.png", "meta": {"_type": "gradio.FileData"}})),
                        "direct /run/explore": lambda: http.post(f"{url}/gradio_api/run/explore",
                                                                 json={"data": join_data("explore", image)}),
                    }
                    for what, call in sent.items():
                        try:
                            code = call().status_code
                        except httpx.HTTPError:
                            code = 0
                        row = statuses.setdefault(what, {})
                        row[code] = row.get(code, 0) + 1

        peak = [proc.memory_info().rss]
        stop = threading.Event()

        def sample():
            while not stop.wait(0.05):
                peak[0] = max(peak[0], proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        attackers = [threading.Thread(target=attack, args=(ip,)) for ip in ATTACKERS]
        for t in attackers:
            t.start()
        flooded = moves_ms(moves)
        for t in attackers:
            t.join()
        stop.set()
        sampler.join()
        rss_after, disk_after = proc.memory_info().rss, tree(cache)
        refused = dict(demo.guard.refused)
        backend.stop.set()  # the accepted answers end early
        explorer.stopping.set()
    explorer.close()
    shutil.rmtree(junk.parent, ignore_errors=True)
    mb = 2**20
    return dict(quiet=quiet, flooded=flooded, statuses=statuses, refused=refused, rounds=rounds,
                rss=(rss_before / mb, peak[0] / mb, rss_after / mb), disk=(disk_before, disk_after))


def report_hostile(say, h: dict) -> None:
    say("\n## A hostile visitor: a flood while a normal visitor moves a slider\n")
    say(f"Synthetic backend whose answers take 20 ms per token. Six attacker addresses (127.0.0.2–7) send "
        f"{h['rounds']} rounds each of the requests below at once, while the visitor on 127.0.0.1 moves a slider "
        f"{h['quiet']['n']} times (an explore with a new budget). RSS is this process's (server and clients).\n")
    say("| visitor | moves | failed | p50 ms | p95 ms |\n|---|---:|---:|---:|---:|")
    for name in ("quiet", "flooded"):
        v = h[name]
        say(f"| {'alone' if name == 'quiet' else 'during the flood'} | {v['n']} | **{v['failed']}** | "
            f"{v['p50']:.0f} | **{v['p95']:.0f}** |")
    say("\n| attack request | sent | answered with (HTTP status × count) |\n|---|---:|---|")
    for what, codes in h["statuses"].items():
        say(f"| {what} | {sum(codes.values())} | " + ", ".join(f"{c} × {n}" for c, n in sorted(codes.items())) + " |")
    before, peak, after = h["rss"]
    (f0, b0), (f1, b1) = h["disk"]
    say(f"\nRSS {before:.0f} MB before the flood, peak {peak:.0f} MB, {after:.0f} MB after. Gradio's cache: "
        f"{f0} files / {b0 / 1e6:.1f} MB before, {f1} files / {b1 / 1e6:.1f} MB after. Refused by the guard: "
        + ", ".join(f"{k} {v}" for k, v in sorted(h["refused"].items())) + ".")


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="/explore requests of the memory run")
    parser.add_argument("--disk-requests", type=int, default=50, help="explore + export pairs of the disk run")
    parser.add_argument("--offline-sessions", type=int, default=4, help="parallel sessions on the offline default "
                        "(0: skip the offline default)")
    parser.add_argument("--hostile-moves", type=int, default=30, help="the visitor's slider moves (hostile run)")
    parser.add_argument("--hostile-rounds", type=int, default=10, help="rounds per attacker (hostile run)")
    parser.add_argument("--hostile-only", action="store_true", help="only the hostile-visitor section")
    parser.add_argument("--write", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    release_freed_memory()  # as app.main does
    out = []

    def say(line: str = "") -> None:
        out.append(line)
        print(line, flush=True)

    t_start = time.perf_counter()
    folder = Path(tempfile.mkdtemp(prefix="vte-bench-files-"))
    pics = isolation.distinct_images(folder)
    say(f"# Reliability (`python -m bench.reliability`, {time.strftime('%Y-%m-%d')})\n")
    say(f"Machine: {machine()}\n")
    if args.hostile_only:
        report_hostile(say, measure_hostile(pics, args.hostile_moves, args.hostile_rounds))
        if args.write:
            args.write.write_text("\n".join(out) + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        return

    say("## Bad inputs: each answered with a result or one sentence, and the server still serving\n")
    say("Synthetic backend. A sentence: 10–400 characters, one line, naming the problem (never \"Something went "
        "wrong\"). Crafted file payloads: every path shape of tests/test_security.py × an image, an empty file, a "
        "text file and a missing path outside the upload folder × /explore, /compare, /answer, /export; Gradio "
        "refuses FileData-typed ones itself, before the app, with a message-less error.\n")
    say("| group | cases | valid result | one sentence | Gradio's message-less refusal | anything else | "
        "server not serving after |\n|---|---:|---:|---:|---:|---:|---:|")
    groups = measure_bad_inputs(folder)
    total = {k: 0 for k in ("cases", "result", "sentence", "gradio", "other", "not serving")}
    for name, g in groups.items():
        say(f"| {name} | {g['cases']} | {g['result']} | {g['sentence']} | {g['gradio']} | {g['other']} | "
            f"{g['not serving']} |")
        for k in total:
            total[k] += g[k]
    say(f"| **all** | **{total['cases']}** | {total['result']} | {total['sentence']} | {total['gradio']} | "
        f"**{total['other']}** | **{total['not serving']}** |")

    say("\n## Parallel sessions: each session's summary at once vs alone\n")
    say("Summaries compared whole (kept indices, attention, relevance, merge groups, stages, settings, query). Two "
        "concurrent rounds: the first after emptying every cache (all encodes at once on the shared model).\n")
    say("| backend | sessions | concurrent requests | summaries differing from solo | solo (sequential) s | "
        "at once s (cold, warm) |\n|---|---:|---:|---:|---:|---|")
    synth = synthetic_explorer()
    p = measure_parallel(synth, pics, 8, OFFLINE)
    synth.close()
    say(f"| synthetic 24×24 | {p['sessions']} | {p['requests']} | **{p['differing']}** | {p['solo_s']:.1f} | "
        f"{p['together_s'][0]:.1f}, {p['together_s'][1]:.1f} |")
    if args.offline_sessions:
        offline = Explorer(ExplorerConfig())
        t0 = time.perf_counter()
        offline.backend()
        load_s = time.perf_counter() - t0
        p = measure_parallel(offline, pics, args.offline_sessions, OFFLINE)
        offline.close()
        say(f"| offline default (DINOv2 + SmolLM2; loaded in {load_s:.0f} s) | {p['sessions']} | {p['requests']} | "
            f"**{p['differing']}** | {p['solo_s']:.1f} | {p['together_s'][0]:.1f}, {p['together_s'][1]:.1f} |")

    say("\n## Memory: RSS of the server process over many requests\n")
    m = measure_memory(pics, args.requests, warm_up=min(120, args.requests // 2))
    caches = ", ".join(f"{k} {a}/{b}" for k, (a, b) in m["caches"].items())
    say(f"Synthetic backend, caches for 4 encodes; {m['requests']} /explore requests from 4 concurrent sessions over "
        f"{len(pics)} images, 5 methods, 5 prompts, both attention modes ({m['seconds']:.0f} s); caches at the end: "
        f"{caches}.\n")
    say("| requests | RSS at start MB | after warm-up MB | at end MB | peak MB | end − warm-up MB |\n"
        "|---:|---:|---:|---:|---:|---:|")
    say(f"| {m['requests']} (warm-up {m['warm_up']}) | {m['start']:.0f} | {m['warm']:.0f} | {m['end']:.0f} | "
        f"{m['peak']:.0f} | {m['end'] - m['warm']:+.0f} |")

    say("\n## Disk: Gradio's cache and the export folder\n")
    d = measure_disk(pics, args.disk_requests)
    say(f"Synthetic backend, {d['requests']} explore + export pairs from 5 concurrent sessions ({d['seconds']:.0f} s), "
        f"delete_cache every {d['every']} s for files older than {d['age']} s (the app's defaults: 600 s / 3600 s). "
        f"Gradio keeps the example thumbnails (component values) by design: {d['examples'][0]} files, "
        f"{d['examples'][1] / 1e6:.1f} MB, the same files on every start.\n")
    say("| when | Gradio cache files | Gradio cache MB | export folder files | export folder MB |\n"
        "|---|---:|---:|---:|---:|")
    for when, ((cf, cb), (ef, eb)) in d["rows"].items():
        say(f"| {when} | {cf} | {cb / 1e6:.2f} | {ef} | {eb / 1e6:.2f} |")
    report_hostile(say, measure_hostile(pics, args.hostile_moves, args.hostile_rounds))
    say(f"\nTotal run time {time.perf_counter() - t_start:.0f} s.")
    if args.write:
        args.write.write_text("\n".join(out) + "\n")
    for leftover in (folder, Path(os.environ["GRADIO_TEMP_DIR"]), RUN_CACHE):  # this run's own temp folders
        shutil.rmtree(leftover, ignore_errors=True)


if __name__ == "__main__":
    main()
