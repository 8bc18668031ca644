"""How many channels each group keeps: a uniform ratio, or the ratio that meets a cost budget.

Pure functions over ``{group id: channel count}``; the cost of a choice comes
from a callable, so these know nothing about graphs.
"""

from __future__ import annotations

import math
from typing import Callable

Counts = dict[int, int]


def kept_count(n: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept when ``ratio`` of ``n`` are removed, a multiple of ``round_to``.

    The allowed count (a positive multiple of ``round_to``, or all n) nearest to
    n * (1 - ratio); a tie keeps more.
    """
    target = n * (1.0 - ratio)
    low = math.floor(target / round_to) * round_to
    high = min(n, low + round_to)
    if low == 0 or high - target <= target - low:
        return max(1, high)
    return low


def uniform(channels: Counts, ratio: float, round_to: int = 1) -> Counts:
    """The same ratio removed from every group."""
    return {g: kept_count(n, ratio, round_to) for g, n in channels.items()}


def fit_budget(channels: Counts, cost: Callable[[Counts], float], budget: float, round_to: int = 1) -> Counts | None:
    """Counts whose cost is at most ``budget`` and as close to it as the rounding allows.

    A bisection finds the smallest uniform ratio within budget; then channels are
    given back, ``round_to`` at a time and group by group, while the cost still fits.
    None when even the deepest uniform pruning exceeds the budget.
    """
    deepest = uniform(channels, 1.0, round_to)
    if cost(deepest) > budget:
        return None
    lo, hi = 0.0, 1.0  # cost(uniform(lo)) > budget >= cost(uniform(hi))
    if cost(uniform(channels, 0.0, round_to)) <= budget:
        return uniform(channels, 0.0, round_to)
    for _ in range(30):
        mid = (lo + hi) / 2
        if cost(uniform(channels, mid, round_to)) <= budget:
            hi = mid
        else:
            lo = mid
    counts = uniform(channels, hi, round_to)
    grew = True
    while grew:
        grew = False
        for g, n in channels.items():
            if counts[g] >= n:
                continue
            trial = {**counts, g: min(n, counts[g] + round_to)}
            if cost(trial) <= budget:
                counts, grew = trial, True
    return counts
