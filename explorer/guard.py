"""What stands between a hostile visitor and the server: one `Guard` per launched app, set up by `ui.serve`.

A public Space is reachable by anyone, with any HTTP client. The guard works at the server's door and at the
queue — never per endpoint — so a handler added later is covered without a line of its own:

* the door (`Door`, an ASGI middleware given to Gradio's FastAPI app): a request body above its limit is
  refused before it is read into memory or decoded (JSON routes: `config.max_request_kb`; uploads:
  Gradio's `max_file_size` for the whole request); uploads carry at most `config.max_upload_files` files and
  images only (anything else is deleted at once and refused); every file payload (`gradio.FileData`) must name
  a regular file inside Gradio's upload folder — a URL (which Gradio would download), a directory (which
  Gradio would record for deletion) or any other path is refused with the app's one generic sentence before
  Gradio touches it; a malformed click event gets one sentence instead of an HTTP 500;
* the queue: a client (its address) may have at most `config.max_pending_per_client` events waiting or running
  and at most `config.max_long_jobs_per_client` long ones (answers, fidelity, exports); all clients together at
  most `config.max_long_jobs` long ones, so the rest of the queue stays free for explores and slider moves;
* headers: a Content-Security-Policy the Gradio page works under (frame-ancestors allows huggingface.co, so a
  Space still embeds), nosniff, a referrer policy; `X-Forwarded-Host` / `-Proto` are dropped unless they
  name the Space's own host (`SPACE_HOST`), so no visitor can put another host into the page or file links;
* the cache: the app cleans Gradio's cache itself (`Cleaner`): files older than `cache_max_age_s`, and the
  oldest ones whenever the cache holds more than `cache_max_mb`; an entry that is not a regular file is
  dropped from the list, never deleted and never fatal (Gradio's own schedule stops on its first bad entry);
* logs: every log record's message has its control characters escaped and is cut at `LOG_CHARS`, and every
  line of a traceback after the first is marked, so no request can forge a log line or grow the log unbounded;
* stopping: `drain` closes the queue to new events and waits (bounded) for the running ones, which the
  service stops at their next token (`Explorer.stopping`), before the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("explorer.guard")

API = "/gradio_api/"
LONG_JOBS = ("generate", "heavy")  # the concurrency ids of answers / fidelity and exports
QUEUED_ROUTES = ("queue/join", "call/")  # join the queue
DIRECT_ROUTES = ("run/", "api/")  # call a function directly (only unqueued ones once api_open=False)
UPLOAD_ROUTE = "upload"
LOG_CHARS = 2_000  # a log message is cut here
GENERIC_FILE = "This file cannot be used; please upload the image again (or click an example)."
BAD_CLICK = "This click could not be read; please click the picture again."
# an upload that is not an image: the sentences `images.load_image` says for the same files
EMPTY_FILE = "The uploaded file is empty (0 bytes); please choose an image file."
NOT_AN_IMAGE = "This file is not an image that can be read (try a PNG, JPEG, WebP or GIF); only images can be uploaded."
FRAME_ANCESTORS = "'self' https://huggingface.co https://*.huggingface.co https://*.hf.space"
# The Gradio page needs inline scripts and styles and evaluates the app's small `js=` snippets; everything
# else comes from this origin (fonts may come from Google Fonts, as Gradio's themes load them).
CSP = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:",
    "style-src 'self' 'unsafe-inline' https://fonts.googleapis.com",
    "font-src 'self' data: https://fonts.gstatic.com",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",
    "connect-src 'self'",
    "worker-src 'self' blob:",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    f"frame-ancestors {FRAME_ANCESTORS}",
])
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
)


# ----------------------------------------------------------------------------------------------------------
# Logs
# ----------------------------------------------------------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str, limit: int = LOG_CHARS) -> str:
    """`text` on one line: control characters (newlines included) escaped, cut at `limit` characters."""
    text = str(text)
    cut = len(text) > limit
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text[:limit])
    return text + (f"… [{limit} of more characters shown]" if cut else "")


class SafeRecord(logging.LogRecord):
    """A log record whose message cannot start a new line or grow without bound, and whose traceback (if
    any) marks each of its lines with '| ' (a forged line inside an exception message cannot pass for a log
    line) and is cut at 10 × LOG_CHARS."""

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return clean(super().getMessage())

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.exc_info and self.exc_info[0] is not None and not self.exc_text:
            text = "".join(traceback.format_exception(*self.exc_info))[: 10 * LOG_CHARS]
            lines = text.rstrip("\n").split("\n")
            self.exc_text = "\n".join("| " + _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(),
                                                          line) for line in lines)


def safe_logging() -> None:
    """Every log record of this process is a `SafeRecord` (idempotent). Set by `ui.serve`."""
    if logging.getLogRecordFactory() is not SafeRecord:
        logging.setLogRecordFactory(SafeRecord)


# ----------------------------------------------------------------------------------------------------------
# Who is asking
# ----------------------------------------------------------------------------------------------------------
def client_key(headers, client, trusted_proxy: bool) -> str:
    """The address a request comes from: the socket's peer, or — behind a Space's proxy — the right-most
    X-Forwarded-For entry (the one the proxy added; entries a visitor sends come before it)."""
    if trusted_proxy:
        forwarded = headers.get("x-forwarded-for") if headers is not None else None
        if forwarded:
            return forwarded.split(",")[-1].strip()
    return client[0] if client else "?"


# ----------------------------------------------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------------------------------------------
class Cleaner:
    """Cleans the files Gradio recorded for this app (uploads and outputs): those older than `age_s`, then the
    oldest while more than `max_bytes` are held. Entries that are not regular files (a directory a crafted
    payload got recorded, a symlink) are dropped from the record, never deleted; an error on one entry never
    stops the pass."""

    def __init__(self, blocks, every_s: float, age_s: float, max_bytes: int):
        self.blocks, self.every_s, self.age_s, self.max_bytes = blocks, every_s, age_s, max_bytes
        self.passes = 0
        self.lock = threading.Lock()

    def _entries(self):
        keep = set()
        for block in self.blocks.blocks.values():
            keep.update(getattr(block, "keep_in_cache", ()))
        for temp_set in list(self.blocks.temp_file_sets):
            for name in list(temp_set):
                if name not in keep:
                    yield temp_set, name

    def run_once(self, now: float | None = None, everything: bool = False) -> dict:
        """One pass (`everything`: every recorded file, as when the server stops); returns what it did (files
        deleted by age and by size, entries dropped, bytes held)."""
        now = time.time() if now is None else now
        with self.lock:
            held, aged, dropped = [], 0, 0
            for temp_set, name in self._entries():
                try:
                    st = os.lstat(name)
                except FileNotFoundError:
                    temp_set.discard(name)
                    continue
                except (OSError, ValueError, TypeError):
                    temp_set.discard(name)
                    dropped += 1
                    continue
                if not _regular(st):
                    temp_set.discard(name)
                    dropped += 1
                    continue
                if everything or now - st.st_ctime > self.age_s:
                    aged += _unlink(temp_set, name)
                    continue
                held.append((st.st_ctime, st.st_size, temp_set, name))
            total = sum(size for _, size, _, _ in held)
            by_size = 0
            for _, size, temp_set, name in sorted(held, key=lambda h: h[0]):
                if total <= self.max_bytes:
                    break
                if _unlink(temp_set, name):
                    total -= size
                    by_size += 1
            self.passes += 1
        return dict(aged=aged, by_size=by_size, dropped=dropped, bytes=total)

    async def loop(self) -> None:
        import anyio

        while True:
            await asyncio.sleep(self.every_s)
            try:
                await anyio.to_thread.run_sync(self.run_once)
            except Exception:  # noqa: BLE001 - a pass that fails is logged; the next one runs
                log.exception("cleaning Gradio's cache failed")


def _regular(st) -> bool:
    import stat

    return stat.S_ISREG(st.st_mode)


def _unlink(temp_set, name) -> int:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError as err:
        log.info("could not delete a cached file (%s): %s", type(err).__name__, name)
        return 0
    temp_set.discard(name)
    return 1


# ----------------------------------------------------------------------------------------------------------
# The guard: limits, the queue caps, start-up and stopping
# ----------------------------------------------------------------------------------------------------------
@dataclass
class Limits:
    json_bytes: int  # a JSON request body
    upload_bytes: int  # one upload request (all its files)
    upload_files: int  # files per upload request
    pending_per_client: int  # events a client may have waiting or running
    long_per_client: int  # long events (answers, fidelity, exports) a client may have waiting or running
    long_total: int  # long events of all clients together
    cache_every_s: float
    cache_age_s: float
    cache_bytes: int

    @classmethod
    def from_config(cls, config, max_file_size: int) -> "Limits":
        return cls(json_bytes=config.max_request_kb * 1024, upload_bytes=max_file_size + 64 * 1024,
                   upload_files=config.max_upload_files, pending_per_client=config.max_pending_per_client,
                   long_per_client=config.max_long_jobs_per_client, long_total=config.max_long_jobs,
                   cache_every_s=min(config.cache_clean_every_s, config.cache_check_every_s),
                   cache_age_s=config.cache_max_age_s, cache_bytes=config.cache_max_mb * 2**20)


class Guard:
    """The guard of one launched `demo` (see the module's docstring). `serve` calls `launch_kwargs()` for the
    `launch` arguments it adds (the door and the cleaner), nothing else."""

    def __init__(self, demo, limits: Limits, env=None):
        env = os.environ if env is None else env
        self.demo, self.limits = demo, limits
        self.space_host = (env.get("SPACE_HOST") or "").strip().lower()
        self.trusted_proxy = bool(env.get("SPACE_ID"))
        self.cleaner = Cleaner(demo, limits.cache_every_s, limits.cache_age_s, limits.cache_bytes)
        self._reserved: dict[str, list[int]] = {}  # client → [events, long events] joining right now
        self.refused: dict[str, int] = {}  # why → how many requests were refused (for tests and the bench)

    # --- launch ---------------------------------------------------------------------------------------
    def launch_kwargs(self) -> dict:
        from starlette.middleware import Middleware

        cleaner = self.cleaner

        @contextlib.asynccontextmanager
        async def lifespan(app):
            task = asyncio.create_task(cleaner.loop())
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
                cleaner.run_once(everything=True)  # the server stops: every file it recorded goes

        return dict(app_kwargs={"middleware": [Middleware(Door, guard=self)], "lifespan": lifespan})

    def count(self, what: str) -> None:
        self.refused[what] = self.refused.get(what, 0) + 1

    # --- the queue --------------------------------------------------------------------------------------
    def pending(self, key: str) -> tuple[int, int, int]:
        """(this client's events, this client's long events, everyone's long events) waiting or running."""
        queue = getattr(self.demo, "_queue", None)
        if queue is None:
            return 0, 0, 0
        events = [e for q in list(queue.event_queue_per_concurrency_id.values()) for e in list(q.queue)]
        events += [e for job in list(queue.active_jobs) if job for e in job]
        mine = mine_long = long_total = 0
        for event in events:
            is_long = event.concurrency_id in LONG_JOBS
            long_total += is_long
            request = getattr(event, "request", None)
            if request is None:
                continue
            if client_key(request.headers, (request.client.host,) if request.client else None,
                          self.trusted_proxy) == key:
                mine += 1
                mine_long += is_long
        reserved = self._reserved.get(key, [0, 0])
        return mine + reserved[0], mine_long + reserved[1], long_total + sum(r[1] for r in self._reserved.values())

    def admit(self, key: str, fn) -> str | None:
        """None, or the sentence refusing this client one more event of `fn`."""
        mine, mine_long, long_total = self.pending(key)
        limits = self.limits
        if mine >= limits.pending_per_client:
            return (f"You already have {mine} requests waiting; please wait for them to finish "
                    "(or reload the page).")
        if fn is not None and fn.concurrency_id in LONG_JOBS:
            if mine_long >= limits.long_per_client:
                return (f"You already have {mine_long} answers, fidelity runs or exports waiting or running; "
                        "please wait for one to finish.")
            if long_total >= limits.long_total:
                return "The server is busy with other visitors' answers and exports; please try again in a minute."
        return None

    @contextlib.contextmanager
    def reserve(self, key: str, fn):
        slot = self._reserved.setdefault(key, [0, 0])
        is_long = int(fn is not None and fn.concurrency_id in LONG_JOBS)
        slot[0] += 1
        slot[1] += is_long
        try:
            yield
        finally:
            slot[0] -= 1
            slot[1] -= is_long
            if slot == [0, 0]:
                self._reserved.pop(key, None)

    def fn_for(self, route: str, body: dict):
        fns = self.demo.fns
        if route.startswith(("call/", "run/", "api/")):
            parts = route.split("/")
            name = parts[2] if parts[1] == "v2" and len(parts) > 2 else parts[1]
            index = body.get("fn_index")
            if isinstance(index, int) and index in fns and route.startswith(("run/", "api/")):
                return fns[index]
            return next((fn for fn in fns.values() if fn.api_name == name), None)
        index = body.get("fn_index")
        return fns.get(index) if isinstance(index, int) else None

    # --- payloads -----------------------------------------------------------------------------------------
    def file_payload_ok(self, payload: dict) -> bool:
        """A `gradio.FileData` payload names a regular file inside Gradio's upload folder (symlinks and `..`
        resolved), by a plain path — not a URL, which Gradio would download."""
        from gradio.utils import get_upload_folder

        path = payload.get("path")
        if not isinstance(path, str) or not path or "\x00" in path or "://" in path or len(path) > 4096:
            return False
        root = Path(get_upload_folder()).resolve()
        try:
            resolved = Path(path).resolve()
            return resolved.is_relative_to(root) and resolved != root and resolved.is_file()
        except (OSError, RuntimeError, ValueError):
            return False

    def check_body(self, route: str, body: Any) -> tuple[int, str] | None:
        """(status, sentence) refusing a decoded JSON body, or None."""
        if not isinstance(body, dict):
            return None  # Gradio answers a malformed body itself (422), without running anything
        bad_file = False

        def walk(value, depth=0):
            nonlocal bad_file
            if bad_file or depth > 64:
                return
            if isinstance(value, dict):
                meta = value.get("meta")
                if isinstance(meta, dict) and meta.get("_type") == "gradio.FileData":
                    bad_file = bad_file or not self.file_payload_ok(value)
                    return
                for v in value.values():
                    walk(v, depth + 1)
            elif isinstance(value, list):
                for v in value:
                    walk(v, depth + 1)

        walk(body.get("data"))
        if bad_file:
            return 400, GENERIC_FILE
        fn = self.fn_for(route, body)
        if fn is not None and getattr(fn, "collects_event_data", False):
            event = body.get("event_data")  # the app's event-data handlers are all `select`s: index and value
            if not (isinstance(event, dict) and "index" in event and "value" in event):
                return 400, BAD_CLICK
        return None

    # --- stopping -----------------------------------------------------------------------------------------
    def drain(self, timeout_s: float = 20.0) -> bool:
        """Refuse new events and wait up to `timeout_s` until no other thread runs the app's code (a generating
        answer stops at its next token once `Explorer.stopping` is set), so the process never exits while a
        worker thread is inside the model. True when none is left."""
        queue = getattr(self.demo, "_queue", None)
        if queue is not None:
            queue.stopped = True
        end = time.monotonic() + timeout_s
        while busy_threads():
            if time.monotonic() > end:
                log.warning("stopping with %d threads still running the app's code", len(busy_threads()))
                return False
            time.sleep(0.05)
        return True


def busy_threads() -> list[int]:
    """Ids of the other threads whose stack is inside the app's code (explorer/, reducers/)."""
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    roots = (os.path.join(root, "explorer") + os.sep, os.path.join(root, "reducers") + os.sep)
    me = threading.get_ident()
    busy = []
    for ident, frame in sys._current_frames().items():
        if ident == me:
            continue
        while frame is not None:
            if frame.f_code.co_filename.startswith(roots) and not frame.f_code.co_filename.endswith("guard.py"):
                busy.append(ident)
                break
            frame = frame.f_back
    return busy


# ----------------------------------------------------------------------------------------------------------
# The door
# ----------------------------------------------------------------------------------------------------------
class Door:
    """ASGI middleware: body limits, upload checks, payload checks, the queue caps, headers."""

    def __init__(self, app, guard: Guard):
        self.app, self.guard = app, guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = self._forwarded(scope)
        send = self._with_headers(send)
        path = scope.get("path", "")
        route = path.split(API, 1)[1] if API in path else ""
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if route.rstrip("/") == UPLOAD_ROUTE:
            return await self._upload(scope, receive, send)
        limit = self.guard.limits.json_bytes
        body, refused = await self._read(scope, receive, limit)
        if refused:
            self.guard.count("body too large")
            return await _refuse(send, 413, f"This request is larger than the server accepts ({limit // 1024} kB).")
        replay = _replay(body, receive)
        if not route.startswith(QUEUED_ROUTES + DIRECT_ROUTES):
            return await self.app(scope, replay, send)
        try:
            decoded = json.loads(body) if body else None
        except (ValueError, RecursionError):
            return await self.app(scope, replay, send)  # Gradio refuses it (422) without running anything
        bad = self.guard.check_body(route, decoded)
        if bad:
            self.guard.count("payload")
            log.info("refused a request: %s", bad[1])
            return await _refuse(send, *bad)
        if not route.startswith(QUEUED_ROUTES):
            return await self.app(scope, replay, send)
        fn = self.guard.fn_for(route, decoded) if isinstance(decoded, dict) else None
        key = client_key(_Headers(scope), scope.get("client"), self.guard.trusted_proxy)
        why = self.guard.admit(key, fn)
        if why:
            self.guard.count("queue cap")
            log.info("refused a request: %s", why)
            return await _refuse(send, 429, why)
        with self.guard.reserve(key, fn):
            return await self.app(scope, replay, send)

    def _forwarded(self, scope):
        """Drop X-Forwarded-Host / -Proto unless the host is the Space's own (`SPACE_HOST`)."""
        headers = scope.get("headers") or []
        host = next((v for k, v in headers if k == b"x-forwarded-host"), None)
        if host is None:
            return scope
        allowed = self.guard.space_host and host.decode("latin-1").strip().lower() == self.guard.space_host
        if allowed:
            return scope
        kept = [(k, v) for k, v in headers if k not in (b"x-forwarded-host", b"x-forwarded-proto")]
        return {**scope, "headers": kept}

    @staticmethod
    def _with_headers(send):
        async def wrapped(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                have = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in have]
                message = {**message, "headers": headers}
            await send(message)

        return wrapped

    @staticmethod
    async def _read(scope, receive, limit: int) -> tuple[bytes, bool]:
        """The whole body, or (b"", True) as soon as it is known to exceed `limit` (by Content-Length or by
        counting), without reading further."""
        length = next((v for k, v in scope.get("headers") or [] if k == b"content-length"), None)
        if length is not None:
            try:
                if int(length) > limit:
                    return b"", True
            except ValueError:
                return b"", True
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        return b"".join(chunks), False

    async def _upload(self, scope, receive, send):
        """An upload: at most `upload_bytes` in all (counted as it streams), then at most `upload_files` files,
        each an image Pillow can identify; otherwise every file of the request is deleted and it is refused."""
        limits = self.guard.limits
        length = next((v for k, v in scope.get("headers") or [] if k == b"content-length"), None)
        try:
            if length is not None and int(length) > limits.upload_bytes:
                self.guard.count("upload too large")
                return await _refuse(send, 413, f"Uploads are limited to {limits.upload_bytes // 2**20} MB.")
        except ValueError:
            return await _refuse(send, 400, "This upload could not be read.")
        seen = [0]
        over = [False]

        async def counted():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limits.upload_bytes:
                    over[0] = True
                    return {"type": "http.disconnect"}
            return message

        start, chunks = {}, []

        async def hold(message):
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.app(scope, counted, hold)
        except Exception:  # noqa: BLE001 - a body cut short at the limit ends in the parser
            if not over[0]:
                raise
        body = b"".join(chunks)
        if over[0]:
            self._discard(body)
            self.guard.count("upload too large")
            return await _refuse(send, 413, f"Uploads are limited to {limits.upload_bytes // 2**20} MB.")
        if start.get("status") != 200:
            await send(start or {"type": "http.response.start", "status": 500, "headers": []})
            return await send({"type": "http.response.body", "body": body})
        files = self._paths(body)
        why = None
        if files is None:
            why = "This upload could not be read."
        elif len(files) > limits.upload_files:
            why = f"Upload at most {limits.upload_files} files at a time."
        elif any(_size(p) == 0 for p in files):
            why = EMPTY_FILE
        elif not all(_is_image(p) for p in files):
            why = NOT_AN_IMAGE
        if why:
            self._discard(body)
            self.guard.count("upload refused")
            log.info("refused an upload: %s", why)
            return await _refuse(send, 415 if why in (EMPTY_FILE, NOT_AN_IMAGE) else 400, why)
        await send(start)
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _paths(body: bytes) -> list[str] | None:
        try:
            files = json.loads(body)
        except ValueError:
            return None
        if not isinstance(files, list) or not all(isinstance(p, str) for p in files):
            return None
        return files

    def _discard(self, body: bytes) -> None:
        """Delete the files a refused upload wrote (only regular files inside the upload folder)."""
        from gradio.utils import get_upload_folder

        root = Path(get_upload_folder()).resolve()
        for name in self._paths(body) or []:
            path = Path(name)
            with contextlib.suppress(OSError, ValueError):
                if path.resolve().is_relative_to(root) and path.is_file():
                    path.unlink()
                    with contextlib.suppress(OSError):
                        path.parent.rmdir()  # Gradio's per-upload folder, when empty
            self.guard.demo.upload_file_set.discard(name)


class _Headers:
    """Lower-case header lookup on an ASGI scope (what `client_key` needs)."""

    def __init__(self, scope):
        self.headers = scope.get("headers") or []

    def get(self, name: str, default=None):
        key = name.lower().encode("latin-1")
        return next((v.decode("latin-1") for k, v in self.headers if k == key), default)


def _replay(body: bytes, receive):
    sent = [False]

    async def replay():
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _refuse(send, status: int, sentence: str) -> None:
    payload = json.dumps({"detail": sentence, "error": sentence}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return -1


def _is_image(path: str) -> bool:
    """Pillow identifies the file from its header (nothing is decoded)."""
    from PIL import Image, UnidentifiedImageError

    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return bool(im.format)
    except Image.DecompressionBombError:
        return True  # an image: the loader refuses it with its size and the limit
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False
    except Exception:  # noqa: BLE001 - any other failure to identify: not an image we take
        return False
