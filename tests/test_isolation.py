"""Sessions do not see each other, the queue answers bursts, and memory stays bounded.

* 8 gradio_client sessions with different images and settings each get, run concurrently (twice), exactly the
  summary they get alone — on the offline default, whose encodes share one model, its hooks and its caches.
* A burst of 40 concurrent requests is fully answered (queue max_size 64).
* 200 requests over 12 images never grow the explorer's or the backend's caches past their sizes, and the
  process's RSS stays flat once a warm-up has filled every cache (the explorer keeps encodes, canvases, token
  sets and — since the schema rewrite — 16 reductions per encode slot).
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

from explorer.backend.synthetic import SyntheticBackend
from explorer.config import OFFLINE, ExplorerConfig
from explorer.service import Explorer
from reducers.cache import LRU
from tests import bad_inputs
from tests.conftest import _launch

pytestmark = pytest.mark.slow

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TIMEOUT = 120
HEAD = dict(prompt="What is in the picture?", method="par", model=OFFLINE, query_points=[])
ZERO_TOKEN_METHODS = {"none"}  # methods that hand the LLM no visual token by design (one may be registered later)


def kwargs_for(path, **over) -> dict:
    """/explore keyword arguments: the uploaded image, the head inputs, and schema controls by name."""
    from gradio_client import handle_file

    return dict(image=handle_file(str(path)), **{**HEAD, **over})


def explore(client, path, **over) -> dict:
    """The summary of one /explore request (time-limited, so a stuck queue fails instead of hanging)."""
    return client.submit(api_name="/explore", **kwargs_for(path, **over)).result(timeout=TIMEOUT)[-1]


def essence(summary: dict) -> dict:
    """What must not depend on who else is using the server."""
    keep = ("method", "n_tokens", "n_kept", "n_patches_kept", "n_extra", "stages", "n_clusters", "q1", "q3", "fence",
            "params", "inputs", "prompt", "per_patch")
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


def distinct_images(folder: Path) -> list[Path]:
    """Six example photos and six generated scenes of different sizes (written into `folder`): 12 distinct
    images."""
    photos = sorted(ASSETS.glob("*.jpg"))
    assert len(photos) >= 6, photos
    made = [bad_inputs.good_jpeg(folder, seed=s, size=(200 + 37 * s, 150 + 23 * s)) for s in range(6)]
    return photos[:6] + made


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return distinct_images(tmp_path_factory.mktemp("isolation"))


@pytest.fixture(scope="module")
def synthetic():
    """(explorer, backend, url): an app on a fast SyntheticBackend whose cache holds 4 encodes, like the
    explorer's (small caches, so that a warm-up of 96 requests fills all of them, the reductions' 64 included)."""
    backend = SyntheticBackend(grid=(24, 24), view_side=336, cache_size=4)
    explorer = Explorer(ExplorerConfig(encode_cache_size=4), loader=lambda config, progress=None: backend)
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
    dict(method="par", alpha=0.2, delta=0.7, rewrite=False, prompt="Which colour is the top left corner?",
         query_points=[[120.0, 80.0]]),  # PAR's query from a pointed patch (the offline default has no text tower)
]


def cold_caches(explorer: Explorer) -> None:
    """Forget every encode, so the concurrent rounds encode again, all at once, on the shared model."""
    for backend in explorer._backends.values():
        backend._encoded = LRU(backend._encoded.size)
    for name in ("_canvases", "_tokens", "_reductions"):
        setattr(explorer, name, LRU(getattr(explorer, name).size))


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
    explorer, backend, url = synthetic
    available = getattr(explorer, "available", None)  # every registered method this backend can feed
    methods = available(backend) if available is not None else list(explorer.schema.methods)
    expected = {}
    probe = new_client(url)
    for path in images[:8]:
        expected[path] = explore(probe, path, method="all")["image"]["key"]
    clients = [new_client(url) for _ in range(8)]
    submitted = []
    for i in range(40):
        path = images[i % 8]
        over = dict(method=methods[i % len(methods)], tau=(i % 10) / 10, budget=1 + 7 * i)
        submitted.append((path, over, clients[i % 8].submit(api_name="/explore", **kwargs_for(path, **over))))
    for path, over, job in submitted:
        summary = job.result(timeout=TIMEOUT)[-1]
        assert summary["n_kept"] >= (0 if over["method"] in ZERO_TOKEN_METHODS else 1)
        assert summary["method"] == over["method"]
        assert summary["image"]["key"] == expected[path]


# ----------------------------------------------------------------------------------------------------------
# Memory stays bounded
# ----------------------------------------------------------------------------------------------------------
WARM_UP, REQUESTS = 96, 200


@pytest.fixture(scope="module")
def load_run(synthetic, images):
    """200 /explore requests from 4 concurrent sessions, cycling 12 images, 5 methods, 5 prompts and both
    attention modes. Records the cache sizes after every request, the RSS and the Python-traced allocations
    (tracemalloc: Python objects and numpy arrays; torch tensors are not traced) after the warm-up and at the
    end."""
    import psutil

    from explorer.runtime import release_freed_memory

    release_freed_memory()  # the glibc settings `app.main` makes for a long-running server (process-wide)
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
        sizes.append((len(explorer._canvases), len(explorer._tokens), len(backend._encoded),
                      len(explorer._reductions)))

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
    full = sizes[WARM_UP - 1]
    assert full[0] == explorer._canvases.size and full[3] == explorer._reductions.size, \
        f"the warm-up did not fill the caches: {full}"
    return dict(sizes=sizes, kept=kept, rss_mb=(rss_after - rss_before) / 2**20,
                traced_mb=(traced_after - traced_before) / 2**20, explorer=explorer, backend=backend)


def test_two_hundred_requests_never_overfill_the_caches(load_run):
    explorer, backend, sizes = load_run["explorer"], load_run["backend"], load_run["sizes"]
    assert len(sizes) == REQUESTS and min(load_run["kept"]) >= 1
    assert max(s[0] for s in sizes) == explorer._canvases.size == explorer.config.encode_cache_size
    assert max(s[1] for s in sizes) <= explorer._tokens.size == 4 * explorer.config.encode_cache_size
    assert max(s[2] for s in sizes) == backend._encoded.size  # filled (12 images > 8) and evicted, never more
    assert max(s[3] for s in sizes) <= explorer._reductions.size == 16 * explorer.config.encode_cache_size


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
            assert s["image"]["key"] == key and s["method"] == method

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
    interval is shortened, and (were the memo a plain dict) its iterator handed out late, to make an unsafe
    interleaving show within seconds."""
    from explorer.service import view as ex

    backend = SyntheticBackend(grid=(4, 4), width=32, joint_width=16, view_side=40)
    explorer = Explorer(ExplorerConfig(), loader=lambda config, progress=None: backend)
    path = str(bad_inputs.good_jpeg(tmp_path, seed=1))
    prompt = "What is in the picture?"

    def par(gamma):
        return explorer.settings({"method": "par", "tau": 0.3, "delta": 0.9, "cluster_threshold": gamma,
                                  "alpha": 0.5})

    def prepared(settings, state=None):
        """What /explore computes before reducing: the session's encode and the shared VisualTokens."""
        found, enc, state = explorer.encoded(path, state)
        vt, _ = explorer.tokens(found, enc, prompt, settings, settings.entry.needs)
        return found, enc, vt, state

    shared = {id(prepared(par(g))[2]) for g in (0.1, 0.9)}
    assert len(shared) == 1  # one VisualTokens for every session on this image and prompt
    vt = prepared(par(0.5))[2]
    vt.clusters(0.5)
    if type(vt.__dict__.get("_components")) is dict:  # a plain dict memo, shared by those sessions
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
                settings = par(rng.random())
                found, enc, vt, state = prepared(settings, state)
                if seed % 4 == 0:
                    ex.sweep(vt, settings, "cluster_threshold")  # what /compare runs
                elif seed % 4 == 1:
                    explorer.reduce(found, enc, prompt, settings)  # what /explore runs
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
        explorer.close()
    assert not any(t.is_alive() for t in threads), "a user thread hung"
    assert not errors, f"{len(errors)} of 8 users failed, e.g. {errors[:3]}"
