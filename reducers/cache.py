"""The one bounded cache every part of the project uses: a least-recently-used map with a lock.

It lives in `reducers/` because that is the bottom layer (the per-image memos on `VisualTokens` use it, and
`explorer/` may import `reducers/` but never the other way round). Standard library only.

    cache = LRU(8)
    value = cache.get_or_compute(key, lambda: expensive(key))

`get_or_compute` runs `compute` outside the lock (a slow encode must not block readers of other keys); two
threads that miss the same key at once may both compute it, and the first value stored wins, so every caller
sees one value per key. Values must therefore be pure functions of the key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Hashable, TypeVar

V = TypeVar("V")
_MISSING = object()


class LRU:
    """A thread-safe least-recently-used cache holding at most `size` entries."""

    def __init__(self, size: int):
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"cache size must be a positive integer, got {size!r}")
        self.size = size
        self._data: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, default=None):
        """The value for `key` (marked as recently used), or `default`."""
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                self.misses += 1
                return default
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def peek(self, key: Hashable, default=None):
        """The value for `key` without touching its recency or the counters."""
        with self._lock:
            return self._data.get(key, default)

    def put(self, key: Hashable, value) -> None:
        with self._lock:
            self._store(key, value)

    def setdefault(self, key: Hashable, value: V) -> V:
        """Store `value` unless `key` is present; return the stored value either way."""
        with self._lock:
            found = self._data.get(key, _MISSING)
            if found is not _MISSING:
                self._data.move_to_end(key)
                return found
            self._store(key, value)
            return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], V]) -> V:
        """The cached value for `key`, or `compute()` stored under it (first stored value wins)."""
        value = self.get(key, _MISSING)
        if value is not _MISSING:
            return value
        return self.setdefault(key, compute())

    def _store(self, key: Hashable, value) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._data
