"""How the process's C heap (glibc malloc) holds memory: fewer arenas, freed pages returned.

Python's small objects live in its own pools, but numpy arrays, SQLite's pages, ONNX
Runtime's buffers and Chroma's Rust side come from malloc. Both calls are no-ops where the C
library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


@functools.cache
def _glibc() -> Any | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def limit_malloc_arenas(arenas: int) -> bool:
    """Let the threads started from now on share at most `arenas` malloc arenas (what
    MALLOC_ARENA_MAX sets at start-up); 0 leaves glibc's default, 8 per core. By default
    each new thread that meets a busy arena gets one of its own, and memory freed in one
    arena serves only its threads: a threaded server's heap grows by whole arenas (at 100k
    documents, kb serve held 100 MB more after six large adds). Returns whether it applied."""
    libc = _glibc()
    if libc is None or arenas <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def release_freed_memory() -> None:
    """Return the free pages of glibc's heaps to the system (malloc_trim). Building the
    in-memory copies frees many blocks too small for glibc to unmap on its own (pages read
    from SQLite, the index's training sample): at 100k documents, 70 MB that the process
    would otherwise keep for good. Takes milliseconds."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
