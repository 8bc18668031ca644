"""Caches that keep only their most recently used entries: PRO's weights and its candidates' cut segments."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import TypeVar

V = TypeVar("V")


def recent(cache: dict, key: Hashable, make: Callable[[], V], limit: int) -> V:
    """``cache[key]``, made by ``make()`` where absent; ``cache`` keeps the ``limit`` entries most
    recently asked for (a dict keeps its order: the least recent first, dropped before a new one is made)."""
    if key in cache:
        value = cache.pop(key)
    else:
        while len(cache) >= limit:
            del cache[next(iter(cache))]
        value = make()
    cache[key] = value
    return value
