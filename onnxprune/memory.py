"""Memory handed back to the system between stages: reference cycles collected, the C heap trimmed.

A prune frees gigabytes at a time (PRO's statistics and candidates, each group's runs), much
of it in blocks below glibc's mmap threshold (up to 32 MB), which stay in the process's heap
after they are freed: the resident memory of the next stage then starts from the last one's
peak. ``malloc_trim`` returns the heap's free pages; elsewhere (macOS, Windows, musl) only the
collector runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc


@functools.cache
def _trim():
    """glibc's malloc_trim, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release(collect: bool = True) -> None:
    """Free what the next stage need not find in use: reference cycles (``collect``), then the C
    heap's free pages."""
    if collect:
        gc.collect()
    trim = _trim()
    if trim is not None:
        trim(0)
