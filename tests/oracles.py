"""Reference implementations for tests: brute force and plain loops, slow on purpose, to check the fast code against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnxprune.analysis.consumers import Consumer
from onnxprune.methods.least_squares import (Elimination, Parts, Problem, columns, error, objective, removals,
                                             ridge_solve, unpack)


def patches(x: np.ndarray, c: Consumer) -> np.ndarray:
    """im2col by loops: rows (sample, output row, output column), columns channel*K + tap, for a
    Conv consumer (a ConvTranspose one: ``transposed_patches``); a flattened (sample, features)
    matrix for a Gemm/MatMul one."""
    if c.op == "ConvTranspose":
        return transposed_patches(x, c)
    if c.op != "Conv":
        return x.reshape(len(x), -1)
    (kh, kw), (sh, sw), (dh, dw) = c.kernel, c.strides, c.dilations
    pt, pl, pb, pr = c.pads
    n, ch, h, w = x.shape
    ho = (h + pt + pb - (kh - 1) * dh - 1) // sh + 1
    wo = (w + pl + pr - (kw - 1) * dw - 1) // sw + 1
    rows = np.zeros((n, ho, wo, ch, kh, kw), dtype=x.dtype)
    for i in range(ho):
        for j in range(wo):
            for a in range(kh):
                for b in range(kw):
                    r, s = i * sh + a * dh - pt, j * sw + b * dw - pl
                    if 0 <= r < h and 0 <= s < w:
                        rows[:, i, j, :, a, b] = x[:, :, r, s]
    return rows.reshape(n * ho * wo, ch * kh * kw)


def transposed_patches(x: np.ndarray, c: Consumer) -> np.ndarray:
    """A ConvTranspose consumer's patches by its definition: input pixel q of channel ch sends
    tap t to output pixel p = q*s + t*d - begin pad (dropped outside the output); rows (sample,
    output row, output column), columns ch*K + tap. ``c.pads`` ends are the end pads less
    output_padding, so the output is s*(L-1) + (k-1)*d + 1 - begin - end long."""
    (kh, kw), (sh, sw), (dh, dw) = c.kernel, c.strides, c.dilations
    bt, bl, et, el = c.pads
    n, ch, h, w = x.shape
    ho = (h - 1) * sh + (kh - 1) * dh + 1 - bt - et
    wo = (w - 1) * sw + (kw - 1) * dw + 1 - bl - el
    rows = np.zeros((n, ho, wo, ch, kh, kw), dtype=x.dtype)
    for r in range(h):
        for s in range(w):
            for a in range(kh):
                for b in range(kw):
                    i, j = r * sh + a * dh - bt, s * sw + b * dw - bl
                    if 0 <= i < ho and 0 <= j < wo:
                        rows[:, i, j, :, a, b] = x[:, :, r, s]
    return rows.reshape(n * ho * wo, ch * kh * kw)


def reap_order_naive(consumers: Sequence[Problem], n: int, alpha: float | Sequence[float] = 0.0,
                     target: int = 1, parts: Parts | None = None) -> Elimination:
    """REAP by brute force: every step, every candidate c, a fresh ridge_solve on S \\ c;
    remove argmin_c sum_consumers J(S \\ c). O(n^5 K^3): for tests and benchmarks only.
    Problems may carry copies (a channel owning several K-blocks, or none); with ``parts``, only
    channels of parts with removals left are candidates."""
    alphas = np.broadcast_to(alpha, len(consumers))
    unpacked = [unpack(p) for p in consumers]

    def fits(keep: list[int]) -> list[np.ndarray]:
        thetas = []
        for (stats, K, theta0, copies), a in zip(unpacked, alphas):
            channels = (len(stats.gram) - 1) // K if copies is None else len(copies)
            thetas.append(ridge_solve(stats, keep + list(range(n, channels)), K, theta0, a, copies))
        return thetas

    def cost(keep: list[int]) -> float:
        return sum(objective(stats, theta, theta0, a)
                   for (stats, _, theta0, _), a, theta in zip(unpacked, alphas, fits(keep)))

    remaining, order, errors = list(range(n)), [], []
    done = None if parts is None else np.zeros(len(parts.removals), dtype=np.intp)
    for _ in range(removals(n, target)):
        allowed = [c for c in remaining if parts is None or not parts.exhausted(done)[c]]
        c = min(allowed, key=lambda c: cost([r for r in remaining if r != c]))
        if parts is not None:
            done[parts.part[c]] += 1
        remaining.remove(c)
        order.append(c)
        errors.append(sum(error(stats, theta) for (stats, _, _, _), theta in zip(unpacked, fits(remaining))))
    return Elimination(np.array(order, dtype=np.intp), np.array(errors))


def thinet_order_naive(problems: Sequence[tuple], n: int) -> tuple[list[int], list[float]]:
    """ThiNet by brute force: greedy forward selection of R by E(R) = sum tr(W_R^T G_RR W_R), each
    from scratch. A problem is (stats, K, theta0), or (stats, K, theta0, copies) with per channel the
    number of K-blocks it owns (repeated reads)."""
    def cost(removed):
        total = 0.0
        for stats, k, theta0, *copies in problems:
            cols = columns(removed, k, *copies)[:-1]
            total += np.sum(theta0[cols] * (stats.gram[np.ix_(cols, cols)] @ theta0[cols]))
        return total

    removed, errors = [], []
    for _ in range(n - 1):
        removed.append(min((c for c in range(n) if c not in removed), key=lambda c: cost([*removed, c])))
        errors.append(cost(removed))
    return removed, errors
