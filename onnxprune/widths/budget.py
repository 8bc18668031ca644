"""How many channels each group keeps: a uniform ratio, or the ratio that meets a cost budget.

Pure functions over ``{group id: channel count}``; the cost of a choice comes
from a callable, so these know nothing about graphs.
"""

from __future__ import annotations

import math
from typing import Callable

Counts = dict[int, int]
Steps = int | Counts  # what counts move by: round_to for every group, or one step per group


def block_steps(round_to: int, blocks: Counts) -> Counts:
    """Each group's step: the least multiple of ``round_to`` that is also one of its ``blocks``
    (a group that grouped convs cut into b blocks keeps a multiple of b, as many per block)."""
    return {g: math.lcm(round_to, b) for g, b in blocks.items()}


def head_step(round_to: int, head_dim: int) -> int:
    """An attention head group's step: the fewest heads whose columns, ``head_dim`` each, are a
    multiple of ``round_to`` (round_to / gcd(round_to, head_dim): one head of 32 dims for 8)."""
    return round_to // math.gcd(round_to, head_dim)


def step_of(steps: Steps, g: int) -> int:
    return steps if isinstance(steps, int) else steps[g]


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


def uniform(channels: Counts, ratio: float, round_to: Steps = 1) -> Counts:
    """The same ratio removed from every group (``round_to``: one step, or each group's)."""
    return {g: kept_count(n, ratio, step_of(round_to, g)) for g, n in channels.items()}


def fit_budget(channels: Counts, cost: Callable[[Counts], float], budget: float, round_to: Steps = 1) -> Counts | None:
    """Counts whose cost is at most ``budget`` and as close to it as the rounding allows.

    A bisection finds the smallest uniform ratio within budget; then channels are
    given back, ``round_to`` (each group's step) at a time and group by group, while the
    cost still fits. None when even the deepest uniform pruning exceeds the budget.
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
            trial = {**counts, g: min(n, counts[g] + step_of(round_to, g))}
            if cost(trial) <= budget:
                counts, grew = trial, True
    return counts
