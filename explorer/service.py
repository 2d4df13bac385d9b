"""The app's operations without gradio: load backends lazily, encode with caching, explore, answer, export.

Every public method raises `InputError` (a one-sentence message for a person) for anything a user did;
`ui.py` turns those into `gr.Error`. Per-session state is a small dict the caller keeps (`gr.State`):
it names the image (upload path + content key) and the backend, never tensors; tensors live in the
backend's bounded LRU caches, keyed by image content, so sessions cannot see each other's settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tempfile
import threading
from pathlib import Path
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from reducers import BudgetParams, PARParams, PruMergeParams

from . import draw, plots
from . import explore as ex
from .config import OFFLINE, ExplorerConfig
from .encode import LRU
from .images import InputError, load_image


def release_freed_memory() -> bool:
    """Ask glibc's malloc to hand freed memory back to the OS (Linux only; a no-op elsewhere).

    Each request allocates and frees a few large buffers (images, similarity matrices) on Gradio's worker
    threads. By default glibc raises its mmap threshold after the first such free and keeps the memory in
    per-thread arenas, so a long-running server's RSS climbs although nothing is retained. Fixed thresholds
    (mmap above 1 MiB, trim above 1 MiB) and at most 4 arenas keep RSS flat. Idempotent."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    return all(mallopt(opt, value) == 1 for opt, value in
               ((m_mmap_threshold, 1 << 20), (m_trim_threshold, 1 << 20), (m_arena_max, 4)))


@dataclass(frozen=True)
class ExploreOutput:
    kept: np.ndarray
    groups: np.ndarray
    heatmap: np.ndarray
    histogram: object
    funnel: object
    readout: str
    summary: dict
    captions: tuple[str, str]


class Explorer:
    """One per server. Thread-safe: backends load once under a lock; everything else is per call."""

    def __init__(self, config: ExplorerConfig, loader=None):
        from .models import load_backend

        release_freed_memory()
        self.config = config
        self._loader = loader or load_backend
        self._backends: dict[str, object] = {}
        self._errors: dict[str, str] = {}
        self._lock = threading.Lock()
        self._canvases = LRU(config.encode_cache_size)  # per-encode drawing state, keyed like the encodes
        self._tokens = LRU(4 * config.encode_cache_size)  # VisualTokens per (encode, attention, prompt)
        self._export_root = Path(tempfile.mkdtemp(prefix="vte-exports-"))

    def canvas(self, backend, enc) -> draw.Canvas:
        """The encode's view prepared for redraws (dimmed copy, grid, frames), built once per image."""
        key = (backend.name, enc.key)
        canvas = self._canvases.get(key)
        if canvas is None:
            canvas = draw.Canvas(enc.view_array, enc.tokens.grid)
            self._canvases.put(key, canvas)
        return canvas

    # --- backends ------------------------------------------------------------------------------
    @property
    def model_choices(self) -> list[str]:
        return [self.config.model] + ([OFFLINE] if self.config.model != OFFLINE else [])

    def preload(self) -> threading.Thread:
        """Start loading the default backend in a daemon thread (errors are kept and reported on use)."""

        def run():
            try:
                self.backend()
            except InputError:
                pass  # already recorded; the first request gets the message

        thread = threading.Thread(target=run, name="preload-backend", daemon=True)
        thread.start()
        return thread

    def backend(self, name: str | None = None, progress=None):
        name = name or self.config.model
        if name not in self.model_choices:
            raise InputError(f"Unknown model {name!r}; choose one of {', '.join(self.model_choices)}.")
        with self._lock:
            if name in self._backends:
                return self._backends[name]
            if name in self._errors:  # failed before: say so at once instead of retrying on every move
                raise InputError(self._failure(name))
            config = self.config if name == self.config.model else replace(self.config, model=OFFLINE, clip=None)
            try:
                backend = self._loader(config, progress=progress)
            except Exception as err:  # report which model and why; the offline default stays usable
                self._errors[name] = f"{type(err).__name__}: {err}".strip()[:300]
                raise InputError(self._failure(name)) from None
            self._backends[name] = backend
            return backend

    def _failure(self, name: str) -> str:
        hint = " Choose the offline default to keep exploring (restart the server to retry)." if name != OFFLINE else ""
        return f"The model {name!r} failed to load ({self._errors[name]}).{hint}"

    # --- encode --------------------------------------------------------------------------------
    def encoded(self, image, state: dict | None, model: str | None = None, progress=None):
        """(backend, Encoded, new state) for this image, re-using the session's encode when it can."""
        backend = self.backend(model, progress)
        state = dict(state or {})
        path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
        if path and state.get("path") == path and state.get("model") == backend.name:
            enc = backend.lookup(state["key"])
            if enc is not None:
                return backend, enc, state
        pil = load_image(image, self.config.max_image_pixels)
        if progress is not None:
            progress(0.5, desc="Encoding the image")
        try:
            enc = backend.encode(pil)
        except ValueError as err:
            raise InputError(self._unusable(backend, err)) from None
        return backend, enc, {"path": path, "key": enc.key, "model": backend.name}

    @staticmethod
    def _unusable(backend, err: ValueError) -> str:
        return (f"The model {backend.name!r} produced unusable features for this image ({err}); "
                "the checkpoint may be broken.")

    def query(self, backend, prompt: str, settings: ex.Settings, required: bool):
        prompt = (prompt or "").strip()
        if not prompt:
            if required:
                raise InputError("PAR needs a prompt: type a question about the image (PruMerge works without one).")
            return None
        return backend.encode_query(prompt, rewrite=settings.rewrite)

    def prepared(self, image, prompt: str, settings: ex.Settings, state=None, model=None, progress=None):
        """(backend, encode, clipped prompt, query or None, VisualTokens, state) for one request.

        The VisualTokens for (image, attention mode, prompt) are built once and cached, so their memoised
        similarities and components survive across slider moves; the prompt is clipped to
        `max_prompt_chars` here, so the pictures and the answers use exactly the same query."""
        backend, enc, state = self.encoded(image, state, model, progress)
        prompt, q, vt = self.tokens(backend, enc, prompt, settings)
        return backend, enc, prompt, q, vt, state

    def tokens(self, backend, enc, prompt: str, settings: ex.Settings):
        """(clipped prompt, query or None, VisualTokens) for an encode, cached per attention mode and prompt."""
        prompt = self.clip_prompt((prompt or "").strip())
        q = self.query(backend, prompt, settings, required=settings.method == "par")
        key = (backend.name, enc.key, settings.attention, prompt if q is not None else None, settings.rewrite)
        vt = self._tokens.get(key)
        if vt is None:
            try:
                vt = ex.visual_tokens(enc.tokens, enc.attn_head_mean, settings, q.embedding if q is not None else None)
            except ValueError as err:
                raise InputError(self._unusable(backend, err)) from None
            self._tokens.put(key, vt)
        return prompt, q, vt

    # --- one slider move -------------------------------------------------------------------------
    def explore(self, image, prompt: str, settings: ex.Settings, state: dict | None = None, model=None, progress=None):
        backend, enc, prompt, q, vt, state = self.prepared(image, prompt, settings, state, model, progress)
        try:
            red = ex.reduce(vt, settings)
        except ValueError as err:
            raise InputError(str(err)) from None
        pics = ex.pictures(self.canvas(backend, enc), vt, red)
        hist, funnel = ex.figures(vt, red)
        flops = ex.flops_summary(backend.lm_config, backend.n_text_tokens(prompt), red.n_tokens, red.n_kept)
        extra = {
            "model": backend.name,
            "untrained_vision": backend.untrained_vision,
            "image": {"key": enc.key, "crop_box": list(enc.crop_box), "grid": list(red.grid),
                      "size": list(enc.image_size) if hasattr(enc, "image_size") else None},
            "prompt": prompt,
        }
        if q is not None:
            extra["query"] = {"phrase": q.phrase, "prompts": list(q.prompts), "truncated": q.truncated}
        s = ex.summary(red, settings, flops, extra)
        readout = ex.readout_markdown(s, backend.notice)
        if q is not None and q.truncated:
            readout += "\n\nℹ️ The prompt was longer than the text tower's context and was truncated for PAR."
        untrained = " — untrained weights: no meaning" if backend.untrained_vision else ""
        out = ExploreOutput(pics.kept, pics.groups, pics.heatmap, hist, funnel, readout, s,
                            (pics.groups_caption, pics.heatmap_caption + untrained))
        return out, state, (vt, red)

    def sweep_and_compare(self, image, prompt, settings: ex.Settings, sweep_name: str | None, state=None, model=None):
        """The sweep plot, the comparison gallery [(thumbnail, caption)] and the comparison bar chart."""
        backend, enc, prompt, q, vt, state = self.prepared(image, prompt, settings, state, model)
        red = ex.reduce(vt, settings)
        result = ex.sweep(vt, settings, sweep_name)
        if result is None:
            sweep_fig = plots.sweep_plot(np.array([0.0, 1.0]), np.array([vt.n, vt.n]), 0.0, "no parameter to sweep")
        else:
            xs, counts, clusters, current, name = result
            sweep_fig = plots.sweep_plot(xs, counts, current, name, clusters=clusters)
        rows = ex.comparison(vt, self.canvas(backend, enc), settings, red.n_kept)
        gallery = [(thumb, f"{ex.METHOD_LABELS[m]} · {r.n_kept} tokens") for m, r, thumb in rows]
        bar = plots.comparison_bar([{"method": m, "n_kept": r.n_kept} for m, r, _ in rows])
        return sweep_fig, gallery, bar, state

    # --- answers -------------------------------------------------------------------------------
    def answer(self, image, prompt: str, settings: ex.Settings, state=None, model=None, max_new_tokens=None, progress=None):
        """Greedy answers from all tokens and from the reduced tokens: (full Answer, reduced Answer, summary)."""
        if not (prompt or "").strip():
            raise InputError("Type a question first: the LLM answers the prompt about the image.")
        prompt_truncated = len(prompt.strip()) > self.config.max_prompt_chars
        backend, enc, prompt, q, vt, state = self.prepared(image, prompt, settings, state, model, progress)
        red = ex.reduce(vt, settings)
        if progress is not None:
            progress(0.6, desc="Answering from all visual tokens")
        full = backend.answer(enc, prompt, tokens=None, max_new_tokens=max_new_tokens)
        if progress is not None:
            progress(0.8, desc=f"Answering from {red.n_kept} reduced tokens")
        reduced = backend.answer(enc, prompt, tokens=red.tokens, max_new_tokens=max_new_tokens)
        info = {
            "model": backend.name,
            "untrained_vision": backend.untrained_vision,
            "method": settings.method,
            "params": settings.as_dict(),
            "full": answer_dict(full),
            "reduced": answer_dict(reduced),
            "prompt_truncated_to_chars": self.config.max_prompt_chars if prompt_truncated else None,
        }
        return full, reduced, info, state

    def clip_prompt(self, prompt: str) -> str:
        limit = self.config.max_prompt_chars
        return prompt if len(prompt) <= limit else prompt[:limit]

    # --- export --------------------------------------------------------------------------------
    def export(self, summary: dict, shown=None) -> tuple[str, str]:
        """Write the summary (JSON) and the overlays side by side (PNG); returns the two paths.

        The overlays are redrawn losslessly from the cached encode when it is still there (the live view
        is JPEG); otherwise the shown images (`shown()` → arrays) are used. Exports live in one folder per server, newest 32 kept.
        """
        if not isinstance(summary, dict) or "params" not in summary:
            raise InputError("Nothing to export yet: explore an image first.")
        redrawn = self._redraw(summary)
        pictures = redrawn if redrawn is not None else (shown() if shown is not None else [])
        if not pictures:
            raise InputError("Nothing to export yet: explore an image first.")
        blob_json = self.export_json(summary)
        blob_png = self.export_png(pictures)
        folder = self._export_root / hashlib.sha256(blob_json + blob_png).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token-reduction.json").write_bytes(blob_json)
        (folder / "token-reduction.png").write_bytes(blob_png)
        self._prune_exports()
        return str(folder / "token-reduction.json"), str(folder / "token-reduction.png")

    def _redraw(self, summary: dict) -> list[np.ndarray] | None:
        try:
            p = summary["params"]
            backend = self._backends.get(summary.get("model"))
            enc = backend.lookup(summary["image"]["key"]) if backend is not None else None
            if enc is None:
                return None
            settings = settings_from_controls(
                p["method"], p["par"]["tau"], p["par"]["delta"], p["par"]["cluster_threshold"],
                p["par"]["retrieval_ratio"], p["prumerge"]["iqr_multiplier"], p["par"]["alpha"], p["par"]["spatial"],
                p["rewrite"], p["attention"], p["prumerge"]["merge"], p["prumerge"]["neighbours"],
                p["budget"]["budget"], p["budget"]["seed"])
            _, _, vt = self.tokens(backend, enc, summary.get("prompt", ""), settings)
            pics = ex.pictures(self.canvas(backend, enc), vt, ex.reduce(vt, settings))
        except (KeyError, TypeError, ValueError):  # InputError is a ValueError
            return None
        return [pics.kept, pics.groups, pics.heatmap]

    def _prune_exports(self, keep: int = 32) -> None:
        folders = sorted((p for p in self._export_root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in folders[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    @staticmethod
    def export_json(summary: dict) -> bytes:
        return json.dumps(summary, indent=2, ensure_ascii=False, default=float).encode()

    @staticmethod
    def export_png(images: list[np.ndarray]) -> bytes:
        """The overlays side by side in one PNG."""
        height = max(im.shape[0] for im in images)
        gap = 8
        width = sum(im.shape[1] for im in images) + gap * (len(images) - 1)
        canvas = np.full((height, width, 3), 255, np.uint8)
        x = 0
        for im in images:
            canvas[: im.shape[0], x : x + im.shape[1]] = im
            x += im.shape[1] + gap
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="PNG")
        return buf.getvalue()


def answer_dict(ans) -> dict:
    return {
        "text": ans.text,
        "n_visual_tokens": ans.n_visual_tokens,
        "prefill_s": round(ans.prefill_s, 4),
        "total_s": round(ans.total_s, 4),
    }


def settings_from_controls(
    method, tau, delta, cluster_threshold, retrieval_ratio, iqr_multiplier, alpha=0.5, spatial=False,
    rewrite=True, attention="official", merge=True, neighbours=32, budget=64, seed=0,
) -> ex.Settings:
    """Build `Settings` from the flat control values, with person-readable errors naming the control."""

    def num(name, value, kind=float):
        try:
            out = kind(value)
        except (TypeError, ValueError, OverflowError):
            raise InputError(f"Invalid setting: {name} must be a number, got {value!r}.") from None
        if kind is int and out != float(value):
            raise InputError(f"Invalid setting: {name} must be a whole number, got {value!r}.")
        return out

    def flag(name, value):
        if isinstance(value, str):
            if value.strip().lower() in ("true", "1", "yes", "on"):
                return True
            if value.strip().lower() in ("false", "0", "no", "off", ""):
                return False
            raise InputError(f"Invalid setting: {name} must be true or false, got {value!r}.")
        return bool(value)

    try:
        return ex.Settings(
            method=str(method),
            par=PARParams(
                tau=num("tau", tau), delta=num("delta", delta),
                cluster_threshold=num("cluster_threshold", cluster_threshold),
                retrieval_ratio=num("retrieval_ratio", retrieval_ratio), alpha=num("alpha", alpha),
                spatial=flag("spatial", spatial),
            ),
            prumerge=PruMergeParams(
                iqr_multiplier=num("iqr_multiplier", iqr_multiplier), merge=flag("merge", merge),
                neighbours=num("neighbours", neighbours, int),
            ),
            budget=BudgetParams(budget=num("budget", budget, int), seed=num("seed", seed, int)),
            attention=str(attention),
            rewrite=flag("rewrite", rewrite),
        )
    except (TypeError, ValueError) as err:
        raise InputError(f"Invalid setting: {err}") from None

