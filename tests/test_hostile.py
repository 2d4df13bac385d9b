"""Issue 24, "A public Space survives a hostile visitor": each hole, attacked as a visitor would attack it,
against a launched app on loopback addresses (the attackers connect from 127.0.0.2…, the normal visitor from
127.0.0.1), with bounded request loops. Each of these fails on the code before `explorer.guard`.

1. queue flood — per-address and total caps on pending long jobs; the ceiling on a public Space
2. queued payload memory — request bodies above the limit refused before they are read or decoded
3. cache cleaning poisoned — directory payloads refused at the door, never recorded; the app's cleaner drops
   bad entries and bounds the cache
4. URL fetches — a FileData URL is refused before Gradio would download it
5. queue bypass — /gradio_api/run/<api> closed everywhere; gradio_client still works
6. disk growth — uploads: images only, a few per request; outputs: the cache budget
7. log injection — no forged line, no unbounded growth
8. 500s — UI-only handlers private or answering one sentence; a dropdown error does not echo a huge value
9. image memory — palette images with transparency converted without full-size RGBA copies
Also: headers (CSP that the page works under, frame-ancestors, no X-Forwarded-Host reflection); SIGTERM while
an answer generates stops cleanly.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from PIL import Image

from explorer.backend.synthetic import SyntheticBackend
from explorer.config import OFFLINE, ExplorerConfig
from explorer.service import Explorer
from tests import bad_inputs
from tests.conftest import _launch
from tests.test_security import raw_data

ROOT = Path(__file__).resolve().parent.parent
HEAD = dict(prompt="What is in the picture?", method="prumerge", model=OFFLINE, query_points=[])
ATTACKERS = [f"127.0.0.{i}" for i in range(2, 8)]  # six addresses on the loopback network
FORGED = 'INFO: 127.0.0.1:1 - "GET /admin HTTP/1.1" 200 OK FORGED'


class SlowBackend(SyntheticBackend):
    """The synthetic backend whose answers take `step` seconds per token (as a real LLM would), ending early
    once `stop` is set (so a test's leftover answers do not outlive it)."""

    def __init__(self, step=0.02, **kw):
        super().__init__(view_side=168, **kw)
        self.step, self.stop = step, threading.Event()

    def answer_stream(self, enc, prompt, reduction=None, max_new_tokens=None):
        final = None
        for item in super().answer_stream(enc, prompt, reduction, max_new_tokens):
            final = item
        for i in range(max_new_tokens or 8):
            if self.stop.wait(self.step):
                break
            yield f"token {i}"
        yield final


@contextlib.contextmanager
def app(config=None, backend=None):
    backend = backend or SlowBackend()
    explorer = Explorer(config or ExplorerConfig(), loader=lambda c, progress=None: backend)
    demo = _launch(explorer)
    try:
        yield demo, demo.local_url.rstrip("/")
    finally:
        getattr(explorer, "stopping", threading.Event()).set()
        getattr(backend, "stop", threading.Event()).set()
        demo.close()
        explorer.close()


def limit(name: str, default: int) -> int:
    """A limit of the default config (`default`, its value, where the config predates it: so the attacks
    below can be replayed against the code before the guard)."""
    return getattr(ExplorerConfig(), name, default)


def from_address(ip: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=ip), timeout=30)


def upload(http: httpx.Client, url: str, path: Path) -> str:
    with open(path, "rb") as f:
        r = http.post(f"{url}/gradio_api/upload", files={"files": (path.name, f, "image/jpeg")})
    assert r.status_code == 200, r.text[:200]
    return r.json()[0]


def fn_index(demo, api_name: str | None = None, fn_name: str | None = None) -> int:
    for index, fn in demo.fns.items():
        if (api_name and fn.api_name == api_name) or (fn_name and getattr(fn.fn, "__name__", "") == fn_name):
            return index
    raise AssertionError(f"no function {api_name or fn_name}")


def join_data(api: str, image) -> list:
    """The positional `data` of a /queue/join (the session State included, as None) for explore or answer."""
    data = raw_data(api, image)
    data.insert({"explore": 5, "answer": 6}[api], None)
    return data


def join(http, url, index, data, **extra) -> httpx.Response:
    body = {"data": data, "fn_index": index, "session_hash": uuid.uuid4().hex, "event_data": None,
            "trigger_id": None, **extra}
    return http.post(f"{url}/gradio_api/queue/join", json=body)


def explore(client, path, **over):
    from gradio_client import handle_file

    return client.submit(api_name="/explore", image=handle_file(str(path)), **{**HEAD, **over}).result(timeout=60)


def new_client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return bad_inputs.good_jpeg(tmp_path_factory.mktemp("hostile"), seed=24)


# ----------------------------------------------------------------------------------------------------------
# 1. Queue flood
# ----------------------------------------------------------------------------------------------------------
def test_a_queue_flood_leaves_room_for_other_visitors(image):
    """Six addresses each POST 12 /answer joins at 256 tokens with a fresh session each and never open an
    event stream (72 > the 64 places the queue had before the guard). Each address gets at most `max_long_jobs_per_client`, all together at
    most `max_long_jobs`, the rest a 429 with one sentence; a normal visitor then explores and moves a slider."""
    with app() as (demo, url):
        index = fn_index(demo, "answer")
        accepted, refused = {}, []
        for ip in ATTACKERS:
            with from_address(ip) as http:
                data = join_data("answer", {"path": upload(http, url, image), "meta": {"_type": "gradio.FileData"}})
                data[5] = 256  # max_new_tokens
                for _ in range(12):
                    r = join(http, url, index, data)
                    if r.status_code == 200:
                        accepted[ip] = accepted.get(ip, 0) + 1
                    else:
                        refused.append((r.status_code, r.json().get("detail")))
        client = new_client(url)  # the normal visitor, on 127.0.0.1
        assert explore(client, image)[-1]["n_kept"] >= 1
        assert explore(client, image, method="random", budget=20)[-1]["n_kept"] >= 1  # a slider move
        assert all(n <= limit("max_long_jobs_per_client", 2) for n in accepted.values()), accepted
        assert sum(accepted.values()) <= limit("max_long_jobs", 8), accepted
        assert refused and all(code == 429 and bad_inputs.is_one_sentence(why) for code, why in refused), refused[:3]


def test_answers_are_shorter_on_a_public_space(monkeypatch, image):
    """On a Space (SPACE_ID set) the answer length is capped at `public_max_new_tokens`, in the API and on
    the sliders."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    from explorer import hosting

    config = hosting.public_limits(ExplorerConfig(), {"SPACE_ID": "someone/explorer"})
    assert config.max_new_tokens_limit == ExplorerConfig().public_max_new_tokens < 256
    assert hosting.public_limits(ExplorerConfig(), {}) == ExplorerConfig()
    with app(config, SlowBackend(step=0)) as (demo, url):
        client = new_client(url)
        with pytest.raises(AppError, match=f"from 1 to {config.max_new_tokens_limit}, got 256"):
            client.submit(api_name="/answer", image=handle_file(str(image)), max_new_tokens=256,
                          **HEAD).result(timeout=60)
        sliders = [b for b in demo.blocks.values() if getattr(b, "elem_id", "") in ("max-new-tokens", "fidelity-tokens")]
        assert len(sliders) == 2 and all(s.maximum == config.max_new_tokens_limit for s in sliders)


# ----------------------------------------------------------------------------------------------------------
# 2. Queued payload memory
# ----------------------------------------------------------------------------------------------------------
def test_oversized_bodies_are_refused_before_they_are_decoded(image):
    """A /answer join with 1 MB of `query_points` ([[],[],…]) — with a Content-Length and chunked without one —
    is refused (413, one sentence) and nothing is queued."""
    with app() as (demo, url):
        index = fn_index(demo, "answer")
        with from_address(ATTACKERS[0]) as http:
            data = join_data("answer", {"path": upload(http, url, image), "meta": {"_type": "gradio.FileData"}})
            data[4] = [[] for _ in range(350_000)]  # query_points: ≈ 1 MB of JSON
            body = json.dumps({"data": data, "fn_index": index, "session_hash": uuid.uuid4().hex}).encode()
            assert len(body) > 1_000_000
            sized = http.post(f"{url}/gradio_api/queue/join", content=body,
                              headers={"content-type": "application/json"})

            def chunks():
                for i in range(0, len(body), 65536):
                    yield body[i:i + 65536]

            chunked = http.post(f"{url}/gradio_api/queue/join", content=chunks(),
                                headers={"content-type": "application/json"})
        for r in (sized, chunked):
            assert r.status_code == 413, (r.status_code, r.text[:200])
            assert bad_inputs.is_one_sentence(r.json()["detail"])
        assert len(demo._queue) == 0 and not any(demo._queue.active_jobs)


# ----------------------------------------------------------------------------------------------------------
# 3. Cache cleaning poisoned
# ----------------------------------------------------------------------------------------------------------
def test_a_directory_payload_is_refused_and_never_recorded_for_deletion(image):
    from gradio.utils import get_upload_folder

    with app() as (demo, url):
        index = fn_index(demo, "explore")
        with from_address(ATTACKERS[0]) as http:
            uploaded = Path(upload(http, url, image))
            folders = [str(uploaded.parent), str(Path(get_upload_folder()))]
            answers = [join(http, url, index, join_data("explore", {"path": p, "meta": {"_type": "gradio.FileData"}}))
                       for p in folders]
        time.sleep(0.5)  # had anything been queued, it would have run by now
        recorded = [p for s in demo.temp_file_sets for p in s if os.path.isdir(p)]
        assert not recorded, recorded
        from explorer.ui import GENERIC_FILE

        assert all(r.status_code == 400 and r.json()["detail"] == GENERIC_FILE for r in answers), \
            [(r.status_code, r.text[:100]) for r in answers]


def test_the_cleaner_survives_bad_entries_and_bounds_the_cache(image, tmp_path):
    """However an entry got recorded (a directory, a name that is not a path), the app's cleaner drops it
    and goes on; above `cache_max_mb` the oldest outputs go first; the server stops without an error."""
    config = ExplorerConfig(cache_max_mb=1, cache_check_every_s=1)
    with app(config) as (demo, url):
        client = new_client(url)
        for i in range(12):  # each explore leaves ≈ 0.1–0.8 MB of pictures
            explore(client, bad_inputs.good_jpeg(tmp_path, seed=100 + i, size=(640, 480)), budget=8 + i)
        bad_dir = tmp_path / "a-directory"
        bad_dir.mkdir()
        demo.upload_file_set.update({str(bad_dir), "\x00not a path"})
        cleaner = demo.guard.cleaner
        passes = cleaner.passes
        assert _wait(lambda: cleaner.passes >= passes + 2, 20)
        held = [p for s in demo.temp_file_sets for p in s if os.path.isfile(p)]
        kept = {p for b in demo.blocks.values() for p in getattr(b, "keep_in_cache", ())}
        assert sum(os.path.getsize(p) for p in held if p not in kept) <= config.cache_max_mb * 2**20
        assert str(bad_dir) not in demo.upload_file_set and bad_dir.is_dir()  # dropped, never deleted
        assert explore(client, image)[-1]["n_kept"] >= 1  # and the app still serves


def _wait(condition, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# ----------------------------------------------------------------------------------------------------------
# 4. URL fetches
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["path", "url"])
def test_file_payload_urls_are_never_fetched(monkeypatch, where):
    """A FileData naming an http(s) URL: Gradio would download it (public hosts only; here its downloader is
    replaced by a recorder, so nothing leaves the machine). It is refused before any download."""
    from gradio import processing_utils

    fetched = []

    async def recorder(url, cache_dir):
        fetched.append(url)
        raise RuntimeError("the test's recorder does not download")

    monkeypatch.setattr(processing_utils, "async_ssrf_protected_download", recorder)
    target = "https://example.com/cat.png"
    payload = {"path": target, "meta": {"_type": "gradio.FileData"}} if where == "path" else \
        {"path": target, "url": target, "meta": {"_type": "gradio.FileData"}}
    with app() as (demo, url):
        with from_address(ATTACKERS[0]) as http:
            r = join(http, url, fn_index(demo, "explore"), join_data("explore", payload))
        time.sleep(0.5)
    assert not fetched, fetched
    assert r.status_code == 400


# ----------------------------------------------------------------------------------------------------------
# 5. Queue bypass
# ----------------------------------------------------------------------------------------------------------
def test_direct_run_routes_are_closed_off_spaces_and_the_client_still_works(monkeypatch, image):
    monkeypatch.delenv("SPACE_ID", raising=False)
    with app() as (demo, url):
        with from_address(ATTACKERS[0]) as http:
            data = join_data("explore", {"path": upload(http, url, image), "meta": {"_type": "gradio.FileData"}})
            for api in ("explore", "answer", "compare", "export"):
                r = http.post(f"{url}/gradio_api/run/{api}", json={"data": data})
                assert r.status_code == 404, (api, r.status_code, r.text[:200])
            r = http.post(f"{url}/gradio_api/run/predict", json={"data": data, "fn_index": fn_index(demo, "explore")})
            assert r.status_code == 404, (r.status_code, r.text[:200])
        assert explore(new_client(url), image)[-1]["n_kept"] >= 1


# ----------------------------------------------------------------------------------------------------------
# 6. Disk growth
# ----------------------------------------------------------------------------------------------------------
def test_uploads_take_images_only_and_a_few_at_a_time(image, tmp_path):
    from gradio.utils import get_upload_folder

    most = limit("max_upload_files", 4)
    root = Path(get_upload_folder())
    before = {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()
    text = tmp_path / "notes.png"
    text.write_bytes(b"not an image\n" * 80_000)  # ≈ 1 MB, named .png
    with app() as (demo, url):
        with from_address(ATTACKERS[0]) as http:
            many = [("files", (f"x{i}.png", text.read_bytes(), "image/png")) for i in range(40)]
            r_many = http.post(f"{url}/gradio_api/upload", files=many)
            images = [("files", (f"i{i}.jpg", image.read_bytes(), "image/jpeg"))
                      for i in range(most + 1)]
            r_images = http.post(f"{url}/gradio_api/upload", files=images)
            one_text = [("files", ("notes.png", text.read_bytes(), "image/png"))]
            r_text = http.post(f"{url}/gradio_api/upload", files=one_text)
            ok = [("files", (f"i{i}.jpg", image.read_bytes(), "image/jpeg")) for i in range(most)]
            r_ok = http.post(f"{url}/gradio_api/upload", files=ok)
        for r in (r_many, r_images, r_text):
            assert r.status_code in (400, 413, 415), (r.status_code, r.text[:200])
            assert bad_inputs.is_one_sentence(r.json()["detail"])
        assert r_ok.status_code == 200 and len(r_ok.json()) == most
        after = {p for p in root.rglob("*") if p.is_file()}
        new = {p for p in after - before if not str(p).endswith(".jpg")}
        assert not [p for p in new if p.read_bytes()[:12] == b"not an image"], "a refused upload stayed on disk"


# ----------------------------------------------------------------------------------------------------------
# 7. Log injection
# ----------------------------------------------------------------------------------------------------------
def test_log_lines_cannot_be_forged_or_grow_without_bound(capfd, caplog):
    """File payloads whose path holds a forged log line, and one of 200 kB: no captured line starts with the
    forged text, and the log grows by a bounded amount. A traceback's lines are marked."""
    import logging

    caplog.set_level(logging.INFO)
    with app() as (demo, url):
        index = fn_index(demo, "explore")
        capfd.readouterr()
        with from_address(ATTACKERS[0]) as http:
            for path in (f"/nope\n{FORGED}", f"/tmp/gradio/x\r\n{FORGED}", "/x" * 100_000):
                join(http, url, index, join_data("explore", {"path": path, "meta": {"_type": "gradio.FileData"}}))
        time.sleep(1.0)
        out = capfd.readouterr()
    text = out.out + out.err + "\n".join(r.getMessage() for r in caplog.records)
    assert not any(line.lstrip().startswith(FORGED[:20]) for line in text.splitlines()), text[-2000:]
    assert len(text) < 50_000, len(text)
    logger = logging.getLogger("explorer.test")
    try:
        raise ValueError(f"bad\n{FORGED}")
    except ValueError as err:
        record = logger.makeRecord("explorer.test", logging.ERROR, __file__, 1, f"x\n{FORGED}", (), (ValueError, err, err.__traceback__))
    formatted = logging.Formatter().format(record)
    assert not any(line.startswith(FORGED[:20]) for line in formatted.splitlines()), formatted


# ----------------------------------------------------------------------------------------------------------
# 8. 500s and echoes
# ----------------------------------------------------------------------------------------------------------
def test_only_the_five_api_endpoints_are_public():
    with app() as (demo, url):
        endpoints = new_client(url).view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert set(endpoints) == {"/explore", "/compare", "/answer", "/fidelity", "/export"}, sorted(endpoints)


@pytest.mark.parametrize("event", [{"index": 999, "value": None}, {"index": -1, "value": None},
                                   {"index": "x", "value": None}, "x", {}, {"index": [1]}])
def test_a_bad_example_pick_gets_one_sentence(capfd, event):
    with app() as (demo, url):
        capfd.readouterr()
        with from_address(ATTACKERS[0]) as http:
            r = http.post(f"{url}/gradio_api/run/predict",
                          json={"data": [], "fn_index": fn_index(demo, fn_name="pick_example"),
                                "session_hash": uuid.uuid4().hex, "event_data": event})
        err = capfd.readouterr().err
    body = r.json()
    message = body.get("detail") or body.get("error")
    assert r.status_code != 200 and bad_inputs.is_one_sentence(message), (r.status_code, body)
    assert "Traceback" not in err


@pytest.mark.parametrize("event", [{"index": "xyz", "value": None}, {"index": [1, 2, 3], "value": None}, "x", None])
def test_a_malformed_click_gets_one_sentence(capfd, event):
    with app() as (demo, url):
        capfd.readouterr()
        with from_address(ATTACKERS[0]) as http:
            r = http.post(f"{url}/gradio_api/run/predict",
                          json={"data": ["inspect the patch", [], None], "session_hash": uuid.uuid4().hex,
                                "fn_index": fn_index(demo, fn_name="inspect_or_point"), "event_data": event})
        err = capfd.readouterr().err
    body = r.json()
    message = body.get("detail") or body.get("error")
    assert r.status_code != 200 and bad_inputs.is_one_sentence(message), (r.status_code, body)
    assert "Traceback" not in err


def test_a_huge_dropdown_value_is_not_echoed(image):
    from gradio_client.exceptions import AppError

    with app() as (demo, url):
        with pytest.raises(AppError) as info:
            explore(new_client(url), image, method="m" * 100_000)
    assert "Unknown method" in str(info.value) and len(str(info.value)) < 400, len(str(info.value))


# ----------------------------------------------------------------------------------------------------------
# 9. Image memory
# ----------------------------------------------------------------------------------------------------------
PEAK_SCRIPT = r"""
import json, sys
from explorer.images import load_image


def high_water():  # this process's peak RSS (VmHWM starts afresh at exec, unlike ru_maxrss)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


before = high_water()
im = load_image(sys.argv[1], 40_000_000)
grew = high_water() - before
print(json.dumps([im.size[0], im.size[1], im.getpixel((0, 0)), im.getpixel((im.size[0] - 1, 0)), grew]))
"""


def test_a_transparent_palette_image_is_converted_without_rgba_copies(tmp_path):
    """A 6300×6300 palette PNG with a transparent entry (40 megapixels in 77 kB): loading it raises the peak
    RSS by at most 7 bytes per pixel (the 1-byte palette image, the result — Pillow keeps RGB in 4 bytes — and
    a strip; measured 5.5) — with full-size RGBA copies it was 21. The transparent pixels come out white."""
    side = 6300
    im = Image.new("P", (side, side), 1)
    im.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    im.paste(0, (0, 0, side // 2, side))  # the left half uses the transparent entry
    path = tmp_path / "palette.png"
    im.save(path, transparency=0)
    del im
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True,
                         timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    w, h, left, right, grew = json.loads(out.stdout.strip().splitlines()[-1])
    assert (w, h) == (side, side)
    assert left == [255, 255, 255] and right == [200, 30, 30]
    assert grew <= 7 * side * side, f"{grew / side / side:.1f} bytes per pixel"


# ----------------------------------------------------------------------------------------------------------
# Also: headers, SIGTERM
# ----------------------------------------------------------------------------------------------------------
def test_headers_are_safe_and_a_forwarded_host_is_not_reflected(image):
    evil = "evil.example"
    with app() as (demo, url):
        with from_address(ATTACKERS[0]) as http:
            page = http.get(f"{url}/", headers={"X-Forwarded-Host": evil, "X-Forwarded-Proto": "https"})
            config = http.get(f"{url}/config", headers={"X-Forwarded-Host": evil})
        client = new_client(url)
        client.headers = {**getattr(client, "headers", {}), "X-Forwarded-Host": evil}
        outputs = explore(client, image)
    assert page.status_code == 200
    assert evil not in page.text and evil not in config.text
    assert evil not in json.dumps(outputs)
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors" in csp and "https://huggingface.co" in csp and "object-src 'none'" in csp
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "x-frame-options" not in page.headers  # it cannot allow huggingface.co; frame-ancestors does


def test_a_space_host_is_still_honoured():
    """On a Space, the proxy's X-Forwarded-Host names SPACE_HOST: that one (and only that one) is kept."""
    from explorer.guard import Door, Guard, Limits

    guard = Guard(None, Limits.from_config(ExplorerConfig(), 1), env={"SPACE_ID": "a/b", "SPACE_HOST": "a-b.hf.space"})
    door = Door(None, guard)
    scope = {"headers": [(b"x-forwarded-host", b"a-b.hf.space"), (b"host", b"x")]}
    assert door._forwarded(scope) is scope
    evil = {"headers": [(b"x-forwarded-host", b"evil.example"), (b"x-forwarded-proto", b"https")]}
    assert door._forwarded(evil)["headers"] == []


@pytest.mark.slow
def test_sigterm_while_an_answer_generates_stops_cleanly(tmp_path, image):
    """`python app.py` (the offline default: SmolLM2 in torch) streams a 256-token answer; SIGTERM arrives after
    the first tokens. The process exits with 0 within the drain's bound, with no abort and no traceback."""
    from tests.test_public_space import free_port, wait_until

    temp, cache = tmp_path / "tmp", tmp_path / "gradio"
    temp.mkdir()
    cache.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    for name in ("GRADIO_SERVER_NAME", "SPACE_ID", "VTE_MODEL", "VTE_PUBLIC"):
        env.pop(name, None)
    log = tmp_path / "app.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"

        def up():
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, timeout=180, every=0.5), log.read_text()[-3000:]
        with from_address(ATTACKERS[0]) as http:  # a visitor who queues an answer and never listens
            dependencies = json.loads(http.get(f"{url}config").text)["dependencies"]
            index = next(d["id"] for d in dependencies if d.get("api_name") == "answer")
            data = join_data("answer", {"path": upload(http, url.rstrip("/"), image),
                                        "meta": {"_type": "gradio.FileData"}})
            data[3], data[5] = None, 256  # the server's model, 256 tokens
            assert join(http, url.rstrip("/"), index, data).status_code == 200
        psutil = pytest.importorskip("psutil")
        worker = psutil.Process(proc.pid)
        worker.cpu_percent()
        assert wait_until(lambda: worker.cpu_percent() > 50, timeout=120, every=1.0)  # it is generating
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, (code, text[-3000:])
    assert "terminate called" not in text and "Traceback" not in text, text[-3000:]


# ----------------------------------------------------------------------------------------------------------
# The page works under the CSP (Chromium)
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.browser
def test_the_page_works_under_the_content_security_policy():
    """Headless Chromium loads the page behind the guard's headers: the first example is explored, a slider
    moves the pictures, and the browser reports no CSP violation."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, KEPT_SRC

    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with app(backend=SlowBackend(step=0)) as (demo, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.set_default_timeout(90_000)
            violations, errors = [], []
            page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script("document.addEventListener('securitypolicyviolation', e => "
                                 "console.log('Content Security Policy violation: ' + e.violatedDirective + ' ' + e.blockedURI));")
            page.goto(url + "/")
            page.wait_for_function(f"{KEPT_SRC} !== null")
            first = page.evaluate(KEPT_SRC)
            box = page.locator("#ctl-iqr_multiplier input[type=number]")
            box.fill("3.0")
            box.press("Enter")
            page.wait_for_function(f"{KEPT_SRC} !== {json.dumps(first)}")
        finally:
            browser.close()
    assert not violations, violations
    assert not errors, errors
