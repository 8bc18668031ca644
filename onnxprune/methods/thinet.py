"""ThiNet's selection (Luo et al., 2017): remove the channels that change the consumers' outputs least WITHOUT reconstruction.

The consumers are then rebuilt by the same ridge least squares as REAP's
(DataMethod.rebuild), so comparing the two isolates REAP's selection.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..calibration.layer_stats import LayerStats
from .base import DataMethod, register
from .least_squares import Elimination, Parts, Problem, owned_columns, removals, unpack


@register
class ThiNet(DataMethod):
    name = "thinet"
    summary = "ThiNet's greedy selection by output change, then least-squares reconstruction"

    def plan(self, problems: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> Elimination:
        return thinet_order(problems, n, target=target, parts=parts)


def _pair_products(stats: LayerStats, K: int, theta0: np.ndarray, n: int, copies: np.ndarray | None = None,
                   ) -> np.ndarray:
    """P_ab = <G_ab, W_a W_b^T> for the first n channels (n x n; W_a: the K x m rows of
    channel a in theta0; with ``copies``, the rows of all its copies, none for a channel the
    consumer does not read: its row and column are 0, and only the channels read are multiplied)."""
    if copies is None:
        w = theta0[:n * K]
        return ((w @ w.T) * stats.gram[:n * K, :n * K]).reshape(n, K, n, K).sum(axis=(1, 3))
    owned = owned_columns(copies[:n], K)
    read = np.flatnonzero([len(o) for o in owned])
    width = sum(len(o) for o in owned)
    w = theta0[:width]
    owner = np.zeros((len(read), width))
    for a, c in enumerate(read):
        owner[a, owned[c]] = 1
    pairs = np.zeros((n, n))
    pairs[np.ix_(read, read)] = owner @ ((w @ w.T) * stats.gram[:width, :width]) @ owner.T
    return pairs


def thinet_order(consumers: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> Elimination:
    """ThiNet's greedy selection (Luo et al. 2017): add to the removed set R the channel that
    changes the consumers' outputs least WITHOUT reconstruction:

        E(R) = sum_consumers tr(W_R^T G_RR W_R) = sum_{a,b in R} P_ab,  P = sum_consumers P(consumer)
        E(R + c) = E(R) + P_cc + 2 sum_{r in R} P_rc

    with W = theta0 (no bias). errors: E(R) after each removal. O(n^2 K^2 m) for P, O(n^2) after.
    With ``parts``, a channel is a candidate only while its part has removals left."""
    pairs = sum(_pair_products(stats, K, theta0, n, copies) for stats, K, theta0, copies in map(unpack, consumers))
    with_removed = np.zeros(n)  # sum_{r in R} P_rc
    removed = np.zeros(n, dtype=bool)
    done = None if parts is None else np.zeros(len(parts.removals), dtype=np.intp)
    order, errors, total = [], [], 0.0
    for _ in range(removals(n, target)):
        blocked = removed if parts is None else removed | parts.exhausted(done)
        increase = np.where(blocked, np.inf, np.diag(pairs) + 2 * with_removed)
        c = int(np.argmin(increase))
        if parts is not None:
            done[parts.part[c]] += 1
        total += increase[c]
        with_removed += pairs[c]
        removed[c] = True
        order.append(c)
        errors.append(total)
    return Elimination(np.array(order, dtype=np.intp), np.array(errors))


