"""Process-wide settings a server process makes once, at start-up (`app.main`), never on import."""

from __future__ import annotations

import sys


def release_freed_memory() -> bool:
    """Ask glibc's malloc to hand freed memory back to the OS (Linux only; a no-op elsewhere).

    Each request allocates and frees a few large buffers (images, similarity matrices) on Gradio's worker
    threads. By default glibc raises its mmap threshold after the first such free and keeps the memory in
    per-thread arenas, so a long-running server's RSS climbs although nothing is retained. Fixed thresholds
    (mmap above 1 MiB, trim above 1 MiB) and at most 4 arenas keep RSS flat. Idempotent."""
    import ctypes
    import ctypes.util

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
