"""The app's operations without gradio: backends, encodes, queries, reductions, answers, fidelity, export.

Every public method raises `InputError` (one sentence meant for a person) for anything a user did; `ui.py`
turns those into `gr.Error`. Per-session state is a small dict the caller keeps (`gr.State`): it names the
image (upload path + content key) and the backend, never tensors; tensors live in bounded LRU caches keyed by
image content and settings, so sessions cannot see each other's work and a repeated request costs nothing.

Work is done once: an image is encoded once per backend, a prompt embedded once, the `VisualTokens` for
(image, attention mode, joint layer, query) built once (their memoised similarities survive slider moves),
and each `Reduction` computed once per settings — the sweep, the comparison, the answer and the export reuse
the one the explore event drew.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from reducers import REDUCERS, RegistryEntry, Reduction, VisualTokens
from reducers.cache import LRU

from . import __version__
from . import explore as ex
from .backend.protocol import Answer, Backend, Encoded
from .config import OFFLINE_MODELS, ExplorerConfig
from .errors import InputError
from .images import load_image
from .pictures import draw, plots
from .settings import Schema, Settings

MAX_SUMMARY_BYTES = 2_000_000  # an export's JSON is refused above this (a 576-patch summary is ≈ 60 kB)


@dataclass(frozen=True)
class QueryInfo:
    """What PAR's query is and where it came from."""

    kind: str  # "prompt" | "points" | "cls"
    embedding: torch.Tensor  # [e], unit length
    description: str
    phrase: str = ""
    prompts: tuple[str, ...] = ()
    truncated: bool = False
    patches: tuple[int, ...] = ()  # the pointed patches (kind "points")

    def as_dict(self) -> dict:
        out = {"kind": self.kind, "description": self.description}
        if self.kind == "prompt":
            out.update(phrase=self.phrase, prompts=list(self.prompts), truncated=self.truncated)
        if self.patches:
            out["patches"] = list(self.patches)
        return out


@dataclass(frozen=True)
class Explored:
    """One explore: the reduction, what it was computed from, and everything drawn for it."""

    settings: Settings
    prompt: str
    query: QueryInfo | None
    tokens: VisualTokens
    reduction: Reduction
    pictures: ex.Pictures
    histogram: object
    funnel: object
    summary: dict
    readout: str
    stamp: dict
    crop: np.ndarray
    crop_caption: str


class Explorer:
    """One per server. Thread-safe: each backend loads once under its own lock (a slow load of one model never
    blocks another), caches are bounded LRUs, nothing is kept per session here."""

    def __init__(self, config: ExplorerConfig, loader=None, methods: Mapping = REDUCERS):
        from .backend.models import load_backend

        self.config = config
        self.schema = Schema.build(methods)
        self._loader = loader or load_backend
        self._backends: dict[str, Backend] = {}
        self._errors: dict[str, str] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the three dicts above only
        size = config.encode_cache_size
        self._canvases = LRU(size)  # (backend, image) → drawing state of the view
        self._tokens = LRU(4 * size)  # (backend, image, inputs, query) → VisualTokens
        self._reductions = LRU(16 * size)  # (backend, image, prompt?, settings) → Reduction
        self._fidelity = LRU(4 * size)  # (backend, image, prompt, settings, budgets) → rows
        self._exports = tempfile.TemporaryDirectory(prefix="vte-exports-")
        self.export_root = Path(self._exports.name)
        self.heavy = threading.BoundedSemaphore(config.heavy_slots)  # exports / fidelity runs at once
        self.stopping = threading.Event()  # set when the server stops: answers end at their next token

    def close(self) -> None:
        """Remove the export folder (also done at interpreter exit)."""
        self._exports.cleanup()

    # --- backends ------------------------------------------------------------------------------
    @property
    def model_choices(self) -> list[str]:
        return [self.config.model] + [m for m in OFFLINE_MODELS if m != self.config.model]

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

    def backend(self, name: str | None = None, progress=None) -> Backend:
        name = name or self.config.model
        if name not in self.model_choices:
            raise InputError(f"Unknown model {name!r}; choose one of {', '.join(self.model_choices)}.")
        with self._lock:
            if name in self._backends:
                return self._backends[name]
            lock = self._load_locks.setdefault(name, threading.Lock())
        with lock:  # one load per model; other models keep serving meanwhile
            with self._lock:
                if name in self._backends:
                    return self._backends[name]
                if name in self._errors:  # failed before: say so at once instead of retrying on every move
                    raise InputError(self._failure(name))
            config = self.config if name == self.config.model else dataclasses.replace(self.config, model=name, clip=None)
            try:
                backend = self._loader(config, progress=progress)
            except Exception as err:  # report which model and why; the offline default stays usable
                with self._lock:
                    self._errors[name] = f"{type(err).__name__}: {err}".strip()[:300]
                raise InputError(self._failure(name)) from None
            with self._lock:
                self._backends[name] = backend
            return backend

    def loaded(self, name: str) -> Backend | None:
        with self._lock:
            return self._backends.get(name)

    def _failure(self, name: str) -> str:
        hint = " Choose an offline model to keep exploring (restart the server to retry)." if name not in OFFLINE_MODELS else ""
        return f"The model {name!r} failed to load ({self._errors[name]}).{hint}"

    # --- settings ------------------------------------------------------------------------------
    def settings(self, values: Mapping | None = None, points=(), clamp: bool = False) -> Settings:
        return Settings.from_controls(values, self.schema, points, clamp)

    # --- encode --------------------------------------------------------------------------------
    def encoded(self, image, state: dict | None, model: str | None = None, progress=None
                ) -> tuple[Backend, Encoded, dict]:
        """(backend, Encoded, new state) for this image, re-using the session's encode when it can."""
        model = model or self.config.model
        backend = self.backend(model, progress)
        state = dict(state or {})
        path = image.get("path") if isinstance(image, dict) else image if isinstance(image, str) else None
        if path and state.get("path") == path and state.get("model") == model:
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
        name = Path(path).name if path else "image"
        state.update(path=path, key=enc.key, model=model, image_name=name)
        return backend, enc, state

    def cached(self, state: dict | None) -> tuple[Backend, Encoded]:
        """The session's backend and encode from the caches only (never loads a file), or InputError."""
        state = state or {}
        backend = self.loaded(state.get("model") or "")
        enc = backend.lookup(state.get("key") or "") if backend is not None else None
        if enc is None:
            raise InputError("Nothing to work on: explore an image first (or explore it again if it has been a while).")
        return backend, enc

    @staticmethod
    def _unusable(backend, err: ValueError) -> str:
        return (f"The model {backend.name!r} produced unusable features for this image ({err}); "
                "the checkpoint may be broken.")

    # --- query and tokens ------------------------------------------------------------------------
    def clip_prompt(self, prompt) -> str:
        if prompt is None:
            return ""
        if not isinstance(prompt, str):
            raise InputError("The prompt must be text.")
        prompt = prompt.strip()
        return prompt[: self.config.max_prompt_chars]

    def query(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings) -> QueryInfo:
        """PAR's query: the pointed patches when there are any, else the prompt through the CLIP text tower,
        else (a tower without a text side) the CLS token."""
        joint, cls_joint = enc.joint(settings.inputs.joint_layer)
        if joint is None:
            raise InputError(f"{backend.name} gives no patch embeddings for PAR.")
        if settings.points:
            patches = tuple(dict.fromkeys(p for p in (enc.patch_at(x, y) for x, y in settings.points) if p is not None))
            if not patches:
                raise InputError("The pointed places lie outside the region the model sees; click inside the picture.")
            q = F.normalize(F.normalize(joint[list(patches)].float(), dim=-1).mean(0), dim=0)
            where = f"{len(patches)} pointed patch{'es' if len(patches) > 1 else ''}"
            return QueryInfo("points", q, f"the mean embedding of {where}", patches=patches)
        if backend.has_text_tower:
            if not prompt:
                raise InputError("PAR needs a prompt: type a question about the image (or point at patches).")
            q = backend.encode_query(prompt, rewrite=settings.inputs.rewrite)
            said = f"the prompt rewritten as “{q.phrase}”" if q.rewrite else "the raw prompt"
            return QueryInfo("prompt", q.embedding, f"{said}, embedded by the CLIP text tower", q.phrase, q.prompts,
                             q.truncated)
        q = F.normalize(cls_joint.float(), dim=0)
        return QueryInfo("cls", q, "the CLS token — relevance to the image's own summary (no text tower here: "
                                   "click patches to point the query)")

    def tokens(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings,
               needs: Iterable[str] = ()) -> tuple[VisualTokens, QueryInfo | None]:
        """The encode's VisualTokens with the settings' attention mode and joint layer, plus PAR's query and
        FastV's LLM attention when `needs` asks for them; cached, memoised similarities carried over."""
        needs = set(needs)
        inputs = settings.inputs
        q = self.query(backend, enc, prompt, settings) if "query" in needs else None
        lm = "lm_attn" in needs
        qkey = (q.kind, q.patches, prompt if q.kind == "prompt" else None, inputs.rewrite) if q else None
        key = (backend.name, enc.key, inputs.attention, inputs.joint_layer, qkey, prompt if lm else None)

        def build() -> VisualTokens:
            changes = {}
            if inputs.attention != "official":
                changes["cls_attn"] = enc.attention(inputs.attention)
            if inputs.joint_layer != "feature":
                changes["joint"] = enc.joint(inputs.joint_layer)[0]
            if q is not None:
                changes["query"] = q.embedding
            if lm:
                changes["lm_attn"] = backend.lm_attention(enc, prompt)
            try:
                return enc.tokens.derive(**changes) if changes else enc.tokens
            except ValueError as err:
                raise InputError(self._unusable(backend, err)) from None

        return self._tokens.get_or_compute(key, build), q

    def reduce(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings
               ) -> tuple[Reduction, VisualTokens, QueryInfo | None]:
        """The settings' method on this image (and prompt, for methods that read it), cached by settings."""
        entry = settings.entry
        vt, q = self.tokens(backend, enc, prompt, settings, entry.needs)
        reads_prompt = "lm_attn" in entry.needs or (q is not None and q.kind == "prompt")
        key = (backend.name, enc.key, prompt if reads_prompt else None, settings.key())

        def run() -> Reduction:
            try:
                return entry(vt, settings.params)
            except ValueError as err:
                raise InputError(str(err).rstrip(".") + ".") from None

        return self._reductions.get_or_compute(key, run), vt, q

    # --- one slider move -------------------------------------------------------------------------
    def explore(self, image, prompt, settings: Settings, state: dict | None = None, model=None, progress=None,
                with_per_patch: bool = True) -> tuple[Explored, dict]:
        """Reduce the image's tokens and draw everything; `with_per_patch=False` (a slider move, which does not
        send the summary) leaves the per-patch data out of `summary`."""
        backend, enc, state = self.encoded(image, state, model, progress)
        return self.explore_encoded(backend, enc, prompt, settings, state, with_per_patch)

    def explore_encoded(self, backend: Backend, enc: Encoded, prompt, settings: Settings, state: dict,
                        with_per_patch: bool = True) -> tuple[Explored, dict]:
        prompt = self.clip_prompt(prompt)
        red, vt, q = self.reduce(backend, enc, prompt, settings)
        label = settings.entry.label
        query_patches = np.asarray(q.patches, np.int64) if q is not None and q.patches else None
        pics = ex.pictures(self.canvas(backend, enc), vt, red, settings.inputs.attention, label, query_patches)
        hist, funnel = ex.figures(vt, red, settings)
        flops = ex.flops_summary(backend.lm_config, backend.n_text_tokens(prompt), red)
        extra = {
            "app_version": __version__,
            "model": backend.name,
            "notice": backend.notice,
            "image": {"name": state.get("image_name", "image"), "key": enc.key, "crop_box": list(enc.crop_box),
                      "grid": list(red.grid), "size": list(enc.image_size)},
            "prompt": prompt,
        }
        if q is not None:
            extra["query"] = q.as_dict()
        s = ex.summary(red, vt, settings, flops, extra, with_per_patch)
        stamp = self.stamp(backend, enc, prompt, settings, red)
        light = {k: v for k, v in s.items() if k != "per_patch"}
        state = dict(state, controls=settings.to_controls(), points=[list(p) for p in settings.points],
                     prompt=prompt, stamp=stamp, view_size=list(enc.view.size), crop_box=list(enc.crop_box),
                     n_tokens=red.n_tokens,
                     last_summary=light, history=self._history(state.get("history"), settings, red))
        out = Explored(settings, prompt, q, vt, red, pics, hist, funnel, s, ex.readout_markdown(s), stamp,
                       self.crop(backend, enc), draw.crop_caption(enc.image_size, enc.crop_box))
        return out, state

    HISTORY = 8

    def _history(self, runs, settings: Settings, red: Reduction) -> list[dict]:
        """The session's recent runs (newest first, at most `HISTORY`), each with the controls to restore it."""
        controls = {**settings.to_controls(), "__points__": [list(p) for p in settings.points]}
        runs = [r for r in (runs or []) if r["controls"] != controls]
        relevant = ", ".join(f"{k}={v}" for k, v in settings.relevant().items())
        label = f"{settings.entry.label} ({relevant}) → {red.n_kept} tokens" if relevant else f"{settings.entry.label} → {red.n_kept} tokens"
        return [{"label": label, "controls": controls}] + runs[: self.HISTORY - 1]

    def canvas(self, backend: Backend, enc: Encoded) -> draw.Canvas:
        """The encode's view prepared for redraws (dimmed copy, grid, frames), built once per image."""
        return self._canvases.get_or_compute((backend.name, enc.key), lambda: draw.Canvas(enc.view_array, enc.tokens.grid))

    def crop(self, backend: Backend, enc: Encoded) -> np.ndarray:
        """The user's image, small, with the region the model sees outlined (built once per image)."""
        return self._canvases.get_or_compute((backend.name, enc.key, "crop"), lambda: draw.crop_picture(
            enc.thumbnail, enc.crop_box, image_size=enc.image_size))

    @staticmethod
    def stamp(backend: Backend, enc: Encoded, prompt: str, settings: Settings, red: Reduction) -> dict:
        """What produced a result: answers and exports carry it, and the UI compares it with the screen's."""
        return {"model": backend.name, "image": enc.key, "prompt": prompt, **settings.as_dict(),
                "n_kept": red.n_kept}

    # --- sweep and comparison --------------------------------------------------------------------
    def sweep_and_compare(self, image, prompt, settings: Settings, sweep_name: str | None, state=None, model=None):
        """The sweep plot, the comparison gallery [(thumbnail, caption)] and the comparison bar chart."""
        backend, enc, state = self.encoded(image, state, model)
        prompt = self.clip_prompt(prompt)
        red, vt, _ = self.reduce(backend, enc, prompt, settings)
        gallery, bars = self.comparison_view(backend, enc, prompt, settings, red.n_kept)
        return self.sweep_figure(vt, settings, sweep_name), gallery, bars, state

    @staticmethod
    def sweep_figure(vt: VisualTokens, settings: Settings, sweep_name: str | None):
        """Tokens to the LLM as one slider of the active method sweeps its range (`ex.sweep`), as a figure."""
        result = ex.sweep(vt, settings, sweep_name)
        if result is None:
            return plots.sweep_plot(np.array([0.0, 1.0]), np.array([vt.n, vt.n]), 0.0,
                                    f"{settings.entry.label} has no slider to sweep")
        xs, counts, clusters, current, name = result
        return plots.sweep_plot(xs, counts, current, name, clusters=clusters)

    def comparison_view(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int):
        """Every method at the budget M (`comparison`): the gallery [(half-size thumbnail, caption)] and the bar
        chart."""
        rows = self.comparison(backend, enc, prompt, settings, budget)
        canvas = self.canvas(backend, enc).small
        gallery, bars = [], []
        for method, r, matched in rows:
            label = self.schema.entry(method).label
            how = (f"at M = {budget}" if r.n_kept == budget else f"nearest grid to M = {budget}") \
                if matched else "at its own settings"
            gallery.append((canvas.kept(r.kept_mask.cpu(), samples=r.samples), f"{label} · {r.n_kept} tokens ({how})"))
            bars.append({"label": label, "n_kept": r.n_kept, "matched": matched})
        return gallery, plots.comparison_bar(bars, budget)

    def comparison(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int):
        """[(method, Reduction, matched)] for every method this backend and prompt can feed."""
        rows = []
        for method, entry, other in self.at_budget(settings, budget):
            try:
                red, _, _ = self.reduce(backend, enc, prompt, other)
            except InputError:  # e.g. PAR without a prompt on a text tower: not comparable here
                continue
            rows.append((method, red, entry.budgeted))
        return rows

    def at_budget(self, settings: Settings, budget: int) -> list[tuple[str, RegistryEntry, Settings]]:
        """[(method, entry, settings)] for every method: budget methods at `budget` (within their slider's
        range), the others at their own settings."""
        out = []
        for method, entry in self.schema.methods.items():
            other = settings.with_method(method)
            if entry.budgeted:
                top = int(self.schema.specs[entry.budget_field].control.maximum)
                other = other.with_values(**{entry.budget_field: max(1, min(budget, top))})
            out.append((method, entry, other))
        return out

    # --- inspection, pin & compare ----------------------------------------------------------------
    def inspect(self, state: dict | None, x: float, y: float, view_size: tuple[int, int] | None = None) -> dict:
        """Everything about the patch under pixel (x, y) of the displayed view (or of the user's image when
        `view_size` is None), for the session's last explore."""
        _, enc, _, red, vt = self.last(state)
        h, w = enc.grid
        if view_size is not None:
            vw, vh = view_size
            if not (0 <= x < vw and 0 <= y < vh):
                raise InputError("Click inside the picture.")
            index = min(h - 1, int(y * h / vh)) * w + min(w - 1, int(x * w / vw))
        else:
            index = enc.patch_at(x, y)
            if index is None:
                raise InputError("That point lies outside the region the model sees.")
        return ex.inspect_patch(vt, red, index)

    def view_to_image(self, state: dict | None, x: float, y: float) -> list[float]:
        """A click at (x, y) on the displayed view → [x, y] in the user's image pixels (through the crop box)."""
        state = state or {}
        if not state.get("view_size"):
            raise InputError("Explore an image first, then click on it.")
        vw, vh = state["view_size"]
        x0, y0, x1, y1 = state["crop_box"]
        if not (0 <= x < vw and 0 <= y < vh):
            raise InputError("Click inside the picture of the patches.")
        return [x0 + (x + 0.5) * (x1 - x0) / vw, y0 + (y + 0.5) * (y1 - y0) / vh]

    def last(self, state: dict | None) -> tuple[Backend, Encoded, Settings, Reduction, VisualTokens]:
        """The session's last explore, recomputed from the caches (free when nothing was evicted)."""
        backend, enc = self.cached(state)
        settings = self.settings(state.get("controls"), state.get("points") or ())
        red, vt, _ = self.reduce(backend, enc, state.get("prompt", ""), settings)
        return backend, enc, settings, red, vt

    @staticmethod
    def _label(settings: Settings) -> str:
        """The method and the settings that matter to it, e.g. `PruMerge: iqr_multiplier = 1.5, …`."""
        relevant = ", ".join(f"{k} = {v}" for k, v in settings.relevant().items())
        return f"{settings.entry.label}: {relevant}" if relevant else settings.entry.label

    def pin(self, state: dict | None) -> dict:
        """The session's last result as A, to compare later results with (kept in its own session value)."""
        _, enc, settings, red, _ = self.last(state)
        return {"image": enc.key, "kept": red.kept.tolist(), "n_kept": red.n_kept, "label": self._label(settings)}

    def pin_diff(self, state: dict, pinned: dict) -> tuple[np.ndarray | None, str]:
        """The pinned result A against the current one B: a picture and a line of numbers."""
        backend, enc, settings, red, _ = self.last(state)
        a = pinned
        if a["image"] != enc.key:
            return None, "A was pinned on another image: pin again on this one."
        b_kept = red.kept.tolist()
        only_a, only_b = set(a["kept"]) - set(b_kept), set(b_kept) - set(a["kept"])
        text = (f"**A** {a['label']} → {a['n_kept']} tokens · **B** {self._label(settings)} → {red.n_kept} tokens · "
                f"kept-set overlap (Jaccard) **{ex.jaccard(a['kept'], b_kept):.3f}** · only in A: {len(only_a)} "
                f"patches (red) · only in B: {len(only_b)} (blue)")
        return self.canvas(backend, enc).diff(a["kept"], b_kept), text

    # --- answers -------------------------------------------------------------------------------
    def answer_stream(self, image, prompt, settings: Settings, state=None, model=None, max_new_tokens=None,
                      progress=None):
        """Greedy answers from all tokens and from the reduced ones, one token at a time: yields ("full" |
        "reduced", the text so far) after every new token, then ("done", (full Answer, reduced Answer, info,
        state)). Closing the generator (a client that went away) stops the decoding at the next token: nothing
        runs between two tokens but this generator's caller."""
        max_new_tokens = self.check_max_new_tokens(max_new_tokens)
        if not self.clip_prompt(prompt):
            raise InputError("Type a question first: the LLM answers the prompt about the image.")
        truncated = len(prompt.strip()) > self.config.max_prompt_chars
        backend, enc, state = self.encoded(image, state, model, progress)
        prompt = self.clip_prompt(prompt)
        red, _, _ = self.reduce(backend, enc, prompt, settings)
        answers = {}
        for part, reduction, (done, desc) in (("full", None, (0.4, "Answering from all visual tokens")),
                                              ("reduced", red, (0.7, f"Answering from {red.n_kept} reduced tokens"))):
            if progress is not None:
                progress(done, desc=desc)
            with contextlib.closing(backend.answer_stream(enc, prompt, reduction, max_new_tokens)) as stream:
                for item in stream:
                    if self.stopping.is_set():
                        raise InputError("The server is stopping; please ask again in a minute.")
                    if isinstance(item, Answer):
                        answers[part] = item
                    else:
                        yield part, item
        full, reduced = answers["full"], answers["reduced"]
        stamp = self.stamp(backend, enc, prompt, settings, red)
        info = {"stamp": stamp, "full": answer_dict(full), "reduced": answer_dict(reduced),
                "prompt_truncated_to_chars": self.config.max_prompt_chars if truncated else None}
        yield "done", (full, reduced, info, state)

    def check_max_new_tokens(self, value) -> int:
        limit = self.config.max_new_tokens_limit
        if value is None:
            return self.config.max_new_tokens
        try:
            n = int(value)
            ok = n == float(value) and 1 <= n <= limit
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise InputError(f"max_new_tokens must be a whole number from 1 to {limit}, got {value!r}.")
        return n

    # --- fidelity -------------------------------------------------------------------------------
    FIDELITY_BUDGETS = (32, 64, 128, 192)

    def fidelity_plan(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int
                      ) -> list[tuple[str, str, Settings]]:
        """[(group, what, settings)]: every method at the matched budget M (adaptive ones at their own
        settings), then the current method across budgets (32, 64, 128, 192 and M) or, without a budget,
        across five values of its first slider."""
        plan = [("every method at M", f"M = {budget}" if entry.budgeted else "own settings", other)
                for method, entry, other in self.at_budget(settings, budget) if method != "all"]
        entry = settings.entry
        if entry.budgeted:
            for b in sorted({b for b in self.FIDELITY_BUDGETS + (budget,) if 1 <= b <= enc.tokens.n}):
                plan.append((f"{entry.label} across budgets", f"budget {b}",
                             settings.with_values(**{entry.budget_field: b})))
        else:
            sliders = ex.sweep_fields(entry)
            if sliders:
                c = self.schema.specs[sliders[0]].control
                for x in np.linspace(c.minimum, c.maximum, 5):
                    value = int(round(x)) if c.integer else round(float(x), 6)
                    plan.append((f"{entry.label} across {sliders[0]}", f"{sliders[0]} = {value:g}",
                                 settings.with_values(**{sliders[0]: value})))
        return plan

    def fidelity(self, state: dict | None, max_new_tokens: int = 16):
        """How much of the full-token answer survives: yields (rows so far, done, total) after every row; the
        rows are cached per image, prompt, settings and answer length. Each row: the greedy answer from the
        reduced tokens, exact / token-F1 match with the full-token answer, the drop in the full answer's
        teacher-forced mean log-probability, the first-token KL(full ‖ reduced), prefill seconds and FLOPs."""
        from .backend import fidelity as fid

        max_new_tokens = self.check_max_new_tokens(max_new_tokens)
        backend, enc, settings, red, _ = self.last(state)
        prompt = state.get("prompt", "")
        if not prompt:
            raise InputError("Type a question first: fidelity compares the LLM's answers to it.")
        # every control and point: the rows of the other methods and budgets read their own controls too
        key = (backend.name, enc.key, prompt, settings.method, settings.values, settings.points, max_new_tokens)
        cached = self._fidelity.get(key)
        if cached is not None:
            yield cached, len(cached), len(cached)
            return
        if not self.heavy.acquire(timeout=60):
            raise InputError("The server is busy with other heavy requests; please try again in a minute.")
        try:
            full = backend.answer(enc, prompt, None, max_new_tokens)
            full_score = backend.score(enc, prompt, None, full.token_ids)
            plan = self.fidelity_plan(backend, enc, prompt, settings, red.n_kept)
            rows = [dict(group="reference", what="all tokens", label="All tokens",
                         **fid.reference_fidelity(backend, enc, prompt, full, full_score))]
            yield rows, 1, len(plan) + 1
            for group, what, other in plan:
                if self.stopping.is_set():
                    raise InputError("The server is stopping; please measure again in a minute.")
                try:
                    r, _, _ = self.reduce(backend, enc, prompt, other)
                    row = fid.fidelity(backend, enc, prompt, r, full, full_score, max_new_tokens)
                except InputError as err:  # e.g. FastV's K beyond this LLM: say so in the row
                    row = {"n_kept": None, "answer": f"(not run: {err})"}
                rows.append(dict(group=group, what=what, label=other.entry.label, method=other.method, **row))
                yield list(rows), len(rows), len(plan) + 1
            self._fidelity.put(key, rows)
        finally:
            self.heavy.release()

    # --- export --------------------------------------------------------------------------------
    def export(self, state: dict | None, answers: dict | None = None) -> tuple[str, str]:
        """Write the session's last result as JSON (settings, per-patch data, answers with their stamps) and its
        pictures side by side as a lossless PNG, both redrawn from the cached encode. Returns the two paths."""
        if not self.heavy.acquire(timeout=60):
            raise InputError("The server is busy with other exports; please try again in a minute.")
        try:
            backend, enc = self.cached(state)
            explored, _ = self.explore_encoded(backend, enc, state.get("prompt", ""),
                                               self.settings(state.get("controls"), state.get("points") or ()), state)
            s = dict(explored.summary, controls=explored.settings.to_controls())
            if answers:
                s["answers"] = answers
            blob_json = self.export_json(s)
            pics = explored.pictures
            blob_png = self.export_png([p for p in (pics.kept, pics.groups, pics.heatmap) if p is not None])
            name = export_name(explored.settings)
            folder = self.export_root / hashlib.sha256(blob_json + blob_png).hexdigest()[:16]
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{name}.json").write_bytes(blob_json)
            (folder / f"{name}.png").write_bytes(blob_png)
            self._prune_exports()
            return str(folder / f"{name}.json"), str(folder / f"{name}.png")
        finally:
            self.heavy.release()

    def _prune_exports(self, keep: int = 32) -> None:
        folders = sorted((p for p in self.export_root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in folders[:-keep]:
            for f in old.iterdir():
                f.unlink(missing_ok=True)
            old.rmdir()

    @staticmethod
    def export_json(summary: dict) -> bytes:
        try:
            blob = json.dumps(summary, indent=1, ensure_ascii=False, allow_nan=False).encode()
        except ValueError:
            raise InputError("The result holds a value that is not a finite number, so it cannot be exported.") from None
        if len(blob) > MAX_SUMMARY_BYTES:
            raise InputError("The result is too large to export.")
        return blob

    @staticmethod
    def export_png(images: list[np.ndarray]) -> bytes:
        """The pictures side by side in one PNG."""
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


def export_name(settings: Settings) -> str:
    """A file name saying what produced the export, e.g. `prumerge+_iqr_multiplier-1.5_merge-true_…`."""
    parts = [settings.method] + [f"{k}-{str(v).lower()}" for k, v in settings.relevant().items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "", "_".join(parts))[:150] or "token-reduction"


def answer_dict(ans: Answer) -> dict:
    decode_s = max(0.0, ans.total_s - ans.prefill_s)
    return {
        "text": ans.text,
        "n_visual_tokens": ans.n_visual_tokens,
        "n_prompt_tokens": ans.n_prompt_tokens,
        "n_new_tokens": ans.n_new_tokens,
        "stop": ans.stop,
        "prefill_s": round(ans.prefill_s, 4),
        "decode_s": round(decode_s, 4),
        "tokens_per_s": round(ans.n_new_tokens / decode_s, 2) if decode_s > 0 and ans.n_new_tokens else None,
    }
