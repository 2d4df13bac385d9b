"""The models the app can serve: each loads once, under its own lock (a slow load of one model never blocks
another), and a failed load is remembered and reported in one sentence instead of being retried on every move."""

from __future__ import annotations

import dataclasses
import threading

from ..backend.protocol import Backend
from ..config import OFFLINE_MODELS, ExplorerConfig
from ..errors import InputError


class Backends:
    def __init__(self, config: ExplorerConfig, loader):
        self.config = config
        self._loader = loader
        self.loaded_now: dict[str, Backend] = {}
        self._errors: dict[str, str] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the three dicts above only

    @property
    def choices(self) -> list[str]:
        return [self.config.model] + [m for m in OFFLINE_MODELS if m != self.config.model]

    def preload(self) -> threading.Thread:
        """Start loading the default backend in a daemon thread (errors are kept and reported on use)."""

        def run():
            try:
                self.get()
            except InputError:
                pass  # already recorded; the first request gets the message

        thread = threading.Thread(target=run, name="preload-backend", daemon=True)
        thread.start()
        return thread

    def get(self, name: str | None = None, progress=None) -> Backend:
        name = name or self.config.model
        if name not in self.choices:
            raise InputError(f"Unknown model {name!r}; choose one of {', '.join(self.choices)}.")
        with self._lock:
            if name in self.loaded_now:
                return self.loaded_now[name]
            lock = self._load_locks.setdefault(name, threading.Lock())
        with lock:  # one load per model; other models keep serving meanwhile
            with self._lock:
                if name in self.loaded_now:
                    return self.loaded_now[name]
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
                self.loaded_now[name] = backend
            return backend

    def loaded(self, name: str) -> Backend | None:
        with self._lock:
            return self.loaded_now.get(name)

    def _failure(self, name: str) -> str:
        hint = " Choose an offline model to keep exploring (restart the server to retry)." if name not in OFFLINE_MODELS else ""
        return f"The model {name!r} failed to load ({self._errors[name]}).{hint}"
