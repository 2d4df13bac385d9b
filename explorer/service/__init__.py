"""The app's operations without gradio, one module per job; `Explorer` is the facade the app, the benches,
`evaluate` and the tests import.

    backends.py   the models, each loaded once under its own lock
    pipeline.py   image → encode → PAR's query → VisualTokens → Reduction (each cached)
    screen.py     one result as the screen shows it (pictures, figures, readout, summary, stamp)
    view.py       the pure pictures and numbers of one reduction (no cache, no model)
    compare.py    the sweep, every method at a matched budget, pin & A/B
    answers.py    answers and fidelity, and the one heavy-slot context manager
    export.py     the JSON + PNG export

Every public method raises `InputError` (one sentence meant for a person) for anything a user did; the UI
turns those into `gr.Error`. Per-session state is a `Session` (explorer/session.py) the caller keeps: it names
the image and the settings, never tensors; tensors live in the bounded LRU caches below, keyed by image content
and settings, so sessions cannot see each other's work and a repeated request costs nothing.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path
from typing import Iterable, Mapping

from reducers import REDUCERS, Reduction, VisualTokens
from reducers.cache import LRU

from ..backend.protocol import Backend, Encoded
from ..config import ExplorerConfig
from ..session import Pinned, Session
from ..settings import Schema, Settings
from . import answers as answering
from . import compare, pipeline, screen
from . import export as exporting
from .answers import answer_dict  # noqa: F401
from .backends import Backends
from .export import MAX_SUMMARY_BYTES, export_name  # noqa: F401
from .pipeline import QueryInfo  # noqa: F401
from .screen import Explored  # noqa: F401

State = Session | Mapping | None  # what callers hold: a Session, its to_state() dict, or nothing yet


class Explorer:
    """One per server. Thread-safe: each backend loads once under its own lock, caches are bounded LRUs (all of
    them here), nothing is kept per session."""

    FIDELITY_BUDGETS = answering.FIDELITY_BUDGETS

    def __init__(self, config: ExplorerConfig, loader=None, methods: Mapping = REDUCERS):
        from ..backend.models import load_backend

        self.config = config
        self.schema = Schema.build(methods)
        self.backends = Backends(config, loader or load_backend)
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

    def session(self, state: State) -> Session:
        return Session.of(state, self.schema)

    # --- backends and settings -----------------------------------------------------------------------
    @property
    def model_choices(self) -> list[str]:
        return self.backends.choices

    @property
    def _backends(self) -> dict[str, Backend]:
        return self.backends.loaded_now

    def preload(self) -> threading.Thread:
        return self.backends.preload()

    def backend(self, name: str | None = None, progress=None) -> Backend:
        return self.backends.get(name, progress)

    def loaded(self, name: str) -> Backend | None:
        return self.backends.loaded(name)

    def settings(self, values: Mapping | None = None, points=(), clamp: bool = False) -> Settings:
        return Settings.from_controls(values, self.schema, points, clamp)

    # --- the pipeline --------------------------------------------------------------------------------
    def encoded(self, image, state: State, model: str | None = None, progress=None
                ) -> tuple[Backend, Encoded, Session]:
        return pipeline.encoded(self, image, self.session(state), model, progress)

    def cached(self, state: State) -> tuple[Backend, Encoded]:
        return pipeline.cached(self, self.session(state))

    def clip_prompt(self, prompt) -> str:
        return pipeline.clip_prompt(self, prompt)

    def query(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings) -> QueryInfo:
        return pipeline.query(backend, enc, prompt, settings)

    def tokens(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings,
               needs: Iterable[str] = ()) -> tuple[VisualTokens, QueryInfo | None]:
        return pipeline.tokens(self, backend, enc, prompt, settings, needs)

    def reduce(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings
               ) -> tuple[Reduction, VisualTokens, QueryInfo | None]:
        return pipeline.reduce(self, backend, enc, prompt, settings)

    def last(self, state: State):
        return pipeline.last(self, self.session(state))

    def at_budget(self, settings: Settings, budget: int, match: tuple[int, int] | None = None):
        return pipeline.at_budget(self, settings, budget, match)

    # --- the screen ----------------------------------------------------------------------------------
    def explore(self, image, prompt, settings: Settings, state: State = None, model=None, progress=None,
                with_per_patch: bool = True) -> tuple[Explored, Session]:
        """Reduce the image's tokens and draw everything (one explore or slider move); `with_per_patch=False`
        leaves the per-patch data out of the summary."""
        backend, enc, session = self.encoded(image, state, model, progress)
        return screen.explore_encoded(self, backend, enc, prompt, settings, session, with_per_patch)

    def explore_encoded(self, backend: Backend, enc: Encoded, prompt, settings: Settings, state: State,
                        with_per_patch: bool = True) -> tuple[Explored, Session]:
        return screen.explore_encoded(self, backend, enc, prompt, settings, self.session(state), with_per_patch)

    def canvas(self, backend: Backend, enc: Encoded):
        return screen.canvas(self, backend, enc)

    def crop(self, backend: Backend, enc: Encoded):
        return screen.crop(self, backend, enc)

    stamp = staticmethod(screen.stamp)

    # --- comparisons, pin, inspection ------------------------------------------------------------------
    def sweep_and_compare(self, image, prompt, settings: Settings, sweep_name: str | None, state: State = None,
                          model=None, equivalent: bool = False):
        return compare.sweep_and_compare(self, image, prompt, settings, sweep_name, self.session(state), model,
                                         equivalent)

    sweep_figure = staticmethod(compare.sweep_figure)

    def comparison_view(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int,
                        equivalent: bool = False):
        return compare.comparison_view(self, backend, enc, prompt, settings, budget, equivalent)

    def comparison(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int,
                   equivalent: bool = False):
        return compare.comparison(self, backend, enc, prompt, settings, budget, equivalent)

    def pin(self, state: State) -> Pinned:
        return compare.pin(self, self.session(state))

    def pin_diff(self, state: State, pinned: Pinned):
        return compare.pin_diff(self, self.session(state), pinned)

    def inspect(self, state: State, x: float, y: float, view_size: tuple[int, int] | None = None) -> dict:
        return screen.inspect(self, self.session(state), x, y, view_size)

    def view_to_image(self, state: State, x: float, y: float) -> list[float]:
        return screen.view_to_image(self.session(state), x, y)

    # --- answers, fidelity, export ---------------------------------------------------------------------
    def answer_stream(self, image, prompt, settings: Settings, state: State = None, model=None,
                      max_new_tokens=None, progress=None):
        return answering.answer_stream(self, image, prompt, settings, self.session(state), model, max_new_tokens,
                                     progress)

    def check_max_new_tokens(self, value) -> int:
        return answering.check_max_new_tokens(self, value)

    def fidelity_plan(self, backend: Backend, enc: Encoded, prompt: str, settings: Settings, budget: int):
        return answering.fidelity_plan(self, enc, settings, budget)

    def fidelity(self, state: State, max_new_tokens: int = 16):
        return answering.fidelity(self, self.session(state), max_new_tokens)

    def export(self, state: State, answers: dict | None = None) -> tuple[str, str]:
        return exporting.export(self, self.session(state), answers)

    export_json = staticmethod(exporting.export_json)
    export_png = staticmethod(exporting.export_png)
