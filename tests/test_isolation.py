"""Sessions do not see each other, the queue answers bursts, and memory stays bounded.

* 8 gradio_client sessions with different images and settings each get, run concurrently (twice), exactly the
  summary they get alone — on the offline default, whose encodes share one model, its hooks and its caches.
* A burst of 40 concurrent requests is fully answered (queue max_size 64).
* 200 requests over 12 images never grow the explorer's or the backend's caches past their sizes, and the
  process's RSS stays flat after a warm-up.
* Two sessions on different images, interleaving slider moves, never see each other's image.
* Two sessions on the same image share its cached per-image quantities: concurrent slider moves must not
  break each other.
"""

from __future__ import annotations

import contextlib
import gc
import random
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from explorer.config import OFFLINE, ExplorerConfig
from reducers.cache import LRU
from explorer.service import Explorer
from explorer.backend.synthetic import SyntheticBackend
from tests import bad_inputs
from tests.conftest import _launch

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TIMEOUT = 120
DEFAULTS = dict(prompt="What is in the picture?", method="par", tau=0.3, delta=0.9, cluster_threshold=0.8,
                retrieval_ratio=0.5, iqr_multiplier=1.5, alpha=0.5, spatial=False, rewrite=True, attention="official",
                merge=True, neighbours=32, budget=64, seed=0, model=OFFLINE)
ORDER = list(DEFAULTS)


def args_for(path, **over) -> list:
    from gradio_client import handle_file

    values = {**DEFAULTS, **over}
    return [handle_file(str(path))] + [values[name] for name in ORDER]


def explore(client, path, **over) -> dict:
    """The summary of one /explore request (time-limited, so a stuck queue fails instead of hanging)."""
    return client.submit(*args_for(path, **over), api_name="/explore").result(timeout=TIMEOUT)[-1]


def essence(summary: dict) -> dict:
    """What must not depend on who else is using the server."""
    keep = ("method", "n_tokens", "n_kept", "n_patches_kept", "stages", "n_clusters", "q1", "q3", "fence", "params",
            "prompt")
    out = {k: summary.get(k) for k in keep}
    out["image"] = dict(summary["image"])
    out["query"] = summary.get("query")
    return out


def new_client(url):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=False)


@contextlib.contextmanager
def served(explorer: Explorer):
    demo = _launch(explorer)
    try:
        yield demo.local_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    """Six example photos and six generated scenes of different sizes: 12 distinct images."""
    folder = tmp_path_factory.mktemp("isolation")
    photos = sorted(ASSETS.glob("*.jpg"))
    assert len(photos) >= 6, photos
    made = [bad_inputs.good_jpeg(folder, seed=s, size=(200 + 37 * s, 150 + 23 * s)) for s in range(6)]
    return photos[:6] + made


@pytest.fixture(scope="module")
def synthetic():
    """(explorer, url): an app on a fast SyntheticBackend whose cache holds 8 encodes, like the explorer's."""
    backend = SyntheticBackend(grid=(24, 24), view_side=336, cache_size=8)
    explorer = Explorer(ExplorerConfig(encode_cache_size=8), loader=lambda config, progress=None: backend)
    with served(explorer) as url:
        yield explorer, backend, url


# ----------------------------------------------------------------------------------------------------------
# 8 sessions at once get what they get alone (offline default)
# ----------------------------------------------------------------------------------------------------------
SESSIONS = [
    dict(method="par", prompt="Where is the astronaut's helmet?"),
    dict(method="prumerge", prompt="What animal is this?"),
    dict(method="prumerge+", iqr_multiplier=1.0, prompt="Is there a cup?"),
    dict(method="par", tau=0.2, cluster_threshold=0.7, retrieval_ratio=0.3, spatial=True, prompt="How many stars?"),
    dict(method="top-attention", budget=50, attention="head-mean", prompt="Describe it."),
    dict(method="random", budget=100, seed=3, prompt="What is shown?"),
    dict(method="uniform", budget=30, prompt="Colours?"),
    dict(method="par", alpha=0.2, delta=0.7, rewrite=False, prompt="Which colour is the top left corner?"),
]


def cold_caches(explorer: Explorer) -> None:
    """Forget every encode, so the concurrent rounds encode again, all at once, on the shared model."""
    for backend in explorer._backends.values():
        backend._encoded = LRU(backend._encoded.size)
    explorer._canvases = LRU(explorer._canvases.size)
    explorer._tokens = LRU(explorer._tokens.size)


def test_eight_concurrent_sessions_get_their_own_results(app, offline_explorer, images):
    _, url = app
    clients = [new_client(url) for _ in SESSIONS]
    jobs = list(zip(clients, images[:8], SESSIONS))
    alone = [essence(explore(c, path, **over)) for c, path, over in jobs]
    assert len({a["image"]["key"] for a in alone}) == 8  # eight different images

    for round_ in range(2):
        if round_ == 0:
            cold_caches(offline_explorer)
        start = threading.Barrier(len(jobs), timeout=60)

        def run(job):
            client, path, over = job
            start.wait()
            return essence(explore(client, path, **over))

        with ThreadPoolExecutor(len(jobs)) as pool:
            together = list(pool.map(run, jobs))
        for i, (a, b) in enumerate(zip(alone, together)):
            assert b == a, f"round {round_}, session {i} ({SESSIONS[i]['method']}): {b} != {a}"


# ----------------------------------------------------------------------------------------------------------
# The queue answers a burst
# ----------------------------------------------------------------------------------------------------------
def test_burst_of_forty_requests_is_answered(synthetic, images):
    _, _, url = synthetic
    methods = ["par", "prumerge", "prumerge+", "all", "random", "uniform", "top-attention"]
    expected = {}
    probe = new_client(url)
    for path in images[:8]:
        expected[path] = explore(probe, path, method="all")["image"]["key"]
    clients = [new_client(url) for _ in range(8)]
    submitted = []
    for i in range(40):
        path = images[i % 8]
        over = dict(method=methods[i % len(methods)], tau=(i % 10) / 10, budget=1 + 7 * i)
        submitted.append((path, over, clients[i % 8].submit(*args_for(path, **over), api_name="/explore")))
    for path, over, job in submitted:
        summary = job.result(timeout=TIMEOUT)[-1]
        assert summary["n_kept"] >= 1
        assert summary["method"] == over["method"]
        assert summary["image"]["key"] == expected[path]


# ----------------------------------------------------------------------------------------------------------
# Memory stays bounded
# ----------------------------------------------------------------------------------------------------------
WARM_UP, REQUESTS = 48, 200


@pytest.fixture(scope="module")
def load_run(synthetic, images):
    """200 /explore requests from 4 concurrent sessions, cycling 12 images, 5 methods, 5 prompts and both
    attention modes. Records the cache sizes after every request, the RSS and the Python-traced allocations
    (tracemalloc: Python objects and numpy arrays) after the warm-up and at the end."""
    import psutil

    explorer, backend, url = synthetic
    proc = psutil.Process()
    prompts = ["What is in the picture?", "Where is the red thing?", "Count the objects.", "Is it daytime?",
               "What colour is the sky?"]
    methods = ["par", "prumerge", "prumerge+", "top-attention", "uniform"]
    local = threading.local()  # one session per worker thread
    sizes, kept = [], []

    def request(i):
        if not hasattr(local, "client"):
            local.client = new_client(url)
        summary = explore(local.client, images[i % 12], method=methods[i % 5], prompt=prompts[i % 5],
                          attention=("official", "head-mean")[i % 2], tau=(i % 7) / 10)
        kept.append(summary["n_kept"])
        sizes.append((len(explorer._canvases), len(explorer._tokens), len(backend._cache)))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(request, range(WARM_UP)))
        gc.collect()
        rss_before = proc.memory_info().rss
        tracemalloc.start(1)
        try:
            traced_before = tracemalloc.get_traced_memory()[0]
            list(pool.map(request, range(WARM_UP, REQUESTS)))
            gc.collect()
            traced_after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    rss_after = proc.memory_info().rss
    return dict(sizes=sizes, kept=kept, rss_mb=(rss_after - rss_before) / 2**20,
                traced_mb=(traced_after - traced_before) / 2**20, explorer=explorer, backend=backend)


def test_two_hundred_requests_never_overfill_the_caches(load_run):
    explorer, backend, sizes = load_run["explorer"], load_run["backend"], load_run["sizes"]
    assert len(sizes) == REQUESTS and min(load_run["kept"]) >= 1
    assert max(s[0] for s in sizes) == explorer._canvases.size == explorer.config.encode_cache_size
    assert max(s[1] for s in sizes) <= explorer._tokens.size == 4 * explorer.config.encode_cache_size
    assert max(s[2] for s in sizes) == backend._cache_size  # filled (12 images > 8) and evicted, never more


def test_two_hundred_requests_retain_no_python_objects(load_run):
    """What the explorer, the backend and Gradio keep alive (numpy arrays included) stays flat after warm-up."""
    assert load_run["traced_mb"] < 50, f"traced allocations grew by {load_run['traced_mb']:.0f} MB"


def test_two_hundred_requests_keep_rss_flat(load_run):
    grown, traced = load_run["rss_mb"], load_run["traced_mb"]
    assert grown < 150, (f"RSS grew by {grown:.0f} MB over {REQUESTS - WARM_UP} requests after warm-up, while "
                         f"Python-traced allocations grew by {traced:.0f} MB: the difference is freed memory the C "
                         f"allocator keeps (per-thread arenas, dynamic mmap threshold)")


# ----------------------------------------------------------------------------------------------------------
# Interleaved sessions keep their own image
# ----------------------------------------------------------------------------------------------------------
def test_interleaved_slider_moves_keep_each_sessions_image(synthetic, images):
    _, _, url = synthetic
    a, b = new_client(url), new_client(url)
    key_a = explore(a, images[0], method="par")["image"]["key"]
    key_b = explore(b, images[1], method="prumerge")["image"]["key"]
    assert key_a != key_b
    for step in range(8):  # alternating, one at a time
        assert explore(a, images[0], method="par", tau=step / 10)["image"]["key"] == key_a
        assert explore(b, images[1], method="prumerge", iqr_multiplier=step / 2)["image"]["key"] == key_b

    def moves(client, path, key, method, name):
        for step in range(8):  # and at the same time
            s = explore(client, path, method=method, **{name: step / 10})
            assert s["image"]["key"] == key and s["params"]["method"] == method

    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(moves, a, images[0], key_a, "par", "tau")
        fb = pool.submit(moves, b, images[1], key_b, "prumerge", "iqr_multiplier")
        fa.result(timeout=TIMEOUT)
        fb.result(timeout=TIMEOUT)


# ----------------------------------------------------------------------------------------------------------
# Sessions on the same image share its memoised per-image quantities
# ----------------------------------------------------------------------------------------------------------
class _LateIterator(dict):
    def __iter__(self):
        it = super().__iter__()
        time.sleep(0.0002)  # lets another thread run between taking an iterator and using it
        return it


def test_same_image_concurrent_cluster_moves_do_not_break_each_other(tmp_path):
    """Two users on the same image and prompt (a common case: everyone clicks the examples), or one user whose
    explore and compare/sweep run at once (the "redraw" concurrency limit is 4), share one cached VisualTokens
    through `Explorer.tokens`, and with it the memo of connected components that every γ move and γ sweep
    (41 thresholds) reads and evicts from. Concurrent moves must not corrupt it. The interpreter's switch
    interval is shortened, and the memo's iterator is handed out late, to make an unsafe interleaving show
    within seconds."""
    from explorer import explore as ex
    from explorer.service import settings_from_controls

    backend = SyntheticBackend(grid=(4, 4), width=32, joint_width=16, view_side=40)
    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)
    path = str(bad_inputs.good_jpeg(tmp_path, seed=1))
    prompt = "What is in the picture?"
    shared = {explorer.prepared(path, prompt, settings_from_controls("par", 0.3, 0.9, g, 0.5, 1.5))[4]
              for g in (0.1, 0.9)}
    assert len(shared) == 1  # one VisualTokens for every session on this image and prompt
    vt = shared.pop()
    vt.clusters(0.5)
    if type(vt.__dict__.get("_components")) is dict:  # today's memo: a plain dict, shared by those sessions
        # Fault injection: hand out its iterator a little late, so the window between choosing the entry to
        # evict and evicting it is wide enough to observe in seconds. A memo guarded by a lock is unaffected.
        vt.__dict__["_components"] = _LateIterator(vt.__dict__["_components"])
    errors: list[str] = []
    stop = threading.Event()

    def user(seed):
        rng = random.Random(seed)
        state = None
        deadline = time.monotonic() + 5
        try:
            while time.monotonic() < deadline and not stop.is_set():
                settings = settings_from_controls("par", 0.3, 0.9, rng.random(), 0.5, 1.5)
                _, _, _, _, vt, state = explorer.prepared(path, prompt, settings, state)
                if seed % 4 == 0:
                    ex.sweep(vt, settings, "cluster_threshold")  # what /compare runs
                elif seed % 4 == 1:
                    ex.reduce(vt, settings)  # what /explore runs
                else:
                    vt.clusters(rng.random())  # the memoised step both of them call, many times a move
        except Exception as err:  # noqa: BLE001 - any failure is the finding
            errors.append(f"{type(err).__name__}: {err}")
            stop.set()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=user, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not any(t.is_alive() for t in threads), "a user thread hung"
    assert not errors, f"{len(errors)} of 8 users failed, e.g. {errors[:3]}"
